"""The dry run: the real engine on a frozen clock inside a transaction that is rolled back, so it
shows the path and the emails with their dates and subjects and leaves nothing behind."""

from __future__ import annotations

import datetime as dt

import pytest

from leadflow.contacts.models import Contact
from leadflow.core.services import ServiceError
from leadflow.journeys.models import Enrollment, EnrollmentStep, Journey, JourneyVersion
from leadflow.journeys.simulate import duration_parse, journey_simulate
from leadflow.messaging.dispatch import dispatch_run
from leadflow.messaging.models import Message
from leadflow.tracking.models import Event

from journey_helpers import apply, contact_of, identify, send, template

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
GUIDE = [{"field": "properties.magnet_slug", "op": "eq", "value": "retirement-guide"}]


def nurture(**extra) -> dict:
    """Day 2, day 5 and day 9 at 10:00 in the person's own timezone."""
    return {"name": "Ebook nurture", "slug": "ebook", "reentry": "once",
            "triggers": [{"event": "Asset Downloaded", "where": GUIDE}],
            "goals": [{"name": "Booked a demo", "event": "Demo Requested"}],
            "nodes": [{"id": "wait-2d", "type": "wait", "days": 2, "next": "at-10-a"},
                      {"id": "at-10-a", "type": "wait_until", "time": "10:00", "next": "thanks"},
                      {"id": "thanks", "type": "send_email", "template": "thanks", "next": "wait-3d"},
                      {"id": "wait-3d", "type": "wait", "days": 2, "hours": 12, "next": "at-10-b"},
                      {"id": "at-10-b", "type": "wait_until", "time": "10:00", "next": "video"},
                      {"id": "video", "type": "send_email", "template": "video", "next": "wait-4d"},
                      {"id": "wait-4d", "type": "wait", "days": 3, "hours": 12, "next": "at-10-c"},
                      {"id": "at-10-c", "type": "wait_until", "time": "10:00", "next": "infographic"},
                      {"id": "infographic", "type": "send_email", "template": "infographic"}],
            **extra}


@pytest.fixture
def emails(ws):
    template(ws, "thanks", subject="Thanks for reading, {{ contact.first_name }}", topic="")
    template(ws, "video", subject="A client's story")
    template(ws, "infographic", subject="Your investment options")


def sent(timeline) -> list[tuple[dt.datetime, str]]:
    return [(row["at"], row["email"]["subject"]) for row in timeline if row["kind"] == "sent"]


def rows() -> dict[str, int]:
    return {model.__name__: model.objects.count()
            for model in (Contact, Enrollment, EnrollmentStep, Message, Event, Journey, JourneyVersion)}


def test_a_three_email_nurture_shows_each_email_on_its_day_at_10_local(ws, frozen_clock, emails):
    journey = apply(ws, nurture())
    timeline = journey_simulate(journey_or_definition=journey, workspace=ws.workspace,
                                traits={"first_name": "Ann", "timezone": "America/New_York"},
                                events=[("0d", "Asset Downloaded", {"magnet_slug": "retirement-guide"})])
    # New York is UTC-5 until 8 March 2026, UTC-4 after: 10:00 local is 15:00 then 14:00 UTC.
    assert sent(timeline) == [(dt.datetime(2026, 3, 4, 15, 0, tzinfo=UTC), "Thanks for reading, Ann"),
                              (dt.datetime(2026, 3, 7, 15, 0, tzinfo=UTC), "A client's story"),
                              (dt.datetime(2026, 3, 11, 14, 0, tzinfo=UTC), "Your investment options")]
    assert [r["kind"] for r in timeline][:3] == ["event", "entered", "passed"]
    assert timeline[-1]["kind"] == "completed"
    mail = next(r for r in timeline if r["kind"] == "sent")
    assert mail["node"] == "thanks" and mail["type"] == "send_email"
    assert mail["email"]["template"] == "thanks" and mail["email"]["to"] == "simulated.person@example.com"


