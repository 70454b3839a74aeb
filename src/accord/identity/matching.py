"""Probabilistic matching: the fields compared, how a profile's traits become comparable values, the
comparison levels (one definition, read both as Splink SQL and as Python), blocking keys, and the scorer
that applies a trained model's weights to one record and its candidates. Pure: no database, no Splink.

Every value a comparison reads is worked out here in Python (`prepare`), so Splink (training, the batch
job) and the scorer (the single-record path) compare the same strings and numbers; the only functions
both sides compute are exact equality, Jaro-Winkler similarity, Levenshtein distance and a numeric
difference, and `tests/identity/test_matching.py` checks that their scores agree.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any

from rapidfuzz.distance import Jaro, Levenshtein

FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TRAIT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,3}$")
MAX_FIELDS = 20
MAX_RULES = 12
MAX_VALUE = 200
_SPACES = re.compile(r"\s+")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})(?:[t ].*)?$")  # text is lower-cased first
_NOT_DIGIT = re.compile(r"\D+")

# A level is (label, test, column suffix, parameter); tests: exact, jw (similarity at least), lev (edit
# distance at most), within (numeric difference at most). The null level and the else level are implied.
Level = tuple[str, str, str, float]
COMPARE: dict[str, tuple[Level, ...]] = {
    "name": (
        ("exact", "exact", "", 0),
        ("jaro-winkler >= 0.92", "jw", "", 0.92),
        ("jaro-winkler >= 0.88", "jw", "", 0.88),
        ("jaro-winkler >= 0.7", "jw", "", 0.7),
    ),
    "exact": (("exact", "exact", "", 0),),
    "code": (
        ("exact", "exact", "", 0),
        ("levenshtein <= 1", "lev", "", 1),
        ("levenshtein <= 2", "lev", "", 2),
    ),
    "date": (
        ("exact", "exact", "", 0),
        ("levenshtein <= 1", "lev", "", 1),
        ("within 31 days", "within", "__days", 31),
        ("within a year", "within", "__days", 366),
        ("within 10 years", "within", "__days", 3653),
    ),
    "email": (
        ("exact", "exact", "", 0),
        ("same user name", "exact", "__user", 0),
        ("user name jaro-winkler >= 0.88", "jw", "__user", 0.88),
    ),
    "phone": (
        ("exact", "exact", "", 0),
        ("levenshtein <= 1", "lev", "", 1),
    ),
}
DERIVED = {"date": ("__days",), "email": ("__user",)}


class MatchConfigError(ValueError):
    """A match configuration that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class MatchField:
    name: str  # the column name in Splink, and how rules refer to it
    traits: tuple[str, ...]  # trait paths, the first one set wins
    compare: str

    def columns(self) -> tuple[str, ...]:
        return (self.name, *(self.name + suffix for suffix in DERIVED.get(self.compare, ())))


@dataclass(frozen=True, slots=True)
class MatchSettings:
    fields: tuple[MatchField, ...]
    blocking: tuple[tuple[str, ...], ...]  # candidate pairs share every field of at least one rule
    deterministic: tuple[tuple[str, ...], ...]  # pairs almost surely the same person (to estimate the prior)
    recall: float  # the share of true matches the deterministic rules are thought to find

    def document(self) -> dict[str, Any]:
        return {
            "fields": [{"name": f.name, "traits": list(f.traits), "compare": f.compare} for f in self.fields],
            "blocking": [list(rule) for rule in self.blocking],
            "deterministic": [list(rule) for rule in self.deterministic],
            "recall": self.recall,
        }

    def columns(self) -> list[str]:
        return [column for f in self.fields for column in f.columns()]

    def signature(self) -> str:
        """Names what the blocking keys depend on: keys of another definition never collide."""
        text = repr([(f.name, f.traits, f.compare) for f in self.fields]) + repr(self.blocking)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


DEFAULT_MATCH: dict[str, Any] = {
    "fields": [
        {"name": "first_name", "traits": ["firstName", "first_name"], "compare": "name"},
        {"name": "last_name", "traits": ["lastName", "last_name"], "compare": "name"},
        {"name": "birthday", "traits": ["birthday", "dateOfBirth"], "compare": "date"},
        {"name": "email", "traits": ["email"], "compare": "email"},
        {"name": "phone", "traits": ["phone"], "compare": "phone"},
        {"name": "street", "traits": ["address.street"], "compare": "name"},
        {"name": "city", "traits": ["address.city"], "compare": "exact"},
        {"name": "postcode", "traits": ["address.postalCode", "address.postcode"], "compare": "code"},
    ],
    "blocking": [
        ["first_name", "last_name"],
        ["last_name", "birthday"],
        ["first_name", "birthday"],
        ["postcode", "last_name"],
        ["email"],
        ["phone"],
    ],
    "deterministic": [["first_name", "last_name", "birthday"], ["email"]],
    "recall": 0.8,
}


