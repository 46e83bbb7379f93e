"""Contacts: list, get, edit traits, delete, timeline."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from ninja import Router
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.api.schemas import ContactDetailOut, ContactPage, EventPage, TraitsIn
from leadflow.contacts import selectors, services
from leadflow.contacts.models import Contact, ContactMerge
from leadflow.core.services import ServiceError
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


def _get(request, contact_id: int) -> Contact:
    contact = selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return contact


@router.get("", response=ContactPage, summary="List contacts (newest first)")
def contacts_list(request, email: str = "", user_id: str = "", q: str = "", cursor_: str | None = None,
                  limit: int = 50, next: str | None = None):
    qs = selectors.contact_search(workspace=request.workspace, email=email, user_id=user_id, q=q)
    items, following = cursor.page(qs, cursor=next or cursor_, limit=limit, descending=True)
    return {"items": [contact_out(c) for c in items], "next": following}


@router.get("/{contact_id}", response=ContactDetailOut, summary="One contact with its identities")
def contacts_get(request, contact_id: int):
    contact = _get(request, contact_id)
    data = contact_out(contact)
    data["identities"] = list(contact.identities.order_by("kind", "value").values("kind", "value"))
    data["merged_from"] = list(ContactMerge.objects.filter(winner=contact).values_list("loser_id", flat=True))
    return data


@router.patch("/{contact_id}", response=ContactDetailOut, summary="Set traits (null removes one)")
def contacts_update(request, contact_id: int, payload: TraitsIn):
    contact = _get(request, contact_id)
    try:
        services.contact_traits_update(contact=contact, traits=payload.traits, actor=actor(request))
    except ServiceError as exc:
        raise HttpError(400, str(exc)) from exc
    return contacts_get(request, contact.pk)


@router.delete("/{contact_id}", response={204: None}, summary="Delete a contact and its events")
def contacts_delete(request, contact_id: int):
    contact = get_object_or_404(Contact, workspace=request.workspace, pk=contact_id)
    services.contact_delete(contact=contact, actor=actor(request))
    return 204, None


@router.get("/{contact_id}/events", response=EventPage, summary="A contact's timeline, oldest first")
def contacts_events(request, contact_id: int, limit: int = 100, next: str | None = None, event: str = ""):
    contact = _get(request, contact_id)
    qs = Event.objects.filter(workspace=request.workspace, contact=contact)
    if event:
        qs = qs.filter(event=event)
    items, following = cursor.page(qs, cursor=next, limit=limit, field="id")
    items.sort(key=lambda e: (e.timestamp, e.id))
    return {"items": items, "next": following}
