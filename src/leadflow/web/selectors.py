"""Reads the web UI needs beyond the apps' own selectors: counts and groupings for list pages.

Every function takes the workspace and answers with one query (grouped in the database), so a
list page costs the same number of queries however many rows it shows.
"""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.db.models.fields.json import KT

from leadflow.contacts.models import Company, Contact
from leadflow.core.models import Workspace
from leadflow.tracking.models import Form, LeadMagnet

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign")


def form_list(*, workspace: Workspace) -> QuerySet[Form]:
    return (Form.objects.filter(workspace=workspace, archived_at__isnull=True)
            .select_related("lead_magnet").order_by("name", "id"))


def form_get(*, workspace: Workspace, form_id: int) -> Form | None:
    return Form.objects.select_related("lead_magnet").filter(workspace=workspace, pk=form_id).first()


def magnet_list(*, workspace: Workspace) -> QuerySet[LeadMagnet]:
    return LeadMagnet.objects.filter(workspace=workspace, archived_at__isnull=True).order_by("name", "id")


def magnet_get(*, workspace: Workspace, magnet_id: int) -> LeadMagnet | None:
    return LeadMagnet.objects.filter(workspace=workspace, pk=magnet_id).first()


def transactional_templates(*, workspace: Workspace):
    """Templates that may write a transactional email (a magnet's delivery): approved, not archived,
    and not the built-in double opt-in confirmation (it needs an opt-in link a delivery has not)."""
    from leadflow.consent.services import OPTIN_TEMPLATE_SLUG
    from leadflow.messaging.models import Template, TemplateKind

    return (Template.objects.filter(workspace=workspace, kind=TemplateKind.TRANSACTIONAL, archived_at__isnull=True,
                                    approved_version__isnull=False)
            .exclude(slug=OPTIN_TEMPLATE_SLUG).order_by("name", "id"))


def company_counts(companies: QuerySet[Company]) -> QuerySet[Company]:
    return companies.annotate(contact_count=Count("contacts")).order_by("name", "id")


def contacts_per_channel(*, workspace: Workspace) -> list[dict]:
    """[{"channel": "paid_social", "n": 12}, …], largest first."""
    return list(Contact.objects.filter(workspace=workspace).values("source_channel")
                .annotate(n=Count("id")).order_by("-n", "source_channel"))


def top_utm_combinations(*, workspace: Workspace, limit: int = 50) -> list[dict]:
    """The most frequent first-touch utm_source/medium/campaign triples, grouped in the database."""
    tagged = Q()
    for key in UTM_KEYS:
        tagged |= Q(**{f"first_touch__{key}__isnull": False})
    return list(Contact.objects.filter(workspace=workspace).filter(tagged)
                .annotate(**{key: KT(f"first_touch__{key}") for key in UTM_KEYS})
                .values(*UTM_KEYS).annotate(n=Count("id")).order_by("-n", *UTM_KEYS)[:limit])
