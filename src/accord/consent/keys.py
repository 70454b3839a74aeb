"""The consent signing key: Ed25519 for receipts, checkpoints and preference links (JWS), and an HMAC key
derived from it that authenticates each ledger record. Kept in a file outside the database."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

# The fully-specified name (RFC 9864); "EdDSA" is deprecated by it.
ALGORITHM = "Ed25519"


class KeyFileError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class MacKey:
    """The HMAC-SHA256 key the hash chains authenticate their records with; plain bytes, so a verifying
    process can be handed it."""

    secret: bytes = field(repr=False)
    # Keyed once: each MAC copies it rather than setting the key up again, which costs verification (an
    # HMAC per record) about 1 us of its 14-17 us per record.
    _keyed: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keyed", hmac.new(self.secret, digestmod="sha256"))

    def __reduce__(self) -> tuple[type[MacKey], tuple[bytes]]:
        return (MacKey, (self.secret,))  # handed to another process as the secret alone

    def mac(self, message: str) -> str:
        keyed = self._keyed.copy()
        keyed.update(message.encode())
        return str(keyed.hexdigest())

    def mac_ok(self, message: str, mac: str) -> bool:
        return hmac.compare_digest(self.mac(message), mac)


class SigningKey:
    def __init__(self, key: OKPKey) -> None:
        if key.as_dict(private=False).get("crv") != "Ed25519":
            raise KeyFileError("the consent signing key must be an Ed25519 key")
        self.key = key
        self.kid = key.thumbprint()
        private = key.as_bytes(private=True, encoding="DER")
        self.mac_key = MacKey(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"accord consent ledger mac").derive(private)
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(OKPKey.generate_key("Ed25519"))

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """The key in `path`; a new one written there (mode 0600) when there is none. Safe when several
        processes start at once: the first file to land wins and the others read it."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = OKPKey.generate_key("Ed25519").as_pem(private=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
            finally:
                temporary.unlink()
        try:
            return cls(OKPKey.import_key(path.read_bytes()))
        except (ValueError, TypeError, JoseError) as error:
            raise KeyFileError(f"{path} does not hold an Ed25519 private key in PEM: {type(error).__name__}") from None

    def sign(self, payload: dict[str, Any], *, typ: str) -> str:
        header = {"alg": ALGORITHM, "kid": self.kid, "typ": typ}
        return jws.serialize_compact(header, orjson.dumps(payload), self.key, algorithms=[ALGORITHM])

    def verify(self, token: str, *, typ: str) -> dict[str, Any] | None:
        """The payload of a JWS this key signed with header `typ`; None for anything else."""
        try:
            result = jws.deserialize_compact(token, self.key, algorithms=[ALGORITHM])
        except (JoseError, ValueError, TypeError):
            return None
        if result.headers().get("typ") != typ:
            return None
        try:
            payload = orjson.loads(result.payload)
        except orjson.JSONDecodeError:
            return None
        return payload if isinstance(payload, dict) else None

    def mac(self, message: str) -> str:
        return self.mac_key.mac(message)

    def mac_ok(self, message: str, mac: str) -> bool:
        return self.mac_key.mac_ok(message, mac)

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}
