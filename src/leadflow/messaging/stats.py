"""Email statistics per template, template version, broadcast and A/B variant (selectors).

Each figure counts messages, not events: a message opened five times is one open. Opens and
clicks are a person's by default: machine opens (privacy proxies) and bot clicks (link scanners)
are left out unless `include_machine`, and a human click counts as an open too (it could not
have happened unopened; Apple's proxy may have fetched the pixel first). Everything is one
aggregate query per call, grouped in the database, whatever the number of messages.

- queued: every message put in the outbox (test sends excluded)
- sent: accepted by the SMTP server or provider
- delivered: sent and not hard-bounced (a provider's delivery notice also counts)
- hard_bounced / soft_bounced: messages with a hard bounce / with at least one soft bounce
- opened, clicked, unsubscribed, complained: messages where it happened at least once
- rates: over delivered (bounce_rate over sent); click_to_open = clicked / opened
"""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Q

from leadflow.messaging.models import (
    Broadcast, BroadcastVariant, Message, MessageEvent, MessageEventKind, MessageKind, Template, TemplateVersion,
)

COUNTS = ("queued", "sent", "delivered", "hard_bounced", "soft_bounced", "opened", "clicked", "unsubscribed",
          "complained")


def _events(kinds: list[str], *, machine: bool | None) -> Exists:
    query = MessageEvent.objects.filter(message=OuterRef("pk"), kind__in=kinds)
    if machine is not None:
        query = query.filter(machine=machine)
    return Exists(query)


