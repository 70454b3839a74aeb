"""Streaming evaluation: after the pipeline writes a run of events, re-evaluate only the segments those
events can affect, found through the index of what each segment reads (traits, event names, consent,
other segments). New and merged profiles are evaluated against every segment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from accord.profiles.projection import event_traits
from accord.segments import evaluate


@dataclass(slots=True)
class Touches:
    """What a run changed, per profile id, in the terms of the segment index."""

    traits: dict[str, set[str]] = field(default_factory=dict)
    events: dict[str, set[str]] = field(default_factory=dict)
    consent: set[str] = field(default_factory=set)
    everything: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)  # merged away: their memberships go

    def event(self, profile_id: str, event: dict[str, Any], *, new: bool) -> None:
        if new:
            self.everything.add(profile_id)
            return
        names = event_traits(event)
        if names:
            self.traits.setdefault(profile_id, set()).update(names)
        if event.get("type") == "track" and isinstance(event.get("event"), str):
            self.events.setdefault(profile_id, set()).add(event["event"])

    def touched(self) -> set[str]:
        """Every profile a run touched."""
        return {*self.traits, *self.events, *self.consent, *self.everything, *self.gone}

    def moved(self, live: Callable[[str], str]) -> Touches:
        """The same touches on the profiles that are live now (after merges in the run)."""
        result = Touches(consent={live(p) for p in self.consent}, gone=set(self.gone))
        result.everything = {live(p) for p in self.everything}
        for source, target in ((self.traits, result.traits), (self.events, result.events)):
            for profile_id, names in source.items():
                target.setdefault(live(profile_id), set()).update(names)
        return result


def apply(
    session: Session, touches: Touches, now: datetime, cache: evaluate.FactsCache | None = None
) -> evaluate.Changes:
    segments = evaluate.active(session, cache)
    if not segments.by_key:
        return evaluate.Changes()
    wanted: dict[str, set[str] | None] = {}

    def want(profile_id: str, keys: set[str]) -> None:
        if profile_id in touches.everything:
            return
        wanted.setdefault(profile_id, set()).update(keys)  # type: ignore[union-attr]

    for profile_id in touches.everything:
        wanted[profile_id] = evaluate.ALL
    for profile_id, names in touches.traits.items():
        want(profile_id, {key for name in names for key in segments.by_trait.get(name, ())})
    for profile_id, names in touches.events.items():
        want(profile_id, {key for name in names for key in segments.by_event.get(name, ())})
    for profile_id in touches.consent:
        want(profile_id, set(segments.consent))
    for profile_id in touches.gone:
        want(profile_id, set())
    wanted = {pid: keys for pid, keys in wanted.items() if keys is None or keys or pid in touches.gone}
    # The memberships of every touched profile are read with those of the evaluated ones, in one statement:
    # the journeys evaluated next read them through the cache.
    also = touches.touched() if cache is not None else ()
    return evaluate.refresh(session, wanted, now, segments=segments, cache=cache, also=also)


def consent_changed(session: Session, profile_ids: list[str], now: datetime) -> evaluate.Changes:
    """Consent statements were recorded about these profiles (perhaps absorbed ones): re-evaluate the
    segments with a consent leaf for the live profiles they belong to."""
    segments = evaluate.active(session)
    if not segments.consent or not profile_ids:
        return evaluate.Changes()
    live = evaluate.live_of(session, profile_ids)
    return evaluate.refresh(session, {pid: set(segments.consent) for pid in live}, now, segments=segments)
