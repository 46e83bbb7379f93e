"""Talking to SMTP servers: server URLs, a connection pool per sending server, a rate limiter,
and the file transport used when no SMTP server is configured.

The client is the standard library's `smtplib` (synchronous), driven by a small thread pool per
server: the dispatcher renders and signs in its own thread while up to `pool_size` connections
each carry one message at a time. Sockets release the GIL, so rendering overlaps network waits,
and nothing here needs an event loop inside the (synchronous) worker or the Django ORM.

A send reports failures as `SmtpFailure`, which says whether the failure is temporary (try again
later), permanent, or *uncertain*: the whole message went out and the connection broke before the
server's answer. An uncertain message may have been delivered, so the dispatcher never resends it
(it goes to review: DESIGN principle 4).
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from django.conf import settings

from leadflow.config import ConfigError, parse_smtp_url

DEFAULT_TIMEOUT = 30.0
IDLE_CHECK_SECONDS = 10.0  # an idle connection older than this gets a NOOP before reuse
MAX_MESSAGES_PER_CONNECTION = 1000  # many servers cap a session; reconnect before they do
PASSWORD_MASK = "********"
HARD_BOUNCE_CODES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"})
_ENHANCED = re.compile(rb"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass(frozen=True)
class ServerConfig:
    """Where and how to connect. `file_path` set means the file transport (no SMTP at all)."""

    host: str = ""
    port: int = 25
    user: str = ""
    password: str = ""
    implicit_tls: bool = False
    timeout: float = DEFAULT_TIMEOUT
    verify: bool = True
    cafile: str = ""
    local_hostname: str = ""
    file_path: str = ""

    @property
    def label(self) -> str:
        if self.file_path:
            return f"files in {self.file_path}"
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"


def parse_server_url(url: str) -> ServerConfig:
    """`smtp://user:pass@host:port` (STARTTLS when the server offers it) or `smtps://…` (implicit
    TLS), with optional query options `timeout=SECONDS`, `verify=false` (do not check the
    server's certificate: test servers only), `cafile=/path/ca.pem` and `helo=NAME`.

    Raises ConfigError with the reason when the URL cannot be used."""
    try:
        parsed = parse_smtp_url(url.strip())
    except ValueError as exc:  # ConfigError, or a port that is not a number
        raise ConfigError(str(exc).replace("LEADFLOW_SMTP_URL: ", "")) from exc
    if parsed is None:
        raise ConfigError("the server URL is empty")
    options = dict(parse_qsl(urlsplit(url.strip()).query, keep_blank_values=True))
    unknown = set(options) - {"timeout", "verify", "cafile", "helo"}
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}; use timeout, verify, cafile or helo")
    timeout = DEFAULT_TIMEOUT
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError as exc:
            raise ConfigError(f"timeout must be a number of seconds, not {options['timeout']!r}") from exc
        if not 0 < timeout <= 600:
            raise ConfigError("timeout must be between 0 and 600 seconds")
    verify_raw = options.get("verify", "true").strip().lower()
    if verify_raw not in {"true", "false", "1", "0", "yes", "no"}:
        raise ConfigError(f"verify must be true or false, not {options['verify']!r}")
    return ServerConfig(host=parsed["host"], port=parsed["port"], user=parsed["user"], password=parsed["password"],
                        implicit_tls=parsed["ssl"], timeout=timeout, verify=verify_raw in {"true", "1", "yes"},
                        cafile=options.get("cafile", ""), local_hostname=options.get("helo", ""))


def default_config() -> ServerConfig:
    """The server a blank URL means: LEADFLOW_SMTP_URL as the settings parsed it, else the file
    transport writing .eml files to EMAIL_FILE_PATH (so `leadflow up` works without SMTP)."""
    if settings.EMAIL_BACKEND.endswith("smtp.EmailBackend"):
        raw = os.environ.get("LEADFLOW_SMTP_URL", "")
        extra = parse_server_url(raw) if raw else ServerConfig()
        return ServerConfig(host=settings.EMAIL_HOST, port=int(settings.EMAIL_PORT), user=settings.EMAIL_HOST_USER,
                            password=settings.EMAIL_HOST_PASSWORD, implicit_tls=bool(settings.EMAIL_USE_SSL),
                            timeout=float(getattr(settings, "LEADFLOW_SMTP_TIMEOUT", 0) or extra.timeout),
                            verify=extra.verify, cafile=extra.cafile, local_hostname=extra.local_hostname)
    return ServerConfig(file_path=str(getattr(settings, "EMAIL_FILE_PATH", "") or Path.cwd() / "sent-mail"))


def server_config(url: str) -> ServerConfig:
    return parse_server_url(url) if url.strip() else default_config()


def redact_url(url: str) -> str:
    """The URL with its password replaced by a mask (what the API and pages show)."""
    if not url:
        return ""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{PASSWORD_MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_keep_password(*, new: str, old: str) -> str:
    """`new` with the masked password replaced by the one in `old` (editing a server without
    retyping its password)."""
    parts = urlsplit(new)
    if parts.password != PASSWORD_MASK:
        return new
    old_password = urlsplit(old).password or ""
    netloc = parts.netloc.replace(f":{PASSWORD_MASK}@", f":{quote(old_password, safe='')}@" if old_password else "@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- failures -----------------------------------------------------------------------------------

class SmtpFailure(Exception):
    """A send that did not succeed. `stage` is where it broke (connect, auth, mail, rcpt, data,
    body, reply); `temporary` says a later attempt may succeed (always so for connect, auth and
    MAIL refusals: they are about the sending setup, not the message); `uncertain` that the message may have
    been delivered (the body went out, the answer never came); `server_fault` that it counts
    against the server's circuit breaker (not a refusal of one recipient)."""

    def __init__(self, reason: str, *, stage: str, temporary: bool, code: int | None = None,
                 enhanced: str = "", uncertain: bool = False, server_fault: bool = True):
        super().__init__(reason)
        self.reason = reason[:480]
        self.stage = stage
        self.temporary = temporary
        self.code = code
        self.enhanced = enhanced
        self.uncertain = uncertain
        self.server_fault = server_fault

    @property
    def hard_bounce(self) -> bool:
        """A permanent refusal of the recipient's address (550 5.1.1 user unknown and kin)."""
        return self.stage == "rcpt" and not self.temporary and self.enhanced in HARD_BOUNCE_CODES

    def detail(self) -> dict:
        return {"stage": self.stage, "smtp_code": self.code, "enhanced": self.enhanced, "reason": self.reason}


def _reply_failure(stage: str, code: int, reply: bytes) -> SmtpFailure:
    text = reply.decode("utf-8", "replace").replace("\n", " ").strip()
    match = _ENHANCED.match(reply or b"")
    enhanced = match.group(1).decode() if match else ""
    # A refusal of the sender (MAIL) or of the session is about the sending setup, not this
    # message: it waits (and counts against the server) like a temporary failure.
    temporary = 400 <= code < 500 or code < 200 or stage in {"connect", "auth", "mail"}
    server_fault = stage != "rcpt" and temporary
    return SmtpFailure(f"{code} {text}".strip(), stage=stage, temporary=temporary, code=code, enhanced=enhanced,
                       server_fault=server_fault)


def _io_failure(stage: str, exc: BaseException, *, uncertain: bool = False) -> SmtpFailure:
    kind = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else type(exc).__name__
    detail = str(exc) or kind
    reason = f"connection {kind} during {stage}" + (f": {detail}" if detail != kind else "")
    return SmtpFailure(reason, stage=stage, temporary=True, uncertain=uncertain)


def _first_refusal(replies: list[tuple[int, bytes]]) -> tuple[str, int, bytes] | None:
    """(stage, code, reply) of the first of the pipelined MAIL, RCPT and DATA replies that refuses."""
    for stage, (code, reply), wanted in zip(("mail", "rcpt", "data"), replies, ((250,), (250, 251), (354,))):
        if code not in wanted:
            return stage, code, reply
    return None


# --- one connection ------------------------------------------------------------------------------

def _ssl_context(config: ServerConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.cafile or None)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _quote_body(data: bytes) -> bytes:
    body = data.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class Connection:
    """One SMTP session, reused for many messages."""

    def __init__(self, config: ServerConfig, monotonic: Callable[[], float]):
        self.config = config
        self._monotonic = monotonic
        self.smtp: smtplib.SMTP | None = None
        self.sent = 0
        self.last_used = 0.0

    def open(self) -> None:
        config = self.config
        try:
            if config.implicit_tls:
                self.smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout,
                                             local_hostname=config.local_hostname or None,
                                             context=_ssl_context(config))
            else:
                self.smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout,
                                         local_hostname=config.local_hostname or None)
            smtp = self.smtp
            code, reply = smtp.ehlo()
            if code != 250:
                code, reply = smtp.helo()
                if code != 250:
                    raise _reply_failure("connect", code, reply)
            if not config.implicit_tls and smtp.has_extn("starttls"):
                code, reply = smtp.starttls(context=_ssl_context(config))
                if code != 220:
                    raise _reply_failure("connect", code, reply)
                smtp.ehlo()
            if config.user:
                try:
                    smtp.login(config.user, config.password)
                except smtplib.SMTPAuthenticationError as exc:
                    raise SmtpFailure(f"authentication refused: {exc.smtp_code} "
                                      f"{exc.smtp_error.decode('utf-8', 'replace')}", stage="auth",
                                      temporary=True, code=exc.smtp_code) from exc
                except smtplib.SMTPNotSupportedError as exc:
                    raise SmtpFailure("the server does not offer AUTH (does it need STARTTLS?)", stage="auth",
                                      temporary=True) from exc
        except SmtpFailure:
            self.close()
            raise
        except smtplib.SMTPConnectError as exc:
            self.close()
            raise _reply_failure("connect", exc.smtp_code, exc.smtp_error) from exc
        except ssl.SSLError as exc:
            self.close()
            raise SmtpFailure(f"TLS failed: {exc}", stage="connect", temporary=True) from exc
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise _io_failure("connect", exc) from exc
        self.last_used = self._monotonic()

    def healthy(self) -> bool:
        """True when the session still answers NOOP (checked only after it sat idle)."""
        if self.smtp is None:
            return False
        if self._monotonic() - self.last_used < IDLE_CHECK_SECONDS:
            return True
        try:
            return self.smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def send(self, envelope_from: str, recipient: str, data: bytes) -> str:
        """One transaction (MAIL, RCPT, DATA). Returns the server's answer; raises SmtpFailure."""
        smtp = self.smtp
        assert smtp is not None
        options = []
        if not (envelope_from.isascii() and recipient.isascii()):
            if not smtp.has_extn("smtputf8"):
                raise SmtpFailure("the address is not ASCII and the server does not offer SMTPUTF8",
                                  stage="mail", temporary=False, server_fault=False)
            options.append("SMTPUTF8")
        if smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.has_extn("pipelining") and "SMTPUTF8" not in options:
            return self._send_pipelined(envelope_from, recipient, options, data)
        stage = "mail"
        try:
            code, reply = smtp.mail(envelope_from, options)
            if code != 250:
                raise self._refused("mail", code, reply)
            stage = "rcpt"
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise self._refused("rcpt", code, reply)
            stage = "data"
            code, reply = smtp.docmd("data")
            if code != 354:
                raise self._refused("data", code, reply)
            stage = "body"
            smtp.send(_quote_body(data))
        except SmtpFailure:
            raise
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise _io_failure(stage, exc) from exc
        return self._final_reply()

    def _final_reply(self) -> str:
        # Every byte, the final dot included, is with the server now: from here a broken
        # connection leaves the message possibly delivered.
        smtp = self.smtp
        try:
            code, reply = smtp.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise _io_failure("reply", exc, uncertain=True) from exc
        self.last_used = self._monotonic()
        if code != 250:
            raise self._refused("reply", code, reply)
        self.sent += 1
        return f"{code} {reply.decode('utf-8', 'replace')}"

    def _send_pipelined(self, envelope_from: str, recipient: str, options: list[str], data: bytes) -> str:
        """The transaction with PIPELINING (RFC 2920), for servers that offer it (all the large
        ones do): MAIL, RCPT and DATA go in one write and their three replies are read in order,
        then the content and its reply: two round trips instead of four. A refusal is reported at
        the first command refused, as without pipelining; a DATA the server accepted although
        MAIL or RCPT failed is ended with an empty message (RFC 2920 §3.1) before the session's
        transaction is reset."""
        smtp = self.smtp
        commands = (f"MAIL FROM:{smtplib.quoteaddr(envelope_from)}{''.join(' ' + o for o in options)}\r\n"
                    f"RCPT TO:{smtplib.quoteaddr(recipient)}\r\nDATA\r\n").encode("ascii")
        replies: list[tuple[int, bytes]] = []
        stage = "mail"
        try:
            smtp.send(commands)
            for stage in ("mail", "rcpt", "data"):
                replies.append(smtp.getreply())
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            refused = _first_refusal(replies)
            if refused is not None:  # the server said no, then closed (421 and the like)
                raise _reply_failure(*refused) from exc
            raise _io_failure(stage, exc) from exc
        refused = _first_refusal(replies)
        if refused is not None:
            if replies[2][0] == 354:
                try:
                    smtp.send(b".\r\n")
                    smtp.getreply()
                except (OSError, smtplib.SMTPException):
                    self.close()
            raise self._refused(*refused)
        try:
            smtp.send(_quote_body(data))
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise _io_failure("body", exc) from exc
        return self._final_reply()

    def _refused(self, stage: str, code: int, reply: bytes) -> SmtpFailure:
        failure = _reply_failure(stage, code, reply)
        if code == 421 or code < 200:  # the server is closing the session
            self.close()
        elif stage != "reply":
            with contextlib.suppress(OSError, smtplib.SMTPException):
                if self.smtp is not None and self.smtp.rset()[0] != 250:
                    self.close()
        return failure

    def noop(self) -> str:
        assert self.smtp is not None
        code, reply = self.smtp.noop()
        if code != 250:
            raise _reply_failure("connect", code, reply)
        return f"{code} {reply.decode('utf-8', 'replace')}"

    def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        with contextlib.suppress(OSError, smtplib.SMTPException):
            if smtp.sock is not None:
                smtp.sock.settimeout(min(self.config.timeout, 2.0))
                smtp.quit()
        with contextlib.suppress(OSError):
            smtp.close()