def _aggregates(*, include_machine: bool) -> dict:
    delivered = Q(sent_at__isnull=False) | Q(delivered_at__isnull=False)
    if include_machine:
        opened = Q(opened_at__isnull=False) | _events([MessageEventKind.OPENED, MessageEventKind.CLICKED],
                                                     machine=None)
        clicked = Q(clicked_at__isnull=False) | _events([MessageEventKind.CLICKED], machine=None)
    else:
        # opened_at / clicked_at are stamped by human events only (messaging.events); a human
        # click stamps opened_at too.
        opened = Q(opened_at__isnull=False)
        clicked = Q(clicked_at__isnull=False)
    return {
        "queued": Count("pk"),
        "sent": Count("pk", filter=Q(sent_at__isnull=False)),
        "delivered": Count("pk", filter=delivered & Q(bounced_at__isnull=True)),
        "hard_bounced": Count("pk", filter=Q(bounced_at__isnull=False)),
        "soft_bounced": Count("pk", filter=Q(_events([MessageEventKind.SOFT_BOUNCED], machine=None))),
        "opened": Count("pk", filter=opened),
        "clicked": Count("pk", filter=clicked),
        "unsubscribed": Count("pk", filter=Q(unsubscribed_at__isnull=False)),
        "complained": Count("pk", filter=Q(complained_at__isnull=False)),
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def with_rates(counts: dict) -> dict:
    out = {name: int(counts.get(name) or 0) for name in COUNTS}
    delivered = out["delivered"]
    out.update(bounce_rate=_rate(out["hard_bounced"], out["sent"]), open_rate=_rate(out["opened"], delivered),
               click_rate=_rate(out["clicked"], delivered), click_to_open=_rate(out["clicked"], out["opened"]),
               unsubscribe_rate=_rate(out["unsubscribed"], delivered),
               complaint_rate=_rate(out["complained"], delivered))
    return out


def _messages(workspace_id: int):
    return Message.objects.filter(workspace_id=workspace_id).exclude(kind=MessageKind.TEST)


def messages_stats(*, workspace_id: int, include_machine: bool = False, **filters) -> dict:
    """Totals over the workspace's messages matching `filters` (e.g. template_id=, version_id=,
    broadcast_id=, variant_id=, campaign=)."""
    allowed = {"template_id", "version_id", "broadcast_id", "variant_id", "campaign", "contact_id"}
    unknown = set(filters) - allowed
    if unknown:
        raise ValueError(f"cannot filter statistics by {sorted(unknown)}")
    return with_rates(_messages(workspace_id).filter(**filters).aggregate(**_aggregates(include_machine=include_machine)))


def _grouped(workspace_id: int, column: str, *, include_machine: bool, **filters) -> dict:
    rows = (_messages(workspace_id).filter(**filters).order_by().values(column)
            .annotate(**_aggregates(include_machine=include_machine)))
    return {row[column]: with_rates(row) for row in rows}


def template_stats(*, template: Template, include_machine: bool = False) -> dict:
    """A template's totals and the same figures per version (newest first)."""
    by_version = _grouped(template.workspace_id, "version_id", include_machine=include_machine,
                          template_id=template.pk)
    versions = {v.pk: v.number for v in TemplateVersion.objects.filter(template=template, pk__in=[
        k for k in by_version if k is not None])}
    rows = [{"version_id": pk, "version": versions.get(pk), **figures} for pk, figures in by_version.items()]
    rows.sort(key=lambda r: -(r["version"] or 0))
    return {"template_id": template.pk, "slug": template.slug, "name": template.name,
            "total": _sum(by_version.values()), "versions": rows}


def templates_stats(*, workspace_id: int, include_machine: bool = False) -> list[dict]:
    """Every template that has messages, with its totals (most messages first)."""
    by_template = _grouped(workspace_id, "template_id", include_machine=include_machine,
                           template_id__isnull=False)
    names = {t.pk: t for t in Template.objects.filter(workspace_id=workspace_id, pk__in=list(by_template))}
    rows = [{"template_id": pk, "slug": names[pk].slug, "name": names[pk].name, **figures}
            for pk, figures in by_template.items() if pk in names]
    return sorted(rows, key=lambda r: (-r["queued"], r["slug"]))


def broadcast_stats(*, broadcast: Broadcast, include_machine: bool = False) -> dict:
    """A broadcast's totals and, for an A/B test, the same figures per variant (the winner's
    send to the rest of the audience is the winning variant's)."""
    by_variant = _grouped(broadcast.workspace_id, "variant_id", include_machine=include_machine,
                          broadcast_id=broadcast.pk)
    labels = dict(BroadcastVariant.objects.filter(broadcast=broadcast).values_list("pk", "label"))
    variants = [{"variant_id": pk, "label": labels.get(pk, ""), **figures}
                for pk, figures in by_variant.items() if pk is not None]
    variants.sort(key=lambda r: r["label"])
    return {"broadcast_id": broadcast.pk, "slug": broadcast.slug, "name": broadcast.name,
            "total": _sum(by_variant.values()), "variants": variants,
            "without_variant": by_variant.get(None)}


def _sum(groups) -> dict:
    total = dict.fromkeys(COUNTS, 0)
    for figures in groups:
        for name in COUNTS:
            total[name] += figures[name]
    return with_rates(total)


SUMMARY = ("sent", "delivered", "opened", "clicked")


def templates_summary(*, workspace_id: int, template_ids: list[int]) -> dict[int, dict]:
    """The figures the templates list shows, for each of `template_ids` that has messages: sent,
    delivered, opened, clicked (people only: machine opens and bot clicks never stamp `opened_at`
    or `clicked_at`), open_rate and click_rate (over delivered, as everywhere here). One grouped
    query over the message rows' own columns, whatever the number of templates."""
    if not template_ids:
        return {}
    figures = _aggregates(include_machine=False)
    rows = (_messages(workspace_id).filter(template_id__in=template_ids).order_by().values("template_id")
            .annotate(**{name: figures[name] for name in SUMMARY}))
    out = {}
    for row in rows:
        counts = {name: int(row[name] or 0) for name in SUMMARY}
        out[row["template_id"]] = {**counts, "open_rate": _rate(counts["opened"], counts["delivered"]),
                                   "click_rate": _rate(counts["clicked"], counts["delivered"])}
    return out
