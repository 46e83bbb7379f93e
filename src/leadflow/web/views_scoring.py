"""The Scoring pages: rules by kind, a rule editor that builds conditions without JSON for the
common cases (raw JSON for the rest), and the grade thresholds and half-life."""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from leadflow.core.services import ServiceError
from leadflow.predictive.selectors import predictive_models
from leadflow.scoring import conditions, selectors, services
from leadflow.scoring.models import RuleKind
from leadflow.web.views import _actor, workspace_view

FIT_ROWS = 5
FIELD_CHOICES = [
    ("title", "Job title"), ("email_domain_type", "Email type (free / business)"), ("country", "Country"),
    ("company.traits.employees", "Company size (employees)"), ("company.traits.industry", "Industry"),
    ("company.name", "Company name"), ("company.domain", "Company domain"), ("email_domain", "Email domain"),
    ("source_channel", "Source channel"), ("timezone", "Time zone"), ("first_name", "First name"),
    ("last_name", "Last name"), ("email", "Email"), ("trait", "Trait (name below)…"),
]
OP_CHOICES = [
    ("contains", "contains"), ("eq", "is"), ("neq", "is not"), ("not_contains", "does not contain"),
    ("starts_with", "starts with"), ("in", "is one of (comma-separated)"), ("not_in", "is none of"),
    ("exists", "is known"), ("not_exists", "is unknown"), ("gt", ">"), ("gte", "≥"), ("lt", "<"), ("lte", "≤"),
    ("between", "between (low, high)"),
]


class RuleForm(forms.Form):
    kind = forms.ChoiceField(choices=RuleKind.choices)
    name = forms.CharField(max_length=200)
    points = forms.IntegerField(min_value=-1000, max_value=1000, help_text="negative to subtract")
    daily_cap = forms.IntegerField(required=False, min_value=1, label="Daily cap",
                                   help_text="engagement: most points per contact per UTC day; empty for none")
    expires_after_days = forms.IntegerField(required=False, min_value=1, label="Points expire after (days)",
                                            help_text="engagement: empty for never (decay still applies)")
    active = forms.BooleanField(required=False, initial=True)
    match = forms.ChoiceField(choices=[("all", "all of these"), ("any", "any of these")], initial="all",
                              required=False, label="Contacts matching")
    event = forms.CharField(required=False, max_length=255, label="Event name",
                            help_text="e.g. Asset Downloaded, Webinar Attended, Email Clicked")
    url_contains = forms.CharField(required=False, max_length=500, label="…or a page view whose URL contains",
                                   help_text="e.g. /pricing")
    raw = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6, "class": "mono"}),
                          label="Condition as JSON (advanced)",
                          help_text="when filled, used instead of the fields above (docs/scoring.md)")


def _parse_value(op: str, text: str):
    text = text.strip()
    if op in conditions.PRESENCE_OPS:
        return None
    if op in conditions.LIST_OPS or op == "between":
        items = [item.strip() for item in text.split(",") if item.strip()]
        return [_number_or_text(item) for item in items] if op == "between" else items
    if op in conditions.NUMBER_OPS:
        return _number_or_text(text)
    return text


def _number_or_text(text: str):
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def _rows_from_post(data) -> list[dict]:
    rows = []
    for i in range(FIT_ROWS):
        field = data.get(f"row-{i}-field", "")
        trait = data.get(f"row-{i}-trait", "").strip()
        op = data.get(f"row-{i}-op", "")
        value = data.get(f"row-{i}-value", "")
        if field == "trait":
            field = f"traits.{trait}" if trait else ""
        if not field or (not value.strip() and op not in conditions.PRESENCE_OPS):
            continue
        cond = {"field": field, "op": op}
        parsed = _parse_value(op, value)
        if parsed is not None:
            cond["value"] = parsed
        rows.append(cond)
    return rows


def _condition_from_form(data: dict, post) -> object:
    if data["raw"].strip():
        try:
            return json.loads(data["raw"])
        except json.JSONDecodeError as exc:
            raise ServiceError(f"condition JSON: {exc}") from None
    if data["kind"] == RuleKind.ENGAGEMENT:
        if data["event"].strip():
            return {"event": data["event"].strip()}
        if data["url_contains"].strip():
            return {"type": "page", "url_contains": data["url_contains"].strip()}
        raise ServiceError("condition: give an event name, a page URL fragment or the JSON")
    rows = _rows_from_post(post)
    if not rows:
        raise ServiceError("condition: fill in at least one field, operator and value")
    return rows[0] if len(rows) == 1 else {data["match"] or "all": rows}


def _builder_initial(rule) -> tuple[dict, list[dict]]:
    """Form values for an existing rule: the simple builder when it can show it, else JSON."""
    cond = rule.condition
    initial = {"kind": rule.kind, "name": rule.name, "points": rule.points, "daily_cap": rule.daily_cap,
               "expires_after_days": rule.expires_after_days, "active": rule.active}
    rows: list[dict] = []
    known = {value for value, _ in FIELD_CHOICES}
    if rule.kind == RuleKind.ENGAGEMENT:
        if set(cond) == {"event"}:
            initial["event"] = cond["event"]
        elif cond == {"type": "page", "url_contains": cond.get("url_contains")}:
            initial["url_contains"] = cond["url_contains"]
        else:
            initial["raw"] = json.dumps(cond, indent=2)
        return initial, rows
    match, leaves = ("all", [cond]) if "field" in cond else next(iter(cond.items()))
    if len(leaves) <= FIT_ROWS and all("field" in leaf for leaf in leaves):
        initial["match"] = match
        for leaf in leaves:
            field, trait = leaf["field"], ""
            if field not in known and field.startswith("traits."):
                field, trait = "trait", leaf["field"][7:]
            elif field not in known:
                initial["raw"] = json.dumps(cond, indent=2)
                return initial, []
            value = leaf.get("value", "")
            rows.append({"field": field, "trait": trait, "op": leaf["op"],
                         "value": ", ".join(str(v) for v in value) if isinstance(value, list) else value})
    else:
        initial["raw"] = json.dumps(cond, indent=2)
    return initial, rows


