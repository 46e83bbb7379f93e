"""Response and request shapes of the management API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Schema


class SourceOut(Schema):
    channel: str = ""
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    utm_term: str = ""
    utm_content: str = ""
    referrer: str = ""
    landing_page: str = ""
    form: str = ""
    at: str = ""


class IdentityOut(Schema):
    kind: str
    value: str


class CompanyOut(Schema):
    id: int
    name: str
    domain: str
    group_id: str | None
    traits: dict[str, Any]
    created_at: dt.datetime


class ContactOut(Schema):
    id: int
    email: str | None
    user_id: str | None
    first_name: str
    last_name: str
    phone: str
    title: str
    country: str
    timezone: str
    traits: dict[str, Any]
    company: CompanyOut | None
    source: SourceOut
    latest_source: SourceOut
    created_at: dt.datetime
    updated_at: dt.datetime
    last_seen_at: dt.datetime | None


class ContactDetailOut(ContactOut):
    identities: list[IdentityOut]
    merged_from: list[int]


class ContactPage(Schema):
    items: list[ContactOut]
    next: str | None


class EventOut(Schema):
    id: int
    message_id: str
    type: str
    event: str
    anonymous_id: str
    user_id: str
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]
    timestamp: dt.datetime
    received_at: dt.datetime


class EventPage(Schema):
    items: list[EventOut]
    next: str | None


class TraitsIn(Schema):
    traits: dict[str, Any]


class ErrorOut(Schema):
    detail: str
