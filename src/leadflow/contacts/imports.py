"""Importing contacts and historical events from CSV files.

An import never writes profiles itself: each good row becomes an `identify` (contacts) or `track`
(history) message with `context.leadflow.import` set, appended through `events_append` like any
other event, and the identity/profile processor derives the profiles. Everything one import
appends, and the processing of it, happens in one transaction: a crash leaves nothing behind.

Each message's id is a hash of the workspace, the kind of import and the normalised row, so
running the same file again stores nothing twice, and a changed row yields a new `identify` that
updates the profile it resolves to (by email or user id).

Rows are read as a stream; good rows are kept, normalised, until the file ends so that a person
who appears twice in the file is folded into one message (later values win). That costs memory
proportional to the people in the file, which is small next to the file itself.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson
from django.db import transaction
from django.db.models import Q

from leadflow.contacts import hygiene
from leadflow.contacts.models import Identity
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError

CHUNK_ROWS = 5000
LIBRARY = {"name": "leadflow-import", "version": "1"}

CONTACT_FIELDS = ("email", "user_id", "first_name", "last_name", "phone", "company", "title",
                  "country", "timezone")
EVENT_FIELDS = ("email", "user_id", "event", "timestamp")
UTM_FIELDS = {"utm_source": "source", "utm_medium": "medium", "utm_campaign": "name",
              "utm_term": "term", "utm_content": "content"}
IGNORE = "ignore"

Progress = Callable[[int, int], None]


class ImportFileError(ServiceError):
    """The file as a whole cannot be imported (missing, not CSV, no identity column, bad mapping)."""


@dataclass
class RejectedRow:
    row: int  # line number in the file; the header is line 1
    reason: str


@dataclass
class ImportReport:
    imported: int = 0  # new contacts (contacts import) or events stored (events import)
    updated: int = 0  # existing contacts the import changed
    duplicates: int = 0  # rows folded into an earlier row of the same file
    skipped_unchanged: int = 0  # rows already imported before, exactly as they are
    rejected: list[RejectedRow] = field(default_factory=list)
    rows: int = 0  # data rows read (blank lines not counted)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    @property
    def nothing_imported(self) -> bool:
        """True for an empty file or one whose every row was rejected: the import failed."""
        return self.rows == 0 or self.rejected_count == self.rows

    def as_dict(self) -> dict:
        return {
            "imported": self.imported, "updated": self.updated, "duplicates": self.duplicates,
            "skipped_unchanged": self.skipped_unchanged, "rejected_count": self.rejected_count,
            "rows": self.rows,
            "rejected": [{"row": r.row, "reason": r.reason} for r in self.rejected],
        }


class _RowError(ValueError):
    pass


# -- reading the file ----------------------------------------------------------------------------

def _latin1_fallback(error: UnicodeDecodeError) -> tuple[str, int]:
    """Decode bytes that are not UTF-8 as Latin-1, so mixed and legacy files import as typed."""
    return error.object[error.start:error.end].decode("latin-1"), error.end


codecs.register_error("leadflow-latin1", _latin1_fallback)


class _Source:
    """A text stream over a path, a binary file or a text file; closes only what it opened."""

    def __init__(self, file: str | os.PathLike | BinaryIO | TextIO | Any):
        self._opened: BinaryIO | None = None
        self._wrapper: io.TextIOWrapper | None = None
        self.name = ""
        if isinstance(file, (str, os.PathLike)):
            path = Path(file)
            if not path.is_file():
                raise ImportFileError(f"no such file: {path}")
            self._opened = path.open("rb")
            raw: Any = self._opened
            self.name = path.name
        else:
            raw = getattr(file, "file", None) if hasattr(file, "chunks") else file  # Django File
            raw = raw if raw is not None else file
            self.name = os.path.basename(str(getattr(file, "name", "") or ""))
        if hasattr(raw, "seek"):
            try:
                raw.seek(0)
            except (OSError, ValueError):
                pass
        probe = raw.read(0)
        if isinstance(probe, str):
            self.text: TextIO = raw
            return
        encoding = "utf-8-sig"
        if hasattr(raw, "seekable") and raw.seekable():
            if raw.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):  # Excel's "Unicode text"
                encoding = "utf-16"
            raw.seek(0)
        try:
            self._wrapper = io.TextIOWrapper(raw, encoding=encoding, errors="leadflow-latin1",
                                             newline="")
        except (AttributeError, TypeError, io.UnsupportedOperation):
            self._wrapper = io.TextIOWrapper(io.BytesIO(raw.read()), encoding=encoding,
                                             errors="leadflow-latin1", newline="")
        self.text = self._wrapper

    def close(self) -> None:
        if self._wrapper is not None:
            try:
                self._wrapper.detach()  # leave the caller's file open
            except ValueError:
                pass
        if self._opened is not None:
            self._opened.close()


def _sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def normalize_header(name: str) -> str:
    """`E-mail Address ` → `e_mail_address`: trimmed, lower-cased, spaces and dashes as `_`."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower()).strip("_")


