"""Placing an event's identifiers in the identity graph under limits, priorities and separations. Pure.

`place` is the one rule, used by the worker on live profiles and by `partition` on a replay:

1. the event's highest-priority identifier (its *anchor*) picks the profile: the one holding it, or a new one;
2. every other key, from the highest priority down, is merged in (the profile holding it) or attached (a
   new identifier) if the result still keeps every limit and separation; otherwise it is left out.

Leaving out the lowest-priority keys that break a limit is the issue's "drop the lowest-priority identifier
and retry", done in one pass; the anchor is never left out, so an event always belongs to the profile that
holds its highest-priority identifier. `partition` applies `place` to every distinct identifier set in
(timestamp, messageId, source) order, which makes the result a function of the set of events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from accord.identity.rules import Key, Rules

Tag = tuple[int, int]  # (separation id, side 0 or 1)
Order = tuple[datetime, str, str]  # (timestamp, messageId, source id): the canonical order of events


@dataclass(frozen=True, slots=True)
class Separation:
    """An unmerge: identifiers whose home is on one side may never share a profile with identifiers whose
    home is on the other. A side is the set of profiles that made up one party of the merge."""

    id: int
    left: frozenset[str]
    right: frozenset[str]


class Separations:
    """The separations that apply, indexed by home profile."""

    def __init__(self, separations: Iterable[Separation] = ()) -> None:
        self.by_home: dict[str, set[Tag]] = {}
        for separation in separations:
            for side, homes in enumerate((separation.left, separation.right)):
                for home in homes:
                    self.by_home.setdefault(home, set()).add((separation.id, side))

    def tags(self, home: str | None) -> set[Tag]:
        if home is None or not self.by_home:
            return set()
        return self.by_home.get(home, set())

    def __bool__(self) -> bool:
        return bool(self.by_home)


def clash(tags: set[Tag], more: Iterable[Tag]) -> bool:
    return any((sep, 1 - side) in tags for sep, side in more)


class Graph(Protocol):
    """What `place` reads: which profile holds a key, and what each profile holds."""

    def owner(self, key: Key) -> str | None: ...
    def counts(self, profile: str) -> Mapping[str, int]: ...
    def tags(self, profile: str) -> set[Tag]: ...
    def key_tags(self, key: Key) -> set[Tag]: ...


@dataclass(slots=True)
class Plan:
    anchor: Key
    profile: str | None  # the anchor's profile; None: a new profile
    merges: list[tuple[str, Key]] = field(default_factory=list)  # profiles to merge in, and the key found on each
    attach: list[Key] = field(default_factory=list)  # identifiers held by no profile, to attach
    dropped: list[Key] = field(default_factory=list)  # identifiers held by no profile, left out by a limit
    skipped: list[tuple[str, Key]] = field(default_factory=list)  # profiles found but not merged

    @property
    def conflict(self) -> bool:
        return bool(self.dropped or self.skipped)


def _fits(counts: Mapping[str, int], more: Mapping[str, int], limits: Mapping[str, int]) -> bool:
    return all(counts.get(kind, 0) + n <= limits.get(kind, 1_000_000) for kind, n in more.items() if n)


def place(identifiers: list[Key], lookups: list[Key], rules: Rules, graph: Graph) -> Plan:
    """Where an event's keys go. `identifiers` (attachable) come highest priority first; `lookups` only find.

    A lookup stands for the identifiers it was derived from (an alias's previousId may name a user id or an
    anonymous id): when a limit or a separation leaves all of those out of the event, the lookup goes too,
    and the event is placed again without it."""
    while True:
        plan = _place(identifiers, lookups, rules, graph)
        if not plan.conflict or not lookups:
            return plan
        left_out = set(plan.dropped) | {key for _, key in plan.skipped}
        kept = [
            lookup
            for lookup in lookups
            if not all(source in left_out for source in identifiers if lookup in rules.lookups([source]))
        ]
        if len(kept) == len(lookups):
            return plan
        lookups = kept


def _place(identifiers: list[Key], lookups: list[Key], rules: Rules, graph: Graph) -> Plan:
    anchor = identifiers[0]
    profile = graph.owner(anchor)
    plan = Plan(anchor=anchor, profile=profile)
    if profile is None:
        counts: dict[str, int] = {anchor[0]: 1}
        tags = set(graph.key_tags(anchor))
        plan.attach.append(anchor)
    else:
        counts = dict(graph.counts(profile))
        tags = set(graph.tags(profile))
    members = {profile}
    rank = rules.rank
    rest = [(key, True) for key in identifiers[1:]] + [(key, False) for key in lookups]
    if lookups:
        rest.sort(key=lambda item: (rank.get(item[0][0], 1_000), item[0][1]))
    limits = rules.limits
    for key, attachable in rest:
        owner = graph.owner(key)
        if owner is None:
            if not attachable or key in plan.attach:
                continue
            more = graph.key_tags(key)
            if counts.get(key[0], 0) + 1 > limits.get(key[0], 1_000_000) or clash(tags, more):
                plan.dropped.append(key)
                continue
            counts[key[0]] = counts.get(key[0], 0) + 1
            tags |= more
            plan.attach.append(key)
        elif owner not in members:
            other_counts, other_tags = graph.counts(owner), graph.tags(owner)
            if not _fits(counts, other_counts, limits) or clash(tags, other_tags):
                plan.skipped.append((owner, key))
                continue
            for kind, n in other_counts.items():
                counts[kind] = counts.get(kind, 0) + n
            tags |= other_tags
            members.add(owner)
            plan.merges.append((owner, key))
    return plan


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one event says about identity: its identifiers (highest priority first) and lookup keys."""

    order: Order
    identifiers: tuple[Key, ...]
    lookups: tuple[Key, ...]


