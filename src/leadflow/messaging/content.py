"""Email content: layouts, templates and their versions, approval, diff, preview and test sends.

A template's content lives in numbered versions. Editing writes to the newest version while it is
a draft that was never submitted, and otherwise starts a new draft, so a submitted, approved or
rejected version never changes. Submitting copies the layout into the version (what is approved
is exactly what is sent) and, for marketing email, refuses content without the unsubscribe link
and the postal address. Approving makes the version the template's `approved_version` (the one
new sends use); the one approved before becomes `superseded`. Messages already queued keep the
version they pinned.

Who may approve: a high-risk template needs a member with the compliance role; any other needs an
admin or a marketer. Nobody approves a version they wrote (created or edited) unless they are an
admin. The management API acts as the workspace: a secret key counts as an admin, except that it
cannot approve or reject a high-risk template (a compliance user does that in the web UI).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils.text import slugify

from leadflow.contacts.hygiene import HygieneError, email_normalize
from leadflow.core import clock
from leadflow.core.models import Role, Workspace
from leadflow.core.selectors import user_role
from leadflow.core.services import ServiceError, audit_record, rate_limit_hit
from leadflow.messaging import rendering
from leadflow.messaging.models import (
    Layout, Message, MessageKind, MessagingSettings, Template, TemplateKind, TemplateVersion, VersionStatus,
)

MAX_NAME = 200
MAX_SUBJECT = 500
MAX_HTML = 1_000_000
TEST_SENDS_PER_HOUR = 50
EDITOR_ROLES = frozenset({Role.ADMIN, Role.MARKETER})
APPROVER_ROLES = frozenset({Role.ADMIN, Role.MARKETER})
CONTENT_FIELDS = ("subject", "preheader", "html", "text", "blocks", "layout")
KEEP = object()


# --- small helpers ----------------------------------------------------------------------------------

def _name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ServiceError(f"a {what} needs a name")
    name = " ".join(name.split())
    if len(name) > MAX_NAME:
        raise ServiceError(f"name: at most {MAX_NAME} characters")
    return name


def _slug(model, workspace_id: int, wanted: str | None, name: str, exclude_pk: int | None = None) -> str:
    if wanted:
        slug = slugify(wanted)[:100]
        if not slug:
            raise ServiceError("slug: use letters, digits, - or _")
        taken = model.objects.filter(workspace_id=workspace_id, slug=slug)
        if exclude_pk:
            taken = taken.exclude(pk=exclude_pk)
        if taken.exists():
            raise ServiceError(f"slug {slug!r} is already used in this workspace")
        return slug
    base = slugify(name)[:90] or model.__name__.lower()
    taken = set(model.objects.filter(workspace_id=workspace_id, slug__startswith=base).values_list("slug", flat=True))
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def _text(value: object, what: str, *, limit: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ServiceError(f"{what}: must be text")
    if required and not value.strip():
        raise ServiceError(f"{what}: must not be empty")
    if len(value) > limit:
        raise ServiceError(f"{what}: at most {limit:,} characters")
    return value


def _version_target(version: TemplateVersion) -> str:
    return f"email_version:{version.pk}"


# --- layouts ------------------------------------------------------------------------------------------

def _layout_check(html: str, text: str) -> None:
    rendering.template_check(source=html, part="layout html", mode="html")
    rendering.template_check(source=text, part="layout text", mode="text")
    if "content" not in rendering.template_names(source=html, mode="html"):
        raise ServiceError("layout html: must contain {{ content }} where the email's body goes")
    if text.strip() and "content" not in rendering.template_names(source=text, mode="text"):
        raise ServiceError("layout text: must contain {{ content }} where the email's text goes")


def layout_create(*, workspace: Workspace, name: str, html: str, text: str = "", slug: str | None = None,
                  actor: str) -> Layout:
    """A shared frame: header and footer around `{{ content }}` (required in the HTML, and in the
    text when there is one)."""
    name = _name(name, "layout")
    html = _text(html, "layout html", limit=MAX_HTML, required=True)
    text = _text(text, "layout text", limit=MAX_HTML)
    _layout_check(html, text)
    now = clock.now()
    try:
        with transaction.atomic():
            layout = Layout.objects.create(workspace=workspace, name=name, html=html, text=text, created_at=now,
                                           updated_at=now, slug=_slug(Layout, workspace.pk, slug, name))
            audit_record(workspace=workspace, actor=actor, action="email_layout.create", target=f"email_layout:{layout.pk}",
                         data={"name": name})
    except IntegrityError:
        raise ServiceError("that slug was just taken; try again") from None
    return layout


def layout_update(*, layout: Layout, actor: str, name: str | None = None, html: str | None = None,
                  text: str | None = None) -> Layout:
    """Change a layout. Drafts show the change at once; submitted versions keep the copy they
    were submitted with."""
    changes = {}
    if name is not None:
        changes["name"] = _name(name, "layout")
    if html is not None:
        changes["html"] = _text(html, "layout html", limit=MAX_HTML, required=True)
    if text is not None:
        changes["text"] = _text(text, "layout text", limit=MAX_HTML)
    _layout_check(changes.get("html", layout.html), changes.get("text", layout.text))
    changes = {k: v for k, v in changes.items() if getattr(layout, k) != v}
    if not changes:
        return layout
    for key, value in changes.items():
        setattr(layout, key, value)
    layout.updated_at = clock.now()
    with transaction.atomic():
        layout.save()
        audit_record(workspace=layout.workspace, actor=actor, action="email_layout.update",
                     target=f"email_layout:{layout.pk}", data={"fields": sorted(changes)})
    return layout


def layout_delete(*, layout: Layout, actor: str) -> None:
    """Delete a layout no draft uses (submitted versions keep their own copy)."""
    drafts = (TemplateVersion.objects.filter(workspace_id=layout.workspace_id, layout=layout,
                                             status=VersionStatus.DRAFT).select_related("template"))
    users = sorted({v.template.name for v in drafts})
    if users:
        raise ServiceError("the layout is used by drafts of " + ", ".join(repr(n) for n in users[:10])
                           + "; choose another layout there first")
    with transaction.atomic():
        audit_record(workspace=layout.workspace, actor=actor, action="email_layout.delete",
                     target=f"email_layout:{layout.pk}", data={"name": layout.name})
        layout.delete()


def layout_list(*, workspace: Workspace) -> QuerySet[Layout]:
    return Layout.objects.filter(workspace=workspace).order_by("name", "pk")


def layout_get(*, workspace: Workspace, layout_id: int) -> Layout | None:
    return Layout.objects.filter(workspace=workspace, pk=layout_id).first()


# --- templates ------------------------------------------------------------------------------------

def _topic(workspace_id: int, kind: str, topic: object) -> str:
    if topic is None:
        topic = ""
    if not isinstance(topic, str):
        raise ServiceError("topic: must be a topic slug")
    topic = topic.strip()
    if not topic:
        return ""
    if kind == TemplateKind.TRANSACTIONAL:
        raise ServiceError("topic: transactional email has no subscription topic; leave it blank")
    from leadflow.consent.models import ALL_MARKETING, Topic

    if topic == ALL_MARKETING:
        return ""
    if not Topic.objects.filter(workspace_id=workspace_id, slug=topic, archived_at__isnull=True).exists():
        raise ServiceError(f"topic: no subscription topic {topic!r} in this workspace")
    return topic


def _kind(kind: object) -> str:
    if kind not in TemplateKind.values:
        raise ServiceError(f"kind must be one of {', '.join(TemplateKind.values)}, not {kind!r}")
    return str(kind)


def _layout_of(workspace_id: int, layout) -> Layout | None:
    if layout is None:
        return None
    if isinstance(layout, int) and not isinstance(layout, bool):
        found = Layout.objects.filter(workspace_id=workspace_id, pk=layout).first()
        if found is None:
            raise ServiceError(f"layout: no layout {layout} in this workspace")
        return found
    if not isinstance(layout, Layout) or layout.workspace_id != workspace_id:
        raise ServiceError("layout: no such layout in this workspace")
    return layout


@dataclass
class Content:
    subject: str
    preheader: str
    html: str
    text: str
    blocks: dict


def content_check(*, subject: object, preheader: object = "", html: object, text: object = "",
                  blocks: object = None) -> Content:
    """Validate a version's content: lengths, Jinja syntax of every part (TemplateError naming
    the part and line), the blocks' shape, and that every `block("…")` asked for is defined."""
    content = Content(subject=_text(subject, "subject", limit=MAX_SUBJECT, required=True),
                      preheader=_text(preheader, "preheader", limit=MAX_SUBJECT),
                      html=_text(html, "html", limit=MAX_HTML, required=True),
                      text=_text(text, "text", limit=MAX_HTML), blocks=rendering.blocks_check(blocks))
    for part, mode in (("subject", "text"), ("preheader", "text"), ("html", "html"), ("text", "text")):
        rendering.template_check(source=getattr(content, part), part=part, mode=mode)
    asked = set()
    for source, mode in ((content.subject, "text"), (content.preheader, "text"), (content.html, "html"),
                         (content.text, "text")):
        asked |= rendering.block_calls(source=source, mode=mode)
    missing = sorted(asked - set(content.blocks))
    if missing:
        raise ServiceError("the content uses blocks that are not defined: " + ", ".join(missing))
    return content


