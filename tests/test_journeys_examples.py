"""The shipped example journeys (examples/journeys/) end to end, as `leadflow demo` sets them up.

Each test runs the demo in a fresh workspace, sends people's events through the real pipeline
(the webinar registrations through the hosted form), drives the clock forward running what a
worker runs (pipeline, periodic timers, journey engine, dispatcher) at every moment something
falls due, and reads the emails a real SMTP server on loopback received: who got which subject,
on which day and at what local time (from the Date header the dispatcher wrote with the
injected clock). Clicks go through the real tracked links. Goals take people out (no
email after the goal), a holdout receives nothing, and a version published mid-run leaves the
people already in on theirs.

The clock starts on Monday 2026-03-02 09:00 UTC. New York leaves EST for EDT on Sunday March 8
and London leaves GMT for BST on Sunday March 29, so local times are checked across both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import re
import uuid
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Min
from django.test import Client

from leadflow.contacts.models import Contact
from leadflow.core.pipeline import process_pending, timers_run
from leadflow.core.services import user_create
from leadflow.journeys.demo import EXAMPLES_DIRS, demo_apply, examples_load
from leadflow.journeys.engine import journeys_run_due, stable_fraction, version_definition
from leadflow.journeys.language import journey_parse
from leadflow.journeys.lint import journey_lint
from leadflow.journeys.models import Enrollment, Journey, JourneyVersion
from leadflow.journeys.services import journey_apply, journey_enroll
from leadflow.journeys.triggers import period_key
from leadflow.lifecycle.models import Assignment, SalesAlert, StageChange
from leadflow.lifecycle.services import contact_stage_set, lead_advance, lead_recycle, lifecycle_settings_update
from leadflow.messaging import dispatch
from leadflow.messaging.models import Message, Template
from leadflow.messaging.sending import messaging_settings_update, sending_server_create
from leadflow.segments.models import SegmentMember
from leadflow.tracking.ingest import events_append

from journey_helpers import contact_of, identify, iso, template, track
from smtp_sink import dispatching_to_sink

pytestmark = pytest.mark.django_db

PUBLIC = "https://lf.example.com"
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.4 Safari/605.1.15")
UTC = dt.timezone.utc
LONDON, NEW_YORK = ZoneInfo("Europe/London"), ZoneInfo("America/New_York")
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # the frozen clock's start, a Monday


def day(n: int, hour: int = 0, minute: int = 0, zone=UTC) -> dt.datetime:
    """`hour:minute` local time in `zone` on day `n` of the run (day 0 = Monday 2026-03-02)."""
    return dt.datetime.combine(START.date() + dt.timedelta(days=n), dt.time(hour, minute), tzinfo=zone)


@dataclasses.dataclass
class Mail:
    at: dt.datetime  # from the Date header: when the dispatcher sent it, in UTC
    to: str
    subject: str
    html: str

    def local(self, zone) -> tuple[int, str]:
        """(day of the run, HH:MM) on the recipient's clock."""
        moment = self.at.astimezone(zone)
        return (moment.date() - START.date()).days, moment.strftime("%H:%M")


