"""Sources and their write keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.sources.models import Source


class SourceExists(Exception):
    pass


class SourceNotFound(Exception):
    pass


@dataclass(frozen=True, slots=True)
class CreatedSource:
    id: str
    name: str
    write_key: str  # shown once; only its hash is stored


def hash_key(write_key: str) -> str:
    return hashlib.sha256(write_key.encode()).hexdigest()


def create_source(session: Session, *, name: str) -> CreatedSource:
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a source name must be 1 to 200 characters")
    if session.scalar(select(Source.id).where(Source.name == name)) is not None:
        raise SourceExists(f"a source named {name!r} exists already")
    write_key = "wk_" + secrets.token_urlsafe(32)
    source = Source(id="src_" + uuid.uuid4().hex[:16], name=name, write_key_hash=hash_key(write_key), enabled=True)
    session.add(source)
    session.flush()
    return CreatedSource(id=source.id, name=name, write_key=write_key)


def find_by_write_key(session: Session, write_key: str) -> Source | None:
    return session.scalar(select(Source).where(Source.write_key_hash == hash_key(write_key)))


def list_sources(session: Session) -> Sequence[Source]:
    return session.scalars(select(Source).order_by(Source.created_at)).all()


def set_enabled(session: Session, *, name: str, enabled: bool) -> Source:
    source = session.scalar(select(Source).where(Source.name == name))
    if source is None:
        raise SourceNotFound(f"no source named {name!r}")
    source.enabled = enabled
    return source