def template_create(*, workspace: Workspace, name: str, kind: str = TemplateKind.MARKETING, topic: str = "",
                    high_risk: bool = False, actor: str, subject: str, html: str, text: str = "",
                    preheader: str = "", blocks: dict | None = None, layout: Layout | int | None = None,
                    slug: str | None = None) -> Template:
    """A new template with its content as version 1, a draft."""
    name = _name(name, "template")
    kind = _kind(kind)
    topic = _topic(workspace.pk, kind, topic)
    content = content_check(subject=subject, preheader=preheader, html=html, text=text, blocks=blocks)
    layout = _layout_of(workspace.pk, layout)
    now = clock.now()
    try:
        with transaction.atomic():
            template = Template.objects.create(
                workspace=workspace, name=name, slug=_slug(Template, workspace.pk, slug, name), kind=kind,
                topic=topic, high_risk=bool(high_risk), created_by=actor[:200], created_at=now, updated_at=now)
            version = TemplateVersion.objects.create(
                workspace=workspace, template=template, number=1, subject=content.subject,
                preheader=content.preheader, html=content.html, text=content.text, blocks=content.blocks,
                layout=layout, created_by=actor[:200], created_at=now)
            audit_record(workspace=workspace, actor=actor, action="email_template.create",
                         target=f"email_template:{template.pk}", data={"name": name, "kind": kind, "topic": topic,
                                                                      "high_risk": template.high_risk})
            audit_record(workspace=workspace, actor=actor, action="email_version.create",
                         target=_version_target(version), data={"template": template.pk, "number": 1})
    except IntegrityError:
        raise ServiceError("that slug was just taken; try again") from None
    return template