class World:
    """A workspace with the demo applied, a sending server on loopback and a worker the test
    drives: `run_until` moves the clock (by whole days, stopping at every timer that falls due)
    and runs what the worker would at each stop."""

    def __init__(self, ws, clock, sink):
        self.ws, self.clock, self.sink = ws, clock, sink
        self.browser = Client()
        self.seen = 0
        self.mails: list[Mail] = []

    # --- the worker ---

    def work(self) -> None:
        """One worker pass at the clock's time: the pipeline, the periodic timers that are due
        (time-driven segments, lifecycle returns and SLAs, score decay…), the journey engine
        and the dispatcher."""
        process_pending(isolate_failures=False)
        timers_run()
        journeys_run_due(now=self.clock.current)
        dispatch.dispatch_run()
        self._collect()

    def _next_stop(self, until: dt.datetime) -> dt.datetime:
        """The first moment after now when something falls due (an enrollment, a deferred
        message, a recycled lead's return date), or `until`."""
        now = self.clock.current
        times = [
            Enrollment.objects.filter(state="active", due_at__gt=now).aggregate(t=Min("due_at"))["t"],
            Message.objects.filter(status__in=["queued", "deferred"], not_before__gt=now)
            .aggregate(t=Min("not_before"))["t"],
            Assignment.objects.filter(status="recycled", returned_at__isnull=True, return_at__gt=now)
            .aggregate(t=Min("return_at"))["t"],
        ]
        return min([t for t in times if t is not None] + [until])

    def run_until(self, until: dt.datetime) -> None:
        """Move the clock to `until`, with a worker pass at every moment something falls due on
        the way and at `until`. Between passes nothing changes (every periodic pass is
        idempotent and reads the clock), so skipping the idle time is what a worker would see."""
        while self.clock.current < until:
            self.clock.set(self._next_stop(until))
            self.work()

    def _collect(self) -> None:
        for received in self.sink.messages[self.seen:]:
            message = received.message
            html = message.get_body(preferencelist=("html",)).get_content()
            self.mails.append(Mail(at=email.utils.parsedate_to_datetime(message["Date"]).astimezone(UTC),
                                   to=received.rcpt_tos[0], subject=str(message["Subject"]), html=html))
        self.seen = len(self.sink.messages)

    # --- people ---

    def send(self, *messages: dict) -> None:
        """Events as a site, an app or a form would send them, then a worker pass."""
        now = self.clock.current
        batch = [{"messageId": uuid.uuid4().hex, "timestamp": iso(now), **m} for m in messages]
        result = events_append(workspace=self.ws.workspace, messages=batch)
        assert not result.rejected, result.rejected
        self.work()

    def visit(self, user: str, url: str) -> None:
        self.send({"type": "page", "userId": user,
                   "properties": {"url": url, "path": urlsplit(url).path}})

    def click(self, mail: Mail, *, user: str) -> str:
        """Follow the first tracked link of a received email as a person in a browser would (the
        click is recorded, the site is visited); returns where it led."""
        link = next(url for url in re.findall(r'href="([^"]+)"', mail.html) if url.startswith(f"{PUBLIC}/e/c/"))
        response = self.browser.get(urlsplit(link).path, HTTP_USER_AGENT=SAFARI, REMOTE_ADDR="198.51.100.7")
        assert response.status_code == 302, response
        destination = response["Location"]
        self.visit(user, destination)
        return destination

    def inbox(self, address: str) -> list[Mail]:
        return [m for m in self.mails if m.to == address]

    def subjects(self, address: str) -> list[str]:
        return [m.subject for m in self.inbox(address)]


@pytest.fixture
def advisor(ws):
    """A sales member in the default routing pool: MQLs and sales alerts go to her."""
    user = user_create(username="ava-advisor", password="pw-123456", email="ava@acmewealth.example",
                       workspace=ws.workspace, role="sales")
    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [user.pk]}, actor="test")
    return user


@pytest.fixture
def world(ws, frozen_clock):
    admin = user_create(username="ada-admin", password="pw-123456", workspace=ws.workspace, role="admin")
    with dispatching_to_sink(PUBLIC) as sink:
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme Wealth",
                                  from_email="hello@acmewealth.example",
                                  postal_address="Acme Wealth Advisors, 100 Harbor Street, Springfield")
        sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True,
                              rate_per_second=0)
        demo_apply(workspace=ws.workspace, actor="test:demo", approver=admin)
        yield World(ws, frozen_clock, sink)


def person(user: str, *, zone=LONDON, title: str = "Office manager", **traits) -> dict:
    return identify(user, email=f"{user}@harbor-dental.example", first_name=user.capitalize(), title=title,
                    timezone=zone.key, **traits)


def example(slug: str) -> dict:
    """The shipped definition of a journey, as the demo reads it."""
    return next(data for _, data in examples_load().journeys if data["slug"] == slug)


def journey(slug: str) -> Journey:
    return Journey.objects.get(slug=slug)


def states(slug: str) -> dict[str, str]:
    return dict(Enrollment.objects.filter(journey__slug=slug).values_list("contact__user_id", "state"))


# --- the demo -----------------------------------------------------------------------------------------

def test_the_demo_sets_up_every_example_live_with_approved_content_and_a_second_run_changes_nothing(ws):
    admin = user_create(username="ada-admin", password="pw-123456", workspace=ws.workspace, role="admin")
    report = demo_apply(workspace=ws.workspace, actor="test:demo")
    files = sorted(p.stem for p in EXAMPLES_DIRS[0].glob("*.yaml") if p.name != "content.yaml")
    assert sorted(slug for slug, _, _ in report.journeys) == files and len(files) == 7
    assert all(number == 1 and changed for _, number, changed in report.journeys)
    order = [slug for slug, _, _ in report.journeys]
    assert order.index("stay-in-touch") < order.index("ebook-nurture") < order.index("pricing-accelerator"), \
        "a journey another one enrolls into or removes from is applied first"
    live = Journey.objects.filter(workspace=ws.workspace)
    assert set(live.values_list("status", flat=True)) == {"live"}
    content = examples_load().content
    templates = Template.objects.filter(workspace=ws.workspace).select_related("approved_version")
    assert sorted(t.slug for t in templates) == sorted(t["slug"] for t in content["templates"])
    assert all(t.approved_version.status == "approved" and t.approved_version.decided_by == f"user:{admin.pk}"
               for t in templates)
    assert all(t.topic for t in templates), "every example email has a topic people can leave"
    findings = {j.slug: {f.code for f in journey_lint(workspace_id=ws.workspace.pk, journey=j,
                                                      definition=version_definition(j.version))}
                for j in live.select_related("version")}
    assert all(codes <= {"date_trait_never_seen"} for slug, codes in findings.items()
               if slug != "pricing-accelerator"), \
        f"only warnings that no contact has the date traits yet: {findings}"
    assert findings["pricing-accelerator"] == {"no_sales_rep"}, "its sales alert has no rep to go to yet"

    again = demo_apply(workspace=ws.workspace, actor="test:demo")
    assert [slug for slug, changed in report.streams if changed] == ["early-stage", "middle-stage", "late-stage"]
    assert again.created == [] and not any(changed for _, changed in again.streams)
    assert not any(changed for _, _, changed in again.journeys)
    assert JourneyVersion.objects.filter(workspace=ws.workspace).count() == 7


