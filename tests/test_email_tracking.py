"""Email tracking: link rewriting with UTM and the open pixel, the public pixel and redirect
(signed, never an open redirect), machine opens and bot clicks, and a human click reaching the
right contact through the pipeline (scoring) while a bot click does not."""

from __future__ import annotations

import datetime as dt
import io
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from leadflow.contacts.imports import contacts_import
from leadflow.contacts.models import Contact, Identity
from leadflow.core import clock as clock_module
from leadflow.messaging import links
from leadflow.messaging.events import message_event_record
from leadflow.messaging.models import (
    Message, MessageEvent, MessageEventKind, MessageStatus, Template, TemplateVersion,
)
from leadflow.messaging.outbox import message_queue
from leadflow.messaging.tokens import token_make, token_read
from leadflow.scoring.services import rule_create
from leadflow.tracking.models import Event

pytestmark = pytest.mark.django_db

PUBLIC = "https://lf.example.com"
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.1 Safari/605.1.15")
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"


# --- helpers shared by the other tracking and bounce tests -------------------------------------------

def make_template(ws, slug: str = "welcome", *, versions: int = 1) -> tuple[Template, list[TemplateVersion]]:
    template = Template.objects.create(workspace=ws.workspace, name=slug.title(), slug=slug)
    made = [TemplateVersion.objects.create(workspace=ws.workspace, template=template, number=n + 1,
                                           subject=f"Hello v{n + 1}", html="<p>Hi</p>", status="approved")
            for n in range(versions)]
    template.approved_version = made[-1]
    template.save(update_fields=["approved_version"])
    return template, made


def make_contact(ws, email: str = "ada@example.com", **fields) -> Contact:
    return Contact.objects.create(workspace=ws.workspace, email=email, **fields)


def sent_message(ws, contact: Contact | None, template: Template | None = None, *, version=None,
                 sent_at: dt.datetime | None = None, to_email: str | None = None, **extra) -> Message:
    """A message queued through the outbox and marked sent, as the dispatcher would."""
    if template is None:
        template, _ = make_template(ws, f"t{Template.objects.count() + 1}")
    message = message_queue(workspace_id=ws.workspace.pk, contact=contact, template=template, version=version,
                            to_email=to_email, **extra)
    at = sent_at or clock_module.now()
    Message.objects.filter(pk=message.pk).update(status=MessageStatus.SENT, sent_at=at,
                                                 header_message_id=f"<{message.pk}.abc@mail.acme.example>")
    message.refresh_from_db()
    return message


def click_url_of(html: str) -> list[str]:
    return re.findall(r'href="([^"]+)"', html)


def token_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


# --- links_track ------------------------------------------------------------------------------------

HTML = """<!doctype html>
<html><head><style>p {{ color: red }}</style></head>
<body>
<p   class=intro>Hello&nbsp;there &amp; welcome</p>
<a href="https://acme.example/pricing?plan=pro&amp;x=1#top" class="btn">Pricing</a>
<A HREF=https://acme.example/blog/>Blog</A>
<a href="https://acme.example/story?utm_source=partner&utm_campaign=spring">Story</a>
<map><area href="https://acme.example/map" alt="map"></map>
<!--[if mso]><v:roundrect href="https://acme.example/pricing?plan=pro&amp;x=1#top" style="width:200px">Go</v:roundrect><![endif]-->
<a href="mailto:help@acme.example">Mail us</a> <a href="tel:+15551234">Call</a> <a href="#top">Top</a>
<a href="{unsub}">Unsubscribe</a> <a href="{prefs}">Preferences</a> <a href="{optin}">Confirm</a>
<link href="https://acme.example/style.css" rel="stylesheet">
</body></html>"""


