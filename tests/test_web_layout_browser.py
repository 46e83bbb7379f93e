"""Page layout in a real browser at laptop widths: every top navigation link can be clicked, the
email pages keep their sub-navigation, and long DNS record values stay inside the page."""

from __future__ import annotations

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip, log_in, make_workspace, off_loop

from leadflow.core.services import user_create
from leadflow.messaging.sending import sending_domain_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct-horse-battery"


def _admin(name: str = "My workspace") -> dict:
    keys = make_workspace(name)
    user_create(username="admin", password=PASSWORD, workspace=keys.workspace, role="admin")
    domain = sending_domain_create(workspace=keys.workspace, domain="acmewealth.example")
    return {"workspace": keys.workspace.pk, "domain": domain.pk}


def _log_in(page, url: str) -> None:
    log_in(page, url, "admin", PASSWORD)


# What is drawn at the middle of an element: the element itself (or something inside it) when
# nothing covers it and it is not scrolled out of its box.
HIT = """el => { const r = el.getBoundingClientRect();
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const top = document.elementFromPoint(x, y);
  return {inside: x >= 0 && y >= 0 && x <= window.innerWidth && y <= window.innerHeight,
          hit: !!top && (top === el || el.contains(top))}; }"""


def test_every_top_navigation_link_can_be_clicked_at_laptop_widths(live_server):
    """QA bug: at 1280 px "Import" and "Settings" sat under the account block."""
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    off_loop(_admin)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            _log_in(page, live_server.url)
            for width in (1280, 1024):
                page.set_viewport_size({"width": width, "height": 800})
                page.goto(f"{live_server.url}/contacts/")
                nav = page.get_by_role("navigation", name="Main")
                for link in nav.get_by_role("link").all():
                    where = link.evaluate(HIT)
                    assert where == {"inside": True, "hit": True}, (width, link.inner_text(), where)
                account = page.locator(".account").bounding_box()
                assert account["x"] + account["width"] <= width
                for name, path in (("Import", "/import/"), ("Settings", "/settings/")):
                    page.goto(f"{live_server.url}/contacts/")
                    # a short timeout: a covered link makes Playwright wait, then fail
                    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click(
                        timeout=3000)
                    expect(page).to_have_url(f"{live_server.url}{path}")
                assert page.evaluate("document.documentElement.scrollWidth") <= width
        finally:
            browser.close()


def test_email_pages_keep_the_subnav_and_dns_values_stay_inside_the_page(live_server):
    """QA bugs: Topics and Messaging settings lost the Email tabs, the settings form had a stray
    grey border, and a DKIM record made the domain page 3,600 px wide."""
    chromium, sync_playwright = browser_or_skip()
    from playwright.sync_api import expect

    made = off_loop(_admin)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            _log_in(page, live_server.url)
            pages = {"/email/consent/topics/": "Topics", "/email/consent/topics/new/": "Topics",
                     "/email/consent/suppressions/": "Suppressions", "/email/sending/": "Sending",
                     "/email/sending/settings/": "Settings", f"/email/sending/domains/{made['domain']}/": "Sending",
                     "/email/sending/domains/new/": "Sending", "/email/sending/servers/new/": "Sending"}
            for path, current in pages.items():
                page.goto(f"{live_server.url}{path}")
                subnav = page.get_by_role("navigation", name="Email")
                for tab in ("Templates", "Layouts", "Approvals", "Review", "Broadcasts", "Suppressions", "Topics",
                            "Sending", "Settings"):
                    expect(subnav.get_by_role("link", name=tab, exact=True)).to_be_visible()
                expect(subnav.locator("[aria-current=page]")).to_have_text(current)
            page.goto(f"{live_server.url}/email/sending/settings/")
            border = page.locator("form.editor > fieldset").evaluate(
                "el => getComputedStyle(el).borderTopWidth + ' ' + getComputedStyle(el).borderTopStyle")
            assert border in ("0px none", "0px solid"), border
            page.goto(f"{live_server.url}/email/sending/domains/{made['domain']}/")
            dkim = page.locator("table.dns-checklist tr", has_text="DKIM").locator("code")
            expect(dkim).to_contain_text("p=")
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            box = dkim.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1280
        finally:
            browser.close()
