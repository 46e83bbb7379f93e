"""Response and request shapes of the management API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Schema
from pydantic import Field


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


class CompanyDetailOut(CompanyOut):
    updated_at: dt.datetime
    contacts_count: int


class CompanyPage(Schema):
    items: list[CompanyDetailOut]
    next: str | None


class CompanyPatch(Schema):
    name: str | None = Field(None, max_length=255)
    domain: str | None = Field(None, max_length=255)
    traits: dict[str, Any] | None = Field(None, description="set traits; a null value removes one")


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
    traits: dict[str, Any] = Field(description="set traits; a null or empty value removes one")


class MergeIn(Schema):
    other_id: int = Field(description="the contact to fold into this one; it ceases to exist")


class MagnetRef(Schema):
    id: int
    slug: str
    name: str


class FormIn(Schema):
    name: str = Field(min_length=1, max_length=200)
    slug: str = Field("", max_length=100, description="derived from the name when empty")
    fields: list[Any] = Field(description="list of {name, label, type, required, options}; "
                                          "one must be an email field named 'email'")
    submit_label: str = Field("Submit", min_length=1, max_length=100)
    consent_text: str = ""
    consent_required: bool = False
    consent_topic: str = Field("marketing", max_length=100)
    lead_magnet: int | str | None = Field(None, description="id or slug of a lead magnet to deliver")
    success_message: str = "Thank you!"
    redirect_url: str = Field("", max_length=1000)


class FormPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    slug: str | None = Field(None, min_length=1, max_length=100)
    fields: list[Any] | None = None
    submit_label: str | None = Field(None, min_length=1, max_length=100)
    consent_text: str | None = None
    consent_required: bool | None = None
    consent_topic: str | None = Field(None, max_length=100)
    lead_magnet: int | str | None = Field(None, description="id or slug; null detaches the magnet")
    success_message: str | None = None
    redirect_url: str | None = Field(None, max_length=1000)


class FormOut(Schema):
    id: int
    slug: str
    name: str
    fields: list[dict[str, Any]]
    submit_label: str
    consent_text: str
    consent_required: bool
    consent_topic: str
    lead_magnet: MagnetRef | None
    success_message: str
    redirect_url: str
    created_at: dt.datetime
    updated_at: dt.datetime
    archived_at: dt.datetime | None
    hosted_url: str
    embed_snippet: str


class FormPage(Schema):
    items: list[FormOut]
    next: str | None


class MagnetIn(Schema):
    name: str = Field(min_length=1, max_length=200)
    slug: str = Field("", max_length=100, description="derived from the name when empty")
    kind: str = "ebook"
    delivery_url: str = Field(max_length=1000)
    description: str = ""
    email_delivery: bool = Field(True, description="email the download link to whoever asks for the magnet "
                                                   "(a transactional message)")
    delivery_template: int | str | None = Field(
        None, description="id or slug of the transactional template that writes the delivery email; "
                          "empty: the built-in one")


class MagnetPatch(Schema):
    name: str | None = Field(None, min_length=1, max_length=200)
    slug: str | None = Field(None, min_length=1, max_length=100)
    kind: str | None = None
    delivery_url: str | None = Field(None, max_length=1000)
    description: str | None = None
    email_delivery: bool | None = None
    delivery_template: int | str | None = Field(None, description='id or slug; "" goes back to the built-in one')


class MagnetOut(Schema):
    id: int
    slug: str
    name: str
    kind: str
    delivery_url: str
    description: str
    created_at: dt.datetime
    archived_at: dt.datetime | None
    downloads: int = Field(description="`Asset Downloaded` events for this magnet's slug")
    form_submissions: int = Field(description="`Form Submitted` events for this magnet's slug")
    email_delivery: bool
    delivery_template: str | None = Field(description="slug of the delivery email's template; null: the built-in one")
    delivery_emails: int = Field(description="delivery emails sent (the download link by email)")


class MagnetPage(Schema):
    items: list[MagnetOut]
    next: str | None


class UtmBreakdownOut(Schema):
    utm_source: str
    utm_medium: str
    utm_campaign: str
    contacts: int


class ChannelSourcesOut(Schema):
    channel: str
    label: str
    contacts: int
    breakdown: list[UtmBreakdownOut]


class SourcesOut(Schema):
    total_contacts: int
    unattributed: int = Field(description="contacts with no first touch recorded yet")
    channels: list[ChannelSourcesOut]


class ChannelOut(Schema):
    channel: str
    label: str


class WorkspaceOut(Schema):
    id: int
    slug: str
    name: str
    created_at: dt.datetime


class ErrorOut(Schema):
    detail: str
