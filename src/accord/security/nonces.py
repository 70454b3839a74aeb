"""Random nonces for AES-GCM (and random ids), read from the kernel's random source 4 KiB at a time.

One `os.urandom(12)` per sealed value was a system call each: 2.3 us on this project's machines, against
0.7 us for the encryption itself, and 78,000 of them in a 50,000-event drain (`bench/segments.py`). A
nonce need not be secret, only never used twice under one key; slices of one read are as random as
separate reads. A forked child drops what its parent had read, so that the two never hand out the same
bytes.
"""

from __future__ import annotations

import os
import threading
import uuid

CHUNK_BYTES = 4096


class _Source:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._at = 0

    def take(self, size: int) -> bytes:
        with self._lock:
            if self._at + size > len(self._buffer):
                self._buffer, self._at = os.urandom(max(CHUNK_BYTES, size)), 0
            start = self._at
            self._at += size
            return self._buffer[start : self._at]

    def forget(self) -> None:
        """In a forked child: nothing read before the fork is handed out (the lock may have been held by a
        thread that does not exist here)."""
        self._lock = threading.Lock()
        self._buffer, self._at = b"", 0


_SOURCE = _Source()
os.register_at_fork(after_in_child=_SOURCE.forget)


def nonce(size: int) -> bytes:
    """`size` random bytes, never handed out before in this process or its parent."""
    return _SOURCE.take(size)


def uuid4() -> uuid.UUID:
    """A random (version 4) UUID from the same source, for ids that must be unique, not secret (a new
    profile's id): `uuid.uuid4` makes a system call for each."""
    return uuid.UUID(bytes=_SOURCE.take(16), version=4)
