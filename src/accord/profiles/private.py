"""Personal traits at rest. A profile's traits are stored in two columns: `traits`, the ones that are not
personal data, in clear (segments can compare them in SQL), and `traits_enc`, the personal ones (email,
phone, names, addresses, birth dates, IP addresses, every trait a source mapping flags `pii: true`, and
every SQL computed trait declared `pii`) as one ciphertext under the profile's data key, bound to its row
(`profiles`, `traits_enc`, profile id).

Readers put the two together (`Opener.traits`); writers split them again (`split`, `Opener.seal`). A
profile written before a mapping flagged a trait holds it in clear, and reads the same; a trait whose
definition becomes personal has its stored values moved at once (`seal_stored`). Decrypted traits are
remembered for the session's transaction only, keyed by their ciphertext, like the data keys: a profile
read by the pipeline and then by its segments is decrypted once.

Names are found through a blind index per name word (`profile_words`): the keyed HMAC of each word of
the `name`, `firstName` and `lastName` traits, case-folded. Equality per word only: "ann" finds
"Ann Smith", not "Anna"."""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Delete,
    ScalarSelect,
    Select,
    Table,
    bindparam,
    delete,
    false,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from accord.db.base import listed, one_of_bound
from accord.db.bulk import insert_rows
from accord.profiles.models import Profile, ProfileWord
from accord.security.crypto import Keyring, Undecryptable, aad, is_ciphertext, key_id_of
from accord.security.datakeys import DataKeys, keyring_of

TABLE, FIELD = "profiles", "traits_enc"
WORDS = cast(Table, ProfileWord.__table__)
PROFILES = cast(Table, Profile.__table__)
WORD_KIND = "name-word"  # what the blind index of a name word is keyed under, beside identifier types
CACHE_SIZE = 20_000  # decrypted traits remembered per transaction
MAX_WORDS = 20  # per profile: a name is a few words; a long text in a name trait is not indexed whole
# Trait and property names that are personal data whatever a mapping says: identifiers, names, addresses,
# birth dates. Compared lower-cased without separators, so `firstName`, `first_name` and `First Name` match.
PII_NAMES = frozenset(
    {
        "email",
        "emailaddress",
        "phone",
        "phonenumber",
        "mobile",
        "name",
        "firstname",
        "lastname",
        "middlename",
        "fullname",
        "username",
        "address",
        "street",
        "streetaddress",
        "addressline1",
        "addressline2",
        "postalcode",
        "postcode",
        "zip",
        "zipcode",
        "birthday",
        "birthdate",
        "dateofbirth",
        "dob",
        "ip",
        "ipaddress",
    }
)
# Where a person's name may be: a `name` trait, or first and last names in either spelling.
NAME_TRAITS = (("name",), ("firstName", "lastName"), ("first_name", "last_name"))
_WORD = re.compile(r"\w+")


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def is_pii_name(name: str, flagged: Iterable[str] = ()) -> bool:
    return name in flagged or _normal(name) in PII_NAMES


def flagged_pii(session: Session) -> set[str]:
    """Trait and property names that mappings (of import runs and of webhooks) flag `pii: true`, and the
    traits whose definition declares them personal data (SQL computed traits with `pii`)."""
    from accord.sources.models import ImportRun, SourceMapping

    names: set[str] = declared_pii(session)
    seen: set[bytes] = set()
    for column in (ImportRun.mapping, SourceMapping.document):
        _flags(session.scalars(select(column), execution_options={"yield_per": 500}), names, seen)
    return names


def declared_pii(session: Session) -> set[str]:
    """Traits whose definition says they are personal data: the SQL computed traits declared `pii` (the
    declarative ones are computed when read, never stored)."""
    from accord.sources.models import SqlTrait

    return set(session.scalars(select(SqlTrait.key).where(SqlTrait.pii.is_(True))))


