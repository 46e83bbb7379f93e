"""Rendering email content: a template version plus one person's data gives the final subject,
preheader, HTML and plain text of one message.

Marketer-authored templates run in Jinja2's `ImmutableSandboxedEnvironment` (HTML parts
autoescaped, subject/preheader/text not). The context holds plain data only — dicts, lists,
strings and numbers copied from this contact, their company and owner, the triggering event and
the workspace — never a model instance, so a template can reach nothing but this person's own
data. On top of Jinja's sandbox this module refuses every underscore name, caps `range`,
repetition (`*`, `**`), padding widths and the size of any value or output, so a template can
neither read Python internals nor exhaust the worker. Every problem is a `TemplateError` naming
the part, the line and what is wrong.

The pipeline for one message (`message_render`): body (with dynamic blocks) → layout around it →
plain text generated from the HTML when the version has none → preheader as hidden preview text
→ `messaging.links.links_track` (click tracking, UTM, open pixel) → CSS inlined (css-inline,
keeping `@media` and `:hover` rules in a `<style>`). Previews (`version_render`) skip tracking.
`message_render` hands the work after Jinja to `messaging.render_plans`, which does it once per
document shape and gives the same text (falling back to this pipeline whenever it cannot).
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import re
import string
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import css_inline
from jinja2 import ChainableUndefined, TemplateSyntaxError, meta, nodes
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from markupsafe import Markup, escape

from leadflow.core.services import ServiceError

# --- limits ---------------------------------------------------------------------------------------

MAX_RANGE = 1000  # items in one range()
RANGE_BUDGET = 10_000  # range() items per render of one part
REPEAT_BUDGET = 100_000  # items made by `*` repetition per render of one part
MAX_VALUE = 1_000_000  # characters (or items) in any value a call returns
MAX_OUTPUT = 2_000_000  # characters one rendered part may have
MAX_WIDTH = 999  # padding / width in format strings and filters
MAX_EXPONENT = 64
MAX_BLOCK_DEPTH = 4

BLOCK_BY = ("segment", "stage", "role", "stage+role")
# Names the renderer provides; message context and `extra` cannot replace them.
RESERVED = frozenset({"contact", "company", "event", "workspace", "unsubscribe_url", "preferences_url",
                      "postal_address", "block", "content", "range", "message"})
UNSUBSCRIBE_VARS = ("unsubscribe_url", "preferences_url")
KNOWN_NAMES = RESERVED | {"loop", "cycler", "joiner", "namespace", "dict", "true", "false", "none", "super",
                          "self", "varargs", "kwargs", "caller"}


class TemplateError(ServiceError):
    """A template that cannot be rendered: `part` (subject, html, layout_html, block "x"…), the
    1-based `line` when known, and `problem` in plain words."""

    def __init__(self, *, part: str, problem: str, line: int | None = None):
        self.part, self.line, self.problem = part, line, problem
        where = f"{part}, line {line}" if line else part
        super().__init__(f"{where}: {problem}")


@dataclass
class Rendered:
    subject: str
    preheader: str
    html: str
    text: str


# --- the sandbox ----------------------------------------------------------------------------------

class Data(dict):
    """A read-only-in-templates dict whose keys win over dict method names, so a trait called
    `items`, `values` or `count` reads as the trait (`contact.traits.items`)."""

    __slots__ = ()

    def __getattribute__(self, name: str):
        if not name.startswith("_") and dict.__contains__(self, name):
            raise AttributeError(name)  # Jinja then falls back to the item
        return super().__getattribute__(name)


class Undefined(ChainableUndefined):
    """A missing value renders empty and chains (`contact.traits.a.b` is ""), `default()` works,
    and calling it is an error."""

    __slots__ = ()


_WIDTH = re.compile(r"\d{4,}")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _check_format_string(fmt: str) -> None:
    for _literal, _field, spec, _conversion in string.Formatter().parse(fmt):
        if spec and ("{" in spec or _WIDTH.search(spec)):
            raise SecurityError(f"format widths over {MAX_WIDTH} (or taken from arguments) are not allowed")


def _check_percent_string(fmt: str) -> None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for group in match.groups():
            if group == "*" or (group and len(group) >= 4):
                raise SecurityError(f"format widths over {MAX_WIDTH} are not allowed")


def _sized(value):
    if isinstance(value, (str, list, tuple, dict, set, frozenset, bytes)) and len(value) > MAX_VALUE:
        raise SecurityError(f"a value of {len(value):,} items is over the limit of {MAX_VALUE:,}")
    return value


class _Budget:
    """Per-render counters for range() items and repetition."""

    __slots__ = ("ranged", "repeated")

    def __init__(self) -> None:
        self.ranged = 0
        self.repeated = 0


class EmailSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *, html: bool, finalize: Callable | None = None) -> None:
        super().__init__(autoescape=html, undefined=Undefined, auto_reload=False, cache_size=0, finalize=finalize)
        self.mode = "html" if html else "text"
        self.globals.pop("lipsum", None)
        self.globals.pop("range", None)  # a per-render, budgeted range is put in the context
        self.filters["center"] = _filter_width(self.filters["center"], "center", "width")
        self.filters["indent"] = _filter_width(self.filters["indent"], "indent", "width")
        self.filters["wordwrap"] = _filter_width(self.filters["wordwrap"], "wordwrap", "width")
        self.filters["truncate"] = _filter_width(self.filters["truncate"], "truncate", "length", limit=MAX_VALUE)
        original_format = self.filters["format"]

        def format_filter(value, *args, **kwargs):
            _check_percent_string(str(value))
            return original_format(value, *args, **kwargs)

        self.filters["format"] = format_filter
        self.filters["default"] = self.filters["d"] = default_filter

    def is_safe_attribute(self, obj, attr: str, value) -> bool:
        if attr.startswith("_"):
            return False
        if isinstance(obj, str) and attr in _PADDING_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def unsafe_undefined(self, obj, attribute: str):
        if str(attribute).startswith("_"):
            raise SecurityError(f"{attribute!r} is not available: names starting with an underscore are private")
        raise SecurityError(f"{attribute!r} of a {type(obj).__name__} value is not available in templates")

    def getattr(self, obj, attribute: str):
        if isinstance(attribute, str) and attribute.startswith("_"):
            self.unsafe_undefined(obj, attribute)
        if type(obj) is Data and attribute in obj:
            return obj[attribute]  # what Jinja reads after Data refuses the attribute, without the exception
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        if isinstance(argument, str) and argument.startswith("_"):
            self.unsafe_undefined(obj, argument)
        return super().getitem(obj, argument)

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template = value.__self__

        def checked(*args, **kwargs):
            _check_format_string(template)
            return _sized(wrapped(*args, **kwargs))

        return checked

    def call_binop(self, context, operator: str, left, right):
        if operator == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents over {MAX_EXPONENT} are not allowed")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    size = len(seq) * max(times, 0)
                    budget = context.get("__budget") if context is not None else None
                    if budget is not None:
                        budget.repeated += size
                        if budget.repeated > REPEAT_BUDGET:
                            raise SecurityError(f"repetition (*) made over {REPEAT_BUDGET:,} items in one render")
                    elif size > REPEAT_BUDGET:
                        raise SecurityError(f"repetition (*) made over {REPEAT_BUDGET:,} items")
        elif operator == "%" and isinstance(left, str):
            _check_percent_string(left)
        return _sized(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - mirrors Jinja's signature
        name = getattr(__obj, "__name__", "")
        if name == "replace" and isinstance(getattr(__obj, "__self__", None), str) and args and args[0] == "":
            raise SecurityError("replace() with an empty search string is not allowed")
        return _sized(super().call(__context, __obj, *args, **kwargs))


def default_filter(value, default_value="", boolean: bool = False):
    """Jinja's `default`, but empty text and null count as missing too: profiles are full of empty
    fields, and `{{ contact.first_name | default("there") }}` must greet a person without a first
    name. Zero and false stay (unless `boolean` is true, as in Jinja)."""
    if isinstance(value, ChainableUndefined) or value is None or value == "" or (boolean and not value):
        return default_value
    return value


def _filter_width(original: Callable, name: str, argument: str, *, limit: int = MAX_WIDTH) -> Callable:
    # Filters marked pass_environment/pass_context get that first; functools.wraps keeps the mark.
    skip = 2 if getattr(original, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(original)
    def checked(*args, **kwargs):
        value = kwargs.get(argument, args[skip] if len(args) > skip else None)
        if isinstance(value, (int, float)) and abs(value) > limit:
            raise SecurityError(f"{name}: {argument} over {limit:,} is not allowed")
        return original(*args, **kwargs)

    return checked


@functools.cache
def environment(mode: str) -> EmailSandbox:
    """The one sandbox per mode ("html": autoescaped, "text": not, "marked": "html" with every
    value it writes between markers, see `messaging.render_plans`), built once per process."""
    if mode == "marked":
        from leadflow.messaging.render_plans import value_mark

        return EmailSandbox(html=True, finalize=value_mark)
    return EmailSandbox(html=mode == "html")


@functools.lru_cache(maxsize=256)  # compiled templates by source: a dispatcher batch reuses a few
def _compiled(mode: str, part: str, source: str):
    env = environment(mode)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(part=part, line=exc.lineno, problem=_problem(exc)) from None


def _problem(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return message.rstrip(".")


def _error_line(exc: BaseException) -> int | None:
    lineno = getattr(exc, "lineno", None)
    if lineno:
        return lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


def template_check(*, source: str, part: str, mode: str) -> None:
    """Refuse a template that does not compile (syntax, unknown filter or test): TemplateError
    naming the line. Empty sources are fine."""
    if source:
        _compiled(mode, part, source)


def template_names(*, source: str, mode: str = "html") -> set[str]:
    """The top-level variables a template reads (from its syntax tree, so comments and text do
    not count)."""
    if not source:
        return set()
    return set(meta.find_undeclared_variables(environment(mode).parse(source)))


def block_calls(*, source: str, mode: str = "html") -> set[str]:
    """The block names a template asks for with `block("name")`."""
    if not source:
        return set()
    tree = environment(mode).parse(source)
    names = set()
    for call in tree.find_all(nodes.Call):
        if isinstance(call.node, nodes.Name) and call.node.name == "block" and call.args \
                and isinstance(call.args[0], nodes.Const) and isinstance(call.args[0].value, str):
            names.add(call.args[0].value)
    return names


def _render_part(source: str, *, part: str, mode: str, context: dict, marked: bool = False) -> str:
    if not source:
        return ""
    template = _compiled("marked" if marked else mode, part, source)
    size = 0
    chunks: list[str] = []
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise SecurityError(f"the output is over {MAX_OUTPUT:,} characters")
            chunks.append(chunk)
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(part=part, line=_error_line(exc), problem=f"not allowed: {_problem(exc)}") from None
    except OverflowError as exc:
        raise TemplateError(part=part, line=_error_line(exc), problem=f"not allowed: {_problem(exc)}") from None
    except RecursionError:
        raise TemplateError(part=part, problem="too deeply nested (a macro or block calls itself)") from None
    except JinjaTemplateError as exc:
        raise TemplateError(part=part, line=_error_line(exc), problem=_problem(exc)) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise TemplateError(part=part, line=_error_line(exc), problem=_problem(exc)) from None
    return "".join(chunks)


# --- plain data for the context ---------------------------------------------------------------------

def plain(value, depth: int = 0):
    """JSON-like data only: dicts (as `Data`), lists, strings, numbers, booleans and None; dates as
    ISO strings; anything else as its string form."""
    if depth > 20:
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return Data({str(k): plain(v, depth + 1) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


def _user_data(user) -> Data:
    if user is None:
        return Data(name="", email="", first_name="", last_name="")
    name = (f"{user.first_name} {user.last_name}".strip()) or user.get_username()
    return Data(name=name, email=user.email or "", first_name=user.first_name or "", last_name=user.last_name or "")


def contact_data(contact) -> tuple[Data, Data]:
    """(contact, company) as plain data for templates."""
    company = contact.company if contact.company_id else None
    person = Data(
        id=contact.pk, email=contact.email, first_name=contact.first_name, last_name=contact.last_name,
        name=contact.name, title=contact.title, country=contact.country, timezone=contact.timezone,
        phone=contact.phone, traits=plain(contact.traits if isinstance(contact.traits, dict) else {}),
        fit_score=contact.fit_score, fit_grade=contact.fit_grade,
        engagement_score=round(float(contact.engagement_score or 0), 2),
        lifecycle_stage=contact.lifecycle_stage,
        owner=_user_data(contact.owner if contact.owner_id else None))
    firm = Data(name="", domain="", traits=Data())
    if company is not None:
        firm = Data(name=company.name, domain=company.domain,
                    traits=plain(company.traits if isinstance(company.traits, dict) else {}))
    return person, firm


SAMPLE_CONTACT = {
    "id": None, "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "name": "Ada Lovelace",
    "title": "Head of Analytics", "country": "GB", "timezone": "Europe/London", "phone": "",
    "traits": {"role": "analyst", "plan": "pro", "city": "London"},
    "fit_score": 72, "fit_grade": "A", "engagement_score": 35.5, "lifecycle_stage": "mql",
    "owner": {"name": "Sam Seller", "email": "sam@example.com", "first_name": "Sam", "last_name": "Seller"},
}
EMPTY_CONTACT = {
    "id": None, "email": "", "first_name": "", "last_name": "", "name": "", "title": "", "country": "", "timezone": "",
    "phone": "", "traits": {}, "fit_score": 0, "fit_grade": "", "engagement_score": 0.0, "lifecycle_stage": "",
    "owner": {"name": "", "email": "", "first_name": "", "last_name": ""},
}
SAMPLE_COMPANY = {"name": "Analytical Engines Ltd", "domain": "engines.example",
                  "traits": {"industry": "Software", "employees": 120}}
SAMPLE_EVENT = {"name": "Ebook Downloaded", "properties": {"title": "The Nurture Playbook"}}


def sample_data(*, stage: str = "", role: str = "", segments: Iterable[str] = ()) -> tuple[Data, Data, set]:
    """The built-in sample person for previews (no real contact), optionally at another stage, with
    another role, or in some segments, to preview each cell of a block's content matrix."""
    person = plain(SAMPLE_CONTACT)
    if stage:
        person["lifecycle_stage"] = stage
    if role:
        person["traits"]["role"] = role
    return person, plain(SAMPLE_COMPANY), set(segments)