def test_the_demo_command_names_what_it_made_and_needs_an_admin_to_approve_the_email(ws, tmp_path, capsys):
    with pytest.raises(CommandError, match="approves its email templates as an admin"):
        call_command("demo", "--workspace", ws.workspace.slug)
    assert not Journey.objects.filter(workspace=ws.workspace).exists()
    user_create(username="ada-admin", password="pw-123456", workspace=ws.workspace, role="admin")
    call_command("demo", "--workspace", ws.workspace.slug)
    out = capsys.readouterr().out
    assert "created template retirement-thanks" in out and "journey ebook-nurture: version 1" in out
    with pytest.raises(CommandError, match="no example journeys at"):
        call_command("demo", "--workspace", ws.workspace.slug, "--examples", str(tmp_path))


def test_leadflow_demo_then_leadflow_tick_plays_the_ebook_nurture_as_the_docs_describe(ws, frozen_clock, capsys):
    """The documented demo: `leadflow demo`, a download, `leadflow tick --until 10d`; the three
    emails arrive on days 2, 5 and 9 at 10:00 London time."""
    user_create(username="ada-admin", password="pw-123456", workspace=ws.workspace, role="admin")
    with dispatching_to_sink(PUBLIC) as sink:
        call_command("demo")
        sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True,
                              rate_per_second=0)
        # The ebook holds 10% out: take a reader the engine's stable split treats (ids differ by store).
        percent = next(n["percent"] for n in example("ebook-nurture")["nodes"] if n["type"] == "holdout")
        node = next(n["id"] for n in example("ebook-nurture")["nodes"] if n["type"] == "holdout")
        for i in range(50):
            reader = f"ann{i}" if i else "ann"
            result = events_append(workspace=ws.workspace, messages=[
                {"messageId": uuid.uuid4().hex, "timestamp": iso(START), **person(reader)}])
            assert not result.rejected
            process_pending(isolate_failures=False)
            pk = Contact.objects.get(workspace=ws.workspace, user_id=reader).pk
            if stable_fraction(journey("ebook-nurture").pk, pk, "once", node) * 100 >= percent:
                break
        result = events_append(workspace=ws.workspace, messages=[
            {"messageId": uuid.uuid4().hex, "timestamp": iso(START), **download(reader)}])
        assert not result.rejected
        call_command("tick", "--until", "10d")
        received = [(str(r.message["Subject"]), r.rcpt_tos,
                     email.utils.parsedate_to_datetime(r.message["Date"]).astimezone(LONDON).strftime("%a %d %H:%M"))
                    for r in sink.messages]
    address = [f"{reader}@harbor-dental.example"]
    assert received == [
        ("Thanks for reading Your Guide to a Secure Retirement", address, "Wed 04 10:00"),
        ("How the Parkers retired two years early", address, "Sat 07 10:00"),
        ("Your investment options at a glance", address, "Wed 11 10:00"),
    ]
    assert "3 emails sent" in capsys.readouterr().out


# --- 1. ebook nurture ---------------------------------------------------------------------------------

def download(user: str) -> dict:
    """What the lead magnet's download link appends (tracking.forms.magnet_download)."""
    return track(user, "Asset Downloaded", magnet_slug="retirement-guide",
                 magnet_name="Your Guide to a Secure Retirement", magnet_kind="ebook")


def sides_of_holdout(world: World, slug: str, node: str, *, treated: int) -> tuple[str, list[str]]:
    """One person the holdout `node` of `slug` (a journey entered once ever) will hold out and
    `treated` it will not, identified (not yet entered): the engine's own stable split of person
    and node tells the test in advance who is in the control group."""
    percent = next(n["percent"] for n in example(slug)["nodes"] if n["id"] == node)
    journey_id = journey(slug).pk
    held, others = [], []
    while not held or len(others) < treated:
        batch = [f"reader{len(held) + len(others) + i}" for i in range(10)]
        world.send(*[person(u) for u in batch])
        for contact in Contact.objects.filter(workspace=world.ws.workspace, user_id__in=batch).order_by("pk"):
            side = held if stable_fraction(journey_id, contact.pk, "once", node) * 100 < percent else others
            side.append(contact.user_id)
    return held[0], others[:treated]


