"""Where a lead came from: turning UTM values, click ids and referrers into a channel.

Plain functions; the raw values always travel with the channel so nothing is lost.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

CHANNELS = (
    "organic_search", "paid_search", "paid_social", "organic_social", "email", "referral",
    "direct", "events", "partner", "import", "other",
)

CHANNEL_LABELS = {
    "organic_search": "Organic search", "paid_search": "Paid search", "paid_social": "Paid social",
    "organic_social": "Organic social", "email": "Email", "referral": "Referral", "direct": "Direct",
    "events": "Events / trade shows", "partner": "Partner", "import": "Import", "other": "Other",
}

SEARCH_ENGINES = ("google.", "bing.com", "yahoo.", "duckduckgo.com", "baidu.com", "yandex.",
                  "ecosia.org", "startpage.com", "search.brave.com", "qwant.com", "naver.com")
SOCIAL_SITES = ("facebook.com", "fb.com", "instagram.com", "linkedin.com", "lnkd.in", "twitter.com",
                "x.com", "t.co", "youtube.com", "reddit.com", "pinterest.", "tiktok.com",
                "threads.net", "mastodon.", "bsky.app", "xing.com", "quora.com")
SOCIAL_SOURCES = ("facebook", "fb", "instagram", "ig", "linkedin", "twitter", "x", "youtube",
                  "reddit", "pinterest", "tiktok", "threads", "meta", "xing", "quora", "bluesky")
PAID_MEDIUMS = ("cpc", "ppc", "paid", "paidsearch", "paid-search", "paid_search", "sem", "cpv", "cpa",
                "cpm", "display", "banner", "retargeting", "paid-social", "paidsocial", "paid_social",
                "social-paid", "social_paid")
EMAIL_MEDIUMS = ("email", "e-mail", "e_mail", "newsletter", "mail")
SOCIAL_MEDIUMS = ("social", "social-media", "social_media", "sm", "social-network", "organic-social",
                  "organic_social")
EVENT_MEDIUMS = ("event", "events", "tradeshow", "trade-show", "trade_show", "conference", "booth",
                 "expo", "meetup")
PARTNER_MEDIUMS = ("partner", "partners", "affiliate", "affiliates", "reseller", "co-marketing")


def _host(url: str) -> str:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host.lower().removeprefix("www.")


def _matches(host: str, patterns: tuple[str, ...]) -> bool:
    return any(host == p or host.startswith(p) or host.endswith("." + p) or
               (p.endswith(".") and (host.startswith(p) or f".{p}" in host)) for p in patterns)


def channel_classify(*, source: str = "", medium: str = "", referrer: str = "", page_url: str = "",
                     origin: str = "") -> str:
    """The channel for one touch. `origin` is 'import' for imports, '' for web and API events."""
    source = (source or "").strip().lower()
    medium = (medium or "").strip().lower()
    query = parse_qs(urlsplit(page_url).query) if page_url else {}
    paid_click = any(k in query for k in ("gclid", "msclkid", "gbraid", "wbraid", "dclid"))
    social_source = source in SOCIAL_SOURCES or _matches(source, SOCIAL_SITES)

    if medium in EVENT_MEDIUMS:
        return "events"
    if medium in PARTNER_MEDIUMS:
        return "partner"
    if medium in EMAIL_MEDIUMS or source in EMAIL_MEDIUMS:
        return "email"
    if medium in PAID_MEDIUMS or (paid_click and not medium):
        if social_source or "social" in medium:
            return "paid_social"
        return "paid_search"
    if medium in SOCIAL_MEDIUMS or (social_source and not medium):
        return "organic_social"
    if medium == "organic":
        return "organic_search"
    if medium == "referral":
        return "referral"
    if source or medium:
        return "other"
    if origin == "import":
        return "import"
    ref_host = _host(referrer)
    if ref_host and ref_host != _host(page_url):
        if _matches(ref_host, SEARCH_ENGINES):
            return "organic_search"
        if _matches(ref_host, SOCIAL_SITES):
            return "organic_social"
        return "referral"
    return "direct"


def touch_from_context(context: dict, *, at: str, origin: str = "", form: str = "",
                       import_label: str = "") -> dict | None:
    """A touch (channel plus raw values) from an event's context, or None when it says nothing
    about where the person came from (a direct, untagged page view)."""
    campaign = context.get("campaign") if isinstance(context.get("campaign"), dict) else {}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    referrer = page.get("referrer") or ""
    if isinstance(context.get("referrer"), dict) and not referrer:
        referrer = context["referrer"].get("link") or context["referrer"].get("url") or ""
    url = page.get("url") or ""
    raw = {
        "utm_source": str(campaign.get("source") or ""),
        "utm_medium": str(campaign.get("medium") or ""),
        "utm_campaign": str(campaign.get("name") or campaign.get("campaign") or ""),
        "utm_term": str(campaign.get("term") or ""),
        "utm_content": str(campaign.get("content") or ""),
    }
    channel = channel_classify(source=raw["utm_source"], medium=raw["utm_medium"],
                               referrer=str(referrer), page_url=str(url), origin=origin)
    informative = channel != "direct" or form or import_label
    touch = {"channel": channel, **{k: v for k, v in raw.items() if v},
             "referrer": str(referrer)[:1000], "landing_page": str(url)[:1000], "at": at}
    if form:
        touch["form"] = form
    if import_label:
        touch["import"] = import_label
    touch = {k: v for k, v in touch.items() if v != ""}
    touch["informative"] = bool(informative)
    return touch
