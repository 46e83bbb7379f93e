"""CSV import of contacts and historical events: the service, the CLI and the API."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from leadflow.contacts import imports
from leadflow.contacts.imports import ImportFileError, contacts_import, events_import
from leadflow.contacts.models import Contact, Identity
from leadflow.contacts.selectors import contact_get_by_identity
from leadflow.core.models import AuditEntry
from leadflow.tracking.models import Event
from conftest import make_workspace, shared_data

pytestmark = pytest.mark.django_db


def write(tmp_path: Path, text: str, *, name: str = "people.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def by_email(ws, email: str) -> Contact:
    contact = contact_get_by_identity(workspace=ws.workspace, kind="email", value=email)
    assert contact is not None, f"no contact for {email}"
    return contact


def by_user(ws, user_id: str) -> Contact:
    contact = contact_get_by_identity(workspace=ws.workspace, kind="user_id", value=user_id)
    assert contact is not None, f"no contact for user {user_id}"
    return contact


def rejected(report) -> list[tuple[int, str]]:
    return [(r.row, r.reason) for r in report.rejected]


# -- contacts: fields, typing, mapping -------------------------------------------------------------

CONTACTS = (
    " EMAIL ,First Name,last-name,Phone,Company,Title,Country,Timezone,Age,Score,VIP,Newsletter,"
    "Postcode,Notes\n"
    "ana@example.com,ana,SILVA,912 345 678,Acme Lda,CTO,Portugal,Europe/Lisbon,42,3.5,yes,FALSE,"
    "01234,\n"
    "bob@example.com,Bob,Stone,,,,,,,-1.25,no,true,,has, a comma? no\n"
)


def test_contact_columns_fill_fields_and_other_columns_become_typed_traits(tmp_path, ws, frozen_clock):
    path = write(tmp_path, CONTACTS.replace("has, a comma? no", '"has, a comma"'))

    report = contacts_import(workspace=ws.workspace, file=path, source_label="fair-2025")

    assert (report.imported, report.updated, report.rejected_count, report.duplicates) == (2, 0, 0, 0)
    ana = by_email(ws, "ana@example.com")
    assert (ana.first_name, ana.last_name, ana.title, ana.country, ana.timezone) == \
        ("Ana", "Silva", "CTO", "PT", "Europe/Lisbon")
    assert ana.phone == "+351912345678"
    assert ana.company is not None and ana.company.name == "Acme Lda"
    assert ana.traits == {"age": 42, "score": 3.5, "vip": True, "newsletter": False, "postcode": "01234"}
    bob = by_email(ws, "bob@example.com")
    assert bob.traits == {"score": -1.25, "vip": False, "newsletter": True, "notes": "has, a comma"}
    assert "postcode" not in bob.traits and bob.phone == "" and bob.company is None  # empty cells skipped
    for contact in (ana, bob):
        assert contact.source_channel == "import"
        assert contact.first_touch["import"] == "fair-2025"
    identifies = Event.objects.filter(workspace=ws.workspace, type="identify")
    assert identifies.count() == 2
    assert all(e.context["leadflow"]["import"] == "fair-2025" and e.processed_at for e in identifies)


def test_mapping_renames_columns_to_fields_and_traits_and_ignores_columns(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "E-mail Address,Fav colour,Internal,Cust No\n"
                           "Carla@Example.com,teal,secret,0042\n")

    report = contacts_import(workspace=ws.workspace, file=path, mapping={
        "E-mail Address": "email", "Fav colour": "trait:favourite_colour", "Internal": "ignore",
        "cust no": "user_id"})

    assert report.imported == 1
    carla = by_email(ws, "carla@example.com")
    assert carla.user_id == "0042"
    assert carla.traits == {"favourite_colour": "teal"}


def test_a_mapping_that_names_no_column_or_an_unknown_field_is_a_clear_error(tmp_path, ws):
    path = write(tmp_path, "email,Colour\nana@example.com,red\n")
    with pytest.raises(ImportFileError, match="does not have: Missing"):
        contacts_import(workspace=ws.workspace, file=path, mapping={"Missing": "email"})
    with pytest.raises(ImportFileError, match="cannot map 'Colour' to 'favourite'"):
        contacts_import(workspace=ws.workspace, file=path, mapping={"Colour": "favourite"})
    assert not Event.objects.exists()


def test_a_file_without_an_identity_column_is_a_clear_error(tmp_path, ws):
    path = write(tmp_path, "name,age\nAna,42\n")
    with pytest.raises(ImportFileError, match="no email or user_id column"):
        contacts_import(workspace=ws.workspace, file=path)


def test_utm_columns_become_the_source_not_traits(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "email,utm_source,utm_medium,utm_campaign,utm_term,utm_content\n"
                           "dan@example.com,google,cpc,spring,crm software,ad-1\n"
                           "eve@example.com,,,,,\n")

    contacts_import(workspace=ws.workspace, file=path, source_label="webinar-list")

    dan = by_email(ws, "dan@example.com")
    assert dan.source_channel == "paid_search"
    assert {k: dan.first_touch[k] for k in ("utm_source", "utm_medium", "utm_campaign", "utm_term",
                                            "utm_content")} == \
        {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring", "utm_term": "crm software",
         "utm_content": "ad-1"}
    assert dan.traits == {}
    assert by_email(ws, "eve@example.com").source_channel == "import"


# -- contacts: rejections and duplicates -----------------------------------------------------------

def test_bad_rows_are_rejected_with_their_line_and_reason_and_the_rest_imported(tmp_path, ws, frozen_clock):
    path = write(tmp_path,
                 "email,user_id,phone,country,timezone,notes\n"                    # line 1
                 "good@example.com,,,,,\n"                                         # 2
                 "not-an-email,,,,,\n"                                             # 3
                 "\n"                                                              # 4 (blank, skipped)
                 ",,,,,just a note\n"                                              # 5
                 "phone@example.com,,12,PT,,\n"                                    # 6
                 "tz@example.com,,,,Mars/Olympus,\n"                               # 7
                 'multi@example.com,,,,,"two\nlines"\n'                            # 8-9
                 "extra@example.com,,,,,,surplus\n"                                # 10
                 ",u-11,,,,\n")                                                    # 11

    report = contacts_import(workspace=ws.workspace, file=path)

    reasons = dict(rejected(report))
    assert sorted(reasons) == [3, 5, 6, 7, 10]
    assert "invalid email 'not-an-email'" in reasons[3]
    assert reasons[5] == "no email or user_id"
    assert "invalid phone number '12'" in reasons[6] and "PT" in reasons[6]
    assert "unknown timezone 'Mars/Olympus'" in reasons[7]
    assert "7 values but the header has 6 columns" in reasons[10]
    assert (report.imported, report.rejected_count, report.rows) == (3, 5, 8)
    assert not report.nothing_imported
    assert by_email(ws, "multi@example.com").traits["notes"] == "two\nlines"
    assert by_user(ws, "u-11").email == ""
    assert Contact.objects.filter(workspace=ws.workspace).count() == 3


def test_a_bad_phone_without_a_country_is_kept_as_typed(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "email,phone\nfay@example.com,ext. 12\n")
    report = contacts_import(workspace=ws.workspace, file=path)
    assert report.rejected_count == 0
    assert by_email(ws, "fay@example.com").phone == "ext. 12"


def test_rows_of_the_same_person_are_folded_and_later_values_win(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "email,user_id,first_name,plan,city\n"
                           "gil@example.com,,Gil,free,Porto\n"
                           "GIL@example.com,u-7,,pro,\n"     # same email: folds, adds the user id
                           ",u-7,Gilberto,,\n"              # same user id: folds again
                           "hal@example.com,,Hal,free,\n")

    report = contacts_import(workspace=ws.workspace, file=path)

    assert (report.imported, report.duplicates, report.rejected_count) == (2, 2, 0)
    gil = by_user(ws, "u-7")
    assert gil == by_email(ws, "gil@example.com")
    assert (gil.first_name, gil.traits) == ("Gilberto", {"plan": "pro", "city": "Porto"})
    assert Contact.objects.filter(workspace=ws.workspace).count() == 2
    assert Event.objects.filter(workspace=ws.workspace).exclude(event="Lifecycle Stage Changed").count() == 2  # one identify per person


def test_two_user_ids_sharing_an_email_stay_two_people(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "email,user_id\nshared@example.com,u-1\nshared@example.com,u-2\n")
    report = contacts_import(workspace=ws.workspace, file=path)
    assert (report.imported, report.duplicates) == (2, 0)
    assert by_user(ws, "u-1") != by_user(ws, "u-2")


# -- contacts: re-import ---------------------------------------------------------------------------

def test_reimport_updates_existing_contacts_and_never_stores_an_event_twice(tmp_path, ws, frozen_clock):
    first = write(tmp_path, "email,user_id,first_name,plan\n"
                            "ivy@example.com,,Ivy,free\n"
                            ",u-9,Jon,free\n")
    report = contacts_import(workspace=ws.workspace, file=first)
    assert (report.imported, report.updated) == (2, 0)
    events = Event.objects.filter(workspace=ws.workspace).exclude(event="Lifecycle Stage Changed").count()

    again = contacts_import(workspace=ws.workspace, file=first)
    assert (again.imported, again.updated, again.skipped_unchanged) == (0, 0, 2)
    assert Event.objects.filter(workspace=ws.workspace).exclude(event="Lifecycle Stage Changed").count() == events

    frozen_clock.advance(days=1)
    changed = write(tmp_path, "email,user_id,first_name,plan\n"
                              "ivy@example.com,,Ivy,pro\n"
                              ",u-9,Jon,free\n"
                              "kim@example.com,,Kim,free\n", name="changed.csv")
    report = contacts_import(workspace=ws.workspace, file=changed)
    assert (report.imported, report.updated, report.skipped_unchanged) == (1, 1, 1)
    assert by_email(ws, "ivy@example.com").traits["plan"] == "pro"
    assert Contact.objects.filter(workspace=ws.workspace).count() == 3
    assert Event.objects.filter(workspace=ws.workspace).exclude(event="Lifecycle Stage Changed").count() == events + 2


def test_import_updates_a_contact_first_seen_on_the_web(client, tmp_path, ws, process, frozen_clock):
    from conftest import post_batch

    response = post_batch(client, ws, [{"type": "identify", "userId": "web-1",
                                        "traits": {"email": "lea@example.com", "plan": "free"}}])
    assert response.status_code == 200
    process()
    frozen_clock.advance(hours=1)
    path = write(tmp_path, "email,plan\nlea@example.com,enterprise\n")

    report = contacts_import(workspace=ws.workspace, file=path)

    assert (report.imported, report.updated) == (0, 1)
    lea = by_user(ws, "web-1")
    assert lea.traits["plan"] == "enterprise"
    assert lea.source_channel != "import"  # the first touch stays the web one
    assert Contact.objects.filter(workspace=ws.workspace).count() == 1


def test_message_ids_differ_between_workspaces(tmp_path, ws, frozen_clock):
    other = make_workspace("Other")
    path = write(tmp_path, "email\nmo@example.com\n")
    contacts_import(workspace=ws.workspace, file=path)
    report = contacts_import(workspace=other.workspace, file=path)
    assert report.imported == 1
    assert Contact.objects.filter(workspace=other.workspace).count() == 1


# -- reading files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_delimiter_is_sniffed(tmp_path, ws, frozen_clock, delimiter):
    text = f"email{delimiter}city{delimiter}score\nnia@example.com{delimiter}Lyon, FR{delimiter}7\n"
    if delimiter == ",":
        text = text.replace("Lyon, FR", '"Lyon, FR"')
    report = contacts_import(workspace=ws.workspace, file=write(tmp_path, text))
    assert report.imported == 1
    assert by_email(ws, "nia@example.com").traits == {"city": "Lyon, FR", "score": 7}


def test_utf8_with_bom_and_latin1_files_are_read(tmp_path, ws, frozen_clock):
    bom = write(tmp_path, "\ufeffemail;first_name\nolga@example.com;Zoë\n", name="bom.csv")
    latin = write(tmp_path, "email;first_name;city\npaulo@example.com;João;Évora\n", name="latin.csv",
                  encoding="latin-1")
    assert contacts_import(workspace=ws.workspace, file=bom).imported == 1
    assert contacts_import(workspace=ws.workspace, file=latin).imported == 1
    assert by_email(ws, "olga@example.com").first_name == "Zoë"
    paulo = by_email(ws, "paulo@example.com")
    assert (paulo.first_name, paulo.traits["city"]) == ("João", "Évora")


def test_utf16_unicode_text_from_excel_is_read(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "\ufeffemail\tfirst_name\r\nsara@example.com\tSára\r\n", name="excel.txt",
                 encoding="utf-16-le")
    assert contacts_import(workspace=ws.workspace, file=path).imported == 1
    assert by_email(ws, "sara@example.com").first_name == "Sára"


def test_binary_and_text_file_objects_are_accepted_and_left_open(ws, frozen_clock):
    binary = io.BytesIO(b"email\nquin@example.com\n")
    text = io.StringIO("email\nrui@example.com\n")
    assert contacts_import(workspace=ws.workspace, file=binary).imported == 1
    assert contacts_import(workspace=ws.workspace, file=text).imported == 1
    assert not binary.closed and not text.closed


def test_a_large_upload_spooled_to_a_temporary_file_is_read(ws, frozen_clock):
    from django.core.files.uploadedfile import TemporaryUploadedFile

    upload = TemporaryUploadedFile("big.csv", "text/csv", 0, "utf-8")
    upload.write("email;city\ntom@example.com;Braga\n".encode())
    upload.seek(0)
    report = contacts_import(workspace=ws.workspace, file=upload)
    assert report.imported == 1 and by_email(ws, "tom@example.com").first_touch["import"] == "big.csv"
    upload.close()


def test_empty_and_header_only_files_import_nothing(tmp_path, ws):
    for text in ("", "email,first_name\n", "email\n\n\n"):
        report = contacts_import(workspace=ws.workspace, file=write(tmp_path, text))
        assert report.rows == 0 and report.nothing_imported


def test_progress_is_reported_up_to_the_total(tmp_path, ws, frozen_clock, monkeypatch):
    monkeypatch.setattr(imports, "CHUNK_ROWS", 2)
    calls = []
    path = write(tmp_path, "email\n" + "".join(f"p{n}@example.com\n" for n in range(5)))
    contacts_import(workspace=ws.workspace, file=path, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]


# -- atomicity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("broken", ["leadflow.tracking.ingest.events_append",
                                    "leadflow.contacts.processing.process_events"])
def test_a_crash_mid_import_leaves_nothing_behind(tmp_path, ws, frozen_clock, monkeypatch, broken):
    monkeypatch.setattr(imports, "CHUNK_ROWS", 2)
    module_name, _, name = broken.rpartition(".")
    module = sys.modules[module_name]
    real = getattr(module, name)
    calls = []

    def crash_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crash_on_second_chunk)
    path = write(tmp_path, "email\n" + "".join(f"crash{n}@example.com\n" for n in range(5)))

    with pytest.raises(RuntimeError, match="power cut"):
        contacts_import(workspace=ws.workspace, file=path)

    assert len(calls) == 2
    assert not Event.objects.filter(workspace=ws.workspace).exists()
    assert not Contact.objects.filter(workspace=ws.workspace).exists()
    assert not Identity.objects.filter(workspace=ws.workspace).exists()
    assert not AuditEntry.objects.filter(workspace=ws.workspace, action="contacts.import").exists()

    monkeypatch.setattr(module, name, real)
    assert contacts_import(workspace=ws.workspace, file=path).imported == 5


# -- events ----------------------------------------------------------------------------------------

@pytest.fixture
def known_people(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "email,user_id,first_name\nsam@example.com,,Sam\n,u-42,Tia\n", name="known.csv")
    assert contacts_import(workspace=ws.workspace, file=path).imported == 2
    return by_email(ws, "sam@example.com"), by_user(ws, "u-42")


EVENTS = (
    "email,user_id,event,timestamp,amount,plan\n"                      # 1
    "SAM@example.com,,Order Completed,2024-05-02T10:30:00Z,19.90,pro\n"  # 2
    "sam@example.com,,Signed Up,2024-01-15,,free\n"                      # 3
    ",u-42,Signed Up,20230301,,\n"                                       # 4
    ",u-42,Order Completed,2023-03-05T08:00:00+02:00,5,\n"               # 5
    ",u-42,,2023-03-06,,\n"                                              # 6 no event name
    ",,Signed Up,2023-03-06,,\n"                                         # 7 no identity
    ",u-42,Signed Up,yesterday,,\n"                                      # 8 bad timestamp
    ",u-42,Logged In,,,\n"                                               # 9 no timestamp
    ",u-42,Order Completed,2023-03-05T08:00:00+02:00,5,\n"               # 10 same as 5
)


def test_events_import_attaches_history_to_existing_contacts(client, tmp_path, ws, known_people):
    sam, tia = known_people
    contacts_before = Contact.objects.filter(workspace=ws.workspace).count()

    report = events_import(workspace=ws.workspace, file=write(tmp_path, EVENTS, name="history.csv"))

    assert (report.imported, report.duplicates, report.rejected_count) == (4, 1, 4)
    reasons = dict(rejected(report))
    assert reasons[6] == "no event name"
    assert reasons[7] == "no email or user_id"
    assert "timestamp 'yesterday' is not ISO 8601" in reasons[8]
    assert reasons[9] == "no timestamp"
    assert Contact.objects.filter(workspace=ws.workspace).count() == contacts_before

    tracks = Event.objects.filter(workspace=ws.workspace, type="track").exclude(event="Lifecycle Stage Changed")
    assert {e.contact_id for e in tracks if e.user_id == "u-42"} == {tia.pk}
    order = tracks.get(contact=sam, event="Order Completed")
    assert order.properties == {"amount": 19.9, "plan": "pro"}
    assert order.timestamp == dt.datetime(2024, 5, 2, 10, 30, tzinfo=dt.timezone.utc)
    assert tracks.get(contact=tia, event="Order Completed").timestamp == \
        dt.datetime(2023, 3, 5, 6, 0, tzinfo=dt.timezone.utc)

    response = client.get(f"/api/contacts/{sam.pk}/events", HTTP_AUTHORIZATION=ws.bearer)
    assert response.status_code == 200
    items = [i for i in response.json()["items"] if i["event"] != "Lifecycle Stage Changed"]
    assert [(i["type"], i["event"]) for i in items] == \
        [("track", "Signed Up"), ("track", "Order Completed"), ("identify", "")]
    response = client.get(f"/api/contacts/{tia.pk}/events?event=Signed Up", HTTP_AUTHORIZATION=ws.bearer)
    assert response.json()["items"][0]["timestamp"].startswith("2023-03-01T00:00:00")

    again = events_import(workspace=ws.workspace, file=write(tmp_path, EVENTS, name="history.csv"))
    assert (again.imported, again.skipped_unchanged) == (0, 4)
    assert tracks.count() == 4


def test_events_of_unknown_people_create_contacts_from_the_import(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "Customer,What,When,Spend\numa@example.com,Purchase,19970101,29.33\n",
                 name="cdnow.csv")
    report = events_import(workspace=ws.workspace, file=path,
                           mapping={"Customer": "email", "What": "event", "When": "timestamp",
                                    "Spend": "property:revenue"})
    assert report.imported == 1
    uma = by_email(ws, "uma@example.com")
    assert uma.source_channel == "import"
    assert uma.first_seen_at == dt.datetime(1997, 1, 1, tzinfo=dt.timezone.utc)
    assert Event.objects.exclude(event="Lifecycle Stage Changed").get(contact=uma).properties == {"revenue": 29.33}


def test_events_file_without_event_or_timestamp_column_is_a_clear_error(tmp_path, ws):
    path = write(tmp_path, "email,what\nv@example.com,x\n")
    with pytest.raises(ImportFileError, match="no event and no timestamp column"):
        events_import(workspace=ws.workspace, file=path)


# -- CLI -------------------------------------------------------------------------------------------

def run_command(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_data", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_cli_imports_contacts_and_prints_a_summary_with_rejected_rows(tmp_path, ws, frozen_clock):
    other = make_workspace("Second Brand")
    path = write(tmp_path, "Mail;Nick;Drop\nwes@example.com;wessy;x\nbroken;;\n")

    out, err = run_command("contacts", str(path), "--source", "expo", "--map", "Mail=email",
                           "--map", "Nick=trait:nickname", "--map", "Drop=ignore",
                           "--workspace", other.workspace.slug)

    assert "imported:   1 new contacts" in out
    assert "rejected:   1" in out and "row 3: invalid email 'broken'" in out
    assert err == ""  # no progress bar when stderr is not a terminal
    wes = contact_get_by_identity(workspace=other.workspace, kind="email", value="wes@example.com")
    assert wes.traits == {"nickname": "wessy"} and wes.first_touch["import"] == "expo"
    assert not Contact.objects.filter(workspace=ws.workspace).exists()


def test_cli_lists_at_most_50_rejected_rows(tmp_path, ws, frozen_clock):
    path = write(tmp_path, "email\nok@example.com\n" + "bad\n" * 60)
    out, _ = run_command("contacts", str(path))
    assert "rejected:   60" in out
    assert out.count("invalid email") == 50
    assert "and 10 more rejected rows" in out


def test_cli_fails_only_when_nothing_could_be_imported(tmp_path, ws, frozen_clock):
    with pytest.raises(CommandError, match="all 2 rows were rejected"):
        run_command("contacts", str(write(tmp_path, "email\nbad\nworse\n")))
    with pytest.raises(CommandError, match="no data rows"):
        run_command("contacts", str(write(tmp_path, "email\n", name="empty.csv")))
    with pytest.raises(CommandError, match="no such file"):
        run_command("contacts", str(tmp_path / "missing.csv"))
    with pytest.raises(CommandError, match="no email or user_id column"):
        run_command("contacts", str(write(tmp_path, "name\nAna\n", name="noid.csv")))
    with pytest.raises(CommandError, match="not CSV text"):
        spreadsheet = tmp_path / "book.xlsx"
        spreadsheet.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\n\x00")
        run_command("contacts", str(spreadsheet))
    with pytest.raises(CommandError, match="CSV COLUMN=field"):
        run_command("contacts", str(write(tmp_path, "email\nok@example.com\n")), "--map", "email")
    path = write(tmp_path, "email\nonce@example.com\n", name="once.csv")
    run_command("contacts", str(path))
    out, _ = run_command("contacts", str(path))  # nothing new, nothing wrong: success
    assert "unchanged:  1" in out


def test_cli_imports_events(tmp_path, ws, known_people):
    out, _ = run_command("events", str(write(tmp_path, EVENTS, name="history.csv")))
    assert "imported:   4 new events" in out and "duplicates: 1" in out and "row 8: timestamp" in out


def test_cli_draws_a_progress_bar_on_a_terminal(tmp_path, ws, frozen_clock):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    call_command("import_data", "contacts", str(write(tmp_path, "email\nxi@example.com\n")),
                 stdout=io.StringIO(), stderr=err)
    assert "\r[" in err.getvalue() and "100%" in err.getvalue() and "1/1 rows" in err.getvalue()


def _leadflow_command() -> list[str]:
    found = shutil.which("leadflow")
    return [found] if found else [sys.executable, "-m", "leadflow"]


def test_leadflow_import_contacts_in_a_fresh_installation(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DJANGO_SETTINGS_MODULE", "LEADFLOW_TEST_DATABASE_URL")}
    env.update(LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'leadflow.sqlite3'}",
               LEADFLOW_DATA_DIR=str(tmp_path / "data"), LEADFLOW_SECRET_KEY="subprocess-test")

    def leadflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*_leadflow_command(), *args], env=env, capture_output=True, text=True,
                              timeout=120)

    assert leadflow("migrate").returncode == 0
    assert leadflow("workspaces", "create", "Acme", "--slug", "acme").returncode == 0
    help_text = leadflow("import", "contacts", "--help")
    assert help_text.returncode == 0 and "--source" in help_text.stdout and "--map" in help_text.stdout
    path = write(tmp_path, "email;first_name;plan\nyan@example.com;Yan;pro\nnope;;\n")

    done = leadflow("import", "contacts", str(path), "--source", "cli-test", "--workspace", "acme")
    assert done.returncode == 0, done.stderr
    assert "imported:   1 new contacts" in done.stdout and "row 3: invalid email 'nope'" in done.stdout

    failed = leadflow("import", "contacts", str(write(tmp_path, "email\nnope\n", name="bad.csv")))
    assert failed.returncode != 0 and "all 1 rows were rejected" in failed.stderr
    missing = leadflow("import", "events", str(tmp_path / "nowhere.csv"))
    assert missing.returncode != 0 and "no such file" in missing.stderr


# -- API -------------------------------------------------------------------------------------------

def upload(name: str, text: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_api_imports_contacts_and_answers_the_report(client, ws, frozen_clock):
    response = client.post("/api/imports/contacts", {
        "file": upload("list.csv", "E-mail;Colour\nzed@example.com;red\nbad;blue\n"),
        "source": "api-upload", "mapping": '{"E-mail": "email", "Colour": "trait:colour"}',
    }, HTTP_AUTHORIZATION=ws.bearer)

    assert response.status_code == 200, response.content
    body = response.json()
    assert {k: body[k] for k in ("imported", "updated", "duplicates", "rejected_count")} == \
        {"imported": 1, "updated": 0, "duplicates": 0, "rejected_count": 1}
    assert body["rejected"][0]["row"] == 3 and "invalid email" in body["rejected"][0]["reason"]
    zed = by_email(ws, "zed@example.com")
    assert zed.traits == {"colour": "red"} and zed.first_touch["import"] == "api-upload"
    assert AuditEntry.objects.get(workspace=ws.workspace, action="contacts.import").actor.startswith("key:")


def test_api_answers_400_when_nothing_could_be_imported(client, ws, frozen_clock):
    response = client.post("/api/imports/contacts", {"file": upload("bad.csv", "email\nbad\n")},
                           HTTP_AUTHORIZATION=ws.bearer)
    assert response.status_code == 400
    assert "all 1 rows were rejected" in response.json()["detail"]
    assert response.json()["report"]["rejected"][0]["row"] == 2

    for mapping, expected in (("{not json", "mapping is not valid JSON"),
                              ('["email"]', "mapping must be a JSON object"),
                              ('{"Nope": "email"}', "does not have: Nope")):
        response = client.post("/api/imports/contacts",
                               {"file": upload("ok.csv", "email\nok@example.com\n"), "mapping": mapping},
                               HTTP_AUTHORIZATION=ws.bearer)
        assert response.status_code == 400 and expected in response.json()["detail"]
    assert not Event.objects.filter(workspace=ws.workspace).exists()


def test_api_imports_need_a_secret_key(client, ws):
    response = client.post("/api/imports/contacts", {"file": upload("a.csv", "email\na@example.com\n")})
    assert response.status_code == 401
    response = client.post("/api/imports/contacts", {"file": upload("a.csv", "email\na@example.com\n")},
                           HTTP_AUTHORIZATION=f"Bearer {ws.write_key}")
    assert response.status_code == 401


def test_api_imports_events(client, ws, known_people):
    response = client.post("/api/imports/events", {"file": upload("history.csv", EVENTS)},
                           HTTP_AUTHORIZATION=ws.bearer)
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["imported"], body["duplicates"], body["rejected_count"]) == (4, 1, 4)
    assert [r["row"] for r in body["rejected"]] == [6, 7, 8, 9]


# -- the real UCI bank marketing file --------------------------------------------------------------

BANK_ROWS = 5000


def test_bank_marketing_import_with_a_synthetic_user_id(tmp_path, ws, frozen_clock):
    source = shared_data("bank-marketing/bank-additional-full.csv")
    copy = tmp_path / "bank-with-ids.csv"
    with source.open(newline="") as src, copy.open("w", newline="") as dst:
        reader, writer = csv.reader(src, delimiter=";"), csv.writer(dst, delimiter=";")
        writer.writerow(["user_id", *next(reader)])
        expected = []
        for number, row in enumerate(reader, start=1):
            if number > BANK_ROWS:
                break
            writer.writerow([f"bank-{number}", *row])
            expected.append(row)

    started = time.monotonic()
    out, _ = run_command("contacts", str(copy), "--source", "bank-2012")
    seconds = time.monotonic() - started
    print(f"\nbank marketing: imported {BANK_ROWS} contacts in {seconds:.1f}s")

    assert f"imported:   {BANK_ROWS} new contacts" in out and "rejected:   0" in out
    contacts = Contact.objects.filter(workspace=ws.workspace)
    assert contacts.count() == BANK_ROWS
    assert contacts.exclude(source_channel="import").count() == 0
    first = by_user(ws, "bank-1")
    age, job, *_, outcome = expected[0]
    assert first.traits["age"] == int(age) and isinstance(first.traits["age"], int)
    assert first.traits["job"] == job
    assert first.traits["y"] is (outcome == "yes")
    assert isinstance(first.traits["emp.var.rate"], float)
    assert first.first_touch["import"] == "bank-2012"
    subscribed = [n for n, row in enumerate(expected, start=1) if row[-1] == "yes"]
    assert subscribed, "the first rows of the bank file include clients who subscribed"
    assert by_user(ws, f"bank-{subscribed[0]}").traits["y"] is True
    events = Event.objects.filter(workspace=ws.workspace).count()

    again = contacts_import(workspace=ws.workspace, file=copy, source_label="bank-2012")
    assert (again.imported, again.updated, again.skipped_unchanged) == (0, 0, BANK_ROWS)
    assert Event.objects.filter(workspace=ws.workspace).count() == events