def template_update(*, template: Template, actor: str, role: str | None = None, name: str | None = None,
                    topic: str | None = None, kind: str | None = None, high_risk: bool | None = None) -> Template:
    """Change a template's settings. The kind cannot change once a version was approved (it
    decides which consent rules apply); only a compliance member may clear `high_risk`."""
    changes: dict = {}
    if name is not None:
        changes["name"] = _name(name, "template")
    new_kind = template.kind if kind is None else _kind(kind)
    if new_kind != template.kind:
        if TemplateVersion.objects.filter(template=template, status__in=[
                VersionStatus.APPROVED, VersionStatus.SUPERSEDED]).exists():
            raise ServiceError("the kind cannot change once a version has been approved; create a new template")
        changes["kind"] = new_kind
    if topic is not None or "kind" in changes:
        new_topic = _topic(template.workspace_id, new_kind, template.topic if topic is None else topic)
        if new_topic != template.topic:
            changes["topic"] = new_topic
    if high_risk is not None and bool(high_risk) != template.high_risk:
        if not high_risk and role != Role.COMPLIANCE:
            raise ServiceError("only a member with the compliance role can clear the high-risk flag")
        changes["high_risk"] = bool(high_risk)
    changes = {k: v for k, v in changes.items() if getattr(template, k) != v}
    if not changes:
        return template
    if template.archived_at is not None:
        raise ServiceError("the template is archived")
    with transaction.atomic():
        for key, value in changes.items():
            setattr(template, key, value)
        template.updated_at = clock.now()
        template.save()
        audit_record(workspace=template.workspace, actor=actor, action="email_template.update",
                     target=f"email_template:{template.pk}", data={k: changes[k] for k in sorted(changes)})
    return template


