"""Journey pages: the list's key numbers, the graph with the figures on each node, the people at a
node, the form editor (rows in, a definition out, errors on the row, nothing lost on the way back),
publish as its own step, pause/resume/archive, roles, a contact's journeys on the profile; and the
layout and editor functions on their own."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from django.test import Client

from leadflow.journeys.yamlio import yaml_load_all
from leadflow.core.services import user_create
from leadflow.journeys import language as lang
from leadflow.journeys.demo import demo_apply, examples_load
from leadflow.journeys.models import Enrollment, Journey
from leadflow.messaging.events import message_event_record
from leadflow.messaging.models import Message
from leadflow.web import journey_editor as editor
from leadflow.web.journey_graph import GAP_Y, NODE_H, journey_graph

from journey_helpers import apply, contact_of, identify, send, template, tick, track

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "journeys"

NURTURE = {
    "name": "Ebook nurture", "slug": "ebook", "reentry": "once",
    "triggers": [{"event": "Asset Downloaded", "where": [{"field": "properties.magnet_slug", "op": "eq",
                                                          "value": "retirement-guide"}]}],
    "goals": [{"name": "Bought", "event": "Order Completed"}],
    "nodes": [{"id": "wait-2d", "type": "wait", "days": 2, "next": "thanks"},
              {"id": "thanks", "type": "send_email", "template": "thanks", "next": "pro"},
              {"id": "pro", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
               "yes": "wait-3d", "no": None},
              {"id": "wait-3d", "type": "wait", "days": 3}],
}


def member(ws, role: str, name: str | None = None) -> Client:
    c = Client()
    c.force_login(user_create(username=name or role, password=f"pw-{role}-123", workspace=ws.workspace, role=role))
    return c


@pytest.fixture
def marketer(ws):
    return member(ws, "marketer", "mara")


def run_nurture(ws, clock):
    """Four people download the guide; two days on, everyone got the thank-you (u0 and u1 clicked,
    u1 unsubscribed), the pro ones (u0, u2) wait three more days, u3 bought."""
    template(ws, "thanks")
    journey = apply(ws, NURTURE)
    send(ws, *[identify(f"u{i}", email=f"u{i}@example.com", plan="pro" if i % 2 == 0 else "free") for i in range(4)])
    send(ws, *[track(f"u{i}", "Asset Downloaded", magnet_slug="retirement-guide") for i in range(4)])
    tick(clock, days=2)
    Message.objects.filter(source=f"journey:{journey.pk}:thanks").update(status="sent", sent_at=clock.current)
    for message in Message.objects.filter(contact__user_id__in=["u0", "u1"]):
        message_event_record(message=message, kind="clicked", url="https://acme.example/blog")
    message_event_record(message=Message.objects.get(contact__user_id="u1"), kind="unsubscribed")
    return journey


pytestmark = pytest.mark.django_db


# --- list and journey page ------------------------------------------------------------------------

def test_the_list_shows_status_and_key_numbers(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    send(ws, track("u2", "Order Completed"))
    page = marketer.get("/journeys/").content.decode()
    row = re.search(r'<tr data-journey="ebook">(.*?)</tr>', page, re.S).group(1)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells[1:] == ["Live", "1", "4", "1", "25%", "4", "v1"], cells
    assert "Journeys</a>" in page and 'aria-current="page">Journeys' in page
    assert journey.name in marketer.get("/journeys/?status=live").content.decode()
    assert "No paused journeys" in marketer.get("/journeys/?status=paused").content.decode()


def test_the_journey_page_draws_the_graph_with_figures_and_email_results(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    page = marketer.get(f"/journeys/{journey.pk}/").content.decode()
    svg = page[page.index("<svg"):page.index("</svg>")]

    def box(node_id: str) -> str:
        return re.search(rf'data-testid="node-{node_id}">(.*?)</a>', svg, re.S).group(1)

    assert "0 waiting · 4 passed" in box("wait-2d") and "Wait 2d" in box("wait-2d")
    assert "4 sent · 2 clicks · 1 unsubs" in box("thanks") and "Email thanks" in box("thanks")
    assert "0 waiting · 4 passed" in box("pro")
    assert "2 waiting · 0 passed" in box("wait-3d")
    labels = re.findall(r'<text class="jedge-label"[^>]*>([^<]*)</text>', svg)
    assert "yes · 2" in labels and "no · 2" in labels, labels
    arrows = re.findall(r'data-from="([^"]*)" data-to="([^"]*)"', svg)
    assert ("wait-2d", "thanks") in arrows and ("pro", "wait-3d") in arrows and ("pro", "") in arrows
    y = {n: float(re.search(rf'node-{n}">\s*<g[^>]*translate\([\d.]+,([\d.]+)\)', svg).group(1))
         for n in ("wait-2d", "thanks", "pro", "wait-3d")}
    assert y["thanks"] - y["wait-2d"] == NODE_H + GAP_Y and y["wait-3d"] > y["pro"] > y["thanks"]
    assert 'href="?node=wait-3d#people"' in svg
    numbers = page[page.index('data-testid="numbers"'):page.index('data-testid="graph-card"')]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", numbers.split(">", 1)[1]))
    assert text.strip().startswith("2 in the journey now 4 entered 0 converted (0%) 2 completed 0 exited 4 emails sent")


def test_clicking_a_node_lists_its_people(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    people = marketer.get(f"/journeys/{journey.pk}/?node=wait-3d").content.decode()
    section = people[people.index('id="people"'):]
    assert "u0@example.com" in section and "u2@example.com" in section and "u1@example.com" not in section
    passed = marketer.get(f"/journeys/{journey.pk}/?node=thanks&list=passed").content.decode()
    assert all(f"u{i}@example.com" in passed[passed.index('id="people"'):] for i in range(4))
    completed = marketer.get(f"/journeys/{journey.pk}/?node=pro&list=completed").content.decode()
    section = completed[completed.index('id="people"'):]
    assert "u1@example.com" in section and "u3@example.com" in section and "u0@example.com" not in section


def test_the_contact_profile_shows_their_journeys_and_history(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    send(ws, track("u0", "Order Completed"))
    page = marketer.get(f"/contacts/{contact_of(ws, 'u0').pk}/").content.decode()
    section = page[page.index('data-testid="contact-journeys"'):]
    section = section[:section.index("</section>")]
    assert journey.name in section and "Converted" in section and "goal: Bought" in section
    assert "5 steps" in section and "outcome yes" in section and "template thanks" in section
    other = marketer.get(f"/contacts/{contact_of(ws, 'u2').pk}/").content.decode()
    assert "Wait 3d" not in other and "wait-3d (wait)" in other and "In the journey" in other


# --- the editor -----------------------------------------------------------------------------------

def rows_post(**top) -> dict:
    """The editor's post for: Asset Downloaded (magnet = retirement-guide) → wait 2 days → thanks →
    branch on plan; goal Bought."""
    data = {
        "action": "save", "name": "Guide nurture", "description": "", "reentry": "once", "reentry_days": "",
        "cap_emails": "1", "cap_days": "3", "start": "",
        "entry-mode": "", "triggers-TOTAL": "1", "goals-TOTAL": "1", "exits-TOTAL": "0", "nodes-TOTAL": "4",
        "triggers-0-kind": "event", "triggers-0-event": "Asset Downloaded",
        "triggers-0-where": "magnet_slug = retirement-guide",
        "goals-0-kind": "goal", "goals-0-name": "Bought", "goals-0-when-mode": "event",
        "goals-0-when-event": "Order Completed",
        "nodes-0-kind": "wait", "nodes-0-id": "wait-2d", "nodes-0-days": "2", "nodes-0-next": "thanks",
        "nodes-1-kind": "send_email", "nodes-1-id": "thanks", "nodes-1-name": "Thank you",
        "nodes-1-template": "thanks", "nodes-1-next": "pro",
        "nodes-2-kind": "branch", "nodes-2-id": "pro", "nodes-2-if-mode": "field", "nodes-2-if-field": "traits.plan",
        "nodes-2-if-op": "eq", "nodes-2-if-value": "pro", "nodes-2-yes": "", "nodes-2-no": "end",
        "nodes-3-kind": "wait", "nodes-3-id": "", "nodes-3-hours": "", "nodes-3-days": "",
    }
    data.update(top)
    return data


def test_the_editor_saves_rows_as_a_draft_version_and_publishing_is_separate(ws, marketer):
    template(ws, "thanks")
    resp = marketer.post("/journeys/new/", rows_post())
    journey = Journey.objects.get(workspace=ws.workspace, name="Guide nurture")
    assert resp.status_code == 302 and resp["Location"] == f"/journeys/{journey.pk}/"
    assert journey.status == "draft" and journey.version is None
    stored = journey.versions.get().definition
    assert stored == lang.journey_dump(lang.journey_parse({
        "name": "Guide nurture", "slug": journey.slug, "reentry": "once", "cap": {"emails": 1, "days": 3},
        "triggers": [{"event": "Asset Downloaded", "where": [{"field": "properties.magnet_slug", "op": "eq",
                                                              "value": "retirement-guide"}]}],
        "goals": [{"name": "Bought", "event": "Order Completed"}],
        "nodes": [{"id": "wait-2d", "type": "wait", "days": 2, "next": "thanks"},
                  {"id": "thanks", "type": "send_email", "name": "Thank you", "template": "thanks", "next": "pro"},
                  {"id": "pro", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
                   "no": None}]}))
    page = marketer.get(f"/journeys/{journey.pk}/").content.decode()
    assert "Version 1 is saved but not published" in page and "Publish version 1" in page
    assert 'data-testid="findings"' in page
    resp = marketer.post(f"/journeys/{journey.pk}/publish/", {"version": "1"}, follow=True)
    journey.refresh_from_db()
    assert journey.status == "live" and journey.version.number == 1
    assert "Version 1 is published" in resp.content.decode()


def test_editor_errors_land_on_the_row_and_keep_what_was_typed(ws, marketer):
    resp = marketer.post("/journeys/new/", rows_post(**{"nodes-0-days": "two"}))
    page = resp.content.decode()
    assert resp.status_code == 200 and not Journey.objects.exists()
    assert "<code>nodes[0].days</code>: &#x27;two&#x27; is not a number" in page
    assert 'name="nodes-0-days" value="two"' in page and 'value="Order Completed"' in page
    resp = marketer.post("/journeys/new/", rows_post(**{"nodes-0-next": "nowhere"}))
    page = resp.content.decode()
    assert "<code>nodes[0].next</code>: there is no node &#x27;nowhere&#x27;" in page
    assert re.search(r'class="jrow has-error" data-row="nodes" data-index="0"', page)
    assert not Journey.objects.exists()


def test_adding_rows_without_javascript_and_checking_with_the_linter(ws, marketer):
    resp = marketer.post("/journeys/new/", rows_post(action="add-nodes"))
    page = resp.content.decode()
    assert 'name="nodes-TOTAL" value="5"' in page and 'name="nodes-4-kind"' in page
    resp = marketer.post("/journeys/new/", rows_post(**{"action": "refresh", "nodes-3-kind": "send_email"}))
    assert 'name="nodes-3-template"' in resp.content.decode()
    resp = marketer.post("/journeys/new/", rows_post(action="check"))
    page = resp.content.decode()
    assert "unknown_template" in page and "nodes[1].template" in page and not Journey.objects.exists()
    deleted = rows_post(**{"nodes-2-DELETE": "on", "nodes-1-next": ""})
    marketer.post("/journeys/new/", deleted)
    assert [n["id"] for n in Journey.objects.get().versions.get().definition["nodes"]] == ["wait-2d", "thanks"]


def test_editing_a_live_journey_shows_its_rows_saves_a_version_and_can_move_people(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    page = marketer.get(f"/journeys/{journey.pk}/edit/").content.decode()
    assert 'name="nodes-0-id" value="wait-2d"' in page and 'name="triggers-0-where"' in page
    assert "magnet_slug = retirement-guide" in page and 'name="migrate-wait-3d"' in page
    form = editor.state_from_definition(journey.version.definition)
    data = {"action": "save", **post_of(form)}
    data.update({"nodes-3-id": "wait-4d", "nodes-3-days": "4", "nodes-2-yes": "wait-4d", "migrate-wait-3d": "wait-4d"})
    resp = marketer.post(f"/journeys/{journey.pk}/edit/", data)
    assert resp.status_code == 302, resp.content.decode()[:3000]
    version = journey.versions.get(number=2)
    assert version.migrate == {"wait-3d": "wait-4d"} and version.definition["nodes"][3]["days"] == 4
    assert version.definition["triggers"] == journey.version.definition["triggers"], "nothing lost on the way"
    marketer.post(f"/journeys/{journey.pk}/publish/", {"version": "2"})
    assert set(Enrollment.objects.filter(journey=journey, state="active").values_list("node", "version__number")) == {
        ("wait-4d", 2)}
    resp = marketer.post(f"/journeys/{journey.pk}/edit/", {"action": "save", **post_of(
        editor.state_from_definition(journey.versions.get(number=2).definition))}, follow=True)
    assert "Nothing changed: version 2 is the same" in resp.content.decode()


def post_of(state: editor.EditorState) -> dict:
    """What the browser posts for an editor state (the inverse of `state_from_post`)."""
    data = {k: v for k, v in state.top.items() if k != "entry"}
    for part, value in state.top["entry"].items():
        data[f"entry-{part}"] = value
    for section in editor.SECTIONS:
        rows = getattr(state, section)
        data[f"{section}-TOTAL"] = str(len(rows))
        for i, row in enumerate(rows):
            data[f"{section}-{i}-kind"] = row.kind
            for key, value in row.values.items():
                if isinstance(value, dict):
                    data.update({f"{section}-{i}-{key}-{part}": v for part, v in value.items()})
                else:
                    data[f"{section}-{i}-{key}"] = value
    return data


class FormFields(HTMLParser):
    """What a browser posts for the form with `form_id`, read from the page: text and hidden inputs,
    ticked boxes, each select's selected option (else its first), textareas (less the one leading
    newline the HTML parser drops); no buttons (the clicked one is added by the caller), nothing
    disabled, nothing inside a `<template>`."""

    def __init__(self, form_id: str):
        super().__init__(convert_charrefs=True)
        self.form_id, self.inside, self.templates = form_id, False, 0
        self.fields: list[tuple[str, str]] = []
        self.select: dict | None = None
        self.option: dict | None = None
        self.textarea: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and a.get("id") == self.form_id:
            self.inside = True
        if tag == "template":
            self.templates += 1
        if not self.inside or self.templates or "disabled" in a:
            return
        if tag == "input" and a.get("name"):
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "image", "reset", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self.fields.append((a["name"], a.get("value") or ("on" if kind in ("checkbox", "radio") else "")))
        elif tag == "select" and a.get("name"):
            self.select = {"name": a["name"], "first": None, "chosen": None}
        elif tag == "option" and self.select is not None:
            self.option = {"value": a.get("value"), "text": "", "selected": "selected" in a}
        elif tag == "textarea" and a.get("name"):
            self.textarea = {"name": a["name"], "text": ""}

    def handle_data(self, data):
        if self.option is not None:
            self.option["text"] += data
        if self.textarea is not None:
            self.textarea["text"] += data

    def _option_end(self):
        if self.option is not None and self.select is not None:
            value = self.option["value"] if self.option["value"] is not None else self.option["text"].strip()
            if self.select["first"] is None:
                self.select["first"] = value
            if self.option["selected"]:
                self.select["chosen"] = value
        self.option = None

    def handle_endtag(self, tag):
        if tag == "template":
            self.templates -= 1
        elif tag == "option":
            self._option_end()
        elif tag == "select" and self.select is not None:
            self._option_end()
            chosen = self.select["chosen"] if self.select["chosen"] is not None else self.select["first"]
            if chosen is not None:
                self.fields.append((self.select["name"], chosen))
            self.select = None
        elif tag == "textarea" and self.textarea is not None:
            text = self.textarea["text"]
            self.fields.append((self.textarea["name"], text[1:] if text.startswith("\n") else text))
            self.textarea = None
        elif tag == "form" and self.inside:
            self.inside = False


def form_post(page: str, form_id: str = "journey-editor", **clicked) -> dict[str, list[str]]:
    """The post a browser makes when the form is submitted as it stands (plus the button `clicked`)."""
    parser = FormFields(form_id)
    parser.feed(page)
    assert parser.fields, f"no form {form_id!r} on the page"
    data: dict[str, list[str]] = {}
    for name, value in [*parser.fields, *clicked.items()]:
        data.setdefault(name, []).append(value)
    return data


def test_the_entry_condition_is_posted_under_the_name_the_editor_reads(ws, marketer):
    """The "who may enter" box's fields are named `entry-…` on the page and read back as such: a
    condition chosen there is saved, kept by an unchanged save, and cleared by choosing everyone."""
    from leadflow.segments import services as segment_services

    segment_services.segment_create(workspace=ws.workspace, name="Prospects", kind="dynamic", actor="test",
                                    definition={"version": 1, "field": "traits.plan", "op": "eq", "value": "pro"})
    template(ws, "thanks")
    journey = apply(ws, {**NURTURE, "entry": {"field": "traits.plan", "op": "neq", "value": "free"}})
    page = marketer.get(f"/journeys/{journey.pk}/edit/").content.decode()
    data = form_post(page, action="save")
    assert data["entry-mode"] == ["field"] and data["entry-field"] == ["traits.plan"], sorted(data)
    assert data["entry-op"] == ["neq"] and data["entry-value"] == ["free"]
    resp = marketer.post(f"/journeys/{journey.pk}/edit/", data, follow=True)
    assert "Nothing changed: version 1 is the same" in resp.content.decode()
    data.update({"entry-mode": ["segment"], "entry-segment": ["prospects"]})
    marketer.post(f"/journeys/{journey.pk}/edit/", data)
    assert journey.versions.get(number=2).definition["entry"] == {"in_segment": "prospects", "version": 1}
    page = marketer.get(f"/journeys/{journey.pk}/edit/").content.decode()
    data = form_post(page, action="save")
    assert data["entry-mode"] == ["segment"] and data["entry-segment"] == ["prospects"]
    data["entry-mode"] = [""]
    marketer.post(f"/journeys/{journey.pk}/edit/", data)
    assert journey.versions.get(number=3).definition.get("entry") is None


def test_an_unchanged_save_of_every_shipped_example_changes_nothing(ws, marketer):
    """Each example journey, as `leadflow demo` sets it up, opened in the editor and saved as the
    page stands (the fields the page's form posts, read from the page): "Nothing changed", no new
    version, the same definition. The examples cover every kind of condition the editor shows
    (entry filters with groups in the JSON box, segments, fields, events), switches, splits,
    streams and goals."""
    user_create(username="ada", password="pw-ada-12345", workspace=ws.workspace, role="admin")
    demo_apply(workspace=ws.workspace, actor="test:demo")
    slugs = [data["slug"] for _, data in examples_load().journeys]
    journeys = {j.slug: j for j in Journey.objects.filter(workspace=ws.workspace, slug__in=slugs)}
    assert set(journeys) == set(slugs) and len(slugs) >= 7
    assert any(data.get("entry") for _, data in examples_load().journeys), "an example has an entry filter"
    problems = []
    for slug in slugs:
        journey = journeys[slug]
        before = journey.versions.order_by("-number").first()
        page = marketer.get(f"/journeys/{journey.pk}/edit/").content.decode()
        resp = marketer.post(f"/journeys/{journey.pk}/edit/", form_post(page, action="save"), follow=True)
        text = resp.content.decode()
        latest = journey.versions.order_by("-number").first()
        if f"Nothing changed: version {before.number} is the same" not in text or latest.pk != before.pk:
            error = re.search(r'data-testid="editor-error"><p>(.*?)</p>', text, re.S)
            problems.append((slug, error.group(1) if error else "saved a new version",
                             {k: (before.definition.get(k), latest.definition.get(k)) for k in before.definition
                              if before.definition.get(k) != latest.definition.get(k)}))
    assert not problems, problems


def test_saving_from_the_yaml_box(ws, marketer):
    template(ws, "thanks")
    text = yaml.safe_dump({**NURTURE, "slug": None, "name": "From YAML"}, sort_keys=False).replace("slug: null\n", "")
    resp = marketer.post("/journeys/new/", {"action": "save-advanced", "advanced": text})
    journey = Journey.objects.get(name="From YAML")
    assert resp.status_code == 302 and journey.versions.get().definition["nodes"][0]["id"] == "wait-2d"
    resp = marketer.post(f"/journeys/{journey.pk}/edit/", {"action": "save-advanced", "advanced": "name: [unclosed"})
    assert resp.status_code == 200 and "neither JSON nor YAML" in resp.content.decode()
    resp = marketer.post("/journeys/new/", {"action": "save-advanced", "advanced": yaml.safe_dump(
        {**NURTURE, "slug": journey.slug})})
    assert "exists already" in resp.content.decode() and Journey.objects.count() == 1


def test_the_journey_page_says_who_waits_for_a_sales_rep_and_why(ws, marketer, frozen_clock):
    """With nobody to route leads to, the page names the people waiting at the sales alert step
    and why (a notice, the step's people list), and the unpublished version's findings warn."""
    definition = {"name": "Hot leads", "slug": "hot", "triggers": [{"event": "Go"}],
                  "nodes": [{"id": "alert-advisor", "type": "sales_alert", "note": "hot", "next": "tag"},
                            {"id": "tag", "type": "tag", "add": ["handed"]}]}
    journey = apply(ws, definition)
    send(ws, *[identify(f"u{i}", email=f"u{i}@example.com") for i in range(2)])
    send(ws, *[track(f"u{i}", "Go") for i in range(2)])
    page = marketer.get(f"/journeys/{journey.pk}/").content.decode()
    notice = page[page.index('data-testid="stuck"'):]
    notice = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", notice[:notice.index("</section>")]))
    assert "2 people wait at alert-advisor: no sales rep to route to: the routing pool is empty." in notice
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert "2 waiting · 0 passed" in re.search(r'data-testid="node-alert-advisor">(.*?)</a>', svg, re.S).group(1)
    people = marketer.get(f"/journeys/{journey.pk}/?node=alert-advisor").content.decode()
    section = people[people.index('id="people"'):]
    assert "u0@example.com" in section and section.count("the routing pool is empty") == 2
    apply(ws, {**definition, "name": "Hot leads 2"}, publish=False)
    page = marketer.get(f"/journeys/{journey.pk}/").content.decode()
    pending = page[page.index('data-testid="pending"'):page.index('data-testid="numbers"')]
    assert "no_sales_rep" in pending and "routing has nobody to give them to" in pending
    rep = user_create(username="rep", password="pw-rep-12345", workspace=ws.workspace, role="sales")
    from leadflow.lifecycle.services import lifecycle_settings_update

    lifecycle_settings_update(workspace=ws.workspace, changes={"default_pool": [rep.pk]}, actor="test")
    tick(frozen_clock, minutes=1)
    page = marketer.get(f"/journeys/{journey.pk}/").content.decode()
    assert 'data-testid="stuck"' not in page and "no_sales_rep" not in page


# --- status, people by hand, export, roles ----------------------------------------------------------

def test_pause_resume_archive_buttons(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    page = marketer.get(f"/journeys/{journey.pk}/").content.decode()
    assert f'action="/journeys/{journey.pk}/pause/"' in page and f'action="/journeys/{journey.pk}/archive/"' in page
    resp = marketer.post(f"/journeys/{journey.pk}/pause/", {"reason": "new copy coming"}, follow=True)
    journey.refresh_from_db()
    assert journey.status == "paused" and journey.paused_reason == "new copy coming"
    assert "Reason: new copy coming" in resp.content.decode()
    marketer.post(f"/journeys/{journey.pk}/resume/")
    journey.refresh_from_db()
    assert journey.status == "live"
    marketer.post(f"/journeys/{journey.pk}/archive/")
    journey.refresh_from_db()
    assert journey.status == "archived"
    assert marketer.get(f"/journeys/{journey.pk}/pause/").status_code == 405
    assert marketer.post(f"/journeys/{journey.pk}/explode/").status_code == 404


def test_the_buttons_need_the_csrf_token(ws, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user_create(username="mara", password="pw-mara-123", workspace=ws.workspace, role="marketer"))
    page = strict.get(f"/journeys/{journey.pk}/").content.decode()
    assert strict.post(f"/journeys/{journey.pk}/pause/").status_code == 403
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert strict.post(f"/journeys/{journey.pk}/pause/", {"csrfmiddlewaretoken": token}).status_code == 302
    journey.refresh_from_db()
    assert journey.status == "paused"


def test_enroll_by_hand_and_export(ws, marketer, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    send(ws, identify("new", email="new@example.com"))
    resp = marketer.post(f"/journeys/{journey.pk}/people/", {"emails": "new@example.com\nghost@example.com",
                                                             "action": "enroll"}, follow=True)
    assert "Enrolled 1 person; 1 not found." in resp.content.decode()
    assert Enrollment.objects.filter(journey=journey, contact__user_id="new", state="active").exists()
    marketer.post(f"/journeys/{journey.pk}/people/", {"emails": "new@example.com", "action": "remove"})
    assert Enrollment.objects.get(journey=journey, contact__user_id="new").state == "exited"
    exported = marketer.get(f"/journeys/{journey.pk}/export/")
    assert exported["Content-Disposition"] == 'attachment; filename="journey-ebook.yaml"'
    assert lang.journey_parse(yaml.safe_load(exported.content)).nodes[1].id == "thanks"
    as_json = marketer.get(f"/journeys/{journey.pk}/export/?format=json").json()
    assert as_json["slug"] == "ebook"


@pytest.mark.parametrize("role", ["sales", "analyst", "compliance"])
def test_readers_see_the_pages_but_cannot_change_anything(ws, frozen_clock, role):
    journey = run_nurture(ws, frozen_clock)
    reader = member(ws, role)
    page = reader.get(f"/journeys/{journey.pk}/").content.decode()
    assert 'data-testid="graph"' in page and "/edit/" not in page and "Publish" not in page
    assert "New journey" not in reader.get("/journeys/").content.decode()
    for path in ("/journeys/new/", f"/journeys/{journey.pk}/edit/"):
        assert reader.get(path).status_code == 403
    for path in (f"/journeys/{journey.pk}/pause/", f"/journeys/{journey.pk}/archive/",
                 f"/journeys/{journey.pk}/publish/", f"/journeys/{journey.pk}/people/"):
        assert reader.post(path, {"version": "1", "emails": "u0@example.com"}).status_code == 403
    journey.refresh_from_db()
    assert journey.status == "live"


def test_another_workspaces_journeys_are_not_found(ws, other_ws, frozen_clock):
    journey = run_nurture(ws, frozen_clock)
    outsider = Client()
    outsider.force_login(user_create(username="olga", password="pw-olga-123", workspace=other_ws.workspace,
                                     role="admin"))
    for path in (f"/journeys/{journey.pk}/", f"/journeys/{journey.pk}/edit/", f"/journeys/{journey.pk}/export/"):
        assert outsider.get(path).status_code == 404
    assert outsider.post(f"/journeys/{journey.pk}/pause/").status_code == 404
    assert "Ebook nurture" not in outsider.get("/journeys/").content.decode()
    assert Client().get("/journeys/").status_code == 302, "login required"


# --- the layout and the editor on their own ---------------------------------------------------------

def example_definitions() -> list[dict]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml_load_all(path.read_text()):
            if isinstance(doc, dict) and "nodes" in doc and "triggers" in doc:
                found.append(doc)
    return found


@pytest.mark.django_db(False)
@pytest.mark.parametrize("definition", example_definitions() or [NURTURE], ids=lambda d: d.get("slug", "nurture"))
def test_every_shipped_example_survives_the_editor_rows_and_the_yaml_box(definition):
    canonical = lang.journey_dump(lang.journey_parse(definition))
    rows = editor.state_from_definition(canonical)
    again = lang.journey_dump(lang.journey_parse(editor.state_definition(rows, slug=canonical.get("slug"))))
    assert again == canonical
    assert editor.text_load(editor.yaml_text(canonical)) == canonical
    graph = journey_graph(lang.journey_parse(canonical))
    assert {n.id for n in graph.nodes} == {n["id"] for n in canonical["nodes"]}
    assert all(n.reachable for n in graph.nodes), "the examples have no unreachable steps"


@pytest.mark.django_db(False)
def test_the_layout_points_forward_arrows_down_and_routes_loops_around():
    definition = lang.journey_parse({
        "name": "Loop", "triggers": [{"manual": True}],
        "nodes": [{"id": "start", "type": "wait", "days": 1, "next": "check"},
                  {"id": "check", "type": "wait_for_event", "event": "Clicked", "timeout_days": 7,
                   "next": "thanks", "timeout_next": "start"},
                  {"id": "thanks", "type": "send_email", "template": "t"},
                  {"id": "orphan", "type": "exit"}]})
    graph = journey_graph(definition)
    nodes = {n.id: n for n in graph.nodes}
    assert nodes["start"].y < nodes["check"].y < nodes["thanks"].y < nodes["orphan"].y
    assert not nodes["orphan"].reachable and nodes["start"].start
    edges = {(e.source, e.target): e for e in graph.edges}
    assert edges[("check", "start")].loop and edges[("check", "start")].label == "timeout"
    assert not edges[("check", "thanks")].loop and edges[("check", "thanks")].label == "event"
    assert edges[("thanks", None)].label == "end" and len(graph.ends) == 1
    assert graph.width > max(n.x for n in graph.nodes) + graph.node_w, "room on the right for the loop"


@pytest.mark.django_db(False)
def test_the_editor_reads_lines_and_refuses_what_it_cannot_read():
    state = editor.blank_state()
    state.top["name"] = "Lines"
    state.triggers[0].values.update(event="Signed Up", where="plan = pro\nseats = 5\ntrial = true\ncode = \"007\"")
    state.nodes = [editor.Row("switch", {"id": "by-role", "field": "traits.role",
                                         "cases": "buyer, owner -> a\nuser -> end", "default": "b"}),
                   editor.Row("random", {"id": "a", "paths": "70 -> b Long\n30% -> end"}),
                   editor.Row("update_traits", {"id": "b", "traits": "stage = warm\nseen = 2"})]
    data = editor.state_definition(state)
    assert data["triggers"][0]["where"] == [
        {"field": "properties.plan", "op": "eq", "value": "pro"}, {"field": "properties.seats", "op": "eq", "value": 5},
        {"field": "properties.trial", "op": "eq", "value": True},
        {"field": "properties.code", "op": "eq", "value": "007"}]
    assert data["nodes"][0]["cases"] == [{"equals": ["buyer", "owner"], "next": "a"}, {"equals": ["user"]}]
    assert data["nodes"][1]["paths"] == [{"percent": 70, "next": "b", "name": "Long"}, {"percent": 30}]
    assert data["nodes"][2]["traits"] == {"stage": "warm", "seen": 2}
    lang.journey_parse(data)
    state.nodes[1].values["paths"] = "seventy -> b"
    with pytest.raises(lang.JourneyError) as caught:
        editor.state_definition(state)
    assert caught.value.path == "nodes[1].paths" and "line 1" in caught.value.reason
    state.nodes[1].values["paths"] = "50 -> b"
    state.top.update(cap_emails="2", cap_days="")
    with pytest.raises(lang.JourneyError) as caught:
        editor.state_definition(state)
    assert caught.value.path == "cap"
    assert editor.text_load("time: 10:00\nreply: no\nday: 2026-05-01") == {
        "time": "10:00", "reply": "no", "day": "2026-05-01"}, "YAML 1.1 surprises are switched off"


@pytest.mark.django_db(False)
def test_a_branch_puts_yes_left_of_no_whatever_the_order_of_the_steps():
    definition = lang.journey_parse({
        "name": "Branch", "triggers": [{"manual": True}],
        "nodes": [{"id": "attended", "type": "branch", "if": {"in_segment": "attendees"}, "yes": "recording",
                   "no": "missed"},
                  {"id": "missed", "type": "send_email", "template": "missed"},
                  {"id": "recording", "type": "send_email", "template": "recording"}]})
    nodes = {n.id: n for n in journey_graph(definition).nodes}
    assert nodes["recording"].y == nodes["missed"].y and nodes["recording"].x < nodes["missed"].x