@override_settings(PUBLIC_URL=PUBLIC)
def test_links_track_rewrites_every_web_link_with_utm_and_adds_the_pixel(ws, frozen_clock):
    template, _ = make_template(ws, "spring-offer")
    message = sent_message(ws, make_contact(ws), template, campaign="spring-2026")
    html = HTML.format(unsub=f"{PUBLIC}/u/abc", prefs=f"{PUBLIC}/p/def", optin=f"{PUBLIC}/c/ghi")
    text = (f"Pricing: https://acme.example/pricing?plan=pro. Blog (https://acme.example/blog/)\n"
            f"Unsubscribe: {PUBLIC}/u/abc\nMail help@acme.example")
    out_html, out_text = links.links_track(html=html, text=text, message=message)

    hrefs = click_url_of(out_html)
    tracked = [h for h in hrefs if h.startswith(f"{PUBLIC}/e/c/")]
    assert len(tracked) == 5  # pricing, blog, story, area, VML button
    destinations = [token_read("click", token_of(h))["u"] for h in tracked]
    pricing = destinations[0]
    assert pricing.startswith("https://acme.example/pricing?plan=pro&x=1&utm_source=leadflow&utm_medium=email"
                              "&utm_campaign=spring-2026&utm_content=spring-offer")
    assert pricing.endswith("#top")  # the fragment stays last
    assert destinations[1] == ("https://acme.example/blog/?utm_source=leadflow&utm_medium=email"
                               "&utm_campaign=spring-2026&utm_content=spring-offer")
    story = parse_qs(urlsplit(destinations[2]).query)
    assert story["utm_source"] == ["partner"] and story["utm_campaign"] == ["spring"]  # never overwritten
    assert story["utm_medium"] == ["email"] and story["utm_content"] == ["spring-offer"]  # missing ones added
    assert destinations[3].startswith("https://acme.example/map?utm_source=leadflow")
    assert destinations[4] == pricing  # the Outlook button inside the conditional comment
    assert all(token_read("click", token_of(h))["m"] == message.pk for h in tracked)
    assert {token_read("click", token_of(h))["n"] for h in tracked} == {4}  # distinct destinations
    # Consent links, mailto/tel/anchors and stylesheets are untouched.
    for kept in (f"{PUBLIC}/u/abc", f"{PUBLIC}/p/def", f"{PUBLIC}/c/ghi", "mailto:help@acme.example",
                 "tel:+15551234", "#top", "https://acme.example/style.css"):
        assert kept in hrefs
    # Everything else is byte for byte what it was.
    assert '<p   class=intro>Hello&nbsp;there &amp; welcome</p>' in out_html
    assert "<style>p { color: red }</style>" in out_html
    assert out_html.count("<!--[if mso]>") == 1 and "<![endif]-->" in out_html
    # The pixel, once, right before </body>.
    pixel = re.search(r'<img src="([^"]+)" width="1" height="1" alt=""[^>]*/></body>', out_html)
    assert pixel and token_read("open", token_of(pixel.group(1))) == {"m": message.pk}
    # Text part: bare URLs tracked (trailing punctuation left outside), the unsubscribe URL not.
    text_links = re.findall(r"https?://\S+", out_text)
    assert text_links[0].startswith(f"{PUBLIC}/e/c/") and out_text.startswith("Pricing: " + text_links[0][:-1])
    assert token_read("click", token_of(text_links[0].rstrip(".")))["u"].startswith(
        "https://acme.example/pricing?plan=pro&utm_source=leadflow")
    assert f"Unsubscribe: {PUBLIC}/u/abc" in out_text and "help@acme.example" in out_text


@override_settings(PUBLIC_URL=PUBLIC)
def test_links_track_is_idempotent_and_handles_html_without_body(ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    once_html, once_text = links.links_track(html=HTML.format(unsub="#", prefs="#", optin="#"),
                                             text="see https://acme.example/x", message=message)
    twice_html, twice_text = links.links_track(html=once_html, text=once_text, message=message)
    assert twice_html == once_html and twice_text == once_text
    fragment_html, _ = links.links_track(html='<a href="https://acme.example/">x</a>', text="", message=message)
    assert fragment_html.startswith(f'<a href="{PUBLIC}/e/c/') and fragment_html.endswith('alt="" '
                                                                                         'style="display:block;border:0;width:1px;height:1px" />')
    assert links.links_track(html="", text="", message=message) == ("", "")


def test_a_link_python_cannot_parse_is_left_as_written_not_an_error(ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    html = '<a href="https://[if mso]">odd</a> <a href="https://acme.example/ok">ok</a>'
    tracked, text = links.links_track(html=html, text="see https://[if mso] too", message=message)
    assert 'href="https://[if mso]"' in tracked and "see https://[if mso] too" in text
    assert tracked.count("/e/c/") == 1  # the good link is still tracked


@override_settings(PUBLIC_URL=PUBLIC)
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.text(alphabet="abcxyz0123456789-_/.~%", min_size=0, max_size=12), min_size=1, max_size=5),
       query=st.sampled_from(["", "?a=1", "?a=1&b=%20x", "?utm_source=x"]))
