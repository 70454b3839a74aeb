"""Probabilistic matching as a service: train the model, match one record, merge a matched pair, the
review queue, and the batch dedupe job.

A merge decided by matching is an event like any other: a `Profiles Matched` track event whose reserved
`_accord.link` names one identifier of each profile, processed by the same pipeline function as the
worker's. So the merge is recorded in the person's history, kept by replays and re-derivations, bound by
the limits, and undone by the ordinary unmerge.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from accord.db.engine import Database, backoff, conflicted
from accord.identity import match_index, training
from accord.identity.match_index import LoadedModel, current_model
from accord.identity.matching import MatchSettings, Weights, level_labels, prepare, score
from accord.identity.models import Identity, MatchModel, MatchReview, Merge
from accord.identity.rules import Key
from accord.identity.service import current_rules
from accord.ingest.spec import iso
from accord.pipeline.process import StaleRead, process_events
from accord.profiles import private
from accord.profiles.models import Profile

MATCH_SOURCE = "accord:identity"
MATCH_EVENT = "Profiles Matched"
PER_KEY = 200  # candidates read per blocking key
LINK_BATCH = 200
RETRIES = 8  # attempts of a chunk that other transactions conflict with (backoff up to 0.5 s)
PROFILES = cast(Table, Profile.__table__)


class LinkageError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _no_model() -> LinkageError:
    return LinkageError(409, "no_model", "no matching model is trained yet; run `accord identity train`")


# Training -----------------------------------------------------------------------------------------


def live_profiles(session: Session) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every live profile's id and traits, in id order."""
    p = PROFILES.c
    result = session.execute(
        select(p.id, p.traits, p.traits_enc)
        .where(p.merged_into.is_(None))
        .order_by(p.id)
        .execution_options(yield_per=5_000)
    )
    opener = private.Opener.of(session)
    for part in result.partitions():
        opener.load(sealed for _, _, sealed in part)  # names and addresses are encrypted
        for profile_id, clear, sealed in part:
            yield profile_id, opener.traits(profile_id, clear, sealed)


def _records(session: Session, settings: MatchSettings) -> tuple[list[str], list[dict[str, Any]]]:
    ids, records = [], []
    for profile_id, traits in live_profiles(session):
        record = prepare(traits, settings)
        if any(v is not None for v in record.values()):
            ids.append(profile_id)
            records.append(record)
    return ids, records


@dataclass(frozen=True, slots=True)
class TrainResult:
    version: int
    profiles: int
    index_keys: int
    seconds: float


def train_model(session: Session, *, actor: str, now: datetime, seed: int = 1) -> TrainResult:
    """Train a new version on the live profiles' traits under the match settings of the rules in force,
    store it, and rebuild the blocking index under those settings. TrainingError if it cannot."""
    started = time.perf_counter()
    rules = current_rules(session)
    settings = rules.matching
    ids, records = _records(session, settings)
    trained = training.train(ids, records, settings, seed=seed)
    latest = session.scalar(select(MatchModel.version).order_by(MatchModel.version.desc()).limit(1)) or 0
    document = {
        "settings": settings.document(),
        "weights": trained.weights.document(),
        "splink": trained.splink,
        "profiles": trained.profiles,
        "rules_version": rules.version,
    }
    session.add(MatchModel(version=latest + 1, document=document, created_at=now, actor=actor[:100]))
    session.flush()
    keys = match_index.rebuild(session, settings, live_profiles(session))
    return TrainResult(latest + 1, trained.profiles, keys, time.perf_counter() - started)


# Matching one record --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    profile_id: str
    probability: float
    match_weight: float
    levels: dict[str, str]


def _levels(settings: MatchSettings, found: Sequence[int]) -> dict[str, str]:
    labels = level_labels(settings)
    return {f.name: labels[i][level] for i, (f, level) in enumerate(zip(settings.fields, found, strict=True))}


