"""Streaming journeys: after the segments have been re-evaluated for a run of events, evaluate the
journeys the run can affect, found through the index of what each journey reads (traits, event names,
consent, segments). New and merged profiles are evaluated against every journey; the positions of profiles
merged away go to the profile they belong to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accord.journeys import machine
from accord.segments import evaluate as segment_evaluate
from accord.segments.streaming import Touches


def apply(
    session: Session,
    touches: Touches,
    segments: segment_evaluate.Changes,
    now: datetime,
    cache: segment_evaluate.FactsCache | None = None,
) -> machine.Changes:
    journeys = machine.active(session, cache)
    if not journeys.by_key:
        return machine.Changes()
    wanted: dict[str, set[str] | None] = {}

    def want(profile_id: str, keys: set[str]) -> None:
        if keys and profile_id not in touches.everything:
            wanted.setdefault(profile_id, set()).update(keys)  # type: ignore[union-attr]

    for profile_id in touches.everything:
        wanted[profile_id] = None
    for profile_id, names in touches.traits.items():
        want(profile_id, {key for name in names for key in journeys.by_trait.get(name, ())})
    for profile_id, names in touches.events.items():
        want(profile_id, {key for name in names for key in journeys.by_event.get(name, ())})
    for profile_id in touches.consent:
        want(profile_id, set(journeys.consent))
    for segment, profile_id in (*segments.entered, *segments.exited):
        want(profile_id, set(journeys.by_segment.get(segment, ())))
    return machine.refresh(session, wanted, now, journeys=journeys, gone=touches.gone, cache=cache)


def consent_changed(
    session: Session, profile_ids: list[str], segments: segment_evaluate.Changes, now: datetime
) -> machine.Changes:
    """Consent statements were recorded about these profiles: evaluate the journeys with a consent leaf, and
    those reading a segment the statements moved them into or out of."""
    journeys = machine.active(session)
    if not journeys.by_key or not profile_ids:
        return machine.Changes()
    touches = Touches(consent=segment_evaluate.live_of(session, profile_ids))
    return apply(session, touches, segments, now)
