"""Identifiers that are personal data (email, phone) are stored as a blind index (the identity graph's key,
found by equality) and a ciphertext under a profile's data key (for showing them to someone allowed to)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from accord.identity.models import Identity
from accord.identity.rules import PII_TYPES, Key, Rules
from accord.identity.service import current_rules
from accord.profiles.private import PROFILES, WORDS, Opener, blind_words, name_words
from accord.security.crypto import Keyring, Undecryptable, aad, is_blind
from accord.security.datakeys import DataKeys, keyring_of

TABLE = "identities"
# How many sealed identifiers `indexed_under` reads at most: the first one that opens settles it; the
# others are there for rows whose data key was destroyed (an erasure in progress).
SAMPLE = 16


def protect(rules: Rules, keyring: Keyring, keys: Iterable[Key], plain: dict[Key, str] | None = None) -> list[Key]:
    """`keys` with each personal value replaced by its blind index; `plain` learns the value of each."""
    found: list[Key] = []
    for kind, value in keys:
        if kind in rules.pii and not is_blind(value):
            key = (kind, keyring.blind(kind, value))
            if plain is not None:
                plain[key] = value
            found.append(key)
        else:
            found.append((kind, value))
    return found


def protect_one(session: Session, rules: Rules, key: Key) -> Key:
    return protect(rules, keyring_of(session), [key])[0]


def seal_value(keys: DataKeys, owner: str, key: Key, value: str) -> str:
    """The ciphertext stored beside a blind index, under `owner`'s data key, bound to its row."""
    return keys.encrypt(owner, value.encode(), aad(TABLE, key[0], key[1]))


@dataclass(slots=True)
class Revealer:
    """Shows identifiers to someone allowed to see them: the stored value, or the decrypted one."""

    keys: DataKeys

    @classmethod
    def of(cls, session: Session) -> Revealer:
        return cls(DataKeys.of(session))

    def value(self, kind: str, value: str, sealed: str | None) -> str:
        if sealed is None:
            return value
        try:
            return self.keys.decrypt(sealed, aad(TABLE, kind, value)).decode()
        except Undecryptable:
            return value  # its key is gone (an erasure in progress): the blind index is all there is


def reveal_keys(session: Session, keys: Iterable[Key]) -> dict[Key, str]:
    """The values behind blind indexes that are still stored (merge history names identifiers by them)."""
    by_type: dict[str, list[str]] = {}
    for kind, value in keys:
        if is_blind(value):
            by_type.setdefault(kind, []).append(value)
    reveal = Revealer.of(session)
    shown: dict[Key, str] = {}
    for kind, values in by_type.items():
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            for value, sealed in session.execute(
                select(Identity.value, Identity.value_enc).where(Identity.type == kind, Identity.value.in_(chunk))
            ):
                shown[(kind, value)] = reveal.value(kind, value, sealed)
    return shown


def indexed_under(session: Session, keyring: Keyring, *, sample: int = SAMPLE) -> tuple[int, bool, str]:
    """Whether the stored identifiers were indexed with `keyring`'s blind-index key: up to `sample` sealed
    identifiers of the personal types (one indexed read), each decrypted and indexed again until one
    matches its stored blind index. (how many were checked, whether one matched, what they were:
    "identifier" or "name"). A database with no such identifier that opens (only user ids and anonymous
    ids, say) is judged by its name index instead (`_names_indexed_under`); (0, False, ...) when neither
    could be: a new database, one from before identifiers were sealed, or only destroyed data keys."""
    schema = inspect(session.connection())
    if not schema.has_table(TABLE) or "value_enc" not in {c["name"] for c in schema.get_columns(TABLE)}:
        return 0, False, "identifier"  # not migrated, or before migration 0018, which indexes the values then in clear
    kinds = sorted(current_rules(session).pii | set(PII_TYPES))  # email and phone even if the rules dropped them
    rows = session.execute(
        select(Identity.type, Identity.value, Identity.value_enc)
        .where(Identity.type.in_(kinds), Identity.value_enc.is_not(None))
        .order_by(Identity.type, Identity.value)  # the primary key's order: PostgreSQL reads its index, not the table
        .limit(sample)
    ).all()
    keys = DataKeys.of(session)
    checked = 0
    for kind, value, sealed in rows:
        try:
            plain = keys.decrypt(str(sealed), aad(TABLE, kind, value)).decode()
        except Undecryptable:
            continue  # its data key is gone: nothing to compare
        checked += 1
        if keyring.blind(kind, plain) == value:
            return checked, True, "identifier"
    if checked:
        return checked, False, "identifier"
    checked, matched = _names_indexed_under(session, keyring, sample)
    return checked, matched, "name"


def _names_indexed_under(session: Session, keyring: Keyring, sample: int) -> tuple[int, bool]:
    """The same question of the name index (`profile_words`): up to `sample` profiles with indexed words,
    their name traits opened and blinded again, until one gives a word stored for it."""
    if not inspect(session.connection()).has_table(WORDS.name):
        return 0, False
    w, p = WORDS.c, PROFILES.c
    ids = list(session.scalars(select(w.profile_id).distinct().order_by(w.profile_id).limit(sample)))
    if not ids:
        return 0, False
    stored: dict[str, set[str]] = {}
    for profile_id, word in session.execute(select(w.profile_id, w.word).where(w.profile_id.in_(ids))):
        stored.setdefault(profile_id, set()).add(word)
    profiles = session.execute(select(p.id, p.traits, p.traits_enc).where(p.id.in_(ids)).order_by(p.id)).all()
    opener = Opener.of(session)
    opener.load(row[2] for row in profiles)
    checked = 0
    for profile_id, clear, sealed in profiles:
        words = blind_words(keyring, name_words(opener.traits(profile_id, clear, sealed)))
        if not words:
            continue  # its data key is gone (an erasure): nothing to compare
        checked += 1
        if words & stored.get(profile_id, set()):
            return checked, True
    return checked, False
