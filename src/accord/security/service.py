"""API tokens and roles.

A token reads `acc_<id>.<secret>`: the id finds its row, and the whole token is checked against an
argon2 hash. Argon2 is slow on purpose, so each process remembers the tokens it has verified (by
SHA-256, never the token itself); expiry and revocation are still read from the row on every request,
so they take effect at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.security.models import ApiToken

ROLES = ("admin", "analyst", "agent", "auditor")
# The roles that may read personal data: those the role matrix lets read profiles (docs/security.md).
PII_ROLES = frozenset({"admin", "analyst", "agent"})


def has_pii_access(role: str) -> bool:
    return role in PII_ROLES


PREFIX = "acc_"
_hasher = PasswordHasher()
_verified: dict[str, bytes] = {}  # token id -> SHA-256 of the token that passed argon2
_verified_lock = threading.Lock()
MAX_VERIFIED = 10_000


class TokenNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CreatedToken:
    id: str
    role: str
    token: str  # shown once; only its hash is stored
    expires_at: datetime | None


def create_token(
    session: Session, *, role: str, description: str = "", expires_in: timedelta | None = None
) -> CreatedToken:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    token_id = "tok_" + uuid.uuid4().hex[:16]
    token = f"{PREFIX}{token_id}.{secrets.token_urlsafe(32)}"
    expires_at = utcnow() + expires_in if expires_in else None
    row = ApiToken(
        id=token_id,
        role=role,
        token_hash=_hasher.hash(token),
        description=description,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return CreatedToken(id=row.id, role=role, token=token, expires_at=expires_at)


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The live token row for a presented bearer token, or None if unknown, wrong, expired or revoked."""
    token_id, dot, _ = token.removeprefix(PREFIX).partition(".")
    if not token.startswith(PREFIX) or not dot or len(token) > 200:
        return None
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return row if _verify(row, token) else None


def _verify(row: ApiToken, token: str) -> bool:
    digest = hashlib.sha256(token.encode()).digest()
    known = _verified.get(row.id)
    if known is not None and hmac.compare_digest(known, digest):
        return True
    try:
        _hasher.verify(row.token_hash, token)
    except (VerificationError, InvalidHashError):
        return False
    with _verified_lock:
        if len(_verified) >= MAX_VERIFIED:
            _verified.clear()
        _verified[row.id] = digest
    return True


def list_tokens(session: Session) -> Sequence[ApiToken]:
    """Every token, newest first (their hashes stay in the database; callers show ids and roles)."""
    return session.scalars(select(ApiToken).order_by(ApiToken.created_at.desc())).all()


def revoke_token(session: Session, *, token_id: str) -> None:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise TokenNotFound(f"no token with id {token_id!r}")
    row.revoked_at = utcnow()
