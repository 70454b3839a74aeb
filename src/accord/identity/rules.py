"""Identity rules: which identifiers an event carries, how each is normalised, their priority, limits and
blocked values. A rules document is data (stored versioned in `identity_rules`); `Rules` is its compiled,
immutable form. Extraction is pure and runs once per event on the worker's hot path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import phonenumbers

from accord import patterns
from accord.identity.matching import DEFAULT_MATCH, DEFAULT_SETTINGS, MatchConfigError, MatchSettings, compile_match

Key = tuple[str, str]

MAX_VALUE_LENGTH = 400
MAX_TYPES = 32
MAX_BLOCKED = 50
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
NORMALISERS = ("trim", "lower", "email", "phone")
# Built-in types and where each is read from; any other configured type is read from context.externalIds.
BUILT_IN = {
    "user_id": "userId",
    "email": "traits.email",
    "phone": "traits.phone",
    "anonymous_id": "anonymousId",
    "device_id": "context.device.id",
    "advertising_id": "context.device.advertisingId",
    "alias": "previousId (alias calls)",
}
DEFAULT_NORMALISE = {"email": "email", "phone": "phone"}
# Identifier types (and normalisers) that are personal data.
PII_TYPES = ("email", "phone")
DEFAULT_LIMIT = 5
DEFAULT_DOCUMENT: dict[str, Any] = {
    "identifiers": [
        {"type": "user_id", "limit": 1},
        {"type": "email", "limit": DEFAULT_LIMIT},
        {"type": "phone", "limit": DEFAULT_LIMIT},
        {"type": "device_id", "limit": DEFAULT_LIMIT},
        {"type": "advertising_id", "limit": DEFAULT_LIMIT},
        {"type": "anonymous_id", "limit": DEFAULT_LIMIT},
        {"type": "alias", "limit": DEFAULT_LIMIT},
    ],
    "blocked": ["^[0-]*$", "^-1$", "^null$", "^none$", "^nil$", "^anonymous$", "^undefined$", "^unknown$", "^$"],
    "phone_region": None,
    "match": {"auto_merge_above": 0.99, "review_above": 0.8, **DEFAULT_MATCH},
}
MATCH_KEYS = ("auto_merge_above", "review_above", "fields", "blocking", "deterministic", "recall")
CANONICAL_MEMO = 50_000  # identifiers whose canonical form a Rules remembers (then it starts again)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class RulesError(ValueError):
    """A rules document that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class IdentifierType:
    name: str
    normalise: str
    limit: int


