"""The profile projection: how events and merges change a profile. Pure, and order-independent.

Traits are last-writer-wins by (event time, messageId); counts add up; first and last seen are the
min and max. Each is a join of a semilattice, so any order of the same events (and any merge of
profiles that saw them) gives the same state. A trait's version also names where the winning write
came from (its source and, for rows imported by a job, the import run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class ProfileState:
    id: str
    created_at: datetime
    first_seen: datetime
    last_seen: datetime
    traits: dict[str, Any] = field(default_factory=dict)
    # Per trait: [timestamp, messageId, source id, import run id or ""]; compared as a list, so the order
    # is (time, messageId), and versions written before the last two were added still compare.
    trait_versions: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    merged_into: str | None = None
    is_new: bool = False
    dirty: bool = False
    traits_changed: bool = False  # the matching index must be brought up to date
    sealed: str | None = None  # the personal traits' ciphertext as read (accord.profiles.private)
    # Identity bookkeeping (kept by the pipeline, not by events): how many identifiers of each type the
    # profile holds, its conflicted cluster if any, and the separation sides its identifiers are on.
    identity_counts: dict[str, int] = field(default_factory=dict)
    cluster_id: str | None = None
    tags: set[tuple[int, int]] = field(default_factory=set)


def event_traits(event: dict[str, Any]) -> dict[str, Any]:
    """Traits an event states about its person: identify's traits, and any call's context.traits."""
    merged: dict[str, Any] = {}
    context_traits = (event.get("context") or {}).get("traits")
    if isinstance(context_traits, dict):
        merged.update(context_traits)
    if event.get("type") == "identify" and isinstance(event.get("traits"), dict):
        merged.update(event["traits"])
    return merged


def set_traits(state: ProfileState, traits: dict[str, Any], version: list[str]) -> None:
    for key, value in traits.items():
        current = state.trait_versions.get(key)
        if current is None or version > current:
            state.traits[key] = value
            state.trait_versions[key] = version
            state.dirty = state.traits_changed = True


def import_run(event: dict[str, Any]) -> str:
    """The import run that made an event (the importer's reserved `_accord.run`), or ""."""
    meta = event.get("_accord")
    run = meta.get("run") if isinstance(meta, dict) else None
    return run if isinstance(run, str) else ""


def apply_event(state: ProfileState, event: dict[str, Any], timestamp: datetime, source_id: str = "") -> None:
    traits = event_traits(event)
    if traits:
        set_traits(state, traits, [event["timestamp"], event["messageId"], source_id, import_run(event)])
    _bump(state.counts, "types", event["type"], 1)
    if event["type"] == "track":
        _bump(state.counts, "events", event["event"], 1)
    if timestamp < state.first_seen:
        state.first_seen = timestamp
    if timestamp > state.last_seen:
        state.last_seen = timestamp
    state.dirty = True


def absorb(survivor: ProfileState, absorbed: ProfileState) -> None:
    """Fold `absorbed` into `survivor`, as if the survivor had seen all of its events."""
    for key, value in absorbed.traits.items():
        version = absorbed.trait_versions.get(key, ["", ""])
        current = survivor.trait_versions.get(key)
        if current is None or version > current:
            survivor.traits[key] = value
            survivor.trait_versions[key] = version
    for group, counts in absorbed.counts.items():
        for name, n in counts.items():
            _bump(survivor.counts, group, name, n)
    survivor.first_seen = min(survivor.first_seen, absorbed.first_seen)
    survivor.last_seen = max(survivor.last_seen, absorbed.last_seen)
    survivor.created_at = min(survivor.created_at, absorbed.created_at)
    for kind, n in absorbed.identity_counts.items():
        survivor.identity_counts[kind] = survivor.identity_counts.get(kind, 0) + n
    survivor.tags |= absorbed.tags
    absorbed.merged_into = survivor.id
    survivor.dirty = absorbed.dirty = survivor.traits_changed = True


def _bump(counts: dict[str, dict[str, int]], group: str, name: str, n: int) -> None:
    bucket = counts.setdefault(group, {})
    bucket[name] = bucket.get(name, 0) + n
