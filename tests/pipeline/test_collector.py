"""The worker pauses Python's cyclic collector for the length of a run, and only then: it runs again once
the last thread inside a pause leaves, and stays off if it was off before."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from accord.pipeline.worker import collector_paused


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_waits_inside_and_runs_again_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_it_runs_again_only_once_the_last_thread_leaves() -> None:
    first_inside, first_may_leave, first_left = (threading.Event() for _ in range(3))

    def first() -> None:
        with collector_paused():
            first_inside.set()
            first_may_leave.wait(10)
        first_left.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert first_inside.wait(10)
    with collector_paused():
        first_may_leave.set()
        assert first_left.wait(10)
        assert not gc.isenabled()  # the first thread left; this one is still inside
    thread.join(10)
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_cycles_made_inside_are_collected_after() -> None:
    class Node:
        pass

    with collector_paused():
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        alive = weakref.ref(node)
        del node
        assert alive() is not None  # a cycle: reference counting cannot free it
    gc.collect()
    assert alive() is None
