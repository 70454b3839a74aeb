"""The key files against the database they are meant for: a process refuses to start with a key-encryption
key file that cannot open the stored data keys, or a blind-index key file other than the one the stored
identifiers were indexed with (missing, so a new one was just made, or another installation's), instead
of writing new data under it while the old stays unreadable or unfound."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from accord.security.keys import KeyProvider, KeyringError

if TYPE_CHECKING:
    from accord.db.engine import Database

# One index lookup per KEK id in use (there are one or two), however many data keys there are.
_NEXT_KEK_ID = text("SELECT min(kek_id) FROM data_keys WHERE kek_id > :after")


def kek_ids_in_use(engine: Engine) -> list[str]:
    """The ids of the KEKs that wrap stored data keys ([] before the first migration)."""
    if not inspect(engine).has_table("data_keys"):
        return []
    found: list[str] = []
    with engine.connect() as connection:
        while (kek_id := connection.execute(_NEXT_KEK_ID, {"after": found[-1] if found else ""}).scalar()) is not None:
            found.append(str(kek_id))
    return found


def check(engine: Engine, provider: KeyProvider, path: Path, *, created: bool) -> None:
    """KeyringError when data keys are wrapped under a KEK `provider` does not hold. A file this process
    `created` (there was none) is removed again, so that restoring the right one is all it takes."""
    unknown = sorted(set(kek_ids_in_use(engine)) - set(provider.known()))
    if not unknown:
        return
    if created:
        path.unlink(missing_ok=True)
        why = "was missing (a new one was made and removed again)"
    else:
        why = "holds other keys (another installation's, or an older copy)"
    raise KeyringError(
        f"the key-encryption key file {path} {why}: this database's data keys are wrapped under "
        f"{len(unknown)} key(s) it does not hold ({', '.join(k[:12] for k in unknown)}). Without them no "
        "personal data can be read. Restore the file from its backup, or point ACCORD_KEK_FILE at it."
    )


def check_blind_index(db: Database, path: Path, *, created: bool) -> None:
    """KeyringError when the stored identifiers were indexed under another blind-index key than the one
    `db`'s keyring holds (`accord.identity.blind.indexed_under`: a few sealed identifiers, decrypted and
    indexed again, or where none opens, a few profiles' names). Run after `check`, so the data keys open. A
    file this process `created` is removed."""
    from accord.identity.blind import indexed_under  # the identity feature builds on this package

    assert db.keyring is not None
    with db.read() as session:
        checked, matched, what = indexed_under(session, db.keyring)
    if matched or not checked:
        return
    if created:
        path.unlink(missing_ok=True)
        why = "was missing (a new one was made and removed again)"
    else:
        why = "holds another key (another installation's, or an older copy)"
    lost = (
        "no stored email or phone would be found again, and every returning customer would get a new profile"
        if what == "identifier"
        else "no profile would be found by its name, and matching would not find the people stored"
    )
    raise KeyringError(
        f"the blind-index key file {path} {why}: none of the {checked} stored {what}(s) checked is "
        f"indexed under it. With it, {lost}. Restore the file from its backup, or point "
        "ACCORD_BLIND_INDEX_KEY_FILE at it."
    )