def test_a_goal_event_in_the_timeline_ends_the_path_as_converted(ws, frozen_clock, emails):
    timeline = journey_simulate(journey_or_definition=nurture(), workspace=ws.workspace,
                                events=[(dt.timedelta(0), "Asset Downloaded", {"magnet_slug": "retirement-guide"}),
                                        ("3d", "Demo Requested")])
    assert [subject for _, subject in sent(timeline)] == ["Thanks for reading,"]
    end = timeline[-1]
    assert end["kind"] == "converted" and end["detail"]["goal"] == "Booked a demo"
    assert end["at"] == dt.datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    assert end["node"] == "thanks", "credited to the step passed last"


def test_without_a_triggering_event_the_person_enters_at_the_start_and_the_horizon_stops_the_run(
        ws, frozen_clock, emails):
    timeline = journey_simulate(journey_or_definition=nurture(), workspace=ws.workspace, days=6)
    assert timeline[0]["kind"] == "entered" and timeline[0]["at"] == frozen_clock.current
    assert len(sent(timeline)) == 2, "day 9 is past the 6-day horizon"
    assert timeline[-1]["kind"] == "horizon" and timeline[-1]["node"] == "wait-4d"
    assert timeline[-1]["detail"]["due_at"] > frozen_clock.current + dt.timedelta(days=6)


def test_a_trigger_event_later_enters_the_person_then(ws, frozen_clock, emails):
    start = dt.datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
    timeline = journey_simulate(journey_or_definition=nurture(), workspace=ws.workspace, start=start,
                                traits={"timezone": "Europe/Paris"},
                                events=[(start + dt.timedelta(days=1), "Asset Downloaded",
                                         {"magnet_slug": "retirement-guide"})])
    entered = next(r for r in timeline if r["kind"] == "entered")
    assert entered["at"] == start + dt.timedelta(days=1)
    assert sent(timeline)[0][0] == dt.datetime(2026, 4, 5, 8, 0, tzinfo=UTC), \
        "two days after entering (14:00 in Paris), then the next 10:00 there (UTC+2)"


def test_waiting_for_an_event_takes_the_event_path_or_the_timeout(ws, frozen_clock, emails):
    definition = {"name": "Webinar", "triggers": [{"manual": True}],
                  "nodes": [{"id": "attended", "type": "wait_for_event", "event": "Webinar Attended",
                             "timeout_days": 2, "next": "video", "timeout_next": "thanks"},
                            {"id": "video", "type": "send_email", "template": "video"},
                            {"id": "thanks", "type": "send_email", "template": "thanks"}]}
    came = journey_simulate(journey_or_definition=definition, workspace=ws.workspace,
                            events=[("1d", "Webinar Attended")])
    assert [(r["node"], r["detail"].get("outcome")) for r in came if r["kind"] == "passed"] == [("attended", "event")]
    assert [s for _, s in sent(came)] == ["A client's story"]
    missed = journey_simulate(journey_or_definition=definition, workspace=ws.workspace)
    assert sent(missed) == [(frozen_clock.current + dt.timedelta(days=2), "Thanks for reading,")]


def test_the_entry_filter_can_keep_the_person_out(ws, frozen_clock, emails):
    definition = nurture(entry={"field": "traits.plan", "op": "eq", "value": "pro"})
    out = journey_simulate(journey_or_definition=definition, workspace=ws.workspace, traits={"plan": "free"})
    assert [r["kind"] for r in out] == ["not_entered"]
    inside = journey_simulate(journey_or_definition=definition, workspace=ws.workspace, traits={"plan": "pro"})
    assert len(sent(inside)) == 3


