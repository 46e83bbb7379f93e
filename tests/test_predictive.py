"""Predictive scoring: a model trained on a workspace's own history finds planted signal, finds
nothing where there is none, refuses thin history, versions itself and scores every contact."""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
from conftest import shared_data
from django.core.management import call_command
from django.core.management.base import CommandError

from leadflow.contacts.imports import contacts_import
from leadflow.contacts.models import Company, Contact
from leadflow.core import clock
from leadflow.predictive import services
from leadflow.predictive.features import outcome_truthy, title_seniority
from leadflow.predictive.models import PredictiveModel
from leadflow.predictive.processing import process_events
from leadflow.predictive.selectors import (
    contact_probability_explain,
    predictive_model_active,
)
from leadflow.predictive.services import predictive_score_contacts, predictive_train
from leadflow.tracking.models import Event

TITLES = {
    0: ["Marketing Intern", "Sales Assistant"],
    1: ["Marketing Analyst", "Software Engineer", "Growth Specialist"],
    2: ["Marketing Manager", "Senior Engineer"],
    3: ["Director of Marketing", "Sales Director"],
    4: ["VP Marketing", "Head of Growth"],
    5: ["CEO", "Founder", "Chief Marketing Officer"],
}
CHANNELS = ["organic_search", "paid_search", "social", "email", "referral", "direct"]
INDUSTRIES = ["software", "retail", "finance", "health", "education"]
COUNTRIES = ["US", "GB", "DE", "FR", "PT", "NL"]
JSON_KEYS = {"workspace", "version", "outcome", "algorithm", "contacts", "positives", "negatives",
             "base_rate", "held_out_contacts", "roc_auc", "precision_top_decile", "lift_top_decile",
             "held_out_base_rate", "brier_score", "calibration", "calibration_error", "candidates",
             "top_features", "excluded_traits", "contacts_scored"}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def plant(workspace, contacts: int, *, signal: bool = True, outcome: str = "trait", seed: int = 7) -> np.ndarray:
    """Contacts, companies and events whose conversion depends on title seniority, pricing page
    views and company size (plus noise), or on nothing at all. Returns the outcomes."""
    rng = np.random.default_rng(seed)
    now = clock.now()
    sizes = rng.choice([4, 15, 40, 120, 400, 1500, 6000], size=150)
    companies = Company.objects.bulk_create(
        [Company(workspace=workspace, name=f"Company {n}", traits={"employees": int(s)}) for n, s in enumerate(sizes)])
    rows, outcomes = [], []
    for n in range(contacts):
        level = int(rng.integers(0, 6))
        company = int(rng.integers(0, len(companies)))
        interest = rng.exponential(1.0)
        pricing = int(rng.poisson(0.25 + 0.6 * interest))
        logit = -5.2 + 0.6 * level + 0.8 * min(pricing, 6) + 0.65 * math.log10(sizes[company]) + rng.normal(0, 0.5)
        converted = bool(rng.random() < (_sigmoid(logit) if signal else 0.2))
        outcomes.append(converted)
        created = now - dt.timedelta(days=float(rng.uniform(30, 400)))
        rows.append((level, company, pricing, converted, created))
    people = Contact.objects.bulk_create([
        Contact(workspace=workspace, email=f"person{n}@example.com", title=str(rng.choice(TITLES[level])),
                company=companies[company], source_channel=str(rng.choice(CHANNELS)), created_at=created,
                traits={"country": str(rng.choice(COUNTRIES)), "industry": str(rng.choice(INDUSTRIES)),
                        "newsletter": bool(rng.random() < 0.5), "visits": int(rng.poisson(4)),
                        **({"converted": "yes" if converted else "no",
                            # written by the CRM after the deal closed: a near-copy, not a predictor
                            "deal_won": converted != (rng.random() < 0.003)} if outcome == "trait" else {})})
        for n, (level, company, pricing, converted, created) in enumerate(rows)])
    events = []

    def add(person, kind, name, at):
        events.append(Event(workspace=workspace, message_id=f"plant-{person.pk}-{len(events)}", type=kind,
                            event=name, timestamp=at, received_at=at, shard=0, contact=person,
                            processed_at=at))

    for person, (level, company, pricing, converted, created) in zip(people, rows):
        span = (now - created).total_seconds()
        outcome_at = created + dt.timedelta(seconds=span * float(rng.uniform(0.5, 0.9)))
        before = outcome_at if (outcome == "event" and converted) else now
        window = (before - created).total_seconds()
        kinds = (["page:Pricing"] * pricing + ["page:Blog"] * int(rng.poisson(3))
                 + ["track:Ebook Downloaded"] * int(rng.poisson(0.5)))
        rng.shuffle(kinds)
        times = sorted(created + dt.timedelta(seconds=window * float(rng.random())) for _ in kinds)
        for at, kind in zip(times, kinds):
            add(person, kind.split(":")[0], kind.split(":")[1], at)
        if outcome == "event" and converted:
            add(person, "track", "Opportunity Created", outcome_at)
            for day in range(4):  # what happens because they converted: must not be learnt from
                add(person, "track", "Invoice Paid", outcome_at + dt.timedelta(days=day + 1))
                add(person, "page", "Pricing", outcome_at + dt.timedelta(days=day + 1, hours=1))
        person.last_seen_at = times[-1] if times else None
    Event.objects.bulk_create(events, batch_size=2000)
    Contact.objects.bulk_update(people, ["last_seen_at"], batch_size=1000)
    return np.array(outcomes)


