"""Workspaces, users, API keys, audit entries and rate limits."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.text import slugify

from leadflow.core import clock
from leadflow.core.models import ApiKey, AuditEntry, KeyKind, Membership, RateHit, Role, Workspace

# The prefix says what a key is for (and lets secret scanners spot a leaked one): write keys are
# public (they sit in every page's tracking snippet), secret and hook keys stay on servers.
KEY_PREFIXES = {KeyKind.WRITE: "lfw_", KeyKind.SECRET: "lfs_", KeyKind.HOOK: "lfh_"}


class ServiceError(ValueError):
    """A request that cannot be carried out; the message is shown to the user as is."""


def name_clean(name: object, *, what: str, max_length: int = 200) -> str:
    """A display name: required, inner whitespace collapsed, at most `max_length` characters."""
    if not isinstance(name, str) or not name.strip():
        raise ServiceError(f"a {what} needs a name")
    name = " ".join(name.split())
    if len(name) > max_length:
        raise ServiceError(f"name: at most {max_length} characters")
    return name


def slug_unique(*, model, workspace_id: int, name: str, fallback: str) -> str:
    """A slug for `name` not yet used by `model` rows of the workspace (`name`, `name-2`, …)."""
    base = slugify(name)[:90] or fallback
    taken = set(model.objects.filter(workspace_id=workspace_id, slug__startswith=base)
                .values_list("slug", flat=True))
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def workspace_create(*, name: str, slug: str | None = None) -> Workspace:
    slug = slugify(slug or name)[:64]
    if not slug:
        raise ServiceError("a workspace needs a name with at least one letter or digit")
    if Workspace.objects.filter(slug=slug).exists():
        raise ServiceError(f"a workspace with the slug {slug!r} already exists")
    return Workspace.objects.create(name=name.strip() or slug, slug=slug)


def api_key_create(*, workspace: Workspace, kind: str, name: str = "", actor: str = "system") -> tuple[ApiKey, str]:
    """Create a key and return it with the raw secret, which is never stored or shown again."""
    if kind not in KEY_PREFIXES:
        raise ServiceError(f"key kind must be one of {', '.join(repr(k.value) for k in KEY_PREFIXES)}, "
                           f"not {kind!r}")
    raw = KEY_PREFIXES[KeyKind(kind)] + secrets.token_urlsafe(24)
    key = ApiKey.objects.create(
        workspace=workspace, kind=kind, name=name, prefix=raw[:10], key_hash=key_hash(raw)
    )
    audit_record(workspace=workspace, actor=actor, action="api_key.create", target=key.prefix,
                 data={"kind": kind, "name": name})
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: str = "system") -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = clock.now()
        key.save(update_fields=["revoked_at"])
        audit_record(workspace=key.workspace, actor=actor, action="api_key.revoke", target=key.prefix)
    return key


def api_key_authenticate(*, raw: str, kind: str) -> ApiKey | None:
    """The active key of exactly that kind matching `raw`, with its workspace, or None: a key of
    another kind never authenticates (a hook key cannot ingest, a write key cannot manage)."""
    if kind not in KEY_PREFIXES:
        raise ValueError(f"unknown key kind {kind!r}")
    if not isinstance(raw, str) or not raw or len(raw) > 200:
        return None
    return (
        ApiKey.objects.select_related("workspace")
        .filter(key_hash=key_hash(raw), kind=kind, revoked_at__isnull=True)
        .first()
    )


def api_key_kind_claimed(*, raw: str) -> str | None:
    """The kind a raw key's prefix claims (`lfw_…` is "write"), whether or not the key exists;
    for error messages that tell someone they used the wrong kind of key. Never authenticates."""
    if not isinstance(raw, str):
        return None
    return next((kind.value for kind, prefix in KEY_PREFIXES.items() if raw.startswith(prefix)), None)


def user_create(*, username: str, password: str, email: str = "", workspace: Workspace | None = None,
                role: str = Role.MARKETER, is_superuser: bool = False):
    User = get_user_model()
    if role not in Role.values:
        raise ServiceError(f"role must be one of {', '.join(Role.values)}, not {role!r}")
    if User.objects.filter(username=username).exists():
        raise ServiceError(f"a user named {username!r} already exists")
    with transaction.atomic():
        if is_superuser:
            user = User.objects.create_superuser(username=username, email=email, password=password)
        else:
            user = User.objects.create_user(username=username, email=email, password=password)
        if workspace is not None:
            Membership.objects.create(workspace=workspace, user=user, role=role)
    return user


def membership_set(*, workspace: Workspace, user, role: str) -> Membership:
    if role not in Role.values:
        raise ServiceError(f"role must be one of {', '.join(Role.values)}, not {role!r}")
    membership, _ = Membership.objects.update_or_create(workspace=workspace, user=user,
                                                         defaults={"role": role})
    return membership


def bootstrap(*, admin_username: str = "admin") -> dict:
    """First-run set-up: a workspace, an admin and a write key, only if none exist yet.

    Returns what was created, including secrets that are shown exactly once.
    """
    created: dict = {}
    with transaction.atomic():
        workspace = Workspace.objects.order_by("id").first()
        if workspace is None:
            workspace = workspace_create(name="My workspace", slug="default")
            created["workspace"] = workspace
            _, created["write_key"] = api_key_create(workspace=workspace, kind=KeyKind.WRITE,
                                                     name="first write key")
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            user_create(username=admin_username, password=password, workspace=workspace,
                        role=Role.ADMIN, is_superuser=True)
            created["admin"] = (admin_username, password)
    created.setdefault("workspace_existing", workspace)
    return created


def audit_record(*, workspace: Workspace, actor: str, action: str, target: str = "",
                 data: dict | None = None) -> AuditEntry:
    return AuditEntry.objects.create(workspace=workspace, actor=actor, action=action,
                                     target=target, data=data or {}, at=clock.now())


def rate_limit_hit(*, key: str, limit: int, window_seconds: int) -> bool:
    """Record one use of `key`; False when `limit` uses already happened inside the window."""
    now = clock.now()
    since = now - dt.timedelta(seconds=window_seconds)
    with transaction.atomic():
        RateHit.objects.filter(key=key, at__lt=since).delete()
        if RateHit.objects.filter(key=key, at__gte=since).count() >= limit:
            return False
        RateHit.objects.create(key=key, at=now)
    return True
