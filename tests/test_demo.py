"""`accord demo`: synthetic multi-device customers, sent to a live Accord and stitched into profiles."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from accord.cli import app
from accord.demo import generate, run_demo
from accord.identity.service import normalise
from accord.ingest import quarantine
from conftest import LiveAccord, free_port

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def profile(live: LiveAccord, ref: str) -> dict[str, Any]:
    with live.api() as api:
        response = api.get(f"/api/v1/profiles/{ref}")
    assert response.status_code == 200, (ref, response.text)
    body: dict[str, Any] = response.json()
    return body


def identities(body: dict[str, Any], kind: str) -> set[str]:
    return {i["value"] for i in body["identities"] if i["type"] == kind}


def test_the_same_seed_gives_the_same_data() -> None:
    first = generate(25, seed=3, now=NOW)
    assert first == generate(25, seed=3, now=NOW)
    assert first != generate(25, seed=4, now=NOW)
    assert len(first) == 25
    events = [e for _, es in first for e in es]
    assert len({e["messageId"] for e in events}) == len(events)
    assert all(NOW - timedelta(days=60) <= datetime.fromisoformat(e["timestamp"]) < NOW for e in events)
    for customer, _ in first:
        assert len({d.anonymous_id for d in customer.devices}) == 2
    assert {c.link for c, _ in first} == {"identify", "alias", "email"}
    assert any(c.orders for c, _ in first)
    assert any(c.group_id for c, _ in first)


def test_demo_customers_are_stitched_across_devices(live: LiveAccord) -> None:
    summary = run_demo(base_url=live.base_url, write_key=live.write_key, customers=30, seed=7, console=quiet())
    live.wait_processed()

    customers = generate(30, seed=7, now=NOW)  # identities and messageIds do not depend on `now`
    sent = sum(len(events) for _, events in customers)
    assert f"Sent {sent:,} events for 30 synthetic customers" in summary
    multi_device = 0
    for customer, events in customers:
        body = profile(live, f"user_id:{customer.user_id}")
        anonymous_ids = {d.anonymous_id for d in customer.devices}
        assert identities(body, "anonymous_id") == anonymous_ids, customer.link
        assert identities(body, "user_id") == {customer.user_id}
        assert identities(body, "email") == {customer.email}
        assert identities(body, "phone") == {normalise("phone", customer.phone)}
        multi_device += len(anonymous_ids) >= 2
        # Every identifier opens the same person, and that person holds exactly this customer's events.
        for ref in (f"email:{customer.email.upper()}", *(f"anonymous_id:{a}" for a in anonymous_ids)):
            assert profile(live, ref)["id"] == body["id"]
        assert sum(body["counts"]["types"].values()) == len(events)
        assert body["traits"]["name"] == customer.name
        assert body["first_seen"] <= body["last_seen"]
    assert multi_device == 30

    refs = [line.strip() for line in summary.splitlines() if line.strip().startswith(("user_id:", "email:", "anon"))]
    assert len(refs) == 3
    assert len({profile(live, ref)["id"] for ref in refs}) == 1
    with live.rt.db.read() as session:
        assert quarantine.count_waiting(session) == 0


def test_sending_the_same_seed_again_stores_nothing_new(live: LiveAccord) -> None:
    run_demo(base_url=live.base_url, write_key=live.write_key, customers=10, seed=11, console=quiet())
    live.wait_processed()
    customers = generate(10, seed=11, now=NOW)
    before = [profile(live, f"user_id:{c.user_id}") for c, _ in customers]

    run_demo(base_url=live.base_url, write_key=live.write_key, customers=10, seed=11, console=quiet())
    live.wait_processed()
    after = [profile(live, f"user_id:{c.user_id}") for c, _ in customers]
    assert [(p["id"], p["counts"], p["traits"]) for p in after] == [(p["id"], p["counts"], p["traits"]) for p in before]


def test_a_refused_request_stops_the_demo_with_the_servers_message(live: LiveAccord) -> None:
    with pytest.raises(RuntimeError, match=r"HTTP 401.*unauthorized: the write key is unknown"):
        run_demo(base_url=live.base_url, write_key="wk_wrong", customers=3, seed=1, console=quiet())


def test_the_demo_command_sends_to_a_running_accord(live: LiveAccord) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--url", live.base_url, "--write-key", live.write_key, "--customers", "5", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "for 5 synthetic customers" in result.output
    live.wait_processed()
    for customer, _ in generate(5, seed=5, now=NOW):
        assert len(identities(profile(live, f"user_id:{customer.user_id}"), "anonymous_id")) == 2


def test_the_demo_command_creates_a_demo_source_without_a_write_key(live: LiveAccord) -> None:
    # The live server's data dir too: without it the command would look for key files in ./.accord.
    env = {"ACCORD_DATABASE_URL": live.rt.settings.sqlalchemy_url(), "ACCORD_DATA_DIR": str(live.rt.settings.data_dir)}
    result = CliRunner(env=env).invoke(app, ["demo", "--url", live.base_url, "--customers", "2"])
    assert result.exit_code == 0, result.output
    live.wait_processed()
    customer = generate(2, seed=42, now=NOW)[0][0]
    assert profile(live, f"email:{customer.email}")["traits"]["name"] == customer.name


def test_the_demo_command_explains_an_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["demo", "--url", url, "--write-key", "wk_any", "--customers", "5"])
    assert result.exit_code != 0
    assert f"cannot reach Accord at {url}" in result.output
    assert "accord up" in result.output
