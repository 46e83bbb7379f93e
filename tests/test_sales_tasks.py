"""Sales tasks: a journey's notify-owner step gives the owner one task per person (even when the
pass is redone), the rep's alert email says what to do, why and by when, the inbox lists open
tasks with the overdue ones highlighted and marks them done (audited), the API lists, adds and
completes them, and another workspace can neither see nor touch them."""

from __future__ import annotations

import datetime as dt
import re
from types import SimpleNamespace

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from leadflow.core.models import AuditEntry
from leadflow.core.services import user_create
from leadflow.journeys.engine import journeys_run_due
from leadflow.journeys.models import Enrollment
from leadflow.lifecycle.models import Notification, SalesAlert, SalesTask
from leadflow.lifecycle.outbox import notifications_dispatch
from leadflow.lifecycle.services import sales_rep_set

from journey_helpers import apply, contact_of, identify, send, track
from smtp_sink import dispatching_to_sink

pytestmark = pytest.mark.django_db

TITLE = "Call about the webinar"
NOTE = "Stayed for the Q&A"


@pytest.fixture
def reps(ws):
    w = ws.workspace
    rita = user_create(username="rita", password="pw-rita-123", email="rita@sales.test", workspace=w, role="sales")
    mona = user_create(username="mona", password="pw-mona-123", email="mona@sales.test", workspace=w, role="sales")
    otto = user_create(username="otto", password="pw-otto-123", email="otto@sales.test", workspace=w, role="sales")
    sales_rep_set(workspace=w, user=rita, manager=mona, actor="test")
    return SimpleNamespace(rita=rita, mona=mona, otto=otto)


def follow_up(ws, **node):
    """Webinar attendees get Rita as owner, and she gets a call task due two days later."""
    step = {"id": "call", "type": "notify_owner", "note": NOTE, "task": TITLE, "due_days": 2, **node}
    return apply(ws, {"name": "Webinar follow-up", "slug": "webinar-follow-up",
                      "triggers": [{"event": "Webinar Attended"}],
                      "nodes": [{"id": "owner", "type": "assign_owner", "user": "rita", "next": "call"}, step]})


def attend(ws, *users: str) -> None:
    send(ws, *[identify(u, email=f"{u}@prospect.example", first_name=u.title(), last_name="Lee") for u in users])
    send(ws, *[track(u, "Webinar Attended") for u in users])


def api(client, ws, method, path, body=None):
    kwargs = {"HTTP_AUTHORIZATION": ws.bearer}
    if body is not None:
        kwargs.update(data=body, content_type="application/json")
    return getattr(client, method)(path, **kwargs)


def logged_in(user) -> Client:
    c = Client(enforce_csrf_checks=True)
    c.force_login(user)
    return c


def post_form(c: Client, path: str, data: dict | None = None, *, page: str = "/sales/"):
    """A form post as the browser makes it: the page first (it sets the CSRF cookie), then the
    form with its token."""
    c.get(page)
    return c.post(path, {"csrfmiddlewaretoken": c.cookies["csrftoken"].value, **(data or {})})


def task_row(page: str, task: SalesTask) -> str:
    """The class attribute of the task's row on a page."""
    found = re.search(rf'<tr class="([^"]*)" data-task="{task.pk}">', page)
    assert found, f"task {task.pk} is not on the page"
    return found.group(1)


# --- the journey step ----------------------------------------------------------------------------

