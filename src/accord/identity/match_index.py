"""The blocking index of probabilistic matching: which live profiles have which blocking keys. Kept up to
date in the same transaction as the profiles (by the worker and by re-derivations), rebuilt by training."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import String, Table, TextClause, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from accord.db.base import JSONDoc
from accord.identity.matching import MatchSettings, Weights, blocking_keys, compile_match, prepare
from accord.identity.models import MatchKey, MatchModel
from accord.profiles.private import Opener
from accord.security.datakeys import keyring_of

KEYS = cast(Table, MatchKey.__table__)
MODELS = cast(Table, MatchModel.__table__)
CHUNK = 500


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """The model in force: the settings it was trained under (they, not later rules, decide the index
    keys and the comparisons until the next training) and its weights."""

    version: int
    created_at: datetime
    settings: MatchSettings
    weights: Weights
    document: dict[str, Any]


_cache: dict[str, LoadedModel] = {}
_lock = threading.Lock()
# What says whether the loaded model is current: the latest version and when it was stored (None, None
# before the first training). Columns, so that a caller may read it with other stamps in one statement.
MODEL_STAMP = (
    select(MODELS.c.version).order_by(MODELS.c.version.desc()).limit(1).scalar_subquery(),
    select(MODELS.c.created_at).order_by(MODELS.c.version.desc()).limit(1).scalar_subquery(),
)
_READ_STAMP = select(*MODEL_STAMP)


def current_model(session: Session, stamp: Sequence[Any] | None = None) -> LoadedModel | None:
    """One indexed read of the latest version (or its `MODEL_STAMP` as the caller read it in this
    transaction); the document is read and compiled again only on a change."""
    m = MODELS.c
    version, created_at = stamp if stamp is not None else session.connection().execute(_READ_STAMP).one()
    if version is None:
        return None
    bind = str(session.get_bind().engine.url)
    cached = _cache.get(bind)
    if cached is not None and cached.version == version and cached.created_at == created_at:
        return cached
    document = session.scalar(select(m.document).where(m.version == version)) or {}
    loaded = LoadedModel(
        version=version,
        created_at=created_at,
        settings=compile_match(document["settings"]),
        weights=Weights.from_document(document["weights"]),
        document=document,
    )
    with _lock:
        _cache[bind] = loaded
    return loaded


def current_settings(session: Session, stamp: Sequence[Any] | None = None) -> MatchSettings | None:
    """The settings the index is kept under: the trained model's, or None (no model: no index to keep)."""
    model = current_model(session, stamp)
    return model.settings if model is not None else None


def _insert_keys(session: Session) -> Any:
    """Inserting keys that may exist already: a training's rebuild and a worker may write the same key of the
    same profile at once (each then holds what the other wrote, which is the same row)."""
    dialect = session.get_bind().dialect.name
    return (pg_insert if dialect == "postgresql" else sqlite_insert)(KEYS).on_conflict_do_nothing()


def profile_keys(session: Session, traits: Mapping[str, Any], settings: MatchSettings) -> set[str]:
    return set(blocking_keys(prepare(dict(traits), settings), settings, keyring_of(session).match_key))


def refresh(
    session: Session,
    settings: MatchSettings | None,
    changed: Mapping[str, Mapping[str, Any]],
    removed: Iterable[str] = (),
) -> None:
    """Give each changed profile the keys of its traits now, and take every key from removed profiles
    (absorbed by a merge). Writes only the difference. Nothing to do while no model is trained."""
    if settings is None:
        return
    gone = set(removed) - set(changed)
    ids = sorted(set(changed) | gone)
    if not ids:
        return
    current: dict[str, set[str]] = {}
    k = KEYS.c
    for start in range(0, len(ids), CHUNK):
        for key, profile_id in session.execute(
            select(k.key, k.profile_id).where(k.profile_id.in_(ids[start : start + CHUNK]))
        ):
            current.setdefault(profile_id, set()).add(key)
    wanted = {pid: profile_keys(session, traits, settings) for pid, traits in changed.items()}
    stale = [
        {"old_key": key, "old_id": pid}
        for pid, keys in sorted(current.items())
        for key in sorted(keys - wanted.get(pid, set()))
    ]
    fresh = sorted((key, pid) for pid, keys in wanted.items() for key in keys - current.get(pid, set()))
    if stale:
        session.execute(
            delete(KEYS).where(k.key == bindparam("old_key"), k.profile_id == bindparam("old_id")),
            stale,
        )
    if fresh:
        session.execute(_insert_keys(session), [{"key": key, "profile_id": pid} for key, pid in fresh])


def rebuild(session: Session, settings: MatchSettings, profiles: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Replace the whole index with the keys of these (live) profiles; returns how many keys it holds."""
    session.execute(delete(KEYS))
    batch: list[dict[str, str]] = []
    total = 0
    for profile_id, traits in profiles:
        batch.extend({"key": key, "profile_id": profile_id} for key in sorted(profile_keys(session, traits, settings)))
        if len(batch) >= 5_000:
            session.execute(_insert_keys(session), batch)
            total += len(batch)
            batch = []
    if batch:
        session.execute(_insert_keys(session), batch)
        total += len(batch)
    return total


@lru_cache(maxsize=32)
def _lookup(count: int) -> TextClause:
    """One statement for `count` keys: a UNION ALL of one bounded lookup per key (built once per count; the
    single-record path is hot, and building Core statements per request costs more than running them)."""
    lookup = (
        "SELECT profile_id FROM (SELECT profile_id FROM identity_match_keys WHERE key = :k{n} LIMIT :per_key) AS q{n}"
    )
    parts = [lookup.format(n=n) for n in range(count)]  # only numbers go in: the keys are bound parameters
    return text(" UNION ALL ".join(parts))


def candidates(session: Session, keys: Iterable[str], *, per_key: int) -> list[str]:
    """Profiles sharing at least one key, at most `per_key` for each key (a hot value cannot flood a match)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    params: dict[str, Any] = {f"k{n}": key for n, key in enumerate(wanted)}
    params["per_key"] = per_key
    return list(dict.fromkeys(session.scalars(_lookup(len(wanted)), params)))


_LIVE_TRAITS = (
    text("SELECT id, traits, traits_enc FROM profiles WHERE id IN :ids AND merged_into IS NULL")
    .bindparams(bindparam("ids", expanding=True))
    .columns(id=String(), traits=JSONDoc, traits_enc=String())
)


def live_traits(session: Session, profile_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The traits of those of these profiles that are live (personal ones decrypted)."""
    found: list[tuple[str, dict[str, Any]]] = []
    opener = Opener.of(session)
    for start in range(0, len(profile_ids), CHUNK):
        rows = session.execute(_LIVE_TRAITS, {"ids": profile_ids[start : start + CHUNK]}).all()
        opener.load(sealed for _, _, sealed in rows)
        found.extend((pid, opener.traits(pid, clear, sealed)) for pid, clear, sealed in rows)
    return found
