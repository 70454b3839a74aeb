"""Console users and their sessions: argon2id passwords, lockout after repeated failures, server-side
sessions whose cookie secret is stored only as a SHA-256.

A failed login answers the same whether the email is unknown, the password wrong or the account locked
or disabled, and an unknown email costs an argon2 verification too, so neither the answer nor its time
tells which accounts exist.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from accord.security.models import ConsoleSession, OidcLogin, User
from accord.security.service import ROLES

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes any length; this only bounds the work a request can ask for
MAX_EMAIL = 254
OIDC_LOGIN_LIFETIME = timedelta(minutes=10)  # time a person has at the provider to sign in
# From this many consecutive failures on, each failure locks the account for LOCK_BASE * 2**(n - MAX_FAILURES),
# at most LOCK_MAX: a guesser gets a handful of tries an hour, a person who mistyped waits seconds.
MAX_FAILURES = 5
LOCK_BASE = timedelta(seconds=30)
LOCK_MAX = timedelta(minutes=15)
TOUCH_EVERY = timedelta(seconds=60)  # write last_seen_at at most this often
_EMAIL = re.compile(r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class StartedSession:
    secret: str  # for the cookie; only its hash is stored
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Login:
    """Who a session cookie belongs to."""

    user_id: str
    email: str
    role: str
    session_hash: str
    csrf_token: str
    stale: bool  # last seen long enough ago that the caller should `touch` the session


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _check_email(email: str) -> str:
    email = normalise_email(email)
    if len(email) > MAX_EMAIL or not _EMAIL.match(email):
        raise UserError("invalid_email", "the email address is not valid")
    return email


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError("weak_password", f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError("invalid_password", f"a password has at most {MAX_PASSWORD} characters")
    if "\x00" in password:
        raise UserError("invalid_password", "a password may not contain NUL")


def create_user(session: Session, *, email: str, role: str, password: str, now: datetime) -> User:
    address = _check_email(email)
    if role not in ROLES:
        raise UserError("invalid_role", f"role must be one of {', '.join(ROLES)}, not {role[:40]!r}")
    check_password(password)
    if session.scalar(select(User.id).where(User.email == address)) is not None:
        raise UserError("user_exists", "a user with this email exists already")
    user = User(
        id="usr_" + uuid.uuid4().hex[:16],
        email=address,
        role=role,
        password_hash=_hasher.hash(password),
        created_at=now,
        failed_logins=0,
    )
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.email)).all()


def get_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id) if len(user_id) <= 40 else None


def find_user(session: Session, email: str) -> User | None:
    address = normalise_email(email)
    if len(address) > MAX_EMAIL:
        return None
    return session.scalar(select(User).where(User.email == address))


def _require(session: Session, email: str) -> User:
    user = find_user(session, email)
    if user is None:
        raise UserError("user_not_found", "no user with this email")
    return user


def set_disabled(session: Session, *, email: str, disabled: bool, now: datetime) -> User:
    """Disable (ending every session of the user at once) or enable a user."""
    user = _require(session, email)
    user.disabled_at = now if disabled else None
    if disabled:
        end_sessions(session, user_id=user.id)
    else:
        user.failed_logins, user.locked_until = 0, None
    return user


def set_role(session: Session, *, email: str, role: str) -> User:
    if role not in ROLES:
        raise UserError("invalid_role", f"role must be one of {', '.join(ROLES)}, not {role[:40]!r}")
    user = _require(session, email)
    user.role = role
    return user


def set_password(session: Session, *, email: str, password: str) -> User:
    """A new password; every session of the user ends, and a lock is lifted."""
    check_password(password)
    user = _require(session, email)
    user.password_hash = _hasher.hash(password)
    user.failed_logins, user.locked_until = 0, None
    end_sessions(session, user_id=user.id)
    return user


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def authenticate(session: Session, *, email: str, password: str, now: datetime) -> User | None:
    """The user if the email and password match an enabled, unlocked account; None otherwise.

    Every outcome verifies one argon2 hash, so the time taken says nothing about the account."""
    user = find_user(session, email) if len(password) <= MAX_PASSWORD else None
    if user is None:
        _verify(_DUMMY_HASH, password[:MAX_PASSWORD])
        return None
    # A user of single sign-on only has no password hash; the dummy keeps the time the same.
    matches = _verify(user.password_hash or _DUMMY_HASH, password) and bool(user.password_hash)
    if user.disabled_at is not None or (user.locked_until is not None and user.locked_until > now):
        return None  # a lock holds even against the right password: that is what stops a guesser
    if not matches:
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILURES:
            user.locked_until = now + min(LOCK_MAX, LOCK_BASE * 2 ** (user.failed_logins - MAX_FAILURES))
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    return user


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def start_session(
    session: Session, user: User, *, now: datetime, lifetime: timedelta, id_token: str | None = None
) -> StartedSession:
    """A new console session for `user`; `id_token`: the provider's, for a single sign-on (see
    `ConsoleSession.id_token`)."""
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    row = ConsoleSession(
        id_hash=_digest(secret),
        user_id=user.id,
        csrf_token=csrf,
        created_at=now,
        last_seen_at=now,
        expires_at=now + lifetime,
        id_token=id_token,
    )
    session.add(row)
    # Old sessions of anyone go when they have lapsed; a login is a fine moment to sweep.
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    session.flush()
    return StartedSession(secret=secret, csrf_token=csrf, expires_at=row.expires_at)


def session_login(session: Session, secret: str, *, now: datetime, idle: timedelta) -> Login | None:
    """Who holds this cookie secret, if the session is live: not expired, not idle too long, user enabled.
    Reads only; when `stale`, the caller refreshes it with `touch` (so most requests stay reads)."""
    if not secret or len(secret) > 100:
        return None
    row = session.get(ConsoleSession, _digest(secret))
    if row is None or row.expires_at <= now or row.last_seen_at + idle <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        return None
    return Login(
        user_id=user.id,
        email=user.email,
        role=user.role,
        session_hash=row.id_hash,
        csrf_token=row.csrf_token,
        stale=now - row.last_seen_at >= TOUCH_EVERY,
    )


def touch(session: Session, *, session_hash: str, now: datetime) -> None:
    row = session.get(ConsoleSession, session_hash)
    if row is not None:
        row.last_seen_at = now


def end_session(session: Session, secret: str) -> str | None:
    """End the session this cookie secret holds; returns its provider's ID token (a single sign-on session)."""
    if not secret or len(secret) > 100:
        return None
    id_hash = _digest(secret)
    id_token = session.scalar(select(ConsoleSession.id_token).where(ConsoleSession.id_hash == id_hash))
    session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == id_hash))
    return id_token


