"""Reads over contacts, always scoped to one workspace."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from leadflow.contacts import hygiene
from leadflow.contacts.models import Company, Contact, ContactMerge, Identity
from leadflow.core.models import Workspace


def contact_get(*, workspace: Workspace, contact_id: int) -> Contact | None:
    """The contact, following merges: an id that was merged away leads to the survivor."""
    contact = Contact.objects.filter(workspace=workspace, pk=contact_id).first()
    seen = set()
    while contact is None and contact_id not in seen:
        seen.add(contact_id)
        merge = ContactMerge.objects.filter(workspace=workspace, loser_id=contact_id).first()
        if merge is None:
            return None
        contact_id = merge.winner_id
        contact = Contact.objects.filter(workspace=workspace, pk=contact_id).first()
    return contact


def contact_get_by_identity(*, workspace: Workspace, kind: str, value: str) -> Contact | None:
    if kind == "email":
        try:
            value = hygiene.email_normalize(value)
        except hygiene.HygieneError:
            return None
    identity = (Identity.objects.select_related("contact")
                .filter(workspace=workspace, kind=kind, value=value).first())
    return identity.contact if identity else None


def contact_search(*, workspace: Workspace, email: str = "", user_id: str = "", q: str = "") -> QuerySet[Contact]:
    qs = Contact.objects.filter(workspace=workspace).select_related("company")
    if email:
        try:
            email = hygiene.email_normalize(email)
        except hygiene.HygieneError:
            return qs.none()
        qs = qs.filter(identities__kind="email", identities__value=email)
    if user_id:
        qs = qs.filter(identities__kind="user_id", identities__value=user_id)
    q = q.strip()
    if q:
        qs = qs.filter(
            Q(email__icontains=q) | Q(first_name__icontains=q) | Q(last_name__icontains=q)
            | Q(user_id=q) | Q(company__name__icontains=q)
            | Q(identities__value=q.lower()) | Q(identities__value=q)
        ).distinct()
    return qs


def company_list(*, workspace: Workspace, q: str = "") -> QuerySet[Company]:
    qs = Company.objects.filter(workspace=workspace)
    if q:
        qs = qs.filter(Q(name__icontains=q) | Q(domain__icontains=q) | Q(group_id=q))
    return qs
