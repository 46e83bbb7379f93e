"""Building the email that goes on the wire: MIME structure, headers and the DKIM signature.

One message is multipart/alternative (plain text, then HTML), UTF-8: a part that is plain ASCII
with short lines goes as 7bit, anything else as quoted-printable or base64, whichever is shorter
(so the message is 7-bit clean for any relay). Headers: From (the workspace's sender), To,
Subject, Date, Message-ID on the sending domain, Reply-To, and for marketing mail the RFC 8058
pair `List-Unsubscribe` (HTTPS one-click URL and a mailto) and `List-Unsubscribe-Post`, plus
`List-Id` and `Feedback-ID`. The envelope sender is a VERP address, `bounces+TOKEN@bounce-domain`,
so a bounce names its message. The DKIM signature (dkimpy) covers every one of those headers.

dkimpy computes the RSA signature in pure Python (about 8 ms for a 2048-bit key on this kind of
machine, more than everything else a send costs together) and re-parses the PEM key and the whole
message for every signature; `DkimSigner` parses its key once (`cryptography`), canonicalises and
hashes the headers it built itself, and signs with OpenSSL (about 0.5 ms), producing exactly the
header dkimpy would (the tests compare them). Signatures verify with plain `dkim.verify`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import random
import re
import secrets
import time
from dataclasses import dataclass
from email.utils import format_datetime

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils

from leadflow.messaging.tokens import verp_local

SIGNED_HEADERS = ("from", "to", "subject", "date", "message-id", "reply-to", "mime-version", "content-type",
                  "list-unsubscribe", "list-unsubscribe-post", "list-id", "feedback-id")
_LIST_LABEL = re.compile(r"[^a-z0-9-]+")
_FEEDBACK_FIELD = re.compile(r"[^A-Za-z0-9._-]+")
_ASCII = bytes(range(128))
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
_MARKETING_ONLY = frozenset({b"list-unsubscribe", b"list-unsubscribe-post", b"list-id"})
_ADDRESS_REFUSED = re.compile(r'[\r\n\t <>"(),;:\[\]\\]')

# Message-ID suffixes and MIME boundaries need to be unique, not secret. `secrets` reads the
# kernel's random source and releases the GIL on every call, which on the dispatcher's thread
# meant waiting for the SMTP threads to give it back; a generator seeded from it (again in every
# forked process) costs nothing, and a boundary is checked against the parts it separates.
_unique = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _unique.seed(secrets.randbits(128)))


def _hex(nbytes: int) -> str:
    return f"{_unique.getrandbits(nbytes * 8):0{nbytes * 2}x}"


class MimeError(ValueError):
    """The message cannot be built (a bad address, a header that cannot be encoded)."""


class SignError(MimeError):
    """The DKIM signature cannot be made (`Built.final`)."""


class DkimSigner:
    """Signs messages for one domain with one key (PEM, PKCS#1 or PKCS#8), parsed once.

    The signature is the one dkimpy's `DKIM.sign` makes (relaxed/simple, rsa-sha256, the same tags
    in the same order, folded the same way), computed without dkimpy's per-message work: dkimpy
    re-parses the PEM key in pure Python and splits the whole message into lines for every
    signature. A message that is not CRLF-only (never one `message_build` makes) goes through
    dkimpy as before."""

    def __init__(self, *, domain: str, selector: str, private_key_pem: str):
        self.domain = domain.encode("idna")
        self.selector = selector.encode("ascii")
        self.pem = private_key_pem.encode()
        self.key = serialization.load_pem_private_key(self.pem, password=None)

    def sign(self, data: bytes, include_headers: list[bytes]) -> bytes:
        """The `DKIM-Signature: …\\r\\n` header line for `data` (relaxed/simple, rsa-sha256)."""
        include = tuple(h.lower() for h in include_headers)
        split = data.find(b"\r\n\r\n")
        headers = _header_fields(data[:split + 2]) if split >= 0 and data.count(b"\n") == data.count(b"\r\n") else None
        if headers is None or b"from" not in include or _SHOULD_NOT_SIGN.intersection(include):
            signer = _FastDKIM(data, key=self.key)
            return signer.sign(self.selector, self.domain, self.pem, include_headers=list(include_headers),
                               canonicalize=(b"relaxed", b"simple"))
        body = data[split + 4:]
        end = len(body)  # simple body canonicalisation: exactly one CRLF at the end
        while body.endswith(b"\r\n", 0, end):
            end -= 2
        body = body[:end] + b"\r\n"
        fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", self.domain),
                  (b"i", b"@" + self.domain), (b"q", b"dns/txt"), (b"s", self.selector),
                  (b"t", str(int(time.time())).encode("ascii")), (b"h", b" : ".join(include)),
                  (b"bh", base64.b64encode(hashlib.sha256(body).digest())), (b"b", b"0" * 60)]
        return b"DKIM-Signature: " + _dkim_header(fields, headers, include, self.key)


class _FastDKIM(dkim.DKIM):
    """dkimpy's DKIM with the RSA step done by `cryptography` (see the module docstring)."""

    def __init__(self, message: bytes, *, key):
        super().__init__(message)
        self._key = key

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, standardize=False):
        # dkimpy 1.1 DomainSigner.gen_header for rsa-sha256, with the signature from OpenSSL.
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = dkim.fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
        header = (header_name, b" " + header_value)
        h = dkim.HashThrough(self.hasher(), False)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = dkim.hash_headers(h, canon_policy, headers, include_headers, header, dict(fields))
        signature = self._key.sign(h.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        idx = [i for i in range(len(fields)) if fields[i][0] == b"b"][0]
        fields[idx] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep)