def template_archive(*, template: Template, actor: str) -> Template:
    """Hide the template from lists and stop new broadcasts using it; queued messages still go."""
    if template.archived_at is None:
        template.archived_at = clock.now()
        template.save(update_fields=["archived_at"])
        audit_record(workspace=template.workspace, actor=actor, action="email_template.archive",
                     target=f"email_template:{template.pk}")
    return template


def template_list(*, workspace: Workspace, archived: bool = False, q: str = "") -> QuerySet[Template]:
    qs = (Template.objects.filter(workspace=workspace, archived_at__isnull=not archived)
          .select_related("approved_version").annotate(latest_number=Max("versions__number")))
    if q:
        qs = qs.filter(name__icontains=q)
    return qs.order_by("-updated_at", "-pk")


def template_get(*, workspace: Workspace, template_id: int) -> Template | None:
    return Template.objects.filter(workspace=workspace, pk=template_id).select_related("approved_version").first()


@dataclass(frozen=True)
class BuiltIn:
    """The content of a transactional template LeadFlow ships (double opt-in, magnet delivery)."""

    slug: str
    name: str
    subject: str
    html: str
    text: str


def template_builtin_get(*, workspace_id: int, builtin: BuiltIn) -> Template:
    """The workspace's copy of a built-in transactional template, created with an approved first
    version on first use. Marketers edit it like any other template; sends use its approved
    version. If it has none (its approved version was deleted), a new built-in version is approved."""
    template = (Template.objects.select_related("approved_version")
                .filter(workspace_id=workspace_id, slug=builtin.slug).first())
    if template is not None and template.approved_version_id:
        return template
    now = clock.now()
    try:
        with transaction.atomic():
            if template is None:
                template = Template.objects.create(
                    workspace_id=workspace_id, name=builtin.name, slug=builtin.slug, kind=TemplateKind.TRANSACTIONAL,
                    topic="", created_by="system", created_at=now, updated_at=now)
            number = (template.versions.order_by("-number").values_list("number", flat=True).first() or 0) + 1
            version = TemplateVersion.objects.create(
                workspace_id=workspace_id, template=template, number=number, subject=builtin.subject,
                html=builtin.html, text=builtin.text, status=VersionStatus.APPROVED, note="built in",
                created_by="system", created_at=now, submitted_at=now, decided_by="system", decided_at=now,
                decision_reason=f"built-in {builtin.name.lower()}")
            template.approved_version = version
            template.save(update_fields=["approved_version"])
    except IntegrityError:  # another process created it first
        template = Template.objects.select_related("approved_version").get(workspace_id=workspace_id,
                                                                           slug=builtin.slug)
    return template


# --- versions -------------------------------------------------------------------------------------

def versions_of(*, template: Template) -> QuerySet[TemplateVersion]:
    return TemplateVersion.objects.filter(template=template).select_related("layout").order_by("-number")


def version_get(*, template: Template, number: int) -> TemplateVersion | None:
    return (TemplateVersion.objects.filter(template=template, workspace_id=template.workspace_id, number=number)
            .select_related("layout", "template").first())


def version_latest(*, template: Template) -> TemplateVersion:
    return versions_of(template=template).select_related("template").first()


