"""Probabilistic matching through Accord: training, the blocking index kept by the worker, the match API,
the dedupe job, the review queue and unmerge of a matched pair; SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from faker import Faker
from sqlalchemy import func, select
from typer.testing import CliRunner

from accord.cli import app as cli_app
from accord.db import migrate
from accord.db.base import utcnow
from accord.identity import linkage, match_index
from accord.identity.matching import blocking_keys, prepare
from accord.identity.models import MatchKey
from accord.identity.training import TrainingError
from conftest import LiveAccord

RULES = {
    "identifiers": [{"type": "user_id", "limit": 1}, {"type": "email"}, {"type": "anonymous_id", "limit": 20}],
    "match": {"auto_merge_above": 0.999, "review_above": 0.5},
}


def typo(text: str, rng: random.Random) -> str:
    at = rng.randrange(1, len(text))
    return text[:at] + rng.choice("aeiourst") + text[at + 1 :]


def people(n: int, seed: int = 7) -> list[dict[str, Any]]:
    fake = Faker("en_GB")
    fake.seed_instance(seed)
    return [
        {
            "firstName": fake.first_name(),
            "lastName": fake.last_name(),
            "birthday": fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
            "address": {"street": fake.street_address(), "city": fake.city(), "postalCode": fake.postcode()},
        }
        for _ in range(n)
    ]


def duplicate(person: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The same person typed again: one typo, otherwise the same."""
    copy = json.loads(json.dumps(person))
    field = rng.choice(["firstName", "lastName", "street"])
    if field == "street":
        copy["address"]["street"] = typo(copy["address"]["street"], rng)
    else:
        copy[field] = typo(copy[field], rng)
    return copy


def send(live: LiveAccord, records: list[tuple[str, dict[str, Any]]]) -> None:
    events = [{"type": "identify", "anonymousId": anon, "traits": traits} for anon, traits in records]
    with live.client(auth=(live.write_key, "")) as client:
        for start in range(0, len(events), 500):
            response = client.post("/v1/batch", json={"batch": events[start : start + 500]})
            assert response.status_code == 200, response.text
    live.wait_processed()


def population(live: LiveAccord) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """300 people, 60 of them typed twice; returns the people and the anonymous ids of each duplicate pair."""
    with live.api() as api:
        assert api.put("/api/v1/identity/rules", json=RULES).status_code == 200
    rng = random.Random(3)
    crowd = people(300)
    records = [(f"p{i}", person) for i, person in enumerate(crowd)]
    pairs = []
    for i in range(60):
        records.append((f"d{i}", duplicate(crowd[i], rng)))
        pairs.append((f"p{i}", f"d{i}"))
    send(live, records)
    return crowd, pairs


def train(live: LiveAccord) -> linkage.TrainResult:
    with live.rt.db.unit_of_work() as session:
        return linkage.train_model(session, actor="test", now=utcnow())


def profile_id(live: LiveAccord, anon: str) -> str:
    with live.api() as api:
        return str(api.get(f"/api/v1/profiles/anonymous_id:{anon}").json()["id"])


def test_match_finds_the_person_best_first(live: LiveAccord) -> None:
    crowd, _ = population(live)
    done = train(live)
    assert done.version == 1
    assert done.profiles == 360
    with live.api() as api:
        model = api.get("/api/v1/identity/model").json()
        assert model["version"] == 1
        assert [f["name"] for f in model["fields"]][:3] == ["first_name", "last_name", "birthday"]
        for i in (100, 150, 299):  # typed again by an agent, with a typo
            person = duplicate(crowd[i], random.Random(i))
            response = api.post("/api/v1/identity/match", json={"traits": person})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model_version"] == 1
            best = body["candidates"][0]
            assert best["profile_id"] == profile_id(live, f"p{i}")
            assert best["probability"] > 0.99
            assert best["decision"] in {"merge", "review"}
            weights = [c["match_weight"] for c in body["candidates"]]
            assert weights == sorted(weights, reverse=True)
            audit = api.get("/api/v1/audit", params={"action": "identity.match", "limit": 1}).json()["records"][0]
            assert audit["details"]["candidates"] == [c["profile_id"] for c in body["candidates"]]
        # Someone nobody has seen: no candidate is likely.
        stranger = people(1, seed=999)[0]
        body = api.post("/api/v1/identity/match", json={"traits": stranger, "min_probability": 0.5}).json()
        assert body["candidates"] == []