def event_data(context: dict | None) -> Data:
    event = (context or {}).get("event") if isinstance(context, dict) else None
    if not isinstance(event, dict):
        return Data(name="", properties=Data())
    name = event.get("name") or event.get("event") or ""
    properties = event.get("properties") if isinstance(event.get("properties"), dict) else {}
    return Data(name=str(name), properties=plain(properties), **{
        k: plain(v) for k, v in event.items() if k not in ("name", "event", "properties") and isinstance(k, str)
        and k.isidentifier() and not k.startswith("_")})


# --- dynamic blocks -------------------------------------------------------------------------------

def _as_set(value) -> set[str]:
    if value is None or value == "" or value == "*":
        return set()
    if isinstance(value, (list, tuple, set)):
        return {str(v).strip().lower() for v in value if str(v).strip() and str(v).strip() != "*"}
    return {str(value).strip().lower()}


def _roles_of(person: Data) -> set[str]:
    traits = person.get("traits") or {}
    found = set()
    for key in ("role", "persona"):
        value = traits.get(key) if isinstance(traits, dict) else None
        if isinstance(value, str) and value.strip():
            found.add(value.strip().lower())
    return found


def block_variant_matches(*, by: str, when, person: Data, segments: Callable[[], set[str]]) -> bool:
    """Does a variant's `when` fit this person? segment: a slug or list of slugs (any);
    stage: a stage key or list; role: a value of the `role` or `persona` trait or a list;
    stage+role: {"stage": …, "role": …}, each a value, a list, or "*"/absent for any."""
    stage = str(person.get("lifecycle_stage") or "").lower()
    if by == "segment":
        wanted = _as_set(when)
        return bool(wanted) and bool(wanted & {s.lower() for s in segments()})
    if by == "stage":
        wanted = _as_set(when)
        return bool(wanted) and stage in wanted
    if by == "role":
        wanted = _as_set(when)
        return bool(wanted) and bool(wanted & _roles_of(person))
    if by == "stage+role":
        if not isinstance(when, dict):
            return False
        stages, roles = _as_set(when.get("stage")), _as_set(when.get("role"))
        if not stages and not roles:
            return False
        return (not stages or stage in stages) and (not roles or bool(roles & _roles_of(person)))
    return False


