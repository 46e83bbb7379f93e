"""The consent links every marketing email carries: one-click unsubscribe (RFC 8058), the
preference centre, and double opt-in confirmation. Tokens alone identify the person and the
message (the unsubscribe POST carries no cookie), signed so they cannot be forged."""

from __future__ import annotations

from leadflow.messaging.tokens import public_url, token_make


def unsubscribe_url(message) -> str:
    """`/u/TOKEN` for a sent message: GET shows a confirmation and the preferences, POST with
    `List-Unsubscribe=One-Click` unsubscribes from the message's topic (or all marketing).

    Made once per message object: the renderer (the `unsubscribe_url` variable) and the
    List-Unsubscribe header ask for the same URL."""
    key = (message.workspace_id, message.pk, public_url(""))
    cached = getattr(message, "_lf_unsubscribe_url", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    url = public_url(f"u/{token_make('unsubscribe', {'w': message.workspace_id, 'm': message.pk})}")
    if message.pk is not None:
        message._lf_unsubscribe_url = (key, url)
    return url


def preferences_url(*, workspace_id: int, contact_id: int) -> str:
    """`/p/TOKEN`: the person's preference centre (topics, pause, unsubscribe from everything)."""
    return public_url(f"p/{token_make('preferences', {'w': workspace_id, 'c': contact_id})}")


def test_preferences_url(message) -> str:
    """`/p/TOKEN` naming a test send (not a person): the preference centre of the contact the test
    was personalised for (else of a person with no choices yet), read-only, with a note that it
    is a test. A test goes to a tester, so no link in it may act for anyone."""
    return public_url(f"p/{token_make('preferences', {'w': message.workspace_id, 'm': message.pk})}")


def optin_confirm_url(request) -> str:
    """`/c/TOKEN` for a pending double opt-in (an OptInRequest)."""
    return public_url(f"c/{token_make('optin', {'w': request.workspace_id, 'r': request.pk})}")
