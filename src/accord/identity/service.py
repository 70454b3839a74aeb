"""Deterministic identity: which identifiers an event carries, normalised. Pure functions."""

from __future__ import annotations

import re
from typing import Any

IDENTIFIER_TYPES = ("user_id", "anonymous_id", "email", "phone", "alias")
# Values that clients send when they have no real id; matching on them would merge strangers.
BLOCKED_VALUES = frozenset({"", "null", "none", "undefined", "anonymous", "unknown", "nil", "-1", "0"})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_JUNK = re.compile(r"[\s().\-/]")

Key = tuple[str, str]


def normalise(kind: str, value: Any) -> str | None:
    """The canonical form of an identifier, or None when it is not usable as one."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value).strip()
    if text.lower() in BLOCKED_VALUES or len(text) > 400:
        return None
    if kind == "email":
        text = text.lower()
        return text if _EMAIL.match(text) else None
    if kind == "phone":
        digits = _PHONE_JUNK.sub("", text)
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        body = digits[1:] if digits.startswith("+") else digits
        if not body.isdigit() or not 6 <= len(body) <= 15:
            return None
        return digits
    return text


def parse_ref(ref: str) -> Key | None:
    """`type:value` as used in profile URLs, normalised; None if `ref` is not of that form."""
    kind, sep, value = ref.partition(":")
    if not sep or kind not in IDENTIFIER_TYPES:
        return None
    normalised = normalise(kind, value)
    return (kind, normalised) if normalised is not None else None


def event_identifiers(event: dict[str, Any]) -> list[Key]:
    """The identifiers an event attaches to its profile, strongest first."""
    keys: list[Key] = []

    def add(kind: str, value: Any) -> None:
        normalised = normalise(kind, value)
        if normalised is not None and (kind, normalised) not in keys:
            keys.append((kind, normalised))

    add("user_id", event.get("userId"))
    # Top-level traits describe the person only in identify; in group they describe the company.
    person_traits = [(event.get("context") or {}).get("traits")]
    if event.get("type") == "identify":
        person_traits.insert(0, event.get("traits"))
    for traits in person_traits:
        if isinstance(traits, dict):
            add("email", traits.get("email"))
            add("phone", traits.get("phone"))
    add("anonymous_id", event.get("anonymousId"))
    if event.get("type") == "alias":
        add("alias", event.get("previousId"))
    return keys


def lookup_keys(event: dict[str, Any], identifiers: list[Key]) -> list[Key]:
    """Keys to look up for an event: its identifiers, plus the alias links that may name them.

    An alias's previousId may be a user id or an anonymous id, and the alias may arrive before or
    after the events that carry it; looking both ways makes the result independent of that order.
    """
    keys = list(identifiers)
    for kind, value in identifiers:
        if kind in ("user_id", "anonymous_id"):
            keys.append(("alias", value))
        elif kind == "alias":
            keys.append(("user_id", value))
            keys.append(("anonymous_id", value))
    return keys
