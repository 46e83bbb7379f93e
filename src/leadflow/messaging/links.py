"""Tracked links and the open pixel: rewriting a rendered message, and recording opens and clicks.

`links_track` rewrites every http(s) link of a message's HTML (`<a href>`, `<area href>` and the
`href` of Outlook's VML buttons inside `<!--[if mso]>` comments) and the bare URLs of its text
part to a signed `/e/c/TOKEN` URL, appends UTM parameters to the destination, and adds the open
pixel `/e/o/TOKEN` before `</body>`. Only the rewritten tags change: the HTML is read as the
standard library's parser reads it and the rest of the document is kept byte for byte. The scan
(`links_plan`) and the rewriting (`links_apply`) are separate so a render plan scans a document
shape once for many messages (`messaging.render_plans`).

`open_record` and `click_record` are what the public endpoints call. They flag *machine* opens
(privacy proxies such as Apple Mail Privacy Protection, security scanners) and *bot* clicks (HEAD
requests, clicks seconds after sending, every link of a message clicked at once, known scanner
user agents): flagged events are kept (`MessageEvent.machine`) but neither score nor count in
statistics by default (docs/email-tracking.md).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape, unescape
from urllib.parse import parse_qsl, quote, urlsplit

from leadflow.core import clock
from leadflow.messaging.models import Message, MessageEvent, MessageEventKind
from leadflow.messaging.tokens import BadToken, click_token, public_url, token_make, token_read

# --- rewriting ----------------------------------------------------------------------------------

UTM_SOURCE = "leadflow"
UTM_MEDIUM = "email"
# Paths on LEADFLOW_PUBLIC_URL that are never wrapped: consent links must reach their page
# directly (a scanner following a wrapped unsubscribe link would count as a click), and links
# already tracked stay as they are.
UNTRACKED_PATHS = ("u/", "p/", "c/", "e/c/", "e/o/")
# Tags whose href is a link a reader clicks. `link` and `base` are not (stylesheets, base URL).
LINK_TAGS = frozenset({"a", "area"})
# Bare URLs in the plain-text part. Text is not HTML: a pattern is the right tool here.
TEXT_URL = re.compile(r"https?://[^\s<>\"'()\[\]{}]+", re.IGNORECASE)
TRAILING = ".,;:!?"


def _untracked_prefixes() -> tuple[str, ...]:
    return tuple(public_url(path) for path in UNTRACKED_PATHS)


def _is_tracked_destination(url: str, untracked: tuple[str, ...] | None = None) -> bool:
    return _tracked(url, untracked if untracked is not None else _untracked_prefixes())


@functools.lru_cache(maxsize=4096)  # a pure function of its arguments; a batch repeats its links
def _tracked(url: str, untracked: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bracketed host that is no IP address: left exactly as written
        return False
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return False
    return not url.startswith(untracked)


@functools.lru_cache(maxsize=4096)  # a pure function of its arguments; a batch repeats its links
def utm_add(url: str, *, campaign: str, content: str) -> str:
    """`url` with utm_source/medium/campaign/content appended, keeping every UTM parameter the
    link already has (only missing ones are added) and the rest of the URL exactly as written."""
    parts = urlsplit(url)
    have = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    wanted = [("utm_source", UTM_SOURCE), ("utm_medium", UTM_MEDIUM), ("utm_campaign", campaign),
              ("utm_content", content)]
    extra = "&".join(f"{key}={quote(value, safe='')}" for key, value in wanted if value and key not in have)
    if not extra:
        return url
    head, hash_mark, fragment = url.partition("#")
    if parts.query:
        joiner = "" if head.endswith(("&", "?")) else "&"
    else:
        joiner = "" if head.endswith("?") else "?"
    return f"{head}{joiner}{extra}{hash_mark}{fragment}"


def _start_tag(tag: str, attrs: list[tuple[str, str | None]], *, closed: bool) -> str:
    parts = [f"<{tag}"]
    for name, value in attrs:
        parts.append(f" {name}" if value is None else f' {name}="{escape(value, quote=True)}"')
    parts.append(" />" if closed else ">")
    return "".join(parts)


# The scanner reads HTML the way the standard library's `html.parser` does (its patterns for a
# start tag, its attributes and a comment's end; `<script>`/`<style>` content is text), but only
# builds the attributes of the tags it rewrites: a whole-document HTMLParser pass was most of the
# cost of sending a message.
_MARKUP = re.compile(r"<(?:(!--)|(!\[)|([!?])|(/)|([a-zA-Z][^\t\n\r\f />\x00]*))")
_END_TAG = re.compile(r"</\s*([a-zA-Z][-.a-zA-Z0-9:_]*)\s*>")
_TAG_NAME = re.compile(r"([a-zA-Z][^\t\n\r\f />\x00]*)(?:\s|/(?!>))*")
_ATTR = re.compile(r"((?<=['\"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*(\'[^\']*\'|\"[^\"]*\"|(?![\'\"])[^>\s]*))?(?:\s|/(?!>))*")
_TAG_END = re.compile(r"""
  <[a-zA-Z][^\t\n\r\f />\x00]*       # tag name
  (?:[\s/]*                          # optional whitespace before attribute name
    (?:(?<=['"\s/])[^\s/>][^\s/=>]*  # attribute name
      (?:\s*=+\s*                    # value indicator
        (?:'[^']*'                   # LITA-enclosed value
          |"[^"]*"                   # LIT-enclosed value
          |(?!['"])[^>\s]*           # bare value
         )
        \s*                          # possibly followed by a space
       )?(?:\s|/(?!>))*
     )*
   )?
  \s*                                # trailing whitespace
""", re.VERBOSE)
_QUOTE_OR_LT = re.compile("[<'\"]")
_COMMENT_END = re.compile(r"--\s*>")
_MARKED_END = re.compile(r"]\s*>")
_CDATA_MARKED_END = re.compile(r"]\s*]\s*>")
_CDATA_ELEMENTS = ("script", "style")
_WANTED_TAGS = LINK_TAGS | {"img", *_CDATA_ELEMENTS}
_CDATA_END = {tag: re.compile(rf"</\s*{tag}\s*>", re.IGNORECASE) for tag in _CDATA_ELEMENTS}


def _tag_end(source: str, i: int) -> int:
    """Where the start tag at `i` ends (html.parser's check_for_whole_start_tag); -1 when the
    document ends inside it."""
    j = _TAG_END.match(source, i).end()
    following = source[j:j + 1]
    if following == ">":
        return j + 1
    if following == "/":
        if source.startswith("/>", j):
            return j + 2
        return j if j > i else i + 1
    if following == "" or following.isascii() and (following.isalpha() or following in "=/"):
        return -1
    return j if j > i else i + 1


def _skip_incomplete(source: str, i: int) -> int:
    """Where html.parser goes on after markup at `i` that the document ends inside (it reads it
    as text up to the next `>`, else up to the next `<`)."""
    k = source.find(">", i + 1)
    if k >= 0:
        return k + 1
    k = source.find("<", i + 1)
    return k if k >= 0 else i + 1


class _Scan:
    """The link tags (with an href) that may be rewritten and where `</body>` is, as offsets into
    the source. Whether a link is tracked is decided when the plan is applied."""

    def __init__(self, source: str, *, in_comment: bool = False, pixel_prefix: str = ""):
        # start, end, tag, attrs, closed, indexes of its non-empty href attributes
        self.links: list[tuple[int, int, str, list, bool, tuple[int, ...]]] = []
        self.comments: list[tuple[int, str]] = []  # offset of the comment text, text
        self.body_end: int | None = None
        self.has_pixel = False
        self._run(source, in_comment, pixel_prefix)

    def _run(self, source: str, in_comment: bool, pixel_prefix: str) -> None:
        pos = 0
        search = _MARKUP.search
        while True:
            match = search(source, pos)
            if match is None:
                return
            i = match.start()
            comment, marked, declaration, end_tag, tag = match.groups()
            if comment:
                close = _COMMENT_END.search(source, i + 4)
                if close is None:
                    pos = _skip_incomplete(source, i)
                    continue
                data = source[i + 4:close.start()]
                # Outlook's conditional comments hold real markup (VML buttons with their own href).
                if data.lstrip().lower().startswith("[if"):
                    self.comments.append((i + 4, data))
                pos = close.end()
                continue
            if marked:
                keyword = source[i + 3:i + 9].lower()
                closer = _MARKED_END if keyword.startswith(("if", "else", "endif")) else _CDATA_MARKED_END
                close = closer.search(source, i + 3)
                if close is None:
                    pos = _skip_incomplete(source, i)
                    continue
                pos = close.end()
                continue
            if declaration:  # <!doctype …>, a bogus comment, <?…>: up to the next ">"
                close = source.find(">", i + 2)
                pos = close + 1 if close >= 0 else _skip_incomplete(source, i)
                continue
            if end_tag:
                gt = source.find(">", i + 1)
                if gt < 0:
                    pos = _skip_incomplete(source, i)
                    continue
                whole = _END_TAG.match(source, i)
                if whole:
                    tag, pos = whole.group(1), gt + 1
                else:
                    name = _TAG_NAME.match(source, i + 2)
                    if name is None:
                        close = source.find(">", i + 2)
                        pos = i + 3 if source.startswith("</>", i) else close + 1
                        continue
                    tag, pos = name.group(1), source.find(">", name.end()) + 1
                if tag.lower() == "body":
                    self.body_end = i
                continue
            tag = tag.lower()
            wanted = tag in _WANTED_TAGS or (in_comment and tag.startswith("v:"))
            if not wanted:
                # Without a quote or "<" before its first ">", a tag ends at or before that ">"
                # and nothing between starts markup: go on from there.
                gt = source.find(">", i)
                if gt > 0 and not _QUOTE_OR_LT.search(source, i + 1, gt):
                    pos = gt + 1
                    continue
            end = _tag_end(source, i)
            if end < 0:
                pos = _skip_incomplete(source, i)
                continue
            pos = end
            if not wanted:
                continue
            attrs = []
            k = _TAG_NAME.match(source, i + 1).end()
            while k < end:
                attr = _ATTR.match(source, k)
                if not attr:
                    break
                attr_name, rest, value = attr.group(1, 2, 3)
                if not rest:
                    value = None
                elif value[:1] == "'" == value[-1:] or value[:1] == '"' == value[-1:]:
                    value = value[1:-1]
                if value:
                    value = unescape(value)
                attrs.append((attr_name.lower(), value))
                k = attr.end()
            rest_of_tag = source[k:end].strip()
            if rest_of_tag not in (">", "/>"):
                continue  # html.parser reads this as text
            closed = rest_of_tag.endswith("/>")
            if tag in _CDATA_ELEMENTS:
                if not closed:
                    close = _CDATA_END[tag].search(source, end)
                    if close is None:
                        return
                    pos = close.start()
                continue
            if tag == "img":
                src = dict(attrs).get("src") or ""
                if src.startswith(pixel_prefix):
                    self.has_pixel = True
                continue
            hrefs = tuple(index for index, (attr_name, value) in enumerate(attrs) if attr_name == "href" and value)
            if hrefs:
                self.links.append((i, end, tag, attrs, closed, hrefs))


@dataclass(frozen=True)
class LinkPlan:
    """What `links_track` needs to know about one HTML document: its link tags (offsets, tag,
    attributes, href indexes), where `</body>` is, whether it already has the open pixel."""

    links: tuple
    body_end: int | None
    has_pixel: bool
    empty: bool


def links_plan(html: str) -> LinkPlan:
    """Scan `html` once. The plan may be applied to many messages (`links_apply`), also to
    documents that differ from `html` only by values put in place of placeholders."""
    pixel_prefix = public_url("e/o/")
    scanner = _Scan(html, pixel_prefix=pixel_prefix)
    links = list(scanner.links)
    for offset, text in scanner.comments:
        inner = _Scan(text, in_comment=True, pixel_prefix=pixel_prefix)
        links.extend((offset + s, offset + e, tag, attrs, closed, i) for s, e, tag, attrs, closed, i in inner.links)
    links.sort(key=lambda link: link[0])
    return LinkPlan(links=tuple(links), body_end=scanner.body_end, has_pixel=scanner.has_pixel,
                    empty=not html.strip())


def _text_links(text: str, untracked: tuple[str, ...]) -> list[tuple[int, int, str]]:
    found = []
    for match in TEXT_URL.finditer(text):
        url = match.group(0).rstrip(TRAILING)
        if _is_tracked_destination(url, untracked):
            found.append((match.start(), match.start() + len(url), url))
    return found


def pixel_html(message) -> str:
    src = public_url("e/o/" + token_make("open", {"m": message.pk}))
    return (f'<img src="{escape(src, quote=True)}" width="1" height="1" alt="" '
            f'style="display:block;border:0;width:1px;height:1px" />')


def links_track(*, html: str, text: str, message) -> tuple[str, str]:
    """The message's HTML and text with tracked links and the open pixel (see the module doc).

    Idempotent: links already pointing at `/e/c/` and an existing pixel are left alone.
    """
    html = html or ""
    return links_apply(links_plan(html), html=html, text=text or "", message=message)


def links_apply(plan: LinkPlan, *, html: str, text: str, message,
                fill: Callable[[str], str] | None = None) -> tuple[str, str]:
    """`links_track` with the scan already done: `plan` is `links_plan(html)`. With `fill`, `html`
    holds placeholders that `fill` replaces by this message's values (in the hrefs it decides on
    and in the result); `text` is this message's final text part."""
    campaign = message.campaign or ""
    content = message.template.slug if message.template_id else ""
    untracked = _untracked_prefixes()
    chosen = []
    for start, end, tag, attrs, closed, hrefs in plan.links:
        for index in hrefs:
            href = (fill(attrs[index][1]) if fill is not None else attrs[index][1]).strip()
            if _is_tracked_destination(href, untracked):
                chosen.append((start, end, tag, attrs, closed, index, href))
                break
    text_links = _text_links(text, untracked)
    destinations = {href for *_, href in chosen}
    count = len(destinations) if destinations else len({url for *_, url in text_links})
    tokens: dict[str, str] = {}
    click_base = public_url("e/c/")

    def tracked(url: str) -> str:
        if url not in tokens:
            destination = utm_add(url, campaign=campaign, content=content)
            tokens[url] = click_base + click_token(message.pk, destination, count)
        return tokens[url]

    out, last = [], 0
    for start, end, tag, attrs, closed, index, href in chosen:
        rewritten = list(attrs)
        rewritten[index] = ("href", tracked(href))
        out.append(html[last:start])
        out.append(_start_tag(tag, rewritten, closed=closed))
        last = end
    tail = html[last:]
    if not plan.empty and not plan.has_pixel:
        pixel = pixel_html(message)
        if plan.body_end is not None and plan.body_end >= last:
            cut = plan.body_end - last
            tail = tail[:cut] + pixel + tail[cut:]
        else:
            tail = tail + pixel
    out.append(tail)
    html_out = "".join(out)
    if fill is not None:
        html_out = fill(html_out)

    text_out, last = [], 0
    for start, end, url in text_links:
        text_out.append(text[last:start])
        text_out.append(tracked(url))
        last = end
    text_out.append(text[last:])
    return html_out, "".join(text_out)


# --- machine opens and bot clicks ----------------------------------------------------------------

# Apple Mail Privacy Protection fetches every image through Apple's proxies as soon as mail
# arrives, with this exact user agent, from Apple's own address block.
APPLE_MPP_USER_AGENT = "Mozilla/5.0"
APPLE_NETWORKS = (ipaddress.ip_network("17.0.0.0/8"),)
# Image proxies that fetch on behalf of a reader who opened the message: a real open, unless it
# comes within PROXY_PREFETCH_SECONDS of sending (then it is a prefetch on arrival).
READER_PROXIES = ("googleimageproxy", "yahoomailproxy", "ymailproxy")
PROXY_PREFETCH_SECONDS = 60
# Link scanners and other software that fetch URLs without a person (lower-case substrings).
SCANNER_AGENTS = (
    "barracuda", "mimecast", "proofpoint", "urldefense", "symantec", "messagelabs", "trendmicro",
    "trend micro", "forcepoint", "fireeye", "sophos", "zscaler", "ironport", "cisco", "paloalto",
    "checkpoint", "safelinks", "bingpreview", "microsoft office", "ms-office", "microsoftpreview",
    "bot", "crawler", "spider", "scanner", "headlesschrome", "phantomjs", "python-requests",
    "python-urllib", "curl/", "wget/", "go-http-client", "java/", "okhttp", "libwww", "httpclient",
    "facebookexternalhit", "slackbot", "whatsapp", "skypeuripreview", "preview",
)
BOT_CLICK_SECONDS = 15  # a click this soon after sending is a gateway scanning the message
BURST_SECONDS = 10  # every link of a message clicked within this window is a scanner


@dataclass(frozen=True)
class Visit:
    """One request for a pixel or a tracked link."""

    user_agent: str = ""
    ip: str | None = None
    method: str = "GET"


def _in_apple_network(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in APPLE_NETWORKS)


def _scanner_agent(agent: str) -> str:
    lowered = agent.lower()
    return next((token for token in SCANNER_AGENTS if token in lowered), "")


def _since_sent(message: Message, at: dt.datetime) -> float | None:
    sent = message.sent_at or message.delivered_at
    return None if sent is None else (at - sent).total_seconds()


def open_machine_reason(*, message: Message, visit: Visit, at: dt.datetime) -> str:
    """Why this pixel fetch is not a person opening the message ("" when it is)."""
    agent = (visit.user_agent or "").strip()
    if visit.method == "HEAD":
        return "head request"
    if agent == APPLE_MPP_USER_AGENT or (_in_apple_network(visit.ip) and agent.startswith("Mozilla/5.0")):
        return "apple mail privacy protection"
    if not agent:
        return "no user agent"
    lowered = agent.lower()
    if any(proxy in lowered for proxy in READER_PROXIES):
        since = _since_sent(message, at)
        if since is not None and since < PROXY_PREFETCH_SECONDS:
            return "image proxy prefetch on arrival"
        return ""
    scanner = _scanner_agent(agent)
    return f"scanner user agent ({scanner})" if scanner else ""


def click_machine_reason(*, message: Message, visit: Visit, at: dt.datetime, url: str, links: int,
                         recent: list[tuple[str, dt.datetime]]) -> str:
    """Why this click is not a person ("" when it is). `recent` are the message's earlier clicks
    (url, at) within BURST_SECONDS; `links` how many distinct tracked links the message has."""
    agent = (visit.user_agent or "").strip()
    if visit.method == "HEAD":
        return "head request"
    since = _since_sent(message, at)
    if since is not None and since < BOT_CLICK_SECONDS:
        return f"clicked {max(since, 0):.0f}s after sending"
    if not agent:
        return "no user agent"
    scanner = _scanner_agent(agent)
    if scanner:
        return f"scanner user agent ({scanner})"
    if links >= 2 and len({u for u, _ in recent} | {url}) >= links:
        return "every link clicked at once"
    return ""


# --- recording ------------------------------------------------------------------------------------

def _message_for(payload: dict) -> Message | None:
    message_id = payload.get("m")
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise BadToken("this link is not valid")
    return Message.objects.select_related("template", "version").filter(pk=message_id).first()


def _detail(visit: Visit, reason: str) -> dict:
    detail = {"user_agent": (visit.user_agent or "")[:300]}
    if visit.ip:
        detail["ip"] = visit.ip
    if reason:
        detail["machine_reason"] = reason
    if visit.method != "GET":
        detail["method"] = visit.method
    return detail


def open_record(*, token: str, visit: Visit, now: dt.datetime | None = None) -> MessageEvent | None:
    """Record that the pixel of a message was fetched. BadToken for an altered token; None when
    the message no longer exists."""
    from leadflow.messaging.events import message_event_record

    payload = token_read("open", token)
    message = _message_for(payload)
    if message is None:
        return None
    at = now or clock.now()
    reason = open_machine_reason(message=message, visit=visit, at=at)
    return message_event_record(message=message, kind=MessageEventKind.OPENED, at=at, machine=bool(reason),
                                detail=_detail(visit, reason))


def click_destination(token: str) -> tuple[dict, str]:
    """The signed payload and destination of a click token; BadToken unless it is an http(s)
    URL this site signed (so the redirect can never be used to send people elsewhere)."""
    payload = token_read("click", token)
    destination = payload.get("u")
    try:
        parts = urlsplit(destination) if isinstance(destination, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise BadToken("this link is not valid")
    return payload, destination


def click_record(*, token: str, visit: Visit, now: dt.datetime | None = None) -> tuple[str, MessageEvent | None]:
    """Record a click on a tracked link; returns (destination, event). BadToken for an altered
    token. When every link of the message is clicked within BURST_SECONDS, the earlier clicks
    of that burst are flagged too (their first-time column is recomputed)."""
    from leadflow.messaging.events import message_event_record

    payload, destination = click_destination(token)
    message = _message_for(payload)
    if message is None:
        return destination, None
    at = now or clock.now()
    links = payload.get("n") if isinstance(payload.get("n"), int) else 0
    burst = list(MessageEvent.objects.filter(message=message, kind=MessageEventKind.CLICKED,
                                             at__gte=at - dt.timedelta(seconds=BURST_SECONDS), at__lte=at)
                 .values_list("pk", "url", "at", "machine"))
    reason = click_machine_reason(message=message, visit=visit, at=at, url=destination, links=links,
                                  recent=[(url, when) for _, url, when, _ in burst])
    event = message_event_record(message=message, kind=MessageEventKind.CLICKED, at=at, machine=bool(reason),
                                 url=destination, detail=_detail(visit, reason))
    if reason == "every link clicked at once":
        earlier = [pk for pk, _, _, machine in burst if not machine]
        if earlier:
            _reflag_clicks(message, earlier, reason)
    return destination, event


def _reflag_clicks(message: Message, event_ids: list[int], reason: str) -> None:
    """Mark clicks already recorded as a person's as machine after all (a burst found later)."""
    for row in MessageEvent.objects.filter(pk__in=event_ids):
        row.machine = True
        row.detail = {**row.detail, "machine_reason": reason, "reflagged": True}
        row.save(update_fields=["machine", "detail"])
    first = (MessageEvent.objects.filter(message=message, kind=MessageEventKind.CLICKED, machine=False)
             .order_by("at").values_list("at", flat=True).first())
    first_open = (MessageEvent.objects.filter(message=message, machine=False,
                                              kind__in=[MessageEventKind.OPENED, MessageEventKind.CLICKED])
                  .order_by("at").values_list("at", flat=True).first())
    Message.objects.filter(pk=message.pk).update(clicked_at=first, opened_at=first_open)
