"""API tokens and roles."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.db.base import utcnow
from accord.security.models import ApiToken

ROLES = ("admin", "analyst", "agent", "auditor")


class TokenNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CreatedToken:
    id: str
    role: str
    token: str  # shown once; only its hash is stored
    expires_at: datetime | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, role: str, description: str = "", expires_in: timedelta | None = None
) -> CreatedToken:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    token = "acc_" + secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in else None
    row = ApiToken(
        id="tok_" + uuid.uuid4().hex[:16],
        role=role,
        token_hash=_hash(token),
        description=description,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return CreatedToken(id=row.id, role=role, token=token, expires_at=expires_at)


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The live token row for a presented bearer token, or None if unknown, expired or revoked."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash(token)))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return row


def revoke_token(session: Session, *, token_id: str) -> None:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise TokenNotFound(f"no token with id {token_id!r}")
    row.revoked_at = utcnow()