def test_every_web_link_becomes_a_signed_click_to_its_own_destination(ws, paths, query):
    message = Message(pk=4242, workspace_id=ws.workspace.pk, campaign="c", to_email="a@b.c")
    urls = [f"https://acme.example/{p}{query}" for p in paths]
    html = "<body>" + "".join(f'<a href="{u}">{i}</a> <b>&amp;</b>' for i, u in enumerate(urls)) + "</body>"
    out, _ = links.links_track(html=html, text="", message=message)
    hrefs = click_url_of(out)
    assert len(hrefs) == len(urls)
    for url, href in zip(urls, hrefs):
        assert href.startswith(f"{PUBLIC}/e/c/")
        destination = token_read("click", token_of(href))["u"]
        assert destination == links.utm_add(url, campaign="c", content="")
        assert destination.startswith(url.split("#")[0])
    assert out.count("<b>&amp;</b>") == len(urls)


# --- the public endpoints -----------------------------------------------------------------------------

def _click(client, url: str, *, ua: str = SAFARI, method: str = "get", ip: str = "198.51.100.7"):
    return getattr(client, method)(urlsplit(url).path, HTTP_USER_AGENT=ua, REMOTE_ADDR=ip)


@override_settings(PUBLIC_URL=PUBLIC)
def test_click_redirects_to_the_signed_destination_and_records_it(client, ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    frozen_clock.advance(minutes=30)
    out, _ = links.links_track(html='<a href="https://acme.example/pricing">P</a>', text="", message=message)
    response = _click(client, click_url_of(out)[0])
    assert response.status_code == 302
    assert response["Location"].startswith("https://acme.example/pricing?utm_source=leadflow&utm_medium=email")
    assert response["Cache-Control"] == "no-store"
    event = MessageEvent.objects.get(message=message, kind=MessageEventKind.CLICKED)
    assert event.url == response["Location"] and not event.machine
    assert event.detail["user_agent"] == SAFARI and event.detail["ip"] == "198.51.100.7"
    message.refresh_from_db()
    assert message.clicked_at == frozen_clock.current
    assert message.opened_at == frozen_clock.current  # a click implies an open


@override_settings(PUBLIC_URL=PUBLIC)
def test_an_altered_or_foreign_token_is_refused_never_redirected(client, ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    out, _ = links.links_track(html='<a href="https://acme.example/">x</a>', text="", message=message)
    token = token_of(click_url_of(out)[0])
    altered = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    forged = [
        altered,
        token.replace(token.split(":")[0], token_make("click", {"m": message.pk, "u": "https://evil.example/"})
                      .split(":")[0]),  # someone else's payload under this signature
        token_make("open", {"m": message.pk}),  # a token made for another purpose
        token_make("click", {"m": message.pk, "u": "javascript:alert(1)"}),  # signed, but not a web URL
        token_make("click", {"m": message.pk, "u": "//evil.example/"}),
        "nonsense",
    ]
    for bad in forged:
        response = client.get(f"/e/c/{bad}", HTTP_USER_AGENT=SAFARI)
        assert response.status_code == 400, bad
        assert not response.has_header("Location")
        assert b"This link is not valid" in response.content
    assert not MessageEvent.objects.filter(kind=MessageEventKind.CLICKED).exists()


@hsettings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=0, max_size=130), payload=st.binary(max_size=600))
def test_the_token_mac_is_hmac_sha256_whatever_the_key_and_payload(key, payload):
    """Tokens in mail already delivered stay valid: the precomputed-state HMAC is RFC 2104's."""
    import hmac

    from leadflow.messaging.tokens import hmac_sha256

    assert hmac_sha256(key, payload) == hmac.digest(key, payload, "sha256")