def train_json(*args: str) -> dict:
    from io import StringIO

    out = StringIO()
    call_command("predictive", "train", *args, "--format", "json", stdout=out)
    text = out.getvalue()
    assert text.count("\n") <= 1  # exactly one JSON object
    return orjson.loads(text)


@pytest.fixture
def clock_now():
    frozen = clock.FrozenClock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC))
    with clock.use(frozen):
        yield frozen


def test_outcome_values_and_title_seniority():
    assert all(outcome_truthy(v) for v in (True, "yes", "true", "Yes", 1, 2.5, "won", "customer"))
    assert not any(outcome_truthy(v) for v in (False, "no", "false", "0", 0, 0.0, "", None, "  "))
    assert title_seniority("Chief Marketing Officer") == 5 and title_seniority("VP Sales") == 4
    assert title_seniority("Director of IT") == 3 and title_seniority("Marketing Manager") == 2
    assert title_seniority("Data Analyst") == 1 and title_seniority("Marketing Intern") == 0
    assert math.isnan(title_seniority(""))


def test_planted_signal_is_found_and_every_contact_scored(ws, clock_now, client):
    outcomes = plant(ws.workspace, 3000)
    assert 0.15 < outcomes.mean() < 0.45
    report = train_json("--outcome-trait", "converted", "--workspace", ws.workspace.slug)

    print(f"\nplanted signal: held-out ROC AUC {report['roc_auc']} ({report['algorithm']}), "
          f"candidates {report['candidates']}, lift {report['lift_top_decile']}, "
          f"top {[f['feature'] for f in report['top_features']]}")
    assert JSON_KEYS <= set(report)
    assert report["version"] == 1 and report["contacts"] == 3000
    assert report["positives"] == int(outcomes.sum())
    assert report["roc_auc"] > 0.75, report
    assert report["roc_auc"] == max(c["roc_auc"] for c in report["candidates"].values())
    assert set(report["candidates"]) == {"logistic_regression", "gradient_boosting"}
    assert report["lift_top_decile"] > 1.8
    assert report["precision_top_decile"] > report["held_out_base_rate"]
    assert len(report["calibration"]) == 10 and 0 <= report["brier_score"] < report["base_rate"]
    top = [f["feature"] for f in report["top_features"]]
    for planted in ("title_seniority", "count:page:Pricing", "company_employees"):
        assert planted in top[:6], top
    assert all(f["direction"] == "+" for f in report["top_features"] if f["feature"] in
               ("title_seniority", "count:page:Pricing", "company_employees"))
    # the outcome and its after-the-fact copy are not features
    assert "deal_won" in report["excluded_traits"] and "converted" in report["excluded_traits"]
    model = PredictiveModel.objects.get(workspace=ws.workspace, version=1)
    assert not any("deal_won" in n or "converted" in n for n in model.feature_names)

    # every contact has a probability in [0, 1], and the high ones convert more
    probs = dict(Contact.objects.filter(workspace=ws.workspace).values_list("id", "conversion_probability"))
    assert report["contacts_scored"] == 3000 and all(0.0 <= p <= 1.0 for p in probs.values())
    converted = dict(Contact.objects.filter(workspace=ws.workspace).values_list("id", "traits__converted"))
    high = sorted(probs, key=probs.get)[-300:]
    assert np.mean([converted[i] == "yes" for i in high]) > 2 * outcomes.mean()

    # the UI's explanation: the model's top features with this contact's own values
    best = Contact.objects.get(pk=high[-1])
    explained = contact_probability_explain(contact=best)
    assert explained["probability"] == pytest.approx(probs[best.pk]) and explained["model_version"] == 1
    values = {f["feature"]: f["value"] for f in explained["features"]}
    assert values["title_seniority"] == title_seniority(best.title)
    assert values["company_employees"] == best.company.traits["employees"]

    # a person who arrives after training is scored by the pipeline as their events are processed
    from leadflow.core.pipeline import process_pending
    from leadflow.tracking.ingest import events_append

    events_append(workspace=ws.workspace, messages=[
        {"type": "identify", "userId": "newcomer", "traits": {"email": "new@bigco.example", "title": "CEO"}},
        {"type": "page", "userId": "newcomer", "name": "Pricing"}])
    process_pending()
    newcomer = Contact.objects.get(workspace=ws.workspace, user_id="newcomer")
    assert newcomer.conversion_probability is not None and 0.0 <= newcomer.conversion_probability <= 1.0

    # the marketer sees the model on the Scoring page and its reasons on a profile
    from leadflow.core.services import user_create

    client.force_login(user_create(username="mia", password="pw-mia-12345", workspace=ws.workspace, role="marketer"))
    scoring_page = client.get("/scoring/").content.decode()
    assert "v1" in scoring_page and "title_seniority" in scoring_page and f"{report['roc_auc']:.3f}" in scoring_page
    profile = client.get(f"/contacts/{best.pk}/").content.decode()
    assert "Conversion model" in profile and "company_employees" in profile


