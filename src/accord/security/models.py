from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db.base import Base, UTCDateTime, utcnow


class ApiToken(Base):
    """A bearer token for the REST API. Only its argon2 hash is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class User(Base):
    """A person who logs in to the console with an email and a password (argon2id hash only)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # lower-cased
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Consecutive failed logins; from MAX_FAILURES on, each failure locks the account for longer.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The single sign-on account this user is: the provider's issuer and its `sub` for the person (never the
    # email, which a provider may let people change). Both null for a password-only user.
    oidc_issuer: Mapped[str | None] = mapped_column(String(500), nullable=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (Index("ux_users_oidc", "oidc_issuer", "oidc_subject", unique=True),)


class ConsoleSession(Base):
    """A console login. The cookie holds a random secret; only its SHA-256 is stored, so a copy of the
    database cannot be replayed as a cookie. Server-side, so logout and disabling a user end it at once."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A single sign-on session's ID token from the provider, sent back at logout (`id_token_hint`) so that
    # the provider ends its own session too; null for a password login.
    id_token: Mapped[str | None] = mapped_column(Text, nullable=True)


class DataKey(Base):
    """A data key, wrapped by a key-encryption key (`kek_id`) that is not in the database. Its id is the
    profile it was made for. Deleting the row is crypto-shredding: what it encrypted is unreadable."""

    __tablename__ = "data_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(64), index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rewrapped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OidcLogin(Base):
    """A single sign-on begun and not yet finished: what the callback must find to accept the provider's
    answer. Keyed by the SHA-256 of the `state` sent to the provider and bound to the browser that began it
    (the SHA-256 of a secret in its cookie); taken (deleted) by the first callback, so a state works once."""

    __tablename__ = "oidc_logins"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    browser_hash: Mapped[str] = mapped_column(String(64))
    nonce: Mapped[str] = mapped_column(String(100))
    code_verifier: Mapped[str] = mapped_column(String(128))
    redirect_url: Mapped[str] = mapped_column(String(500))
    next_path: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