@override_settings(PUBLIC_URL=PUBLIC)
def test_open_pixel_is_an_uncached_gif_and_records_the_open(client, ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    frozen_clock.advance(hours=2)
    pixel = re.search(r'src="([^"]+)"', links.pixel_html(message)).group(1)
    response = client.get(urlsplit(pixel).path, HTTP_USER_AGENT=SAFARI)
    assert response.status_code == 200 and response["Content-Type"] == "image/gif"
    assert response.content.startswith(b"GIF89a") and len(response.content) < 100
    assert "no-store" in response["Cache-Control"] and response["Pragma"] == "no-cache"
    event = MessageEvent.objects.get(message=message, kind=MessageEventKind.OPENED)
    assert not event.machine
    message.refresh_from_db()
    assert message.opened_at == frozen_clock.current
    bad = client.get("/e/o/" + token_of(pixel)[:-2] + "xx")
    assert bad.status_code == 400 and bad.content == response.content  # still an image, nothing recorded
    assert MessageEvent.objects.filter(kind=MessageEventKind.OPENED).count() == 1


@override_settings(PUBLIC_URL=PUBLIC)
@pytest.mark.parametrize("ua,ip,method,after,machine,reason", [
    ("Mozilla/5.0", "17.58.101.4", "get", 3600, True, "apple mail privacy protection"),
    ("Mozilla/5.0", "203.0.113.9", "get", 3600, True, "apple mail privacy protection"),
    (SAFARI, "17.58.101.4", "get", 3600, True, "apple mail privacy protection"),
    (GMAIL_PROXY, "66.249.84.1", "get", 3600, False, ""),  # Gmail fetches when the reader opens
    (GMAIL_PROXY, "66.249.84.1", "get", 20, True, "image proxy prefetch on arrival"),
    (SAFARI, "198.51.100.7", "head", 3600, True, "head request"),
    ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "198.51.100.7", "get", 3600, True, "scanner user agent"),
    ("", "198.51.100.7", "get", 3600, True, "no user agent"),
    (SAFARI, "198.51.100.7", "get", 5, False, ""),  # a person can open at once; only clicks are timed
])
def test_machine_opens_are_flagged_and_kept(client, ws, frozen_clock, ua, ip, method, after, machine, reason):
    message = sent_message(ws, make_contact(ws))
    frozen_clock.advance(seconds=after)
    pixel = re.search(r'src="([^"]+)"', links.pixel_html(message)).group(1)
    response = getattr(client, method)(urlsplit(pixel).path, HTTP_USER_AGENT=ua, REMOTE_ADDR=ip)
    assert response.status_code == 200
    event = MessageEvent.objects.get(message=message, kind=MessageEventKind.OPENED)
    assert event.machine is machine
    assert event.detail.get("machine_reason", "").startswith(reason)
    message.refresh_from_db()
    assert (message.opened_at is None) is machine  # first-time columns count people only


@override_settings(PUBLIC_URL=PUBLIC)
@pytest.mark.parametrize("ua,method,after,machine,reason", [
    (SAFARI, "head", 600, True, "head request"),
    (SAFARI, "get", 4, True, "clicked 4s after sending"),
    ("Mozilla/5.0 (compatible; MSIE 10.0) Proofpoint URL Defense", "get", 600, True, "scanner user agent"),
    ("python-requests/2.31", "get", 600, True, "scanner user agent"),
    (SAFARI, "get", 600, False, ""),
])
def test_bot_clicks_are_flagged_but_still_redirected(client, ws, frozen_clock, ua, method, after, machine, reason):
    message = sent_message(ws, make_contact(ws))
    frozen_clock.advance(seconds=after)
    out, _ = links.links_track(html='<a href="https://acme.example/a">a</a>', text="", message=message)
    response = _click(client, click_url_of(out)[0], ua=ua, method=method)
    assert response.status_code == 302 and response["Location"].startswith("https://acme.example/a?")
    event = MessageEvent.objects.get(message=message, kind=MessageEventKind.CLICKED)
    assert event.machine is machine and event.detail.get("machine_reason", "").startswith(reason)
    message.refresh_from_db()
    assert (message.clicked_at is None) is machine


