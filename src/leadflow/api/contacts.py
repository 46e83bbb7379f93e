"""Contacts: list, get, edit traits, merge, delete, timeline."""

from __future__ import annotations

from django.db import transaction
from ninja import Query, Router, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.api.schemas import ContactDetailOut, ContactPage, EventPage, MergeIn, TraitsIn
from leadflow.contacts import selectors, services
from leadflow.contacts.models import Contact, ContactMerge
from leadflow.tracking.models import Event

router = Router(tags=["contacts"])

SOURCE_KEYS = ("channel", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
               "referrer", "landing_page", "form", "at")


def _source(touch: dict) -> dict:
    return {k: str(touch.get(k, "")) for k in SOURCE_KEYS}


def contact_out(contact: Contact) -> dict:
    return {
        "id": contact.pk, "email": contact.email or None, "user_id": contact.user_id or None,
        "first_name": contact.first_name, "last_name": contact.last_name, "phone": contact.phone,
        "title": contact.title, "country": contact.country, "timezone": contact.timezone,
        "traits": contact.traits, "company": contact.company,
        "source": _source(contact.first_touch), "latest_source": _source(contact.latest_touch),
        "created_at": contact.created_at, "updated_at": contact.updated_at,
        "last_seen_at": contact.last_seen_at,
    }


def contact_detail_out(contact: Contact) -> dict:
    data = contact_out(contact)
    data["identities"] = list(contact.identities.order_by("kind", "value").values("kind", "value"))
    data["merged_from"] = list(ContactMerge.objects.filter(winner=contact).order_by("at", "pk")
                               .values_list("loser_id", flat=True))
    return data


def _get(request, contact_id: int) -> Contact:
    """The contact of this workspace, following merges to the survivor; 404 otherwise."""
    contact = selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return contact


@router.get("", response=ContactPage, summary="List contacts (newest first)")
def contacts_list(request, email: str = "", user_id: str = "", q: str = "",
                  limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                  next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = selectors.contact_search(workspace=request.workspace, email=email, user_id=user_id, q=q)
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": [contact_out(c) for c in items], "next": following}


@router.get("/{contact_id}", response=ContactDetailOut,
            summary="One contact with its identities (a merged-away id answers with the survivor)")
def contacts_get(request, contact_id: int):
    return contact_detail_out(_get(request, contact_id))


@router.patch("/{contact_id}", response=ContactDetailOut, summary="Set traits (null removes one)")
def contacts_update(request, contact_id: int, payload: TraitsIn):
    contact = _get(request, contact_id)
    services.contact_traits_update(contact=contact, traits=payload.traits, actor=actor(request))
    return contact_detail_out(contact)


@router.post("/{contact_id}/merge", response=ContactDetailOut,
             summary="Merge another contact into this one; returns the survivor")
def contacts_merge(request, contact_id: int, payload: MergeIn):
    winner = _get(request, contact_id)
    loser = selectors.contact_get(workspace=request.workspace, contact_id=payload.other_id)
    if loser is None:
        raise HttpError(404, f"other_id: no contact {payload.other_id} in this workspace")
    if loser.pk == winner.pk and payload.other_id != winner.pk:
        return contact_detail_out(winner)  # already merged into this one: a retry is harmless
    with transaction.atomic():
        # Lock both rows (in id order, as the identity processor does) so a worker cannot
        # change either of them half-way through the merge.
        locked = {c.pk: c for c in Contact.objects.select_for_update()
                  .filter(workspace=request.workspace, pk__in=[winner.pk, loser.pk]).order_by("pk")}
        if winner.pk not in locked or loser.pk not in locked:
            raise HttpError(409, "the contacts changed while merging; try again")
        services.contact_merge(winner=locked[winner.pk], loser=locked[loser.pk], reason="manual",
                               actor=actor(request))
    return contact_detail_out(locked[winner.pk])


@router.delete("/{contact_id}", response={204: None}, summary="Delete a contact and its events")
def contacts_delete(request, contact_id: int):
    contact = Contact.objects.filter(workspace=request.workspace, pk=contact_id).first()
    if contact is None:
        survivor = selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
        if survivor is not None:
            # Deleting is not followed through a merge: the caller must name the profile it erases.
            raise HttpError(404, f"contact {contact_id} was merged into {survivor.pk}; "
                                 f"delete {survivor.pk} to remove the person")
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    services.contact_delete(contact=contact, actor=actor(request))
    return Status(204, None)


@router.get("/{contact_id}/events", response=EventPage, summary="A contact's timeline, oldest first")
def contacts_events(request, contact_id: int, limit: int = Query(100, ge=1, le=cursor.MAX_LIMIT),
                    next: str | None = Query(None, description="the `next` cursor of the previous page"),
                    event: str = Query("", description="only events with this name")):
    contact = _get(request, contact_id)
    qs = Event.objects.filter(workspace=request.workspace, contact=contact)
    if event:
        qs = qs.filter(event=event)
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("timestamp", "id"))
    return {"items": items, "next": following}
