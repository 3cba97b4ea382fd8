"""Data intake: read JSONL, CSV and Parquet into checked examples, deduplicate them, deal splits, store them.

Files stream through in batches of `BATCH_ROWS` rows: each batch is read, checked, hashed and dealt, and its new
examples are stored at once in the store's one transaction, so memory holds one batch, not the file. One bad row
fails the whole ingest with its file, line, field and reason, and the transaction leaves the store as it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import polars as pl

from refinery.config import Config, DataSettings, UserPattern, not_a_file
from refinery.errors import DataError
from refinery.store import SPLITS, Store, content_hash, detect_kind, small_splits

DEALT = ("auto", "holdout")  # auto: test / analysis / train by the configured shares; holdout: test / analysis
KINDS = ("reasoning", "direct")
INGEST_SOURCES = ("seed", "import")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class FileReport:
    """What one file brought: rows read, examples stored, and duplicates skipped."""

    path: str
    rows: int
    inserted: int
    duplicates_in_file: int
    duplicates_in_store: int
    by_split: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestReport:
    files: list[FileReport]
    warnings: list[str] = field(default_factory=list)  # held-out splits too small to measure
    ingests: list[int] = field(default_factory=list)  # the ingests rows this ingest wrote, one per file

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def inserted(self) -> int:
        return sum(f.inserted for f in self.files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates_in_file + f.duplicates_in_store for f in self.files)


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
PLAIN_JSON = (str, int, bool, type(None))
BATCH_ROWS = 100_000  # rows read, checked and hashed at a time
INGEST_MEMORY = "1GB"  # DuckDB's memory during an ingest: the files' rows beyond it spill to the store's .tmp folder
COLUMNS = ("id", "content_hash", "input", "output", "fields", "kind", "split", "origin")


def ingest_files(store: Store, paths: list[str | Path], *, config: Config, split: str | None = None,
                 kind: str | None = None, source: str = "import") -> IngestReport:
    """Read, check and store the examples of `paths` in one transaction: all files land, or none."""
    if source not in INGEST_SOURCES:
        raise DataError(f"source '{source}': expected one of: {', '.join(INGEST_SOURCES)}.")
    think = config.think()
    with store.transaction() as con, _memory_limit(con, INGEST_MEMORY):
        reports, ingests = [], []
        for path in map(Path, paths):
            ingest_id = con.execute("INSERT INTO ingests (path, file_sha256, rows, inserted, duplicates) "
                                    "VALUES (?, '', 0, 0, 0) RETURNING id", [str(path)]).fetchall()[0][0]
            ingests.append(ingest_id)
            report = FileReport(path=str(path), rows=0, inserted=0, duplicates_in_file=0, duplicates_in_store=0)
            # DuckDB stores one batch on the other core (it lets go of Python's lock) while this thread reads and
            # hashes the next: one batch in flight at a time, so they land in the file's order.
            with ThreadPoolExecutor(max_workers=1) as writer:
                storing = None
                for rows in _checked_batches(path, data=config.data, split_given=split is not None,
                                             kind_given=kind is not None):
                    prepared = prepare_examples(rows, data=config.data, seed=config.core.seed, split=split,
                                                kind=kind, think=think, checked=True)
                    if storing is not None:
                        storing.result()
                    storing = writer.submit(_store_batch, con, prepared, report, ingests, source=source)
                if storing is not None:
                    storing.result()
            con.execute("UPDATE ingests SET file_sha256 = ?, rows = ?, inserted = ?, duplicates = ? WHERE id = ?",
                        [_file_sha256(path), report.rows, report.inserted,
                         report.duplicates_in_file + report.duplicates_in_store, ingest_id])
            for column, counts in (("split", report.by_split), ("kind", report.by_kind)):
                counts.update(con.execute(f"SELECT {column}, count(*) FROM examples WHERE ingest_id = ? "
                                          "GROUP BY ALL ORDER BY 1", [ingest_id]).fetchall())
            reports.append(report)
    return IngestReport(files=reports, warnings=small_splits(store, empty=False), ingests=ingests)


@contextmanager
def _memory_limit(con, limit: str) -> Iterator[None]:
    """DuckDB's memory_limit lowered for the block, then put back: a big ingest spills instead of growing."""
    before = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{before}'")