def blocks_check(blocks) -> dict:
    """Validate the dynamic blocks of a version; returns them normalised. Each is
    {"by": segment|stage|role|stage+role, "variants": [{"when": …, "html": …, "text": …}],
    "default": {"html": …, "text": …}}."""
    if blocks in (None, ""):
        return {}
    if not isinstance(blocks, dict):
        raise ServiceError("blocks: must be an object of block name → block")
    clean: dict = {}
    for name, block in blocks.items():
        where = f"block {name!r}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
            raise ServiceError(f"{where}: a block name is a letter then letters, digits, - or _ (at most 64)")
        if not isinstance(block, dict):
            raise ServiceError(f"{where}: must be an object with by, variants and default")
        by = block.get("by", "stage")
        if by not in BLOCK_BY:
            raise ServiceError(f"{where}: by must be one of {', '.join(BLOCK_BY)}, not {by!r}")
        variants = block.get("variants") or []
        if not isinstance(variants, list):
            raise ServiceError(f"{where}: variants must be a list")
        out_variants = []
        for i, variant in enumerate(variants):
            if not isinstance(variant, dict):
                raise ServiceError(f"{where}, variant {i + 1}: must be an object with when, html and text")
            when = variant.get("when")
            if by == "stage+role":
                if not isinstance(when, dict) or set(when) - {"stage", "role"}:
                    raise ServiceError(f'{where}, variant {i + 1}: when must be {{"stage": …, "role": …}}')
                if not _as_set(when.get("stage")) and not _as_set(when.get("role")):
                    raise ServiceError(f"{where}, variant {i + 1}: say a stage, a role or both")
            elif not _as_set(when) or isinstance(when, dict):
                raise ServiceError(f"{where}, variant {i + 1}: when must name a {by} (or a list of them)")
            html, text = str(variant.get("html") or ""), str(variant.get("text") or "")
            template_check(source=html, part=f"{where}, variant {i + 1} html", mode="html")
            template_check(source=text, part=f"{where}, variant {i + 1} text", mode="text")
            out_variants.append({"when": when, "html": html, "text": text})
        default = block.get("default") or {}
        if not isinstance(default, dict):
            raise ServiceError(f"{where}: default must be an object with html and text")
        d_html, d_text = str(default.get("html") or ""), str(default.get("text") or "")
        template_check(source=d_html, part=f"{where}, default html", mode="html")
        template_check(source=d_text, part=f"{where}, default text", mode="text")
        clean[name] = {"by": by, "variants": out_variants, "default": {"html": d_html, "text": d_text}}
    return clean


