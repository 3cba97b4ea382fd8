"""The store: the project's DuckDB file, migrated on open, written only inside transactions."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from refinery.config import UserPattern
from refinery.errors import StoreError
from refinery.migrations import MIGRATIONS

SPLITS = ("train", "analysis", "test", "corner")
# Fewer active examples than this in the test or analysis split and one example moves its pass rate by 5 points or
# more: too few to measure a round, or to find patterns in. Ingest and every round warn below it.
MIN_MEASURED = 20
ROUND_WAIT = 60.0  # seconds work inside a round waits for another process (`refinery status`, say) to let go


def describe_store_damage(exc: BaseException) -> str | None:
    """A store file that DuckDB cannot read (cut short by a copy that did not finish, or overwritten), in words
    with the fix; None for any other error."""
    if not isinstance(exc, (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException)):
        return None
    return (f"the store cannot be used: {exc}. Either its disk failed or is full, or the file is damaged or cut "
            f"short (a copy that did not finish?): free space, or restore the file from a copy (or move it away "
            f"and ingest the data again).")


class Store:
    """One connection to a DuckDB file. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path, *, wait: float = 10.0, read_only: bool = False):
        """Open (creating and migrating) the store; if another process holds it, retry for up to `wait` seconds.

        `read_only`: for commands that only read. Readers do not block one another (DuckDB lets many processes
        read a file), but none can read while a writer holds it. A store that does not exist yet, or that needs
        migrating, is first opened for writing once to create or migrate it."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the store's folder: {exc.strerror}. Fix [tool.refinery] "
                             f"store in the project file.") from None
        self.con = _open_reader(self.path, wait=wait) if read_only else _connect(self.path, wait=wait)
        try:
            self.check_version() if read_only else self.migrate()
        except BaseException:
            self.con.close()
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: an exception (or Ctrl-C) inside the block rolls every write back."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def frame(self, query: str, params: list[Any] | None = None) -> pl.DataFrame:
        """A query's result as a polars frame (through Arrow)."""
        return self.con.sql(query, params=params or None).pl()

    def one(self, query: str, params: list[Any] | None = None) -> tuple | None:
        """The first row of a query, or None. Fetches to the end: DuckDB refuses new work while a result is open."""
        rows = self.con.execute(query, params or []).fetchall()
        return rows[0] if rows else None

    def scalar(self, query: str, params: list[Any] | None = None) -> Any:
        row = self.one(query, params)
        return None if row is None else row[0]

    def applied_migrations(self) -> list[str]:
        return [name for (name,) in self.con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]

    def check_version(self) -> set[str]:
        """The migrations applied; an error when one is unknown (a newer refinery wrote the store)."""
        applied = set(self.applied_migrations())
        unknown = applied - {fn.__name__ for fn in MIGRATIONS}
        if unknown:
            raise StoreError(f"{self.path}: the store was written by a newer refinery (migration '{max(unknown)}' "
                             f"is unknown to this one). Upgrade refinery to open it.")
        return applied

    def migrate(self) -> list[str]:
        """Apply, each in its own transaction, the migrations this store has not seen; return their names."""
        self.con.execute("CREATE TABLE IF NOT EXISTS _migrations "
                         "(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")
        applied = self.check_version()
        ran = []
        for fn in MIGRATIONS:
            if fn.__name__ in applied:
                continue
            with self.transaction() as con:
                fn(con)
                con.execute("INSERT INTO _migrations (name) VALUES (?)", [fn.__name__])
            ran.append(fn.__name__)
        return ran


def _open_reader(path: Path, *, wait: float) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a store that has every migration this refinery knows; a store that does not exist
    yet, or lacks one, is first opened for writing once to create or migrate it."""
    if path.exists():
        con = _connect(path, wait=wait, read_only=True)
        try:
            applied = {name for (name,) in con.execute("SELECT name FROM _migrations").fetchall()}
        except duckdb.CatalogException:
            applied = set()
        if {fn.__name__ for fn in MIGRATIONS} <= applied:
            return con
        con.close()
    Store(path, wait=wait).close()
    return _connect(path, wait=wait, read_only=True)


def _connect(path: Path, *, wait: float, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" not in message.lower():
                raise StoreError(f"{path}: cannot open the store: {message}") from None
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        except duckdb.Error as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}. Is it a DuckDB file?") from None
    pid = re.search(r"PID (\d+)", message)
    holder = f" (PID {pid.group(1)})" if pid else ""
    if read_only:
        raise StoreError(f"{path}: another process{holder} is writing to the store, and DuckDB lets no process "
                         f"read a file while one writes to it. Wait for it to finish, then run the command "
                         f"again.") from None
    raise StoreError(f"{path}: the store is in use by another process{holder}. Wait for it to finish "
                     f"or stop it, then run the command again.") from None


def small_splits(store: Store, *, empty: bool = True) -> list[str]:
    """A warning for each of the test and analysis splits with fewer than MIN_MEASURED active examples (`empty`:
    an empty split too)."""
    counts = dict(store.con.execute("SELECT split, count(*) FROM examples WHERE status = 'active' "
                                    "AND split IN ('test', 'analysis') GROUP BY split").fetchall())
    out = []
    for split in ("test", "analysis"):
        n = counts.get(split, 0)
        if n >= MIN_MEASURED or (n == 0 and not empty):
            continue
        what = "the figures of every round" if split == "test" else "the failure patterns"
        size = f"has {n} example{'s' if n != 1 else ''}" if n else "is empty"
        moves = f": one example moves its pass rate by {100 / n:.0f} points" if n else ""
        out.append(f"the {split} split {size} (fewer than {MIN_MEASURED}){moves}, too few for {what} to mean "
                   f"much. Ingest more held-out examples: `refinery ingest FILE --split holdout`.")
    return out


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame) -> None:
    """Insert every row of `frame` into `table`, matching columns by name (Arrow, no Python row loop)."""
    con.register("incoming_frame", frame)
    columns = ", ".join(frame.columns)
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_frame")
    con.unregister("incoming_frame")


def content_hash(input_text: str, output_text: str) -> str:
    """The identity of an example: two rows with the same input and output are the same example. The pair is hashed
    as JSON, an encoding no two different pairs share (joining the texts with a separator let ("p\\0q", "r") and
    ("p", "q\\0r") collide)."""
    # json.dumps([input_text, output_text]) written out: the same text, without the encoder's setup per call
    return hashlib.sha256(f"[{encode_basestring_ascii(input_text)}, {encode_basestring_ascii(output_text)}]"
                          .encode()).hexdigest()


def detect_kind(output: str, think: UserPattern) -> str:
    """reasoning when the output has a thinking block (the project's `think_pattern`, from `Config.think()`: run
    with a time bound), else direct."""
    return "reasoning" if think.search(output) else "direct"


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a round's recorded process, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