@override_settings(PUBLIC_URL=PUBLIC)
def test_every_link_clicked_at_once_is_a_scanner_even_the_first_click(client, ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    frozen_clock.advance(minutes=5)
    out, _ = links.links_track(html='<a href="https://a.example/1">1</a><a href="https://a.example/2">2</a>'
                                    '<a href="https://a.example/3">3</a><a href="https://a.example/1">1 again</a>',
                               text="", message=message)
    urls = click_url_of(out)
    assert len(urls) == 4 and urls[0] == urls[3]
    _click(client, urls[0])
    message.refresh_from_db()
    assert message.clicked_at is not None  # one click alone looks human
    frozen_clock.advance(seconds=2)
    _click(client, urls[1])
    frozen_clock.advance(seconds=2)
    _click(client, urls[2])  # the third distinct link within seconds: all of them, at once
    events = list(MessageEvent.objects.filter(message=message, kind=MessageEventKind.CLICKED).order_by("at"))
    assert [e.machine for e in events] == [True, True, True]
    assert events[0].detail["reflagged"] is True
    message.refresh_from_db()
    assert message.clicked_at is None and message.opened_at is None
    # A person clicking two of three links a minute apart is a person.
    other = sent_message(ws, make_contact(ws, "bo@example.com"))
    frozen_clock.advance(minutes=5)
    out, _ = links.links_track(html='<a href="https://a.example/1">1</a><a href="https://a.example/2">2</a>'
                                    '<a href="https://a.example/3">3</a>', text="", message=other)
    for url in click_url_of(out)[:2]:
        _click(client, url)
        frozen_clock.advance(minutes=1)
    assert not MessageEvent.objects.filter(message=other, machine=True).exists()


@override_settings(PUBLIC_URL=PUBLIC)
def test_a_deleted_message_still_redirects_but_records_nothing(client, ws, frozen_clock):
    message = sent_message(ws, make_contact(ws))
    out, _ = links.links_track(html='<a href="https://acme.example/">x</a>', text="", message=message)
    Message.objects.filter(pk=message.pk).delete()
    response = _click(client, click_url_of(out)[0])
    assert response.status_code == 302 and not MessageEvent.objects.filter(kind="clicked").exists()


# --- the event log and the pipeline ---------------------------------------------------------------------

def _click_rule(ws, points: int = 7):
    return rule_create(workspace=ws.workspace, kind="engagement", name="Clicked an email", points=points,
                       condition={"event": "Email Clicked"}, actor="test")


def _contacts(ws) -> int:
    return Contact.objects.filter(workspace=ws.workspace).count()


@override_settings(PUBLIC_URL=PUBLIC)
def test_a_click_by_an_email_only_contact_scores_that_contact_and_a_bot_click_does_not(client, ws, frozen_clock,
                                                                                        process):
    _click_rule(ws)
    process()
    ada = make_contact(ws, "ada@example.com")  # known by email only: no user id, no anonymous id
    Identity.objects.create(workspace=ws.workspace, contact=ada, kind="email", value="ada@example.com")
    base = Contact.objects.get(pk=ada.pk).engagement_score
    message = sent_message(ws, ada)
    out, _ = links.links_track(html='<a href="https://acme.example/a">a</a>', text="", message=message)
    before = _contacts(ws)

    frozen_clock.advance(seconds=3)
    _click(client, click_url_of(out)[0])  # a link scanner, seconds after sending
    process()
    ada.refresh_from_db()
    assert ada.engagement_score == base
    bot = Event.objects.get(workspace=ws.workspace, event="Email Clicked (machine)")
    assert bot.contact_id == ada.pk and bot.processed_at is not None and bot.properties["machine"] is True

    frozen_clock.advance(minutes=10)
    _click(client, click_url_of(out)[0])  # the person
    process()
    ada.refresh_from_db()
    assert ada.engagement_score > base
    human = Event.objects.get(workspace=ws.workspace, event="Email Clicked")
    assert human.contact_id == ada.pk and human.error == ""
    assert human.properties["url"].startswith("https://acme.example/a?utm_source=leadflow")
    assert human.context["userAgent"] == SAFARI and human.context["ip"] == "198.51.100.7"
    assert _contacts(ws) == before  # identity resolution created no one
    assert Identity.objects.filter(contact=ada, kind="anonymous_id", value=f"leadflow-contact-{ada.pk}").exists()
    assert ada.last_seen_at == frozen_clock.current


@override_settings(PUBLIC_URL=PUBLIC)
def test_clicks_resolve_to_imported_contacts_and_user_ids(client, ws, frozen_clock, process):
    _click_rule(ws, points=9)
    contacts_import(workspace=ws.workspace, file=io.StringIO("email,first_name\nbo@example.com,Bo\n"))
    bo = Contact.objects.get(workspace=ws.workspace, email="bo@example.com")
    imported_anonymous = Identity.objects.get(contact=bo, kind="anonymous_id").value
    cy = make_contact(ws, "cy@example.com", user_id="user-cy")
    Identity.objects.create(workspace=ws.workspace, contact=cy, kind="user_id", value="user-cy")
    before = _contacts(ws)
    frozen_clock.advance(hours=1)
    for person in (bo, cy):
        message = sent_message(ws, person)
        frozen_clock.advance(minutes=5)
        out, _ = links.links_track(html='<a href="https://acme.example/a">a</a>', text="", message=message)
        _click(client, click_url_of(out)[0])
    process()
    assert _contacts(ws) == before
    clicks = {e.contact_id: e for e in Event.objects.filter(workspace=ws.workspace, event="Email Clicked")}
    assert set(clicks) == {bo.pk, cy.pk}
    assert clicks[bo.pk].anonymous_id == imported_anonymous and clicks[cy.pk].user_id == "user-cy"
    for person in (bo, cy):
        person.refresh_from_db()
        assert person.engagement_score >= 9


def test_message_events_carry_the_lifecycle_to_the_log(ws, frozen_clock, process):
    ada = make_contact(ws)
    message = sent_message(ws, ada)
    message_event_record(message=message, kind=MessageEventKind.SENT)
    message_event_record(message=message, kind=MessageEventKind.BOUNCED, detail={"status": "5.1.1"})
    names = list(Event.objects.filter(workspace=ws.workspace).order_by("id").values_list("event", "processed_at"))
    assert [n for n, _ in names] == ["Email Delivered", "Email Bounced"]
    assert all(processed is not None for _, processed in names)  # LeadFlow's own record, never scored
    bounced = Event.objects.get(event="Email Bounced")
    assert bounced.properties["status"] == "5.1.1" and bounced.properties["message_id"] == message.pk
    with pytest.raises(ValueError):
        message_event_record(message=message, kind="exploded")
    test_send = sent_message(ws, ada, kind="test")
    message_event_record(message=test_send, kind=MessageEventKind.OPENED)
    assert Event.objects.filter(workspace=ws.workspace).count() == 2  # test sends stay out of the log


def test_bulk_sent_events_match_one_by_one(ws, frozen_clock):
    from leadflow.messaging.events import message_events_record_bulk

    people = [make_contact(ws, f"p{i}@example.com") for i in range(3)]
    messages = [sent_message(ws, p) for p in people]
    assert message_events_record_bulk(messages=messages, kind=MessageEventKind.SENT) == 3
    assert MessageEvent.objects.filter(kind=MessageEventKind.SENT).count() == 3
    logged = Event.objects.filter(workspace=ws.workspace, event="Email Delivered")
    assert sorted(logged.values_list("contact_id", flat=True)) == sorted(p.pk for p in people)
    assert all(e.processed_at is not None for e in logged)
    with pytest.raises(ValueError):
        message_events_record_bulk(messages=messages, kind=MessageEventKind.CLICKED)


@override_settings(PUBLIC_URL=PUBLIC)
def test_a_segment_of_clickers_sees_people_not_link_scanners(client, ws, frozen_clock, process):
    from leadflow.segments.models import SegmentMember
    from leadflow.segments.services import segment_create

    template, _ = make_template(ws, "spring-promo")
    segment = segment_create(workspace=ws.workspace, name="Clicked spring", kind="dynamic", actor="test",
                             definition={"version": 1, "all": [{"email_clicked": "spring-promo"}]})
    scanned, clicked = make_contact(ws, "scan@example.com"), make_contact(ws, "click@example.com")
    for person, wait in ((scanned, 2), (clicked, 600)):
        message = sent_message(ws, person, template)
        out, _ = links.links_track(html='<a href="https://acme.example/a">a</a>', text="", message=message)
        frozen_clock.advance(seconds=wait)
        _click(client, click_url_of(out)[0])
    process()
    from leadflow.core.pipeline import timers_run

    timers_run(force=True)
    assert set(SegmentMember.objects.filter(segment=segment).values_list("contact_id", flat=True)) == {clicked.pk}
