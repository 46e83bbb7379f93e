"""A visitor comes from a LinkedIn ad, fills in an embedded form, and the marketer sees one profile.

Drives Debian's chromium through Playwright against the live server: the tracking script on a
separate "customer site" (another origin), the hosted form in its iframe, the magnet delivery, the
worker, then the marketer's login and the contact's profile page.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import CHROMIUM_ARGS, browser_or_skip as _browser_or_skip, log_in, make_workspace, off_loop as _off_loop

from leadflow.contacts.models import Contact
from leadflow.core.pipeline import process_pending
from leadflow.core.services import user_create
from leadflow.tracking.forms import form_save, magnet_save
from leadflow.tracking.models import Event

pytestmark = pytest.mark.browser

CONSENT = "Yes, LeadFlow may email me about nurture programs. I can unsubscribe at any time."
SCREENSHOT = "/tmp/leadflow-profile.png"


class _CustomerSite:
    """The marketer's own web site: one static page on another origin, served from a thread."""

    def __init__(self, html: str):
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_embedded_form_to_profile(live_server, transactional_db):
    chromium, sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    keys = make_workspace("Acme Browser")
    workspace = keys.workspace
    magnet = magnet_save(workspace=workspace, slug="", name="Nurture Playbook", kind="ebook",
                         delivery_url="https://acme.example/playbook.pdf")
    form = form_save(workspace=workspace, slug="playbook", name="Get the playbook",
                     fields=[{"name": "email", "label": "Work email", "type": "email", "required": True},
                             {"name": "first_name", "label": "First name", "type": "text"}],
                     consent_text=CONSENT, consent_required=True, consent_topic="marketing",
                     lead_magnet=magnet.pk, submit_label="Send me the playbook",
                     success_message="Thanks, it's on its way!")
    user_create(username="maria", password="correct-horse-battery", workspace=workspace, role="admin")

    site_html = f"""<!doctype html><html><head><title>Acme pricing</title>
<script src="{live_server.url}/t/lf.js" data-write-key="{keys.write_key}" async></script></head>
<body><h1>Acme</h1><div data-leadflow-form="{workspace.slug}/{form.slug}"></div></body></html>"""

    with _CustomerSite(site_html) as site, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            landing = f"{site.url}?utm_source=linkedin&utm_medium=paid-social&utm_campaign=q2-launch"
            # The page view is stored before anything else happens: wait for its answer.
            with page.expect_response(lambda r: r.url.startswith(f"{live_server.url}/v1/page")) as seen:
                page.goto(landing)
            assert seen.value.status == 200

            frame = page.frame_locator(f'iframe[src*="/f/{workspace.slug}/{form.slug}/"]')
            frame.get_by_label("Work email").fill("nina@prospect.example")
            frame.get_by_label("First name").fill("Nina")
            frame.get_by_label(CONSENT).check()
            frame.get_by_role("button", name="Send me the playbook").click()
            expect(frame.get_by_role("heading")).to_have_text("Thanks, it's on its way!")
            expect(frame.get_by_role("link", name="Get “Nurture Playbook”")).to_have_attribute(
                "href", re.compile(r"^/m/"))

            processed = _off_loop(process_pending)
            assert processed >= 3  # the page view, the form's identify and its Form Submitted

            def stored():
                contacts = list(Contact.objects.filter(workspace=workspace))
                events = set(Event.objects.filter(workspace=workspace).values_list("type", "contact_id"))
                return contacts, events, Event.objects.filter(workspace=workspace).count()

            contacts, events, event_count = _off_loop(stored)
            assert len(contacts) == 1  # one person: the page view and the form joined by anonymous id
            contact = contacts[0]
            assert events == {("page", contact.pk), ("identify", contact.pk), ("track", contact.pk)}

            log_in(page, live_server.url, "maria", "correct-horse-battery")
            expect(page).to_have_url(f"{live_server.url}/contacts/")
            page.get_by_role("link", name="Nina").click()
            expect(page).to_have_url(f"{live_server.url}/contacts/{contact.pk}/")

            body = page.locator("main")
            expect(page.get_by_role("heading", level=1)).to_have_text("Nina")
            expect(body).to_contain_text("nina@prospect.example")
            expect(body).to_contain_text("Paid social")
            expect(body).to_contain_text("q2-launch")
            expect(body).to_contain_text(CONSENT)
            timeline = page.locator("table.timeline tbody tr")
            expect(timeline).to_have_count(event_count)  # the visit, the form, and the stage it set
            expect(timeline.filter(has_text="Form Submitted")).to_have_count(1)
            page_view = timeline.filter(has=page.locator(".type-page"))
            expect(page_view).to_have_count(1)
            expect(page_view).to_contain_text("utm_campaign=q2-launch")  # the landing URL
            page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()