def test_ebook_nurture_day_by_day_until_the_mql_goal_with_a_silent_holdout_and_a_version_mid_run(world, advisor):
    """Ann reads and clicks her way to MQL on day 5: the advisor is alerted with the context and
    she gets nothing more. Bob reads nothing: day 2, 5 and 9 at 10:00 New York time (across the
    change to daylight saving time), then the stay-in-touch stream. Hal is in the control group
    and receives nothing. Version 2, published on day 3, changes the last email: Cy, who enters
    after it, gets the new one; Bob, already in, finishes on version 1."""
    hal, (ann, bob, cy, dee) = sides_of_holdout(world, "ebook-nurture", "control-group", treated=4)
    world.send(person(ann, title="VP Finance"), person(bob, zone=NEW_YORK), person(hal, title="VP Finance"),
               person(cy, title="VP Finance"))
    assert contact_of(world.ws, ann).fit_grade == "B" and contact_of(world.ws, bob).fit_grade in ("C", "D")
    email = {u: f"{u}@harbor-dental.example" for u in (ann, bob, cy, hal)}

    world.send(download(ann), download(bob), download(hal),
               track(dee, "Asset Downloaded", magnet_slug="another-guide"))
    assert states("ebook-nurture") == {ann: "active", bob: "active", hal: "active"}, \
        "only the retirement guide starts the nurture"

    # Day 2, 10:00 London: Ann's thank-you. She follows its link to the article.
    world.run_until(day(2, 10, 30))
    [thanks] = world.inbox(email[ann])
    assert thanks.subject == "Thanks for reading Your Guide to a Secure Retirement"
    assert thanks.local(LONDON) == (2, "10:00")
    assert world.click(thanks, user=ann).startswith("https://www.acmewealth.example/retirement/common-mistakes?")
    assert contact_of(world.ws, ann).lifecycle_stage == "lead", "not enough engagement yet"

    # Day 3: version 2 swaps the last email; Cy downloads after it is published.
    world.run_until(day(3, 8))
    template(world.ws, "retirement-checklist", subject="Your retirement checklist", topic="retirement-planning")
    v2 = example("ebook-nurture")
    next(n for n in v2["nodes"] if n["id"] == "infographic")["template"] = "retirement-checklist"
    _, version, changed = journey_apply(workspace=world.ws.workspace, data=v2, actor="test")
    assert changed and version.number == 2
    world.run_until(day(3, 9))
    world.send(download(cy))

    # Day 5, 10:00: the client story. Ann watches it: MQL, the advisor is alerted, she is out.
    world.run_until(day(5, 10, 30))
    assert world.subjects(email[ann]) == ["Thanks for reading Your Guide to a Secure Retirement",
                                          "How the Parkers retired two years early"]
    video = world.inbox(email[ann])[1]
    assert video.local(LONDON) == (5, "10:00")
    world.click(video, user=ann)
    ann_contact = contact_of(world.ws, ann)
    assert ann_contact.lifecycle_stage == "marketing_qualified" and ann_contact.engagement_score >= 40
    assert states("ebook-nurture")[ann] == "converted"
    alert = SalesAlert.objects.get(contact=ann_contact, kind="new_lead")
    assert alert.user_id == advisor.pk and ann_contact.owner_id == advisor.pk
    assert [m["slug"] for m in alert.context["magnets"]] == ["retirement-guide"]
    assert alert.context["score"]["fit_grade"] == "B" and alert.context["score"]["engagement_score"] >= 40

    world.run_until(day(16))
    assert world.subjects(email[ann]) == ["Thanks for reading Your Guide to a Secure Retirement",
                                          "How the Parkers retired two years early"], "nothing after the goal"
    assert world.inbox(email[hal]) == [], "the control group receives nothing"
    held_out = Enrollment.objects.get(journey__slug="ebook-nurture", contact__user_id=hal)
    assert (held_out.group, held_out.state) == ("holdout", "active")

    # Bob: day 2, 5 and 9 at 10:00 on his clock (EST, then EDT from March 8), then the stream.
    bob_mails = world.inbox(email[bob])
    assert [(m.subject, m.local(NEW_YORK)) for m in bob_mails] == [
        ("Thanks for reading Your Guide to a Secure Retirement", (2, "10:00")),
        ("How the Parkers retired two years early", (5, "10:00")),
        ("Your investment options at a glance", (9, "10:00")),
        ("Why the best time to plan is ten years out", (15, "10:00")),
    ]
    assert [m.at.hour for m in bob_mails[:3]] == [15, 15, 14], "10:00 local is 15:00 UTC, then 14:00 UTC"
    assert states("ebook-nurture")[bob] == "completed" and states("stay-in-touch")[bob] == "active"

    # Cy entered on version 2 and gets its last email; Bob stayed on version 1.
    assert [(m.subject, m.local(LONDON)) for m in world.inbox(email[cy])] == [
        ("Thanks for reading Your Guide to a Secure Retirement", (5, "10:00")),
        ("How the Parkers retired two years early", (8, "10:00")),
        ("Your retirement checklist", (12, "10:00")),
        ("Why the best time to plan is ten years out", (15, "10:00")),
    ]
    versions = dict(Enrollment.objects.filter(journey__slug="ebook-nurture")
                    .values_list("contact__user_id", "version__number"))
    assert versions == {ann: 1, bob: 1, hal: 1, cy: 2}