def test_retraining_is_deterministic_and_versioned(ws, clock_now):
    plant(ws.workspace, 2000, seed=11)
    first = train_json("--outcome-trait", "converted")
    second = train_json("--outcome-trait", "converted")
    assert (first["version"], second["version"]) == (1, 2)
    for key in ("roc_auc", "precision_top_decile", "brier_score", "calibration", "top_features", "candidates"):
        assert first[key] == second[key], key
    assert [m.version for m in PredictiveModel.objects.filter(workspace=ws.workspace, active=True)] == [2]
    assert predictive_model_active(workspace=ws.workspace).version == 2

    from io import StringIO

    out = StringIO()
    call_command("predictive", "models", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("v2 *") and lines[1].startswith("v1  ")
    assert f"AUC {first['roc_auc']:.3f}" in lines[1]

    # scoring going forward: a new contact and the pipeline stage
    company = Company.objects.filter(workspace=ws.workspace, traits__employees=6000).first()
    hot = Contact.objects.create(workspace=ws.workspace, email="hot@example.com", title="CEO", company=company)
    cold = Contact.objects.create(workspace=ws.workspace, email="cold@example.com", title="Marketing Intern")
    now = clock.now()
    events = Event.objects.bulk_create([
        Event(workspace=ws.workspace, message_id=f"new-{n}", type="page", event="Pricing", timestamp=now,
              received_at=now, shard=0, contact=hot, processed_at=now) for n in range(5)])
    services._estimators._items.clear()  # as in a fresh worker: the estimator comes from its row
    assert predictive_score_contacts(workspace=ws.workspace, contact_ids=[cold.pk]) == 1
    assert process_events(events) == 1
    hot.refresh_from_db()
    cold.refresh_from_db()
    assert 0 <= cold.conversion_probability < hot.conversion_probability <= 1


def test_no_signal_does_not_reach_the_bar(ws, clock_now):
    plant(ws.workspace, 3000, signal=False, seed=3)
    report = train_json("--outcome-trait", "converted")
    print(f"\nno signal: held-out ROC AUC {report['roc_auc']} candidates {report['candidates']}")
    assert report["roc_auc"] < 0.65, report
    assert report["lift_top_decile"] < 1.8


def test_event_outcome_learns_only_from_before_the_outcome(ws, clock_now):
    outcomes = plant(ws.workspace, 3000, outcome="event", seed=5)
    report = train_json("--outcome-event", "Opportunity Created")
    assert report["positives"] == int(outcomes.sum())
    assert report["outcome"] == "event 'Opportunity Created' happened"
    top = [f["feature"] for f in report["top_features"]]
    print(f"\nevent outcome: held-out ROC AUC {report['roc_auc']}, top {top}")
    # Invoice Paid and the extra pricing views only ever come after the outcome: had they leaked,
    # they would separate converters perfectly
    assert "count:event:Invoice Paid" not in top
    assert 0.75 < report["roc_auc"] < 0.95, report
    assert "count:page:Pricing" in top[:6] and "title_seniority" in top[:6]
    assert "engagement_score" not in PredictiveModel.objects.get(workspace=ws.workspace).feature_names


def test_refuses_to_train_on_too_little_history(ws, clock_now):
    plant(ws.workspace, 60, seed=1)
    with pytest.raises(CommandError) as small:
        train_json("--outcome-trait", "converted")
    message = str(small.value)
    assert "not enough history" in message and "60 contacts" in message
    assert f"at least {services.MIN_CONTACTS} contacts, {services.MIN_POSITIVES} positives and " \
           f"{services.MIN_NEGATIVES} negatives" in message
    with pytest.raises(CommandError, match="event 'Never Happened'"):
        train_json("--outcome-event", "Never Happened")
    plant(ws.workspace, 300, seed=2)  # 360 contacts now: enough, unless we ask for many positives
    with pytest.raises(CommandError, match="100 contacts, 500 positives and"):
        train_json("--outcome-trait", "converted", "--min-positives", "500")
    with pytest.raises(services.PredictiveError, match="either an outcome trait or an outcome event"):
        predictive_train(workspace=ws.workspace, outcome_trait="converted", outcome_event="Signed Up")
    assert not PredictiveModel.objects.exists()
    assert not Contact.objects.filter(conversion_probability__isnull=False).exists()


def test_cli_scoring_verb_runs_the_predictive_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(LEADFLOW_DATA_DIR=str(tmp_path / "data"), LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path}/cli.sqlite3",
               LEADFLOW_SECRET_KEY="cli-test-secret", DJANGO_SETTINGS_MODULE="leadflow.settings")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "leadflow", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    assert run("migrate").returncode == 0
    assert run("workspaces", "create", "Acme", "--slug", "acme").returncode == 0
    refused = run("scoring", "train", "--outcome-trait", "y", "--workspace", "acme", "--format", "json")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "not enough history to train a model: 0 contacts" in refused.stderr
    listed = run("scoring", "models", "--workspace", "acme")
    assert listed.returncode == 0 and "no models yet" in listed.stdout