@dataclass(frozen=True, slots=True)
class Rules:
    """A compiled rules document. `rank` orders types by priority (0 is the highest)."""

    version: int
    types: tuple[IdentifierType, ...]
    blocked: tuple[str, ...]
    phone_region: str | None
    auto_merge_above: float
    review_above: float
    matching: MatchSettings = DEFAULT_SETTINGS
    rank: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    custom: tuple[str, ...] = ()
    # Types whose values are personal data: stored as a blind index and a ciphertext (accord.identity.blind).
    pii: frozenset[str] = frozenset()
    _blocked: patterns.Pattern | None = None
    _normalisers: dict[str, str] = field(default_factory=dict)
    # (type, value as sent) -> its canonical form, for usable values sent as text: the worker reads the same
    # identifiers again and again. An unusable one is worked out each time: a blocked pattern switched off
    # meanwhile (accord.patterns) may make it usable.
    _canonical: dict[tuple[str, str], str] = field(default_factory=dict, compare=False, repr=False)

    def document(self) -> dict[str, Any]:
        return {
            "identifiers": [{"type": t.name, "normalise": t.normalise, "limit": t.limit} for t in self.types],
            "blocked": list(self.blocked),
            "phone_region": self.phone_region,
            "match": {
                "auto_merge_above": self.auto_merge_above,
                "review_above": self.review_above,
                **self.matching.document(),
            },
        }

    def normalise(self, kind: str, value: Any) -> str | None:
        """The canonical form of an identifier of this type, or None when it is not usable as one."""
        if type(value) is not str:
            return self._normalise(kind, value)
        known = self._canonical.get((kind, value))
        if known is not None:
            return known
        found = self._normalise(kind, value)
        if found is not None:
            if len(self._canonical) >= CANONICAL_MEMO:
                self._canonical.clear()
            self._canonical[(kind, value)] = found
        return found

    def _normalise(self, kind: str, value: Any) -> str | None:
        how = self._normalisers.get(kind)
        if how is None or value is None or isinstance(value, bool | dict | list | float):
            return None
        text = str(value).strip()
        if len(text) > MAX_VALUE_LENGTH or "\x00" in text:  # PostgreSQL stores no NUL in text
            return None
        if how == "lower" or how == "email":
            text = text.lower()
        if how == "email" and not _EMAIL.match(text):
            return None
        if how == "phone":
            phone = _e164(text, self.phone_region)
            if phone is None:
                return None
            text = phone
        if self._blocked is not None and self._blocked.fullmatch(text):
            return None
        return text

    def identifiers(self, event: dict[str, Any]) -> list[Key]:
        """The identifiers an event attaches to its person, highest priority first."""
        found: list[Key] = []
        limits = self.limits

        def add(kind: str, value: Any) -> None:
            if kind in limits:
                normalised = self.normalise(kind, value)
                if normalised is not None and (kind, normalised) not in found:
                    found.append((kind, normalised))

        add("user_id", event.get("userId"))
        context = event.get("context")
        context = context if isinstance(context, dict) else {}
        # Top-level traits describe the person only in identify; in group they describe the company.
        person_traits = [context.get("traits")]
        if event.get("type") == "identify":
            person_traits.insert(0, event.get("traits"))
        for traits in person_traits:
            if isinstance(traits, dict):
                add("email", traits.get("email"))
                add("phone", traits.get("phone"))
        add("anonymous_id", event.get("anonymousId"))
        device = context.get("device")
        if isinstance(device, dict):
            add("device_id", device.get("id"))
            add("advertising_id", device.get("advertisingId"))
        if event.get("type") == "alias":
            add("alias", event.get("previousId"))
        meta = event.get("_accord")  # reserved: only Accord itself writes it (a probabilistic match's link)
        link = meta.get("link") if isinstance(meta, dict) else None
        if isinstance(link, list):
            for item in link[:10]:
                if isinstance(item, list) and len(item) == 2 and item[0] in limits and isinstance(item[1], str):
                    key = (item[0], item[1])
                    if key not in found:
                        found.append(key)
        external = context.get("externalIds")
        if self.custom and isinstance(external, list):
            for item in external[:50]:
                if isinstance(item, dict) and item.get("type") in self.custom:
                    add(str(item["type"]), item.get("id"))
        if len(found) > 1:
            rank = self.rank
            found.sort(key=lambda key: (rank[key[0]], key[1]))
        return found

    def lookups(self, identifiers: list[Key]) -> list[Key]:
        """Keys that find a profile without being attached: an alias's previousId may name a user id or an
        anonymous id, and the alias may arrive before or after the events that carry it."""
        keys: list[Key] = []
        limits = self.limits
        for kind, value in identifiers:
            if kind in ("user_id", "anonymous_id") and "alias" in limits:
                keys.append(("alias", value))
            elif kind == "alias":
                keys.extend((other, value) for other in ("user_id", "anonymous_id") if other in limits)
        return [key for key in keys if key not in identifiers]

    def parse_ref(self, ref: str) -> Key | None:
        """`type:value` as used in profile URLs, normalised; None if `ref` is not of that form."""
        kind, sep, value = ref.partition(":")
        if not sep or kind not in self.limits:
            return None
        normalised = self.normalise(kind, value)
        return (kind, normalised) if normalised is not None else None