def _checked_batches(path: Path, *, data: DataSettings, split_given: bool,
                     kind_given: bool) -> Iterator[pl.DataFrame]:
    """The file's batches, each checked; at the first bad row, the rest of the file is read for its count of bad
    rows (the message says how many more there are), and the ingest stops with the first."""
    batches = read_batches(path, data=data, rows=BATCH_ROWS)
    for rows in batches:
        message, bad = _problems(rows, split_given=split_given, kind_given=kind_given)
        if message is not None:
            try:
                bad += sum(_problems(more, split_given=split_given, kind_given=kind_given)[1] for more in batches)
            except DataError:  # a row the rest cannot read: the first problem is still the one to fix
                pass
            raise _row_error(message, bad)
        yield rows


def read_batches(path: Path, *, data: DataSettings, need_output: bool = True,
                 rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """`read_rows`, `rows` at a time: a JSONL file is read line by line, a CSV or Parquet file by polars (columnar,
    about the file's size in memory) and handed on in slices."""
    fmt = _format(path)
    if fmt == "jsonl":
        yield from _read_jsonl(path, data, batch=rows)
        return
    table = _read_table(path, data, fmt, need_output=need_output)
    for start in range(0, table.height, rows):
        yield table.slice(start, rows)


def read_rows(path: Path, *, data: DataSettings, need_output: bool = True) -> pl.DataFrame:
    """One file as a frame of strings: input, output, kind, split, fields (JSON of the other columns), origin.
    `need_output`: a CSV or Parquet file without the output column is an error (else its outputs are null)."""
    return pl.concat(list(read_batches(path, data=data, need_output=need_output)), how="vertical")


def _format(path: Path) -> str:
    why = not_a_file(path)
    if why:
        raise DataError(f"{path}: {why}. Give the data files themselves (JSONL, CSV or Parquet).")
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}' (expected one of: "
                        f"{', '.join(sorted(FORMATS))}). Rename the file or convert it.")
    return fmt


def prepare_examples(rows: pl.DataFrame, *, data: DataSettings, seed: int, split: str | None = None,
                     kind: str | None = None, think: UserPattern | None = None, checked: bool = False) -> pl.DataFrame:
    """Check every row (unless `checked`), then give each its content hash, stable id, kind and split. `think` is
    the project's compiled think_pattern (`Config.think()`, which names the project file); by default `data`'s."""
    if not checked:
        message, bad = _problems(rows, split_given=split is not None, kind_given=kind is not None)
        if message is not None:
            raise _row_error(message, bad)
    think = think or UserPattern(data.think_pattern, setting="[data] think_pattern", dotall=True)
    texts, outputs = rows["input"].to_list(), rows["output"].to_list()  # lists: a Series is slow to iterate
    hashes = [content_hash(i, o) for i, o in zip(texts, outputs, strict=True)]
    detected: dict[str, str] = {}  # outputs repeat ("Answer: 5"): the pattern runs once per distinct output
    kinds = [kind] * len(rows) if kind else [
        k or detected.get(o) or detected.setdefault(o, detect_kind(o, think))
        for k, o in zip(rows["kind"].to_list(), outputs, strict=True)]
    wanted = [split] * len(rows) if split else [s or "auto" for s in rows["split"].to_list()]
    # Dealt by the input alone, so two rows with one input and different outputs can't straddle train and test.
    inputs = [hashlib.sha256(i.encode()).hexdigest() for i in texts]
    splits = [deal_split(h, w, data=data, seed=seed) for h, w in zip(inputs, wanted, strict=True)]
    return rows.with_columns(
        pl.Series("content_hash", hashes, dtype=pl.String),
        pl.Series("id", [h[:16] for h in hashes], dtype=pl.String),
        pl.Series("kind", kinds, dtype=pl.String),
        pl.Series("split", splits, dtype=pl.String),
    )


def deal_split(digest: str, wanted: str, *, data: DataSettings, seed: int) -> str:
    """The split of one example from the hash of its input: it depends only on the input and the seed."""
    if wanted not in DEALT:
        return wanted
    draw = int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:13], 16) / 16**13
    if draw < data.test_fraction:
        return "test"
    if wanted == "holdout" or draw < data.test_fraction + data.analysis_fraction:
        return "analysis"
    return "train"


