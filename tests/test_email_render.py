"""Rendering email content: personalisation from plain data, dynamic blocks and the stage × role
matrix, layouts, the generated text part, the preheader, tracking and CSS inlining, the sandbox
refusing escapes and resource abuse, and errors that name the part and line."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from leadflow.contacts.models import Company, Contact
from leadflow.core.services import ServiceError
from leadflow.messaging import content, rendering
from leadflow.messaging.models import Message, MessagingSettings, TemplateVersion
from leadflow.messaging.rendering import TemplateError, message_render, version_render
from leadflow.messaging.tokens import token_read
from leadflow.segments import services as segment_services

pytestmark = pytest.mark.django_db

LAYOUT = """<html><head><style>p { color: #123456; } @media (max-width: 600px) { .wide { width: 100% } }</style></head>
<body><div class="wide">{{ content }}</div>
<footer>{{ workspace.name }} · {{ postal_address }} · <a href="{{ unsubscribe_url }}">Unsubscribe</a>
 · <a href="{{ preferences_url }}">Preferences</a></footer></body></html>"""


@pytest.fixture
def settings_row(ws):
    return MessagingSettings.objects.create(workspace=ws.workspace, postal_address="Acme Inc\n1 Main Street, Springfield",
                                            from_email="news@acme.example")


def make_contact(ws, **fields) -> Contact:
    defaults = dict(email="grace@acme.example", first_name="Grace", last_name="Hopper", title="CTO", country="US",
                    timezone="America/New_York", traits={"plan": "pro", "role": "developer"}, fit_score=80,
                    fit_grade="A", engagement_score=12.345, lifecycle_stage="lead")
    defaults.update(fields)
    return Contact.objects.create(workspace=ws.workspace, **defaults)


def make_template(ws, *, html="<p>Hi {{ contact.first_name }}</p>", layout=None, blocks=None, text="",
                  subject="Hello {{ contact.first_name }}", preheader="", kind="marketing", **extra):
    return content.template_create(workspace=ws.workspace, name=extra.pop("name", "Welcome"), kind=kind,
                                   actor="test", subject=subject, html=html, text=text, preheader=preheader,
                                   blocks=blocks, layout=layout, **extra)


def v1(template) -> TemplateVersion:
    return template.versions.get(number=1)


def approved(ws, template) -> TemplateVersion:
    from leadflow.core.services import user_create

    version = content.version_submit(version=v1(template), actor="test")
    admin = user_create(username=f"admin-{template.pk}", password="pw-123456", workspace=ws.workspace, role="admin")
    return content.version_approve(version=version, user=admin)


# --- personalisation -----------------------------------------------------------------------------

def test_personalises_from_contact_company_owner_score_stage_and_event(ws, settings_row):
    owner = get_user_model().objects.create_user(username="sam", first_name="Sam", last_name="Seller",
                                                 email="sam@acme.example")
    company = Company.objects.create(workspace=ws.workspace, name="Initech", domain="initech.example",
                                     traits={"employees": 250})
    contact = make_contact(ws, company=company, owner=owner)
    html = ("<p>{{ contact.name }} ({{ contact.title }}, {{ contact.country }}) at {{ company.name }} "
            "[{{ company.traits.employees }}] plan={{ contact.traits.plan }} fit={{ contact.fit_score }}"
            "{{ contact.fit_grade }} eng={{ contact.engagement_score }} stage={{ contact.lifecycle_stage }} "
            "owner={{ contact.owner.name }} &lt;{{ contact.owner.email }}&gt; event={{ event.name }}:"
            "{{ event.properties.title }} extra={{ coupon }}</p>")
    template = make_template(ws, html=html, subject="Hi {{ contact.first_name | default('there') }}")
    version = v1(template)
    out = version_render(version=version, contact=contact,
                         context={"event": {"name": "Ebook Downloaded", "properties": {"title": "Nurture 101"}},
                                  "coupon": "SAVE10"})
    assert out.subject == "Hi Grace"
    for expected in ("Grace Hopper (CTO, US) at Initech", "[250]", "plan=pro", "fit=80A", "eng=12.35",
                     "stage=lead", "owner=Sam Seller &lt;sam@acme.example&gt;", "event=Ebook Downloaded:Nurture 101",
                     "extra=SAVE10"):
        assert expected in out.html, expected


def test_missing_values_render_empty_and_default_works(ws, settings_row):
    contact = make_contact(ws, first_name="", traits={})
    template = make_template(ws, html="<p>[{{ contact.traits.nothing.deeper }}][{{ company.name }}]"
                                      "[{{ contact.traits.plan | default('free') }}][{{ unknown_var }}]</p>",
                             subject="Hi {{ contact.first_name | default('there') }}")
    out = version_render(version=v1(template), contact=contact)
    assert out.subject == "Hi there"
    assert "[][][free][]" in out.html
    scored = make_contact(ws, email="zero@acme.example", fit_score=0, traits={"vip": False, "note": None})
    template = make_template(ws, name="Zero", html="<p>{{ contact.fit_score | default(50) }} {{ contact.traits.vip | d('x') }}"
                                                   " {{ contact.traits.note | default('none') }}"
                                                   " {{ contact.fit_score | default(50, true) }}</p>")
    assert "<p>0 False none 50</p>" in version_render(version=v1(template), contact=scored).html


def test_html_is_escaped_but_subject_and_text_are_not(ws, settings_row):
    contact = make_contact(ws, first_name="<b>Bob</b> & Co")
    template = make_template(ws, html="<p>{{ contact.first_name }}</p>", subject="{{ contact.first_name }}",
                             text="Hi {{ contact.first_name }}")
    out = version_render(version=v1(template), contact=contact)
    assert "&lt;b&gt;Bob&lt;/b&gt; &amp; Co" in out.html and "<b>Bob</b>" not in out.html
    assert out.subject == "<b>Bob</b> & Co"
    assert out.text.startswith("Hi <b>Bob</b> & Co")


def test_subject_is_one_line_so_it_cannot_inject_headers(ws, settings_row):
    contact = make_contact(ws, first_name="Eve\r\nBcc: victim@example.com")
    template = make_template(ws, subject="Hi {{ contact.first_name }}")
    out = version_render(version=v1(template), contact=contact)
    assert "\n" not in out.subject and "\r" not in out.subject
    assert out.subject == "Hi Eve Bcc: victim@example.com"


def test_a_trait_named_like_a_dict_method_reads_as_the_trait(ws, settings_row):
    contact = make_contact(ws, traits={"items": "3 seats", "values": "honesty", "get": "x"})
    template = make_template(ws, html="<p>{{ contact.traits.items }}|{{ contact.traits.values }}|{{ contact.traits.get }}</p>")
    assert "3 seats|honesty|x" in version_render(version=v1(template), contact=contact).html


def test_sample_person_when_no_contact(ws, settings_row):
    template = make_template(ws, html="<p>{{ contact.name }} at {{ company.name }}: {{ event.properties.title }}</p>")
    out = version_render(version=v1(template))
    assert "Ada Lovelace at Analytical Engines Ltd: The Nurture Playbook" in out.html
    assert out.subject == "Hello Ada"


def test_preview_of_another_workspaces_contact_is_refused(ws, other_ws, settings_row):
    stranger = make_contact(other_ws)
    template = make_template(ws)
    with pytest.raises(ServiceError, match="another workspace"):
        version_render(version=v1(template), contact=stranger)


# --- blocks -----------------------------------------------------------------------------------------

MATRIX = {
    "cta": {"by": "stage+role", "variants": [
        {"when": {"stage": "customer", "role": "developer"}, "html": "<b>API changelog</b>"},
        {"when": {"stage": "customer"}, "html": "<b>Customer webinar</b>"},
        {"when": {"role": ["developer", "engineer"]}, "html": "<b>Read the docs, {{ contact.first_name }}</b>"},
    ], "default": {"html": "<b>Book a demo</b>", "text": "Book a demo (text)"}},
}


@pytest.mark.parametrize(("stage", "traits", "expected"), [
    ("customer", {"role": "developer"}, "API changelog"),
    ("customer", {"role": "cfo"}, "Customer webinar"),
    ("lead", {"persona": "Engineer"}, "Read the docs, Grace"),
    ("lead", {"role": "marketer"}, "Book a demo"),
    ("lead", {}, "Book a demo"),
])
def test_stage_by_role_matrix_picks_the_first_matching_variant_else_the_default(ws, settings_row, stage, traits,
                                                                               expected):
    contact = make_contact(ws, lifecycle_stage=stage, traits=traits)
    template = make_template(ws, html='<p>{{ block("cta") }}</p>', blocks=MATRIX)
    html = version_render(version=v1(template), contact=contact).html
    assert f"<b>{expected}</b>" in html
    others = {"API changelog", "Customer webinar", "Book a demo", "Read the docs"} - {expected.split(",")[0]}
    assert not any(other in html for other in others)


def test_blocks_by_segment_stage_and_role(ws, settings_row):
    vip = segment_services.segment_create(workspace=ws.workspace, name="VIP", kind="static", actor="test")
    trial = segment_services.segment_create(workspace=ws.workspace, name="Trial users", kind="static", actor="test")
    inside = make_contact(ws, email="in@acme.example")
    outside = make_contact(ws, email="out@acme.example", lifecycle_stage="customer", traits={"persona": "buyer"})
    segment_services.segment_members_add(segment=trial, actor="test", emails=[])
    segment_services.segment_members_add(segment=vip, actor="test", contact_ids=[inside.pk])
    blocks = {
        "offer": {"by": "segment", "variants": [{"when": ["trial-users", "vip"], "html": "VIP offer"}],
                  "default": {"html": "Standard offer"}},
        "hello": {"by": "stage", "variants": [{"when": "customer", "html": "Welcome back"}],
                  "default": {"html": "Welcome"}},
        "pitch": {"by": "role", "variants": [{"when": "buyer", "html": "ROI numbers"}], "default": {"html": "Features"}},
    }
    template = make_template(ws, html='{{ block("offer") }}|{{ block("hello") }}|{{ block("pitch") }}', blocks=blocks)
    assert "VIP offer|Welcome|Features" in version_render(version=v1(template), contact=inside).html
    assert "Standard offer|Welcome back|ROI numbers" in version_render(version=v1(template), contact=outside).html
    # the sample person can be put in a segment, a stage and a role to preview each cell
    sampled = version_render(version=v1(template), sample={"segments": ["vip"], "stage": "customer", "role": "buyer"})
    assert "VIP offer|Welcome back|ROI numbers" in sampled.html


def test_block_text_variant_is_used_in_an_explicit_text_part(ws, settings_row):
    contact = make_contact(ws, lifecycle_stage="lead", traits={})
    template = make_template(ws, html='<p>{{ block("cta") }}</p>', text='Text: {{ block("cta") }}', blocks=MATRIX)
    out = version_render(version=v1(template), contact=contact)
    assert out.text.startswith("Text: Book a demo (text)")


def test_invalid_blocks_are_refused_with_the_reason(ws, settings_row):
    with pytest.raises(ServiceError, match="by must be one of"):
        make_template(ws, blocks={"cta": {"by": "weather", "variants": []}})
    with pytest.raises(ServiceError, match=r"variant 1: when must be"):
        make_template(ws, blocks={"cta": {"by": "stage+role", "variants": [{"when": "customer", "html": "x"}]}})
    with pytest.raises(TemplateError, match=r"block 'cta', variant 1 html, line 1"):
        make_template(ws, blocks={"cta": {"by": "stage", "variants": [{"when": "lead", "html": "{{ oops("}]}})
    with pytest.raises(ServiceError, match="not defined: missing"):
        make_template(ws, html='<p>{{ block("missing") }}</p>')


# --- layout, text, preheader, css -------------------------------------------------------------------

def test_layout_wraps_the_body_and_css_is_inlined_keeping_media_queries(ws, settings_row):
    layout = content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")
    template = make_template(ws, html="<p>Body for {{ contact.first_name }}</p>", layout=layout,
                             preheader="Your {{ contact.traits.plan }} plan news")
    out = version_render(version=v1(template), contact=make_contact(ws))
    body = re.search(r'<div class="wide">(.*?)</div>\s*<footer', out.html, re.S).group(1)
    assert '<p style="color: #123456;">Body for Grace</p>' in body
    assert "@media (max-width: 600px)" in out.html  # kept in a <style> for clients that read it
    assert "Acme Inc<br>1 Main Street, Springfield" in out.html
    # the preheader is the first thing in the body, hidden
    after_body = out.html.split("<body>", 1)[1]
    assert after_body.startswith('<div style="display:none') and "Your pro plan news" in after_body[:300]
    assert out.preheader == "Your pro plan news"


def test_text_part_is_generated_from_the_html_with_link_urls(ws, settings_row, settings):
    settings.PUBLIC_URL = "https://lf.example"
    layout = content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")
    template = make_template(ws, layout=layout, preheader="Hidden preview",
                             html='<h1>News</h1><p>Read <a href="https://acme.example/post?a=1&amp;b=2">the post</a>.'
                                  '</p><ul><li>One</li><li>Two</li></ul><p><a href="https://acme.example/x">'
                                  'https://acme.example/x</a></p>')
    text = version_render(version=v1(template), contact=make_contact(ws)).text
    assert "News" in text and "Read the post (https://acme.example/post?a=1&b=2)." in text
    assert "* One" in text and "* Two" in text
    assert "https://acme.example/x (https://acme.example/x)" not in text and "https://acme.example/x" in text
    assert "Unsubscribe (https://" in text and "1 Main Street, Springfield" in text
    assert "Hidden preview" not in text and "color" not in text  # no preheader, no CSS
    assert "<" not in text


def test_explicit_text_with_a_layout_without_text_keeps_the_layout_footer(ws, settings_row, settings):
    settings.PUBLIC_URL = "https://lf.example"
    layout = content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")
    template = make_template(ws, layout=layout, text="Hand-written text for {{ contact.first_name }}.")
    text = version_render(version=v1(template), contact=make_contact(ws)).text
    assert "Hand-written text for Grace." in text and "Unsubscribe (https://" in text
    with_text_layout = content.layout_create(workspace=ws.workspace, name="Texty", html=LAYOUT,
                                             text="{{ content }}\n--\n{{ postal_address }}\n{{ unsubscribe_url }}",
                                             actor="test")
    template2 = make_template(ws, name="Second", layout=with_text_layout, text="Plain body")
    text2 = version_render(version=v1(template2), contact=make_contact(ws, email="x@acme.example")).text
    assert text2.startswith("Plain body\n--\nAcme Inc\n1 Main Street, Springfield\nhttps://")


def test_remote_stylesheets_are_never_fetched(ws, settings_row):
    template = make_template(ws, html='<link rel="stylesheet" href="http://127.0.0.1:9/evil.css"><p>x</p>')
    out = version_render(version=v1(template), contact=make_contact(ws))  # would fail or hang if fetched
    assert "evil.css" in out.html


# --- the message pipeline -------------------------------------------------------------------------

def test_message_render_tracks_links_adds_consent_links_and_keeps_its_pinned_version(ws, settings_row, settings):
    settings.PUBLIC_URL = "https://lf.example"
    layout = content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")
    template = make_template(ws, layout=layout, html='<p>Hi {{ contact.first_name }}, <a href="https://acme.example/'
                                                     'pricing">see pricing</a> ({{ event.properties.plan }})</p>')
    version = approved(ws, template)
    template.refresh_from_db()
    contact = make_contact(ws)
    from leadflow.messaging.outbox import message_queue

    message = message_queue(workspace_id=ws.workspace.pk, contact=contact, template=template,
                            context={"event": {"name": "Trial Started", "properties": {"plan": "team"}}})
    # a second version approved later does not change what the queued message renders
    content.version_edit(template=template, actor="test", html="<p>Version two {{ unsubscribe_url }}"
                                                               " {{ postal_address }}</p>")
    v2 = content.version_submit(version=template.versions.get(number=2), actor="test")
    content.version_approve(version=v2, user=get_user_model().objects.get(username=f"admin-{template.pk}"))
    message.refresh_from_db()
    assert message.version_id == version.pk
    out = message_render(message=message)
    assert "Hi Grace" in out.html and "(team)" in out.html and "Version two" not in out.html
    assert "https://acme.example/pricing" not in out.html  # wrapped in a tracked click URL
    assert "https://lf.example/e/c/" in out.html and "https://lf.example/e/o/" in out.html
    unsubscribe = re.search(r'href="(https://lf\.example/u/[^"]+)"', out.html).group(1)
    payload = token_read("unsubscribe", unsubscribe.rsplit("/", 1)[1])
    assert payload == {"w": ws.workspace.pk, "m": message.pk}
    preferences = re.search(r'href="(https://lf\.example/p/[^"]+)"', out.html).group(1)
    assert token_read("preferences", preferences.rsplit("/", 1)[1]) == {"w": ws.workspace.pk, "c": contact.pk}
    assert unsubscribe in out.text  # the text part carries the unsubscribe link too


def test_test_message_subject_is_prefixed_and_renders_the_sample_without_a_contact(ws, settings_row):
    template = make_template(ws, html="<p>Hi {{ contact.first_name }} ({{ contact.email }})</p>")
    message = content.test_send(version=v1(template), to_email="QA@Example.com", actor="test")
    out = message_render(message=message)
    assert out.subject == "[Test] Hello Ada"
    assert "Hi Ada (qa@example.com)" in out.html


def test_test_send_as_a_contact_uses_their_data_but_no_link_acts_for_them(ws, settings_row, settings):
    settings.PUBLIC_URL = "https://lf.example"
    template = make_template(ws, html='<p>Hi {{ contact.first_name }} ({{ contact.traits.plan }})</p>'
                                      '<a href="{{ unsubscribe_url }}">u</a> <a href="{{ preferences_url }}">p</a>')
    grace = make_contact(ws)
    message = content.test_send(version=v1(template), to_email="qa@example.com", actor="test", contact=grace)
    assert message.contact_id is None  # the recipient is QA, not Grace
    out = message_render(message=message)
    assert "Hi Grace (pro)" in out.html and out.subject == "[Test] Hello Grace"
    tokens = dict(re.findall(r'href="https://lf\.example/([up])/([^"]+)"', out.html))
    assert token_read("unsubscribe", tokens["u"]) == {"w": ws.workspace.pk, "m": message.pk}
    # the preferences link names the test message, never Grace (it shows her choices read-only)
    assert token_read("preferences", tokens["p"]) == {"w": ws.workspace.pk, "m": message.pk}


def test_a_message_whose_contact_is_gone_never_renders_the_sample_person(ws, settings_row):
    template = make_template(ws, kind="transactional", html="<p>Hi {{ contact.first_name | default('there') }}, "
                                                            "{{ contact.email }}</p>")
    approved(ws, template)
    template.refresh_from_db()
    contact = make_contact(ws, email="gone@acme.example")
    from leadflow.messaging.outbox import message_queue

    message = message_queue(workspace_id=ws.workspace.pk, contact=contact, template=template, kind="transactional")
    contact.delete()
    message.refresh_from_db()
    out = message_render(message=message)
    assert "Hi there, gone@acme.example" in out.html and "Ada" not in out.html


def test_prefetch_renders_a_batch_with_a_fixed_number_of_queries(ws, settings_row):
    segment = segment_services.segment_create(workspace=ws.workspace, name="VIP", kind="static", actor="test")
    layout = content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")
    template = make_template(ws, layout=layout, html='<p>{{ block("offer") }} {{ contact.owner.name }} '
                                                     '{{ company.name }}</p>',
                             blocks={"offer": {"by": "segment", "variants": [{"when": "vip", "html": "VIP"}],
                                               "default": {"html": "Standard"}}})
    approved(ws, template)
    company = Company.objects.create(workspace=ws.workspace, name="Initech")
    owner = get_user_model().objects.create_user(username="olly", first_name="Olly", last_name="Owner")
    contacts = [make_contact(ws, email=f"p{i}@acme.example", company=company, owner=owner) for i in range(12)]
    segment_services.segment_members_add(segment=segment, actor="test", contact_ids=[c.pk for c in contacts[:5]])
    from leadflow.messaging.outbox import messages_queue_bulk

    template.refresh_from_db()
    messages_queue_bulk(workspace_id=ws.workspace.pk, contacts=contacts, template=template,
                        version=template.approved_version, source="test", dedupe_prefix="batch:")
    batch = list(Message.objects.filter(workspace=ws.workspace, source="test").order_by("pk"))
    with CaptureQueriesContext(connection) as queries:
        rendering.messages_render_prefetch(messages=batch)
        outs = [message_render(message=m) for m in batch]
    assert len(queries) <= 9, "\n".join(q["sql"][:150] for q in queries)
    vip = {c.pk for c in contacts[:5]}
    for m, out in zip(batch, outs):
        assert ("VIP" if m.contact_id in vip else "Standard") in out.html
        assert "Initech" in out.html and "Olly Owner" in out.html


# --- the sandbox --------------------------------------------------------------------------------------

ESCAPES = [
    ("{{ ''.__class__.__mro__ }}", "__class__"),
    ("{{ contact.__init__.__globals__ }}", "__init__"),
    ("{{ cycler.__init__.__globals__ }}", "__init__"),
    ("{{ joiner.__init__.__globals__['os'] }}", "__init__"),
    ("{{ self._TemplateReference__context }}", "_TemplateReference__context"),
    ("{{ contact._state }}", "_state"),
    ("{{ contact['__class__'] }}", "__class__"),
    ("{{ '{0.__class__}'.format(contact) }}", "__class__"),
    ("{{ '{a.__class__.__base__.__subclasses__}'.format_map({'a': contact}) }}", "__class__"),
    ("{{ contact.traits.update({'plan': 'free'}) }}", "update"),
    ("{{ 'x'.ljust(1000000000) }}", "ljust"),
    ("{% for i in range(100000) %}{% endfor %}", "range() of 100,000 items"),
    ("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", "range() made over"),
    ("{{ 'x' * 1000000000 }}", "repetition"),
    ("{% for a in 'x' * 1000 %}{% for b in 'x' * 1000 %}{{ 'y' * 100 }}{% endfor %}{% endfor %}", "repetition"),
    ("{{ 2 ** 100000 }}", "exponents"),
    ("{{ 'x' | center(1000000000) }}", "center"),
    ("{{ '%1000000000d' | format(1) }}", "width"),
    ("{{ '%1000000000d' % 1 }}", "width"),
    ("{{ '{:>1000000000}'.format(1) }}", "width"),
    ("{{ 'ab'.replace('', 'x' * 999) }}", "replace"),
]


@pytest.mark.parametrize(("source", "mentions"), ESCAPES)
def test_sandbox_escapes_and_resource_abuse_are_refused_with_a_clear_error(ws, settings_row, source, mentions):
    template = make_template(ws, html=f"<p>ok</p>\n{source}")
    with pytest.raises(TemplateError) as caught:
        version_render(version=v1(template), contact=make_contact(ws))
    error = caught.value
    assert error.part == "html" and error.line == 2
    assert str(error).startswith("html, line 2: ")
    assert mentions in error.problem
    if mentions.startswith("_") or "__" in source:
        assert "not allowed" in error.problem


def test_macro_recursion_is_an_error_not_a_crash(ws, settings_row):
    template = make_template(ws, html="{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}")
    with pytest.raises(TemplateError, match="too deeply nested"):
        version_render(version=v1(template), contact=make_contact(ws))


def test_templates_cannot_include_other_templates_or_read_files(ws, settings_row):
    template = make_template(ws, html="{% include '/etc/passwd' %}")
    with pytest.raises(TemplateError, match="no loader"):
        version_render(version=v1(template), contact=make_contact(ws))


def test_the_context_holds_only_this_contacts_plain_data(ws, other_ws, settings_row):
    """No model instance reaches a template: nothing leads to a manager, a queryset or another
    workspace's rows."""
    make_contact(other_ws, email="secret@other.example", first_name="Secret")
    contact = make_contact(ws)
    template = make_template(ws, html="{{ contact }}|{{ company }}|{{ event }}|{{ workspace }}")
    html = version_render(version=v1(template), contact=contact).html
    assert "secret" not in html.lower() and "Secret" not in html
    captured = {}

    def spy(data, **kwargs):
        captured["data"] = data
        return real(data, **kwargs)

    real = rendering.render_content
    rendering.render_content = spy
    try:
        version_render(version=v1(template), contact=contact)
    finally:
        rendering.render_content = real

    def walk(value):
        assert isinstance(value, (dict, list, str, int, float, bool, type(None))), type(value)
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    data = captured["data"]
    for name in ("person", "company", "event", "variables"):
        walk(getattr(data, name))
    # the lookups of the objects' attributes are refused rather than reaching Django
    for probe in ("{{ contact.objects }}", "{{ contact.workspace.contacts }}", "{{ company.contacts }}"):
        tpl = make_template(ws, name=f"probe {len(probe)}", html=f"<p>[{probe}]</p>")
        assert "<p>[]</p>" in version_render(version=v1(tpl), contact=contact).html


# --- errors -------------------------------------------------------------------------------------------

def test_syntax_errors_and_unknown_filters_name_the_part_and_line(ws, settings_row):
    with pytest.raises(TemplateError) as caught:
        make_template(ws, html="<p>one</p>\n<p>{{ contact.first_name | shout }}</p>")
    assert caught.value.part == "html" and caught.value.line == 2 and "No filter named 'shout'" in str(caught.value)
    with pytest.raises(TemplateError) as caught:
        make_template(ws, subject="Hi {% if contact.first_name %}")
    assert str(caught.value).startswith("subject, line 1: ")
    with pytest.raises(TemplateError, match=r"^text, line 3: "):
        make_template(ws, text="a\nb\n{{ }")


def test_runtime_errors_name_the_line(ws, settings_row):
    template = make_template(ws, html="<p>a</p>\n<p>b</p>\n{{ contact.first_name() }}")
    with pytest.raises(TemplateError, match=r"^html, line 3: 'str' object is not callable"):
        version_render(version=v1(template), contact=make_contact(ws))


def test_lint_warns_about_unknown_variables(ws, settings_row):
    template = make_template(ws, html="<p>{{ coupon_code }} {{ contact.first_name }} {{ unsubscribe_url }}</p>")
    warnings = rendering.version_lint(version=v1(template))
    assert warnings == ["unknown variables render empty unless the sender passes them: coupon_code"]


@hypothesis_settings(max_examples=400, deadline=None)
@given(source=st.text(alphabet=st.sampled_from(list("ab <>&\"'é—\r\n\t%#}")), max_size=40))
def test_a_part_without_braces_renders_as_jinja_would_without_jinja(source):
    """Fixed subjects and preheaders skip the sandbox: the shortcut gives Jinja's exact output
    (newlines made \\n, one trailing newline dropped), in every mode."""
    for mode in ("text", "html", "marked"):
        assert rendering.static_text(source) == "".join(rendering._compiled(mode, "t", source).generate({}))
