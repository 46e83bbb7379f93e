"""Normalising what people type: emails, names, company names, phone numbers, countries, timezones.

Plain functions with no database; every write path (events, forms, imports, API) uses them.
"""

from __future__ import annotations

import re
import zoneinfo

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_SPACES = re.compile(r"\s+")


class HygieneError(ValueError):
    """A value that cannot be normalised; the message says why."""


def email_normalize(raw: object) -> str:
    """A syntax-checked, lower-cased email address (no DNS look-up)."""
    if not isinstance(raw, str):
        raise HygieneError("email must be text")
    text = raw.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    if not text:
        raise HygieneError("email is empty")
    try:
        result = validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise HygieneError(f"invalid email {text!r}: {exc}") from None
    return result.normalized.lower()


def text_clean(raw: object, *, limit: int = 200) -> str:
    if raw is None:
        return ""
    return _SPACES.sub(" ", str(raw)).strip()[:limit]


def name_normalize(raw: object) -> str:
    """Trim and fold spaces; fix names typed all in capitals or all in lower case."""
    text = text_clean(raw)
    if text and (text.isupper() or text.islower()) and any(c.isalpha() for c in text):
        text = "-".join(
            " ".join(word[:1].upper() + word[1:].lower() for word in part.split(" "))
            for part in text.split("-")
        )
    return text


def company_normalize(raw: object) -> str:
    return text_clean(raw, limit=255)


def country_normalize(raw: object) -> str:
    """An ISO 3166 alpha-2 code from a code or a common country name; '' when unknown."""
    text = text_clean(raw).upper()
    if not text:
        return ""
    if text == "UK":
        return "GB"
    if len(text) == 2 and text.isalpha():
        return text if text in _KNOWN_REGIONS else ""
    return _COUNTRY_NAMES.get(text, "")


def phone_normalize(raw: object, *, country: str = "") -> str:
    """E.164 when the number parses (with the contact's country as the default region).

    Without a country, only numbers written with a leading + can be normalised; others are kept
    as typed (trimmed) so nothing the person gave is lost.
    """
    text = text_clean(raw, limit=40)
    if not text:
        return ""
    region = country.upper() if country else None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        if region or text.startswith("+"):
            raise HygieneError(f"invalid phone number {text!r}") from None
        return text
    if not phonenumbers.is_possible_number(number):
        raise HygieneError(f"invalid phone number {text!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def timezone_normalize(raw: object) -> str:
    text = text_clean(raw, limit=64)
    if not text:
        return ""
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise HygieneError(f"unknown timezone {text!r} (use an IANA name such as Europe/Lisbon)") from None
    return text


_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def domain_normalize(raw: object) -> str:
    """'https://www.Acme.com/about' -> 'acme.com'; '' for empty; HygieneError if not a domain."""
    text = text_clean(raw, limit=300).lower()
    domain = text.removeprefix("https://").removeprefix("http://").removeprefix("www.").split("/")[0]
    if domain and not _DOMAIN.match(domain):
        raise HygieneError(f"{text!r} is not a domain name such as example.com")
    return domain


def domain_of(email: str) -> str:
    return email.rsplit("@", 1)[1] if "@" in email else ""


_KNOWN_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)

_COUNTRY_NAMES = {
    "UNITED STATES": "US", "UNITED STATES OF AMERICA": "US", "USA": "US", "U.S.": "US", "U.S.A.": "US",
    "UNITED KINGDOM": "GB", "UK": "GB", "GREAT BRITAIN": "GB", "ENGLAND": "GB", "SCOTLAND": "GB",
    "GERMANY": "DE", "DEUTSCHLAND": "DE", "FRANCE": "FR", "SPAIN": "ES", "ESPAÑA": "ES",
    "PORTUGAL": "PT", "ITALY": "IT", "ITALIA": "IT", "NETHERLANDS": "NL", "THE NETHERLANDS": "NL",
    "BELGIUM": "BE", "SWITZERLAND": "CH", "AUSTRIA": "AT", "IRELAND": "IE", "SWEDEN": "SE",
    "NORWAY": "NO", "DENMARK": "DK", "FINLAND": "FI", "POLAND": "PL", "CANADA": "CA",
    "MEXICO": "MX", "BRAZIL": "BR", "BRASIL": "BR", "ARGENTINA": "AR", "AUSTRALIA": "AU",
    "NEW ZEALAND": "NZ", "INDIA": "IN", "JAPAN": "JP", "CHINA": "CN", "SINGAPORE": "SG",
    "SOUTH AFRICA": "ZA", "ISRAEL": "IL", "UNITED ARAB EMIRATES": "AE", "UAE": "AE",
    "SOUTH KOREA": "KR", "KOREA": "KR",
}