@lru_cache(maxsize=20_000)
def _e164(text: str, region: str | None) -> str | None:
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def compile_rules(document: dict[str, Any], version: int = 0, *, new: bool = False) -> Rules:
    """Check a rules document and compile it; RulesError names the first problem."""
    if not isinstance(document, dict):
        raise RulesError("the rules must be a JSON object")
    unknown = set(document) - set(DEFAULT_DOCUMENT)
    if unknown:
        raise RulesError(f"unknown field {sorted(unknown)[0][:40]!r}; fields are {', '.join(DEFAULT_DOCUMENT)}")
    entries = document.get("identifiers", DEFAULT_DOCUMENT["identifiers"])
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_TYPES:
        raise RulesError(f"identifiers must be a list of 1 to {MAX_TYPES} types, highest priority first")
    types: list[IdentifierType] = []
    for index, entry in enumerate(entries):
        where = f"identifiers[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"type", "normalise", "limit"}:
            raise RulesError(f"{where} must be an object with type, and optionally normalise and limit")
        name = entry.get("type")
        if not isinstance(name, str) or not TYPE_NAME.match(name):
            raise RulesError(f"{where}.type must be 1 to 40 lower-case letters, digits or _, starting with a letter")
        if any(t.name == name for t in types):
            raise RulesError(f"{where}.type {name!r} is listed twice")
        normalise = entry.get("normalise", DEFAULT_NORMALISE.get(name, "trim"))
        if normalise not in NORMALISERS:
            raise RulesError(f"{where}.normalise must be one of {', '.join(NORMALISERS)}")
        limit = entry.get("limit", DEFAULT_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise RulesError(f"{where}.limit must be a whole number from 1 to 1000")
        types.append(IdentifierType(name, normalise, limit))
    blocked = document.get("blocked", DEFAULT_DOCUMENT["blocked"])
    if not isinstance(blocked, list) or len(blocked) > MAX_BLOCKED or not all(isinstance(b, str) for b in blocked):
        raise RulesError(f"blocked must be a list of at most {MAX_BLOCKED} regular expressions")
    for index, pattern in enumerate(blocked):
        if len(pattern) > 200:
            raise RulesError(f"blocked[{index}] is longer than 200 characters")
        # Rules read back are only compiled; new ones are also probed for backtracking (accord.patterns).
        problem = patterns.problem(pattern, ignore_case=True) if new else patterns.compiles(pattern, ignore_case=True)
        if problem is not None:
            raise RulesError(f"blocked[{index}] {problem}")
    region = document.get("phone_region")
    if region is not None and (not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS):
        raise RulesError("phone_region must be null or a two-letter region code such as GB or US")
    match = document.get("match", DEFAULT_DOCUMENT["match"])
    if not isinstance(match, dict) or set(match) - set(MATCH_KEYS):
        raise RulesError(f"match must be an object with some of {', '.join(MATCH_KEYS)}")
    auto = match.get("auto_merge_above", DEFAULT_DOCUMENT["match"]["auto_merge_above"])
    review = match.get("review_above", DEFAULT_DOCUMENT["match"]["review_above"])
    for name, value in (("auto_merge_above", auto), ("review_above", review)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise RulesError(f"match.{name} must be a probability from 0 to 1")
    if review > auto:
        raise RulesError("match.review_above must not be above match.auto_merge_above")
    try:
        matching = compile_match(match)
    except MatchConfigError as error:
        raise RulesError(str(error)) from None
    combined = "|".join(f"(?:{pattern})" for pattern in blocked)
    return Rules(
        version=version,
        types=tuple(types),
        blocked=tuple(blocked),
        phone_region=region.upper() if isinstance(region, str) else None,
        auto_merge_above=float(auto),
        review_above=float(review),
        matching=matching,
        rank={t.name: index for index, t in enumerate(types)},
        limits={t.name: t.limit for t in types},
        custom=tuple(t.name for t in types if t.name not in BUILT_IN),
        pii=frozenset(t.name for t in types if t.name in PII_TYPES or t.normalise in PII_TYPES),
        _blocked=patterns.Pattern(combined, use="identity_blocked", ignore_case=True) if blocked else None,
        _normalisers={t.name: t.normalise for t in types},
    )


DEFAULT_RULES = compile_rules(DEFAULT_DOCUMENT)