def blocks_use_segments(blocks: dict | None) -> bool:
    return any(isinstance(b, dict) and b.get("by") == "segment" for b in (blocks or {}).values())


# --- html to text -----------------------------------------------------------------------------------
# lxml parses (C, ~0.1 ms for a typical email); one pass over the tree writes the text. inscriptis
# and html2text gave the same text at 2-3 ms a message, too slow for the dispatcher's hot path.

_SKIP_TAGS = frozenset({"head", "style", "script", "title", "meta", "link", "noscript", "template", "object",
                        "iframe", "svg"})
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "ul", "ol", "table",
                             "dl", "figure", "address", "hr"})
_LINE_TAGS = frozenset({"div", "tr", "li", "section", "article", "header", "footer", "main", "nav", "aside",
                        "center", "dt", "dd", "figcaption", "form", "caption", "tbody", "thead", "tfoot",
                        "fieldset", "legend", "body", "html"})
_CELL_TAGS = frozenset({"td", "th"})
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\r\n\f\u200b\u200c\u034f]+")
_LINKABLE = re.compile(r"(?i)(https?:|mailto:)")
_LINE, _PARAGRAPH = "\n", "\n\n"


def _text_tokens(element, out: list, lists: list) -> None:
    tag = element.tag if isinstance(element.tag, str) else ""
    tag = tag.lower()
    if not tag or tag in _SKIP_TAGS or _HIDDEN.search(element.get("style") or "") or element.get("hidden") is not None:
        return
    if tag == "br":
        out.append(("br", ""))
        return
    if tag == "hr":
        out += [("break", _PARAGRAPH), ("text", "-" * 20), ("break", _PARAGRAPH)]
        return
    if tag == "img":
        return  # images carry no text; their alt is often a spacer
    block = _PARAGRAPH if tag in _PARAGRAPH_TAGS else (_LINE if tag in _LINE_TAGS else "")
    if block:
        out.append(("break", block))
    if tag in ("ul", "ol"):
        lists.append([tag, 0])
    if tag == "li":
        depth = max(len(lists), 1)
        kind = lists[-1] if lists else ["ul", 0]
        kind[1] += 1
        out.append(("text", "  " * (depth - 1) + ("* " if kind[0] == "ul" else f"{kind[1]}. ")))
    if tag in _CELL_TAGS:
        out.append(("text", " "))
    if tag == "pre":
        out.append(("pre", element.text_content()))
    else:
        if element.text:
            out.append(("text", element.text))
        for child in element:
            _text_tokens(child, out, lists)
            if child.tail:
                out.append(("text", child.tail))
    if tag == "a":
        out.append(("link", ((element.get("href") or "").strip(), _SPACES.sub(" ", element.text_content()).strip())))
    if tag in ("ul", "ol"):
        lists.pop()
    if block:
        out.append(("break", block))