def test_the_step_gives_each_person_one_task_in_one_go_even_when_its_pass_is_redone(ws, reps, frozen_clock):
    journey = follow_up(ws)
    send(ws, *[identify(u, email=f"{u}@prospect.example") for u in ("ann", "bob", "cy")])
    with CaptureQueriesContext(connection) as queries:
        send(ws, *[track(u, "Webinar Attended") for u in ("ann", "bob", "cy")])
    task_sql = [q["sql"] for q in queries if "lifecycle_salestask" in q["sql"]]
    assert len(task_sql) == 2, f"one lookup by key and one insert for three people, not {task_sql}"

    now = frozen_clock()
    tasks = {t.contact.user_id: t for t in SalesTask.objects.select_related("contact")}
    assert sorted(tasks) == ["ann", "bob", "cy"]
    ann = tasks["ann"]
    assert (ann.owner_id, ann.title, ann.note, ann.due_at) == (reps.rita.pk, TITLE, NOTE, now + dt.timedelta(days=2))
    assert (ann.journey_slug, ann.journey_name, ann.journey_step, ann.created_by) == (
        "webinar-follow-up", "Webinar follow-up", "call", "journey:webinar-follow-up")
    assert ann.done_at is None and not ann.overdue
    alert = SalesAlert.objects.get(contact=ann.contact)
    assert (alert.user_id, alert.kind, alert.task_id) == (reps.rita.pk, "task", ann.pk)
    assert alert.context["sales_task"] == {"id": ann.pk, "title": TITLE, "due_at": ann.due_at.isoformat()}
    assert alert.context["journey_step"] == "call" and alert.context["journey"]["note"] == NOTE
    before = (sorted(t.pk for t in tasks.values()), SalesAlert.objects.count(), Notification.objects.count())
    assert before[1:] == (3, 3)

    # The pass is redone over rows whose move was lost (back at the step, same step count), as
    # after a crash between writing the effects and committing the enrollments.
    Enrollment.objects.filter(journey=journey).update(node="call", steps=1, state="active", ended_at=None,
                                                      end_reason="", due_at=now, resume="arrive")
    with CaptureQueriesContext(connection) as queries:
        journeys_run_due(now=now)
    assert [q for q in queries if "INSERT" in q["sql"] and "lifecycle_sales" in q["sql"]] == []
    assert (sorted(SalesTask.objects.values_list("pk", flat=True)), SalesAlert.objects.count(),
            Notification.objects.count()) == before, "nothing twice: no task, alert or email"
    assert set(Enrollment.objects.filter(journey=journey).values_list("state", flat=True)) == {"completed"}


def test_people_who_enter_again_get_a_new_task(ws, reps, frozen_clock):
    apply(ws, {"name": "Demo ask", "slug": "demo-ask", "reentry": "every_time",
               "triggers": [{"event": "Demo Requested"}],
               "nodes": [{"id": "owner", "type": "assign_owner", "user": "rita", "next": "call"},
                         {"id": "call", "type": "notify_owner", "task": "Book the demo"}]})
    send(ws, identify("ann", email="ann@prospect.example"))
    send(ws, track("ann", "Demo Requested"))
    frozen_clock.advance(days=1)
    send(ws, track("ann", "Demo Requested"))
    assert SalesTask.objects.filter(title="Book the demo", due_at__isnull=True).count() == 2


# --- the rep's email -----------------------------------------------------------------------------

def test_the_reps_alert_email_over_smtp_has_the_task_the_note_and_the_due_date(ws, reps, frozen_clock, settings):
    follow_up(ws)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    with dispatching_to_sink("https://lf.example.com") as sink:
        settings.EMAIL_HOST, settings.EMAIL_PORT = sink.host, sink.port
        attend(ws, "ann")
        assert notifications_dispatch()["sent"] == 1
    ann = contact_of(ws, "ann")
    [mail] = sink.messages
    assert mail.rcpt_tos == ["rita@sales.test"]
    message = mail.message
    assert message["Subject"] == f"New task: {TITLE} (Ann Lee)"
    text = message.get_body(("plain",)).get_content()
    for line in (f"Task: {TITLE}", "Due: 2026-03-04 09:00 UTC", "From journey: Webinar follow-up, step call",
                 f"Note: {NOTE}", "Email: ann@prospect.example", f"https://lf.example.com/sales/leads/{ann.pk}/"):
        assert line in text, (line, text)
    assert "Stayed for the Q&amp;A" in message.get_body(("html",)).get_content()


def test_a_note_without_a_task_is_in_the_owners_email_and_makes_no_task(ws, reps, frozen_clock, settings):
    follow_up(ws, task="", due_days=None, note="Asked about pricing for 40 seats")
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    with dispatching_to_sink() as sink:
        settings.EMAIL_HOST, settings.EMAIL_PORT = sink.host, sink.port
        attend(ws, "ann")
        assert notifications_dispatch()["sent"] == 1
    [mail] = sink.messages
    assert mail.message["Subject"] == "About Ann Lee: a note from journey Webinar follow-up"
    assert "Note: Asked about pricing for 40 seats" in mail.message.get_body(("plain",)).get_content()
    assert not SalesTask.objects.exists()
    assert SalesAlert.objects.get().kind == "journey_note"


# --- the web pages -------------------------------------------------------------------------------

