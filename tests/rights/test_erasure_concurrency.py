"""Erasure while the person's events keep arriving, with a live worker: afterwards nothing of theirs is
stored, and every event sent is accounted for (deleted with them, taken out of the waiting log, or
suppressed and counted), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select, text

from accord.identity.models import Identity
from accord.profiles.models import Profile, ProfileEvent
from accord.rights.models import Tombstone
from conftest import LiveAccord

EMAIL = "racing.person@example.com"


def test_erasure_during_a_stream_of_the_persons_events(live: LiveAccord) -> None:
    sent = 0
    stop = threading.Event()
    failures: list[str] = []

    def stream() -> None:
        nonlocal sent
        with live.client() as client:
            while not stop.is_set():
                batch = [
                    {"type": "identify", "userId": "u-race", "traits": {"email": EMAIL, "n": sent + i}}
                    for i in range(5)
                ]
                answer = client.post("/v1/batch", auth=(live.write_key, ""), json={"batch": batch})
                if answer.status_code != 200:
                    failures.append(answer.text)
                    return
                sent += len(batch)
                time.sleep(0.005)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        with live.api() as api:
            deadline = time.monotonic() + 30
            while api.get("/api/v1/profiles/user_id:u-race").status_code != 200:
                assert time.monotonic() < deadline, "the person never appeared"
                time.sleep(0.02)
            time.sleep(0.3)  # events keep arriving and being processed
            erased = api.delete("/api/v1/profiles/user_id:u-race")
            assert erased.status_code == 200, erased.text
            time.sleep(0.3)  # and keep arriving after the erasure
    finally:
        stop.set()
        sender.join(timeout=30)
    assert failures == []
    live.wait_processed()
    body = erased.json()
    with live.rt.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Profile)) == 0
        assert session.scalar(select(func.count()).select_from(ProfileEvent)) == 0
        assert session.scalar(select(func.count()).select_from(Identity)) == 0
        stone = session.get(Tombstone, body["profile_id"])
        assert stone is not None
        suppressed = stone.suppressed_events
    with live.rt.db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM quarantine")).scalar() == 0
    deleted = body["deleted"]
    # A record a worker had already read when the log was scrubbed is counted twice: taken out, then dropped.
    assert deleted["events"] + deleted["pending_events"] + suppressed >= sent
    assert suppressed > 0
    with live.api() as api:
        assert api.get("/api/v1/profiles/user_id:u-race").status_code == 404
        assert api.get(f"/api/v1/profiles/{body['profile_id']}").status_code == 410
