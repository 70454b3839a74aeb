"""Server-sent events over a live Accord (SQLite and PostgreSQL): a profile's stream and the change
stream deliver segment entries and exits and timeline events as they commit, resume after an id, and
answer each credential as docs/security.md says."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from accord.db import migrate
from accord.runtime import Runtime
from accord.security.service import ROLES, create_token
from conftest import LiveAccord, make_settings, running_accord
from segments.test_segments_api import GOLD, create, ready, track


def messages(response: httpx.Response) -> Iterator[tuple[str | None, str, dict[str, Any]]]:
    """(id, event, data) of each message of an SSE response."""
    event_id, kind, data = None, "message", b""
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:].encode()
        elif line == "" and data:
            yield event_id, kind, orjson.loads(data)
            event_id, kind, data = None, "message", b""


def collect(
    api: httpx.Client, url: str, want: int, *, headers: dict[str, str] | None = None, during: Any = None
) -> list[Any]:
    found: list[Any] = []
    with api.stream("GET", url, headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        if during is not None:
            threading.Timer(0.3, during).start()
        deadline = time.monotonic() + 20
        for message in messages(response):
            found.append(message)
            if len(found) >= want or time.monotonic() > deadline:
                break
    return found


def test_the_profile_stream_sends_events_and_segment_changes(live: LiveAccord) -> None:
    with live.api() as api:
        assert create(api, "gold", GOLD).status_code == 201
        ready(api, "gold")
        track(live, [{"type": "identify", "userId": "sam", "traits": {"plan": "gold"}}])
        first = collect(api, "/api/v1/profiles/user_id:sam/stream", 2)
        assert {kind for _, kind, _ in first} == {"segment", "event"}
        segment = next(data for _, kind, data in first if kind == "segment")
        assert (segment["segment"], segment["kind"]) == ("gold", "entered")
        last_id = first[-1][0]
        assert last_id is not None

        def downgrade() -> None:
            track(live, [{"type": "identify", "userId": "sam", "traits": {"plan": "free"}}])

        later = collect(api, f"/api/v1/profiles/user_id:sam/stream?after={last_id}", 2, during=downgrade)
        kinds = sorted((kind, data.get("kind") or data.get("type")) for _, kind, data in later)
        assert kinds == [("event", "identify"), ("segment", "exited")]
        resumed = collect(api, "/api/v1/profiles/user_id:sam/stream", 1, headers={"Last-Event-ID": later[0][0]})
        assert resumed == [later[1]]


def test_the_change_stream_filters_by_segment(live: LiveAccord) -> None:
    with live.api() as api:
        assert create(api, "gold", GOLD).status_code == 201
        assert create(api, "everyone", {"trait": "plan", "op": "exists"}).status_code == 201
        ready(api, "gold")
        ready(api, "everyone")
        track(
            live,
            [{"type": "identify", "userId": f"p{i}", "traits": {"plan": p}} for i, p in enumerate(["gold", "free"])],
        )
        everything = collect(api, "/api/v1/stream", 3)
        assert sorted(data["segment"] for _, _, data in everything) == ["everyone", "everyone", "gold"]
        only_gold = collect(api, "/api/v1/stream?segment=gold", 1)
        assert [data["segment"] for _, _, data in only_gold] == ["gold"]
        assert int(only_gold[0][0].split(".")[0]) == only_gold[0][2]["id"]  # ids are T.J


def test_bad_requests(live: LiveAccord) -> None:
    with live.api() as api:
        assert api.get("/api/v1/stream?segment=nope").json()["code"] == "segment_not_found"
        assert api.get("/api/v1/stream?after=x").json()["code"] == "invalid_cursor"
        assert api.get("/api/v1/stream", headers={"Last-Event-ID": "1.2.3"}).json()["code"] == "invalid_cursor"
        assert api.get("/api/v1/stream?after=" + "9" * 30).status_code == 400
        assert api.get("/api/v1/profiles/user_id:nobody/stream").json()["code"] == "profile_not_found"
        assert api.get("/api/v1/profiles/user_id:x/stream?after=-1").status_code in (400, 404)


@pytest.mark.parametrize("credential", ["none", "write key", *ROLES])
def test_each_credential_as_documented(live: LiveAccord, credential: str) -> None:
    track(live, [{"type": "identify", "userId": "sam", "traits": {"plan": "gold"}}])
    headers: dict[str, str] = {}
    auth = (live.write_key, "") if credential == "write key" else None
    if credential in ROLES:
        with live.rt.db.unit_of_work() as session:
            headers["Authorization"] = f"Bearer {create_token(session, role=credential).token}"
    allowed = credential in {"admin", "analyst", "agent"}
    with live.client(headers=headers, auth=auth) as client:
        for url in ("/api/v1/stream", "/api/v1/profiles/user_id:sam/stream"):
            with client.stream("GET", url) as response:
                if allowed:
                    assert response.status_code == 200, url
                else:
                    response.read()
                    expected = 403 if credential in ROLES else 401
                    assert response.status_code == expected, (url, credential)
                    assert response.json()["code"] in {"unauthorized", "forbidden"}


def test_streams_read_when_the_worker_commits_not_only_at_their_poll(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With the poll set to a minute (longer than the wait below), a change still reaches an open stream:
    the in-process worker's commit wakes it (accord.pipeline.commits)."""
    rt = Runtime.create(make_settings(backend, tmp_path, request, stream_poll_seconds=60))
    migrate.upgrade(rt.db)
    try:
        with running_accord(rt) as live, live.api() as api:
            assert create(api, "gold", GOLD).status_code == 201
            ready(api, "gold")

            def upgrade() -> None:
                track(live, [{"type": "identify", "userId": "kim", "traits": {"plan": "gold"}}])

            found = collect(api, "/api/v1/stream?segment=gold", 1, during=upgrade)
            assert [(data["segment"], data["kind"]) for _, _, data in found] == [("gold", "entered")]
    finally:
        rt.close()
