"""Running imports the way the CLI and the API do, and reading back what they made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from accord.profiles import service as profiles
from accord.profiles.models import ProfileEvent
from accord.profiles.private import profile_traits
from accord.runtime import Runtime
from accord.sources import imports
from accord.sources.connectors import FileInput
from accord.sources.mapping import Mapping, load_mapping
from accord.sources.models import ImportRun
from accord.sources.service import create_source
from pipeline.helpers import process

LOYALTY = """
mapping: 1
name: loyalty
fields:
  - {name: customer_id, from: Customer ID, trim: true}
  - {name: email, from: E-mail, trim: true, lower: true}
  - {name: full_name, concat: [first, last], separator: " "}
  - {name: points, cast: integer}
  - {name: joined, parse_date: "%d/%m/%Y", cast: date}
identifiers:
  - {field: customer_id, type: user_id}
  - {field: email, type: email}
traits:
  - {field: email, pii: true}
  - {field: full_name, name: name, pii: true}
  - {field: points}
  - {field: joined}
  - {field: tier}
"""

LOYALTY_CSV = (
    "Customer ID,E-mail,first,last,points,joined,tier\n"
    "1, Ann@Example.com ,Ann,Lee,120,01/02/2020,gold\n"
    "2,bob@example.com,Bob,Ray,abc,03/04/2021,silver\n"
    "3,,Cy,Fox,5,31/12/2019,bronze\n"
)


def source(rt: Runtime, name: str = "loyalty") -> str:
    with rt.db.unit_of_work() as session:
        found = imports.find_source(session, name)
        return found.id if found is not None else create_source(session, name=name).id


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def run_import(
    rt: Runtime, path: Path, mapping: str | Mapping, *, source_name: str = "loyalty", fmt: Any = None
) -> ImportRun:
    """Import a file to its end (resuming an interrupted run of it, as the CLI does)."""
    parsed = load_mapping(mapping) if isinstance(mapping, str) else mapping
    source_id = source(rt, source_name)
    found = FileInput.at(path, declared=fmt or parsed.format, csv=parsed.csv)
    print_ = found.fingerprint()
    with rt.db.unit_of_work() as session:
        run = imports.interrupted_run(
            session, source_id=source_id, print_=print_, mapping=parsed, now=imports.utcnow()
        ) or imports.create_run(
            session,
            source_id=source_id,
            mapping=parsed,
            kind="file",
            location=str(path),
            fmt=found.format,
            print_=print_,
        )
        run_id = run.id
    return imports.Runner(rt.db, rt.log).execute(run_id, found)


def run_error(rt: Runtime, run: ImportRun) -> str:
    """A run's error as its readers show it (stored sealed under the run's key), "" when it has none."""
    from accord.security.datakeys import DataKeys

    with rt.db.read() as session:
        return imports.run_error(DataKeys.of(session), run) or ""


def seed_run(rt: Runtime, folder: Path) -> str:
    """An import run of source "loyalty" over LOYALTY_CSV: two rows imported, one rejected."""
    return run_import(rt, write(folder, "seed.csv", LOYALTY_CSV), LOYALTY).id


HOOK = {
    "mapping": 1,
    "name": "hook",
    "identifiers": [{"field": "userId", "type": "user_id"}],
    "traits": [{"field": "event", "name": "last_event"}],
}


def seed_hook(rt: Runtime, source_id: str) -> None:
    """Keep the mapping `hook` (userId -> user_id, event -> trait last_event) with a source."""
    from accord.db.base import utcnow
    from accord.sources import webhooks
    from accord.sources.mapping import parse_mapping

    with rt.db.unit_of_work() as session:
        webhooks.put_mapping(
            session, source_id=source_id, name="hook", mapping=parse_mapping(HOOK), actor="test", now=utcnow()
        )


def traits(rt: Runtime, ref: str) -> dict[str, Any]:
    with rt.db.read() as session:
        profile = profiles.resolve(session, ref)
        assert profile is not None, ref
        return profile_traits(session, profile)


def versions(rt: Runtime, ref: str) -> dict[str, Any]:
    with rt.db.read() as session:
        profile = profiles.resolve(session, ref)
        assert profile is not None, ref
        return dict(profile.trait_versions)


def stored_events(rt: Runtime) -> int:
    with rt.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(ProfileEvent)) or 0)


def reconciles(run: ImportRun) -> bool:
    return run.read == run.imported + run.rejected


__all__ = ["process"]