def _flags(documents: Iterable[Any], names: set[str], seen: set[bytes]) -> None:
    from accord.sources.mapping import MappingError, parse_mapping

    for document in documents:
        digest = hashlib.blake2b(orjson.dumps(document, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            mapping = parse_mapping(document)
        except MappingError:
            continue
        names.update(t.trait for t in mapping.traits if t.pii)
        if mapping.event is not None:
            names.update(p.prop for p in mapping.event.properties if p.pii)


@dataclass(frozen=True, slots=True)
class Personal:
    """Which traits are personal data: by name, or flagged by a mapping."""

    flagged: frozenset[str] = frozenset()

    def __call__(self, name: str) -> bool:
        return is_pii_name(name, self.flagged)

    def readable(self, name: str) -> bool:
        """Whether a trait is stored in clear, so SQL can compare it (segments' pushdown)."""
        return not self(name)


_personal: dict[str, tuple[tuple[Any, ...], Personal]] = {}
_personal_lock = threading.Lock()


@cache
def personal_stamp() -> tuple[ScalarSelect[Any], ...]:
    """What says whether the personal traits are as last found: the mappings' latest id and time, the
    count of import runs, and the count and latest change of SQL computed traits declared `pii`. Columns,
    so that a caller may read it with other stamps in one statement."""
    from accord.sources.models import ImportRun, SourceMapping, SqlTrait

    declared = SqlTrait.pii.is_(True)
    return (
        select(func.max(SourceMapping.id)).scalar_subquery(),
        select(func.max(SourceMapping.created_at)).scalar_subquery(),
        select(func.count(ImportRun.id)).scalar_subquery(),
        select(func.count(SqlTrait.key)).where(declared).scalar_subquery(),
        select(func.max(SqlTrait.updated_at)).where(declared).scalar_subquery(),
    )


@cache
def _read_stamp() -> Select[Any]:
    return select(*personal_stamp())


def personal(session: Session, stamp: Sequence[Any] | None = None) -> Personal:
    """The personal traits now: one small aggregate read (or the `personal_stamp` as the caller read it in
    this transaction); the mappings are parsed again only after one was added (mappings are versioned,
    import runs keep theirs: rows are only ever added), or after a SQL computed trait was declared `pii` or
    no longer is (the count of those and their latest change)."""
    if stamp is None:
        stamp = session.connection().execute(_read_stamp()).one()
    stamp = tuple(stamp)
    bind = str(session.get_bind().engine.url)
    cached = _personal.get(bind)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found = Personal(frozenset(flagged_pii(session)))
    with _personal_lock:
        _personal[bind] = (stamp, found)
    return found


def split(traits: Mapping[str, Any], is_personal: Personal) -> tuple[dict[str, Any], dict[str, Any]]:
    """(clear, personal): what goes into `traits`, and what into the ciphertext."""
    clear: dict[str, Any] = {}
    private: dict[str, Any] = {}
    for name, value in traits.items():
        (private if is_personal(name) else clear)[name] = value
    return clear, private


def _where(profile_id: str) -> bytes:
    return aad(TABLE, FIELD, profile_id)


@dataclass(slots=True)
class Opener:
    """Decrypts and encrypts personal traits within one transaction (one per session, see `of`)."""

    keys: DataKeys
    opened: dict[str, dict[str, Any]] = field(default_factory=dict)  # ciphertext -> personal traits

    @classmethod
    def of(cls, session: Session) -> Opener:
        """The opener of the session's current transaction: it lives as long as the transaction's data keys
        (`DataKeys.of`), so what it decrypted is forgotten when the transaction ends."""
        keys = DataKeys.of(session)
        found = session.info.get("accord.opener")
        if not isinstance(found, Opener) or found.keys is not keys:
            found = session.info["accord.opener"] = cls(keys)
        return found

    def load(self, tokens: Iterable[str | None]) -> None:
        """Read the data keys of these ciphertexts in one go."""
        self.keys.load(
            {key_id_of(t) for t in tokens if isinstance(t, str) and is_ciphertext(t) and t not in self.opened}
        )

    def personal(self, profile_id: str, token: str | None) -> dict[str, Any]:
        """The personal traits of a profile; `{}` when there are none or its data key is gone (erased)."""
        if not is_ciphertext(token):
            return {}
        assert token is not None
        found = self.opened.get(token)
        if found is None:
            try:
                found = orjson.loads(self.keys.decrypt(token, _where(profile_id)))
            except Undecryptable:
                found = {}
            if not isinstance(found, dict):
                found = {}
            self._remember(token, found)
        return found

    def traits(self, profile_id: str, clear: Mapping[str, Any] | None, token: str | None) -> dict[str, Any]:
        """Every trait of a profile, as stored in its two columns (a new dict)."""
        whole = dict(clear or {})
        if token is not None:
            whole.update(self.personal(profile_id, token))
        return whole

    def seal(self, profile_id: str, private: dict[str, Any], previous: str | None = None) -> str | None:
        """The ciphertext to store for these personal traits: `previous` again when they are what it holds
        (and it is under this profile's key), a new one otherwise, None when there are none."""
        if not private:
            return None
        if (
            is_ciphertext(previous)
            and key_id_of(previous or "") == profile_id
            and self.personal(profile_id, previous) == private
        ):
            return previous
        token = self.keys.encrypt(profile_id, orjson.dumps(private), _where(profile_id))
        self._remember(token, private)
        return token

    def _remember(self, token: str, private: dict[str, Any]) -> None:
        if len(self.opened) >= CACHE_SIZE:  # a long export or backfill: keep memory bounded
            self.opened.clear()
        self.opened[token] = private

    def store(
        self, profile_id: str, traits: Mapping[str, Any], is_personal: Personal, previous: str | None = None
    ) -> dict[str, Any]:
        """The two columns' values for these traits: {"traits": ..., "traits_enc": ...}."""
        clear, private = split(traits, is_personal)
        return {"traits": clear, "traits_enc": self.seal(profile_id, private, previous)}


def _holds(names: list[str], dialect: str) -> ColumnElement[bool]:
    """Profiles whose clear `traits` hold one of these trait names (names are plain: letters, digits, _)."""
    if not names:
        return false()
    if dialect == "postgresql":
        return or_(*(type_coerce(PROFILES.c.traits, JSONB).has_key(name) for name in names))
    return or_(*(func.json_type(PROFILES.c.traits, f'$."{name}"').is_not(None) for name in names))


def seal_stored(session: Session, names: Iterable[str], *, batch: int = 500) -> int:
    """Move the values of traits that have become personal (a definition declared `pii`) out of the profiles'
    clear `traits` into `traits_enc`, sealed under each profile's key, in this session's transaction;
    returns how many profiles changed. The rows are locked as the pipeline locks them (PostgreSQL), so a
    worker writing one of them meanwhile finishes first, and its value is moved too."""
    wanted = sorted(n for n in set(names) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", n))
    if not wanted:
        return 0
    dialect = session.get_bind().dialect.name
    is_personal = Personal(personal(session).flagged | frozenset(wanted))
    opener = Opener.of(session)
    p = PROFILES.c
    changed, last = 0, ""
    while True:
        query = select(p.id, p.traits, p.traits_enc).where(p.id > last, _holds(wanted, dialect))
        query = query.order_by(p.id).limit(batch)
        rows = session.execute(query.with_for_update() if dialect == "postgresql" else query).all()
        if not rows:
            return changed
        last = rows[-1][0]
        opener.load(token for _, _, token in rows)
        opener.keys.create(pid for pid, _, _ in rows)  # in one go: each is sealed under its profile's key
        updates = []
        for pid, clear, token in rows:
            stored = opener.store(pid, opener.traits(pid, clear, token), is_personal, token)
            updates.append({"pid": pid, "clear": stored["traits"], "sealed": stored["traits_enc"]})
        session.execute(
            PROFILES.update()
            .where(p.id == bindparam("pid"))
            .values(traits=bindparam("clear"), traits_enc=bindparam("sealed")),
            updates,
        )
        changed += len(updates)


def profile_traits(session: Session, profile: Any) -> dict[str, Any]:
    """Every trait of a `Profile` read through the ORM (a new dict: the object is left as it is)."""
    return Opener.of(session).traits(profile.id, profile.traits, profile.traits_enc)


# -- the name index --------------------------------------------------------------------------------------


def name_words(traits: Mapping[str, Any]) -> set[str]:
    """The words of a person's name traits, case-folded (NFKC): what the index holds, what a search asks."""
    words: set[str] = set()
    for keys in NAME_TRAITS:
        for key in keys:
            value = traits.get(key)
            if isinstance(value, str):
                words.update(query_words(value))
    return set(sorted(words)[:MAX_WORDS]) if len(words) > MAX_WORDS else words


def query_words(text: str) -> list[str]:
    return [w[:100] for w in _WORD.findall(unicodedata.normalize("NFKC", text).casefold())]


def blind_words(keyring: Keyring, words: Iterable[str]) -> set[str]:
    return {keyring.blind(WORD_KIND, word) for word in words}


def index_names(session: Session, changed: Mapping[str, set[str]], *, new: Container[str] = ()) -> None:
    """Bring the name index of these profiles to these words (blind them first; an empty set: none).
    Profiles in `new` were made in this transaction: they have no words to delete."""
    if not changed:
        return
    keyring = keyring_of(session)
    ids = sorted(changed)
    stored = [pid for pid in ids if pid not in new]
    connection = session.connection()
    dialect = connection.dialect.name
    for start in range(0, len(stored), 500):
        connection.execute(_delete_words(dialect), {"ids": listed(stored[start : start + 500], dialect)})
    rows = [{"word": word, "profile_id": pid} for pid in ids for word in sorted(blind_words(keyring, changed[pid]))]
    insert_rows(session, WORDS, rows)


@cache
def _delete_words(dialect: str) -> Delete:
    """Delete the words of the profiles bound as `ids` (built once per dialect)."""
    return delete(WORDS).where(one_of_bound(WORDS.c.profile_id, "ids", dialect))