# --- 2. webinar ---------------------------------------------------------------------------------------

def register(world: World, name: str, zone, *, webinar_date: str = "2026-03-05") -> str:
    """Register through the hosted form, as the webinar page that embeds it would (it fills in
    the session's date and the visitor's time zone); returns the browser's anonymous id."""
    aid = f"aid-{name}"
    response = Client().post(f"/f/{world.ws.workspace.slug}/retirement-webinar/", REMOTE_ADDR=f"198.51.100.{len(name)}",
                             data={"email": f"{name}@example.org", "first_name": name.capitalize(),
                                   "webinar_date": webinar_date, "timezone": zone.key, "lf_aid": aid,
                                   "lf_page": "https://www.acmewealth.example/webinars/retirement-income"})
    assert response.status_code == 200, response.content[:300]
    world.work()
    return aid


def test_webinar_reminders_at_local_times_then_attended_and_no_show_follow_ups(world):
    """The masterclass is on Thursday (day 3) at 16:00 UK time. Ann (London) and Bob (New York)
    register on Monday through the hosted form: confirmed at once, reminded on Wednesday at 10:00
    and on Thursday at 08:00 their time. Ann attends: the recording on Friday at 10:00, she is
    tagged and listed, and the review offer comes on Monday. Bob misses it: the recording on
    Friday at 10:00 New York time, and nothing more. Cy attends and books a review straight
    away: the goal, so no follow-up at all."""
    aid = {name: register(world, name, zone) for name, zone in (("ann", LONDON), ("bob", NEW_YORK), ("cy", LONDON))}
    ids = {name: f"{name}@example.org" for name in aid}
    assert {Enrollment.objects.get(journey__slug="webinar", contact__email=ids[n]).state for n in ids} == {"active"}
    assert [(m.subject, m.local(LONDON)) for m in world.inbox(ids["ann"])] == [
        ("You're registered: Retirement income masterclass", (0, "09:00"))]
    assert "2026-03-05" in world.inbox(ids["ann"])[0].html

    world.run_until(day(3, 16, 30))
    world.send({"type": "track", "event": "Webinar Attended", "anonymousId": aid["ann"],
                "properties": {"webinar": "retirement-income"}},
               {"type": "track", "event": "Webinar Attended", "anonymousId": aid["cy"],
                "properties": {"webinar": "retirement-income"}})
    world.run_until(day(3, 17))
    world.send({"type": "track", "event": "Demo Requested", "anonymousId": aid["cy"]})
    world.run_until(day(10))

    reminders = [("You're registered: Retirement income masterclass", (0, "09:00")),
                 ("Tomorrow: Retirement income masterclass", (2, "10:00")),
                 ("Today: Retirement income masterclass", (3, "08:00"))]
    assert [(m.subject, m.local(LONDON)) for m in world.inbox(ids["ann"])] == reminders + [
        ("Thanks for joining: the recording and slides", (4, "10:00")),
        ("Your free retirement income review", (7, "10:00"))]
    assert [(m.subject, m.local(NEW_YORK)) for m in world.inbox(ids["bob"])] == [
        ("You're registered: Retirement income masterclass", (0, "04:00"))] + reminders[1:] + [
        ("Sorry we missed you: watch the masterclass", (4, "10:00"))]
    assert [(m.subject, m.local(LONDON)) for m in world.inbox(ids["cy"])] == reminders, \
        "booking a review is the goal: no follow-up after it"

    by_email = dict(Enrollment.objects.filter(journey__slug="webinar").values_list("contact__email", "state"))
    assert by_email == {ids["ann"]: "completed", ids["bob"]: "completed", ids["cy"]: "converted"}
    ann = Contact.objects.get(email=ids["ann"])
    assert ann.traits["tags"] == ["webinar-attendee"] and ann.timezone == "Europe/London"
    assert list(SegmentMember.objects.filter(segment__slug="webinar-attendees")
                .values_list("contact__email", flat=True)) == [ids["ann"]]


# --- 3. stay in touch ---------------------------------------------------------------------------------