def version_edit(*, template: Template, actor: str, subject: str | None = None, preheader: str | None = None,
                 html: str | None = None, text: str | None = None, blocks: dict | None = None, layout=KEEP,
                 note: str | None = None, base: TemplateVersion | None = None) -> TemplateVersion:
    """Change the content: edits the newest version in place while it is a never-submitted draft,
    else writes a new draft (from `base`, by default the newest version). Fields left None keep
    their value; `layout=None` removes the layout. Returns the draft."""
    if template.archived_at is not None:
        raise ServiceError("the template is archived")
    with transaction.atomic():
        Template.objects.select_for_update().filter(pk=template.pk).first()
        latest = TemplateVersion.objects.filter(template=template).order_by("-number").first()
        if base is not None and base.template_id != template.pk:
            raise ServiceError("the base version belongs to another template")
        in_place = (latest is not None and latest.status == VersionStatus.DRAFT and latest.submitted_at is None
                    and (base is None or base.pk == latest.pk))
        source = latest if in_place or base is None else base
        content = content_check(
            subject=source.subject if subject is None else subject,
            preheader=source.preheader if preheader is None else preheader,
            html=source.html if html is None else html, text=source.text if text is None else text,
            blocks=source.blocks if blocks is None else blocks)
        new_layout = source.layout if layout is KEEP else _layout_of(template.workspace_id, layout)
        new_note = source.note if (note is None and in_place) else (note or "")
        fields = dict(subject=content.subject, preheader=content.preheader, html=content.html, text=content.text,
                      blocks=content.blocks, layout=new_layout, note=_text(new_note, "note", limit=500))
        now = clock.now()
        if in_place:
            changed = [k for k, v in fields.items() if getattr(latest, k) != v]
            if not changed:
                return latest
            for key, value in fields.items():
                setattr(latest, key, value)
            latest.save()
            version = latest
            audit_record(workspace=template.workspace, actor=actor, action="email_version.edit",
                         target=_version_target(version), data={"template": template.pk, "number": version.number,
                                                                "fields": changed})
        else:
            if base is None and all(getattr(source, k) == v for k, v in fields.items() if k != "note"):
                return source  # nothing changed: no new version
            version = TemplateVersion.objects.create(
                workspace_id=template.workspace_id, template=template, number=(latest.number if latest else 0) + 1,
                created_by=actor[:200], created_at=now, **fields)
            audit_record(workspace=template.workspace, actor=actor, action="email_version.create",
                         target=_version_target(version), data={"template": template.pk, "number": version.number,
                                                                "from": source.number})
        Template.objects.filter(pk=template.pk).update(updated_at=now)
    return version


def _missing_for_marketing(version: TemplateVersion, layout_html: str) -> list[str]:
    names = (rendering.template_names(source=layout_html, mode="html")
             | rendering.template_names(source=version.html, mode="html"))
    missing = []
    if not names & set(rendering.UNSUBSCRIBE_VARS):
        missing.append("the unsubscribe link ({{ unsubscribe_url }} or {{ preferences_url }}) in the layout or body")
    if "postal_address" not in names:
        missing.append("the postal address ({{ postal_address }}) in the layout or body")
    postal = (MessagingSettings.objects.filter(workspace_id=version.workspace_id)
              .values_list("postal_address", flat=True).first() or "")
    if not postal.strip():
        missing.append("a postal address in the email settings")
    return missing


def version_submit(*, version: TemplateVersion, actor: str) -> TemplateVersion:
    """Send a draft for approval: the layout is copied into the version, the content must render
    for the sample person, and marketing email must carry the unsubscribe link and the postal
    address (the error lists exactly what is missing)."""
    with transaction.atomic():
        version = (TemplateVersion.objects.select_for_update(of=("self",)).select_related("template", "layout")
                   .get(pk=version.pk))
        template = version.template
        if template.archived_at is not None:
            raise ServiceError("the template is archived")
        if version.status != VersionStatus.DRAFT or version.submitted_at is not None:
            raise ServiceError(f"version {version.number} is {version.get_status_display().lower()}; "
                               "only a draft can be submitted (edit to start a new draft)")
        layout_html = version.layout.html if version.layout_id else ""
        layout_text = version.layout.text if version.layout_id else ""
        if layout_html:
            _layout_check(layout_html, layout_text)
        if template.kind == TemplateKind.MARKETING:
            missing = _missing_for_marketing(version, layout_html)
            if missing:
                raise ServiceError("cannot submit a marketing email without " + "; ".join(missing))
        version.layout_html, version.layout_text = layout_html, layout_text
        now = clock.now()
        version.submitted_at = now
        rendering.version_render(version=version)  # raises TemplateError naming the part and line
        version.status = VersionStatus.PENDING
        version.save(update_fields=["layout_html", "layout_text", "status", "submitted_at"])
        Template.objects.filter(pk=template.pk).update(updated_at=now)
        audit_record(workspace=template.workspace, actor=actor, action="email_version.submit",
                     target=_version_target(version), data={"template": template.pk, "number": version.number})
    return version


