"""Django forms for the marketer UI. They only parse input; the services decide what is valid."""

from __future__ import annotations

import re

from django import forms
from django.forms import formset_factory

from leadflow.core.models import KeyKind
from leadflow.tracking.forms import FIELD_TYPES
from leadflow.tracking.models import LeadMagnet, MagnetKind

FIELD_TYPE_LABELS = {
    "email": "Email address", "text": "Short text", "textarea": "Long text", "tel": "Phone number",
    "number": "Number", "select": "Dropdown", "checkbox": "Checkbox", "country": "Country",
    "hidden": "Hidden",
}


class FormSettingsForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Shown as the title of the hosted page.")
    slug = forms.SlugField(max_length=100, required=False,
                           help_text="Part of the form's web address. Left empty, it is made from the name.")
    submit_label = forms.CharField(max_length=100, initial="Submit", label="Button text")
    consent_text = forms.CharField(
        required=False, label="Consent checkbox wording", widget=forms.Textarea(attrs={"rows": 2}),
        help_text="The exact sentence next to the checkbox; it is stored with every consent. "
                  "Leave empty for no checkbox.")
    consent_required = forms.BooleanField(required=False, label="Visitors must tick the consent box")
    consent_topic = forms.CharField(max_length=100, initial="marketing", required=False,
                                    label="Consent topic",
                                    help_text="What they agree to, e.g. marketing or newsletter.")
    lead_magnet = forms.ChoiceField(required=False, label="Lead magnet",
                                    help_text="Offered for download after a successful submission.")
    success_message = forms.CharField(initial="Thank you!", required=False,
                                      widget=forms.Textarea(attrs={"rows": 2}))
    redirect_url = forms.URLField(max_length=1000, required=False, assume_scheme="https",
                                  label="Redirect to (optional)",
                                  help_text="Send people to this page after submitting "
                                            "(not used when a lead magnet is offered).")

    def __init__(self, *args, magnets=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["lead_magnet"].choices = [("", "— none —")] + [(str(m.pk), m.name) for m in magnets]


class FieldRowForm(forms.Form):
    """One field of a hosted form. A row with neither name nor label is ignored."""

    label = forms.CharField(max_length=200, required=False)
    name = forms.CharField(max_length=63, required=False,
                           help_text="lower_case_with_underscores; made from the label when empty")
    type = forms.ChoiceField(choices=[(t, FIELD_TYPE_LABELS.get(t, t)) for t in FIELD_TYPES], initial="text")
    required = forms.BooleanField(required=False)
    options = forms.CharField(max_length=2000, required=False, label="Choices",
                              help_text="For a dropdown: the choices, separated by commas")

    def field_spec(self) -> dict | None:
        data = self.cleaned_data
        if not data or data.get("DELETE"):
            return None
        label, name = (data.get("label") or "").strip(), (data.get("name") or "").strip()
        if not label and not name:
            return None
        if not name:
            name = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        spec = {"name": name, "label": label, "type": data.get("type") or "text",
                "required": bool(data.get("required"))}
        if spec["type"] == "select":
            spec["options"] = [o.strip() for o in re.split(r"[,\n]", data.get("options") or "") if o.strip()]
        return spec


FieldFormSet = formset_factory(FieldRowForm, extra=3, can_delete=True, max_num=60, validate_max=True)


def field_rows_initial(fields: list[dict]) -> list[dict]:
    return [{"label": f.get("label", ""), "name": f.get("name", ""), "type": f.get("type", "text"),
             "required": bool(f.get("required")), "options": ", ".join(f.get("options") or [])}
            for f in fields]


DEFAULT_FIELDS = [
    {"name": "email", "label": "Email", "type": "email", "required": True},
    {"name": "first_name", "label": "First name", "type": "text", "required": False},
]


class MagnetForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=100, required=False,
                           help_text="Used in reports and events. Left empty, it is made from the name.")
    kind = forms.ChoiceField(choices=MagnetKind.choices, initial=MagnetKind.EBOOK, label="Type")
    delivery_url = forms.CharField(max_length=1000, label="Download or access URL",
                                   help_text="Where people are sent when they open their download link.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    email_delivery = forms.BooleanField(
        required=False, initial=True, label="Email the download link",
        help_text="Whoever asks for it also gets the link by email (transactional: no marketing consent needed).")
    delivery_template = forms.ChoiceField(
        required=False, label="Delivery email",
        help_text="A transactional template with an approved version; the built-in one reads well for most.")

    def __init__(self, *args, templates=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["delivery_template"].choices = [("", "— built-in —")] + [(str(t.pk), t.name) for t in templates]

    @staticmethod
    def initial_for(magnet: LeadMagnet) -> dict:
        return {"name": magnet.name, "slug": magnet.slug, "kind": magnet.kind,
                "delivery_url": magnet.delivery_url, "description": magnet.description,
                "email_delivery": magnet.email_delivery, "delivery_template": str(magnet.delivery_template_id or "")}


class ImportForm(forms.Form):
    file = forms.FileField(label="CSV file",
                           help_text="One contact per row; the first row names the columns (email, first_name, …).")
    source_label = forms.CharField(max_length=200, required=False, label="Source label",
                                   help_text="Where this list came from, e.g. “Trade show Berlin 2026”.")


class ApiKeyForm(forms.Form):
    kind = forms.ChoiceField(choices=KeyKind.choices, initial=KeyKind.WRITE)
    name = forms.CharField(max_length=200, required=False, label="Label",
                           help_text="What it is for, e.g. “marketing site”.")
