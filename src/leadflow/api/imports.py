"""CSV imports over the API: contacts and historical events, answered with the import report."""

from __future__ import annotations

import json

from ninja import File, Form, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from leadflow.api.auth import actor
from leadflow.contacts.imports import ImportFileError, ImportReport, contacts_import, events_import

router = Router(tags=["imports"])


class RejectedRowOut(Schema):
    row: int
    reason: str


class ImportReportOut(Schema):
    imported: int
    updated: int
    duplicates: int
    skipped_unchanged: int
    rows: int
    rejected_count: int
    rejected: list[RejectedRowOut]


class ImportFailedOut(Schema):
    detail: str
    report: ImportReportOut | None = None


def _mapping(raw: str | None) -> dict[str, str] | None:
    if not raw or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise HttpError(400, f"mapping is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise HttpError(400, 'mapping must be a JSON object of column name to field, '
                             'e.g. {"E-mail Address": "email", "Internal": "ignore"}')
    return value


def _answer(report: ImportReport):
    data = report.as_dict()
    if report.nothing_imported:
        detail = ("nothing was imported: the file has no data rows" if not report.rows
                  else f"nothing was imported: all {report.rows} rows were rejected")
        return Status(400, {"detail": detail, "report": data})
    return Status(200, data)


@router.post("/contacts", response={200: ImportReportOut, 400: ImportFailedOut},
             summary="Import contacts from a CSV file")
def import_contacts(request, file: File[UploadedFile], source: Form[str] = "",
                    mapping: Form[str] = ""):
    """Columns email, user_id, first_name, last_name, phone, company, title, country, timezone fill
    those fields; utm_* columns the source; every other column becomes a trait. `mapping` is a JSON
    object such as `{"E-mail Address": "email", "Fav colour": "trait:favourite_colour",
    "Internal": "ignore"}`. Re-importing a file updates contacts instead of duplicating them."""
    try:
        report = contacts_import(workspace=request.workspace, file=file, source_label=source,
                                 mapping=_mapping(mapping), actor=actor(request))
    except ImportFileError as exc:
        return Status(400, {"detail": str(exc)})
    return _answer(report)


@router.post("/events", response={200: ImportReportOut, 400: ImportFailedOut},
             summary="Import historical events from a CSV file")
def import_events(request, file: File[UploadedFile], mapping: Form[str] = ""):
    """One event per row: user_id or email, event, timestamp (ISO 8601, YYYY-MM-DD or YYYYMMDD);
    every other column becomes an event property."""
    try:
        report = events_import(workspace=request.workspace, file=file, mapping=_mapping(mapping),
                               actor=actor(request))
    except ImportFileError as exc:
        return Status(400, {"detail": str(exc)})
    return _answer(report)