def link_note(href: str, label: str) -> str:
    """What the text part adds after a link's text: its URL when it is a web or mail link whose
    text does not already say it ("" otherwise)."""
    if _LINKABLE.match(href) and label != href and label != href.partition(":")[2]:
        return f" ({href})" if label else href
    return ""


def html_to_text(html: str) -> str:
    """A readable plain-text part from HTML: headings, paragraphs, lists and table rows on their
    own lines, hidden elements, styles and images dropped, every link as `text (URL)` so its URL
    survives."""
    return text_assemble(text_tokens(html))


def text_tokens(html: str) -> list[tuple[str, object]]:
    """The first half of `html_to_text`: the document read into text, break and link tokens."""
    import lxml.html
    from lxml.etree import ParserError

    if not html.strip():
        return []
    try:
        root = lxml.html.document_fromstring(html)
    except (ParserError, ValueError):
        return []
    tokens: list[tuple[str, object]] = []
    _text_tokens(root, tokens, [])
    return tokens


def text_assemble(tokens: list[tuple[str, object]], note: Callable[[str, str], str] = link_note) -> str:
    """The second half of `html_to_text`: lines from the tokens; `note(href, label)` says what
    follows each link's text."""
    lines: list[str] = []
    line = ""
    wanted_gap = 0  # blank lines wanted before the next text

    def finish() -> None:
        nonlocal line
        if line.strip():
            lines.append(line.rstrip())
        line = ""

    for kind, value in tokens:
        if kind == "link":
            value = note(*value)
            if not value:
                continue
            kind = "text"
        if kind == "text":
            text = _SPACES.sub(" ", value.replace("\xa0", " "))
            if not line:
                text = text.lstrip()
                if not text:
                    continue
                if wanted_gap and lines:
                    lines.extend([""] * wanted_gap)
                wanted_gap = 0
            line += text
        elif kind == "br":
            if line.strip():
                finish()
            else:
                line = ""
                lines.append("")
        elif kind == "break":
            finish()
            wanted_gap = max(wanted_gap, 1 if value == _PARAGRAPH else 0)
        elif kind == "pre":
            finish()
            if lines:
                lines.append("")
            lines.extend(value.strip("\n").splitlines())
            wanted_gap = 1
    finish()
    out: list[str] = []
    for text in lines:
        if not text.strip() and (not out or not out[-1]):
            continue
        out.append(text.rstrip())
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


# --- assembling -------------------------------------------------------------------------------------

PREHEADER_STYLE = ("display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;opacity:0;"
                   "overflow:hidden;mso-hide:all;color:transparent")
# Spacers after the preheader stop clients from pulling the body's first words into the preview.
PREHEADER_FILL = "&#847;&zwnj;&nbsp;" * 40
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_HTML_OPEN = re.compile(r"<html\b", re.IGNORECASE)
_CONTENT_MARK = "LEADFLOWCONTENTa7f3e9c1"

_inliner = css_inline.CSSInliner(keep_style_tags=True, remove_inlined_selectors=True, keep_link_tags=True,
                                 load_remote_stylesheets=False)


def _document(html: str) -> str:
    if _HTML_OPEN.search(html):
        return html
    return ('<!doctype html>\n<html><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"></head>\n'
            f"<body>\n{html}\n</body></html>\n")


def _with_preheader(html: str, preheader: str) -> str:
    if not preheader:
        return html
    return with_preheader_html(html, escape(preheader))


def with_preheader_html(html: str, escaped: str) -> str:
    """`html` with the hidden preview text (already escaped) first in its body."""
    hidden = f'<div style="{PREHEADER_STYLE}">{escaped}{PREHEADER_FILL}</div>'
    match = _BODY_OPEN.search(html)
    if match is None:
        return hidden + html
    return html[:match.end()] + hidden + html[match.end():]


def css_inline_html(html: str) -> str:
    try:
        return _inliner.inline(html)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError(part="html", problem=f"the CSS could not be inlined: {exc}") from None


def _one_line(value: str) -> str:
    return " ".join(value.split())