# dkimpy's DKIM.SHOULD_NOT: headers it refuses to sign (never in SIGNED_HEADERS; kept for parity).
_SHOULD_NOT_SIGN = frozenset(h.lower() for h in dkim.DKIM.SHOULD_NOT)
_HEADER_NAME = re.compile(rb"([\x21-\x7e]+?):")
_WSP = re.compile(rb"[\t ]+")


def _header_fields(head: bytes) -> list[tuple[bytes, bytes]] | None:
    """(name, raw value with its CRLF) of each header field, as dkimpy's rfc822_parse reads them;
    None for anything it would read differently."""
    fields: list[list[bytes]] = []
    for line in head[:-2].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line + b"\r\n"
            continue
        match = _HEADER_NAME.match(line)
        if match is None:
            return None
        fields.append([match.group(1), line[match.end():] + b"\r\n"])
    return [(name, value) for name, value in fields]


def _select_headers(headers: list[tuple[bytes, bytes]], include: tuple[bytes, ...]) -> list[tuple[bytes, bytes]]:
    """dkimpy's select_headers: for each name signed, the last field of that name not taken yet."""
    found: dict[bytes, list[int]] = {}
    for index, (name, _) in enumerate(headers):
        found.setdefault(name.lower(), []).append(index)
    return [headers[found[name].pop()] for name in include if found.get(name)]


