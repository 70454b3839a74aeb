"""Connectors: where import rows come from, presented to DuckDB as a relation called `input`.

Files (CSV, Parquet, JSON lines) are read by DuckDB itself, streaming; a CSV line the reader cannot use
(ragged, wrongly encoded, too long) is kept aside by DuckDB's reject tables and becomes a rejected row.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import orjson

from accord.sources.mapping import CsvOptions, Format, MappingError
from accord.sources.transform import quote_name, quote_text

EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 2 * 1024 * 1024  # longer CSV lines are rejected, not read


class InputError(ValueError):
    """An input that cannot be read at all (missing, empty of columns, not what its name says)."""


@dataclass(frozen=True, slots=True)
class LineReject:
    line: int
    text: str
    reason: str


class Input(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def location(self) -> str: ...

    @property
    def format(self) -> str | None: ...

    def open(self, connection: duckdb.DuckDBPyConnection) -> list[str]:
        """Define the relation `input` on `connection` and return its column names."""

    def line_rejects(self, connection: duckdb.DuckDBPyConnection) -> list[LineReject]:
        """Lines the reader refused while `input` was read to its end."""

    def fingerprint(self) -> str:
        """What identifies this input's content, to find an interrupted run of the same input."""


def detect_format(path: Path, declared: Format | None) -> Format:
    """The file's format: declared, else from its extension; checked against its first bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = declared or (EXTENSIONS.get(suffixes[-1]) if suffixes else None)
    if fmt is None:
        raise InputError(f"cannot tell the format of {path.name!r}; give it (csv, parquet or jsonl)")
    with path.open("rb") as handle:
        head = handle.read(4096)
    if fmt == "parquet":
        if not head.startswith(PARQUET_MAGIC):
            raise InputError(f"{path.name!r} is not a Parquet file (it does not start with PAR1)")
        return fmt
    if head.startswith(PARQUET_MAGIC):
        raise InputError(f"{path.name!r} is a Parquet file, not {fmt}; name it .parquet or give format: parquet")
    if head.startswith(GZIP_MAGIC):
        if not path.name.lower().endswith(".gz"):
            raise InputError(f"{path.name!r} is gzip-compressed; name it with .gz at the end")
        return fmt
    if fmt == "jsonl":
        first = head.lstrip()[:1]
        if first == b"[":
            raise InputError(f"{path.name!r} is a JSON array, not JSON lines (one object per line)")
        if first and first != b"{":
            raise InputError(f"{path.name!r} is not JSON lines: it does not start with an object")
    return fmt


@dataclass(slots=True)
class FileInput:
    """A CSV, Parquet or JSON lines file by path (an upload is saved to a file first)."""

    path: Path
    format: Format
    csv: CsvOptions
    kind: str = "file"

    @classmethod
    def at(cls, path: str | Path, *, declared: Format | None, csv: CsvOptions, kind: str = "file") -> FileInput:
        file = Path(path)
        if not file.is_file():
            raise InputError(f"no file at {str(path)[:300]!r}")
        if file.stat().st_size == 0:
            return cls(path=file, format=declared or EXTENSIONS.get(file.suffix.lower(), "csv"), csv=csv, kind=kind)
        return cls(path=file, format=detect_format(file, declared), csv=csv, kind=kind)

    @property
    def location(self) -> str:
        return str(self.path)

    def empty(self) -> bool:
        return self.path.stat().st_size == 0

    def open(self, connection: duckdb.DuckDBPyConnection) -> list[str]:
        path = quote_text(str(self.path))
        if self.format == "csv":
            options = self.csv
            reader = (
                f"read_csv({path}, all_varchar=true, header={str(options.header).lower()}, "
                f"delim={quote_text(options.delimiter)}, quote={quote_text(options.quote)}, "
                f"encoding={quote_text(options.encoding)}, max_line_size={MAX_LINE_BYTES}, "
                "store_rejects=true, rejects_table='accord_line_rejects', rejects_scan='accord_line_scans', "
                "auto_detect=false, null_padding=false, strict_mode=true)"
            )
            if not options.header:
                raise MappingError("csv.header: false needs column names, which Accord cannot guess; add a header")
            reader = self._with_columns(reader)
        elif self.format == "parquet":
            reader = f"read_parquet({path})"
        else:
            # Each key's type is whatever the rows hold; read every column as text so that a late row of
            # another type is a value to check, not a failed read.
            names = _json_keys(connection, path)
            columns = ", ".join(f"{quote_text(n)}: 'VARCHAR'" for n in names)
            reader = f"read_json({path}, format='newline_delimited', columns={{{columns}}})"
        try:
            connection.execute(f"CREATE OR REPLACE TEMP VIEW input AS SELECT * FROM {reader}")  # noqa: S608
            description = connection.execute("SELECT * FROM input LIMIT 0").description
        except duckdb.Error as error:
            raise InputError(f"cannot read {self.path.name!r} as {self.format}: {_first_line(error)}") from None
        return [str(column[0]) for column in description or []]

    def _with_columns(self, reader: str) -> str:
        """With auto-detection off, DuckDB needs the columns: read them from the header line."""
        options = self.csv
        opener = gzip.open if self.path.name.lower().endswith(".gz") else open
        codec = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "latin-1": "latin-1"}[options.encoding]
        with opener(self.path, "rb") as handle:
            head = handle.read(MAX_LINE_BYTES)
        try:
            if options.encoding == "utf-16":  # its newline is two bytes: decode first, then find it
                decoded = codecs.getincrementaldecoder(codec)(errors="replace").decode(head, final=False)
                text = decoded.split("\n", 1)[0]
                if "\ufffd" in text:
                    raise UnicodeDecodeError(codec, b"", 0, 1, "invalid")
            else:
                text = head.split(b"\n", 1)[0].decode(codec)
        except UnicodeDecodeError:
            raise InputError(f"the header line of {self.path.name!r} is not {options.encoding}") from None
        names = next(csv.reader([text.rstrip("\r\n")], delimiter=options.delimiter, quotechar=options.quote), [])
        if not names or not any(n.strip() for n in names):
            raise InputError(f"{self.path.name!r} has no header line")
        if len(set(names)) != len(names):
            raise InputError(f"the header of {self.path.name!r} names a column twice")
        columns = ", ".join(f"{quote_text(n)}: 'VARCHAR'" for n in names)
        return reader[:-1] + f", columns={{{columns}}})"

    def line_rejects(self, connection: duckdb.DuckDBPyConnection) -> list[LineReject]:
        if self.format != "csv":
            return []
        rows = connection.execute(
            "SELECT line, any_value(csv_line), string_agg(DISTINCT error_type || ': ' || error_message, '; ') "
            "FROM accord_line_rejects GROUP BY line ORDER BY line"
        ).fetchall()
        return [
            LineReject(int(line), str(text or "").replace("\x00", "\ufffd"), str(reason)[:500].replace("\x00", ""))
            for line, text, reason in rows
        ]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with self.path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


def _json_keys(connection: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    try:
        rows = connection.execute(
            f"SELECT DISTINCT unnest(json_keys(json)) FROM read_ndjson_objects({path})"  # noqa: S608
        ).fetchall()
    except duckdb.Error as error:
        raise InputError(f"cannot read the file as JSON lines: {_first_line(error)}") from None
    names = sorted(str(r[0]) for r in rows)
    if not names:
        raise InputError("the JSON lines hold no keys")
    return names


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__


@dataclass(slots=True)
class RowsInput:
    """Rows held elsewhere (rejected rows to replay), loaded into a DuckDB table as text columns."""

    rows: list[dict[str, Any]]
    columns: list[str]
    location: str
    kind: str = "replay"
    format: str | None = None

    def open(self, connection: duckdb.DuckDBPyConnection) -> list[str]:
        names = self.columns or sorted({k for row in self.rows for k in row})
        if not names:
            raise InputError("there are no rows to replay")
        definition = ", ".join(f"{quote_name(n)} VARCHAR" for n in names)
        connection.execute(f"CREATE OR REPLACE TEMP TABLE input ({definition})")
        placeholders = ", ".join("?" for _ in names)
        values = [[_text(row.get(n)) for n in names] for row in self.rows]
        if values:
            connection.executemany(f"INSERT INTO input VALUES ({placeholders})", values)  # noqa: S608
        return names

    def line_rejects(self, connection: duckdb.DuckDBPyConnection) -> list[LineReject]:
        return []

    def fingerprint(self) -> str:
        return hashlib.sha256(orjson.dumps([self.location, self.rows])).hexdigest()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value).lower() if isinstance(value, bool) else str(value)
