"""Lead magnet delivery by email: whoever asks for a magnet gets its download link in their inbox.

A request is a `Form Submitted` event from a form that offers a magnet (the hosted forms add
`magnet_id`) or an `Asset Requested` event from the site's own code (`magnet_slug` or
`magnet_id`). When the profile processor has put the event on a contact with an address, one
transactional message per event is queued (dedupe key `magnet:EVENT`), so a batch processed again
sends nothing twice. Transactional: the person asked for it, so it needs no marketing consent and
skips frequency caps and quiet hours, but the consent gate still stops it for a suppressed address.

The email's download link is the magnet's tracked link (`/m/TOKEN`), so a download from the email
records `Asset Downloaded` on the person like one from the thank-you page. The magnet's
`delivery_template` (a transactional template with an approved version) writes the email; without
one the workspace's built-in `leadflow-magnet-delivery` template does. Old events (an import of
history, a backlog) send nothing: only requests made in the last `FRESH` are answered.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db.models import Q

from leadflow.core import clock
from leadflow.tracking.models import LeadMagnet

log = logging.getLogger(__name__)

REQUEST_EVENTS = frozenset({"Form Submitted", "Asset Requested"})
FRESH = dt.timedelta(days=1)
TEMPLATE_SLUG = "leadflow-magnet-delivery"

SUBJECT = "Your {{ magnet_kind_name | lower }}: {{ magnet_name }}"
HTML = """<p>Hello {{ contact.first_name | default("there") }},</p>
<p>Thank you for asking for <strong>{{ magnet_name }}</strong>. Here it is:</p>
<p><a href="{{ magnet_download_url }}" style="display:inline-block;padding:10px 18px;background:#2457d6;color:#ffffff;text-decoration:none;border-radius:5px">Get {{ magnet_name }}</a></p>
{% if magnet_description %}<p>{{ magnet_description }}</p>{% endif %}
<p>Or open this link: {{ magnet_download_url }}</p>
<p>You receive this email because you asked for it{% if sender_name %} from {{ sender_name }}{% endif %}.</p>
{% if postal_address %}<p style="color:#667085;font-size:12px">{{ postal_address }}</p>{% endif %}"""
TEXT = """Hello {{ contact.first_name | default("there") }},

Thank you for asking for {{ magnet_name }}. Here it is:

{{ magnet_download_url }}
{% if magnet_description %}
{{ magnet_description }}
{% endif %}
You receive this email because you asked for it{% if sender_name %} from {{ sender_name }}{% endif %}.
{% if postal_address %}
{{ postal_address }}{% endif %}
"""


def magnet_requested(event) -> tuple[str, object] | None:
    """("id", 12) or ("slug", "pricing-guide") for an event that asks for a magnet, else None."""
    if event.type != "track" or event.event not in REQUEST_EVENTS:
        return None
    properties = event.properties if isinstance(event.properties, dict) else {}
    magnet_id = properties.get("magnet_id")
    if isinstance(magnet_id, int) and not isinstance(magnet_id, bool):
        return ("id", magnet_id)
    if isinstance(magnet_id, str) and magnet_id.isdigit():
        return ("id", int(magnet_id))
    slug = properties.get("magnet_slug")
    if isinstance(slug, str) and slug.strip():
        return ("slug", slug.strip()[:100])
    return None


def magnet_template_get(*, workspace_id: int):
    """The workspace's built-in delivery template (created, approved, on first use)."""
    from leadflow.messaging.content import BuiltIn, template_builtin_get

    return template_builtin_get(workspace_id=workspace_id, builtin=BuiltIn(
        slug=TEMPLATE_SLUG, name="Lead magnet delivery", subject=SUBJECT, html=HTML, text=TEXT))


def _template_for(magnet: LeadMagnet):
    """The magnet's own delivery template when it can be sent, else the built-in one."""
    from leadflow.messaging.models import TemplateKind

    chosen = magnet.delivery_template
    if (chosen is not None and chosen.kind == TemplateKind.TRANSACTIONAL and chosen.archived_at is None
            and chosen.approved_version_id is not None):
        return chosen
    if chosen is not None:
        log.warning("lead magnet %s: delivery template %r cannot be sent (not transactional, archived or not "
                    "approved); the built-in one is used", magnet.slug, chosen.slug)
    return magnet_template_get(workspace_id=magnet.workspace_id)


def magnet_deliveries_queue(*, workspace_id: int, requests: list[tuple[object, object]]) -> int:
    """Queue the delivery email for each (contact, event) that asks for a magnet of this
    workspace, in the caller's transaction. Skips people without an address, magnets with email
    delivery off, and events older than FRESH. Returns how many messages were new."""
    from leadflow.consent.services import sender_get
    from leadflow.messaging.models import Message, MessageKind
    from leadflow.messaging.outbox import message_queue
    from leadflow.messaging.tokens import public_url
    from leadflow.tracking.forms import magnet_token

    now = clock.now()
    wanted = [(contact, event, magnet_requested(event)) for contact, event in requests
              if (contact.email or "").strip() and event.timestamp >= now - FRESH]
    wanted = [(c, e, ref) for c, e, ref in wanted if ref is not None]
    if not wanted:
        return 0
    ids = {ref[1] for _, _, ref in wanted if ref[0] == "id"}
    slugs = {ref[1] for _, _, ref in wanted if ref[0] == "slug"}
    magnets = {}
    for magnet in (LeadMagnet.objects.filter(Q(pk__in=ids) | Q(slug__in=slugs), workspace_id=workspace_id,
                                             email_delivery=True).select_related("delivery_template")):
        magnets[("id", magnet.pk)] = magnets[("slug", magnet.slug)] = magnet
    keys = {f"magnet:{event.message_id}"[:255] for _, event, _ in wanted}
    done = set(Message.objects.filter(workspace_id=workspace_id, dedupe_key__in=keys)
               .values_list("dedupe_key", flat=True))
    sender_name, postal_address = sender_get(workspace_id=workspace_id)
    templates: dict[int, object] = {}
    queued = 0
    for contact, event, ref in wanted:
        magnet = magnets.get(ref)
        key = f"magnet:{event.message_id}"[:255]
        if magnet is None or key in done:
            continue
        done.add(key)
        if magnet.pk not in templates:  # one look-up per magnet, however many asked for it
            templates[magnet.pk] = _template_for(magnet)
        token = magnet_token(magnet=magnet, anonymous_id=event.anonymous_id or "", email=contact.email)
        message_queue(
            workspace_id=workspace_id, contact=contact, template=templates[magnet.pk], kind=MessageKind.TRANSACTIONAL,
            topic="", source=f"magnet:{magnet.slug}", campaign=magnet.slug, dedupe_key=key,
            context={"magnet_name": magnet.name, "magnet_slug": magnet.slug, "magnet_kind": magnet.kind,
                     "magnet_kind_name": magnet.get_kind_display(), "magnet_description": magnet.description,
                     "magnet_download_url": public_url(f"m/{token}"), "sender_name": sender_name,
                     "postal_address": postal_address})
        queued += 1
    return queued