def _rules(value: Any, names: set[str], where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RULES:
        raise MatchConfigError(f"match.{where} must be a list of 1 to {MAX_RULES} lists of field names")
    rules: list[tuple[str, ...]] = []
    for index, rule in enumerate(value):
        if not isinstance(rule, list) or not 1 <= len(rule) <= 4 or not all(isinstance(n, str) for n in rule):
            raise MatchConfigError(f"match.{where}[{index}] must be a list of 1 to 4 field names")
        unknown = [n for n in rule if n not in names]
        if unknown:
            raise MatchConfigError(f"match.{where}[{index}] names no field {unknown[0][:40]!r}")
        if len(set(rule)) != len(rule):
            raise MatchConfigError(f"match.{where}[{index}] names a field twice")
        rules.append(tuple(rule))
    return tuple(rules)


def compile_match(document: dict[str, Any]) -> MatchSettings:
    """Check the matching part of the identity rules (`fields`, `blocking`, `deterministic`, `recall`)."""
    raw_fields = document.get("fields", DEFAULT_MATCH["fields"])
    if not isinstance(raw_fields, list) or not 1 <= len(raw_fields) <= MAX_FIELDS:
        raise MatchConfigError(f"match.fields must be a list of 1 to {MAX_FIELDS} fields")
    fields: list[MatchField] = []
    for index, entry in enumerate(raw_fields):
        where = f"match.fields[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "traits", "compare"}:
            raise MatchConfigError(f"{where} must be an object with name, traits and compare")
        name = entry.get("name")
        if not isinstance(name, str) or not FIELD_NAME.match(name) or "__" in name:
            raise MatchConfigError(f"{where}.name must be 1 to 40 lower-case letters, digits or single _")
        if any(f.name == name for f in fields):
            raise MatchConfigError(f"{where}.name {name!r} is listed twice")
        traits = entry.get("traits")
        if isinstance(traits, str):
            traits = [traits]
        if (
            not isinstance(traits, list)
            or not 1 <= len(traits) <= 5
            or not all(isinstance(t, str) and TRAIT_PATH.match(t) for t in traits)
        ):
            raise MatchConfigError(f"{where}.traits must be 1 to 5 trait paths such as lastName or address.city")
        compare = entry.get("compare")
        if compare not in COMPARE:
            raise MatchConfigError(f"{where}.compare must be one of {', '.join(COMPARE)}")
        fields.append(MatchField(name, tuple(traits), compare))
    names = {f.name for f in fields}
    blocking = _rules(document.get("blocking", DEFAULT_MATCH["blocking"]), names, "blocking")
    deterministic = _rules(document.get("deterministic", DEFAULT_MATCH["deterministic"]), names, "deterministic")
    recall = document.get("recall", DEFAULT_MATCH["recall"])
    if isinstance(recall, bool) or not isinstance(recall, int | float) or not 0 < recall <= 1:
        raise MatchConfigError("match.recall must be a number above 0 and at most 1")
    return MatchSettings(tuple(fields), blocking, deterministic, float(recall))


DEFAULT_SETTINGS = compile_match(DEFAULT_MATCH)


# Preparing values -----------------------------------------------------------------------------------


def _trait(traits: dict[str, Any], path: str) -> Any:
    value: Any = traits
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value) if value.is_integer() else value
    text = _SPACES.sub(" ", str(value)).strip().lower()
    return text[:MAX_VALUE] if text and "\x00" not in text else None


def _prepare_value(compare: str, value: Any) -> tuple[str | None, ...]:
    text = _text(value)
    if text is None:
        return (None,) * (1 + len(DERIVED.get(compare, ())))
    if compare == "date":
        found = _DATE.match(text)
        if found is None:
            return (None, None)
        digits = "".join(found.groups())
        try:
            days: str | None = str(date(int(found[1]), int(found[2]), int(found[3])).toordinal())
        except ValueError:  # a typo such as month 13: still comparable as text
            days = None
        return (digits, days)
    if compare == "email":
        user = text.partition("@")[0] or None
        return (text, user)
    if compare == "phone":
        digits = _NOT_DIGIT.sub("", text)
        return (digits or None,)
    if compare == "code":
        return (text.replace(" ", ""),)
    return (text,)


def prepare(traits: dict[str, Any], settings: MatchSettings) -> dict[str, Any]:
    """The comparable values of a profile's traits: one column per field, and derived ones (`__days`,
    `__user`). Numbers of days are integers; all else is text or None."""
    record: dict[str, Any] = {}
    for f in settings.fields:
        value = None
        for path in f.traits:
            value = _trait(traits, path)
            if _text(value) is not None:
                break
        for column, prepared in zip(f.columns(), _prepare_value(f.compare, value), strict=True):
            record[column] = int(prepared) if prepared is not None and column.endswith("__days") else prepared
    return record


def blocking_keys(record: dict[str, Any], settings: MatchSettings, keyed: Callable[[str], str]) -> list[str]:
    """A key per blocking rule whose fields are all set: two records share a key when they agree exactly on
    every field of that rule. `keyed` makes each key a keyed hash (`Keyring.match_key`, an HMAC under the
    blind-index key), so the index holds no personal data and cannot be searched by hashing guessed names."""
    signature = settings.signature()
    keys = []
    for index, rule in enumerate(settings.blocking):
        values = [record.get(name) for name in rule]
        if any(v is None for v in values):
            continue
        text = "\x1f".join([signature, str(index), *map(str, values)])
        keys.append(keyed(text))
    return keys