@dataclass
class RenderInput:
    """Everything a render needs, already loaded: the content and the person's plain data."""

    subject: str
    preheader: str
    html: str
    text: str
    blocks: dict
    layout_html: str
    layout_text: str
    person: Data
    company: Data
    event: Data
    workspace_name: str
    postal_address: str
    unsubscribe_url: str
    preferences_url: str
    variables: dict
    segments: Callable[[], set[str]]


def _base_context(data: RenderInput, mode: str) -> dict:
    postal: str | Markup = data.postal_address
    if mode == "html":
        postal = Markup("<br>").join(escape(line) for line in data.postal_address.strip().splitlines())
    context = {k: v for k, v in data.variables.items()
               if isinstance(k, str) and k.isidentifier() and not k.startswith("_") and k not in RESERVED}
    context.update(contact=data.person, company=data.company, event=data.event,
                   workspace=Data(name=data.workspace_name), unsubscribe_url=data.unsubscribe_url,
                   preferences_url=data.preferences_url, postal_address=postal)
    return context


def _budgeted(context: dict) -> dict:
    budget = _Budget()

    def budget_range(*args):
        try:
            numbers = range(*args)
        except TypeError as exc:
            raise SecurityError(f"range: {exc}") from None
        if len(numbers) > MAX_RANGE:
            raise SecurityError(f"range() of {len(numbers):,} items; at most {MAX_RANGE:,}")
        budget.ranged += len(numbers)
        if budget.ranged > RANGE_BUDGET:
            raise SecurityError(f"range() made over {RANGE_BUDGET:,} items in one render")
        return numbers

    return {**context, "range": budget_range, "__budget": budget}


_NEWLINES = re.compile(r"\r\n|\r|\n")


def static_text(source: str) -> str | None:
    """What Jinja renders for `source` when it has no tag, variable or comment (no `{` at all):
    the text with its newlines made `\n` and one trailing newline dropped. None otherwise."""
    if "{" in source:
        return None
    text = _NEWLINES.sub("\n", source) if "\r" in source else source
    return text[:-1] if text.endswith("\n") else text


def _render_with_blocks(source: str, *, part: str, mode: str, data: RenderInput, extra: dict | None = None,
                        depth: int = 0, marked: bool = False) -> str:
    fixed = static_text(source)
    if fixed is not None:  # a fixed preheader or subject: nothing to evaluate, no context to build
        return fixed
    context = _budgeted({**_base_context(data, mode), **(extra or {})})

    def block(name=""):
        name = str(name)
        spec = data.blocks.get(name)
        if spec is None:
            raise ValueError(f"there is no block named {name!r}")
        if depth >= MAX_BLOCK_DEPTH:
            raise RecursionError
        chosen = spec.get("default") or {}
        label = "default"
        for i, variant in enumerate(spec.get("variants") or []):
            if block_variant_matches(by=spec.get("by", ""), when=variant.get("when"), person=data.person,
                                     segments=data.segments):
                chosen, label = variant, f"variant {i + 1}"
                break
        body = chosen.get(mode) or ""
        if mode == "text" and not body and chosen.get("html"):
            html = _render_with_blocks(chosen["html"], part=f'block "{name}", {label} html', mode="html", data=data,
                                       depth=depth + 1)
            return html_to_text(html).strip()
        rendered = _render_with_blocks(body, part=f'block "{name}", {label} {mode}', mode=mode, data=data,
                                       depth=depth + 1, marked=marked)
        return Markup(rendered) if mode == "html" else rendered

    context["block"] = block
    return _render_part(source, part=part, mode=mode, context=context, marked=marked)


Planner = Callable[[RenderInput, str, Callable[[], tuple[str, str]]], "tuple[str, str] | None"]


def render_content(data: RenderInput, *, track: Callable[[str, str], tuple[str, str]] | None = None,
                   subject_prefix: str = "", planner: Planner | None = None) -> Rendered:
    """Render prepared content: subject, preheader, body with blocks inside its layout, the text
    part (given or generated), the hidden preheader, tracking (when `track` is given) and
    inlined CSS. A `planner(data, preheader, render)` may produce the same HTML and text faster
    (`messaging.render_plans`); `render()` is the way below, and None from it means "use it"."""
    subject = _one_line(_render_with_blocks(data.subject, part="subject", mode="text", data=data))
    preheader = _one_line(_render_with_blocks(data.preheader, part="preheader", mode="text", data=data))

    def render() -> tuple[str, str]:
        return _render_body(data, preheader, track)

    parts = planner(data, preheader, render) if planner is not None else None
    html, text = parts if parts is not None else render()
    return Rendered(subject=(subject_prefix + subject).strip(), preheader=preheader, html=html, text=text)


def explicit_text(data: RenderInput) -> str:
    """The text part of a version that has one (its own text, in the layout's text or its HTML
    frame)."""
    body_text = _render_with_blocks(data.text, part="text", mode="text", data=data).strip()
    if data.layout_text.strip():
        text = _render_with_blocks(data.layout_text, part="layout text", mode="text", data=data,
                                   extra={"content": body_text})
    elif data.layout_html:
        frame = _render_with_blocks(data.layout_html, part="layout html", mode="html", data=data,
                                    extra={"content": Markup(_CONTENT_MARK)})
        text = html_to_text(frame).replace(_CONTENT_MARK, body_text)
    else:
        text = body_text
    return text.strip() + "\n"


