"""Companies: list, get with its number of contacts, edit name, domain and traits."""

from __future__ import annotations

from django.db.models import Count
from ninja import Query, Router
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.api.schemas import CompanyDetailOut, CompanyPage, CompanyPatch
from leadflow.contacts import selectors, services
from leadflow.contacts.models import Company
from leadflow.core.services import ServiceError

router = Router(tags=["companies"])

def _with_counts(qs):
    return qs.annotate(contacts_count=Count("contacts"))


def _get(request, company_id: int) -> Company:
    company = _with_counts(Company.objects.filter(workspace=request.workspace, pk=company_id)).first()
    if company is None:
        raise HttpError(404, f"no company {company_id} in this workspace")
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
    try:
        services.company_update(company=company, changes=payload.dict(exclude_unset=True), actor=actor(request))
    except ServiceError as exc:
        raise HttpError(400, str(exc)) from exc
    return _get(request, company_id)
