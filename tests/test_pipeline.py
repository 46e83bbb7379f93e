"""The worker pipeline: one bad event never blocks the events behind it."""

from __future__ import annotations

from leadflow.contacts.models import Contact
from leadflow.core import pipeline
from leadflow.tracking.ingest import events_append
from leadflow.tracking.models import Event


def test_an_event_that_cannot_be_processed_is_marked_and_the_rest_go_on(ws, monkeypatch):
    messages = [{"type": "track", "userId": "same-person", "event": f"Step {n}", "messageId": f"m{n}"}
                for n in range(5)]
    events_append(workspace=ws.workspace, messages=messages)
    original = pipeline._stages

    def poisoned():
        stages = original()

        def explode_on_step_2(events):
            if any(e.event == "Step 2" for e in events):
                raise ValueError("cannot handle step 2")
            for stage in stages:
                stage(events)
        return [explode_on_step_2]

    monkeypatch.setattr(pipeline, "_stages", poisoned)
    assert pipeline.process_pending() == 5
    failed = Event.objects.get(error__contains="cannot handle step 2")
    assert failed.event == "Step 2" and failed.processed_at is not None and failed.contact_id is None
    contact = Contact.objects.get()
    assert sorted(contact.events.values_list("event", flat=True)) == ["Step 0", "Step 1", "Step 3", "Step 4"]
    assert pipeline.process_pending() == 0


def test_worker_loop_processes_then_stops_when_asked(ws, monkeypatch):
    import signal
    import threading

    events_append(workspace=ws.workspace, messages=[{"type": "page", "anonymousId": "a"}])
    stop = threading.Event()
    original = pipeline.process_pending

    def once_then_stop(**kwargs):
        done = original(**kwargs)
        stop.set()
        return done

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(pipeline, "process_pending", once_then_stop)
    pipeline.worker_loop(stop=stop, idle_sleep=0)
    assert Event.objects.get().processed_at is not None
    assert signal.getsignal(signal.SIGINT) is handler, "the caller's Ctrl-C handler is restored"