@dataclass(frozen=True)
class Decider:
    """Who approves or rejects: a user (with their role here) or the API (a secret key)."""

    actor: str
    role: str | None
    via_api: bool


def decider_for(*, workspace_id: int, user=None, api_key=None) -> Decider:
    if (user is None) == (api_key is None):
        raise ServiceError("say who decides: a user or an API key")
    if api_key is not None:
        if api_key.workspace_id != workspace_id:
            raise ServiceError("the key belongs to another workspace")
        return Decider(actor=f"key:{api_key.prefix}", role=Role.ADMIN, via_api=True)
    role = user_role(user=user, workspace=Workspace(pk=workspace_id))
    return Decider(actor=f"user:{user.pk}", role=role, via_api=False)


def _wrote(version: TemplateVersion, actor: str) -> bool:
    from leadflow.core.models import AuditEntry

    if version.created_by == actor:
        return True
    return AuditEntry.objects.filter(workspace_id=version.workspace_id, target=_version_target(version), actor=actor,
                                     action__in=["email_version.create", "email_version.edit"]).exists()


def version_decision_refusal(*, version: TemplateVersion, decider: Decider, approving: bool = True) -> str | None:
    """Why this decider may not approve (or reject) this version, or None when they may."""
    template = version.template
    if decider.role is None:
        return "you are not a member of this workspace"
    if template.high_risk:
        if decider.via_api:
            return ("a high-risk template is approved by a user with the compliance role in the web UI, "
                    "not through the API")
        if decider.role != Role.COMPLIANCE:
            return "this template is high-risk: a member with the compliance role must decide"
    elif decider.role not in APPROVER_ROLES:
        return "deciding on a version needs the admin or marketer role"
    if approving and decider.role != Role.ADMIN and _wrote(version, decider.actor):
        return "you wrote this version: someone else must approve it (admins may approve their own)"
    return None


def _decide(*, version: TemplateVersion, user=None, api_key=None, approve: bool, reason: str = "") -> TemplateVersion:
    decider = decider_for(workspace_id=version.workspace_id, user=user, api_key=api_key)
    with transaction.atomic():
        template = Template.objects.select_for_update().get(pk=version.template_id, workspace_id=version.workspace_id)
        version = TemplateVersion.objects.select_for_update(of=("self",)).select_related("template").get(pk=version.pk)
        word = "approved" if approve else "rejected"
        if version.status != VersionStatus.PENDING:
            raise ServiceError(f"version {version.number} is {version.get_status_display().lower()}; "
                               f"only a version awaiting approval can be {word}")
        refusal = version_decision_refusal(version=version, decider=decider, approving=approve)
        if refusal:
            raise ServiceError(refusal)
        now = clock.now()
        version.decided_by, version.decided_at = decider.actor, now
        if approve:
            current = template.approved_version
            if current is not None and current.number > version.number:
                raise ServiceError(f"version {current.number} is approved and newer; "
                                   f"version {version.number} cannot replace it")
            if current is not None:
                TemplateVersion.objects.filter(pk=current.pk).update(status=VersionStatus.SUPERSEDED)
            version.status = VersionStatus.APPROVED
            version.decision_reason = reason[:500]
            template.approved_version = version
            template.updated_at = now
            template.save(update_fields=["approved_version", "updated_at"])
        else:
            reason = (reason or "").strip()
            if not reason:
                raise ServiceError("say why the version is rejected")
            version.status = VersionStatus.REJECTED
            version.decision_reason = reason[:500]
        version.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
        audit_record(workspace=template.workspace, actor=decider.actor, action=f"email_version.{'approve' if approve else 'reject'}",
                     target=_version_target(version),
                     data={"template": template.pk, "number": version.number, "high_risk": template.high_risk,
                           "role": decider.role, **({"reason": version.decision_reason} if not approve else {}),
                           **({"superseded": current.number} if approve and current is not None else {})})
    return version


def version_approve(*, version: TemplateVersion, user=None, api_key=None) -> TemplateVersion:
    """Approve a pending version (a user, or `api_key` for the API): it becomes what new sends of
    the template use; the previously approved version is superseded."""
    return _decide(version=version, user=user, api_key=api_key, approve=True)


def version_reject(*, version: TemplateVersion, reason: str, user=None, api_key=None) -> TemplateVersion:
    """Reject a pending version with the reason the author will read."""
    return _decide(version=version, user=user, api_key=api_key, approve=False, reason=reason)