def test_stay_in_touch_streams_follow_stage_and_role_every_other_tuesday_and_slow_down_when_engagement_fades(world):
    """Three newsletter subscribers. Ann (buyer) and Cy (buyer) read the site, so they get a
    piece every second Tuesday at 10:00; Bob (doer, New York) reads nothing, so every fourth.
    Each gets the pieces for everyone and for their role, in order. Ann asks for a consultation
    on day 20 and becomes MQL: her next Tuesday draws from the middle-stage stream. Cy, still a
    subscriber, has had the whole early stream by then and waits, marked exhausted."""
    world.send(person("ann", role="buyer"), person("bob", zone=NEW_YORK, role="doer"), person("cy", role="buyer"),
               *[track(u, "Newsletter Subscribed") for u in ("ann", "bob", "cy")])
    for user in ("ann", "cy"):
        world.visit(user, "https://www.acmewealth.example/retirement/common-mistakes")
        world.visit(user, "https://www.acmewealth.example/retirement/client-story")
    assert states("stay-in-touch") == {"ann": "active", "bob": "active", "cy": "active"}
    assert contact_of(world.ws, "bob").lifecycle_stage == "subscriber"
    assert contact_of(world.ws, "ann").engagement_score >= 20 and contact_of(world.ws, "bob").engagement_score < 5

    world.run_until(day(20, 12))
    world.send(track("ann", "Demo Requested"))
    assert contact_of(world.ws, "ann").lifecycle_stage == "marketing_qualified"
    world.run_until(day(30))

    assert [(m.subject, m.local(LONDON)) for m in world.inbox("ann@harbor-dental.example")] == [
        ("Why the best time to plan is ten years out", (1, "10:00")),
        ("Retirement benefits that help you hire", (15, "10:00")),
        ("What a retirement plan really costs", (29, "10:00")),  # the middle stream, in BST
    ]
    assert [(m.subject, m.local(NEW_YORK)) for m in world.inbox("bob@harbor-dental.example")] == [
        ("Why the best time to plan is ten years out", (1, "10:00")),
        ("Setting up a workplace retirement plan: a checklist", (29, "10:00")),
    ]
    assert [(m.subject, m.local(LONDON)) for m in world.inbox("cy@harbor-dental.example")] == [
        ("Why the best time to plan is ten years out", (1, "10:00")),
        ("Retirement benefits that help you hire", (15, "10:00")),
    ]
    cy = Enrollment.objects.get(journey__slug="stay-in-touch", contact__user_id="cy")
    assert cy.state == "active" and cy.data.get("exhausted") == "early-stage"


# --- 4. pricing accelerator ---------------------------------------------------------------------------

def test_pricing_visits_take_leads_off_the_slow_drip_onto_a_faster_path_and_strong_intent_to_sales(world, advisor):
    """Ann, in the ebook nurture, looks at the pricing page three times on Tuesday morning: she
    leaves the ebook nurture, her advisor is alerted and the call invitation goes at once. Bob
    looks once: the fees email at once; he clicks it the next day, which is strong intent too.
    Cy looks once and ignores the fees email: after three days she is slowed down to a case study
    the next Tuesday at 10:00, and nobody is alerted."""
    world.send(person("ann"), person("bob", zone=NEW_YORK), person("cy"))
    world.send(download("ann"))
    assert states("ebook-nurture") == {"ann": "active"}

    world.run_until(day(1, 9))
    world.send(*[{"type": "page", "userId": "ann", "properties": {"url": "https://www.acmewealth.example/pricing",
                                                                  "path": "/pricing"}}] * 3)
    world.visit("cy", "https://www.acmewealth.example/pricing")
    assert states("ebook-nurture") == {"ann": "exited"}, "off the slow drip"
    world.run_until(day(1, 15))
    world.visit("bob", "https://www.acmewealth.example/pricing")
    world.run_until(day(2, 14))
    [fees] = world.inbox("bob@harbor-dental.example")
    assert world.click(fees, user="bob").startswith("https://www.acmewealth.example/pricing/explained?")
    world.run_until(day(9))

    assert [(m.subject, m.local(LONDON)) for m in world.inbox("ann@harbor-dental.example")] == [
        ("Talk to an advisor this week", (1, "09:00"))]
    assert [(m.subject, m.local(NEW_YORK)) for m in world.inbox("bob@harbor-dental.example")] == [
        ("Our fees, explained in plain English", (1, "10:00")),
        ("Talk to an advisor this week", (2, "09:00"))]
    assert [(m.subject, m.local(LONDON)) for m in world.inbox("cy@harbor-dental.example")] == [
        ("Our fees, explained in plain English", (1, "09:00")),
        ("How a 40-person firm cut its plan costs by 30%", (8, "10:00"))]
    assert states("pricing-accelerator") == {"ann": "completed", "bob": "completed", "cy": "completed"}

    alerts = {a.contact.user_id: a for a in SalesAlert.objects.filter(kind="new_lead").select_related("contact")}
    assert sorted(alerts) == ["ann", "bob"] and {a.user_id for a in alerts.values()} == {advisor.pk}
    assert alerts["ann"].context["journey"] == {"slug": "pricing-accelerator", "name": "Pricing accelerator",
                                                "note": "Strong pricing intent", "task": ""}
    assert [p["url"] for p in alerts["ann"].context["high_intent_pages"]] == [
        "https://www.acmewealth.example/pricing"] * 3
    assert contact_of(world.ws, "ann").lifecycle_stage == "lead", "alerted, not yet qualified by sales"


