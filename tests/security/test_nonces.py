"""Nonces are read from the kernel in chunks: each is handed out once, in any thread, and a forked child
never repeats what its parent hands out next."""

from __future__ import annotations

import os
import threading
import uuid

from accord.security import nonces


def test_nonces_are_never_handed_out_twice_across_threads() -> None:
    found: list[bytes] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [nonces.nonce(12) for _ in range(5_000)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 20_000
    assert all(len(n) == 12 for n in found)
    assert len(set(found)) == 20_000  # 20,000 nonces span many chunks: refills race with takes


def test_a_size_above_the_chunk_is_read_whole() -> None:
    big = nonces.nonce(nonces.CHUNK_BYTES + 1)
    assert len(big) == nonces.CHUNK_BYTES + 1
    assert nonces.nonce(12) not in big


def test_a_forked_child_does_not_repeat_its_parents_next_nonces() -> None:
    nonces.nonce(12)  # the parent holds a chunk it has barely used
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, b"".join(nonces.nonce(12) for _ in range(20)))
        os._exit(0)
    os.close(write)
    theirs = b""
    while chunk := os.read(read, 4096):
        theirs += chunk
    os.close(read)
    os.waitpid(child, 0)
    mine = b"".join(nonces.nonce(12) for _ in range(20))
    assert len(theirs) == len(mine) == 240
    assert {theirs[i : i + 12] for i in range(0, 240, 12)}.isdisjoint({mine[i : i + 12] for i in range(0, 240, 12)})


def test_random_ids_are_version_4_uuids_and_distinct() -> None:
    ids = [nonces.uuid4() for _ in range(10_000)]
    assert {i.version for i in ids} == {4}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert len(set(ids)) == 10_000
