"""Reads over workspaces and memberships."""

from __future__ import annotations

from leadflow.core.models import Membership, Workspace


def workspace_get(*, slug: str) -> Workspace | None:
    return Workspace.objects.filter(slug=slug).first()


def workspaces_for_user(*, user) -> list[Workspace]:
    if not user.is_authenticated:
        return []
    if user.is_superuser:
        return list(Workspace.objects.order_by("name"))
    return list(Workspace.objects.filter(memberships__user=user).order_by("name"))


def user_role(*, user, workspace: Workspace) -> str | None:
    if user.is_superuser:
        return "admin"
    m = Membership.objects.filter(user=user, workspace=workspace).only("role").first()
    return m.role if m else None
