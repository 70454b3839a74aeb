"""A person's merge history, and unmerge: split a recorded merge back into its two parties for good."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from accord.identity.models import Identity, Merge, SeparationRow
from accord.identity.rederive import Rederived, rederive
from accord.identity.service import current_rules
from accord.journeys import streaming as journey_streaming
from accord.profiles.models import Profile
from accord.segments import streaming as segment_streaming


class UnmergeError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Unmerged:
    merge_id: int
    unmerge_id: int
    profiles: list[str]
    moved_events: int
    rederived: Rederived


def person_ids(session: Session, profile: Profile) -> list[str]:
    """The live profile and every profile id that resolves to it."""
    return [profile.id, *session.scalars(select(Profile.id).where(Profile.merged_into == profile.id))]


def history(session: Session, profile: Profile, *, limit: int = 100, before: int | None = None) -> list[Merge]:
    """Merges, unmerges and re-derivations that concern this person, newest first."""
    ids = person_ids(session, profile)
    condition = or_(Merge.survivor_id.in_(ids), Merge.absorbed_id.in_(ids))
    if profile.cluster_id is not None:
        condition = or_(condition, Merge.survivor_id == profile.cluster_id)
    query = select(Merge).where(condition)
    if before is not None:
        query = query.where(Merge.id < before)
    return list(session.scalars(query.order_by(Merge.id.desc()).limit(limit)).all())


def _side(session: Session, root: str, before: int) -> set[str]:
    """The profiles that made up `root` just before merge `before`: it and what it had absorbed."""
    side = {root}
    frontier = [root]
    while frontier:
        rows = session.scalars(
            select(Merge.absorbed_id).where(
                Merge.kind == "merge", Merge.survivor_id.in_(frontier), Merge.id < before, Merge.undone_by.is_(None)
            )
        ).all()
        frontier = [pid for pid in rows if pid not in side]
        side.update(frontier)
    return side


def unmerge(
    session: Session, profile: Profile, *, merge_id: int, actor: str, now: datetime, lock_rows: bool
) -> Unmerged:
    """Split merge `merge_id` of this person: from now on no profile may hold identifiers of both parties.
    The person's cluster is re-derived, so identifiers, traits and events go back where they belong, and
    later events that link the two parties again are kept apart by the same rule as a limit."""
    merge = session.get(Merge, merge_id)
    ids = set(person_ids(session, profile))
    if merge is None or merge.kind != "merge" or not ({merge.survivor_id, merge.absorbed_id} & ids):
        raise UnmergeError(404, "merge_not_found", f"no merge {merge_id} in this person's history")
    if merge.undone_by is not None:
        raise UnmergeError(409, "already_unmerged", f"merge {merge_id} was undone by {merge.undone_by}")
    if not {merge.survivor_id, merge.absorbed_id} <= ids:
        raise UnmergeError(409, "already_apart", f"the parties of merge {merge_id} are no longer one profile")
    cluster = profile.cluster_id or str(uuid.uuid4())
    _lock(session, profile.id, cluster, lock_rows=lock_rows)
    left = _side(session, merge.absorbed_id, merge.id)
    right = _side(session, merge.survivor_id, merge.id) - left
    session.execute(update(Profile).where(Profile.id == profile.id).values(cluster_id=cluster))
    session.add(
        SeparationRow(cluster_id=cluster, merge_id=merge.id, left=sorted(left), right=sorted(right), created_at=now)
    )
    session.flush()
    done = rederive(
        session, cluster, rules=current_rules(session), now=now, cause={"kind": "unmerge", "merge_id": merge.id}
    )
    moved = segment_streaming.apply(session, segment_streaming.Touches(everything=set(done.profiles)), now)
    # Positions of profiles the split left behind go to the profile they resolve to now.
    touches = segment_streaming.Touches(everything=set(done.profiles), gone=set(done.redirected))
    journey_streaming.apply(session, touches, moved, now)
    record = Merge(
        kind="unmerge",
        survivor_id=merge.survivor_id,
        absorbed_id=merge.absorbed_id,
        identity_type=merge.identity_type,
        identity_value=merge.identity_value,
        merged_at=now,
        actor=actor[:100],
        details={"merge_id": merge.id, "profiles": done.profiles, "moved_events": len(done.moved_events)},
    )
    session.add(record)
    session.flush()
    merge.undone_by = record.id
    session.flush()
    session.expire_all()
    return Unmerged(merge.id, record.id, done.profiles, len(done.moved_events), done)


def _lock(session: Session, profile_id: str, cluster: str, *, lock_rows: bool) -> None:
    """Lock the person and the live profiles of its cluster, in id order (as the worker does)."""
    query = (
        select(Profile.id)
        .where(or_(Profile.id == profile_id, (Profile.cluster_id == cluster) & Profile.merged_into.is_(None)))
        .order_by(Profile.id)
    )
    if lock_rows:
        query = query.with_for_update()
    session.execute(query).all()
    merged = session.scalar(select(Profile.merged_into).where(Profile.id == profile_id))
    if merged is not None:
        raise UnmergeError(409, "profile_changed", "the profile was merged meanwhile; try again")


def identity_rows(session: Session, profile_id: str) -> list[dict[str, Any]]:
    return [
        {"type": i.type, "value": i.value}
        for i in session.scalars(select(Identity).where(Identity.profile_id == profile_id).order_by(Identity.type))
    ]