def match(
    session: Session, traits: dict[str, Any], *, limit: int, min_probability: float = 0.0
) -> tuple[LoadedModel, list[Candidate]]:
    """The live profiles most like these traits, best first: candidates share a blocking key with them and
    are scored with the trained weights (Splink's match weight, worked out here for one record)."""
    model = current_model(session)
    if model is None:
        raise _no_model()
    settings = model.settings
    record = prepare(traits, settings)
    ids = match_index.candidates(session, match_index.profile_keys(session, traits, settings), per_key=PER_KEY)
    scored: list[Candidate] = []
    for profile_id, other in match_index.live_traits(session, ids):
        found = score(record, prepare(other, settings), settings, model.weights)
        if found.probability >= min_probability:
            scored.append(Candidate(profile_id, found.probability, found.match_weight, _levels(settings, found.levels)))
    scored.sort(key=lambda c: (-c.match_weight, c.profile_id))
    return model, scored[:limit]


# Merging a matched pair -----------------------------------------------------------------------------


def live_ids(session: Session, profile_ids: Iterable[str]) -> dict[str, str]:
    """The live profile each of these ids resolves to (ids of no profile are left out)."""
    wanted = sorted(set(profile_ids))
    found: dict[str, str] = {}
    p = PROFILES.c
    for start in range(0, len(wanted), 500):
        for profile_id, merged_into in session.execute(
            select(p.id, p.merged_into).where(p.id.in_(wanted[start : start + 500]))
        ):
            found[profile_id] = merged_into or profile_id
    return found


def _anchors(session: Session, profile_ids: Iterable[str], rank: dict[str, int]) -> dict[str, Key]:
    """Each profile's highest-priority identifier: what a link event names it by."""
    wanted = sorted(set(profile_ids))
    best: dict[str, Key] = {}
    i = cast(Table, Identity.__table__).c
    for start in range(0, len(wanted), 500):
        for kind, value, profile_id in session.execute(
            select(i.type, i.value, i.profile_id).where(i.profile_id.in_(wanted[start : start + 500]))
        ):
            if kind in rank and (
                profile_id not in best or (rank[kind], value) < (rank[best[profile_id][0]], best[profile_id][1])
            ):
                best[profile_id] = (kind, value)
    return best


@dataclass(slots=True)
class Link:
    left_id: str
    right_id: str
    message_id: str
    properties: dict[str, Any]
    merged: bool = False
    sent: bool = False  # a link event was written (not when the two were one profile already)


def apply_links(session: Session, links: Sequence[Link], *, now: datetime, actor: str, lock_rows: bool) -> None:
    """Merge each pair through a link event (in the caller's transaction), then note whether it merged:
    a limit or an unmerge may keep the two apart, as with any event that links them."""
    rules = current_rules(session)
    live = live_ids(session, [pid for link in links for pid in (link.left_id, link.right_id)])
    anchors = _anchors(session, set(live.values()), rules.rank)
    unanchored = {pid: live_id for pid, live_id in live.items() if live_id not in anchors}
    if unanchored and live_ids(session, list(unanchored)) != unanchored:
        # Merged meanwhile (its identifiers moved to the survivor between the two reads): not a profile
        # without identifiers, which no link can name; read again rather than report the pair blocked.
        raise StaleRead("a profile of a linked pair was merged meanwhile")
    events = []
    for n, link in enumerate(links):
        left, right = live.get(link.left_id), live.get(link.right_id)
        if left is None or right is None or left == right or left not in anchors or right not in anchors:
            continue
        moment = iso(now + timedelta(microseconds=n))
        link.sent = True
        events.append(
            (
                MATCH_SOURCE,
                {
                    "type": "track",
                    "event": MATCH_EVENT,
                    "messageId": link.message_id,
                    "timestamp": moment,
                    "receivedAt": moment,
                    "properties": link.properties,
                    "context": {},
                    "_accord": {"link": [list(anchors[left]), list(anchors[right])]},
                },
            )
        )
    if events:
        process_events(session, events, lock_rows=lock_rows)
        session.execute(
            update(Merge)
            .where(Merge.source_id == MATCH_SOURCE, Merge.message_id.in_([e["messageId"] for _, e in events]))
            .values(actor=actor[:100])
        )
    live = live_ids(session, [pid for link in links for pid in (link.left_id, link.right_id)])
    for link in links:
        left, right = live.get(link.left_id), live.get(link.right_id)
        link.merged = left is not None and left == right