def test_nothing_is_kept_or_sent_and_a_real_contact_is_left_as_it_was(ws, frozen_clock, emails):
    journey = apply(ws, nurture())
    send(ws, identify("ann", email="ann@example.com", first_name="Ann", plan="free"))
    ann = contact_of(ws, "ann")
    before = rows()
    timeline = journey_simulate(journey_or_definition=journey, workspace=ws.workspace, contact=ann,
                                traits={"first_name": "Annie"},
                                events=[("1h", "Asset Downloaded", {"magnet_slug": "retirement-guide"})])
    assert [s for _, s in sent(timeline)][0] == "Thanks for reading, Annie"
    assert all(r["email"]["to"] == "ann@example.com" for r in timeline if r["kind"] == "sent")
    assert rows() == before, "no enrollment, step, message, event, contact or journey is left behind"
    ann.refresh_from_db()
    assert ann.first_name == "Ann" and ann.traits.get("plan") == "free"
    assert dispatch_run() == 0, "nothing was queued for the dispatcher"
    assert frozen_clock.current == dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC), "the caller's clock is untouched"
    assert not Enrollment.objects.filter(journey=journey).exists(), "the real journey took nobody in"


def test_bad_input_gets_a_clear_error(ws, frozen_clock, emails):
    with pytest.raises(ServiceError, match="days"):
        journey_simulate(journey_or_definition=nurture(), workspace=ws.workspace, days=0)
    with pytest.raises(ServiceError, match="before the simulation starts"):
        journey_simulate(journey_or_definition=nurture(), workspace=ws.workspace,
                         events=[(dt.datetime(2020, 1, 1, tzinfo=UTC), "Asset Downloaded")])
    with pytest.raises(ServiceError, match="neither an offset"):
        journey_simulate(journey_or_definition=nurture(), workspace=ws.workspace, events=[("soon", "X")])
    with pytest.raises(ServiceError, match="no journey 'nope'"):
        journey_simulate(journey_or_definition="nope", workspace=ws.workspace)
    assert duration_parse("1d12h") == dt.timedelta(days=1, hours=12)
    assert duration_parse("+2w") == dt.timedelta(weeks=2)
    with pytest.raises(ServiceError, match="not a duration"):
        duration_parse("12 parsecs")


def test_a_sales_alert_nobody_can_take_waits_in_the_dry_run_and_says_why(ws, frozen_clock, emails):
    definition = {"name": "Hot", "triggers": [{"manual": True}],
                  "nodes": [{"id": "alert", "type": "sales_alert", "note": "hot", "next": "thanks"},
                            {"id": "thanks", "type": "send_email", "template": "thanks"}]}
    timeline = journey_simulate(journey_or_definition=definition, workspace=ws.workspace, days=90)
    reason = "no sales rep to route to: the routing pool is empty"
    assert [(r["kind"], r.get("node"), r["detail"].get("reason")) for r in timeline] == [
        ("entered", "alert", None), ("waiting", "alert", reason), ("horizon", "alert", reason)]
    assert sent(timeline) == []


def test_event_and_trait_lines_read_like_the_command_line():
    from leadflow.journeys.simulate import simulation_events_parse, simulation_traits_parse

    assert simulation_events_parse(
        "0d Asset Downloaded magnet_slug=retirement-guide\n\n# a comment\n"
        '2d12h "Form Submitted" form="contact us" seats=5\n'
        "3d:Webinar Attended:webinar=spring,live=true\n"
        "2026-03-04T10:00Z Demo Requested") == [
        ("0d", "Asset Downloaded", {"magnet_slug": "retirement-guide"}),
        ("2d12h", "Form Submitted", {"form": "contact us", "seats": 5}),
        ("3d", "Webinar Attended", {"webinar": "spring", "live": True}),
        ("2026-03-04T10:00Z", "Demo Requested", {})]
    assert simulation_traits_parse('first_name = Ann\nseats=5\ncode = "007"\n\ntimezone = Europe/Paris') == {
        "first_name": "Ann", "seats": 5, "code": "007", "timezone": "Europe/Paris"}
    for text, message in [("soon Asset Downloaded", "events, line 1: 'soon' is neither an offset"),
                          ("0d x\n2d", "events, line 2: write when, the event's name"),
                          ("2d plan=pro", "the event's name comes before its properties"),
                          ("2d Clicked url=x stray", "'stray' is not a property"),
                          ('2d "Unclosed', "No closing quotation")]:
        with pytest.raises(ServiceError, match=message):
            simulation_events_parse(text)
    with pytest.raises(ServiceError, match="traits, line 2: write name = value"):
        simulation_traits_parse("plan = pro\nseats")


