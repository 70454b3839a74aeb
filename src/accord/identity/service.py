"""Identity rules as configuration: read the rules in force (cached per database, checked per call), and
store a new version. Every process sees a new version on its next batch or request: no restart."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.identity.models import IdentityRules
from accord.identity.rules import DEFAULT_DOCUMENT, DEFAULT_RULES, Key, Rules, RulesError, compile_rules

__all__ = ["Key", "Rules", "RulesError", "current_rules", "normalise", "rules_history", "set_rules"]

_cache: dict[str, tuple[datetime, Rules]] = {}
_lock = threading.Lock()
# What says whether the compiled rules are current: the latest version and when it was stored (None, None
# while there is none). Columns, so that a caller may read it with other stamps in one statement.
RULES_STAMP = (
    select(IdentityRules.version).order_by(IdentityRules.version.desc()).limit(1).scalar_subquery(),
    select(IdentityRules.created_at).order_by(IdentityRules.version.desc()).limit(1).scalar_subquery(),
)
_READ_STAMP = select(*RULES_STAMP)


def current_rules(session: Session, stamp: Sequence[Any] | None = None) -> Rules:
    """The rules in force: one indexed read of the latest version number (or its `RULES_STAMP` as the
    caller read it in this transaction); compiled again only on a change."""
    version, created_at = stamp if stamp is not None else session.connection().execute(_READ_STAMP).one()
    if version is None:
        return DEFAULT_RULES
    bind = str(session.get_bind().engine.url)
    cached = _cache.get(bind)
    if cached is not None and cached[1].version == version and cached[0] == created_at:
        return cached[1]
    document = session.scalar(select(IdentityRules.document).where(IdentityRules.version == version))
    compiled = compile_rules(dict(document or DEFAULT_DOCUMENT), version=version)
    with _lock:
        _cache[bind] = (created_at, compiled)
    return compiled


def set_rules(session: Session, document: dict[str, Any], *, actor: str, now: datetime) -> Rules:
    """Check and store a new version of the rules (RulesError if they cannot be used). Applies to events
    processed from then on; profiles already made keep their identifiers until a re-derivation."""
    compiled = compile_rules(document, new=True)
    latest = session.scalar(select(IdentityRules.version).order_by(IdentityRules.version.desc()).limit(1)) or 0
    version = latest + 1
    session.add(IdentityRules(version=version, document=compiled.document(), created_at=now, actor=actor[:100]))
    session.flush()
    return compile_rules(compiled.document(), version=version)


def rules_history(session: Session, limit: int = 50) -> list[IdentityRules]:
    return list(session.scalars(select(IdentityRules).order_by(IdentityRules.version.desc()).limit(limit)).all())


def normalise(kind: str, value: Any) -> str | None:
    """An identifier's canonical form under the default rules (for callers without a session)."""
    return DEFAULT_RULES.normalise(kind, value)