def end_sessions(session: Session, *, user_id: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))


def begin_oidc_login(
    session: Session,
    *,
    state: str,
    browser_secret: str,
    nonce: str,
    code_verifier: str,
    redirect_url: str,
    next_path: str,
    now: datetime,
) -> None:
    """Remember a single sign-on the browser holding `browser_secret` began (only hashes of the state and
    the browser secret are stored); sign-ins left unfinished are swept."""
    session.execute(delete(OidcLogin).where(OidcLogin.expires_at <= now))
    session.add(
        OidcLogin(
            state_hash=_digest(state),
            browser_hash=_digest(browser_secret),
            nonce=nonce,
            code_verifier=code_verifier,
            redirect_url=redirect_url,
            next_path=next_path,
            created_at=now,
            expires_at=now + OIDC_LOGIN_LIFETIME,
        )
    )
    session.flush()


@dataclass(frozen=True, slots=True)
class OidcLoginTaken:
    """What the callback of a single sign-on needs from its beginning."""

    nonce: str
    code_verifier: str
    redirect_url: str
    next_path: str


def take_oidc_login(session: Session, *, state: str, browser_secret: str, now: datetime) -> OidcLoginTaken | None:
    """The sign-in `state` names, if this browser began it and it has not expired; taken, so a state (and
    the nonce that goes with it) works once. Of two callbacks racing with one state, one gets it."""
    if not state or len(state) > 200 or not browser_secret or len(browser_secret) > 200:
        return None
    taken = session.execute(
        delete(OidcLogin)
        .where(OidcLogin.state_hash == _digest(state))
        .returning(
            OidcLogin.browser_hash,
            OidcLogin.nonce,
            OidcLogin.code_verifier,
            OidcLogin.redirect_url,
            OidcLogin.next_path,
            OidcLogin.expires_at,
        )
    ).one_or_none()
    if taken is None or taken.expires_at <= now:
        return None
    if not secrets.compare_digest(taken.browser_hash, _digest(browser_secret)):
        return None
    return OidcLoginTaken(
        nonce=taken.nonce, code_verifier=taken.code_verifier, redirect_url=taken.redirect_url, next_path=taken.next_path
    )


def oidc_user(session: Session, *, issuer: str, subject: str, email: str | None, role: str, now: datetime) -> User:
    """The user the provider's `issuer` and `sub` belong to, created on their first sign-in; the role is
    the provider's to decide and follows the role map at every sign-in. Never found by email: a password
    user with the same email is not taken over (an administrator links them with `accord user link-oidc`)."""
    if role not in ROLES:
        raise UserError("invalid_role", f"role must be one of {', '.join(ROLES)}")
    user = session.scalar(select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject))
    if user is None:
        if email is None:
            raise UserError(
                "oidc_no_email",
                "the provider sent no email address for you; an administrator should add the email scope",
            )
        address = _check_email(email)
        if session.scalar(select(User.id).where(User.email == address)) is not None:
            raise UserError(
                "oidc_email_taken",
                "an Accord account with your email exists already and is not linked to this provider; "
                "an administrator can link it (accord user link-oidc)",
            )
        user = User(
            id="usr_" + uuid.uuid4().hex[:16],
            email=address,
            role=role,
            password_hash="",  # no password: this user signs in through the provider only
            created_at=now,
            failed_logins=0,
            oidc_issuer=issuer,
            oidc_subject=subject,
        )
        session.add(user)
    if user.disabled_at is not None:
        raise UserError("user_disabled", "your Accord account is disabled; ask an administrator")
    user.role = role
    user.last_login_at = now
    session.flush()
    return user


def link_oidc(session: Session, *, email: str, issuer: str, subject: str) -> User:
    """Make the user with `email` the account of the provider's `issuer` and `sub` (an administrator's act,
    for a user who had a password before single sign-on)."""
    if not 0 < len(subject) <= 255 or not 0 < len(issuer) <= 500:
        raise UserError("invalid_subject", "an issuer of at most 500 and a subject of at most 255 characters")
    user = _require(session, email)
    other = session.scalar(select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject))
    if other is not None and other.id != user.id:
        raise UserError("oidc_linked", "another user is linked to this provider account already")
    user.oidc_issuer, user.oidc_subject = issuer, subject
    return user
