"""Companies: list, get with its number of contacts, edit name, domain and traits."""

from __future__ import annotations

import re

from django.db.models import Count
from ninja import Query, Router
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.api.schemas import CompanyDetailOut, CompanyPage, CompanyPatch
from leadflow.contacts import hygiene, selectors
from leadflow.contacts.models import Company
from leadflow.core import clock
from leadflow.core.services import ServiceError, audit_record

router = Router(tags=["companies"])

DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def _with_counts(qs):
    return qs.annotate(contacts_count=Count("contacts"))


def _get(request, company_id: int) -> Company:
    company = _with_counts(Company.objects.filter(workspace=request.workspace, pk=company_id)).first()
    if company is None:
        raise HttpError(404, f"no company {company_id} in this workspace")
    return company


def _domain_clean(raw: str) -> str:
    """'https://www.Acme.com/about' -> 'acme.com', as the identity processor stores it."""
    domain = raw.strip().lower().removeprefix("https://").removeprefix("http://")
    domain = domain.removeprefix("www.").split("/")[0]
    if domain and not DOMAIN.match(domain):
        raise ServiceError(f"domain {raw!r} is not a domain name such as example.com")
    return domain


def _company_update(*, company: Company, changes: dict, actor: str) -> Company:
    # Belongs in contacts.services (company_update) once that module grows one.
    if changes.get("name") is not None:
        company.name = hygiene.company_normalize(changes["name"])
    if changes.get("domain") is not None:
        company.domain = _domain_clean(changes["domain"])
    if changes.get("traits") is not None:
        traits = dict(company.traits)
        for name, value in changes["traits"].items():
            if value is None or value == "":
                traits.pop(name, None)
            else:
                traits[name] = value
        company.traits = traits
    company.updated_at = clock.now()
    company.save(update_fields=["name", "domain", "traits", "updated_at"])
    audit_record(workspace=company.workspace, actor=actor, action="company.update",
                 target=f"company:{company.pk}", data={"fields": sorted(changes)})
    return company


@router.get("", response=CompanyPage, summary="List companies (newest first)")
def companies_list(request, q: str = Query("", description="part of the name or domain, or a group id"),
                   limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                   next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = _with_counts(selectors.company_list(workspace=request.workspace, q=q.strip()))
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": items, "next": following}


@router.get("/{company_id}", response=CompanyDetailOut, summary="One company with its number of contacts")
def companies_get(request, company_id: int):
    return _get(request, company_id)


@router.patch("/{company_id}", response=CompanyDetailOut,
              summary="Edit name, domain and traits (a null trait removes it)")
def companies_update(request, company_id: int, payload: CompanyPatch):
    company = _get(request, company_id)
    company.workspace = request.workspace
    _company_update(company=company, changes=payload.dict(exclude_unset=True), actor=actor(request))
    return _get(request, company_id)
