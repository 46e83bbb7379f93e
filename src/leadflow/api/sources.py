"""Lead sources: contacts per first-touch channel with their UTM breakdown, and the channel list."""

from __future__ import annotations

from collections import defaultdict

from django.db.models import Count
from django.db.models.fields.json import KT
from ninja import Router

from leadflow.api.schemas import ChannelOut, SourcesOut
from leadflow.contacts.models import Contact
from leadflow.tracking.sources import CHANNEL_LABELS, CHANNELS

router = Router(tags=["sources"])

UTM_KEYS = ("utm_source", "utm_medium", "utm_campaign")


def sources_report(*, workspace) -> dict:
    """One grouped query over the workspace's contacts by first-touch channel and UTM values."""
    rows = (Contact.objects.filter(workspace=workspace)
            .annotate(**{key: KT(f"first_touch__{key}") for key in UTM_KEYS})
            .values("source_channel", *UTM_KEYS).annotate(n=Count("id")).order_by())
    per_channel: dict[str, list[dict]] = defaultdict(list)
    unattributed = total = 0
    for row in rows:
        total += row["n"]
        if not row["source_channel"]:
            unattributed += row["n"]
            continue
        per_channel[row["source_channel"]].append(
            {**{key: row[key] or "" for key in UTM_KEYS}, "contacts": row["n"]})
    channels = []
    for channel in (*CHANNELS, *sorted(set(per_channel) - set(CHANNELS))):
        breakdown = sorted(per_channel.get(channel, []),
                           key=lambda b: (-b["contacts"], *(b[key] for key in UTM_KEYS)))
        channels.append({"channel": channel, "label": CHANNEL_LABELS.get(channel, channel),
                         "contacts": sum(b["contacts"] for b in breakdown), "breakdown": breakdown})
    return {"total_contacts": total, "unattributed": unattributed, "channels": channels}


@router.get("", response=SourcesOut,
            summary="Contacts per first-touch channel, broken down by utm_source, utm_medium and utm_campaign")
def sources_get(request):
    return sources_report(workspace=request.workspace)


@router.get("/channels", response=list[ChannelOut], summary="The channel vocabulary with labels")
def sources_channels(request):
    return [{"channel": channel, "label": CHANNEL_LABELS[channel]} for channel in CHANNELS]