def test_the_inbox_lists_the_task_highlights_it_when_overdue_and_marks_it_done_audited(ws, reps, frozen_clock):
    follow_up(ws)
    attend(ws, "ann")
    task = SalesTask.objects.get()
    rita = logged_in(reps.rita)
    inbox = rita.get("/sales/").content.decode()
    assert TITLE in inbox and "Stayed for the Q&amp;A" in inbox and "from journey Webinar follow-up, step call" in inbox
    assert "overdue" not in task_row(inbox, task).split()

    frozen_clock.advance(days=3)
    inbox = rita.get("/sales/").content.decode()
    assert "overdue" in task_row(inbox, task).split(), "past its due time: highlighted"
    assert "Mark done" in inbox

    # Another rep (not the owner, not her manager) gets no button and is refused.
    otto = logged_in(reps.otto)
    lead = otto.get(f"/sales/leads/{task.contact_id}/").content.decode()
    assert TITLE in lead and "Mark done" not in lead
    refused = post_form(otto, f"/sales/tasks/{task.pk}/done/", {"next": "/sales/"})
    assert refused.status_code == 302
    assert "only the task&#x27;s owner" in otto.get("/sales/").content.decode()
    task.refresh_from_db()
    assert task.done_at is None

    # Without the CSRF token the post is refused; with it the task is done.
    assert rita.post(f"/sales/tasks/{task.pk}/done/").status_code == 403
    done = post_form(rita, f"/sales/tasks/{task.pk}/done/", {"next": "/sales/"})
    assert (done.status_code, done["Location"]) == (302, "/sales/")
    task.refresh_from_db()
    assert (task.done_at, task.done_by_id) == (frozen_clock(), reps.rita.pk)
    entry = AuditEntry.objects.get(action="task.complete")
    assert (entry.workspace_id, entry.actor, entry.target) == (ws.workspace.pk, f"user:{reps.rita.pk}",
                                                               f"contact:{task.contact_id}")
    assert entry.data == {"user": reps.rita.pk, "task": task.pk, "title": TITLE}
    assert f'data-task="{task.pk}"' not in rita.get("/sales/").content.decode(), "the inbox lists open tasks"
    lead = rita.get(f"/sales/leads/{task.contact_id}/").content.decode()
    assert "muted" in task_row(lead, task).split(), "a done task stays on the lead page, greyed"
    assert "by rita" in lead and "Reopen" in lead

    # Her manager may reopen it (and a second "done" would say it is already done).
    mona = logged_in(reps.mona)
    post_form(mona, f"/sales/tasks/{task.pk}/reopen/", {"next": f"/sales/leads/{task.contact_id}/"})
    task.refresh_from_db()
    assert task.done_at is None and task.done_by_id is None
    assert AuditEntry.objects.filter(action="task.reopen", actor=f"user:{reps.mona.pk}").count() == 1
    assert TITLE in mona.get("/sales/team/").content.decode(), "the manager's team view lists her reps' tasks"


def test_a_rep_adds_a_task_by_hand_on_the_lead_page(ws, reps, frozen_clock):
    follow_up(ws)
    attend(ws, "ann")
    ann = contact_of(ws, "ann")
    rita = logged_in(reps.rita)
    page = f"/sales/leads/{ann.pk}/"
    post_form(rita, f"{page}task/", {"title": "  ", "due_date": "2026-03-09"}, page=page)
    assert "a task needs a title" in rita.get(page).content.decode()
    post_form(rita, f"{page}task/", {"title": "Send the proposal", "due_date": "9 March"}, page=page)
    assert "is not a date" in rita.get(page).content.decode()
    post_form(rita, f"{page}task/", {"title": "Send the proposal", "due_date": "2026-03-09"}, page=page)
    task = SalesTask.objects.get(title="Send the proposal")
    assert (task.owner_id, task.due_at, task.journey_slug, task.created_by) == (
        reps.rita.pk, dt.datetime(2026, 3, 9, 23, 59, tzinfo=dt.timezone.utc), "", f"user:{reps.rita.pk}")
    assert "Send the proposal" in rita.get("/sales/").content.decode()
    assert AuditEntry.objects.filter(action="task.create", target=f"contact:{ann.pk}").count() == 1


# --- the API -------------------------------------------------------------------------------------