def _render_body(data: RenderInput, preheader: str,
                 track: Callable[[str, str], tuple[str, str]] | None) -> tuple[str, str]:
    body = _render_with_blocks(data.html, part="html", mode="html", data=data)
    html = body
    if data.layout_html:
        html = _render_with_blocks(data.layout_html, part="layout html", mode="html", data=data,
                                   extra={"content": Markup(body)})
    html = _document(html)
    if data.text.strip():
        text = explicit_text(data)
    else:
        text = html_to_text(html)
    html = _with_preheader(html, preheader)
    if track is not None:
        html, text = track(html, text)
    return css_inline_html(html), text


# --- versions and messages --------------------------------------------------------------------------

def version_layout(version) -> tuple[str, str]:
    """The layout a version renders in: the copy taken at submission, or for a draft (never
    submitted) the layout as it is now."""
    if version.submitted_at is None and version.layout_id:
        layout = version.layout
        return layout.html, layout.text
    return version.layout_html, version.layout_text


def _content_of(version) -> dict:
    layout_html, layout_text = version_layout(version)
    return dict(subject=version.subject, preheader=version.preheader, html=version.html, text=version.text,
                blocks=version.blocks if isinstance(version.blocks, dict) else {}, layout_html=layout_html,
                layout_text=layout_text)


def _workspace_facts(workspace_id: int) -> tuple[str, str]:
    from leadflow.core.models import Workspace
    from leadflow.messaging.models import MessagingSettings

    name = Workspace.objects.filter(pk=workspace_id).values_list("name", flat=True).first() or ""
    postal = (MessagingSettings.objects.filter(workspace_id=workspace_id)
              .values_list("postal_address", flat=True).first() or "")
    return name, postal


def contact_segment_slugs(*, workspace_id: int, contact_id: int | None) -> set[str]:
    if not contact_id:
        return set()
    from leadflow.segments.models import SegmentMember

    return set(SegmentMember.objects.filter(workspace_id=workspace_id, contact_id=contact_id,
                                            segment__archived_at__isnull=True)
               .values_list("segment__slug", flat=True))


def _lazy(fn: Callable[[], set[str]]) -> Callable[[], set[str]]:
    cache: list[set[str]] = []

    def get() -> set[str]:
        if not cache:
            cache.append(fn())
        return cache[0]

    return get


# A test send personalised for a contact keeps the contact here, not in Message.contact, so the
# test's unsubscribe and preference links cannot act for the real person.
TEST_CONTACT_KEY = "_test_contact"
PREVIEW_UNSUBSCRIBE = "u/preview"
PREVIEW_PREFERENCES = "p/preview"


def version_render(*, version, contact=None, context: dict | None = None, sample: dict | None = None) -> Rendered:
    """A preview of a version for a contact (or the built-in sample person when `contact` is None;
    `sample` may set its `stage`, `role` and `segments`). No tracking; the consent links are inert
    placeholders. `context` may carry an `event` and other variables, like a message's."""
    from leadflow.messaging.tokens import public_url

    if contact is not None:
        if contact.workspace_id != version.workspace_id:
            raise ServiceError("the contact belongs to another workspace")
        person, company = contact_data(contact)
        segments = _lazy(lambda: contact_segment_slugs(workspace_id=version.workspace_id, contact_id=contact.pk))
    else:
        sample = sample or {}
        person, company, chosen = sample_data(stage=str(sample.get("stage") or ""), role=str(sample.get("role") or ""),
                                              segments=sample.get("segments") or ())
        segments = lambda: chosen  # noqa: E731
    context = context if isinstance(context, dict) else {}
    if contact is None and "event" not in context:
        context = {**context, "event": SAMPLE_EVENT}
    name, postal = _workspace_facts(version.workspace_id)
    data = RenderInput(**_content_of(version), person=person, company=company, event=event_data(context),
                       workspace_name=name, postal_address=postal,
                       unsubscribe_url=public_url(PREVIEW_UNSUBSCRIBE), preferences_url=public_url(PREVIEW_PREFERENCES),
                       variables=plain({k: v for k, v in context.items() if k != "event"}), segments=segments)
    return render_content(data)


def messages_render_prefetch(*, messages: list) -> None:
    """Load what `message_render` needs for a batch of messages in a fixed number of queries
    (templates, versions with layouts, contacts with company and owner, workspace names, postal addresses,
    segment memberships when a block varies by segment), so a dispatcher batch is not N+1."""
    from django.db.models import prefetch_related_objects

    from leadflow.core.models import Workspace
    from leadflow.messaging.models import MessagingSettings

    if not messages:
        return
    prefetch_related_objects(messages, "template", "version__layout", "contact__company", "contact__owner")
    workspace_ids = {m.workspace_id for m in messages}
    names = dict(Workspace.objects.filter(pk__in=workspace_ids).values_list("pk", "name"))
    postal = dict(MessagingSettings.objects.filter(workspace_id__in=workspace_ids)
                  .values_list("workspace_id", "postal_address"))
    wanted = {m.pk for m in messages if m.contact_id and m.version_id and blocks_use_segments(m.version.blocks)}
    memberships: dict[int, set[str]] = {}
    if wanted:
        from leadflow.segments.models import SegmentMember

        rows = SegmentMember.objects.filter(workspace_id__in=workspace_ids,
                                            contact_id__in={m.contact_id for m in messages if m.pk in wanted},
                                            segment__archived_at__isnull=True).values_list("contact_id",
                                                                                          "segment__slug")
        for contact_id, slug in rows:
            memberships.setdefault(contact_id, set()).add(slug)
    for m in messages:
        m._lf_render = {"workspace_name": names.get(m.workspace_id, ""), "postal": postal.get(m.workspace_id, ""),
                        "segments": memberships.get(m.contact_id, set()) if m.pk in wanted else None}


