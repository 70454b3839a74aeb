"""Key-encryption keys (KEKs) and the blind-index key: the keys that live outside the database.

A `KeyProvider` wraps and unwraps data keys. The local key file is the embedded default; the protocol is
the seam for a KMS or a Vault transit engine (which would do the AES-GCM on its side)."""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from accord.security import nonces

# How often a process looks at the key file for a rotation another process began.
RELOAD_SECONDS = 1.0
NONCE_BYTES = 12


class KeyringError(RuntimeError):
    """A key file that cannot be used, or a wrapped key no known KEK opens."""


class KeyProvider(Protocol):
    def current(self) -> str:
        """The id of the KEK new data keys are wrapped with."""
        ...

    def wrap(self, data_key: bytes, *, context: bytes) -> tuple[str, bytes]:
        """`data_key` encrypted under the current KEK, bound to `context`: (KEK id, wrapped)."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        """The data key; KeyringError when the KEK is unknown or the wrapped key was altered."""
        ...

    def begin_rotation(self) -> str:
        """Make a new KEK current (or keep the one a rotation in progress made) and return its id. Older
        KEKs still unwrap until retired."""
        ...

    def known(self) -> list[str]:
        """The ids of every KEK that still unwraps."""
        ...

    def retire(self, kek_ids: list[str]) -> None:
        """Forget these KEKs (never the current one)."""
        ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_kek_id() -> str:
    return f"kek-{secrets.token_hex(8)}"


class _AesKeks:
    """AES-GCM key wrapping under one of several 256-bit KEKs, by id."""

    def __init__(self, current: str, keys: dict[str, bytes]) -> None:
        self._current = current
        self._keys = keys

    def _wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        kek_id = self._current
        nonce = nonces.nonce(NONCE_BYTES)
        return kek_id, nonce + AESGCM(self._keys[kek_id]).encrypt(nonce, data_key, kek_id.encode() + b"\0" + context)

    def _unwrap(self, kek_id: str, wrapped: bytes, context: bytes) -> bytes:
        key = self._keys.get(kek_id)
        if key is None:
            raise KeyringError(f"no key-encryption key {kek_id[:40]!r} is known")
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], kek_id.encode() + b"\0" + context)
        except InvalidTag:
            raise KeyringError("a wrapped data key does not open under its key-encryption key") from None


class MemoryKeyProvider(_AesKeks):
    """KEKs held in memory: for tests, as a fake of a KMS at the edge."""

    def __init__(self) -> None:
        kek_id = _new_kek_id()
        super().__init__(kek_id, {kek_id: AESGCM.generate_key(256)})
        self._lock = threading.Lock()

    def current(self) -> str:
        return self._current

    def wrap(self, data_key: bytes, *, context: bytes) -> tuple[str, bytes]:
        return self._wrap(data_key, context)

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        return self._unwrap(kek_id, wrapped, context)

    def begin_rotation(self) -> str:
        with self._lock:
            if len(self._keys) == 1:
                kek_id = _new_kek_id()
                self._keys = {**self._keys, kek_id: AESGCM.generate_key(256)}
                self._current = kek_id
            return self._current

    def known(self) -> list[str]:
        return sorted(self._keys)

    def retire(self, kek_ids: list[str]) -> None:
        with self._lock:
            self._keys = {k: v for k, v in self._keys.items() if k not in kek_ids or k == self._current}


class FileKeyProvider(_AesKeks):
    """KEKs in a JSON file (mode 0600): `{"current": id, "keys": {id: base64url key}}`. Created on first
    use; re-read when it changes, so every process follows a rotation another one began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        if not path.exists():
            kek_id = _new_kek_id()
            _write_new(path, {"current": kek_id, "keys": {kek_id: _b64(AESGCM.generate_key(256))}})
        super().__init__("", {})
        self._load()

    def __reduce__(self) -> tuple[type[FileKeyProvider], tuple[Path]]:
        # Handed to another process (the ledger's parallel verification) as its path: that process opens
        # the key file itself, so no KEK crosses the pipe.
        return (FileKeyProvider, (self.path,))

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            document = orjson.loads(self.path.read_bytes())
            keys = {str(k): _unb64(v) for k, v in document["keys"].items()}
            current = str(document["current"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as error:
            raise KeyringError(f"{self.path} is not a key-encryption key file: {type(error).__name__}") from None
        if current not in keys or any(len(k) != 32 for k in keys.values()):
            raise KeyringError(f"{self.path} is not a key-encryption key file: bad keys")
        self._current, self._keys = current, keys
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def _refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                stat = self.path.stat()
            except OSError:
                return
            if force or (stat.st_mtime_ns, stat.st_size) != self._stamp:
                self._load()

    def current(self) -> str:
        self._refresh()
        return self._current

    def wrap(self, data_key: bytes, *, context: bytes) -> tuple[str, bytes]:
        self._refresh()
        return self._wrap(data_key, context)

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: bytes) -> bytes:
        if kek_id not in self._keys:
            self._refresh(force=True)
        return self._unwrap(kek_id, wrapped, context)

    def _save(self, current: str, keys: dict[str, bytes]) -> None:
        document = {"current": current, "keys": {k: _b64(v) for k, v in keys.items()}}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(document))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._refresh(force=True)

    def begin_rotation(self) -> str:
        self._refresh(force=True)
        if len(self._keys) == 1:
            kek_id = _new_kek_id()
            self._save(kek_id, {**self._keys, kek_id: AESGCM.generate_key(256)})
        return self._current

    def known(self) -> list[str]:
        self._refresh(force=True)
        return sorted(self._keys)

    def retire(self, kek_ids: list[str]) -> None:
        self._refresh(force=True)
        keep = {k: v for k, v in self._keys.items() if k not in kek_ids or k == self._current}
        if keep != self._keys:
            self._save(self._current, keep)


def _write_new(path: Path, document: dict[str, object]) -> None:
    """Write a new key file (mode 0600); when several processes start at once the first file wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(document))
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def load_blind_index_key(path: Path) -> bytes:
    """The 256-bit HMAC key of the blind indexes; created (mode 0600) when there is none."""
    if not path.exists():
        _write_new(path, {"blind_index_key": _b64(secrets.token_bytes(32))})
    try:
        key = _unb64(str(orjson.loads(path.read_bytes())["blind_index_key"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise KeyringError(f"{path} is not a blind-index key file: {type(error).__name__}") from None
    if len(key) != 32:
        raise KeyringError(f"{path} is not a blind-index key file: the key must be 32 bytes")
    return key