def _read_jsonl(path: Path, data: DataSettings, *, batch: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    names = {"input": data.input_column, "output": data.output_column, "kind": data.kind_column,
             "split": data.split_column}
    columns: dict[str, list] = {name: [] for name in (*names, "fields", "origin")}
    read = 0
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        record = _fast_json(raw)
        write = _orjson_text if record is not None else _json_text
        if record is None:
            record = _parse_json_line(path, number, raw)
        for target, name in names.items():
            value = record.pop(name, None)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}:{number}: field '{name}': expected text, got {_describe(value)}. "
                                f"Write it as a JSON string.")
            columns[target].append(value)
        columns["fields"].append(write(record) if record else None)
        columns["origin"].append(f"{path}:{number}")
        if len(columns["origin"]) == batch:
            read += batch
            yield pl.DataFrame(columns, schema={name: pl.String for name in columns})
            columns = {name: [] for name in columns}
    if columns["origin"]:
        yield pl.DataFrame(columns, schema={name: pl.String for name in columns})
    elif not read:
        raise DataError(f"{path}: the file has no rows.")


def _fast_json(raw: bytes) -> dict | None:
    """One line read by orjson (5x the standard library's speed), when it is an object of text, whole numbers,
    booleans and nulls; else None, and the standard library reads it: anything orjson refuses (bad JSON, bad
    UTF-8, lone surrogates, NaN, deep nesting: `_parse_json_line` then says what is wrong, or reads what only it
    accepts), and any float, list or object inside (orjson reads an integer past 64 bits as a float; nested
    values are rare, and their floats would need the same look)."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict:
        return None
    for value in record.values():
        if type(value) not in PLAIN_JSON:
            return None
    return record


def _orjson_text(record: dict) -> str:
    return orjson.dumps(record).decode()


def _json_text(record: dict) -> str:
    """The fields as orjson writes them, for the rows it cannot read (floats may be spelled differently)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a file; a read that fails (a disk error, a file that vanished) names the file."""
    try:
        with path.open("rb") as handle:
            yield from enumerate(handle, start=1)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(f"{path}: cannot read it: {exc.strerror or exc}. Check the file (and the disk it is on), then "
                     f"ingest it again.")


def _parse_json_line(path: Path, number: int, raw: bytes) -> dict:
    try:
        record = json.loads(raw.decode("utf-8").rstrip("\r\n"))  # an error at the end is on this line
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start}). "
                        f"Save the file as UTF-8.") from None
    except json.JSONDecodeError as exc:
        at = "at the end of the line" if exc.pos >= len(exc.doc) else f"at column {exc.colno}"
        raise DataError(f"{path}:{number}: not valid JSON: {exc.msg} {at}. "
                        f"Each line must hold one JSON object.") from None
    except RecursionError:
        raise DataError(f"{path}:{number}: JSON nested too deeply to read (lists or objects inside each other "
                        f"about a thousand levels or more). Flatten the row.") from None
    except ValueError:  # the only other refusal: an integer of more than sys.get_int_max_str_digits() digits
        raise DataError(f"{path}:{number}: a number has more than {sys.get_int_max_str_digits()} digits, more than "
                        f"can be read. Write it as a JSON string.") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{number}: expected a JSON object like {{\"input\": ..., \"output\": ...}}, "
                        f"got {_describe(record)}.")
    if SURROGATE_ESCAPE.search(raw):  # a lone surrogate can only be spelled as an escape (\ud800-\udfff)
        _check_surrogates(path, number, record)
    return record


def _check_surrogates(path: Path, number: int, record: dict) -> None:
    """JSON escapes may spell half a UTF-16 pair ("\\ud800"), which is no character at all; refuse it with its
    field rather than fail later, when the text is hashed or stored."""
    for key, value in record.items():
        for what, text in ((f"key {json.dumps(key)}", key),
                           (f"field '{key}'", json.dumps(value, ensure_ascii=False))):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = f"\\u{ord(exc.object[exc.start]):04x}"
                raise DataError(f"{path}:{number}: {what}: holds a lone surrogate ({bad}), half of a UTF-16 pair "
                                f"and not a character. Write the character itself, or both halves of its "
                                f"pair.") from None


def _read_table(path: Path, data: DataSettings, fmt: str, *, need_output: bool = True) -> pl.DataFrame:
    if fmt == "csv":
        _check_csv_header(path)
    try:
        table = pl.read_csv(path, infer_schema=False) if fmt == "csv" else pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for unreadable files; all mean the same here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read this {fmt.upper()} file: {first}") from None
    if table.height == 0:
        raise DataError(f"{path}: the file has no rows.")
    names = {"input": data.input_column, "output": data.output_column}
    if not need_output and data.output_column not in table.columns:
        table = table.with_columns(pl.lit(None, dtype=pl.String).alias(data.output_column))
    for target, name in names.items():
        if name not in table.columns:
            raise DataError(f"{path}: no column '{name}' for the {target} (columns: {', '.join(table.columns)}). "
                            f"Rename the column, or set [data] {target}_column in the project file.")
    origin = _row_origins(path, fmt, table.height)
    optional = {"kind": data.kind_column, "split": data.split_column}
    taken = set(names.values()) | set(optional.values())
    rest = [c for c in table.columns if c not in taken]
    out = {target: _text_column(path, fmt, table, name, origin) for target, name in names.items()}
    for target, name in optional.items():
        out[target] = (_text_column(path, fmt, table, name, origin) if name in table.columns
                       else pl.Series(target, [None] * table.height, dtype=pl.String))
    binary = [c for c in rest if table[c].dtype in (pl.Binary, pl.Object)]
    if binary:
        raise DataError(f"{path}: column '{binary[0]}' holds binary data; extra columns are kept as JSON fields. "
                        f"Drop the column or convert it to text.")
    fields = (table.select(pl.struct(rest).struct.json_encode()).to_series() if rest
              else pl.Series([None] * table.height, dtype=pl.String))
    return pl.DataFrame({**out, "fields": fields, "origin": origin})


def _text_column(path: Path, fmt: str, table: pl.DataFrame, name: str, origin: pl.Series) -> pl.Series:
    column = table[name]
    if column.dtype == pl.String:
        return column
    if column.dtype == pl.Null:
        return column.cast(pl.String)
    bad = column.is_not_null().arg_true()
    where = origin[int(bad[0])] if len(bad) else str(path)
    raise DataError(f"{where}: field '{name}': expected text, got a {column.dtype} column. "
                    f"Store the column as strings.")


def _row_origins(path: Path, fmt: str, height: int) -> pl.Series:
    """Where each row is, for messages and the store: a CSV row's line (where it starts), a Parquet row's number."""
    if fmt == "csv":
        return pl.Series("origin", [f"{path}:{n}" for n in _csv_row_lines(path, height)], dtype=pl.String)
    return pl.Series("origin", [f"{path}: row {n}" for n in range(1, 1 + height)], dtype=pl.String)


def _check_csv_header(path: Path) -> None:
    """A column named twice is refused: the second would be read under a made-up name, and its data lost."""
    try:
        header = next(_csv_records(path), ([], 1))[0]
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except csv.Error:  # a header polars will refuse too, with its own words
        return
    seen: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name in seen:
            raise DataError(f"{path}:1: the header names column '{name}' twice (columns {seen[name]} and {number}). "
                            f"Rename one of them, or remove it: every column needs its own name.")
        seen[name] = number


def _csv_row_lines(path: Path, height: int) -> list[int]:
    """The physical line each data row of a CSV starts on: a quoted cell may hold line breaks, so row n is not
    always line n + 1. Blank lines are rows to polars too (empty ones); so they are here."""
    plain = list(range(2, 2 + height))
    if not _has_quote(path):
        return plain
    try:
        rows = [(bool(cells), line) for cells, line in _csv_records(path)][1:]  # lines only, not the cells
    except csv.Error:  # polars read it, so this is a cell over the csv module's size limit: number plainly
        return plain
    while len(rows) > height and not rows[-1][0]:  # blank lines at the end of the file
        rows.pop()
    return [line for _, line in rows] if len(rows) == height else plain


def _csv_records(path: Path) -> Iterator[tuple[list[str], int]]:
    """(cells, line the record starts on) of each record of a CSV, the header first."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        previous = 0
        for record in reader:
            yield record, previous + 1
            previous = reader.line_num