def test_the_worker_keeps_the_index_without_retraining(live: LiveAccord) -> None:
    population(live)
    train(live)
    newcomer = people(1, seed=4242)[0]
    send(live, [("new-1", newcomer)])
    with live.api() as api:
        body = api.post("/api/v1/identity/match", json={"traits": newcomer}).json()
        assert body["candidates"][0]["profile_id"] == profile_id(live, "new-1")
        # A trait change moves the profile's keys: found under its new name, not under its old one.
        renamed = {**newcomer, "lastName": "Zebedee-Quist"}
        send(live, [("new-1", {"lastName": "Zebedee-Quist"})])
        found = api.post("/api/v1/identity/match", json={"traits": renamed}).json()["candidates"]
        assert found[0]["profile_id"] == profile_id(live, "new-1")
        assert found[0]["levels"]["last_name"] == "exact"


def test_dedupe_merges_queues_and_records_every_decision(live: LiveAccord) -> None:
    _, pairs = population(live)
    train(live)
    done = linkage.dedupe(live.rt.db, actor="test", now=utcnow())
    assert done.merged + done.queued >= 55
    assert done.blocked == 0
    merged_anons = {(a, b) for a, b in pairs if profile_id(live, a) == profile_id(live, b)}
    assert len(merged_anons) == done.merged
    with live.api() as api:
        # Every automatic merge is in the person's history, through the link event, and is a review row.
        a, _b = next(iter(merged_anons))
        history = api.get(f"/api/v1/profiles/anonymous_id:{a}/merges").json()["data"]
        merge = next(h for h in history if h["kind"] == "merge")
        assert merge["source_id"] == linkage.MATCH_SOURCE
        assert merge["message_id"].startswith("match-")
        assert merge["actor"] == "test"
        merged_rows = api.get("/api/v1/identity/reviews", params={"status": "merged", "limit": 500}).json()["data"]
        assert len(merged_rows) == done.merged
        assert {r["message_id"] for r in merged_rows} >= {merge["message_id"]}
        events = api.get(f"/api/v1/profiles/anonymous_id:{a}/events").json()["data"]
        assert any(e.get("event") == linkage.MATCH_EVENT for e in events)
        # A second run finds the same pairs known and decides nothing twice.
        again = linkage.dedupe(live.rt.db, actor="test", now=utcnow())
        assert again.merged == 0
        assert again.queued == 0