def approvals_pending(*, workspace: Workspace) -> QuerySet[TemplateVersion]:
    return (TemplateVersion.objects.filter(workspace=workspace, status=VersionStatus.PENDING,
                                           template__archived_at__isnull=True)
            .select_related("template", "layout").order_by("submitted_at", "pk"))


def _field_text(version: TemplateVersion, field: str) -> str:
    if field == "blocks":
        return json.dumps(version.blocks or {}, indent=2, sort_keys=True, ensure_ascii=False)
    if field == "layout":
        html, text = rendering.version_layout(version)
        name = version.layout.name if version.layout_id else "(none)"
        return f"layout: {name}\n{html}" + (f"\n--- text ---\n{text}" if text else "")
    return getattr(version, field) or ""


def versions_diff(*, a: TemplateVersion, b: TemplateVersion) -> list[dict]:
    """A unified diff per content field from `a` to `b` (same template): [{field, changed, diff}]."""
    if a.template_id != b.template_id or a.workspace_id != b.workspace_id:
        raise ServiceError("both versions must belong to the same template")
    out = []
    for field in CONTENT_FIELDS:
        old, new = _field_text(a, field), _field_text(b, field)
        diff = "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=f"v{a.number}/{field}",
                                              tofile=f"v{b.number}/{field}", lineterm=""))
        out.append({"field": field, "changed": old != new, "diff": diff})
    return out


# --- preview and test sends -------------------------------------------------------------------------

def version_preview(*, version: TemplateVersion, contact=None, sample: dict | None = None,
                    context: dict | None = None) -> rendering.Rendered:
    """How a version looks for a contact of this workspace, or for the built-in sample person
    (whose `stage`, `role` and `segments` `sample` may set)."""
    return rendering.version_render(version=version, contact=contact, sample=sample, context=context)


def draft_preview(*, template: Template, subject: str, html: str, preheader: str = "", text: str = "",
                  blocks=None, layout: Layout | int | None = None, contact=None, sample: dict | None = None
                  ) -> tuple[rendering.Rendered, list[str]]:
    """Render content that is not saved yet (the editor's live preview), with lint warnings."""
    content = content_check(subject=subject, preheader=preheader, html=html, text=text, blocks=blocks)
    layout = _layout_of(template.workspace_id, layout)
    version = TemplateVersion(workspace_id=template.workspace_id, template=template, number=0, layout=layout,
                              subject=content.subject, preheader=content.preheader, html=content.html,
                              text=content.text, blocks=content.blocks)
    rendered = rendering.version_render(version=version, contact=contact, sample=sample)
    return rendered, rendering.version_lint(version=version)


def test_send(*, version: TemplateVersion, to_email: str, actor: str, contact=None) -> Message:
    """Queue a test of any version (drafts too) to any address, personalised for `contact` or the
    sample person; its subject starts with "[Test] ". At most TEST_SENDS_PER_HOUR per workspace."""
    from leadflow.messaging.outbox import message_queue

    try:
        address = email_normalize(to_email)
    except HygieneError as exc:
        raise ServiceError(f"to_email: {exc}") from None
    if contact is not None and contact.workspace_id != version.workspace_id:
        raise ServiceError("the contact belongs to another workspace")
    template = version.template
    if not rate_limit_hit(key=f"email-test:{version.workspace_id}", limit=TEST_SENDS_PER_HOUR, window_seconds=3600):
        raise ServiceError(f"at most {TEST_SENDS_PER_HOUR} test sends an hour per workspace; try again later")
    with transaction.atomic():
        # The contact only personalises: it is not the recipient, so it is not the message's contact
        # (the test's unsubscribe link must not unsubscribe them, nor the test show on their timeline).
        message = message_queue(workspace_id=version.workspace_id, contact=None, template=template,
                                version=version, kind=MessageKind.TEST, source=f"test:{actor}"[:200],
                                to_email=address, topic=template.topic,
                                context={rendering.TEST_CONTACT_KEY: contact.pk} if contact is not None else None)
        audit_record(workspace=template.workspace, actor=actor, action="email_template.test_send",
                     target=_version_target(version),
                     data={"template": template.pk, "number": version.number, "to": address, "message": message.pk,
                           "contact": contact.pk if contact is not None else None})
    return message


