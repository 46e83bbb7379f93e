"""Writes on segments: create, edit (a new version), archive, static list members by hand or CSV.

A dynamic segment's definition is parsed (and its segment references checked for cycles) before
anything is stored; every definition change is a new version with a SegmentVersion row, and the
members are re-evaluated in the same transaction, the entries and exits carrying the new version.
A static list's members change only through `segment_members_add` / `segment_members_remove` /
`segment_members_import`; each entry and exit is recorded and emitted like a dynamic one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction

from leadflow.contacts import hygiene
from leadflow.contacts.models import Contact, ContactMerge, Identity
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record, name_clean, slug_unique
from leadflow.segments import membership
from leadflow.segments.models import Segment, SegmentVersion

KINDS = (membership.DYNAMIC, membership.STATIC)
MAX_NAME = 200


def _definition_check(*, workspace_id: int, definition: object, segment_slug: str | None = None) -> dict:
    """The canonical JSON of a valid definition, or FilterError naming the bad part (also for
    references to unknown segments and reference cycles)."""
    from leadflow.segments.language import filter_dump, filter_parse

    return filter_dump(filter_parse(definition, workspace_id=workspace_id, segment_slug=segment_slug))


def _name(name: object) -> str:
    return name_clean(name, what="segment", max_length=MAX_NAME)


def _unique_slug(workspace_id: int, name: str) -> str:
    return slug_unique(model=Segment, workspace_id=workspace_id, name=name, fallback="segment")


def segment_create(*, workspace: Workspace, name: str, kind: str, definition: object = None,
                   actor: str) -> Segment:
    """A new segment at version 1; a dynamic one is evaluated at once (its first entries)."""
    name = _name(name)
    if kind not in KINDS:
        raise ServiceError(f"kind must be one of {', '.join(KINDS)}")
    if kind == membership.DYNAMIC:
        if definition is None:
            raise ServiceError("a dynamic segment needs a definition (its filter)")
        definition = _definition_check(workspace_id=workspace.pk, definition=definition)
    elif definition not in (None, {}):
        raise ServiceError("a static list has no definition: add its members by hand, CSV or API")
    now = clock.now()
    for _ in range(3):
        try:
            with transaction.atomic():
                segment = Segment.objects.create(
                    workspace=workspace, name=name, slug=_unique_slug(workspace.pk, name), kind=kind,
                    definition=definition if kind == membership.DYNAMIC else None, version=1,
                    created_at=now, updated_at=now)
                SegmentVersion.objects.create(workspace=workspace, segment=segment, version=1, definition=segment.definition,
                                              actor=actor[:200], created_at=now)
                audit_record(workspace=workspace, actor=actor, action="segment.create",
                             target=f"segment:{segment.pk}", data={"name": name, "kind": kind})
                if kind == membership.DYNAMIC:
                    membership.segment_evaluate(segment=segment, now=now)
                return segment
        except IntegrityError:
            continue  # a concurrent create took the slug; pick the next one
    raise ServiceError(f"could not find a free slug for {name!r}; try another name")


def segment_update(*, segment: Segment, actor: str, name: str | None = None,
                   definition: object = None) -> Segment:
    """Rename and/or redefine. A changed definition is a new version (the old ones stay in the
    history) and the members are re-evaluated against it; the slug never changes."""
    changes: dict = {}
    if name is not None:
        name = _name(name)
        if name != segment.name:
            changes["name"] = name
    if definition is not None:
        if segment.kind != membership.DYNAMIC:
            raise ServiceError("a static list has no definition: add its members by hand, CSV or API")
        definition = _definition_check(workspace_id=segment.workspace_id, definition=definition,
                                       segment_slug=segment.slug)
        if definition != segment.definition:
            changes["definition"] = definition
    if segment.archived_at is not None and changes:
        raise ServiceError("the segment is archived")
    if not changes:
        return segment
    now = clock.now()
    with transaction.atomic():
        locked = Segment.objects.select_for_update().get(pk=segment.pk)
        for key, value in changes.items():
            setattr(locked, key, value)
        locked.updated_at = now
        if "definition" in changes:
            locked.version += 1
            SegmentVersion.objects.create(workspace_id=locked.workspace_id, segment=locked, version=locked.version, definition=locked.definition,
                                          actor=actor[:200], created_at=now)
        locked.save()
        audit_record(workspace=locked.workspace, actor=actor, action="segment.update",
                     target=f"segment:{locked.pk}", data={"fields": sorted(changes), "version": locked.version})
        if "definition" in changes:
            membership.segment_evaluate(segment=locked, now=now)
    return locked


def segment_archive(*, segment: Segment, actor: str) -> Segment:
    """Stop keeping the segment current; its members and history stay readable. Refused while an
    active segment references it."""
    if segment.archived_at is not None:
        return segment
    users = [s for s in Segment.objects.filter(workspace_id=segment.workspace_id, kind=membership.DYNAMIC,
                                               archived_at__isnull=True).exclude(pk=segment.pk)
             if segment.slug in membership.segment_references(s)]
    if users:
        raise ServiceError("segment is referenced by " + ", ".join(f"{s.name!r} ({s.pk})" for s in users)
                           + "; change those first")
    segment.archived_at = clock.now()
    segment.save(update_fields=["archived_at"])
    audit_record(workspace=segment.workspace, actor=actor, action="segment.archive", target=f"segment:{segment.pk}")
    return segment


# --- static lists -----------------------------------------------------------------------------

@dataclass
class MembersReport:
    changed: list[int] = field(default_factory=list)  # contacts added (or removed)
    unchanged: list[int] = field(default_factory=list)  # already in (or already out)
    unknown: list[dict] = field(default_factory=list)  # {"value"/"row", "reason"}
    rows: int = 0

    def as_dict(self) -> dict:
        return {"changed": len(self.changed), "unchanged": len(self.unchanged), "rows": self.rows,
                "contact_ids": self.changed, "unknown": self.unknown}


def contacts_resolve(*, workspace_id: int, contact_ids=(), emails=(), user_ids=()) -> tuple[dict, list[dict]]:
    """{given value: contact id} for the values that name a contact of the workspace (ids of
    merged-away contacts lead to the survivor), and the values that do not."""
    found: dict = {}
    unknown: list[dict] = []
    ids = []
    for value in contact_ids:
        if isinstance(value, bool) or not isinstance(value, int):
            unknown.append({"value": value, "reason": "not a contact id"})
        else:
            ids.append(value)
    if ids:
        existing = set(Contact.objects.filter(workspace_id=workspace_id, pk__in=ids).values_list("pk", flat=True))
        missing = [i for i in ids if i not in existing]
        winners = dict(ContactMerge.objects.filter(workspace_id=workspace_id, loser_id__in=missing)
                       .values_list("loser_id", "winner_id")) if missing else {}
        # A merged-away id leads to its survivor (which may itself have been merged since).
        alive = set(Contact.objects.filter(workspace_id=workspace_id, pk__in=set(winners.values()))
                    .values_list("pk", flat=True)) if winners else set()
        for value in ids:
            if value in existing:
                found[value] = value
            elif winners.get(value) in alive:
                found[value] = winners[value]
            else:
                unknown.append({"value": value, "reason": "no such contact in this workspace"})
    wanted: dict[tuple[str, str], list] = {}
    for kind, values in (("email", emails), ("user_id", user_ids)):
        for value in values:
            if not isinstance(value, str) or not value.strip():
                unknown.append({"value": value, "reason": f"not a{'n' if kind == 'email' else ''} {kind}"})
                continue
            key = value.strip()
            if kind == "email":
                try:
                    key = hygiene.email_normalize(key)
                except hygiene.HygieneError as exc:
                    unknown.append({"value": value, "reason": f"email: {exc}"})
                    continue
            wanted.setdefault((kind, key), []).append(value)
    if wanted:
        rows = Identity.objects.filter(workspace_id=workspace_id, kind__in={k for k, _ in wanted},
                                       value__in={v for _, v in wanted}).values_list("kind", "value", "contact_id")
        owner = {(k, v): c for k, v, c in rows}
        for key, values in wanted.items():
            for value in values:
                if key in owner:
                    found[value] = owner[key]
                else:
                    unknown.append({"value": value, "reason": f"no contact with {key[0]} {key[1]!r}"})
    return found, unknown


def _members_change(*, segment: Segment, ids: set[int], remove: bool, actor: str, report: MembersReport,
                    action: str) -> MembersReport:
    now = clock.now()
    with transaction.atomic():
        locked = Segment.objects.select_for_update().get(pk=segment.pk)
        added, removed = membership.members_change_by_hand(
            segment=locked, add=() if remove else ids, remove=ids if remove else (), now=now)
        report.changed = removed if remove else added
        report.unchanged = sorted(ids - set(report.changed))
        locked.updated_at = now
        locked.save(update_fields=["updated_at"])
        audit_record(workspace=locked.workspace, actor=actor, action=action, target=f"segment:{locked.pk}",
                     data={"changed": len(report.changed), "unchanged": len(report.unchanged),
                           "unknown": len(report.unknown)})
    return report


def segment_members_add(*, segment: Segment, actor: str, contact_ids=(), emails=(), user_ids=()) -> MembersReport:
    """Add contacts (by id, email or user id) to a static list; unknown values are reported."""
    return _members_by_value(segment=segment, actor=actor, remove=False, contact_ids=contact_ids,
                             emails=emails, user_ids=user_ids)


def segment_members_remove(*, segment: Segment, actor: str, contact_ids=(), emails=(), user_ids=()) -> MembersReport:
    """Remove contacts (by id, email or user id) from a static list; unknown values are reported."""
    return _members_by_value(segment=segment, actor=actor, remove=True, contact_ids=contact_ids,
                             emails=emails, user_ids=user_ids)


def _members_by_value(*, segment: Segment, actor: str, remove: bool, contact_ids, emails, user_ids) -> MembersReport:
    if segment.kind != membership.STATIC:
        raise ServiceError("only static lists take members by hand; a dynamic segment's members follow its filter")
    found, unknown = contacts_resolve(workspace_id=segment.workspace_id, contact_ids=list(contact_ids or ()),
                                      emails=list(emails or ()), user_ids=list(user_ids or ()))
    report = MembersReport(unknown=unknown, rows=len(found) + len(unknown))
    return _members_change(segment=segment, ids=set(found.values()), remove=remove, actor=actor, report=report,
                           action="segment.members.remove" if remove else "segment.members.add")


EMAIL_COLUMNS = ("email", "e_mail", "email_address", "e_mail_address")
USER_ID_COLUMNS = ("user_id", "userid")


def segment_members_import(*, segment: Segment, file, actor: str, remove: bool = False) -> MembersReport:
    """Add (or remove) the people a CSV file names by an `email` or `user_id` column; every row
    that names nobody known is reported with its line number. Other columns are ignored."""
    from leadflow.contacts.imports import ImportFileError, _CsvRows, _Source, normalize_header

    if segment.kind != membership.STATIC:
        raise ServiceError("only static lists take members by CSV; a dynamic segment's members follow its filter")
    source = _Source(file)
    try:
        csv_rows = _CsvRows(source.text)
        targets = []
        for column in csv_rows.header:
            name = normalize_header(column)
            targets.append("email" if name in EMAIL_COLUMNS else "user_id" if name in USER_ID_COLUMNS else None)
        if csv_rows.header and not {"email", "user_id"} & set(targets):
            raise ImportFileError("the file needs an email or user_id column (columns: "
                                  + ", ".join(h.strip() for h in csv_rows.header) + ")")
        rows = list(csv_rows.rows(targets))
    finally:
        source.close()
    report = MembersReport(rows=len(rows))
    if not rows:
        raise ImportFileError("the file has no data rows")
    emails = [r.values["email"] for r in rows if not r.error and "email" in r.values]
    user_ids = [r.values["user_id"] for r in rows if not r.error and "email" not in r.values and "user_id" in r.values]
    found, _ = contacts_resolve(workspace_id=segment.workspace_id, emails=emails, user_ids=user_ids)
    ids: set[int] = set()
    for row in rows:
        if row.error:
            report.unknown.append({"row": row.line, "reason": row.error})
            continue
        value = row.values.get("email") or row.values.get("user_id")
        if value is None:
            report.unknown.append({"row": row.line, "reason": "no email or user_id"})
        elif value in found:
            ids.add(found[value])
        else:
            what = "email" if "email" in row.values else "user_id"
            report.unknown.append({"row": row.line, "reason": f"no contact with {what} {value!r}"})
    return _members_change(segment=segment, ids=ids, remove=remove, actor=actor, report=report,
                           action="segment.members.import")


def contact_segments_reevaluate(*, contact: Contact, now: dt.datetime | None = None) -> dict[int, tuple]:
    """Decide a contact's dynamic memberships again now (after an edit outside the pipeline)."""
    with transaction.atomic():
        return membership.contacts_reevaluate(workspace_id=contact.workspace_id, contact_ids=[contact.pk],
                                              now=now or clock.now(), verify=True)
