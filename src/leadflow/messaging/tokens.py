"""Signed tokens for every link and address LeadFlow puts in an email.

A token carries what it stands for (a message, a contact, a URL) and a signature under the
site's SECRET_KEY with a salt per purpose, so a token made for one purpose (a click) is refused
for another (an unsubscribe), and any altered byte is refused. Links built from them start with
`LEADFLOW_PUBLIC_URL`.

VERP addresses need something else: local parts may be lower-cased on the way back, so
`verp_local` is lower-case base-32 of the message id with a truncated HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from django.conf import settings
from django.core import signing

PURPOSES = frozenset({"open", "click", "unsubscribe", "preferences", "optin"})


class BadToken(Exception):
    """The token is malformed, altered, expired or made for another purpose."""


def token_make(purpose: str, payload: dict) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return signing.dumps(payload, salt=f"leadflow.email.{purpose}", compress=True)


def token_read(purpose: str, token: str, *, max_age: float | None = None) -> dict:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    try:
        payload = signing.loads(token, salt=f"leadflow.email.{purpose}", max_age=max_age)
    except signing.SignatureExpired as exc:
        raise BadToken("this link has expired") from exc
    except (signing.BadSignature, ValueError, UnicodeDecodeError) as exc:
        raise BadToken("this link is not valid") from exc
    if not isinstance(payload, dict):
        raise BadToken("this link is not valid")
    return payload


def public_url(path: str) -> str:
    """An absolute URL on LEADFLOW_PUBLIC_URL (a relative one when it is not set)."""
    base = getattr(settings, "PUBLIC_URL", "") or ""
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def _verp_mac(number: bytes) -> bytes:
    key = hashlib.sha256(("leadflow.verp" + settings.SECRET_KEY).encode()).digest()
    return hmac.new(key, number, hashlib.sha256).digest()[:5]


def verp_local(message_id: int) -> str:
    """The token in `bounces+TOKEN@domain` for a message: lower-case, letters and digits only."""
    number = message_id.to_bytes(8, "big").lstrip(b"\0") or b"\0"
    raw = number + _verp_mac(number)
    return base64.b32encode(raw).decode().rstrip("=").lower()


def verp_read(token: str) -> int:
    """The message id a VERP token stands for; BadToken if it was not made here."""
    try:
        text = token.strip().upper()
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, base64.binascii.Error) as exc:
        raise BadToken("not a LeadFlow bounce address") from exc
    number, mac = raw[:-5], raw[-5:]
    if not number or not hmac.compare_digest(mac, _verp_mac(number)):
        raise BadToken("not a LeadFlow bounce address")
    return int.from_bytes(number, "big")