_SAMPLE_SEGMENTS = re.compile(r"[^a-z0-9_,\-]")


def sample_from(*, stage: str = "", role: str = "", segments: str | list = "") -> dict:
    """The `sample` overrides of a preview from loose input (query strings, JSON)."""
    if isinstance(segments, str):
        segments = [s for s in _SAMPLE_SEGMENTS.sub("", segments.lower()).split(",") if s]
    return {"stage": str(stage or "")[:32], "role": str(role or "")[:100], "segments": list(segments or [])[:50]}


# --- duplicating ------------------------------------------------------------------------------------

def _name_taken(workspace_id: int, name: str) -> bool:
    return Template.objects.filter(workspace_id=workspace_id, archived_at__isnull=True, name__iexact=name).exists()


def template_name_unused(*, workspace_id: int, name: str, first: str = "{name}",
                         then: str = "{name} ({n})") -> str:
    """The first of `first`, then `then` with n = 2, 3, … (each filled with `name`, shortened to fit
    MAX_NAME) that no live template of the workspace is called, case-insensitively."""
    name = _name(name, "template")
    names = {n.lower() for n in Template.objects.filter(workspace_id=workspace_id, archived_at__isnull=True)
             .values_list("name", flat=True)}

    def fill(pattern: str, n: int = 0) -> str:
        room = MAX_NAME - len(pattern.format(name="", n=n))
        return pattern.format(name=name[:room].rstrip(), n=n)

    candidate, n = fill(first), 2
    while candidate.lower() in names:
        candidate, n = fill(then, n), n + 1
    return candidate


def template_duplicate(*, template: Template, actor: str, name: str | None = None,
                       version: TemplateVersion | None = None, subject: str | None = None,
                       preheader: str | None = None, slug: str | None = None) -> Template:
    """A new template copied from `template`: same kind, topic, high-risk flag; the content and
    layout of `version` (default: the newest) become its version 1, a *draft* — approval is never
    copied, the copy goes through submission and approval like any new content. `subject` and
    `preheader` replace the copied ones (the start of a subject-line test). `name` must not be
    the name of another live template; by default it is "<name> (copy)" ("(copy 2)", … when taken)."""
    if template.archived_at is not None:
        raise ServiceError(f"the template {template.name!r} is archived; an archived template cannot be duplicated")
    if version is None:
        source = version_latest(template=template)
        if source is None:
            raise ServiceError(f"the template {template.name!r} has no version to copy")
    elif version.template_id != template.pk or version.workspace_id != template.workspace_id:
        raise ServiceError("the version to copy belongs to another template")
    else:
        source = version
    if source.layout_id is None and source.layout_html.strip():
        raise ServiceError(f"version {source.number} was submitted with a layout that has since been deleted, so "
                           "a copy cannot reproduce it; copy another version, or give the template a layout first")
    if name is None:
        copy_name = template_name_unused(workspace_id=template.workspace_id, name=template.name,
                                         first="{name} (copy)", then="{name} (copy {n})")
    else:
        copy_name = _name(name, "template")
        if _name_taken(template.workspace_id, copy_name):
            raise ServiceError(f"a template named {copy_name!r} already exists in this workspace; choose another name")
    subject = source.subject if subject is None else subject
    preheader = source.preheader if preheader is None else preheader
    with transaction.atomic():
        copy = template_create(
            workspace=template.workspace, name=copy_name, kind=template.kind, topic=template.topic,
            high_risk=template.high_risk, actor=actor, subject=subject, preheader=preheader, html=source.html,
            text=source.text, blocks=source.blocks, layout=source.layout, slug=slug)
        note = f"copied from “{template.name}” version {source.number}"[:500]
        TemplateVersion.objects.filter(template=copy, number=1).update(note=note)
        audit_record(workspace=template.workspace, actor=actor, action="email_template.duplicate",
                     target=f"email_template:{copy.pk}",
                     data={"from": template.pk, "from_version": source.number, "name": copy.name,
                           "changed": [k for k, v in (("subject", subject), ("preheader", preheader))
                                       if v != getattr(source, k)]})
    return copy
