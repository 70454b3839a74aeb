"""`Commits`: what wakes the live streams when the pipeline commits, from any thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pydantic import ValidationError

from accord.config import Settings
from accord.pipeline.commits import Commits

FOREVER = 600.0  # a wait that only a notify can end within the test's time


def test_a_notify_from_another_thread_wakes_a_waiter() -> None:
    commits = Commits()

    async def main() -> int:
        seen = commits.count
        threading.Timer(0.05, commits.notify).start()
        await asyncio.wait_for(commits.wait(seen, FOREVER), timeout=30)
        return commits.count

    assert asyncio.run(main()) == 1


def test_a_commit_between_reading_the_count_and_waiting_is_not_waited_out() -> None:
    commits = Commits()

    async def main() -> None:
        seen = commits.count
        commits.notify()  # the poll ran meanwhile: the commit must not be missed
        await asyncio.wait_for(commits.wait(seen, FOREVER), timeout=30)

    asyncio.run(main())


def test_without_a_commit_the_wait_ends_at_its_timeout_and_leaves_no_waiter() -> None:
    commits = Commits()

    async def main() -> None:
        await commits.wait(commits.count, 0.01)

    asyncio.run(main())
    assert commits._waiters == []
    commits.notify()
    assert commits.count == 1


def test_one_notify_wakes_every_waiter_on_every_loop_and_a_closed_loop_is_skipped() -> None:
    commits = Commits()
    woken = threading.Barrier(3, timeout=30)

    def wait_in_own_loop() -> None:
        async def main() -> None:
            await commits.wait(0, FOREVER)

        asyncio.run(main())
        woken.wait()

    threads = [threading.Thread(target=wait_in_own_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    while True:  # both are waiting
        with commits._lock:
            if len(commits._waiters) == 2:
                break
        time.sleep(0.01)
    abandoned = asyncio.new_event_loop()
    commits._waiters.append((abandoned, abandoned.create_future()))
    abandoned.close()
    commits.notify()
    woken.wait()
    for thread in threads:
        thread.join(timeout=30)
    assert commits.count == 1


def test_next_poll_waits_for_a_commit_then_keeps_the_minimum_gap() -> None:
    commits = Commits()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen, polled = commits.count, time.monotonic()
        loop.call_later(0.01, commits.notify)
        await asyncio.wait_for(commits.next_poll(seen, polled, every=FOREVER, min_gap=0.05), timeout=30)

    asyncio.run(main())
    assert commits.count == 1


@pytest.mark.parametrize("seconds", [0, -1, 61, "soon"])
def test_the_streams_poll_setting_refuses_what_it_cannot_use(seconds: object) -> None:
    with pytest.raises(ValidationError, match="stream_poll_seconds"):
        Settings(stream_poll_seconds=seconds)
