"""Template context: the current workspace and the ones the user may switch to."""

from leadflow.core.selectors import workspaces_for_user


def current_workspace(request):
    """The workspace chosen in the session, if the user may see it; else their first one."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    cached = getattr(request, "_leadflow_workspace", False)
    if cached is not False:
        return cached
    choices = workspaces_for_user(user=user)
    chosen = request.session.get("workspace_id")
    workspace = next((w for w in choices if w.pk == chosen), choices[0] if choices else None)
    request._leadflow_workspace = workspace
    request._leadflow_workspaces = choices
    return workspace


def workspace(request):
    ws = current_workspace(request)
    return {"workspace": ws, "workspaces": getattr(request, "_leadflow_workspaces", [])}
