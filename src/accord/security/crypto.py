"""Field encryption (AES-GCM under per-profile data keys) and blind indexes (HMAC-SHA256 under a key kept
outside the database). Primitives from `cryptography`; nothing here is home-made but the encoding.

A ciphertext reads `e1.<data key id>.<base64url(nonce | ciphertext | tag)>`: it names its key, so rows can
move between profiles (merges) without re-encryption. The associated data binds it to its table, field
and row: copied elsewhere, it does not decrypt."""

from __future__ import annotations

import base64
import hmac
import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from accord.security import nonces
from accord.security.keys import FileKeyProvider, KeyProvider, MemoryKeyProvider, load_blind_index_key

if TYPE_CHECKING:
    from accord.config import Settings

PREFIX = "e1."
BINARY_PREFIX = b"e1."
BLIND_PREFIX = "bi:"
NONCE_BYTES = 12
CACHE_SIZE = 50_000


class Undecryptable(ValueError):
    """A ciphertext whose data key is gone (crypto-shredded) or that does not belong where it was read."""


def aad(table: str, field: str, row: str) -> bytes:
    """The associated data that binds a ciphertext to where it is stored."""
    return f"{table}\0{field}\0{row}".encode()


def is_ciphertext(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id_of(token: str) -> str:
    if not token.startswith(PREFIX):
        raise Undecryptable("not a ciphertext")
    key_id, dot, _ = token[len(PREFIX) :].partition(".")
    if not dot or not key_id:
        raise Undecryptable("not a ciphertext")
    return key_id


def seal(cipher: AESGCM, key_id: str, plaintext: bytes, associated: bytes) -> str:
    nonce = nonces.nonce(NONCE_BYTES)
    body = nonce + cipher.encrypt(nonce, plaintext, associated)
    return f"{PREFIX}{key_id}.{base64.urlsafe_b64encode(body).decode().rstrip('=')}"


def open_sealed(cipher: AESGCM, token: str, associated: bytes) -> bytes:
    encoded = token.rpartition(".")[2]
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise Undecryptable("a ciphertext does not open here (altered, moved, or under another key)") from None


def seal_bytes(cipher: AESGCM, key_id: str, plaintext: bytes, associated: bytes) -> bytes:
    """The binary form, for byte columns (the event log): `e1.<key id>.` then nonce | ciphertext | tag."""
    nonce = nonces.nonce(NONCE_BYTES)
    return b"%s%s.%s%s" % (BINARY_PREFIX, key_id.encode(), nonce, cipher.encrypt(nonce, plaintext, associated))


def binary_key_id(blob: bytes) -> str:
    """The data key id a binary ciphertext names; Undecryptable when it is not one."""
    end = blob.find(b".", len(BINARY_PREFIX)) if blob.startswith(BINARY_PREFIX) else -1
    if end <= len(BINARY_PREFIX) or len(blob) < end + 1 + NONCE_BYTES + 16:
        raise Undecryptable("not a ciphertext (a clear or truncated value)")
    return blob[len(BINARY_PREFIX) : end].decode("ascii", errors="replace")


def open_bytes(cipher: AESGCM, blob: bytes, associated: bytes) -> bytes:
    body = blob[blob.index(b".", len(BINARY_PREFIX)) + 1 :]
    try:
        return cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise Undecryptable("a ciphertext does not open here (altered, moved, or under another key)") from None


def is_blind(value: str) -> bool:
    """A blind index, as opposed to a normalised email (which has an @) or phone (which starts with +)."""
    return value.startswith(BLIND_PREFIX) and "@" not in value


class Keyring:
    """What a process holds to encrypt and find personal data: the KEK provider, the blind-index key, and
    a bounded cache of unwrapped data keys. The cache is keyed by the wrapped form read from the database
    in the same transaction, so a key deleted (shredded) there is never used again."""

    def __init__(self, provider: KeyProvider, blind_key: bytes) -> None:
        self.provider = provider
        self._blind_key = blind_key
        self._ciphers: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()
        self._blinded: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        return cls(FileKeyProvider(settings.kek_path()), load_blind_index_key(settings.blind_index_key_path()))

    @classmethod
    def in_memory(cls) -> Keyring:
        return cls(MemoryKeyProvider(), os.urandom(32))

    def blind(self, kind: str, value: str) -> str:
        """The blind index of an identifier: HMAC-SHA256 over its type and normalised value. Remembered
        (a person's identifiers recur in event after event): a dict lookup instead of an HMAC."""
        found = self._blinded.get((kind, value))
        if found is None:
            digest = hmac.digest(self._blind_key, f"{kind}\0{value}".encode(), "sha256")
            found = BLIND_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")
            if len(self._blinded) >= CACHE_SIZE:
                self._blinded.clear()
            self._blinded[(kind, value)] = found
        return found

    def match_key(self, material: str) -> str:
        """A blocking key of probabilistic matching: HMAC-SHA256 under the blind-index key (in a domain of
        its own), cut to 128 bits as hex. Without the key, nobody can tell which names a key stands for."""
        return hmac.digest(self._blind_key, b"match-key\0" + material.encode(), "sha256")[:16].hex()

    def new_data_key(self, key_id: str) -> tuple[AESGCM, str, bytes]:
        """A fresh data key: its cipher, and its wrapped form with the KEK id, to store."""
        data_key = AESGCM.generate_key(256)
        kek_id, wrapped = self.provider.wrap(data_key, context=key_id.encode())
        cipher = AESGCM(data_key)
        self._remember((key_id, wrapped), cipher)
        return cipher, kek_id, wrapped

    def cipher(self, key_id: str, kek_id: str, wrapped: bytes) -> AESGCM:
        cached = self._ciphers.get((key_id, wrapped))
        if cached is not None:
            return cached
        cipher = AESGCM(self.provider.unwrap(kek_id, wrapped, context=key_id.encode()))
        self._remember((key_id, wrapped), cipher)
        return cipher

    def _remember(self, key: tuple[str, bytes], cipher: AESGCM) -> None:
        with self._lock:
            self._ciphers[key] = cipher
            if len(self._ciphers) > CACHE_SIZE:
                self._ciphers.popitem(last=False)
