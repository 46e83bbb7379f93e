"""A sales rep, in a real browser, finds the hot lead routed to them and accepts it."""

from __future__ import annotations

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip, log_in, make_workspace, off_loop

from leadflow.contacts.models import Contact
from leadflow.core.pipeline import process_pending
from leadflow.core.services import user_create
from leadflow.lifecycle.models import Assignment
from leadflow.lifecycle.services import lifecycle_settings_update
from leadflow.tracking.ingest import events_append

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = "/tmp/leadflow-sales-lead.png"


def test_rep_accepts_a_routed_lead_in_the_browser(live_server):
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    def setup():
        keys = make_workspace("Sales floor")
        rep = user_create(username="rita", password="correct-horse-battery", workspace=keys.workspace,
                          role="sales")
        lifecycle_settings_update(workspace=keys.workspace, changes={"default_pool": [rep.pk]}, actor="test")
        events_append(workspace=keys.workspace, messages=[
            {"type": "page", "anonymousId": "v-1", "name": "Pricing",
             "context": {"page": {"url": "https://acme.example/pricing"}}},
            {"type": "identify", "anonymousId": "v-1",
             "traits": {"email": "bea@prospect.example", "first_name": "Bea", "title": "VP Finance",
                        "company": "Prospect Ltd"}},
            {"type": "track", "anonymousId": "v-1", "event": "Demo Requested"},
        ])
        process_pending()
        return Contact.objects.get(email="bea@prospect.example")

    contact = off_loop(setup)
    assert contact.lifecycle_stage == "marketing_qualified"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            log_in(page, live_server.url, "rita", "correct-horse-battery")
            sales_link = page.get_by_role("link", name="Sales")
            expect(sales_link).to_contain_text("1")  # one unread alert
            sales_link.click()
            expect(page.get_by_role("heading", level=1)).to_have_text("My leads")
            page.locator("table.table").get_by_role("link", name="Bea").click()
            expect(page.locator("main")).to_contain_text("VP Finance")
            expect(page.locator("main")).to_contain_text("acme.example/pricing")
            page.get_by_role("button", name="Accept lead").click()
            expect(page.locator(".messages")).to_contain_text("Lead accepted")
            expect(page.locator("main")).to_contain_text("Sales accepted")
            page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()
    status = off_loop(lambda: Assignment.objects.get(contact_id=contact.pk).status)
    assert status == "accepted"