def _relaxed(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return name.lower().rstrip(), _WSP.sub(b" ", value.replace(b"\r\n", b"").replace(b"\n", b"")).strip()


def _dkim_header(fields: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]], include: tuple[bytes, ...],
                 key) -> bytes:
    """dkimpy 1.1's DomainSigner.gen_header for rsa-sha256 with relaxed headers, the RSA step by
    OpenSSL: the folded header value after `DKIM-Signature:`."""
    name = b"DKIM-Signature"
    value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(name), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    h = hashlib.sha256()
    for field_name, field_value in _select_headers(headers, include):
        lower, canonical = _relaxed(field_name, field_value)
        h.update(lower + b":" + canonical + b"\r\n")
    lower, canonical = _relaxed(name, b" " + value)
    h.update(lower + b":" + canonical)
    signature = key.sign(h.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    fields = [(tag, base64.b64encode(signature)) if tag == b"b" else (tag, v) for tag, v in fields]
    return dkim.fold(b"; ".join(b"=".join(x) for x in fields) + b"\r\n", namelen=len(name), linesep=b"\r\n")


@dataclass(frozen=True)
class Sender:
    """Who a workspace's mail is from and how it is signed. `bounce_domain` carries the VERP
    envelope senders and the unsubscribe mailto; `signer` is None when no SendingDomain matches
    the From domain (the mail goes out unsigned)."""

    from_name: str
    from_email: str
    reply_to: str
    domain: str
    bounce_domain: str
    signer: DkimSigner | None
    feedback_sender: str = "leadflow"


@dataclass(frozen=True)
class Built:
    """A message ready for the wire. Built with `sign_later`, `data` is not signed yet and
    `final()` signs it (the dispatcher calls it in the SMTP thread: OpenSSL's RSA step releases
    the GIL, so signing one message overlaps rendering the next)."""

    data: bytes
    envelope_from: str
    recipient: str
    message_id: str
    signer: DkimSigner | None = None
    include: tuple[bytes, ...] = ()

    def final(self) -> bytes:
        """The bytes to send: `data`, DKIM-signed when that was left for now. SignError when the
        signature cannot be made."""
        if self.signer is None:
            return self.data
        try:
            return self.signer.sign(self.data, list(self.include)) + self.data
        except Exception as exc:  # dkimpy's and OpenSSL's errors have no common base
            raise SignError(f"could not build or sign: {exc}") from exc


def verp_address(message_id: int, bounce_domain: str, *, prefix: str = "bounces") -> str:
    return f"{prefix}+{verp_local(message_id)}@{bounce_domain}"


def _single_line(value: str) -> str:
    return " ".join(str(value).split())


def address_check(value: str) -> str:
    """`value` if it can go on the wire as an address (one @, a dotted domain, no spaces or
    brackets); MimeError otherwise."""
    return _check_address(value)


def _check_address(value: str) -> str:
    value = value.strip()
    if not value or _ADDRESS_REFUSED.search(value) or value.count("@") != 1:
        raise MimeError(f"not a usable email address: {value!r}")
    local, _, domain = value.rpartition("@")
    if not local or not domain or "." not in domain.strip(".") or not value.isprintable():
        raise MimeError(f"not a usable email address: {value!r}")
    return value


def _wire_address(value: str) -> str:
    """The address as it goes into a header: an internationalised domain as IDNA (a non-ASCII
    local part stays as it is and needs SMTPUTF8)."""
    local, _, domain = value.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise MimeError(f"not a usable email address: {value!r}") from exc
    return f"{local}@{domain}"


def _fold(name: str, value: str) -> bytes:
    """`Name: value` folded at spaces to lines of at most 78 characters where possible."""
    line = f"{name}: {value}"
    if len(line) <= 78:
        return line.encode() + b"\r\n"
    out, current = [], f"{name}:"
    for word in value.split(" "):
        if len(current) + 1 + len(word) > 78 and current.strip() and current != f"{name}:":
            out.append(current)
            current = " " + word
        else:
            current = f"{current} {word}"
    out.append(current)
    return "\r\n".join(out).encode() + b"\r\n"


def _encoded_words(value: str) -> str:
    """RFC 2047 base64 encoded words (each at most 75 characters, never splitting a character),
    separated by folding whitespace."""
    words, chunk, size = [], [], 0
    for char in value:
        width = len(char.encode("utf-8"))
        if size + width > 45:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    if chunk:
        words.append("".join(chunk))
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode()}?=" for w in words)


def _encoded(name: str, value: str) -> bytes:
    if value.isascii():
        return _fold(name, value)
    return f"{name}: {_encoded_words(value)}\r\n".encode()


def _mailbox(name: str, address: str) -> str:
    name = _single_line(name)
    if not name:
        return address
    if not name.isascii():
        return f"{_encoded_words(name)} <{address}>"
    if _ATOM_PHRASE.fullmatch(name):
        return f"{name} <{address}>"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{address}>'