# --- transports ---------------------------------------------------------------------------------

class SmtpPool:
    """Up to `size` connections to one server, each carrying one message at a time, reused
    across messages and dispatcher runs. `submit` returns a Future of the server's answer (or of
    an SmtpFailure)."""

    def __init__(self, config: ServerConfig, size: int = 2, *, monotonic: Callable[[], float] = time.monotonic):
        self.config = config
        self.size = max(1, int(size))
        self._monotonic = monotonic
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="leadflow-smtp")

    def submit(self, envelope_from: str, recipient: str, data: bytes | Callable[[], bytes]) -> Future:
        """Send in a pool thread. `data` may be a function making the bytes there (the dispatcher
        passes `Built.final`, which DKIM-signs); what it raises is the Future's error, before any
        SMTP traffic."""
        return self._executor.submit(self.send, envelope_from, recipient, data)

    def _take(self) -> tuple[Connection, bool]:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is not None:
            if connection.sent < MAX_MESSAGES_PER_CONNECTION and connection.healthy():
                return connection, True
            connection.close()
        connection = Connection(self.config, self._monotonic)
        connection.open()
        return connection, False

    def _give_back(self, connection: Connection) -> None:
        if connection.smtp is None:
            return
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()  # the pool was closed while this one was in use

    def send(self, envelope_from: str, recipient: str, data: bytes | Callable[[], bytes]) -> str:
        """Send one message on a pooled connection. A reused connection that turns out to have
        been dropped before anything of this message was accepted is replaced once, silently."""
        if callable(data):
            data = data()
        connection, reused = self._take()
        try:
            return connection.send(envelope_from, recipient, data)
        except SmtpFailure as failure:
            if not (reused and failure.stage == "mail" and failure.code is None and connection.smtp is None):
                raise
        finally:
            self._give_back(connection)
        connection = Connection(self.config, self._monotonic)
        connection.open()
        try:
            return connection.send(envelope_from, recipient, data)
        finally:
            self._give_back(connection)

    def check(self) -> str:
        """Connect (TLS and login as configured) and NOOP: the "test connection" button."""
        connection = Connection(self.config, self._monotonic)
        connection.open()
        try:
            return connection.noop()
        finally:
            connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for connection in idle:
            connection.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