def _has_quote(path: Path) -> bool:
    with path.open("rb") as handle:
        return any(b'"' in block for block in iter(lambda: handle.read(1 << 20), b""))


def _problems(rows: pl.DataFrame, *, split_given: bool, kind_given: bool) -> tuple[str | None, int]:
    """The message for the first bad row of `rows` (None when every row is fine), and how many rows are bad."""
    problems = [
        (pl.col("input").is_null(), "input", "missing", "Every row needs an input."),
        (pl.col("input").str.strip_chars() == "", "input", "empty", "Every row needs a non-empty input."),
        (pl.col("output").is_null(), "output", "missing", "Every row needs an expected output."),
        (pl.col("output").str.strip_chars() == "", "output", "empty", "Every row needs a non-empty output."),
    ]
    if not kind_given:
        problems.append((pl.col("kind").is_not_null() & ~pl.col("kind").is_in(KINDS), "kind",
                         "not a kind", f"Use one of: {', '.join(KINDS)}, or leave it empty to detect it."))
    if not split_given:
        problems.append((pl.col("split").is_not_null() & ~pl.col("split").is_in(SPLITS + DEALT), "split",
                         "not a split", f"Use one of: {', '.join(SPLITS + DEALT)}, or leave it empty for auto."))
    flags = rows.select([cond.fill_null(False).alias(str(i)) for i, (cond, *_) in enumerate(problems)])
    any_bad = pl.any_horizontal(pl.all())
    bad_rows = flags.with_row_index("row").filter(flags.select(any_bad).to_series())
    if bad_rows.height == 0:
        return None, 0
    first = bad_rows.row(0, named=True)
    cond_index = next(i for i in range(len(problems)) if first[str(i)])
    _, column, reason, fix = problems[cond_index]
    value = rows[column][first["row"]]
    shown = f" ({json.dumps(value, ensure_ascii=False)})" if value is not None and reason.startswith("not") else ""
    return f"{rows['origin'][first['row']]}: field '{column}': {reason}{shown}. {fix}", bad_rows.height


