"""Channel classification and data hygiene: plain functions, plain tests."""

from __future__ import annotations

import pytest

from leadflow.contacts import hygiene
from leadflow.tracking.sources import CHANNELS, channel_classify, touch_from_context


@pytest.mark.parametrize("kwargs,channel", [
    ({"source": "google", "medium": "cpc"}, "paid_search"),
    ({"source": "bing", "medium": "ppc"}, "paid_search"),
    ({"page_url": "https://acme.example/?gclid=abc"}, "paid_search"),
    ({"source": "linkedin", "medium": "paid-social"}, "paid_social"),
    ({"source": "facebook", "medium": "cpc"}, "paid_social"),
    ({"source": "linkedin", "medium": "social"}, "organic_social"),
    ({"source": "twitter"}, "organic_social"),
    ({"source": "newsletter", "medium": "email"}, "email"),
    ({"source": "google", "medium": "organic"}, "organic_search"),
    ({"source": "partnerco", "medium": "affiliate"}, "partner"),
    ({"source": "saastr", "medium": "tradeshow"}, "events"),
    ({"source": "blog", "medium": "referral"}, "referral"),
    ({"source": "mystery", "medium": "billboard"}, "other"),
    ({"referrer": "https://www.google.com/search?q=x", "page_url": "https://acme.example/"}, "organic_search"),
    ({"referrer": "https://duckduckgo.com/", "page_url": "https://acme.example/"}, "organic_search"),
    ({"referrer": "https://www.linkedin.com/feed", "page_url": "https://acme.example/"}, "organic_social"),
    ({"referrer": "https://news.ycombinator.com/", "page_url": "https://acme.example/"}, "referral"),
    ({"referrer": "https://acme.example/blog", "page_url": "https://acme.example/pricing"}, "direct"),
    ({}, "direct"),
    ({"origin": "import"}, "import"),
    ({"origin": "import", "source": "google", "medium": "cpc"}, "paid_search"),
    ({"source": "Google", "medium": "CPC"}, "paid_search"),
])
def test_channel_classification(kwargs, channel):
    assert channel in CHANNELS
    assert channel_classify(**kwargs) == channel


def test_touch_keeps_raw_values():
    touch = touch_from_context({"campaign": {"source": "google", "medium": "cpc", "name": "brand", "term": "crm"},
                                "page": {"url": "https://acme.example/?utm_source=google",
                                         "referrer": "https://www.google.com/"}}, at="2026-01-01T00:00:00+00:00")
    assert touch == {"channel": "paid_search", "utm_source": "google", "utm_medium": "cpc",
                     "utm_campaign": "brand", "utm_term": "crm", "referrer": "https://www.google.com/",
                     "landing_page": "https://acme.example/?utm_source=google",
                     "at": "2026-01-01T00:00:00+00:00", "informative": True}


def test_direct_touch_is_not_informative():
    assert touch_from_context({"page": {"url": "https://acme.example/"}}, at="t")["informative"] is False


@pytest.mark.parametrize("raw,normal", [
    ("  Jane.Doe@Example.COM ", "jane.doe@example.com"),
    ("mailto:a@b.example.org", "a@b.example.org"),
])
def test_email_normalised(raw, normal):
    assert hygiene.email_normalize(raw) == normal


@pytest.mark.parametrize("raw", ["", "jane", "jane@", "@example.com", "a b@example.com", 42, None])
def test_bad_emails_rejected(raw):
    with pytest.raises(hygiene.HygieneError):
        hygiene.email_normalize(raw)


@pytest.mark.parametrize("raw,normal", [
    ("  JANE ", "Jane"), ("mary-jane o'neil", "Mary-Jane O'neil"), ("McDonald", "McDonald"),
    ("  Ana   Maria ", "Ana Maria"),
])
def test_names_normalised(raw, normal):
    assert hygiene.name_normalize(raw) == normal


@pytest.mark.parametrize("raw,country,e164", [
    ("(415) 555-0132", "US", "+14155550132"),
    ("912 345 678", "PT", "+351912345678"),
    ("+44 20 7946 0958", "", "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"),
])
def test_phone_to_e164(raw, country, e164):
    assert hygiene.phone_normalize(raw, country=country) == e164


def test_phone_without_country_is_kept_as_typed():
    assert hygiene.phone_normalize(" 555 0132 ") == "555 0132"


def test_bad_phone_with_country_is_an_error():
    with pytest.raises(hygiene.HygieneError):
        hygiene.phone_normalize("12", country="US")


@pytest.mark.parametrize("raw,code", [("pt", "PT"), ("Portugal", "PT"), ("UK", "GB"), ("United States", "US"),
                                      ("Atlantis", ""), ("", "")])
def test_country_normalised(raw, code):
    assert hygiene.country_normalize(raw) == code


def test_timezone_validated():
    assert hygiene.timezone_normalize("Europe/Lisbon") == "Europe/Lisbon"
    with pytest.raises(hygiene.HygieneError, match="IANA"):
        hygiene.timezone_normalize("Lisbon time")


def test_company_names_trimmed():
    assert hygiene.company_normalize("  Acme \t Corp  ") == "Acme Corp"
