"""A marketer writes an email in a real browser: the live preview follows the typing, a dynamic
block is built without JSON, the sample person's stage switches the block, and saving stores it."""

from __future__ import annotations

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip, log_in, make_workspace, off_loop

from leadflow.core.services import user_create
from leadflow.messaging.models import MessagingSettings, Template

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = "/tmp/leadflow-email-editor.png"


def _writer_workspace(name: str) -> int:
    """A workspace with a postal address and mara, a marketer, who writes in it."""
    keys = make_workspace(name)
    user_create(username="mara", password="correct-horse-battery", workspace=keys.workspace, role="marketer")
    MessagingSettings.objects.create(workspace=keys.workspace, postal_address="Acme Inc, 1 Main St")
    return keys.workspace.pk


def test_write_an_email_with_live_preview_and_a_block(live_server):
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    workspace_id = off_loop(lambda: _writer_workspace("Writers"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            log_in(page, live_server.url, "mara", "correct-horse-battery")
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


def test_renaming_a_block_keeps_what_is_typed_in_its_variants(live_server):
    """QA bug: rename block1 → cta, choose the first variant's stage, click into its HTML box and
    type: the box emptied and the saved blocks kept "html": "" for that variant. Renaming again
    after typing must keep everything too."""
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    workspace_id = off_loop(lambda: _writer_workspace("Renamers"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, live_server.url, "mara", "correct-horse-battery")
            page.goto(f"{live_server.url}/email/templates/new/")
            page.get_by_label("Name", exact=True).fill("Block rename")
            page.get_by_label("Subject").fill("Block test")
            page.get_by_label("HTML body").fill('<p>Hi</p>{{ block("cta") }}')
            page.get_by_role("button", name="Add a block").click()
            block = page.locator(".block-row").first
            name = block.get_by_label("block name")
            name.click()
            name.press("Control+a")
            page.keyboard.type("cta")
            block.get_by_label("stage").select_option("customer")
            variant_html = page.locator(".block-row").first.get_by_label("variant HTML").first
            variant_html.click()
            page.keyboard.type("<b>Thanks, customer</b>")
            expect(page.locator(".block-row").first.get_by_label("variant HTML").first).to_have_value(
                "<b>Thanks, customer</b>")
            page.locator(".block-row").first.get_by_label("default HTML").click()
            page.keyboard.type("<b>Start your trial</b>")
            # rename again after typing: nothing typed may be lost
            name = page.locator(".block-row").first.get_by_label("block name")
            name.click()
            name.press("Control+a")
            page.keyboard.type("offer")
            page.get_by_label("HTML body").click()
            page.get_by_label("HTML body").fill('<p>Hi</p>{{ block("offer") }}')
            block = page.locator(".block-row").first
            expect(block.get_by_label("variant HTML").first).to_have_value("<b>Thanks, customer</b>")
            expect(block.get_by_label("default HTML")).to_have_value("<b>Start your trial</b>")
            # a second block cannot take a name in use: it keeps its own and says why
            page.get_by_role("button", name="Add a block").click()
            second = page.locator(".block-row").nth(1)
            second.get_by_label("block name").fill("offer")
            second.get_by_label("default HTML").click()
            expect(second.get_by_role("alert")).to_contain_text("already a block named “offer”")
            expect(second.get_by_label("block name")).to_have_value("block1")
            second.get_by_role("button", name="Remove block").click()
            expect(page.locator(".block-row")).to_have_count(1)
            page.get_by_role("button", name="Create template").click()
            expect(page.locator("[data-testid=version-state]")).to_contain_text("Editing version 1, a draft")
        finally:
            browser.close()

    def stored():
        template = Template.objects.get(workspace_id=workspace_id, name="Block rename")
        return template.versions.get(number=1)

    version = off_loop(stored)
    assert list(version.blocks) == ["offer"]
    offer = version.blocks["offer"]
    assert offer["variants"][0]["when"] == "customer"
    assert offer["variants"][0]["html"] == "<b>Thanks, customer</b>"
    assert offer["default"]["html"] == "<b>Start your trial</b>"