def _row_error(message: str, bad: int) -> DataError:
    """The first bad row's message, and how many more rows have problems."""
    return DataError(message + (f" {bad - 1} more row(s) have problems too." if bad > 1 else ""))


def _store_batch(con, prepared: pl.DataFrame, report: FileReport, ingests: list[int], *, source: str) -> None:
    """Store one batch's new examples, in the file's order, and count into `report` what it brought. The first of
    each content is kept; a row whose content an earlier row of this ingest stored is a duplicate in the file, one
    the store held before is a duplicate in the store. Rows go straight into `examples` (the transaction keeps
    them until the end), so memory holds one batch."""
    firsts = prepared.select(COLUMNS).unique("content_hash", keep="first", maintain_order=True)
    con.register("batch_hashes", firsts.select("content_hash"))
    try:  # one join with the store: rows seen before are few (none in a first ingest), so they come back to filter
        matched = con.sql("SELECT e.content_hash, list_contains(?, e.ingest_id) AS here FROM batch_hashes "
                          "JOIN examples e USING (content_hash)", params=[ingests]).pl()
    finally:
        con.unregister("batch_hashes")
    here, before = int(matched["here"].sum()), matched.height
    new = firsts.filter(~pl.col("content_hash").is_in(matched["content_hash"].implode())) if before else firsts
    con.register("batch_rows", new)
    try:  # DuckDB keeps a scan's order on insert (preserve_insertion_order), so rows land in the file's order
        con.execute("""
            INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source, ingest_id, origin)
            SELECT id, content_hash, input, output, CAST(fields AS JSON), kind, split, ?, ?, origin FROM batch_rows""",
                    [source, ingests[-1]])
    finally:
        con.unregister("batch_rows")
    kept = firsts.height
    report.rows += prepared.height
    report.inserted += kept - before
    report.duplicates_in_file += prepared.height - kept + here
    report.duplicates_in_store += before - here


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return digest.hexdigest()


def _describe(value: object) -> str:
    kinds = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}
    name = kinds.get(type(value), type(value).__name__)
    return f"{name} ({json.dumps(value, ensure_ascii=False)[:40]})"