class FileTransport:
    """Writes each message as an .eml file (with a Return-Path line for the envelope sender):
    the default when LEADFLOW_SMTP_URL is not set."""

    size = 1

    def __init__(self, config: ServerConfig):
        self.config = config
        self.folder = Path(config.file_path)

    def submit(self, envelope_from: str, recipient: str, data: bytes | Callable[[], bytes]) -> Future:
        future: Future = Future()
        if callable(data):
            try:
                data = data()
            except Exception as exc:  # the Future's error, as in a pool thread
                future.set_exception(exc)
                return future
        try:
            future.set_result(self.send(envelope_from, recipient, data))
        except SmtpFailure as failure:
            future.set_exception(failure)
        return future

    def send(self, envelope_from: str, recipient: str, data: bytes | Callable[[], bytes]) -> str:
        if callable(data):
            data = data()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns()}.eml"
            path = self.folder / name
            with open(path, "xb") as fh:
                fh.write(f"Return-Path: <{envelope_from}>\r\nX-Envelope-To: <{recipient}>\r\n".encode())
                fh.write(data)
        except OSError as exc:
            raise SmtpFailure(f"cannot write to {self.folder}: {exc}", stage="connect", temporary=True) from exc
        return f"written to {path}"

    def check(self) -> str:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SmtpFailure(f"cannot create {self.folder}: {exc}", stage="connect", temporary=False) from exc
        if not os.access(self.folder, os.W_OK):
            raise SmtpFailure(f"{self.folder} is not writable", stage="connect", temporary=False)
        return f"no SMTP server configured: messages are written to {self.folder}"

    def close(self) -> None:
        return None


