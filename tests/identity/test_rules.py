"""Identity rules: limits, priority, blocked values, custom identifiers, normalisation. Both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from accord.identity import rules as rules_module
from accord.identity.models import Identity
from accord.identity.rules import DEFAULT_RULES, RulesError, compile_rules
from accord.profiles import service as profiles
from accord.runtime import Runtime
from pipeline.helpers import process, send, use_rules


def ids_of(rt: Runtime, ref: str) -> set[tuple[str, str]]:
    with rt.db.read() as session:
        found = profiles.resolve(session, ref)
        assert found is not None, f"no profile for {ref}"
        return {(i.type, i.value) for i in profiles.identities(session, found.id)}


def profile_id(rt: Runtime, ref: str) -> str | None:
    with rt.db.read() as session:
        found = profiles.resolve(session, ref)
        return found.id if found else None


def test_two_user_ids_never_merge_and_the_lower_priority_identifier_is_dropped(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "identify", "userId": "u1", "anonymousId": "shared", "timestamp": "2026-05-01T10:00:00Z"},
            {"type": "identify", "userId": "u2", "anonymousId": "shared", "timestamp": "2026-05-01T11:00:00Z"},
            {"type": "track", "userId": "u2", "anonymousId": "d2", "event": "X", "timestamp": "2026-05-01T12:00:00Z"},
        ],
    )
    process(rt)
    assert ids_of(rt, "user_id:u1") == {("user_id", "u1"), ("anonymous_id", "shared")}
    assert ids_of(rt, "user_id:u2") == {("user_id", "u2"), ("anonymous_id", "d2")}


def test_the_earliest_evidence_wins_whatever_the_arrival_order(rt: Runtime) -> None:
    late_first = [
        {"type": "identify", "userId": "u2", "anonymousId": "shared", "timestamp": "2026-05-01T11:00:00Z"},
    ]
    send(rt, late_first)
    process(rt)
    send(rt, [{"type": "identify", "userId": "u1", "anonymousId": "shared", "timestamp": "2026-05-01T10:00:00Z"}])
    process(rt)
    # u1's identify is earlier: the device is u1's, and u2's profile is re-derived without it.
    assert ids_of(rt, "user_id:u1") == {("user_id", "u1"), ("anonymous_id", "shared")}
    assert ids_of(rt, "user_id:u2") == {("user_id", "u2")}
    with rt.db.read() as session:
        u2 = profiles.resolve(session, "user_id:u2")
        assert u2 is not None
        assert u2.counts["types"] == {"identify": 1}


def test_count_limit_leaves_out_the_extra_value_and_remembers_it(rt: Runtime) -> None:
    use_rules(
        rt,
        {"identifiers": [{"type": "user_id", "limit": 1}, {"type": "email", "limit": 2}, {"type": "anonymous_id"}]},
    )
    send(
        rt,
        [
            {
                "type": "identify",
                "userId": "u1",
                "traits": {"email": f"e{n}@example.com"},
                "timestamp": f"2026-05-01T1{n}:00:00Z",
            }
            for n in range(3)
        ],
    )
    process(rt)
    assert ids_of(rt, "user_id:u1") == {("user_id", "u1"), ("email", "e0@example.com"), ("email", "e1@example.com")}
    with rt.db.read() as session:
        dropped = session.scalars(select(Identity).where(Identity.profile_id.is_(None))).all()
    assert rt.db.keyring is not None  # stored as its blind index, the value encrypted beside it
    assert [(d.type, d.value) for d in dropped] == [("email", rt.db.keyring.blind("email", "e2@example.com"))]
    assert dropped[0].value_enc is not None
    assert "e2@" not in dropped[0].value_enc
    assert dropped[0].cluster_id is not None
    # A later event that carries the left-out email as its strongest identifier gets a profile of its own.
    send(
        rt,
        [
            {
                "type": "identify",
                "traits": {"email": "e2@example.com"},
                "anonymousId": "z",
                "timestamp": "2026-05-02T00:00:00Z",
            }
        ],
    )
    process(rt)
    assert ids_of(rt, "email:e2@example.com") == {("email", "e2@example.com"), ("anonymous_id", "z")}


def test_priority_order_decides_which_identifier_is_kept(rt: Runtime) -> None:
    # With anonymous_id above email, the device wins and the email is left out of the merge.
    use_rules(
        rt,
        {"identifiers": [{"type": "user_id", "limit": 1}, {"type": "anonymous_id"}, {"type": "email"}]},
    )
    send(
        rt,
        [
            {
                "type": "identify",
                "userId": "u1",
                "traits": {"email": "ann@example.com"},
                "timestamp": "2026-05-01T10:00:00Z",
            },
            {"type": "identify", "userId": "u2", "anonymousId": "d2", "timestamp": "2026-05-01T10:30:00Z"},
            {
                "type": "identify",
                "anonymousId": "d2",
                "traits": {"email": "ann@example.com"},
                "timestamp": "2026-05-01T11:00:00Z",
            },
        ],
    )
    process(rt)
    assert profile_id(rt, "anonymous_id:d2") == profile_id(rt, "user_id:u2")
    assert profile_id(rt, "email:ann@example.com") == profile_id(rt, "user_id:u1")


def test_blocked_values_are_not_identifiers(rt: Runtime) -> None:
    use_rules(rt, {"blocked": ["^guest-.*$", "^$"]})
    send(
        rt,
        [
            {"type": "track", "userId": "u1", "anonymousId": "guest-7", "event": "A"},
            {"type": "track", "userId": "u2", "anonymousId": "guest-7", "event": "B"},
        ],
    )
    process(rt)
    assert ids_of(rt, "user_id:u1") == {("user_id", "u1")}
    assert ids_of(rt, "user_id:u2") == {("user_id", "u2")}


@pytest.mark.parametrize("value", ["0", "000-000", "-1", "null", "NULL", "anonymous", "undefined", "  "])
def test_default_blocked_values(value: str) -> None:
    assert DEFAULT_RULES.normalise("anonymous_id", value) is None


def test_custom_identifier_from_external_ids_stitches(rt: Runtime) -> None:
    use_rules(
        rt,
        {
            "identifiers": [
                {"type": "user_id", "limit": 1},
                {"type": "crm_id", "normalise": "lower", "limit": 1},
                {"type": "anonymous_id"},
            ]
        },
    )
    send(
        rt,
        [
            {
                "type": "track",
                "anonymousId": "web-1",
                "event": "A",
                "context": {
                    "externalIds": [{"id": "C-42", "type": "crm_id", "collection": "users", "encoding": "none"}]
                },
            },
            {
                "type": "track",
                "anonymousId": "app-1",
                "event": "B",
                "context": {"externalIds": [{"id": "c-42", "type": "crm_id"}, {"id": "x", "type": "not_configured"}]},
            },
        ],
    )
    process(rt)
    assert ids_of(rt, "crm_id:c-42") == {("crm_id", "c-42"), ("anonymous_id", "web-1"), ("anonymous_id", "app-1")}


def test_device_ids_are_identifiers(rt: Runtime) -> None:
    send(
        rt,
        [
            {"type": "track", "anonymousId": "a1", "event": "A", "context": {"device": {"id": "dev-9"}}},
            {
                "type": "track",
                "anonymousId": "a2",
                "event": "B",
                "context": {"device": {"id": "dev-9", "advertisingId": "ad-1"}},
            },
        ],
    )
    process(rt)
    assert ids_of(rt, "device_id:dev-9") == {
        ("device_id", "dev-9"),
        ("advertising_id", "ad-1"),
        ("anonymous_id", "a1"),
        ("anonymous_id", "a2"),
    }


def test_phones_become_e164() -> None:
    assert DEFAULT_RULES.normalise("phone", "+1 (415) 555-0100") == "+14155550100"
    assert DEFAULT_RULES.normalise("phone", "0044 20 7946 0958") == "+442079460958"
    assert DEFAULT_RULES.normalise("phone", "415-555-0100") is None  # no country, no region
    regional = compile_rules({"phone_region": "us"})
    assert regional.normalise("phone", "(415) 555-0100") == "+14155550100"
    assert DEFAULT_RULES.normalise("phone", "not a phone") is None


def test_emails_are_trimmed_and_lower_cased() -> None:
    assert DEFAULT_RULES.normalise("email", "  Ann@Example.COM ") == "ann@example.com"
    assert DEFAULT_RULES.normalise("email", "no-at-sign") is None


def test_canonical_forms_are_remembered_per_type_and_the_memo_starts_again_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules = compile_rules({})
    monkeypatch.setattr(rules_module, "CANONICAL_MEMO", 3)
    assert rules.normalise("email", " Ann@Example.COM") == "ann@example.com"
    assert rules.normalise("email", " Ann@Example.COM") == "ann@example.com"  # remembered: the same answer
    assert rules.normalise("user_id", " Ann@Example.COM") == "Ann@Example.COM"  # another type, another form
    assert rules.normalise("anonymous_id", "null") is None  # unusable: not remembered
    assert rules.normalise("user_id", 42) == "42"  # not text: not remembered
    assert set(rules._canonical) == {("email", " Ann@Example.COM"), ("user_id", " Ann@Example.COM")}
    assert rules.normalise("device_id", "d-1") == "d-1"
    assert rules.normalise("device_id", "d-2") == "d-2"  # the fourth: the memo started again
    assert set(rules._canonical) == {("device_id", "d-2")}


BAD_RULES: list[tuple[Any, str]] = [
    ([], "JSON object"),
    ({"identifiers": []}, "identifiers"),
    ({"identifiers": [{"type": "Bad Type"}]}, "identifiers[0].type"),
    ({"identifiers": [{"type": "email"}, {"type": "email"}]}, "twice"),
    ({"identifiers": [{"type": "email", "limit": 0}]}, "limit"),
    ({"identifiers": [{"type": "email", "limit": True}]}, "limit"),
    ({"identifiers": [{"type": "email", "normalise": "upper"}]}, "normalise"),
    ({"identifiers": [{"type": "email", "extra": 1}]}, "identifiers[0]"),
    ({"blocked": ["("]}, "blocked[0]"),
    ({"blocked": ["x" * 201]}, "blocked[0]"),
    ({"blocked": "^$"}, "blocked"),
    ({"phone_region": "XX"}, "phone_region"),
    ({"match": {"auto_merge_above": 0.5, "review_above": 0.9}}, "review_above"),
    ({"match": {"auto_merge_above": 2}}, "auto_merge_above"),
    ({"unknown": 1}, "unknown field"),
]


@pytest.mark.parametrize(("document", "problem"), BAD_RULES)
def test_bad_rules_are_refused_with_the_field_named(document: Any, problem: str) -> None:
    with pytest.raises(RulesError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        compile_rules(document)
