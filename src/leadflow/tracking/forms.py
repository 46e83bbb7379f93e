"""Hosted forms: checking a form's definition, building its Django form, taking a submission.

A submission goes through the same door as every other event: it appends an `identify` (the
fields as traits, linking the visitor's anonymous id) and a `Form Submitted` event (form, page,
UTM, consent wording) to the log. The worker turns them into the profile and the consent record.
"""

from __future__ import annotations

import re
import uuid

from django import forms as djforms
from django.core import signing
from django.db import transaction

from leadflow.contacts import hygiene
from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.tracking.ingest import events_append
from leadflow.tracking.models import Form, LeadMagnet

FIELD_TYPES = ("email", "text", "textarea", "tel", "number", "select", "checkbox", "country", "hidden")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED_FIELDS = {"lf_aid", "lf_page", "lf_referrer", "lf_consent", "lf_hp_url", "csrfmiddlewaretoken",
                   "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "embed"}
HONEYPOT = "lf_hp_url"
MAGNET_SALT = "leadflow.magnet"


def form_fields_validate(fields: object) -> list[dict]:
    """A clean copy of a form's field list, or ServiceError naming the bad field."""
    if not isinstance(fields, list) or not fields:
        raise ServiceError("a form needs a list of fields")
    clean, names = [], set()
    for index, field in enumerate(fields):
        where = f"field {index + 1}"
        if not isinstance(field, dict):
            raise ServiceError(f"{where}: must be an object with name, label and type")
        name = str(field.get("name") or "").strip()
        if not FIELD_NAME.match(name) or name in RESERVED_FIELDS:
            raise ServiceError(f"{where}: name {name!r} must be lower-case letters, digits and _ "
                               "(starting with a letter) and not a reserved name")
        if name in names:
            raise ServiceError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        kind = str(field.get("type") or "text")
        if kind not in FIELD_TYPES:
            raise ServiceError(f"{where} ({name}): type must be one of {', '.join(FIELD_TYPES)}")
        options = field.get("options") or []
        if kind == "select":
            if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
                raise ServiceError(f"{where} ({name}): a select needs a list of text options")
        clean.append({"name": name, "label": str(field.get("label") or name.replace("_", " ").capitalize()),
                      "type": kind, "required": bool(field.get("required")),
                      **({"options": options} if kind == "select" else {})})
    if not any(f["type"] == "email" and f["name"] == "email" for f in clean):
        raise ServiceError("a form needs an email field named 'email' so a submission identifies the person")
    return clean


def form_save(*, workspace, slug: str, name: str, fields: list, form: Form | None = None,
              **attrs) -> Form:
    from django.utils.text import slugify

    slug = slugify(slug or name)[:100]
    if not slug:
        raise ServiceError("a form needs a name")
    clean = form_fields_validate(fields)
    magnet = attrs.pop("lead_magnet", None)
    if isinstance(magnet, (int, str)) and magnet != "":
        found = LeadMagnet.objects.filter(workspace=workspace).filter(
            **({"pk": magnet} if str(magnet).isdigit() else {"slug": magnet})).first()
        if found is None:
            raise ServiceError(f"no lead magnet {magnet!r} in this workspace")
        magnet = found
    if Form.objects.filter(workspace=workspace, slug=slug).exclude(pk=getattr(form, "pk", None)).exists():
        raise ServiceError(f"a form with the slug {slug!r} already exists")
    _http_url_check(attrs.get("redirect_url") or "", "redirect_url")
    form = form or Form(workspace=workspace)
    form.slug, form.name, form.fields = slug, name.strip() or slug, clean
    form.lead_magnet = magnet or None
    for key, value in attrs.items():
        if value is not None and hasattr(form, key):
            setattr(form, key, value)
    form.updated_at = clock.now()
    form.save()
    return form


def magnet_save(*, workspace, slug: str, name: str, kind: str, delivery_url: str,
                description: str = "", email_delivery: bool = True, delivery_template: int | str | None = None,
                magnet: LeadMagnet | None = None) -> LeadMagnet:
    """Create or change a lead magnet. `email_delivery`: email the download link to whoever asks
    for it; `delivery_template`: id or slug of the transactional template that writes that email
    (None: the built-in one)."""
    from django.utils.text import slugify

    from leadflow.tracking.models import MagnetKind

    slug = slugify(slug or name)[:100]
    if not slug:
        raise ServiceError("a lead magnet needs a name")
    if kind not in MagnetKind.values:
        raise ServiceError(f"kind must be one of {', '.join(MagnetKind.values)}")
    _http_url_check(delivery_url, "delivery URL", required=True)
    if LeadMagnet.objects.filter(workspace=workspace, slug=slug).exclude(pk=getattr(magnet, "pk", None)).exists():
        raise ServiceError(f"a lead magnet with the slug {slug!r} already exists")
    template = _delivery_template(workspace, delivery_template)
    magnet = magnet or LeadMagnet(workspace=workspace)
    magnet.slug, magnet.name, magnet.kind = slug, name.strip() or slug, kind
    magnet.delivery_url, magnet.description = delivery_url, description
    magnet.email_delivery, magnet.delivery_template = bool(email_delivery), template
    magnet.save()
    return magnet


def _delivery_template(workspace, ref: int | str | None):
    """The transactional template `ref` (id or slug) names in this workspace, None for blank."""
    from leadflow.consent.services import OPTIN_TEMPLATE_SLUG
    from leadflow.messaging.models import Template, TemplateKind

    if ref in (None, ""):
        return None
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise ServiceError("delivery_template: give the id or slug of a transactional email template")
    lookup = {"pk": int(ref)} if isinstance(ref, int) or ref.isdigit() else {"slug": ref.strip()}
    template = Template.objects.filter(workspace=workspace, archived_at__isnull=True, **lookup).first()
    if template is None:
        raise ServiceError(f"delivery_template: there is no email template {ref!r} in this workspace")
    if template.kind != TemplateKind.TRANSACTIONAL:
        raise ServiceError(f"delivery_template: {template.slug!r} is a {template.kind} template; the delivery "
                           f"email must be transactional (it is sent to people who asked for it, without "
                           f"marketing consent)")
    if template.slug == OPTIN_TEMPLATE_SLUG:
        raise ServiceError(f"delivery_template: {template.slug!r} is the double opt-in confirmation; it needs the "
                           f"opt-in link only a subscription request has, so it cannot deliver a lead magnet. "
                           f"Choose another transactional template, or none for the built-in delivery email")
    if template.approved_version_id is None:
        raise ServiceError(f"delivery_template: {template.slug!r} has no approved version yet")
    return template


def _http_url_check(url: str, what: str, *, required: bool = False) -> None:
    from django.core.exceptions import ValidationError
    from django.core.validators import URLValidator

    if not url and not required:
        return
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ServiceError(f"{what} {url!r} is not an http(s) URL") from None


def form_archive(*, form: Form, actor: str) -> Form:
    """Take a form offline: its hosted page answers 404, its submissions stay."""
    from leadflow.core.services import audit_record

    if form.archived_at is None:
        form.archived_at = form.updated_at = clock.now()
        form.save(update_fields=["archived_at", "updated_at"])
        audit_record(workspace=form.workspace, actor=actor, action="form.archive", target=f"form:{form.slug}")
    return form


def magnet_archive(*, magnet: LeadMagnet, actor: str) -> LeadMagnet:
    """Retire a lead magnet from the lists; links already handed out keep working."""
    from leadflow.core.services import audit_record

    if magnet.archived_at is None:
        magnet.archived_at = clock.now()
        magnet.save(update_fields=["archived_at"])
        audit_record(workspace=magnet.workspace, actor=actor, action="magnet.archive",
                     target=f"magnet:{magnet.slug}")
    return magnet


def _country_choices():
    import phonenumbers

    return [("", "—")] + sorted((r, r) for r in phonenumbers.SUPPORTED_REGIONS)


def django_form_for(form: Form, data=None) -> djforms.Form:
    """A Django form with the hosted form's fields, its consent box and the honeypot."""
    built: dict[str, djforms.Field] = {}
    for field in form.fields:
        kind, common = field["type"], {"label": field["label"], "required": field["required"]}
        if kind == "email":
            built[field["name"]] = djforms.EmailField(max_length=320, **common)
        elif kind == "textarea":
            built[field["name"]] = djforms.CharField(widget=djforms.Textarea(attrs={"rows": 4}),
                                                     max_length=5000, **common)
        elif kind == "number":
            built[field["name"]] = djforms.DecimalField(**common)
        elif kind == "select":
            built[field["name"]] = djforms.ChoiceField(choices=[("", "—")] + [(o, o) for o in field["options"]],
                                                       **common)
        elif kind == "country":
            built[field["name"]] = djforms.ChoiceField(choices=_country_choices(), **common)
        elif kind == "checkbox":
            built[field["name"]] = djforms.BooleanField(**common)
        elif kind == "hidden":
            built[field["name"]] = djforms.CharField(widget=djforms.HiddenInput, max_length=500, required=False)
        else:
            attrs = {"autocomplete": "tel"} if kind == "tel" else {}
            built[field["name"]] = djforms.CharField(max_length=500, widget=djforms.TextInput(attrs=attrs), **common)
    if form.consent_text:
        built["lf_consent"] = djforms.BooleanField(label=form.consent_text, required=form.consent_required)
    built[HONEYPOT] = djforms.CharField(required=False, label="Leave this empty",
                                        widget=djforms.TextInput(attrs={"tabindex": "-1", "autocomplete": "off"}))

    def clean(self):
        data = super(type(self), self).clean()
        for name, value in list(data.items()):
            if name == "phone" and value:
                try:
                    data[name] = hygiene.phone_normalize(value, country=data.get("country") or "")
                except hygiene.HygieneError as exc:
                    self.add_error(name, str(exc))
        return data

    cls = type("HostedForm", (djforms.Form,), {**built, "clean": clean})
    return cls(data=data)


def form_submit(*, form: Form, cleaned: dict, anonymous_id: str, page_url: str, referrer: str,
                campaign: dict, ip: str | None, user_agent: str) -> dict:
    """Append the submission's identify and `Form Submitted` events; returns the delivery info."""
    traits = {}
    for field in form.fields:
        value = cleaned.get(field["name"])
        if value in (None, ""):
            continue
        traits[field["name"]] = str(value) if not isinstance(value, (bool, int, str)) else value
    consent = None
    if form.consent_text:
        consent = {"topic": form.consent_topic or "marketing", "granted": bool(cleaned.get("lf_consent")),
                   "wording": form.consent_text}
    context = {
        "page": {"url": page_url, "referrer": referrer},
        "campaign": {k: v for k, v in campaign.items() if v},
        "ip": ip, "userAgent": user_agent,
        "library": {"name": "leadflow-forms", "version": "1"},
    }
    if not context["campaign"]:
        del context["campaign"]
    now = clock.now().isoformat()
    properties = {"form_id": form.pk, "form_slug": form.slug, "form_name": form.name,
                  "page_url": page_url, "fields": sorted(traits)}
    if consent:
        properties["consent"] = consent
    if form.lead_magnet_id:
        magnet = form.lead_magnet
        properties.update(magnet_id=magnet.pk, magnet_slug=magnet.slug, magnet_name=magnet.name,
                          magnet_kind=magnet.kind)
    base = uuid.uuid4().hex
    messages = [
        {"type": "identify", "messageId": f"form-{base}-i", "anonymousId": anonymous_id,
         "traits": traits, "context": context, "timestamp": now},
        {"type": "track", "event": "Form Submitted", "messageId": f"form-{base}-t",
         "anonymousId": anonymous_id, "properties": properties,
         "context": {**context, "traits": {"email": traits.get("email")}}, "timestamp": now},
    ]
    with transaction.atomic():
        result = events_append(workspace=form.workspace, messages=messages)
    if result.rejected:
        raise ServiceError("; ".join(r["reason"] for r in result.rejected))
    delivery = {}
    if form.lead_magnet_id:
        delivery["magnet"] = form.lead_magnet
        delivery["token"] = magnet_token(magnet=form.lead_magnet, anonymous_id=anonymous_id,
                                         email=traits.get("email", ""))
        delivery["emailed"] = form.lead_magnet.email_delivery and bool(traits.get("email"))
    return delivery


def magnet_token(*, magnet: LeadMagnet, anonymous_id: str, email: str) -> str:
    return signing.dumps({"w": magnet.workspace_id, "m": magnet.pk, "a": anonymous_id, "e": email},
                         salt=MAGNET_SALT, compress=True)


def magnet_download(*, token: str, ip: str | None, user_agent: str) -> LeadMagnet:
    """Record an `Asset Downloaded` event for the token's person and magnet; returns the magnet."""
    try:
        data = signing.loads(token, salt=MAGNET_SALT)
    except signing.BadSignature:
        raise ServiceError("this download link is not valid") from None
    magnet = LeadMagnet.objects.select_related("workspace").filter(pk=data.get("m"),
                                                                    workspace_id=data.get("w")).first()
    if magnet is None:
        raise ServiceError("this download is no longer available")
    message = {"type": "track", "event": "Asset Downloaded", "anonymousId": data.get("a") or f"lf-{uuid.uuid4()}",
               "properties": {"magnet_id": magnet.pk, "magnet_slug": magnet.slug, "magnet_name": magnet.name,
                              "magnet_kind": magnet.kind},
               "context": {"ip": ip, "userAgent": user_agent,
                           **({"traits": {"email": data["e"]}} if data.get("e") else {})}}
    events_append(workspace=magnet.workspace, messages=[message])
    return magnet
