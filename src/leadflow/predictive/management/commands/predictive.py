"""`leadflow scoring train|models`: train the workspace's conversion model, list its versions."""

from __future__ import annotations

import orjson
from django.core.management.base import BaseCommand, CommandError

from leadflow.core.management.commands._common import workspace_arg
from leadflow.predictive.selectors import predictive_models
from leadflow.predictive.services import (
    MIN_POSITIVES,
    PredictiveError,
    predictive_train,
)


class Command(BaseCommand):
    help = "Train the predictive conversion model on the workspace's history and list its versions."

    def create_parser(self, prog_name, subcommand, **kwargs):
        return super().create_parser(prog_name, "scoring", **kwargs)  # users type `leadflow scoring`

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{train,models}")
        train = sub.add_parser(
            "train", help="train a new model version and score every contact",
            description="Contacts whose outcome trait is true (true, yes, 1 or any value but "
                        "no/false/0), or who have the outcome event, are the converters. Two models "
                        "are fitted (logistic regression, gradient boosting); the one with the higher "
                        "held-out ROC AUC becomes the active version.")
        outcome = train.add_mutually_exclusive_group(required=True)
        outcome.add_argument("--outcome-trait", metavar="NAME", help="trait that marks a converted contact")
        outcome.add_argument("--outcome-event", metavar="NAME", help="event that marks a conversion")
        train.add_argument("--min-positives", type=int, default=MIN_POSITIVES, metavar="N",
                           help=f"converters needed before training (default {MIN_POSITIVES})")
        train.add_argument("--format", choices=["text", "json"], default="text")
        models = sub.add_parser("models", help="list model versions with their held-out ROC AUC")
        models.add_argument("--format", choices=["text", "json"], default="text")
        for command in (train, models):
            command.add_argument("--workspace", metavar="SLUG", help="workspace (default: the first)")

    def handle(self, *args, action, workspace, **options):
        ws = workspace_arg(workspace)
        if action == "models":
            return self._models(ws, options["format"])
        try:
            model = predictive_train(workspace=ws, outcome_trait=options.get("outcome_trait"),
                                     outcome_event=options.get("outcome_event"),
                                     min_positives=options["min_positives"], actor="cli")
        except PredictiveError as exc:
            raise CommandError(str(exc)) from exc
        report = {"workspace": ws.slug, "version": model.version, "outcome": model.outcome_description,
                  **model.metrics, "top_features": model.top_features,
                  "excluded_traits": model.feature_spec.get("excluded_traits", {}),
                  "features": len(model.feature_names), "contacts_scored": model.contacts_scored}
        if options["format"] == "json":
            self.stdout.write(orjson.dumps(report).decode())
        else:
            self._report(report)

    def _report(self, r: dict) -> None:
        w = self.stdout.write
        w(f"model v{r['version']} for {r['workspace']}: {r['outcome']}")
        w(f"history: {r['contacts']} contacts, {r['positives']} converted (base rate {r['base_rate']:.1%}); "
          f"{r['features']} features; judged on {r['held_out_contacts']} held-out contacts")
        for name, figures in r["candidates"].items():
            chosen = "  <- chosen" if name == r["algorithm"] else ""
            w(f"  {name:<20} ROC AUC {figures['roc_auc']:.3f}  precision@10% "
              f"{figures['precision_top_decile']:.1%}  Brier {figures['brier_score']:.4f}{chosen}")
        lift = f"{r['lift_top_decile']:.1f}x" if r["lift_top_decile"] is not None else "n/a"
        w(f"held-out ROC AUC {r['roc_auc']:.3f}; top decile converts at {r['precision_top_decile']:.1%} "
          f"vs {r['held_out_base_rate']:.1%} overall (lift {lift}); Brier score {r['brier_score']:.4f}")
        w("calibration (held-out deciles by predicted probability):")
        w("  bin  contacts  predicted  observed")
        for b in r["calibration"]:
            w(f"  {b['bin']:>3}  {b['contacts']:>8}  {b['mean_predicted']:>9.1%}  {b['observed_rate']:>8.1%}")
        w("top features (held-out ROC AUC lost when shuffled; + raises, - lowers the probability):")
        for f in r["top_features"]:
            w(f"  {f['direction']} {f['feature']:<40} {f['importance']:.4f}")
        for trait, why in r["excluded_traits"].items():
            w(f"not used: trait {trait!r} ({why})")
        w(f"scored {r['contacts_scored']} contacts")

    def _models(self, ws, output: str) -> None:
        rows = [{"version": m.version, "active": m.active, "outcome": m.outcome_description,
                 "algorithm": m.algorithm, "roc_auc": m.roc_auc, "contacts": m.metrics.get("contacts"),
                 "created_at": m.created_at.isoformat()} for m in predictive_models(workspace=ws)]
        if output == "json":
            self.stdout.write(orjson.dumps(rows).decode())
            return
        if not rows:
            self.stdout.write(f"no models yet in {ws.slug}: run leadflow scoring train --outcome-trait NAME")
            return
        for m in rows:
            self.stdout.write(f"v{m['version']}{' *' if m['active'] else '  '}  AUC {m['roc_auc']:.3f}  "
                              f"{m['algorithm']:<20} {m['contacts']} contacts  {m['outcome']}  "
                              f"{m['created_at'][:19]}")