def _body_part(content: str, subtype: str) -> bytes:
    raw = content.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if raw.isascii() and max((len(line) for line in raw.split(b"\n")), default=0) <= 900:
        body, cte = raw, b"7bit"
    elif len(raw.translate(None, _ASCII)) * 2 > len(raw) * 0.37:  # base64 is the shorter
        body, cte = base64.encodebytes(raw), b"base64"
    else:
        body, cte = binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False), b"quoted-printable"
    body = body.replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return (b"Content-Type: text/" + subtype.encode() + b'; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + body)


def list_id(*, topic: str, campaign: str, domain: str) -> str:
    label = _LIST_LABEL.sub("-", (topic or "marketing").lower()).strip("-") or "marketing"
    phrase = _single_line(campaign or topic or "marketing").replace('"', "'").replace("\\", "")
    return f'"{phrase}" <{label}.{domain}>'


def feedback_id(*, campaign: str, kind: str, workspace_slug: str, sender: str) -> str:
    """Gmail's Feedback-ID `campaign:kind:workspace:sender` (colons only as separators)."""
    fields = [_FEEDBACK_FIELD.sub("-", f or "none")[:60] for f in (campaign, kind, workspace_slug, sender)]
    return ":".join(fields)


def message_build(*, message, subject: str, html: str, text: str, sender: Sender, now: dt.datetime,
                  unsubscribe_url: str = "", workspace_slug: str = "", sign_later: bool = False) -> Built:
    """The signed bytes, envelope and Message-ID of one outbox `message` with its rendered
    content (with `sign_later`, signed by `Built.final()`). Raises MimeError for anything that
    cannot be put on the wire."""
    recipient = _wire_address(_check_address(message.to_email))
    from_address = _wire_address(_check_address(sender.from_email))
    message_id = f"<{message.pk}.{_hex(6)}@{sender.domain}>"
    head = [_encoded("From", _mailbox(sender.from_name, from_address)),
            _fold("To", recipient),
            _encoded("Subject", _single_line(subject)),
            _fold("Date", format_datetime(now.astimezone(dt.timezone.utc))),
            _fold("Message-ID", message_id)]
    if sender.reply_to:
        head.append(_fold("Reply-To", _wire_address(_check_address(sender.reply_to))))
    if message.kind == "marketing":
        targets = []
        if unsubscribe_url.startswith(("https://", "http://")):
            targets.append(f"<{unsubscribe_url}>")
        targets.append(f"<mailto:{verp_address(message.pk, sender.bounce_domain, prefix='unsubscribe')}"
                       "?subject=unsubscribe>")
        head.append(_fold("List-Unsubscribe", ", ".join(targets)))
        if unsubscribe_url.startswith("https://"):
            head.append(_fold("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        head.append(_encoded("List-Id", list_id(topic=message.topic, campaign=message.campaign,
                                                domain=sender.domain)))
    head.append(_fold("Feedback-ID", feedback_id(campaign=message.campaign, kind=message.kind,
                                                 workspace_slug=workspace_slug, sender=sender.feedback_sender)))
    parts = _body_part(text or " ", "plain"), _body_part(html, "html")
    boundary = f"=_lf_{_hex(12)}".encode()
    while any(boundary in part for part in parts):  # never, unless a part was written to contain one
        boundary = f"=_lf_{_hex(12)}".encode()
    head.append(b"MIME-Version: 1.0\r\n")
    head.append(b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n')
    data = b"".join(head) + b"\r\n" + b"".join([
        b"--" + boundary + b"\r\n", parts[0],
        b"--" + boundary + b"\r\n", parts[1],
        b"--" + boundary + b"--\r\n"])
    if sender.signer is not None:
        include = [h.encode() for h in SIGNED_HEADERS if h != "reply-to" or sender.reply_to]
        include = [h for h in include if h not in _MARKETING_ONLY or message.kind == "marketing"]
        if not unsubscribe_url.startswith("https://"):
            include = [h for h in include if h != b"list-unsubscribe-post"]
        if sign_later:
            return Built(data=data, envelope_from=verp_address(message.pk, sender.bounce_domain), recipient=recipient,
                         message_id=message_id, signer=sender.signer, include=tuple(include))
        data = sender.signer.sign(data, include) + data
    bounce = verp_address(message.pk, sender.bounce_domain)
    return Built(data=data, envelope_from=bounce, recipient=recipient, message_id=message_id)
