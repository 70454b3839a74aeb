"""Properties of the consent state: it equals a replay of the ledger's history, whatever the interleaving of
channels and however late a statement is recorded; and every decision equals a direct reading of the
statements. Runs on the service layer, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.consent import catalogue, service
from accord.consent.service import NoticeRef, State, Statement
from accord.runtime import Runtime

PURPOSES = ("marketing", "marketing.email", "marketing.email.news", "analytics")
CHANNELS = ("email", "sms", "web", "all")
STATUSES = ("given", "refused", "withdrawn", "renewed")
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
NOTICE = NoticeRef("terms", 1, "en")


@dataclass(frozen=True)
class Said:
    purpose: str
    channel: str
    status: str
    minutes_ago: int  # distinct per example: when the person said it
    expires_in: int | None  # minutes after NOW; None for no expiry


def statements() -> st.SearchStrategy[list[Said]]:
    one = st.tuples(
        st.sampled_from(PURPOSES),
        st.sampled_from(CHANNELS),
        st.sampled_from(STATUSES),
        st.one_of(st.none(), st.integers(min_value=-30, max_value=30)),
    )
    return st.lists(one, min_size=1, max_size=12).flatmap(
        lambda items: st.permutations(range(1, len(items) + 1)).map(
            lambda ages: [
                Said(p, c, s, age * 10, None if e is None or s not in ("given", "renewed") else e)
                for (p, c, s, e), age in zip(items, ages, strict=True)
            ]
        )
    )


def catalogue_ready(rt: Runtime) -> None:
    with rt.db.unit_of_work() as session:
        for key in PURPOSES:
            basis = "legitimate_interest" if key == "analytics" else "consent"
            catalogue.put_purpose(
                session, key=key, name=key, description="", legal_basis=basis, expires_after_days=None, now=NOW
            )
        if catalogue.get_notice(session, "terms", 1, "en") is None:
            catalogue.add_notice_version(
                session, key="terms", language="en", title="Terms", text="x", purposes=["marketing"], url=None, now=NOW
            )


def record(rt: Runtime, profile_id: str, said: list[Said]) -> None:
    """Record each statement in its own transaction, in the order given."""
    for item in said:
        occurred = NOW - timedelta(minutes=item.minutes_ago)
        expires = None if item.expires_in is None else NOW + timedelta(minutes=item.expires_in)
        if expires is not None and expires <= occurred:
            expires = occurred + timedelta(minutes=1)
        statement = Statement(
            purpose=item.purpose,
            channel=item.channel,
            status=item.status,
            method="form",
            notice=NOTICE if item.status in ("given", "renewed") and item.purpose != "analytics" else None,
            occurred_at=occurred,
            expires_at=expires,
        )
        with rt.db.unit_of_work() as session:
            service.record(
                session,
                [(profile_id, statement)],
                actor={"type": "system", "id": "test"},
                key=rt.signing,
                settings=rt.settings,
                now=NOW,
            )


def stored_state(rt: Runtime, profile_id: str) -> dict[tuple[str, str], State]:
    with rt.db.read() as session:
        return service.current(session, [profile_id])


def replayed_state(rt: Runtime, profile_id: str) -> dict[tuple[str, str], State]:
    """The state, derived again from the ledger's history alone."""
    with rt.db.read() as session:
        bodies = [body for body, _, _ in service.history(session, [profile_id], limit=1000)]
    return service.fold(service.state_of(body) for body in bodies)


def summary(state: dict[tuple[str, str], State]) -> dict[tuple[str, str], tuple[str, datetime, datetime | None]]:
    """What does not depend on the recording order (seq and record ids do)."""
    return {key: (s.status, s.occurred_at, s.expires_at) for key, s in state.items()}


def expected_decision(said: list[Said], purpose: str, channel: str, at: datetime) -> tuple[bool, str]:
    """A direct reading of the statements: the newest about the purpose or a parent, on the channel or `all`."""
    relevant = [
        s
        for s in said
        if s.channel in (channel, "all") and (purpose == s.purpose or purpose.startswith(s.purpose + "."))
    ]
    if purpose == "analytics":
        latest = min(relevant, key=lambda s: s.minutes_ago, default=None)
        objected = latest is not None and latest.status in ("refused", "withdrawn")
        return (False, "objected") if objected else (True, "legal_basis:legitimate_interest")
    if not relevant:
        return False, "no_consent"
    latest = min(relevant, key=lambda s: s.minutes_ago)
    if latest.status in ("given", "renewed"):
        occurred = NOW - timedelta(minutes=latest.minutes_ago)
        expires = None if latest.expires_in is None else NOW + timedelta(minutes=latest.expires_in)
        if expires is not None and expires <= occurred:
            expires = occurred + timedelta(minutes=1)
        if expires is not None and expires <= at:
            return False, "expired"
        return True, "consent_given"
    return False, latest.status


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(said=statements(), data=st.data())
def test_state_equals_a_replay_of_the_history_in_any_interleaving(
    rt: Runtime, said: list[Said], data: st.DataObject
) -> None:
    catalogue_ready(rt)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    record(rt, first, said)
    # The same statements recorded in another order: channels interleaved differently, late ones late.
    record(rt, second, data.draw(st.permutations(said)))

    stored = stored_state(rt, first)
    assert stored == replayed_state(rt, first)
    assert summary(stored) == summary(stored_state(rt, second)) == summary(replayed_state(rt, second))

    at = NOW + timedelta(minutes=data.draw(st.integers(min_value=-5, max_value=40)))
    with rt.db.read() as session:
        views = {key: catalogue.get_purpose(session, key) for key in PURPOSES}
        for profile_id in (first, second):
            states = service.current(session, [profile_id])
            for key, view in views.items():
                assert view is not None
                for channel in ("email", "sms", "web"):
                    decision = service.decide(view, channel, states, at)
                    assert (decision.allowed, decision.reason) == expected_decision(said, key, channel, at), (
                        key,
                        channel,
                    )