def _padded(rows: list[dict]) -> list[dict]:
    rows = [dict(row, index=i) for i, row in enumerate(rows)]
    return rows + [{"index": i, "field": "", "trait": "", "op": "contains", "value": ""}
                   for i in range(len(rows), FIT_ROWS)]


@workspace_view()
def scoring_page(request: HttpRequest) -> HttpResponse:
    rules = list(selectors.rules_list(workspace=request.workspace))
    return render(request, "web/scoring/rules.html", {
        "section": "scoring",
        "fit_rules": [r for r in rules if r.kind == RuleKind.FIT],
        "engagement_rules": [r for r in rules if r.kind == RuleKind.ENGAGEMENT],
        "settings": selectors.settings_get(workspace=request.workspace),
        "models": predictive_models(workspace=request.workspace)[:10],
    })


@workspace_view(edit=True)
@require_http_methods(["GET", "POST"])
def rule_edit(request: HttpRequest, rule_id: int | None = None) -> HttpResponse:
    existing = None
    if rule_id is not None:
        existing = selectors.rule_get(workspace=request.workspace, rule_id=rule_id)
        if existing is None:
            raise Http404("no such scoring rule in this workspace")
    rows: list[dict] = []
    if request.method == "POST":
        form = RuleForm(request.POST)
        rows = [{"field": request.POST.get(f"row-{i}-field", ""), "trait": request.POST.get(f"row-{i}-trait", ""),
                 "op": request.POST.get(f"row-{i}-op", ""), "value": request.POST.get(f"row-{i}-value", "")}
                for i in range(FIT_ROWS)]
        if form.is_valid():
            data = form.cleaned_data
            try:
                condition = _condition_from_form(data, request.POST)
                values = {"name": data["name"], "condition": condition, "points": data["points"],
                          "daily_cap": data["daily_cap"], "expires_after_days": data["expires_after_days"],
                          "active": data["active"]}
                if existing is None:
                    services.rule_create(workspace=request.workspace, kind=data["kind"], actor=_actor(request),
                                         **values)
                else:
                    services.rule_update(rule=existing, changes=values, actor=_actor(request))
            except ServiceError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Saved “{data['name']}”; scores were updated.")
                return redirect("web:scoring")
    elif existing is not None:
        initial, rows = _builder_initial(existing)
        form = RuleForm(initial=initial)
    else:
        form = RuleForm(initial={"kind": request.GET.get("kind", RuleKind.FIT), "active": True})
    if existing is not None:
        form.fields["kind"].disabled = True
        form.fields["kind"].initial = existing.kind
    return render(request, "web/scoring/rule_edit.html", {
        "section": "scoring", "existing": existing, "form": form, "rows": _padded(rows[:FIT_ROWS]),
        "field_choices": FIELD_CHOICES, "op_choices": OP_CHOICES,
        "kind": existing.kind if existing else (form["kind"].value() or RuleKind.FIT),
    })


@workspace_view(edit=True)
@require_POST
def rule_toggle(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = selectors.rule_get(workspace=request.workspace, rule_id=rule_id)
    if rule is None:
        raise Http404("no such scoring rule in this workspace")
    services.rule_update(rule=rule, changes={"active": not rule.active}, actor=_actor(request))
    messages.success(request, f"“{rule.name}” is now {'active' if rule.active else 'inactive'}.")
    return redirect("web:scoring")


@workspace_view(edit=True)
@require_POST
def rule_delete(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = selectors.rule_get(workspace=request.workspace, rule_id=rule_id)
    if rule is None:
        raise Http404("no such scoring rule in this workspace")
    services.rule_delete(rule=rule, actor=_actor(request))
    messages.success(request, f"Deleted “{rule.name}”.")
    return redirect("web:scoring")


class SettingsForm(forms.Form):
    grade_a = forms.IntegerField(label="Grade A from")
    grade_b = forms.IntegerField(label="Grade B from")
    grade_c = forms.IntegerField(label="Grade C from")
    half_life_days = forms.FloatField(min_value=0, max_value=3650, label="Engagement half-life (days)",
                                      help_text="0 turns decay off")


@workspace_view(edit=True)
@require_POST
def scoring_settings(request: HttpRequest) -> HttpResponse:
    form = SettingsForm(request.POST)
    if form.is_valid():
        try:
            services.settings_update(workspace=request.workspace, changes=form.cleaned_data, actor=_actor(request))
        except ServiceError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Scoring settings saved; scores were updated.")
    else:
        messages.error(request, "; ".join(f"{name}: {' '.join(errs)}" for name, errs in form.errors.items()))
    return redirect("web:scoring")