@dataclass
class _Row:
    line: int
    values: dict[str, str]  # target -> trimmed cell, non-empty cells only
    error: str = ""


class _CsvRows:
    """The header and then the data rows of a CSV text stream, with their line numbers."""

    def __init__(self, text: TextIO):
        first = text.readline()
        self.header: list[str] = []
        if not first.strip():
            return
        if "\0" in first:
            raise ImportFileError("the file is not CSV text (it holds NUL bytes): is it a spreadsheet? "
                                  "Save it as CSV (UTF-8) and import that")
        self._reader = csv.reader(_chain_first(first, text), delimiter=_sniff_delimiter(first))
        try:
            self.header = next(self._reader)
        except csv.Error as exc:
            raise ImportFileError(f"line 1 is not valid CSV: {exc}") from None

    def rows(self, targets: list[str | None]) -> Iterator[_Row]:
        if not self.header:
            return
        reader, width = self._reader, len(self.header)
        previous = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ImportFileError(f"line {reader.line_num} is not valid CSV: {exc}") from None
            line, previous = previous + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > width and any(c.strip() for c in cells[width:]):
                yield _Row(line, {}, f"row has {len(cells)} values but the header has {width} columns")
                continue
            values: dict[str, str] = {}
            for target, cell in zip(targets, cells):
                if target is not None:
                    cell = cell.strip()
                    if cell:
                        values[target] = cell
            yield _Row(line, values)


