"""The workspace the secret key belongs to."""

from __future__ import annotations

from ninja import Router

from leadflow.api.schemas import WorkspaceOut

router = Router(tags=["workspace"])


@router.get("", response=WorkspaceOut, summary="The workspace of this secret key")
def workspace_get(request):
    return request.workspace