# The review queue ----------------------------------------------------------------------------------


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def reviews(session: Session, *, status: str | None, limit: int, before: int | None) -> list[MatchReview]:
    query = select(MatchReview)
    if status is not None:
        query = query.where(MatchReview.status == status)
    if before is not None:
        query = query.where(MatchReview.id < before)
    return list(session.scalars(query.order_by(MatchReview.id.desc()).limit(limit)).all())


def _pending(session: Session, review_id: int, *, lock_rows: bool) -> MatchReview:
    query = select(MatchReview).where(MatchReview.id == review_id)
    if lock_rows:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is None:
        raise LinkageError(404, "review_not_found", f"no review {review_id}")
    if row.status != "pending":
        raise LinkageError(409, "already_decided", f"review {review_id} is {row.status} already")
    return row


def accept(session: Session, review_id: int, *, actor: str, reason: str, now: datetime, lock_rows: bool) -> MatchReview:
    """Merge the pair of a pending review, recording who and why (in the review, the link event and the
    merge history). 409 if a limit or an unmerge keeps them apart: then nothing changes."""
    row = _pending(session, review_id, lock_rows=lock_rows)
    link = Link(row.left_id, row.right_id, f"match-{row.id}", _properties(row, "accepted", reason))
    apply_links(session, [link], now=now, actor=actor, lock_rows=lock_rows)
    if not link.merged:
        raise LinkageError(409, "merge_blocked", "a limit or an unmerge keeps these profiles apart")
    row.status, row.decided_at, row.actor, row.reason = "accepted", now, actor[:100], reason
    row.message_id = link.message_id if link.sent else None
    session.flush()
    return row


def reject(session: Session, review_id: int, *, actor: str, reason: str, now: datetime, lock_rows: bool) -> MatchReview:
    """Record that the pair are different people: the dedupe job will not propose them again."""
    row = _pending(session, review_id, lock_rows=lock_rows)
    row.status, row.decided_at, row.actor, row.reason = "rejected", now, actor[:100], reason
    session.flush()
    return row


def _properties(row: MatchReview, decision: str, reason: str | None) -> dict[str, Any]:
    return {
        "review_id": row.id,
        "decision": decision,
        "probability": row.probability,
        "model_version": row.model_version,
        "reason": reason,
    }


# The batch dedupe job -------------------------------------------------------------------------------


@dataclass(slots=True)
class DedupeResult:
    model_version: int
    profiles: int = 0
    pairs: int = 0  # pairs Splink scored at or above the review threshold
    known: int = 0  # of those, pairs decided or queued before
    merged: int = 0
    blocked: int = 0
    queued: int = 0
    seconds: float = 0.0
    merged_pairs: list[tuple[str, str]] = field(default_factory=list)