# --- the dry run page -------------------------------------------------------------------------------

@pytest.fixture
def marketer(ws):
    from django.test import Client

    from leadflow.core.services import user_create

    client = Client()
    client.force_login(user_create(username="mara", password="pw-mara-123", workspace=ws.workspace, role="marketer"))
    return client


def timeline_rows(page: str) -> list[tuple[str, str, str]]:
    """(kind, when, details) per row of the page's timeline, as text."""
    import html
    import re

    table = page[page.index('data-testid="timeline"'):]
    table = table[:table.index("</table>")]
    out = []
    for kind, cells in re.findall(r'<tr class="dry-[a-z_]+" data-kind="([a-z_]+)"[^>]*>(.*?)</tr>', table, re.S):
        texts = [html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", c)).strip())
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", cells, re.S)]
        out.append((kind, texts[1], texts[4]))
    return out


def test_the_dry_run_page_follows_a_hypothetical_person_day_by_day_and_writes_nothing(ws, frozen_clock, emails,
                                                                                       marketer):
    journey = apply(ws, nurture())
    assert f'href="/journeys/{journey.pk}/dry-run/"' in marketer.get(f"/journeys/{journey.pk}/").content.decode()
    form = marketer.get(f"/journeys/{journey.pk}/dry-run/").content.decode()
    assert 'name="events"' in form and 'name="traits"' in form and 'name="contact"' in form
    before = rows()
    resp = marketer.post(f"/journeys/{journey.pk}/dry-run/", {
        "who": "hypothetical", "traits": "first_name = Ann\ntimezone = America/New_York",
        "events": "0d Asset Downloaded magnet_slug=retirement-guide", "days": "30", "version": "1"})
    page = resp.content.decode()
    assert resp.status_code == 200 and 'data-testid="dry-run-error"' not in page, page[:2000]
    assert rows() == before, "no contact, event, enrollment, step, message or journey is left behind"
    assert dispatch_run() == 0
    timeline = timeline_rows(page)
    assert [kind for kind, _, _ in timeline][:3] == ["event", "entered", "passed"]
    assert timeline[0][2] == "Asset Downloaded (magnet_slug = retirement-guide)"
    # 10:00 in New York, on days 2, 5 and 9 (the clocks change on 8 March).
    assert [(when, details) for kind, when, details in timeline if kind == "sent"] == [
        ("Wed 2026-03-04 10:00", "“Thanks for reading, Ann” template thanks · to simulated.person@example.com"),
        ("Sat 2026-03-07 10:00", "“A client's story” template video · to simulated.person@example.com"),
        ("Wed 2026-03-11 10:00", "“Your investment options” template infographic · to "
                                 "simulated.person@example.com")]
    assert timeline[-1][0] == "completed"
    summary = page[page.index('data-testid="dry-run-summary"'):]
    assert "(America/New_York) for 30 days: 3 emails" in summary[:300]
    assert 'value="0d Asset Downloaded magnet_slug=retirement-guide"' not in page
    assert "0d Asset Downloaded magnet_slug=retirement-guide</textarea>" in page, "the form keeps what was typed"


def test_the_dry_run_page_follows_a_real_contact_found_by_email(ws, frozen_clock, emails, marketer):
    journey = apply(ws, nurture())
    send(ws, identify("ann", email="ann@example.com", first_name="Ann"),
         identify("anna", email="anna@example.com", first_name="Anna"))
    anna = contact_of(ws, "anna")
    before = rows()
    post = {"who": "contact", "contact": "ANN@example.com", "traits": "", "days": "10", "version": "1",
            "events": "1h Asset Downloaded magnet_slug=retirement-guide"}
    page = marketer.post(f"/journeys/{journey.pk}/dry-run/", post).content.decode()
    assert "ann@example.com on version 1" in page
    assert [d for k, _, d in timeline_rows(page) if k == "sent"][0] == (
        "“Thanks for reading, Ann” template thanks · to ann@example.com")
    page = marketer.post(f"/journeys/{journey.pk}/dry-run/", {**post, "contact": "@example"}).content.decode()
    assert "2 contacts match &#x27;@example&#x27;: choose one" in page and 'data-testid="dry-run-result"' not in page
    assert f'name="pick" value="{anna.pk}"' in page
    page = marketer.post(f"/journeys/{journey.pk}/dry-run/", {**post, "contact": "@example", "pick": str(anna.pk)}
                         ).content.decode()
    assert "anna@example.com on version 1" in page and "“Thanks for reading, Anna”" in page
    page = marketer.post(f"/journeys/{journey.pk}/dry-run/", {**post, "contact": "nna@"}).content.decode()
    assert "anna@example.com on version 1" in page, "part of an email that matches one contact"
    assert rows() == before


def test_the_dry_run_page_refuses_bad_input_clearly_and_keeps_it(ws, frozen_clock, emails, marketer):
    journey = apply(ws, nurture())
    good = {"who": "hypothetical", "traits": "", "events": "0d Asset Downloaded", "days": "90", "version": "1"}
    before = rows()
    for change, message in [
            ({"events": "0d Asset Downloaded\nsoon Demo Requested"},
             "events, line 2: &#x27;soon&#x27; is neither an offset from the start"),
            ({"events": "2d"}, "events, line 1: write when, the event&#x27;s name and its properties"),
            ({"traits": "plan"}, "traits, line 1: write name = value"),
            ({"days": "a week"}, "days: &#x27;a week&#x27; is not a number"),
            ({"days": "0"}, "days: more than 0 and at most 3650"),
            ({"days": "nan"}, "days: more than 0 and at most 3650"),
            ({"start": "tomorrow"}, "start: &#x27;tomorrow&#x27; is not a date and time"),
            ({"start": "2020-01-01T00:00Z", "events": "2019-12-31T00:00Z Demo Requested"},
             "happens before the simulation starts"),
            ({"who": "contact", "contact": ""}, "enter the email of the contact to follow"),
            ({"who": "contact", "contact": "ghost@example.com"}, "no contact matches &#x27;ghost@example.com&#x27;"),
            ({"version": "7"}, "choose a version of the journey")]:
        resp = marketer.post(f"/journeys/{journey.pk}/dry-run/", {**good, **change})
        page = resp.content.decode()
        assert resp.status_code == 200 and 'data-testid="dry-run-error"' in page, change
        error = page[page.index('data-testid="dry-run-error"'):]
        assert message in error[:400], (change, error[:400])
        assert 'data-testid="dry-run-result"' not in page
        for key, value in change.items():
            if key in ("events", "traits"):
                assert f">{value}</textarea>" in page.replace("&#x27;", "'"), "what was typed stays"
    assert rows() == before


def test_readers_may_run_a_dry_run_and_other_workspaces_may_not(ws, other_ws, frozen_clock, emails):
    from django.test import Client

    from leadflow.core.services import user_create

    journey = apply(ws, nurture())
    analyst = Client()
    analyst.force_login(user_create(username="ana", password="pw-ana-12345", workspace=ws.workspace, role="analyst"))
    resp = analyst.post(f"/journeys/{journey.pk}/dry-run/", {"who": "hypothetical", "days": "10", "version": "1"})
    assert resp.status_code == 200 and 'data-testid="dry-run-result"' in resp.content.decode()
    outsider = Client()
    outsider.force_login(user_create(username="olga", password="pw-olga-123", workspace=other_ws.workspace,
                                     role="admin"))
    assert outsider.get(f"/journeys/{journey.pk}/dry-run/").status_code == 404
    assert outsider.post(f"/journeys/{journey.pk}/dry-run/", {"days": "10"}).status_code == 404