def message_render(*, message, extra: dict | None = None) -> Rendered:
    """The final content of one queued message: its pinned version, the person's data, the
    triggering event (`message.context["event"]`) and other context variables, `extra` on top;
    links tracked, CSS inlined. A test message's subject starts with "[Test] "; it renders for the
    contact named in its context (see `TEST_CONTACT_KEY`) or the sample person. A message whose
    contact is gone renders with empty personal data."""
    from leadflow.consent.links import preferences_url, test_preferences_url, unsubscribe_url
    from leadflow.messaging.links import links_track
    from leadflow.messaging.render_plans import message_parts

    version = message.version
    if version is None:
        raise ServiceError(f"message {message.pk} has no template version to render")
    if version.workspace_id != message.workspace_id:
        raise ServiceError(f"message {message.pk}: its version belongs to another workspace")
    cached = getattr(message, "_lf_render", None) or {}
    context = message.context if isinstance(message.context, dict) else {}
    contact = message.contact if message.contact_id else None
    test_as = None
    if message.kind == "test" and contact is None and context.get(TEST_CONTACT_KEY):
        from leadflow.contacts.models import Contact

        test_as = (Contact.objects.filter(workspace_id=message.workspace_id, pk=context[TEST_CONTACT_KEY])
                   .select_related("company", "owner").first())
    if test_as is not None:
        # A test personalised for a contact: their data, but no link that acts for them.
        person, company = contact_data(test_as)
        person["email"] = message.to_email
        segments = _lazy(lambda: contact_segment_slugs(workspace_id=message.workspace_id, contact_id=test_as.pk))
        preferences = test_preferences_url(message)
    elif contact is not None:
        if contact.workspace_id != message.workspace_id:
            raise ServiceError(f"message {message.pk}: its contact belongs to another workspace")
        person, company = contact_data(contact)
        if cached.get("segments") is not None:
            segments = lambda: cached["segments"]  # noqa: E731
        else:
            segments = _lazy(lambda: contact_segment_slugs(workspace_id=message.workspace_id, contact_id=contact.pk))
        preferences = preferences_url(workspace_id=message.workspace_id, contact_id=contact.pk)
    elif message.kind == "test":
        person, company, _ = sample_data()
        person["email"] = message.to_email
        segments = set
        preferences = test_preferences_url(message)
    else:
        # The contact is gone (deleted or erased): only the address, never the sample person.
        person = plain({**EMPTY_CONTACT, "email": message.to_email})
        company = Data(name="", domain="", traits=Data())
        segments = set
        preferences = unsubscribe_url(message)
    if "workspace_name" in cached:
        name, postal = cached["workspace_name"], cached["postal"]
    else:
        name, postal = _workspace_facts(message.workspace_id)
    variables = {k: v for k, v in context.items() if k != "event"}
    variables.update(extra or {})
    data = RenderInput(**_content_of(version), person=person, company=company, event=event_data(context),
                       workspace_name=name, postal_address=postal, unsubscribe_url=unsubscribe_url(message),
                       preferences_url=preferences, variables=plain(variables), segments=segments)
    return render_content(data, track=lambda html, text: links_track(html=html, text=text, message=message),
                          subject_prefix="[Test] " if message.kind == "test" else "",
                          planner=functools.partial(message_parts, message=message))


def version_lint(*, version=None, content: dict | None = None) -> list[str]:
    """Warnings (not errors) about content: top-level variables the renderer does not provide
    (they render empty unless the sender passes them) and blocks asked for but not defined."""
    content = content or _content_of(version)
    blocks = content.get("blocks") or {}
    names: set[str] = set()
    asked: set[str] = set()
    parts = [(content.get("subject", ""), "text"), (content.get("preheader", ""), "text"),
             (content.get("html", ""), "html"), (content.get("text", ""), "text"),
             (content.get("layout_html", ""), "html"), (content.get("layout_text", ""), "text")]
    for block in blocks.values():
        for variant in [*(block.get("variants") or []), block.get("default") or {}]:
            parts += [(variant.get("html", ""), "html"), (variant.get("text", ""), "text")]
    for source, mode in parts:
        try:
            names |= template_names(source=source, mode=mode)
            asked |= block_calls(source=source, mode=mode)
        except TemplateSyntaxError:
            continue
    warnings = []
    unknown = sorted(names - KNOWN_NAMES)
    if unknown:
        warnings.append("unknown variables render empty unless the sender passes them: " + ", ".join(unknown))
    missing = sorted(asked - set(blocks))
    if missing:
        warnings.append("blocks used but not defined: " + ", ".join(missing))
    return warnings