def dedupe(db: Database, *, actor: str, now: datetime) -> DedupeResult:
    """Score every blocked pair of live profiles with Splink and the model in force; merge pairs above
    `auto_merge_above`, queue those above `review_above`, ignore the rest. Each decision is a review row.
    (Above means strictly: a threshold of 1 merges nothing by itself.)"""
    started = time.perf_counter()
    with db.read() as session:
        model = current_model(session)
        if model is None:
            raise _no_model()
        rules = current_rules(session)
        ids, records = _records(session, model.settings)
    result = DedupeResult(model_version=model.version, profiles=len(ids))
    found = list(training.predict(ids, records, model.settings, model.document["splink"], threshold=rules.review_above))
    result.pairs = len(found)
    by_id = dict(zip(ids, records, strict=True))
    labels = level_labels(model.settings)
    to_merge: list[MatchReview] = []
    with db.unit_of_work() as session:
        known: dict[tuple[str, str], MatchReview | None] = {
            (r.left_id, r.right_id): r if r.status == "merging" else None for r in session.scalars(select(MatchReview))
        }
        rows = []
        for a, b, weight, chance in found:
            if chance <= rules.review_above:
                continue
            left, right = _pair(a, b)
            if (left, right) in known:
                result.known += 1
                unfinished = known[(left, right)]  # an earlier run stopped before merging it
                if unfinished is not None:
                    rows.append(unfinished)
                continue
            known[(left, right)] = None
            levels = score(by_id[left], by_id[right], model.settings, model.weights).levels
            status = "merging" if chance > rules.auto_merge_above else "pending"
            rows.append(
                MatchReview(
                    left_id=left,
                    right_id=right,
                    probability=chance,
                    match_weight=weight,
                    model_version=model.version,
                    levels={
                        f.name: labels[i][lv]
                        for i, (f, lv) in enumerate(zip(model.settings.fields, levels, strict=True))
                    },
                    status=status,
                    created_at=now,
                    actor=actor[:100] if status == "merging" else None,
                )
            )
        session.add_all([r for r in rows if r.id is None])
        session.flush()
        result.queued = sum(1 for r in rows if r.status == "pending")
        to_merge = [r for r in rows if r.status == "merging"]
        merge_ids = [(r.id, r.left_id, r.right_id, r.probability) for r in to_merge]
    lock_rows = db.dialect == "postgresql"
    for start in range(0, len(merge_ids), LINK_BATCH):
        chunk = merge_ids[start : start + LINK_BATCH]
        links = _merge_chunk(db, chunk, model=model, now=now, actor=actor, lock_rows=lock_rows)
        for link in links:
            if link.merged:
                result.merged += 1
                result.merged_pairs.append((link.left_id, link.right_id))
            else:
                result.blocked += 1
    result.seconds = time.perf_counter() - started
    return result


def _merge_chunk(
    db: Database,
    chunk: list[tuple[int, str, str, float]],
    *,
    model: LoadedModel,
    now: datetime,
    actor: str,
    lock_rows: bool,
) -> list[Link]:
    for attempt in range(RETRIES):
        links = [
            Link(
                left,
                right,
                f"match-{review_id}",
                {
                    "review_id": review_id,
                    "decision": "automatic",
                    "probability": chance,
                    "model_version": model.version,
                },
            )
            for review_id, left, right, chance in chunk
        ]
        try:
            with db.unit_of_work() as session:
                apply_links(session, links, now=now, actor=actor, lock_rows=lock_rows)
                reviews = cast(Table, MatchReview.__table__)
                session.execute(
                    reviews.update()
                    .where(reviews.c.id == bindparam("review_id"))
                    .values(status=bindparam("new_status"), decided_at=now, message_id=bindparam("mid")),
                    [
                        {
                            "review_id": review_id,
                            "new_status": "merged" if link.merged else "blocked",
                            "mid": link.message_id if link.merged and link.sent else None,
                        }
                        for (review_id, *_), link in zip(chunk, links, strict=True)
                    ],
                )
            return links
        except (StaleRead, DBAPIError) as error:
            if attempt == RETRIES - 1 or (isinstance(error, DBAPIError) and not conflicted(error)):
                raise
            backoff(attempt, base=0.01)
    return []


def model_summary(model: LoadedModel) -> dict[str, Any]:
    """What a person needs to judge the model: each field's levels and their weights."""
    labels = level_labels(model.settings)
    return {
        "version": model.version,
        "created_at": model.created_at,
        "profiles": model.document.get("profiles"),
        "prior_weight": model.weights.prior,
        "fields": [
            {
                "name": f.name,
                "compare": f.compare,
                "levels": [
                    {"label": label, "weight": w} for label, w in zip(labels[i], model.weights.levels[i], strict=True)
                ],
            }
            for i, f in enumerate(model.settings.fields)
        ],
    }


__all__ = ["LinkageError", "TrainResult", "Weights", "accept", "dedupe", "match", "reject", "reviews", "train_model"]