def test_review_queue_accept_reject_and_unmerge(live: LiveAccord) -> None:
    population(live)
    with live.api() as api:
        strict = {**RULES, "match": {"auto_merge_above": 1.0, "review_above": 0.5}}  # nothing merges by itself
        assert api.put("/api/v1/identity/rules", json=strict).status_code == 200
        train(live)
        done = linkage.dedupe(live.rt.db, actor="test", now=utcnow())
        assert done.merged == 0
        assert done.queued >= 55
        queue = api.get("/api/v1/identity/reviews").json()["data"]
        assert len(queue) == min(done.queued, 100)
        first, second = queue[0], queue[1]
        assert first["status"] == "pending"
        assert set(first["levels"]) >= {"first_name", "last_name", "birthday"}

        accepted = api.post(f"/api/v1/identity/reviews/{first['id']}/accept", json={"reason": "same DOB and address"})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["status"] == "accepted"
        assert accepted.json()["reason"] == "same DOB and address"
        assert accepted.json()["actor"].startswith("token:")
        left = api.get(f"/api/v1/profiles/{first['left_id']}").json()
        right = api.get(f"/api/v1/profiles/{first['right_id']}").json()
        assert left["id"] == right["id"]

        again = api.post(f"/api/v1/identity/reviews/{first['id']}/accept", json={"reason": "twice"})
        assert (again.status_code, again.json()["code"]) == (409, "already_decided")

        rejected = api.post(f"/api/v1/identity/reviews/{second['id']}/reject", json={"reason": "twins"})
        assert rejected.status_code == 200
        assert rejected.json()["status"] == "rejected"
        # Both decisions are in the audit trail, with the token that made them; the free-text reason is not.
        for action, review in (("accept", first), ("reject", second)):
            records = api.get("/api/v1/audit", params={"action": f"identity.review.{action}"}).json()["records"]
            assert [r["target_id"] for r in records] == [str(review["id"])]
            assert records[0]["actor_type"] == "token"
            assert "reason" not in records[0]["details"]
        matched = api.post("/api/v1/identity/match", json={"traits": {"firstName": "Nobody", "lastName": "Atall"}})
        assert matched.json()["candidates"] == []
        assert api.get(f"/api/v1/profiles/{second['left_id']}").json()["id"] != second["right_id"]

        # The accepted merge is an ordinary merge: unmerge splits it, and a later dedupe does not redo it.
        history = api.get(f"/api/v1/profiles/{left['id']}/merges").json()["data"]
        merge = next(h for h in history if h["kind"] == "merge" and h["source_id"] == linkage.MATCH_SOURCE)
        split = api.post(f"/api/v1/profiles/{left['id']}/unmerge", json={"merge_id": merge["id"]})
        assert split.status_code == 200, split.text
        assert len(split.json()["profiles"]) == 2
        linkage.dedupe(live.rt.db, actor="test", now=utcnow())
        assert (
            api.get(f"/api/v1/profiles/{first['left_id']}").json()["id"]
            != api.get(f"/api/v1/profiles/{first['right_id']}").json()["id"]
        )


def test_accept_is_refused_when_a_limit_keeps_the_pair_apart(live: LiveAccord) -> None:
    person = people(1, seed=5)[0]
    with live.api() as api:
        assert api.put("/api/v1/identity/rules", json=RULES).status_code == 200
        events = [
            {"type": "identify", "userId": "u-1", "traits": person},
            {"type": "identify", "userId": "u-2", "traits": duplicate(person, random.Random(1))},
        ]
        with live.client(auth=(live.write_key, "")) as client:
            assert client.post("/v1/batch", json={"batch": events}).status_code == 200
        crowd = [(f"p{i}", p) for i, p in enumerate(people(40, seed=11))]
        crowd += [(f"d{i}", duplicate(p, random.Random(i))) for i, (_, p) in enumerate(crowd[:15])]
        send(live, crowd)
        strict = {**RULES, "match": {"auto_merge_above": 1.0, "review_above": 0.5}}
        assert api.put("/api/v1/identity/rules", json=strict).status_code == 200
        train(live)
        linkage.dedupe(live.rt.db, actor="test", now=utcnow())
        one, two = (api.get(f"/api/v1/profiles/user_id:{u}").json()["id"] for u in ("u-1", "u-2"))
        queue = api.get("/api/v1/identity/reviews", params={"limit": 500}).json()["data"]
        review = next(r for r in queue if {r["left_id"], r["right_id"]} == {one, two})
        refused = api.post(f"/api/v1/identity/reviews/{review['id']}/accept", json={"reason": "looks alike"})
        assert (refused.status_code, refused.json()["code"]) == (409, "merge_blocked")
        assert api.get("/api/v1/identity/reviews", params={"limit": 500}).json()["data"][0]["status"] == "pending"
        assert api.get("/api/v1/profiles/user_id:u-2").json()["id"] == two


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "invalid_request"),
        ({"traits": "Ann"}, 422, "invalid_request"),
        ({"traits": ["Ann"]}, 422, "invalid_request"),
        ({"traits": {}, "limit": 0}, 422, "invalid_request"),
        ({"traits": {}, "limit": 101}, 422, "invalid_request"),
        ({"traits": {}, "min_probability": 2}, 422, "invalid_request"),
        ({"traits": {"firstName": {"$gt": ""}}}, 409, "no_model"),
        ({"traits": {"firstName": "x" * 100_000}}, 409, "no_model"),
    ],
)
def test_match_refuses_bad_requests(live: LiveAccord, body: dict[str, Any], status: int, code: str) -> None:
    with live.api() as api:
        response = api.post("/api/v1/identity/match", json=body)
        assert (response.status_code, response.json()["code"]) == (status, code)