# Comparison levels, as Splink settings and as Python ----------------------------------------------


def _sql(test: str, column: str, parameter: float) -> str:
    left, right = f'"{column}_l"', f'"{column}_r"'
    if test == "exact":
        return f"{left} = {right}"
    if test == "jw":
        return f"jaro_winkler_similarity({left}, {right}) >= {parameter}"
    if test == "lev":
        return f"levenshtein({left}, {right}) <= {int(parameter)}"
    return f"abs({left} - {right}) <= {int(parameter)}"


def splink_comparisons(settings: MatchSettings) -> list[dict[str, Any]]:
    """The comparisons as Splink settings (custom levels, so both sides compute exactly the same thing)."""
    comparisons = []
    for f in settings.fields:
        levels: list[dict[str, Any]] = [
            {
                "sql_condition": f'"{f.name}_l" IS NULL OR "{f.name}_r" IS NULL',
                "label_for_charts": "null",
                "is_null_level": True,
            }
        ]
        for label, test, suffix, parameter in COMPARE[f.compare]:
            column = f.name + suffix
            condition = _sql(test, column, parameter)
            if suffix:  # a derived value may be missing where the field is not
                condition = f'"{column}_l" IS NOT NULL AND "{column}_r" IS NOT NULL AND {condition}'
            levels.append({"sql_condition": condition, "label_for_charts": label})
        levels.append({"sql_condition": "ELSE", "label_for_charts": "else"})
        comparisons.append({"output_column_name": f.name, "comparison_levels": levels})
    return comparisons


def splink_rule(rule: tuple[str, ...]) -> str:
    return " AND ".join(f'l."{name}" = r."{name}"' for name in rule)


def jaro_winkler(a: str, b: str) -> float:
    """DuckDB's jaro_winkler_similarity to the last bit: 0 for empty text, the prefix bonus (up to 4
    characters, weight 0.1) only above a Jaro similarity of 0.7, and the bonus added with one rounding
    (DuckDB's build fuses that multiply-add). rapidfuzz's own Jaro-Winkler rounds twice, which moves a
    pair such as "emery street" / "eyrestreet" across the 0.92 threshold."""
    if not a or not b:
        return 0.0
    similarity: float = Jaro.similarity(a, b)
    if similarity > 0.7:
        prefix = 0
        for x, y in zip(a[:4], b[:4], strict=False):
            if x != y:
                break
            prefix += 1
        if prefix:
            similarity = float(Fraction(prefix * 0.1) * Fraction(1.0 - similarity) + Fraction(similarity))
    return similarity


def level_of(field: MatchField, left: dict[str, Any], right: dict[str, Any]) -> int:
    """The index of the first level that holds (0: null; len(levels) + 1: else), as Splink finds it."""
    if left.get(field.name) is None or right.get(field.name) is None:
        return 0
    for index, (_, test, suffix, parameter) in enumerate(COMPARE[field.compare], start=1):
        column = field.name + suffix
        a, b = left.get(column), right.get(column)
        if a is None or b is None:
            continue
        if test == "exact":
            hit = a == b
        elif test == "jw":
            hit = jaro_winkler(a, b) >= parameter
        elif test == "lev":
            hit = Levenshtein.distance(a, b, score_cutoff=int(parameter)) <= parameter
        else:
            hit = abs(a - b) <= parameter
        if hit:
            return index
    return len(COMPARE[field.compare]) + 1


# The trained model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weights:
    """A trained model as the scorer needs it: the prior and each level's log2 Bayes factor (m/u)."""

    prior: float  # log2 of the prior odds that two records match
    levels: tuple[tuple[float, ...], ...]  # per field, per level (null first, else last)

    def document(self) -> dict[str, Any]:
        return {"prior": self.prior, "levels": [list(row) for row in self.levels]}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Weights:
        return cls(float(document["prior"]), tuple(tuple(float(w) for w in row) for row in document["levels"]))


@dataclass(frozen=True, slots=True)
class Score:
    match_weight: float
    probability: float
    levels: tuple[int, ...]


def probability(match_weight: float) -> float:
    if match_weight > 60:
        return 1.0
    odds: float = 2.0**match_weight
    return odds / (1.0 + odds)


def score(left: dict[str, Any], right: dict[str, Any], settings: MatchSettings, weights: Weights) -> Score:
    """Splink's match weight for a pair: the prior plus each field's level weight."""
    total = weights.prior
    found = []
    for f, row in zip(settings.fields, weights.levels, strict=True):
        level = level_of(f, left, right)
        found.append(level)
        total += row[level]
    return Score(total, probability(total), tuple(found))


def level_labels(settings: MatchSettings) -> list[list[str]]:
    return [["null", *(label for label, *_ in COMPARE[f.compare]), "else"] for f in settings.fields]
