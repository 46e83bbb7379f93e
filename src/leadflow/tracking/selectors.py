"""Reads over forms and lead magnets: how often each was submitted or downloaded.

Events from LeadFlow's own forms and links carry `form_id` / `magnet_id`, which survive a renamed
slug; events a site tracks itself may carry only `form_slug` / `magnet_slug`, matched to the
current slug. Each count is one grouped query, however many forms or magnets are asked about.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count
from django.db.models.fields.json import KT

from leadflow.core.models import Workspace
from leadflow.tracking.models import Event, Form, LeadMagnet

FORM_SUBMITTED = "Form Submitted"
ASSET_DOWNLOADED = "Asset Downloaded"


def _grouped(*, workspace: Workspace, events: list[str], prefix: str):
    return (Event.objects.filter(workspace=workspace, event__in=events)
            .values("event", ref_id=KT(f"properties__{prefix}_id"), ref_slug=KT(f"properties__{prefix}_slug"))
            .annotate(n=Count("id")).order_by())


def _owner(row: dict, by_id: dict, by_slug: dict):
    if row["ref_id"] not in (None, "") and str(row["ref_id"]) in by_id:
        return by_id[str(row["ref_id"])]
    if row["ref_id"] in (None, "") and row["ref_slug"] in by_slug:
        return by_slug[row["ref_slug"]]
    return None


def form_submission_counts(*, workspace: Workspace, forms: Iterable[Form]) -> dict[int, int]:
    """form id -> number of `Form Submitted` events."""
    forms = list(forms)
    counts = {f.pk: 0 for f in forms}
    if not forms:
        return counts
    by_id = {str(f.pk): f.pk for f in forms}
    by_slug = {f.slug: f.pk for f in forms}
    for row in _grouped(workspace=workspace, events=[FORM_SUBMITTED], prefix="form"):
        owner = _owner(row, by_id, by_slug)
        if owner is not None:
            counts[owner] += row["n"]
    return counts


def magnet_counts(*, workspace: Workspace, magnets: Iterable[LeadMagnet]) -> dict[int, dict[str, int]]:
    """magnet id -> {"downloads": n, "form_submissions": n, "delivery_emails": n} (delivery emails
    sent: the transactional messages with the download link)."""
    from leadflow.messaging.models import Message, MessageKind, MessageStatus

    magnets = list(magnets)
    counts = {m.pk: {"downloads": 0, "form_submissions": 0, "delivery_emails": 0} for m in magnets}
    if not magnets:
        return counts
    by_id = {str(m.pk): m.pk for m in magnets}
    by_slug = {m.slug: m.pk for m in magnets}
    for row in _grouped(workspace=workspace, events=[ASSET_DOWNLOADED, FORM_SUBMITTED], prefix="magnet"):
        owner = _owner(row, by_id, by_slug)
        if owner is not None:
            key = "downloads" if row["event"] == ASSET_DOWNLOADED else "form_submissions"
            counts[owner][key] += row["n"]
    sources = {f"magnet:{m.slug}": m.pk for m in magnets}
    sent = (Message.objects.filter(workspace=workspace, kind=MessageKind.TRANSACTIONAL, source__in=list(sources),
                                   status=MessageStatus.SENT)
            .values("source").annotate(n=Count("id")).values_list("source", "n"))
    for source, n in sent:
        counts[sources[source]]["delivery_emails"] = n
    return counts
