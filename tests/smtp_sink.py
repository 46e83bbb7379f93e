"""A real SMTP server on loopback for tests (aiosmtpd), collecting what it receives.

    with SmtpSink() as sink:                      # plain SMTP on 127.0.0.1:<free port>
        ... send to sink.url ...
        sink.messages[0].envelope.mail_from

Variants: `SmtpSink(tls=TlsFiles.make(tmp_path))` offers STARTTLS with a self-signed certificate
made by `cryptography` (clients trust it with `?cafile=`), `implicit_tls=True` makes it an
`smtps://` server, `auth=("user", "password")` requires a login. `sink.mode` switches behaviour
while it runs:

    ok              accept everything
    refuse_421      answer MAIL with 421 and close the session
    refuse_451      answer MAIL with 451 (temporary)
    refuse_550      answer RCPT with 550 5.1.1 (also: `sink.reject = {"bad@example.com"}`
                    refuses just those recipients, whatever the mode)
    drop_at_data    close the connection when DATA is sent, before any content
    drop_after_body read the whole message, then close without answering (the client cannot
                    know whether it was accepted)
    hang_greeting   accept the TCP connection and never say anything
    hang_after_body read the whole message and never answer
    discard         accept and count, keep nothing (benchmarks)

`pipelining=True` makes it offer PIPELINING (RFC 2920), as the large providers do.

`sink.fail_next(n, mode)` applies a transaction mode (not hang_greeting) to the next n transactions only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path, host: str = "127.0.0.1") -> TlsFiles:
        """A self-signed certificate for `host` (IP address and name 'localhost')."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                            x509.DNSName("localhost")]), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / "sink-cert.pem", folder / "sink-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cls(cert_path, key_path)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool = False
    login: str | None = None
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class _Plan:
    mode: str = "ok"
    remaining: int = 0
    then: str = "ok"


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.sink.pipelining:  # aiosmtpd reads commands one by one, so pipelined ones just queue
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        mode = self.sink._transaction_mode()
        session.lf_mode = mode
        if mode == "refuse_421":
            server._lf_close_after_reply = True
            return "421 4.3.2 Service shutting down, try again later"
        if mode == "refuse_451":
            return "451 4.3.0 Temporary local problem, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if getattr(session, "lf_mode", "ok") == "refuse_550" or address.lower() in self.sink.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        mode = getattr(session, "lf_mode", "ok")
        received = Received(mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
                            data=b"" if mode == "discard" else envelope.original_content,
                            tls=session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None,
                            login=_text(getattr(session, "auth_data", None)),
                            mail_options=list(envelope.mail_options))
        if mode == "hang_after_body":
            self.sink._record(received, unanswered=True)
            await asyncio.Event().wait()
        if mode == "drop_after_body":
            self.sink._record(received, unanswered=True)
            server._lf_drop_reply = True
            return "250 OK (never sent)"
        self.sink._record(received, count_only=mode == "discard")
        return "250 2.0.0 OK queued"


class _SinkSMTP(SMTP):
    """aiosmtpd's server with the sink's fault modes at the protocol level."""

    def __init__(self, *args, sink: SmtpSink, **kwargs):
        super().__init__(*args, **kwargs)
        self._sink = sink
        self._lf_drop_reply = False
        self._lf_close_after_reply = False

    async def smtp_EHLO(self, hostname):
        if not self._tls_protocol:  # a session, not its restart after STARTTLS
            self._sink._connected()
        await super().smtp_EHLO(hostname)

    async def push(self, status):
        text = status if isinstance(status, str) else status.decode()
        if text.startswith("220 ") and self._sink.mode == "hang_greeting" and not self._tls_protocol:
            self._sink._hung()
            await asyncio.Event().wait()
        if self._lf_drop_reply:
            self._lf_drop_reply = False
            self.transport.abort()
            raise ConnectionResetError("dropped by the test sink")
        await super().push(status)
        if self._lf_close_after_reply:
            self._lf_close_after_reply = False
            self.transport.close()

    async def smtp_DATA(self, arg):
        if self._sink.data_without_recipients and not self.envelope.rcpt_tos:
            # Some servers take DATA even when every recipient was refused (RFC 2920 §3.1 tells
            # a pipelining client to end it with an empty message); the content is refused.
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            while await self._reader.readuntil() not in (b".\r\n", b""):
                pass
            self._sink.empty_data += 1
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if getattr(self.session, "lf_mode", "ok") == "drop_at_data" and self.envelope.rcpt_tos:
            self._sink._dropped()
            self.transport.abort()
            return
        await super().smtp_DATA(arg)


