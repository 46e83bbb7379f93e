"""Signed tokens for every link and address LeadFlow puts in an email.

A token carries what it stands for (a message, a contact, a URL) and a signature under the
site's SECRET_KEY with a key per purpose, so a token made for one purpose (a click) is refused
for another (an unsubscribe), and any altered byte is refused. Links built from them start with
`LEADFLOW_PUBLIC_URL`.

The format is `PAYLOAD:MAC`: URL-safe base64 of the compact JSON payload, and URL-safe base64 of
an HMAC-SHA256 of it (truncated to 128 bits) under a key derived from SECRET_KEY and the purpose.
A message carries about ten tokens, so this is on the sending hot path: it costs a few
microseconds, where `django.core.signing.dumps` with compression cost ~0.2 ms (`click_token` makes
the same click token with the destination's JSON made once per URL). Tokens made in the
earlier `signing.dumps` format (`PAYLOAD:TIMESTAMP:SIGNATURE`, in mail already delivered) are
still read.

VERP addresses need something else: local parts may be lower-cased on the way back, so
`verp_local` is lower-case base-32 of the message id with a truncated HMAC.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json

from django.conf import settings
from django.core import signing

PURPOSES = frozenset({"open", "click", "unsubscribe", "preferences", "optin"})


class BadToken(Exception):
    """The token is malformed, altered, expired or made for another purpose."""


@functools.lru_cache(maxsize=64)
def _key(purpose: str, secret: str) -> bytes:
    return hashlib.sha256(f"leadflow.email.{purpose}:{secret}".encode()).digest()


@functools.lru_cache(maxsize=64)
def _pads(key: bytes) -> tuple:
    """The SHA-256 states after HMAC's inner and outer key blocks (RFC 2104), made once per key."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(bytes(b ^ 0x5C for b in block))


def hmac_sha256(key: bytes, payload: bytes) -> bytes:
    """HMAC-SHA256, the same bytes as `hmac.digest(key, payload, "sha256")`, from the key's
    precomputed states. `hmac.digest` releases the GIL on every call; on the dispatcher's thread,
    which makes about ten of these per message while the SMTP threads run Python, each release
    meant waiting to get the GIL back (up to the 5 ms switch interval). Copying and updating a
    hash object with a few hundred bytes keeps the GIL, and skips re-deriving the key blocks."""
    inner, outer = _pads(key)
    first = inner.copy()
    first.update(payload)
    second = outer.copy()
    second.update(first.digest())
    return second.digest()


def _mac(purpose: str, secret: str, payload: bytes) -> bytes:
    digest = hmac_sha256(_key(purpose, secret), payload)[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def _token(purpose: str, payload_json: str) -> str:
    data = base64.urlsafe_b64encode(payload_json.encode()).rstrip(b"=")
    return (data + b":" + _mac(purpose, settings.SECRET_KEY, data)).decode()


def token_make(purpose: str, payload: dict) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return _token(purpose, json.dumps(payload, separators=(",", ":")))


@functools.lru_cache(maxsize=4096)  # a batch repeats its destinations
def _json_string(value: str) -> str:
    return json.dumps(value)


def click_token(message_id: int, url: str, links: int) -> str:
    """`token_make("click", {"m": message_id, "u": url, "n": links})`, the same token, with the
    URL's JSON made once per URL: a message carries several click tokens."""
    if type(message_id) is not int or type(links) is not int:
        return token_make("click", {"m": message_id, "u": url, "n": links})
    return _token("click", f'{{"m":{message_id},"u":{_json_string(url)},"n":{links}}}')


def _legacy_read(purpose: str, token: str, max_age: float | None) -> object:
    try:
        return signing.loads(token, salt=f"leadflow.email.{purpose}", max_age=max_age)
    except signing.SignatureExpired as exc:
        raise BadToken("this link has expired") from exc
    except (signing.BadSignature, ValueError, UnicodeDecodeError) as exc:
        raise BadToken("this link is not valid") from exc


def token_read(purpose: str, token: str, *, max_age: float | None = None) -> dict:
    """The payload of a token made for `purpose`; BadToken when it is altered, made for another
    purpose or (legacy tokens only, which carry a timestamp) older than `max_age` seconds."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    if not isinstance(token, str) or token.count(":") == 2:
        payload = _legacy_read(purpose, token, max_age)
    else:
        if max_age is not None:
            raise BadToken("this link has expired")  # compact tokens carry no time
        data, _, mac = token.partition(":")
        try:
            raw, given = data.encode("ascii"), mac.encode("ascii")
        except UnicodeEncodeError as exc:
            raise BadToken("this link is not valid") from exc
        secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
        if not data or not any(hmac.compare_digest(given, _mac(purpose, secret, raw)) for secret in secrets):
            raise BadToken("this link is not valid")
        try:
            payload = json.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
        except (ValueError, binascii.Error) as exc:
            raise BadToken("this link is not valid") from exc
    if not isinstance(payload, dict):
        raise BadToken("this link is not valid")
    return payload


def public_url(path: str) -> str:
    """An absolute URL on LEADFLOW_PUBLIC_URL (a relative one when it is not set)."""
    base = getattr(settings, "PUBLIC_URL", "") or ""
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


@functools.lru_cache(maxsize=8)
def _verp_key(secret: str) -> bytes:
    return hashlib.sha256(("leadflow.verp" + secret).encode()).digest()


def _verp_mac(number: bytes) -> bytes:
    return hmac_sha256(_verp_key(settings.SECRET_KEY), number)[:5]


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
