"""A marketer writes an email in a real browser: the live preview follows the typing, a dynamic
block is built without JSON, the sample person's stage switches the block, and saving stores it."""

from __future__ import annotations

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip, make_workspace, off_loop

from leadflow.core.services import user_create
from leadflow.messaging.models import MessagingSettings, Template

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = "/tmp/leadflow-email-editor.png"


def test_write_an_email_with_live_preview_and_a_block(live_server):
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    def setup():
        keys = make_workspace("Writers")
        user_create(username="mara", password="correct-horse-battery", workspace=keys.workspace, role="marketer")
        MessagingSettings.objects.create(workspace=keys.workspace, postal_address="Acme Inc, 1 Main St")
        return keys.workspace.pk

    workspace_id = off_loop(setup)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{live_server.url}/login/")
            page.get_by_label("Username").fill("mara")
            page.get_by_label("Password").fill("correct-horse-battery")
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="Email", exact=True).click()
            page.get_by_role("link", name="New template").click()
            page.get_by_label("Name", exact=True).fill("Onboarding")
            page.get_by_label("Subject").fill("Welcome, {{ contact.first_name }}")
            frame = page.frame_locator("[data-preview-frame]")
            expect(page.locator("[data-preview-subject]")).to_have_text("Welcome, Ada")
            page.get_by_label("HTML body").fill('<p>Dear {{ contact.first_name }},</p>\n{{ block("block1") }}')
            # the preview shows an error until the block exists
            expect(page.locator("[data-preview-error]")).to_contain_text("block1")
            page.get_by_role("button", name="Add a block").click()
            block = page.locator(".block-row").first
            block.get_by_label("stage").select_option("customer")
            block.get_by_label("variant HTML").fill("<b>Thanks for being a customer</b>")
            block.get_by_label("default HTML").fill("<b>Start your trial</b>")
            expect(frame.locator("body")).to_contain_text("Dear Ada,")
            expect(frame.locator("b")).to_have_text("Start your trial")
            page.locator("#preview-stage").select_option("customer")
            expect(frame.locator("b")).to_have_text("Thanks for being a customer")
            page.screenshot(path=SCREENSHOT, full_page=True)
            page.get_by_role("button", name="Create template").click()
            expect(page.locator("[data-testid=version-state]")).to_contain_text("Editing version 1, a draft")
        finally:
            browser.close()

    def stored():
        template = Template.objects.get(workspace_id=workspace_id, name="Onboarding")
        return template.versions.get(number=1)

    version = off_loop(stored)
    assert version.subject == "Welcome, {{ contact.first_name }}"
    assert version.blocks["block1"]["by"] == "stage"
    assert version.blocks["block1"]["variants"][0]["when"] == "customer"
    assert version.blocks["block1"]["default"]["html"] == "<b>Start your trial</b>"