def transport_open(config: ServerConfig, *, pool_size: int = 2,
                   monotonic: Callable[[], float] = time.monotonic) -> SmtpPool | FileTransport:
    if config.file_path:
        return FileTransport(config)
    return SmtpPool(config, pool_size, monotonic=monotonic)


def connection_test(url: str) -> str:
    """Connect to the server `url` names (blank: the default) and NOOP; the answer, or
    SmtpFailure / ConfigError with the reason."""
    transport = transport_open(server_config(url), pool_size=1)
    try:
        return transport.check()
    finally:
        transport.close()


# --- rate limit ---------------------------------------------------------------------------------

class TokenBucket:
    """`rate` sends per second with bursts up to `burst` (default one second's worth). Reading
    time from `monotonic` (injectable), it never sleeps: `take()` answers how long to wait."""

    def __init__(self, rate: float, *, burst: float | None = None, monotonic: Callable[[], float] = time.monotonic):
        self.rate = float(rate)
        self.capacity = max(1.0, float(burst if burst is not None else self.rate))
        self._monotonic = monotonic
        self.tokens = self.capacity
        self.stamp = monotonic()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self) -> None:
        now = self._monotonic()
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> float:
        """Take a token and answer 0, or answer the seconds until one is available."""
        if self.unlimited:
            return 0.0
        self._refill()
        if self.tokens >= 1.0 - 1e-9:  # a token refilled by exactly the advised wait may round below 1
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return max((1.0 - self.tokens) / self.rate, 1e-6)

    def available(self, horizon: float) -> int:
        """How many sends fit in the next `horizon` seconds."""
        if self.unlimited:
            return 1 << 30
        self._refill()
        return int(self.tokens + horizon * self.rate)
