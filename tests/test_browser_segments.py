"""A marketer builds a segment in a real browser without writing JSON, watching the live count."""

from __future__ import annotations

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip, log_in, make_workspace, off_loop

from leadflow.core.pipeline import process_pending
from leadflow.core.services import user_create
from leadflow.segments.models import Segment, SegmentMember
from leadflow.tracking.ingest import events_append

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = "/tmp/leadflow-segment-builder.png"


def test_build_a_segment_with_the_builder(live_server):
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    def setup():
        keys = make_workspace("Builders")
        user_create(username="mara", password="correct-horse-battery", workspace=keys.workspace, role="marketer")
        messages = [{"type": "identify", "userId": f"u{n}",
                     "traits": {"email": f"p{n}@acme.example", "industry": "SaaS" if n < 4 else "Retail"}}
                    for n in range(8)]
        messages += [{"type": "page", "userId": f"u{n}", "name": "Pricing",
                      "context": {"page": {"url": "https://acme.example/pricing"}}} for n in (0, 1, 5)]
        events_append(workspace=keys.workspace, messages=messages)
        process_pending()
        return keys.workspace.pk

    workspace_id = off_loop(setup)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            log_in(page, live_server.url, "mara", "correct-horse-battery")
            page.goto(f"{live_server.url}/segments/new/")
            page.get_by_label("Name").fill("SaaS on pricing")
            row = page.locator(".cond-row").first
            row.get_by_label("type").select_option("trait")
            row.get_by_label("name").fill("industry")
            row.get_by_label("value").fill("SaaS")
            count = page.get_by_test_id("preview-count")
            expect(count).to_have_text("4 contacts match")
            page.get_by_label("condition type").select_option("visited")
            page.get_by_role("button", name="Add condition").click()
            expect(count).to_have_text("2 contacts match")  # u0 and u1 are SaaS and saw pricing
            page.screenshot(path=SCREENSHOT, full_page=True)
            page.get_by_role("button", name="Create segment").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("SaaS on pricing")
        finally:
            browser.close()

    def stored():
        segment = Segment.objects.get(workspace_id=workspace_id, name="SaaS on pricing")
        emails = set(SegmentMember.objects.filter(segment=segment).values_list("contact__email", flat=True))
        return segment.definition, emails

    definition, emails = off_loop(stored)
    assert emails == {"p0@acme.example", "p1@acme.example"}
    assert definition["all"][0] == {"field": "traits.industry", "op": "eq", "value": "SaaS"}
    assert definition["all"][1]["visited"] == "/pricing*"
