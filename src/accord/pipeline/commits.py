"""Word that the pipeline committed, for the live streams: they wait on it instead of sleeping out their
poll interval, so a segment or stage change reaches an open stream as soon as it commits.

A worker in the API's process (a thread) calls `notify` directly; the child worker of `accord up`
answers through the socket its parent nudges it on (`accord.pipeline.embedded`). Workers on other
machines do not signal: streams then see their changes at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class Commits:
    """A counter of commits that event loops can wait on; `notify` may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def count(self) -> int:
        """Read before polling the database and pass to `wait`, so a commit in between is not waited out."""
        return self._count

    def notify(self) -> None:
        with self._lock:
            self._count += 1
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there any more
                loop.call_soon_threadsafe(_settle, future)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return once a commit after `seen` (a `count`) was notified, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (loop, future)
        with self._lock:
            if self._count != seen:
                return
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def next_poll(self, seen: int, polled: float, *, every: float, min_gap: float) -> None:
        """For a poller that read `count` as `seen` and started polling at `polled` (`time.monotonic()`):
        wait for a commit after `seen` or `every` seconds, then until `min_gap` seconds after `polled`, so
        that however often the pipeline commits one poller polls at most 1 / `min_gap` times a second."""
        await self.wait(seen, every)
        gap = polled + min_gap - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
