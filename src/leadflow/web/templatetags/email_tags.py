"""Email page helpers: links to email pages that may not exist yet."""

from django import template
from django.urls import NoReverseMatch, reverse

register = template.Library()


@register.simple_tag
def email_url(name: str, *args) -> str:
    """The URL of a named page, or "" when no such URL name exists (a part not built yet), so the
    email sub-navigation renders whichever pages are there."""
    try:
        return reverse(name, args=args or None)
    except NoReverseMatch:
        return ""