def test_the_api_lists_adds_and_completes_tasks(client, ws, reps, frozen_clock):
    follow_up(ws)
    attend(ws, "ann", "bob")
    listed = api(client, ws, "get", "/api/sales/tasks?owner=rita")
    assert listed.status_code == 200, listed.content
    items = sorted(listed.json()["items"], key=lambda t: t["contact_email"])
    assert [(t["contact_email"], t["title"], t["note"], t["journey"], t["journey_step"], t["overdue"])
            for t in items] == [(f"{u}@prospect.example", TITLE, NOTE, "webinar-follow-up", "call", False)
                                for u in ("ann", "bob")]
    assert dt.datetime.fromisoformat(items[0]["due_at"]) == frozen_clock() + dt.timedelta(days=2)
    assert api(client, ws, "get", "/api/sales/tasks?owner=otto").json()["items"] == []
    assert api(client, ws, "get", "/api/sales/tasks?status=later").status_code == 400
    task_id = items[0]["id"]

    refused = api(client, ws, "post", f"/api/sales/tasks/{task_id}/complete", {"acting_user": "otto"})
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    done = api(client, ws, "post", f"/api/sales/tasks/{task_id}/complete", {"acting_user": "rita"})
    assert done.status_code == 200, done.content
    assert done.json()["done_by"]["username"] == "rita"
    assert dt.datetime.fromisoformat(done.json()["done_at"]) == frozen_clock()
    again = api(client, ws, "post", f"/api/sales/tasks/{task_id}/complete", {"acting_user": "rita"})
    assert again.status_code == 409 and "already done" in again.json()["detail"]
    assert [t["id"] for t in api(client, ws, "get", "/api/sales/tasks").json()["items"]] == [items[1]["id"]]
    assert [t["id"] for t in api(client, ws, "get", "/api/sales/tasks?status=done").json()["items"]] == [task_id]
    entry = AuditEntry.objects.get(action="task.complete")
    assert entry.actor.startswith("key:") and entry.data["user"] == reps.rita.pk

    ann = contact_of(ws, "ann")
    made = api(client, ws, "post", "/api/sales/tasks", {"acting_user": "mona", "owner": "rita", "contact_id": ann.pk,
                                                        "title": "Send the proposal", "due_at": "2026-03-10T12:00:00"})
    assert made.status_code == 201, made.content
    assert made.json()["owner"]["username"] == "rita" and made.json()["journey"] == ""
    assert dt.datetime.fromisoformat(made.json()["due_at"]) == dt.datetime(2026, 3, 10, 12, tzinfo=dt.timezone.utc)
    not_hers = api(client, ws, "post", "/api/sales/tasks", {"acting_user": "mona", "owner": "otto",
                                                            "contact_id": ann.pk, "title": "Call"})
    assert not_hers.status_code == 403, "mona does not manage otto"
    assert api(client, ws, "post", "/api/sales/tasks", {"acting_user": "rita", "contact_id": ann.pk,
                                                        "title": ""}).status_code == 422
    assert api(client, ws, "get", f"/api/sales/tasks?contact_id={ann.pk}&status=all").json()["items"][0]["title"] \
        == "Send the proposal", "open ones first"


def test_the_alert_api_names_the_task(client, ws, reps, frozen_clock):
    follow_up(ws)
    attend(ws, "ann")
    [alert] = api(client, ws, "get", "/api/sales/alerts?user=rita").json()
    assert alert["kind"] == "task" and alert["task_id"] == SalesTask.objects.get().pk
    assert alert["context"]["sales_task"]["title"] == TITLE


# --- isolation -----------------------------------------------------------------------------------

def test_another_workspace_can_neither_see_nor_complete_the_task(client, ws, other_ws, reps, frozen_clock):
    follow_up(ws)
    attend(ws, "ann")
    task = SalesTask.objects.get()
    zed = user_create(username="zed", password="pw-zed-123", workspace=other_ws.workspace, role="admin")

    assert api(client, other_ws, "get", "/api/sales/tasks").json()["items"] == []
    assert api(client, other_ws, "get", f"/api/sales/tasks?contact_id={task.contact_id}").json()["items"] == []
    for who in ("zed", "rita"):
        r = api(client, other_ws, "post", f"/api/sales/tasks/{task.pk}/complete", {"acting_user": who})
        assert r.status_code == 404, (who, r.content)
    outsider = api(client, other_ws, "post", "/api/sales/tasks", {"acting_user": "zed", "contact_id": task.contact_id,
                                                                   "title": "Steal the lead"})
    assert outsider.status_code == 404

    c = logged_in(zed)
    assert TITLE not in c.get("/sales/").content.decode()
    assert TITLE not in c.get("/sales/team/").content.decode()
    assert post_form(c, f"/sales/tasks/{task.pk}/done/").status_code == 404
    task.refresh_from_db()
    assert task.done_at is None
    assert not AuditEntry.objects.filter(action__startswith="task.").exists()
