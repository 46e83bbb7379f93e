"""Writes on contacts: merging two profiles, editing traits, deleting."""

from __future__ import annotations

from django.db import transaction
from django.forms.models import model_to_dict

from leadflow.contacts import hygiene
from leadflow.contacts.models import Company, Contact, ContactMerge
from leadflow.contacts.traits import traits_apply, traits_merge
from leadflow.core import clock
from leadflow.core.services import ServiceError, audit_record


def _earlier(a: dict, b: dict) -> dict:
    """The earlier touch; at the same moment, the one that says where the person came from."""
    if not a:
        return b
    if not b:
        return a
    rank_a = (a.get("at", ""), not a.get("informative"))
    rank_b = (b.get("at", ""), not b.get("informative"))
    return b if rank_b < rank_a else a


def _later_informative(a: dict, b: dict) -> dict:
    if not a:
        return b
    if not b:
        return a
    rank_a = (bool(a.get("informative")), a.get("at", ""))
    rank_b = (bool(b.get("informative")), b.get("at", ""))
    return b if rank_b >= rank_a else a


def touch_record(contact: Contact, touch: dict) -> None:
    """Earliest touch is the first touch; the newest informative one is the latest touch."""
    contact.first_touch = _earlier(contact.first_touch, touch)
    contact.latest_touch = _later_informative(contact.latest_touch, touch)
    contact.source_channel = contact.first_touch.get("channel", "")


# Apps whose rows point at contacts and need more than "re-point them to the survivor" register
# here (in their AppConfig.ready): `before(winner, loser)` runs before rows move (to settle unique
# rows such as an open sales assignment), `after(winner)` once they have (to recompute scores).
MERGE_HOOKS: list[tuple] = []


def merge_hook_register(*, before=None, after=None) -> None:
    MERGE_HOOKS.append((before, after))


def _snapshot(contact: Contact) -> dict:
    data = model_to_dict(contact)
    data["id"] = contact.pk
    data["identities"] = list(contact.identities.values("kind", "value"))
    for name in ("created_at", "updated_at", "first_seen_at", "last_seen_at", "stage_changed_at"):
        value = getattr(contact, name)
        data[name] = value.isoformat() if value else None
    return data


def contact_merge(*, winner: Contact, loser: Contact, reason: str, actor: str = "worker") -> ContactMerge:
    """Fold `loser` into `winner`: every row that points at the loser moves, nothing is lost.

    Conflict rule (docs/architecture.md): newest non-empty trait wins, earliest first touch wins,
    the newest informative touch is the latest touch, first/last seen widen.
    """
    if winner.pk == loser.pk:
        raise ServiceError("cannot merge a contact into itself")
    if winner.workspace_id != loser.workspace_id:
        raise ServiceError("cannot merge contacts of different workspaces")
    with transaction.atomic():
        snapshot = _snapshot(loser)
        for before, _ in MERGE_HOOKS:
            if before is not None:
                before(winner, loser)
        moved: dict[str, int] = {}
        for relation in Contact._meta.related_objects:
            if not (relation.one_to_many or relation.one_to_one):
                continue
            model = relation.related_model
            name = relation.field.name
            count = model._base_manager.filter(**{name: loser.pk}).update(**{name: winner.pk})
            if count:
                moved[model._meta.label_lower] = count
        traits_merge(winner, loser)
        winner.first_touch = _earlier(winner.first_touch, loser.first_touch)
        winner.latest_touch = _later_informative(winner.latest_touch, loser.latest_touch)
        winner.source_channel = winner.first_touch.get("channel", "")
        if not winner.user_id:
            winner.user_id = loser.user_id
        if winner.company_id is None:
            winner.company_id = loser.company_id
        winner.created_at = min(winner.created_at, loser.created_at)
        seen_first = [t for t in (winner.first_seen_at, loser.first_seen_at) if t]
        seen_last = [t for t in (winner.last_seen_at, loser.last_seen_at) if t]
        winner.first_seen_at = min(seen_first) if seen_first else None
        winner.last_seen_at = max(seen_last) if seen_last else None
        winner.updated_at = clock.now()
        winner.save()
        record = ContactMerge.objects.create(workspace_id=winner.workspace_id, winner=winner,
                                             loser_id=loser.pk, reason=reason,
                                             loser_snapshot=snapshot, moved=moved, at=clock.now())
        loser.delete()
        for _, after in MERGE_HOOKS:
            if after is not None:
                after(winner)
        audit_record(workspace=winner.workspace, actor=actor, action="contact.merge",
                     target=f"contact:{winner.pk}", data={"loser": record.loser_id, "reason": reason})
    return record


def contact_traits_update(*, contact: Contact, traits: dict, actor: str) -> Contact:
    """Set traits by hand (API or UI). A null or empty value removes a plain trait."""
    if not isinstance(traits, dict):
        raise ServiceError("traits must be an object")
    at = clock.now().isoformat()
    removals = [name for name, value in traits.items() if value is None or value == ""]
    for name in removals:
        contact.traits.pop(name, None)
        contact.trait_times[name] = at
    traits_apply(contact, {k: v for k, v in traits.items() if k not in removals}, at=at,
                 email_owned=False)
    contact.updated_at = clock.now()
    contact.save()
    from leadflow.scoring.services import contact_rescore

    contact_rescore(contact=contact)  # fit rules read traits
    from leadflow.segments.services import contact_segments_reevaluate

    contact_segments_reevaluate(contact=contact)  # so do segments
    audit_record(workspace=contact.workspace, actor=actor, action="contact.update",
                 target=f"contact:{contact.pk}", data={"traits": sorted(traits)})
    return contact


def contact_delete(*, contact: Contact, actor: str) -> None:
    """Delete the profile with its identities and its events."""
    from leadflow.tracking.models import Event

    with transaction.atomic():
        Event.objects.filter(contact=contact).delete()
        audit_record(workspace=contact.workspace, actor=actor, action="contact.delete",
                     target=f"contact:{contact.pk}")
        contact.delete()


def company_update(*, company: Company, changes: dict, actor: str) -> Company:
    """Edit a company's name, domain or traits; a null or empty trait value removes it."""
    if changes.get("name") is not None:
        company.name = hygiene.company_normalize(changes["name"])
    if changes.get("domain") is not None:
        try:
            company.domain = hygiene.domain_normalize(changes["domain"])
        except hygiene.HygieneError as exc:
            raise ServiceError(f"domain: {exc}") from None
    if changes.get("traits") is not None:
        if not isinstance(changes["traits"], dict):
            raise ServiceError("traits must be an object")
        traits = dict(company.traits)
        for name, value in changes["traits"].items():
            if value is None or value == "":
                traits.pop(name, None)
            else:
                traits[name] = value
        company.traits = traits
    company.updated_at = clock.now()
    company.save(update_fields=["name", "domain", "traits", "updated_at"])
    from leadflow.scoring.services import contacts_rescore

    contacts_rescore(workspace_id=company.workspace_id,  # fit rules read company traits
                     contacts=company.contacts.select_related("company").order_by("pk").iterator(chunk_size=1000))
    audit_record(workspace=company.workspace, actor=actor, action="company.update",
                 target=f"company:{company.pk}", data={"fields": sorted(changes)})
    return company
