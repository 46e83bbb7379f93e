"""A marketer builds a journey in the form editor of a real browser (no JSON), publishes it, and
sees its graph with the people on each node as they move along."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip, log_in, make_workspace, off_loop

from leadflow.core import clock as clock_module
from leadflow.core.services import user_create
from leadflow.journeys.engine import journeys_run_due
from leadflow.journeys.models import Journey

from journey_helpers import apply, identify, send, template, track

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = "/tmp/leadflow-journey-graph.png"


def test_build_publish_and_watch_a_journey(live_server):
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    clock = clock_module.FrozenClock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc))

    def setup():
        keys = make_workspace("Journeys")
        user_create(username="mara", password="correct-horse-battery", workspace=keys.workspace, role="marketer")
        template(keys, "thanks")
        send(keys, *[identify(f"u{n}", email=f"p{n}@acme.example") for n in range(3)])
        return keys

    def downloads():
        send(keys, *[track(f"u{n}", "Asset Downloaded") for n in range(3)])

    def a_day_later():
        journeys_run_due(now=clock.advance(days=1, minutes=1))

    with clock_module.use(clock):
        keys = off_loop(setup)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                log_in(page, live_server.url, "mara", "correct-horse-battery")
                page.get_by_role("link", name="Journeys").click()
                page.get_by_role("link", name="New journey").click()

                page.locator("input[name=name]").fill("Guide nurture")
                trigger = page.locator("[data-row=triggers]").first
                trigger.get_by_label("Event name", exact=True).fill("Asset Downloaded")
                first = page.locator("[data-row=nodes]").nth(0)
                first.get_by_label("Id", exact=True).fill("wait-1d")
                first.get_by_label("Days", exact=True).fill("1")
                first.get_by_label("Then go to", exact=True).fill("thanks")
                page.get_by_role("button", name="Add a step").click()
                second = page.locator("[data-row=nodes]").nth(1)
                second.get_by_label("Type", exact=True).select_option("send_email")
                second.get_by_label("Id", exact=True).fill("thanks")
                second.get_by_label("Template", exact=True).select_option("thanks")
                page.screenshot(path="/tmp/leadflow-journey-editor.png", full_page=True)
                page.get_by_role("button", name="Save journey").click()

                expect(page.get_by_role("heading", level=1)).to_have_text("Guide nurture")
                expect(page.get_by_test_id("pending")).to_contain_text("Version 1 is saved but not published")
                expect(page.get_by_test_id("journey-status")).to_have_text("Draft")
                page.get_by_role("button", name="Publish version 1").click()
                expect(page.get_by_test_id("journey-status")).to_have_text("Live")
                expect(page.get_by_test_id("node-wait-1d")).to_contain_text("0 waiting · 0 passed")

                off_loop(downloads)
                page.reload()
                expect(page.get_by_test_id("node-wait-1d")).to_contain_text("3 waiting · 0 passed")
                expect(page.get_by_test_id("numbers")).to_contain_text(re.compile(r"\b3\s*in the journey now"))

                off_loop(a_day_later)
                page.reload()
                expect(page.get_by_test_id("node-wait-1d")).to_contain_text("0 waiting · 3 passed")
                expect(page.get_by_test_id("node-thanks")).to_contain_text("0 waiting · 3 passed")
                expect(page.get_by_test_id("node-thanks")).to_contain_text("0 sent · 0 clicks · 0 unsubs")
                page.screenshot(path=SCREENSHOT, full_page=True)

                page.get_by_test_id("node-wait-1d").click()
                expect(page.get_by_test_id("people")).to_contain_text("Nobody here.")
                page.get_by_role("link", name="Passed").click()
                expect(page.get_by_test_id("people")).to_contain_text("p2@acme.example")
            finally:
                browser.close()

    def stored():
        journey = Journey.objects.get(workspace=keys.workspace, name="Guide nurture")
        return journey.status, journey.version.definition

    status, definition = off_loop(stored)
    assert status == "live"
    assert definition["triggers"] == [{"event": "Asset Downloaded"}]
    assert definition["nodes"] == [{"id": "wait-1d", "next": "thanks", "type": "wait", "days": 1.0},
                                   {"id": "thanks", "type": "send_email", "template": "thanks"}]


def test_an_unchanged_save_keeps_an_advanced_entry_filter(live_server):
    """The "who may enter" condition shown in the advanced (JSON) box survives a save in which the
    marketer changes nothing: "Nothing changed", and the stored definition keeps its filter."""
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    entry = {"all": [{"field": "lifecycle_stage", "op": "in", "value": ["subscriber", "lead"]},
                     {"field": "traits.plan", "op": "neq", "value": "free"}]}

    def setup():
        keys = make_workspace("Journeys")
        user_create(username="mara", password="correct-horse-battery", workspace=keys.workspace, role="marketer")
        template(keys, "thanks")
        journey = apply(keys, {"name": "Guide nurture", "slug": "guide", "entry": entry,
                               "triggers": [{"event": "Asset Downloaded"}],
                               "nodes": [{"id": "thanks", "type": "send_email", "template": "thanks"}]})
        return journey.pk, journey.version.definition

    journey_id, before = off_loop(setup)
    assert before["entry"] == {**entry, "version": 1}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            log_in(page, live_server.url, "mara", "correct-horse-battery")
            page.goto(f"{live_server.url}/journeys/{journey_id}/edit/")
            expect(page.get_by_label("Who may enter: kind")).to_have_value("json")
            expect(page.get_by_label("Who may enter: filter JSON")).to_be_visible()
            expect(page.get_by_label("Who may enter: filter JSON")).to_have_value(re.compile(r'"traits\.plan"'))
            page.get_by_role("button", name="Save as version 2").click()
            expect(page.locator(".messages")).to_contain_text("Nothing changed: version 1 is the same.")
            expect(page.get_by_role("heading", level=1)).to_have_text("Guide nurture")
        finally:
            browser.close()

    def stored():
        journey = Journey.objects.get(pk=journey_id)
        return list(journey.versions.values_list("number", flat=True)), journey.version.definition

    numbers, after = off_loop(stored)
    assert numbers == [1] and after == before


def test_a_dry_run_from_the_journey_page(live_server):
    """Dry run on the journey page: a hypothetical person's events typed as lines, the timeline
    with the email on its day, and nothing kept."""
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    from leadflow.journeys.models import Enrollment
    from leadflow.messaging.models import Message

    clock = clock_module.FrozenClock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc))

    def setup():
        keys = make_workspace("Journeys")
        user_create(username="ana", password="correct-horse-battery", workspace=keys.workspace, role="analyst")
        template(keys, "thanks", subject="Thanks, {{ contact.first_name }}")
        journey = apply(keys, {"name": "Guide nurture", "slug": "guide",
                               "triggers": [{"event": "Asset Downloaded"}],
                               "nodes": [{"id": "wait-2d", "type": "wait", "days": 2, "next": "thanks"},
                                         {"id": "thanks", "type": "send_email", "template": "thanks"}]})
        return journey.pk

    with clock_module.use(clock):
        journey_id = off_loop(setup)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                log_in(page, live_server.url, "ana", "correct-horse-battery")
                page.goto(f"{live_server.url}/journeys/{journey_id}/")
                page.get_by_role("link", name="Dry run").click()
                events = page.get_by_label("Events (one a line: when, the event, its properties)")
                page.get_by_label("Traits (name = value, one a line)").fill("first_name = Ann\ntimezone = Europe/Paris")
                events.fill("1d Asset Downloaded")
                page.get_by_label("Days to follow").fill("10")
                page.get_by_role("button", name="Run", exact=True).last.click()
                timeline = page.get_by_test_id("timeline")
                expect(timeline.locator("tr[data-kind=sent]")).to_contain_text("“Thanks, Ann”")
                expect(timeline.locator("tr[data-kind=sent]")).to_contain_text("Thu 2026-03-05 10:00")
                expect(page.get_by_test_id("dry-run-summary")).to_contain_text("1 email")
                page.screenshot(path="/tmp/leadflow-journey-dry-run.png", full_page=True)
                events.fill("tomorrow Asset Downloaded")
                page.get_by_role("button", name="Run", exact=True).last.click()
                expect(page.get_by_test_id("dry-run-error")).to_contain_text("events, line 1: 'tomorrow' is neither")
            finally:
                browser.close()

    assert off_loop(lambda: (Enrollment.objects.count(), Message.objects.count())) == (0, 0)