def test_match_survives_hostile_traits(live: LiveAccord) -> None:
    population(live)
    train(live)
    hostile: list[dict[str, Any]] = [
        {},
        {"firstName": None, "birthday": "9999-99-99"},
        {"firstName": {"$gt": ""}, "lastName": ["a", "b"], "address": "not an object"},
        {"firstName": "\x00", "lastName": "'; DROP TABLE profiles; --"},
        {"firstName": "a" * 100_000, "lastName": "é" * 1000, "birthday": 1e308},
        {"address": {"postalCode": {"nested": {"deeper": [1, 2, 3]}}}},
    ]
    with live.api() as api:
        for traits in hostile:
            response = api.post("/api/v1/identity/match", json={"traits": traits})
            assert response.status_code == 200, (traits, response.text)
            assert all(0 <= c["probability"] <= 1 for c in response.json()["candidates"])
        assert api.get("/api/v1/profiles/anonymous_id:p1").status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/v1/identity/reviews/999/accept", {"reason": "x"}, 404, "review_not_found"),
        ("/api/v1/identity/reviews/999/reject", {"reason": "x"}, 404, "review_not_found"),
        ("/api/v1/identity/reviews/1/accept", {"reason": ""}, 422, "invalid_request"),
        ("/api/v1/identity/reviews/1/accept", {}, 422, "invalid_request"),
        ("/api/v1/identity/reviews/1/reject", {"reason": "x" * 501}, 422, "invalid_request"),
        ("/api/v1/identity/reviews/0/reject", {"reason": "x"}, 422, "invalid_request"),
        ("/api/v1/identity/reviews/abc/reject", {"reason": "x"}, 422, "invalid_request"),
        ("/api/v1/identity/reviews/99999999999999999999/reject", {"reason": "x"}, 422, "invalid_request"),
    ],
)
def test_review_decisions_refuse_bad_requests(
    live: LiveAccord, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    with live.api() as api:
        response = api.post(path, json=body)
        assert (response.status_code, response.json()["code"]) == (status, code)
        bad_status = api.get("/api/v1/identity/reviews", params={"status": "nope"})
        assert bad_status.status_code == 422
        assert api.get("/api/v1/identity/model").json()["code"] == "no_model"


def test_training_needs_profiles(live: LiveAccord) -> None:
    with pytest.raises(TrainingError, match="at least 10 profiles"), live.rt.db.unit_of_work() as session:
        linkage.train_model(session, actor="test", now=utcnow())
    with pytest.raises(linkage.LinkageError, match="no matching model"):
        linkage.dedupe(live.rt.db, actor="test", now=utcnow())


def test_cli_train_and_dedupe(live: LiveAccord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = live.rt.settings
    monkeypatch.setenv("ACCORD_DATA_DIR", str(settings.data_dir))
    if settings.database_url:
        monkeypatch.setenv("ACCORD_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    refused = runner.invoke(cli_app, ["identity", "dedupe"])
    assert refused.exit_code == 1
    assert "no matching model" in refused.output
    refused = runner.invoke(cli_app, ["identity", "train"])
    assert refused.exit_code == 1
    assert "at least 10 profiles" in refused.output
    population(live)
    trained = runner.invoke(cli_app, ["identity", "train", "--json"])
    assert trained.exit_code == 0, trained.output
    body = json.loads(trained.output)
    assert body["version"] == 1
    assert body["profiles"] == 360
    with live.rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(MatchKey)) == body["index_keys"]
    deduped = runner.invoke(cli_app, ["identity", "dedupe", "--json"])
    assert deduped.exit_code == 0, deduped.output
    summary = json.loads(deduped.output)
    assert summary["model_version"] == 1
    assert summary["merged"] + summary["queued"] >= 55
    with live.api() as api:
        actions = [r["action"] for r in api.get("/api/v1/audit", params={"action": "identity."}).json()["records"]]
        assert actions[:2] == ["identity.dedupe", "identity.model.train"]


def test_concurrent_accepts_of_one_person_all_merge(live: LiveAccord) -> None:
    """Four records of one person queued as pairs, accepted at once by several reviewers: one profile."""
    from concurrent.futures import ThreadPoolExecutor

    crowd, _ = population(live)  # p0 and d0 are one person
    rng = random.Random(8)
    send(live, [("x1", duplicate(crowd[0], rng)), ("x2", duplicate(crowd[0], rng))])
    with live.api() as api:
        strict = {**RULES, "match": {"auto_merge_above": 1.0, "review_above": 0.5}}
        assert api.put("/api/v1/identity/rules", json=strict).status_code == 200
    train(live)
    linkage.dedupe(live.rt.db, actor="test", now=utcnow())
    anons = ("p0", "d0", "x1", "x2")
    ids = {profile_id(live, anon) for anon in anons}
    with live.api() as api:
        queue = api.get("/api/v1/identity/reviews", params={"limit": 500}).json()["data"]
        ours = [r for r in queue if {r["left_id"], r["right_id"]} <= ids]
        assert len(ours) >= 3

        def accept(review: dict[str, Any]) -> tuple[int, str]:
            with live.api() as client:
                answer = client.post(f"/api/v1/identity/reviews/{review['id']}/accept", json={"reason": "same"})
                return answer.status_code, answer.text

        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(accept, ours))
        assert [status for status, _ in statuses] == [200] * len(ours), statuses
    assert len({profile_id(live, anon) for anon in anons}) == 1


def _unkeyed(text: str) -> str:
    """The blocking keys before they were keyed: anyone could make them from a guessed name."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _stored_keys(live: LiveAccord) -> set[tuple[str, str]]:
    with live.rt.db.read() as session:
        return {(k, p) for k, p in session.execute(select(MatchKey.key, MatchKey.profile_id))}


def test_the_index_holds_keyed_hashes_and_the_migration_rebuilds_it(live: LiveAccord) -> None:
    crowd, _ = population(live)
    train(live)
    stored = _stored_keys(live)
    keyring = live.rt.db.keyring
    assert keyring is not None
    with live.rt.db.read() as session:
        model = match_index.current_model(session)
        assert model is not None
        record = prepare(crowd[0], model.settings)
        keyed = set(blocking_keys(record, model.settings, keyring.match_key))
    unkeyed = set(
        blocking_keys(record, model.settings, lambda t: hashlib.blake2b(t.encode(), digest_size=16).hexdigest())
    )
    assert keyed <= {k for k, _ in stored}
    assert not unkeyed & {k for k, _ in stored}  # hashing a guessed name finds nothing
    # The migration that made the index keyed rebuilds it from the profiles: the same keys, the same matches.
    config = migrate._config()
    with live.rt.db.engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["keyring"] = keyring
        command.downgrade(config, "0021")
    assert _stored_keys(live) == set()
    migrate.upgrade(live.rt.db)
    assert _stored_keys(live) == stored
    with live.api() as api:
        body = api.post("/api/v1/identity/match", json={"traits": duplicate(crowd[100], random.Random(100))}).json()
        assert body["candidates"][0]["profile_id"] == profile_id(live, "p100")
