"""Email page helpers: links to email pages that may not exist yet, and readable names for the
actor strings rows keep (`user:7`, `key:lf_ab12`, `system`)."""

from __future__ import annotations

from collections.abc import Iterable

from django import template
from django.contrib.auth import get_user_model
from django.urls import NoReverseMatch, reverse

register = template.Library()

USER_PREFIX = "user:"
KEY_PREFIX = "key:"


@register.simple_tag
def email_url(name: str, *args) -> str:
    """The URL of a named page, or "" when no such URL name exists (a part not built yet), so the
    email sub-navigation renders whichever pages are there."""
    try:
        return reverse(name, args=args or None)
    except NoReverseMatch:
        return ""


def actor_names(actors: Iterable[str]) -> dict[str, str]:
    """{actor: name to show} for a page's actor strings, in one query: `user:N` is the user's
    username; an API key, the system and other sources (`one_click`, `complaint:ses`) are described.
    A user that no longer exists keeps `user:N`."""
    actors = {a for a in actors if a}
    ids = {int(a[len(USER_PREFIX):]) for a in actors
           if a.startswith(USER_PREFIX) and a[len(USER_PREFIX):].isdigit()}
    users = dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username")) if ids else {}
    names = {}
    for actor in actors:
        if actor.startswith(USER_PREFIX) and actor[len(USER_PREFIX):].isdigit():
            names[actor] = users.get(int(actor[len(USER_PREFIX):]), actor)
        elif actor.startswith(KEY_PREFIX):
            names[actor] = f"API key {actor[len(KEY_PREFIX):]}…"
        elif actor == "system":
            names[actor] = "LeadFlow"
        else:
            names[actor] = actor
    return names


@register.filter
def actor(value: str, names: dict | None) -> str:
    """`{{ version.created_by|actor:actor_names }}`: the name from the page's `actor_names`."""
    if not value:
        return ""
    return (names or {}).get(value, value)