def test_real_bank_marketing_history(ws, tmp_path):
    """UCI Bank Marketing: every fifth call of the whole campaign period (8,238 clients), with
    `duration` dropped (only known after the call). The file is ordered by time and its first
    rows cover two months only, where the campaign outcome is close to unpredictable."""
    source = shared_data("bank-marketing/bank-additional-full.csv")
    sample = tmp_path / "bank.csv"
    with source.open(newline="") as raw, sample.open("w", newline="") as out:
        reader = csv.DictReader(raw, delimiter=";")
        columns = ["user_id"] + [c for c in reader.fieldnames if c != "duration"]
        writer = csv.DictWriter(out, fieldnames=columns, delimiter=";", extrasaction="ignore")
        writer.writeheader()
        for number, row in enumerate(reader, start=1):
            if number % 5 == 1:
                writer.writerow({"user_id": f"bank-{number}", **row})
    imported = contacts_import(workspace=ws.workspace, file=sample, source_label="bank-campaigns")
    assert imported.imported == 8238 and not imported.rejected
    report = train_json("--outcome-trait", "y")
    print(f"\nbank marketing: {report['contacts']} contacts, base rate {report['base_rate']:.3f}, "
          f"held-out ROC AUC {report['roc_auc']} ({report['algorithm']}), candidates {report['candidates']}, "
          f"precision@10% {report['precision_top_decile']}, lift {report['lift_top_decile']}, "
          f"Brier {report['brier_score']}, top {[f['feature'] for f in report['top_features'][:5]]}")
    assert report["positives"] == Contact.objects.filter(workspace=ws.workspace, traits__y=True).count()
    assert report["roc_auc"] > 0.70
    assert report["lift_top_decile"] > 2.5
    assert "y" in report["excluded_traits"]
