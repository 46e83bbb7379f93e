"""Render plans: the per-message work of rendering done once per document shape.

Most of what `rendering.render_content` does after Jinja — reading the document for its links
(`links.links_plan`) and for its text part (`rendering.text_tokens`, lxml), assembling the text —
depends on the *shape* of the document, not on the person's values written into it. A dispatcher
batch renders one template version for hundreds of people, so the dispatcher renders the HTML
with every value the template writes between markers (the "marked" Jinja sandbox, `value_mark`),
splits it into the fixed text between values (the shape) and the values, and keeps per shape a
`Plan`: the link scan, the text tokens and the assembled text, with placeholders where the values
go. A message with a known shape only fills its values in, decides its links (tracked or not,
their click tokens, what the text part says after them) and has its CSS inlined (css-inline runs
per message: CSS selectors can depend on any attribute).

The result is the same text as `render_content` without a plan, byte for byte:

- a value stays a value only when it is *inert*: printable, no `<>&"'`, no leading, trailing or
  double spaces (a value that is not — a name with an apostrophe, escaped as `&#39;` — is folded
  into the shape, which then names it);
- a value stays a value only where every reader treats it as plain characters: in text outside
  comments, raw-text elements (style, script, title…) and SVG/MathML, not right after an
  unfinished character reference (`&am` + `p;`), or inside a quoted attribute other than the ones
  that steer a reader (`style`, `src`, …); `_contexts` checks this with a strict reading of the
  shape, and a document it does not read as well-formed gets no plan at all;
- everything that depends on a value's content (is this href tracked, does the text part repeat
  this URL, how many distinct links) is decided per message on the filled-in strings;
- a template whose rendered output could be processed by the template itself (macros, call
  blocks, `{% set %}` blocks, filter blocks, `content` or `block()` used other than written out)
  is never marked (`_markable`).

Each new plan is checked against the render without a plan (and again on its 2nd and 3rd use,
then one use in 1,000); a difference is logged and the shape renders the plain way from then on.
Plans are kept per process (least recently used out), keyed by the shape itself and the public
URL, so a changed version — or another version — never meets another shape's plan.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from jinja2 import nodes
from markupsafe import Markup, escape

from leadflow.messaging import links, rendering

log = logging.getLogger(__name__)

MAX_PLANS = 256
VERIFY_USES = (1, 2, 3)  # uses of a plan checked against the plain render …
VERIFY_EVERY = 1000  # … and then one in this many

_NONCE = secrets.token_hex(8)  # marks a template's data cannot forge
MARK_OPEN = f"\ue000{_NONCE}\ue001"
MARK_CLOSE = f"\ue001{_NONCE}\ue000"
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
_NOT_INERT = re.compile("[<>&\"'\u034f]")


def value_mark(value):
    """The "marked" sandbox's finalize: each value a template writes, escaped as the "html"
    sandbox would, between markers. Markup (the body in its layout, blocks, the postal address)
    is document structure and is written as it is."""
    if isinstance(value, Markup):
        return value
    text = escape(value)
    return Markup("".join((MARK_OPEN, text, MARK_CLOSE))) if text else text  # str.join: no Markup arithmetic


def _inert(value: str) -> bool:
    return (value.isprintable() and value[0] != " " and value[-1] != " " and "  " not in value
            and _NOT_INERT.search(value) is None)


def _placeholder(index: int) -> str:
    return f"\ue000{index}\ue001"


# --- which templates may be marked ---------------------------------------------------------------

_RENDERED_NAMES = frozenset({"content", "block", "self", "super", "caller", "varargs", "kwargs"})
_REFUSED_NODES = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock, nodes.Block, nodes.Extends,
                  nodes.Include, nodes.Import, nodes.FromImport, nodes.EvalContextModifier)


@functools.lru_cache(maxsize=512)
def _markable(source: str) -> bool:
    """May `source` render in the marked sandbox? Only when nothing it renders (the layout's
    `content`, a block) can be read or changed by the template before it is written out."""
    if "\ue000" in source or "\ue001" in source:
        return False
    try:
        tree = rendering.environment("html").parse(source)
    except Exception:  # the plain render reports it
        return False
    if any(True for _ in tree.find_all(_REFUSED_NODES)):
        return False
    if any(getattr(loop, "recursive", False) for loop in tree.find_all(nodes.For)):
        return False
    written = set()
    for output in tree.find_all(nodes.Output):
        for child in output.nodes:
            if isinstance(child, nodes.Name) and child.name == "content":
                written.add(id(child))
            elif isinstance(child, nodes.Call) and isinstance(child.node, nodes.Name) and child.node.name == "block":
                written.add(id(child.node))
    return all(name.name not in _RENDERED_NAMES or id(name) in written for name in tree.find_all(nodes.Name))


def _html_sources(data: rendering.RenderInput) -> list[str]:
    sources = [data.html, data.layout_html]
    for block in (data.blocks or {}).values():
        if isinstance(block, dict):
            for variant in [*(block.get("variants") or []), block.get("default") or {}]:
                if isinstance(variant, dict):
                    sources.append(str(variant.get("html") or ""))
    return sources


# --- where values sit --------------------------------------------------------------------------------

_RAW_TEXT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "textarea", "title"})
_REFUSED_TAGS = frozenset({"svg", "math", "plaintext"})
_VALUE_ATTRS = frozenset({"href", "alt", "title", "class", "id", "name", "target", "rel", "width", "height", "align",
                          "valign", "bgcolor", "border", "cellpadding", "cellspacing", "role"})
_VALUE_TAGS_REFUSED = frozenset({"meta", "base", "link", "img", "input", "form", "object", "embed", "param"})
_START = re.compile(r"<([A-Za-z][A-Za-z0-9:-]*)")
_ATTR = re.compile(r"""[\t\n\f\r ]+([^\t\n\f\r "'<>/=\ue000\ue001]+)"""
                   r"""(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"([^"]*)"|'([^']*)'|([^\t\n\f\r "'=<>`\ue000\ue001]+)))?""")
_TAG_CLOSE = re.compile(r"[\t\n\f\r ]*/?>")
_END = re.compile(r"</([A-Za-z][A-Za-z0-9:-]*)[\t\n\f\r ]*>")
_CONDITIONAL = re.compile(r"<!\[(?:if|else|endif)\b[^\]>\ue000\ue001]*\]>", re.IGNORECASE)
_REFERENCE_CHARS = frozenset("#abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _after_ampersand(source: str, start: int, at: int) -> bool:
    """Is position `at` inside an unfinished character reference (`&`, `&am`, `&#0…`)?"""
    j = at
    while j > start and source[j - 1] in _REFERENCE_CHARS:
        j -= 1
    return j > start and source[j - 1] == "&"


def _placeholders(source: str, start: int, end: int) -> list[tuple[int, int]]:
    return [(int(m.group(1)), m.start()) for m in _PLACEHOLDER.finditer(source, start, end)]


def _contexts(doc: str) -> set[int] | None:
    """The placeholders of `doc` that are not in a place where every reader of the document (the
    link scanner, lxml, css-inline's html5ever) treats a value as plain characters; None when the
    document is not well-formed enough to say."""
    bad: set[int] = set()
    pos, size = 0, len(doc)
    while pos < size:
        lt = doc.find("<", pos)
        stop = size if lt < 0 else lt
        for index, at in _placeholders(doc, pos, stop):
            if _after_ampersand(doc, pos, at):
                bad.add(index)
        if lt < 0:
            break
        if doc.startswith("<!--", lt):
            close = doc.find("-->", lt + 4)
            if close < 0:
                return None
            inside = doc[lt + 4:close]
            if "--" in inside or inside.startswith((">", "->")):
                return None
            bad.update(index for index, _ in _placeholders(doc, lt, close))
            pos = close + 3
            continue
        if doc.startswith("<![", lt):
            match = _CONDITIONAL.match(doc, lt)
            if match is None:
                return None
            pos = match.end()
            continue
        if doc.startswith(("<!", "<?"), lt):
            close = doc.find(">", lt)
            if close < 0:
                return None
            bad.update(index for index, _ in _placeholders(doc, lt, close))
            pos = close + 1
            continue
        end_tag = _END.match(doc, lt)
        if end_tag is not None:
            pos = end_tag.end()
            continue
        start_tag = _START.match(doc, lt)
        if start_tag is None:
            return None
        tag = start_tag.group(1).lower()
        if tag in _REFUSED_TAGS:
            return None
        pos = start_tag.end()
        while True:
            attr = _ATTR.match(doc, pos)
            if attr is None:
                break
            name = attr.group(1).lower()
            quoted = attr.group(2) if attr.group(2) is not None else attr.group(3)
            if quoted is not None:
                value_start = attr.start(2) if attr.group(2) is not None else attr.start(3)
                value_end = value_start + len(quoted)
                allowed = ((name in _VALUE_ATTRS or name.startswith(("data-", "aria-")))
                           and tag not in _VALUE_TAGS_REFUSED and (name != "href" or tag in links.LINK_TAGS))
                for index, at in _placeholders(doc, value_start, value_end):
                    if not allowed or _after_ampersand(doc, value_start, at):
                        bad.add(index)
            pos = attr.end()
        closing = _TAG_CLOSE.match(doc, pos)
        if closing is None:
            return None
        pos = closing.end()
        if tag in _RAW_TEXT:
            # Its text runs to the first "</", which must close it as "</tag>" (readers differ on
            # anything else, and on "<tag/>", which does not end a raw-text element for all).
            close = doc.find("</", pos)
            if (closing.group(0).endswith("/>") or close < 0 or doc[close + 2:close + 2 + len(tag)].lower() != tag
                    or not doc.startswith(">", close + 2 + len(tag))):
                return None
            bad.update(index for index, _ in _placeholders(doc, pos, close))
            pos = close + 3 + len(tag)
    return bad


# --- plans -------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What one document shape needs per message: the probe document (the shape with numbered
    placeholders, preheader included), its link plan, and the text part per set of link
    decisions."""

    doc: str
    text_doc: str
    link_plan: links.LinkPlan
    uses: int = 0
    broken: bool = False
    _tokens: list | None = None
    _notes: list = field(default_factory=list)
    _texts: dict = field(default_factory=dict)

    def text(self, fill: Callable[[str], str]) -> str:
        """The text part generated from the HTML, with this message's values."""
        if self._tokens is None:
            self._tokens = rendering.text_tokens(self.text_doc)
            self._notes = [value for kind, value in self._tokens if kind == "link"]
        decisions = tuple(bool(rendering.link_note(fill(href), fill(label))) if "\ue000" in href + label
                          else None for href, label in self._notes)
        assembled = self._texts.get(decisions)
        if assembled is None:
            chosen = iter(decisions)

            def note(href: str, label: str) -> str:
                decided = next(chosen)
                if decided is None:
                    return rendering.link_note(href, label)
                return (f" ({href})" if label else href) if decided else ""

            assembled = rendering.text_assemble(self._tokens, note)
            if len(self._texts) < 64:  # 2^(links whose note depends on a value) at most
                self._texts[decisions] = assembled
        return fill(assembled)


class _Fold:
    """A shape whose listed values must be part of the shape (their place decides something)."""

    def __init__(self, indexes: frozenset[int]):
        self.indexes = indexes


_UNPLANNABLE = object()
_plans: OrderedDict = OrderedDict()
_lock = threading.Lock()


def plans_clear() -> None:
    with _lock:
        _plans.clear()


def _remember(key, entry) -> None:
    with _lock:
        _plans[key] = entry
        _plans.move_to_end(key)
        while len(_plans) > MAX_PLANS:
            _plans.popitem(last=False)


def _recall(key):
    with _lock:
        entry = _plans.get(key)
        if entry is not None:
            _plans.move_to_end(key)
        return entry


def _fill_function(values: list[str]) -> Callable[[str], str]:
    def fill(source: str) -> str:
        """`source` (made from the probe document) with each placeholder replaced by its value."""
        parts = source.split("\ue000")
        if len(parts) == 1:
            return source
        out = [parts[0]]
        for part in parts[1:]:
            index, _, rest = part.partition("\ue001")
            out.append(values[int(index)])
            out.append(rest)
        return "".join(out)

    return fill


def _probe(statics: list[str], preheader: str | None, preheader_index: int | None) -> tuple[str, str]:
    parts = [statics[0]]
    for index, static in enumerate(statics[1:]):
        parts.append(_placeholder(index))
        parts.append(static)
    text_doc = "".join(parts)
    if preheader_index is not None:
        return rendering.with_preheader_html(text_doc, _placeholder(preheader_index)), text_doc
    if preheader:
        return rendering.with_preheader_html(text_doc, preheader), text_doc
    return text_doc, text_doc


def _build(statics: list[str], preheader: str | None, preheader_index: int | None):
    doc, text_doc = _probe(statics, preheader, preheader_index)
    bad = _contexts(doc)
    if bad is None:
        return _UNPLANNABLE
    if bad:
        return _Fold(frozenset(bad))
    return Plan(doc=doc, text_doc=text_doc, link_plan=links.links_plan(doc))


def _fold(statics: list[str], values: list[str], indexes) -> tuple[list[str], list[str]]:
    out_statics, out_values = [statics[0]], []
    for index, value in enumerate(values):
        if index in indexes:
            out_statics[-1] += value + statics[index + 1]
        else:
            out_values.append(value)
            out_statics.append(statics[index + 1])
    return out_statics, out_values


def _split(marked: str) -> tuple[list[str], list[str]] | None:
    parts = marked.split(MARK_OPEN)
    if MARK_CLOSE in parts[0]:
        return None
    statics, values = [parts[0]], []
    for part in parts[1:]:
        value, found, rest = part.partition(MARK_CLOSE)
        if not found or MARK_CLOSE in rest:
            return None
        values.append(value)
        statics.append(rest)
    return statics, values


def _shape(statics: list[str], values: list[str], preheader: str) -> tuple:
    """The plan key and what goes with it: inert values stay values, the rest join the shape."""
    escaped = str(escape(preheader)) if preheader else ""
    if any(not _inert(v) for v in values):
        statics, values = _fold(statics, values, {i for i, v in enumerate(values) if not _inert(v)})
    return statics, values, escaped


def message_parts(data: rendering.RenderInput, preheader: str, render: Callable[[], tuple[str, str]], *,
                  message) -> tuple[str, str] | None:
    """The planner `rendering.message_render` gives `render_content`: the tracked, inlined HTML
    and the text part of `message`, through a plan when its document shape has one; None when
    the plain render must do it."""
    if not all(_markable(source) for source in _html_sources(data)):
        return None
    try:
        body = rendering._render_with_blocks(data.html, part="html", mode="html", data=data, marked=True)
        html = body
        if data.layout_html:
            html = rendering._render_with_blocks(data.layout_html, part="layout html", mode="html", data=data,
                                                 extra={"content": Markup(body)}, marked=True)
    except Exception:  # the plain render raises the error with its part and line
        return None
    split = _split(rendering._document(html))
    if split is None:
        return None
    statics, values, escaped = _shape(*split, preheader)
    if "\ue000" in escaped:  # it would read as a placeholder
        return None
    preheader_value = bool(escaped) and _inert(escaped)
    base = links.public_url("")
    plan = None
    for _ in range(3):
        preheader_index = len(values) if preheader_value else None
        skeleton = "\ue000".join(statics)
        if skeleton.count("\ue000") != len(values):  # a static holds the placeholder character
            return None
        key = (skeleton, preheader_value, "" if preheader_value else escaped, base)
        entry = _recall(key)
        if entry is None:
            entry = _build(statics, escaped, preheader_index)
            _remember(key, entry)
        if isinstance(entry, _Fold):
            if preheader_index in entry.indexes:
                preheader_value = False
            statics, values = _fold(statics, values, entry.indexes)
            continue
        plan = entry
        break
    if not isinstance(plan, Plan) or plan.broken:
        return None
    return _apply(plan, values, values + [escaped] if preheader_value else values, data, message, render)


def _apply(plan: Plan, values: list[str], all_values: list[str], data: rendering.RenderInput, message,
           render: Callable[[], tuple[str, str]]) -> tuple[str, str] | None:
    text = rendering.explicit_text(data) if data.text.strip() else plan.text(_fill_function(values))
    html, text = links.links_apply(plan.link_plan, html=plan.doc, text=text, message=message,
                                   fill=_fill_function(all_values))
    parts = rendering.css_inline_html(html), text
    plan.uses += 1
    if plan.uses in VERIFY_USES or plan.uses % VERIFY_EVERY == 0:
        plain = render()
        if plain != parts:
            plan.broken = True
            log.error("message %s: the render plan of version %s differs from the plain render; that shape "
                      "renders the plain way from now on", getattr(message, "pk", None), message.version_id)
            return plain
    return parts