# --- 5. re-engagement ---------------------------------------------------------------------------------

def test_leads_quiet_for_60_days_are_re_engaged_and_sunset_when_they_never_answer(world):
    """Ann, Bob and Cy were last seen on day 0; the others came back on day 30. On day 61 the
    three are 60 days quiet: the next Tuesday (day 64) at 10:00 their time they are asked whether
    they still think about retirement, under subject line A or B (the engine's stable random
    split; Ann is on side A, Bob on side B). Ann clicks: she came back, out at once. A week later
    Bob and Cy are asked whether to stop; Cy clicks "keep me on the list". Bob never answers: on
    day 78 he is sunset, and no journey takes him in any more."""
    entry = period_key(journey_parse(example("re-engagement")), day(61, 9))  # once per 180 days

    def side(user: str) -> str:
        fraction = stable_fraction(journey("re-engagement").pk, contact_of(world.ws, user).pk, entry, "subject-test")
        return "A" if fraction < 0.5 else "B"

    pool: list[str] = []
    while len({side(u) for u in pool}) < 2 or len(pool) < 3:
        batch = [f"quiet{len(pool) + i}" for i in range(4)]
        world.send(*[person(u) for u in batch])
        pool += batch
    ann = next(u for u in pool if side(u) == "A")
    bob = next(u for u in pool if side(u) == "B")
    cy = next(u for u in pool if u not in (ann, bob))
    world.send(person(bob, zone=NEW_YORK))
    world.run_until(day(30))
    for other in pool:
        if other not in (ann, bob, cy):
            world.visit(other, "https://www.acmewealth.example/insights")
    world.run_until(day(61, 9))
    assert states("re-engagement") == {ann: "active", bob: "active", cy: "active"}

    world.run_until(day(64, 12))
    [ann_mail] = world.inbox(f"{ann}@harbor-dental.example")
    world.click(ann_mail, user=ann)
    assert states("re-engagement")[ann] == "converted"
    world.run_until(day(71, 12))
    world.click(world.inbox(f"{cy}@harbor-dental.example")[-1], user=cy)
    world.run_until(day(80))

    subject = {"A": "Still thinking about retirement?", "B": f"{cy.capitalize()}, is retirement still on your mind?"}
    last = "Should we stop writing?"
    assert [(m.subject, m.local(LONDON)) for m in world.inbox(f"{ann}@harbor-dental.example")] == [
        (subject["A"], (64, "10:00"))]
    assert [(m.subject, m.local(NEW_YORK)) for m in world.inbox(f"{bob}@harbor-dental.example")] == [
        (f"{bob.capitalize()}, is retirement still on your mind?", (64, "10:00")), (last, (71, "10:00"))]
    assert [(m.subject, m.local(LONDON)) for m in world.inbox(f"{cy}@harbor-dental.example")] == [
        (subject[side(cy)], (64, "10:00")), (last, (71, "10:00"))]
    others = [u for u in pool if u not in (ann, bob, cy)]
    assert not any(world.inbox(f"{u}@harbor-dental.example") for u in others), "seen on day 30: not quiet long enough"
    assert states("re-engagement") == {ann: "converted", bob: "completed", cy: "converted"}

    bob_contact, cy_contact = contact_of(world.ws, bob), contact_of(world.ws, cy)
    assert bob_contact.traits["email_status"] == "sunset" and "email_status" not in cy_contact.traits
    sunset = SegmentMember.objects.filter(segment__slug="sunset")
    assert list(sunset.values_list("contact__user_id", flat=True)) == [bob]
    made = journey_enroll(journey=journey("stay-in-touch"), contacts=[bob_contact, cy_contact], actor="test")
    assert [e.contact_id for e in made] == [cy_contact.pk], "a sunset lead is not mailed any more"


# --- 6. recycled leads --------------------------------------------------------------------------------

