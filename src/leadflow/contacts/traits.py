"""Applying traits to a contact under the written conflict rule: the newest non-empty value wins.

Known traits fill the profile's columns (normalised by `hygiene`); every other trait is kept as
given in `traits`. A value that fails normalisation (a phone number that is not one) is kept in
`traits` under its own name rather than dropped.
"""

from __future__ import annotations

from leadflow.contacts import hygiene
from leadflow.contacts.models import Contact

# trait name as sent -> profile column
COLUMN_ALIASES = {
    "first_name": "first_name", "firstName": "first_name", "firstname": "first_name",
    "last_name": "last_name", "lastName": "last_name", "lastname": "last_name",
    "phone": "phone", "phone_number": "phone", "phoneNumber": "phone", "mobile": "phone",
    "title": "title", "job_title": "title", "jobTitle": "title",
    "country": "country", "timezone": "timezone", "time_zone": "timezone",
}
# never stored as plain traits: ids and the company link are identities and relations, and `name`
# is split into the first and last name columns
RESERVED = {"email", "userId", "user_id", "anonymousId", "company", "name"}
COLUMNS = ("first_name", "last_name", "phone", "title", "country", "timezone", "email")


def empty(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == [] or value == {}


def _newer(contact: Contact, name: str, at: str) -> bool:
    previous = contact.trait_times.get(name)
    return previous is None or previous <= at


def _set(contact: Contact, name: str, value: object, at: str, *, column: bool) -> bool:
    if empty(value) or not _newer(contact, name, at):
        return False
    if column:
        if getattr(contact, name) == value:
            contact.trait_times[name] = at
            return False
        setattr(contact, name, value)
    else:
        if contact.traits.get(name) == value:
            contact.trait_times[name] = at
            return False
        contact.traits[name] = value
    contact.trait_times[name] = at
    return True


def traits_apply(contact: Contact, traits: dict, *, at: str, email_owned: bool = True) -> bool:
    """Apply `traits` observed at ISO time `at`; returns whether anything changed.

    `email_owned` says the email identity in these traits belongs to this contact, so the
    `email` column may take it; otherwise the address is kept as a plain trait.
    """
    changed = False
    columns: dict[str, object] = {}
    for name, value in traits.items():
        if name in COLUMN_ALIASES:
            columns.setdefault(COLUMN_ALIASES[name], value)
    if not columns.get("first_name") and not columns.get("last_name") and isinstance(traits.get("name"), str):
        first, _, last = traits["name"].strip().partition(" ")
        columns["first_name"], columns["last_name"] = first, last
    address = traits.get("address")
    if isinstance(address, dict) and not columns.get("country") and address.get("country"):
        columns["country"] = address["country"]

    if "country" in columns:
        raw = columns["country"]
        code = hygiene.country_normalize(raw)
        if code:
            columns["country"] = code
        else:
            changed |= _set(contact, "country_raw", raw, at, column=False)
            del columns["country"]
    country = columns.get("country") or contact.country
    for name in ("first_name", "last_name"):
        if name in columns:
            columns[name] = hygiene.name_normalize(columns[name])
    if "title" in columns:
        columns["title"] = hygiene.text_clean(columns["title"])
    if "phone" in columns:
        try:
            columns["phone"] = hygiene.phone_normalize(columns["phone"], country=country)
        except hygiene.HygieneError:
            changed |= _set(contact, "phone_raw", columns.pop("phone"), at, column=False)
    if "timezone" in columns:
        try:
            columns["timezone"] = hygiene.timezone_normalize(columns["timezone"])
        except hygiene.HygieneError:
            changed |= _set(contact, "timezone_raw", columns.pop("timezone"), at, column=False)
    email = traits.get("email")
    if not empty(email):
        try:
            normal = hygiene.email_normalize(email)
        except hygiene.HygieneError:
            changed |= _set(contact, "email_raw", email, at, column=False)
        else:
            if email_owned:
                columns["email"] = normal
            else:
                changed |= _set(contact, "other_email", normal, at, column=False)

    for name, value in columns.items():
        changed |= _set(contact, name, value, at, column=True)
    for name, value in traits.items():
        if name in COLUMN_ALIASES or name in RESERVED:
            continue
        changed |= _set(contact, name, value, at, column=False)
    return changed


def traits_merge(winner: Contact, loser: Contact) -> None:
    """Fold the loser's columns and traits into the winner, newest non-empty value per trait."""
    for name in COLUMNS:
        value = getattr(loser, name)
        at = loser.trait_times.get(name, "")
        if not empty(value) and (empty(getattr(winner, name)) or winner.trait_times.get(name, "") < at):
            setattr(winner, name, value)
            if at:
                winner.trait_times[name] = at
    for name, value in loser.traits.items():
        at = loser.trait_times.get(name, "")
        if not empty(value) and (empty(winner.traits.get(name)) or winner.trait_times.get(name, "") < at):
            winner.traits[name] = value
            if at:
                winner.trait_times[name] = at