def _chain_first(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def _resolve_targets(header: list[str], mapping: dict[str, str] | None, *, fields: tuple[str, ...],
                     extra_prefix: str) -> list[str | None]:
    """The target of each column: a field name, `trait:NAME`/`property:NAME`, or None (ignored)."""
    by_column = {normalize_header(k): v.strip() for k, v in (mapping or {}).items()}
    known_columns = {normalize_header(h) for h in header}
    unknown = [k for k in (mapping or {}) if normalize_header(k) not in known_columns]
    if unknown:
        raise ImportFileError(f"mapping names columns the file does not have: {', '.join(unknown)} "
                              f"(columns: {', '.join(h.strip() for h in header)})")
    targets: list[str | None] = []
    seen: dict[str, str] = {}
    for raw in header:
        column = normalize_header(raw)
        wanted = by_column.get(column, column)
        target = _target(wanted, fields=fields, extra_prefix=extra_prefix,
                         explicit=column in by_column, column=raw)
        if target is not None:
            if target in seen:
                raise ImportFileError(f"columns {seen[target]!r} and {raw.strip()!r} both fill "
                                      f"{target.split(':', 1)[-1]!r}; map or ignore one of them")
            seen[target] = raw.strip()
        targets.append(target)
    return targets


def _target(wanted: str, *, fields: tuple[str, ...], extra_prefix: str, explicit: bool,
            column: str) -> str | None:
    if not wanted:
        return None
    lowered = wanted.lower()
    if lowered == IGNORE:
        return None
    if lowered in fields or lowered in UTM_FIELDS:
        return lowered
    prefix, sep, name = wanted.partition(":")
    if sep and prefix.lower() in ("trait", "property", "prop"):
        name = name.strip()
        if not name:
            raise ImportFileError(f"mapping for {column.strip()!r} names no {prefix.lower()}")
        return f"{extra_prefix}:{name}"
    if explicit and normalize_header(wanted) in fields:
        return normalize_header(wanted)
    if explicit:
        choices = ", ".join((*fields, *UTM_FIELDS, f"{extra_prefix}:NAME", IGNORE))
        raise ImportFileError(f"cannot map {column.strip()!r} to {wanted!r}; use one of {choices}")
    return f"{extra_prefix}:{wanted}"


# -- typing cells --------------------------------------------------------------------------------

_INT = re.compile(r"-?(0|[1-9][0-9]{0,14})")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+([eE][-+]?[0-9]+)?")
_BOOLS = {"true": True, "yes": True, "false": False, "no": False}


def typed(value: str) -> bool | int | float | str:
    """A cell as a JSON value: integers, decimals, true/false/yes/no as booleans, else text.

    Numbers with leading zeros (postcodes, account numbers) and very long digit strings stay text
    so nothing is lost.
    """
    lowered = value.lower()
    if lowered in _BOOLS:
        return _BOOLS[lowered]
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


# -- parsing rows --------------------------------------------------------------------------------

def _email(raw: str | None) -> str:
    if not raw:
        return ""
    try:
        return hygiene.email_normalize(raw)
    except hygiene.HygieneError as exc:
        raise _RowError(str(exc)) from None


def _campaign(values: dict[str, str]) -> dict[str, str]:
    return {UTM_FIELDS[k]: values[k] for k in UTM_FIELDS if values.get(k)}


@dataclass
class _Contact:
    line: int
    user_id: str
    email: str
    traits: dict[str, Any]
    campaign: dict[str, str]

    def fold(self, later: _Contact) -> None:
        self.user_id = later.user_id or self.user_id
        self.email = later.email or self.email
        self.traits.update(later.traits)
        self.campaign.update(later.campaign)


def _contact_from_row(row: _Row) -> _Contact:
    if row.error:
        raise _RowError(row.error)
    values = row.values
    user_id = values.get("user_id", "")
    email = _email(values.get("email"))
    if not user_id and not email:
        raise _RowError("no email or user_id")
    traits: dict[str, Any] = {}
    country = ""
    if values.get("country"):
        traits["country"] = values["country"]
        country = hygiene.country_normalize(values["country"])
    if values.get("phone"):
        try:
            traits["phone"] = hygiene.phone_normalize(values["phone"], country=country)
        except hygiene.HygieneError as exc:
            where = f" for country {country}" if country else ""
            raise _RowError(f"{exc}{where}") from None
    if values.get("timezone"):
        try:
            traits["timezone"] = hygiene.timezone_normalize(values["timezone"])
        except hygiene.HygieneError as exc:
            raise _RowError(str(exc)) from None
    for name in ("first_name", "last_name", "company", "title"):
        if values.get(name):
            traits[name] = values[name]
    for target, value in values.items():
        if target.startswith("trait:"):
            traits[target[6:]] = typed(value)
    return _Contact(row.line, user_id, email, traits, _campaign(values))


_DATE8 = re.compile(r"[0-9]{8}")


def parse_timestamp(text: str) -> dt.datetime:
    """ISO 8601 (a naive time is UTC), YYYY-MM-DD or YYYYMMDD, as an aware UTC datetime."""
    value = text.strip()
    if _DATE8.fullmatch(value):
        value = f"{value[:4]}-{value[4:6]}-{value[6:]}"
    try:
        return clock.parse_iso(value)
    except ValueError:
        raise _RowError(f"timestamp {text!r} is not ISO 8601, YYYY-MM-DD or YYYYMMDD") from None


@dataclass
class _Event:
    line: int
    user_id: str
    email: str
    event: str
    timestamp: dt.datetime
    properties: dict[str, Any]
    campaign: dict[str, str]


def _event_from_row(row: _Row) -> _Event:
    if row.error:
        raise _RowError(row.error)
    values = row.values
    name = values.get("event", "")
    if not name:
        raise _RowError("no event name")
    user_id = values.get("user_id", "")
    email = _email(values.get("email"))
    if not user_id and not email:
        raise _RowError("no email or user_id")
    if not values.get("timestamp"):
        raise _RowError("no timestamp")
    timestamp = parse_timestamp(values["timestamp"])
    properties = {t[9:]: typed(v) for t, v in values.items() if t.startswith("property:")}
    return _Event(row.line, user_id, email, name, timestamp, properties, _campaign(values))


# -- messages ------------------------------------------------------------------------------------

def _digest(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def anonymous_id_for_email(workspace_id: int, email: str) -> str:
    """The stable anonymous id imports give a person known only by email (the log needs one)."""
    return "lf-email-" + _digest(workspace_id, "email", email)[:32]


def _base_context(label: str, line: int, campaign: dict[str, str]) -> dict:
    context: dict[str, Any] = {"leadflow": {"import": label, "import_row": line},
                               "library": dict(LIBRARY)}
    if campaign:
        context["campaign"] = dict(campaign)
    return context


def _identity(message: dict, workspace_id: int, user_id: str, email: str) -> None:
    if user_id:
        message["userId"] = user_id
    else:
        message["anonymousId"] = anonymous_id_for_email(workspace_id, email)


def _contact_message(workspace_id: int, label: str, person: _Contact) -> dict:
    traits = dict(person.traits)
    if person.email:
        traits["email"] = person.email
    message = {
        "type": "identify",
        "messageId": "imp-c-" + _digest(workspace_id, "contacts", person.user_id, person.email,
                                         traits, person.campaign)[:48],
        "traits": traits,
        "context": _base_context(label, person.line, person.campaign),
    }
    _identity(message, workspace_id, person.user_id, person.email)
    return message


def _event_message(workspace_id: int, label: str, item: _Event) -> dict:
    at = item.timestamp.isoformat()
    context = _base_context(label, item.line, item.campaign)
    if item.email:
        context["traits"] = {"email": item.email}
    message = {
        "type": "track",
        "messageId": "imp-e-" + _digest(workspace_id, "events", item.user_id, item.email, item.event,
                                         at, item.properties, item.campaign)[:48],
        "event": item.event,
        "properties": item.properties,
        "timestamp": at,
        "context": context,
    }
    _identity(message, workspace_id, item.user_id, item.email)
    return message


# -- the imports ---------------------------------------------------------------------------------

def _workspace(workspace: Workspace | int) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace.objects.get(pk=workspace)


def _parse(file, *, mapping: dict[str, str] | None, fields: tuple[str, ...], extra_prefix: str,
           required: Callable[[set[str]], str], row_parser: Callable[[_Row], Any],
           report: ImportReport) -> tuple[list, str]:
    """Read the whole file, returning the parsed good rows; bad rows go to `report.rejected`."""
    source = _Source(file)
    try:
        reader = _CsvRows(source.text)
        if not reader.header:
            return [], source.name
        targets = _resolve_targets(reader.header, mapping, fields=fields, extra_prefix=extra_prefix)
        problem = required({t for t in targets if t})
        if problem:
            raise ImportFileError(problem)
        parsed = []
        for row in reader.rows(targets):
            report.rows += 1
            try:
                parsed.append(row_parser(row))
            except _RowError as exc:
                report.rejected.append(RejectedRow(row.line, str(exc)))
        return parsed, source.name
    finally:
        source.close()


def _contacts_required(targets: set[str]) -> str:
    if "email" in targets or "user_id" in targets:
        return ""
    return ("the file has no email or user_id column; map one, e.g. "
            "--map \"E-mail Address=email\" (or mapping {\"E-mail Address\": \"email\"})")


def _events_required(targets: set[str]) -> str:
    missing = []
    if "email" not in targets and "user_id" not in targets:
        missing.append("email or user_id")
    missing += [name for name in ("event", "timestamp") if name not in targets]
    if not missing:
        return ""
    return (f"the file has no {' and no '.join(missing)} column; map one, e.g. "
            f"--map \"Your Column={missing[0].split()[0]}\"")


def _fold_people(items: list[_Contact], report: ImportReport) -> list[_Contact]:
    """One record per person: a row with the email or user_id of an earlier row folds into it.

    Two rows with different user_ids are different people even when they share an email, as in
    identity resolution.
    """
    people: list[_Contact] = []
    index: dict[tuple[str, str], int] = {}
    for item in items:
        match = None
        for key in (("user_id", item.user_id), ("email", item.email)):
            if key[1] and key in index:
                earlier = people[index[key]]
                if item.user_id and earlier.user_id and item.user_id != earlier.user_id:
                    continue
                match = index[key]
                break
        if match is None:
            people.append(item)
            match = len(people) - 1
        else:
            people[match].fold(item)
            report.duplicates += 1
        person = people[match]
        for key in (("user_id", person.user_id), ("email", person.email)):
            if key[1]:
                index.setdefault(key, match)
    return people


def _existing_keys(workspace_id: int, people: list[_Contact]) -> set[tuple[str, str]]:
    emails = {p.email for p in people if p.email}
    user_ids = {p.user_id for p in people if p.user_id}
    if not emails and not user_ids:
        return set()
    return set(Identity.objects.filter(
        Q(kind="email", value__in=emails) | Q(kind="user_id", value__in=user_ids),
        workspace_id=workspace_id).values_list("kind", "value"))


def _append_all(*, workspace: Workspace, items: list, messages: list[dict], report: ImportReport,
                on_stored: Callable[[list, set[tuple[str, str]] | None], None],
                lookup: Callable[[list], set[tuple[str, str]]] | None,
                progress: Progress | None, action: str, label: str, actor: str) -> None:
    """Append the messages chunk by chunk and process each chunk, all in one transaction."""
    from leadflow.core.pipeline import process_pending
    from leadflow.core.services import audit_record
    from leadflow.tracking.ingest import events_append
    from leadflow.tracking.models import Event

    total = len(items)
    if progress:
        progress(0, total)
    with transaction.atomic():
        for start in range(0, total, CHUNK_ROWS):
            chunk = list(zip(items[start:start + CHUNK_ROWS], messages[start:start + CHUNK_ROWS]))
            ids = [message["messageId"] for _, message in chunk]
            stored = set(Event.objects.filter(workspace=workspace, message_id__in=ids)
                         .values_list("message_id", flat=True))
            fresh = [(item, message) for item, message in chunk if message["messageId"] not in stored]
            report.skipped_unchanged += len(chunk) - len(fresh)
            if fresh:
                known = lookup([item for item, _ in fresh]) if lookup else None
                result = events_append(workspace=workspace, messages=[m for _, m in fresh])
                bad = {entry["index"]: entry["reason"] for entry in result.rejected}
                for index, reason in bad.items():
                    report.rejected.append(RejectedRow(fresh[index][0].line, reason))
                on_stored([item for n, (item, _) in enumerate(fresh) if n not in bad], known)
                process_pending(isolate_failures=False)
            if progress:
                progress(min(start + CHUNK_ROWS, total), total)
        report.rejected.sort(key=lambda r: r.row)
        summary = {k: v for k, v in report.as_dict().items() if k != "rejected"}
        audit_record(workspace=workspace, actor=actor or "system", action=action,
                     target=label[:200], data=summary)


def _label(given: str, file_name: str, default: str) -> str:
    return (given or "").strip() or file_name or default


def contacts_import(*, workspace: Workspace | int, file, source_label: str = "",
                    mapping: dict[str, str] | None = None, actor: str = "",
                    progress: Progress | None = None) -> ImportReport:
    """Import contacts from a CSV file (path, binary or text file object).

    Raises ImportFileError when the file as a whole cannot be read; bad rows are reported in
    the returned report, the rest is imported.
    """
    ws = _workspace(workspace)
    report = ImportReport()
    parsed, file_name = _parse(file, mapping=mapping, fields=CONTACT_FIELDS, extra_prefix="trait",
                               required=_contacts_required, row_parser=_contact_from_row,
                               report=report)
    people = _fold_people(parsed, report)
    label = _label(source_label, file_name, "contacts")
    messages = [_contact_message(ws.pk, label, person) for person in people]

    def stored(done: list[_Contact], known: set[tuple[str, str]] | None) -> None:
        for person in done:
            if ("email", person.email) in known or ("user_id", person.user_id) in known:
                report.updated += 1
            else:
                report.imported += 1

    _append_all(workspace=ws, items=people, messages=messages, report=report, on_stored=stored,
                lookup=lambda chunk: _existing_keys(ws.pk, chunk), progress=progress,
                action="contacts.import", label=label, actor=actor)
    return report


def events_import(*, workspace: Workspace | int, file, mapping: dict[str, str] | None = None,
                  actor: str = "", progress: Progress | None = None) -> ImportReport:
    """Import historical events from a CSV file: one `track` per row at the row's timestamp.

    Identical rows (same person, event, time and properties) are stored once and counted as
    duplicates.
    """
    ws = _workspace(workspace)
    report = ImportReport()
    parsed, file_name = _parse(file, mapping=mapping, fields=EVENT_FIELDS, extra_prefix="property",
                               required=_events_required, row_parser=_event_from_row, report=report)
    label = _label("", file_name, "events")
    items, messages, seen = [], [], set()
    for item in parsed:
        message = _event_message(ws.pk, label, item)
        if message["messageId"] in seen:
            report.duplicates += 1
            continue
        seen.add(message["messageId"])
        items.append(item)
        messages.append(message)

    def stored(done: list[_Event], known: object) -> None:
        report.imported += len(done)

    _append_all(workspace=ws, items=items, messages=messages, report=report, on_stored=stored,
                lookup=None, progress=progress, action="events.import", label=label, actor=actor)
    return report
