"""Helpers shared by LeadFlow's management commands."""

from django.core.management.base import CommandError

from leadflow.core.models import Workspace


def workspace_arg(slug: str | None) -> Workspace:
    """The workspace named by --workspace, or the only/first one when not given."""
    if slug:
        workspace = Workspace.objects.filter(slug=slug).first()
        if workspace is None:
            raise CommandError(f"no workspace with the slug {slug!r} (see: leadflow workspaces list)")
        return workspace
    workspace = Workspace.objects.order_by("pk").first()
    if workspace is None:
        raise CommandError("there is no workspace yet: run `leadflow up` or `leadflow workspaces create`")
    return workspace
