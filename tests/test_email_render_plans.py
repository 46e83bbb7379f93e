"""Render plans (messaging.render_plans): a message rendered through its document shape's plan is
byte for byte what the plain render gives — for any values, wherever a template writes them — and
plans are reused for the same shape but never for another version's content."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from leadflow.messaging import render_plans, rendering
from leadflow.messaging.links import links_track
from leadflow.messaging.rendering import Data, RenderInput, render_content

PUBLIC = "https://lf.example"


@dataclass(frozen=True)
class _Template:
    slug: str = "monthly"


@dataclass
class _Message:
    pk: int = 41
    campaign: str = "march"
    template_id: int = 7
    template: _Template = field(default_factory=_Template)
    version_id: int = 3
    kind: str = "marketing"


LAYOUT = """<!doctype html><html><head><meta charset="utf-8"><style>
p { color: #333; } .btn { background: #2563eb; } @media (max-width: 600px) { .wide { width: 100% } }
</style></head><body><div class="wide">{{ content }}</div>
<footer>{{ workspace.name }} · {{ postal_address }} ·
<a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Preferences</a></footer>
</body></html>"""

# Places a template writes values: text, link targets and labels, attributes that steer a reader
# (style, src) and ones that do not (alt, title, class), comments, raw text, references, lists.
FRAGMENTS = [
    "<p>Hi {{ v1 }}, welcome to {{ v2 }}.</p>",
    '<p><a href="https://acme.example/r/{{ v1 }}?ref=email">Report {{ v2 }}</a></p>',
    '<p><a href="{{ v2 }}">{{ v2 }}</a> and <a href="{{ v1 }}">{{ v3 }}</a></p>',
    '<a class="btn {{ v3 }}" title="{{ v1 }}" href="https://acme.example/go">Go</a>',
    '<img src="https://cdn.example/logo.png" alt="{{ v2 }}" width="10">',
    '<img src="{{ v1 }}" alt="x">',
    '<p style="color: {{ v3 }}">styled</p>',
    '<div style="display:none">{{ v1 }} hidden</div>',
    "<p>&{{ v1 }}; AT&amp;{{ v2 }} &#{{ v3 }}</p>",
    "<pre>{{ v1 }}\n   {{ v2 }}</pre>",
    "<ul><li>{{ v1 }}</li><li>{{ v2 }}{{ v3 }}</li></ul>",
    "<table><tr><td>{{ v1 }}</td><td>{{ v2 }}</td></tr></table>",
    '<!--[if mso]><v:roundrect href="https://acme.example/{{ v1 }}">Go</v:roundrect><![endif]-->',
    "<!-- note {{ v2 }} -->",
    "<style>.x { color: {{ v3 }} }</style><p class=\"x\">x</p>",
    "<p>Visit https://acme.example/{{ v1 }} or write to {{ v2 }}</p>",
    '<a href=https://acme.example/u/{{ v2 }}>unquoted</a>',
    "{% if v1 %}<h2>{{ v1 | upper }}</h2>{% else %}<h2>none</h2>{% endif %}",
    '{% for x in [v1, v2] %}<p><a href="https://acme.example/i/{{ loop.index }}">{{ x }}</a></p>{% endfor %}',
    "<p>{{ v1 }}<br>{{ v2 }}<hr>{{ v3 }}</p>",
    '<a href="mailto:{{ v2 }}">mail {{ v2 }}</a> <a href="https://lf.example/u/{{ v3 }}">consent</a>',
    "<TITLE>{{ v1 }}</TITLE><P CLASS=\"{{ v2 }}\">Upper {{ v3 }}</P>",
    '<script type="text/x-data">var a = "{{ v2 }}";</script><script/><p>{{ v1 }}</p>',
    "<![if !mso]><p>{{ v1 }}</p><![endif]><textarea>{{ v2 }}</textarea>",
    '<p data-name="{{ v1 }}" aria-label="{{ v2 }}" hidden="{{ v3 }}">attributes</p>',
]

VALUES = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    st.text(alphabet="ab &<>\"'.:/?=#;-_ \u00a0\u034f\u200béü1", max_size=12),
    st.sampled_from(["", " ", "Ada", "Ada Lovelace", "O'Brien", "A & B", "https://acme.example/x?y=1",
                     "mailto:ada@example.com", "ada@example.com", "amp", "copy", "65", "x.", "Go", "pro",
                     "  two  spaces ", "https://lf.example/e/c/x", "<b>bold</b>", "\ue000", "\ue0001\ue001",
                     "red; display:none", "javascript:alert(1)", "-->", "]]>", "a\nb"]),
)


def _data(*, html: str, layout: str, preheader: str, text: str, values: dict) -> RenderInput:
    return RenderInput(subject="Hi {{ v1 }}", preheader=preheader, html=html, text=text, blocks={},
                       layout_html=layout, layout_text="", person=Data(first_name="Ada"),
                       company=Data(name="", domain="", traits=Data()), event=Data(name="", properties=Data()),
                       workspace_name="Acme & Co", postal_address="Acme Inc\n1 Main St",
                       unsubscribe_url=f"{PUBLIC}/u/abc:def", preferences_url=f"{PUBLIC}/p/ghi:jkl",
                       variables=rendering.plain(values), segments=set)


def _both(data: RenderInput, message) -> tuple:
    """(planned, plain): each a Rendered, or the error it raised (a CSS value can make the CSS
    unreadable: then both must refuse it alike)."""
    track = functools.partial(_track, message=message)
    return (_outcome(render_content, data, track=track,
                     planner=functools.partial(render_plans.message_parts, message=message)),
            _outcome(render_content, data, track=track))


def _outcome(render, *args, **kwargs):
    try:
        return render(*args, **kwargs)
    except rendering.TemplateError as exc:
        return f"TemplateError: {exc}"


def _track(html: str, text: str, *, message) -> tuple[str, str]:
    return links_track(html=html, text=text, message=message)


@pytest.fixture
def unchecked(monkeypatch, settings):
    """Plans used without the check against the plain render (so a wrong plan would show)."""
    settings.PUBLIC_URL = PUBLIC
    monkeypatch.setattr(render_plans, "VERIFY_USES", ())
    monkeypatch.setattr(render_plans, "VERIFY_EVERY", 10 ** 12)
    render_plans.plans_clear()
    yield
    render_plans.plans_clear()


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fragments=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6),
       layout=st.booleans(), preheader=st.sampled_from(["", "Your {{ v2 }} news", "Fixed preview", "{{ v1 }}"]),
       explicit_text=st.booleans(), people=st.lists(st.tuples(VALUES, VALUES, VALUES), min_size=1, max_size=4))
def test_a_planned_render_is_byte_for_byte_the_plain_render(unchecked, fragments, layout, preheader, explicit_text,
                                                            people):
    html = "\n".join(fragments)
    for i, (v1, v2, v3) in enumerate(people):  # several people, one shape cache: plans are reused
        data = _data(html=html, layout=LAYOUT if layout else "", preheader=preheader,
                     text="Text for {{ v1 }}: https://acme.example/t/{{ v2 }}" if explicit_text else "",
                     values={"v1": v1, "v2": v2, "v3": v3})
        planned, plain = _both(data, _Message(pk=100 + i))
        assert planned == plain


def test_plans_are_reused_for_one_shape_and_count_their_uses(unchecked):
    html = '<p>Hi {{ v1 }}</p><p><a href="https://acme.example/x/{{ v2 }}">x</a></p>'
    for i, name in enumerate(["Ada", "Grace", "Alan", "Barbara"]):
        planned, plain = _both(_data(html=html, layout=LAYOUT, preheader="For {{ v1 }}", text="",
                                     values={"v1": name, "v2": i}), _Message(pk=i + 1))
        assert planned == plain and f"Hi {name}" in planned.html
    plans = [p for p in render_plans._plans.values() if isinstance(p, render_plans.Plan)]
    assert len(plans) == 1 and plans[0].uses == 4


def test_another_versions_content_never_uses_a_plan_made_for_this_one(unchecked):
    first = _data(html="<p>Version one for {{ v1 }}</p>", layout=LAYOUT, preheader="", text="", values={"v1": "Ada"})
    second = _data(html="<p>Version two for {{ v1 }}</p>", layout=LAYOUT, preheader="", text="",
                   values={"v1": "Ada"})
    one, _ = _both(first, _Message(version_id=1))
    two, plain_two = _both(second, _Message(version_id=2))
    assert "Version one for Ada" in one.html and "Version two" not in one.html
    assert two == plain_two and "Version two for Ada" in two.html and "Version one" not in two.html
    assert len([p for p in render_plans._plans.values() if isinstance(p, render_plans.Plan)]) == 2


@pytest.mark.parametrize("preheader", ["{{ v2 }}", "Your {{ v2 }} news"])
def test_values_that_look_like_placeholders_are_text(unchecked, preheader):
    for v2 in ["\ue0000\ue001", "\ue0001\ue001", "plain"]:
        data = _data(html="<p>{{ v1 }} and {{ v2 }}</p>", layout="", preheader=preheader, text="",
                     values={"v1": "x.", "v2": v2})
        planned, plain = _both(data, _Message())
        assert planned == plain


def test_values_that_are_not_plain_text_become_part_of_the_shape(unchecked):
    html = "<p>Hi {{ v1 }}</p>"
    for name in ["O'Brien", "A & B", "O'Brien"]:
        planned, plain = _both(_data(html=html, layout="", preheader="", text="", values={"v1": name}), _Message())
        assert planned == plain
    keys = [key[0] for key, plan in render_plans._plans.items() if isinstance(plan, render_plans.Plan)]
    assert len(keys) == 2 and all("&#39;" in k or "&amp;" in k for k in keys)


@pytest.mark.parametrize("html", [
    "{% macro m(x) %}<b>{{ x }}</b>{% endmacro %}<p>{{ m(v1) | length }}</p>",
    "{% set caught %}<i>{{ v1 }}</i>{% endset %}<p>{{ caught | length }}</p>",
    "{% filter upper %}<p>{{ v1 }}</p>{% endfilter %}",
])
def test_templates_that_read_their_own_output_are_not_planned(unchecked, html):
    data = _data(html=html, layout="", preheader="", text="", values={"v1": "Ada"})
    assert render_plans.message_parts(data, "", lambda: ("", ""), message=_Message()) is None
    planned, plain = _both(data, _Message())
    assert planned == plain


def test_a_plan_that_disagrees_with_the_plain_render_is_dropped(settings, caplog):
    settings.PUBLIC_URL = PUBLIC
    render_plans.plans_clear()
    data = _data(html="<p>Hi {{ v1 }}</p>", layout="", preheader="", text="", values={"v1": "Ada"})
    _both(data, _Message())  # builds the plan (checked: fine)
    plan = next(p for p in render_plans._plans.values() if isinstance(p, render_plans.Plan))
    plan.doc = plan.doc.replace("Hi", "Bye")  # a plan gone wrong
    with caplog.at_level(logging.ERROR, logger="leadflow.messaging.render_plans"):
        planned, plain = _both(data, _Message())  # its 2nd use is checked
    assert planned == plain and "Hi Ada" in planned.html
    assert plan.broken and "differs from the plain render" in caplog.text
    planned, plain = _both(data, _Message())
    assert planned == plain
    render_plans.plans_clear()