class SmtpSink:
    def __init__(self, *, tls: TlsFiles | None = None, implicit_tls: bool = False,
                 auth: tuple[str, str] | None = None, mode: str = "ok", timeout: float = 30,
                 pipelining: bool = False):
        self.port = free_port()
        self.pipelining = pipelining
        self.host = "127.0.0.1"
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.mode = mode
        self.reject: set[str] = set()
        self.messages: list[Received] = []
        self.unanswered: list[Received] = []
        self.count = 0
        self.connections_hung = 0
        self.drops = 0
        self.data_without_recipients = False  # answer DATA with 354 although no recipient was accepted
        self.empty_data = 0  # such DATA commands, ended by the client with no content
        self.connections = 0  # sessions that said EHLO
        self._plan = _Plan()
        self._lock = threading.Lock()
        kwargs: dict = {"hostname": self.host, "port": self.port, "ready_timeout": 10}
        smtp_kwargs: dict = {"timeout": timeout, "enable_SMTPUTF8": True, "decode_data": False}
        if tls is not None and not implicit_tls:
            smtp_kwargs["tls_context"] = tls.server_context()
            smtp_kwargs["require_starttls"] = auth is not None
        if tls is not None and implicit_tls:
            kwargs["ssl_context"] = tls.server_context()
        if auth is not None:
            smtp_kwargs["authenticator"] = self._authenticate
            smtp_kwargs["auth_required"] = True
            smtp_kwargs["auth_require_tls"] = tls is not None
        sink = self

        class _Controller(Controller):
            def factory(self):
                return _SinkSMTP(self.handler, sink=sink, **self.SMTP_kwargs)

        self.controller = _Controller(_Handler(self), **kwargs, **smtp_kwargs)

    # --- what tests use ---

    @property
    def url(self) -> str:
        scheme = "smtps" if self.implicit_tls else "smtp"
        cred = f"{quote(self.auth[0], safe='')}:{quote(self.auth[1], safe='')}@" if self.auth else ""
        query = f"?cafile={self.tls.cert}" if self.tls else ""
        return f"{scheme}://{cred}{self.host}:{self.port}{query}"

    def url_with(self, **options) -> str:
        sep = "&" if "?" in self.url else "?"
        return self.url + (sep + "&".join(f"{k}={v}" for k, v in options.items()) if options else "")

    def fail_next(self, count: int, mode: str, *, then: str | None = None) -> None:
        with self._lock:
            self._plan = _Plan(mode=mode, remaining=count, then=then or self.mode)

    def recipients(self) -> list[str]:
        return [r for m in self.messages for r in m.rcpt_tos]

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals ---

    def _transaction_mode(self) -> str:
        with self._lock:
            if self._plan.remaining > 0:
                self._plan.remaining -= 1
                mode = self._plan.mode
                if self._plan.remaining == 0:
                    self.mode = self._plan.then
                return mode
            return self.mode

    def _dropped(self) -> None:
        with self._lock:
            self.drops += 1

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _hung(self) -> None:
        with self._lock:
            self.connections_hung += 1

    def _record(self, received: Received, *, unanswered: bool = False, count_only: bool = False) -> None:
        with self._lock:
            if unanswered:
                self.unanswered.append(received)
            else:
                self.count += 1
                if not count_only:
                    self.messages.append(received)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and self.auth is not None:
            if auth_data.login.decode() == self.auth[0] and auth_data.password.decode() == self.auth[1]:
                return AuthResult(success=True, auth_data=auth_data.login)
        return AuthResult(success=False, handled=False)


class NoWait:
    """A monotonic clock and sleep for the dispatcher's rate limiter that never really waits."""

    now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def dispatching_to_sink(public_url: str = "https://lf.example.com") -> Iterator[SmtpSink]:
    """A running sink, LEADFLOW_PUBLIC_URL set, and a dispatcher runtime that never sleeps."""
    from django.test import override_settings

    from leadflow.messaging import dispatch

    with SmtpSink() as server, override_settings(PUBLIC_URL=public_url):
        timer = NoWait()
        with dispatch.runtime_use(dispatch.Runtime(monotonic=timer.monotonic, sleep=timer.sleep)):
            yield server


@contextmanager
def sending_to_sink(workspace, public_url: str = "https://lf.example.com", *, from_name: str = "Acme",
                    from_email: str = "news@acme.test",
                    postal_address: str = "1 Main St, Springfield") -> Iterator[SmtpSink]:
    """`dispatching_to_sink`, with `workspace`'s sender set and the sink as its default server
    (no rate limit)."""
    from leadflow.messaging.sending import messaging_settings_update, sending_server_create

    with dispatching_to_sink(public_url) as server:
        messaging_settings_update(workspace_id=workspace.pk, from_name=from_name, from_email=from_email,
                                  postal_address=postal_address)
        sending_server_create(workspace=workspace, name="Loopback", url=server.url, is_default=True,
                              rate_per_second=0)
        yield server


def subjects_by_address(sink: SmtpSink) -> dict[str, list[str]]:
    """Each recipient's received subjects, in the order they arrived."""
    found: dict[str, list[str]] = {}
    for received in sink.messages:
        for rcpt in received.rcpt_tos:
            found.setdefault(rcpt, []).append(str(received.message["Subject"]))
    return found