@dataclass(slots=True)
class Group:
    index: int  # creation order in the replay
    keys: set[Key] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    tags: set[Tag] = field(default_factory=set)
    absorbed: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Partition:
    """The result of a replay: which group holds each identifier; the groups in creation order."""

    owner: dict[Key, int]
    groups: list[Group]  # live groups only, in creation order
    dropped: set[Key]
    merges: list[tuple[int, int, Key, Order]]  # (survivor group, absorbed group, key, order of the event)


class _Replay:
    def __init__(self, homes: Mapping[Key, str], separations: Separations) -> None:
        self.owner_of: dict[Key, int] = {}
        self.groups: dict[int, Group] = {}
        self.created = 0
        self.homes = homes
        self.separations = separations

    def key_tags(self, key: Key) -> set[Tag]:
        return self.separations.tags(self.homes.get(key))

    def owner(self, key: Key) -> str | None:
        index = self.owner_of.get(key)
        return None if index is None else str(index)

    def counts(self, profile: str) -> Mapping[str, int]:
        return self.groups[int(profile)].counts

    def tags(self, profile: str) -> set[Tag]:
        return self.groups[int(profile)].tags


def partition(
    evidence: Iterable[Evidence], rules: Rules, homes: Mapping[Key, str], separations: Separations
) -> Partition:
    """Place every distinct identifier set in canonical order. A repeat of an identifier set seen earlier
    changes nothing (its profiles only grew since, and limits only bind harder), so only the first counts.
    `homes` gives each known identifier's home profile, which decides its side of a separation."""
    homes = dict(homes)
    state = _Replay(homes, separations)
    seen: set[tuple[tuple[Key, ...], tuple[Key, ...]]] = set()
    all_keys: set[Key] = set()
    merges: list[tuple[int, int, Key, Order]] = []
    for item in sorted(evidence, key=lambda e: e.order):
        if not item.identifiers:
            continue
        signature = (item.identifiers, item.lookups)
        if signature in seen:
            continue
        seen.add(signature)
        all_keys.update(item.identifiers)
        plan = place(list(item.identifiers), list(item.lookups), rules, state)
        if plan.profile is None:
            group = Group(index=state.created)
            state.created += 1
            state.groups[group.index] = group
        else:
            group = state.groups[int(plan.profile)]
        for other_id, key in plan.merges:
            other = state.groups.pop(int(other_id))
            for moved in other.keys:
                state.owner_of[moved] = group.index
            group.keys |= other.keys
            for kind, n in other.counts.items():
                group.counts[kind] = group.counts.get(kind, 0) + n
            group.tags |= other.tags
            group.absorbed.append(other.index)
            merges.append((group.index, other.index, key, item.order))
        anchor_home = homes.get(plan.anchor)
        for key in plan.attach:
            if anchor_home is not None:
                homes.setdefault(key, anchor_home)
            state.owner_of[key] = group.index
            group.keys.add(key)
            group.counts[key[0]] = group.counts.get(key[0], 0) + 1
            group.tags |= state.key_tags(key)
    groups = sorted(state.groups.values(), key=lambda g: g.index)
    return Partition(owner=state.owner_of, groups=groups, dropped=all_keys - state.owner_of.keys(), merges=merges)