def test_recycled_leads_are_nurtured_until_they_requalify_or_their_return_date_brings_them_back(world, advisor):
    """Ann and Bob ask to be contacted by sales, become MQLs and go to the advisor, who recycles
    both with a return date of April 1 (day 30). A week later, on Monday at 10:00 their time,
    both get the check-in. Ann asks for sales again on day 12: she qualifies again, goes back to
    the advisor and gets nothing more. Bob gets the market outlook two weeks after the check-in;
    on his return date lifecycle makes him an MQL again and the goal takes him out before the
    third email."""
    world.send(person("ann", title="VP Finance"), person("bob", zone=NEW_YORK))
    world.send(track("ann", "Contact Sales"), track("bob", "Contact Sales"))
    for user in ("ann", "bob"):
        contact = contact_of(world.ws, user)
        assert (contact.lifecycle_stage, contact.owner_id) == ("marketing_qualified", advisor.pk)
        lead_recycle(contact=contact, user=advisor, reason="Not before the summer", return_date=dt.date(2026, 4, 1))
    world.work()
    assert states("recycled-nurture") == {"ann": "active", "bob": "active"}

    world.run_until(day(12, 11))
    world.send(track("ann", "Contact Sales"))
    assert states("recycled-nurture")["ann"] == "converted"
    world.run_until(day(40))

    checkin, outlook = "Is now a better time?", "This quarter's market outlook"
    assert [(m.subject, m.local(LONDON)) for m in world.inbox("ann@harbor-dental.example")] == [(checkin, (7, "10:00"))]
    assert [(m.subject, m.local(NEW_YORK)) for m in world.inbox("bob@harbor-dental.example")] == [
        (checkin, (7, "10:00")), (outlook, (21, "10:00"))]
    assert states("recycled-nurture") == {"ann": "converted", "bob": "converted"}
    ends = dict(Enrollment.objects.filter(journey__slug="recycled-nurture")
                .values_list("contact__user_id", "end_reason"))
    assert ends == {"ann": "goal: Back with sales", "bob": "goal: Back with sales"}
    returns = dict(StageChange.objects.filter(to_stage="marketing_qualified", from_stage="recycled")
                   .values_list("contact__user_id", "actor"))
    assert returns == {"ann": "rule:hot-event", "bob": "system:return-date"}
    bob = contact_of(world.ws, "bob")
    assert bob.lifecycle_stage == "marketing_qualified" and bob.owner_id == advisor.pk
    assert Enrollment.objects.get(journey__slug="recycled-nurture", contact=bob).ended_at == dt.datetime(
        2026, 4, 1, tzinfo=UTC), "out on the return date itself"


# --- 7. client onboarding and retention ---------------------------------------------------------------

def test_new_clients_get_the_welcome_series_usage_nudges_and_renewal_reminders(world, advisor):
    """Ann (London, annual review on April 20), Bob (New York, no date yet) and Cy become clients
    on Monday afternoon; Bob through his advisor, who closes the deal. Each is welcomed at once and
    shown the portal on Thursday at 10:00. Ann signs in to the portal; Bob does not: the next
    Tuesday at 10:00 she is shown the goal planner, he is offered help and his advisor gets a task
    to call him. Ann is reminded of her review 30 days before (March 21, at 10:00 GMT) and 7 days
    before (April 13, at 10:00 BST); Bob, without a date, is done. Cy churns on day 6 and gets
    nothing after it."""
    world.send(person("ann", renewal_date="2026-04-20"), person("bob", zone=NEW_YORK), person("cy"))
    world.send(track("bob", "Contact Sales"))
    assert contact_of(world.ws, "bob").owner_id == advisor.pk
    world.run_until(day(0, 15))
    for user in ("ann", "cy"):
        contact_stage_set(contact=contact_of(world.ws, user), to_stage="customer", reason="signed", actor="test")
    lead_advance(contact=contact_of(world.ws, "bob"), user=advisor, to_stage="customer")
    world.work()
    world.run_until(day(4, 18))
    world.send(track("ann", "Signed In"))
    world.run_until(day(6))
    contact_stage_set(contact=contact_of(world.ws, "cy"), to_stage="churned", reason="left", actor="test")
    world.run_until(day(43))

    welcome = ("Welcome to Acme Wealth", (0, "15:00"))
    portal = ("Set up your client portal in five minutes", (3, "10:00"))
    assert [(m.subject, m.local(LONDON)) for m in world.inbox("ann@harbor-dental.example")] == [
        welcome, portal, ("Try the goal planner", (8, "10:00")),
        ("Your annual review is coming up", (19, "10:00")), ("One week to your annual review", (42, "10:00"))]
    assert [(m.subject, m.local(NEW_YORK)) for m in world.inbox("bob@harbor-dental.example")] == [
        ("Welcome to Acme Wealth", (0, "10:00")), portal, ("Need a hand getting started?", (8, "10:00"))]
    assert [(m.subject, m.local(LONDON)) for m in world.inbox("cy@harbor-dental.example")] == [welcome, portal]
    assert "2026-04-20" in world.inbox("ann@harbor-dental.example")[-1].html
    assert states("customer-onboarding") == {"ann": "completed", "bob": "completed", "cy": "exited"}

    [task] = SalesAlert.objects.filter(context__journey__slug="customer-onboarding")
    assert (task.user_id, task.contact.user_id, task.created_at) == (advisor.pk, "bob", day(8, 10, zone=NEW_YORK))
    assert task.context["journey"]["task"] == "Call to walk them through the portal"
