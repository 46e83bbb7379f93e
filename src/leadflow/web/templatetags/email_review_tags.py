"""`{% email_review_count as n %}`: how many of the workspace's messages wait in review (the badge
on Email → Review)."""

from django import template

from leadflow.messaging.review import review_count

register = template.Library()


@register.simple_tag(takes_context=True)
def email_review_count(context) -> int:
    request = context.get("request")
    workspace = context.get("workspace")
    if request is None or workspace is None or not request.user.is_authenticated:
        return 0
    return review_count(workspace_id=workspace.pk)
