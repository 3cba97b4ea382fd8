"""Data intake: read JSONL, CSV and Parquet into checked examples, deduplicate them, deal splits, store them.

A file is read whole and every row checked before anything is written; one bad row fails the whole ingest
with its file, line, field and reason, and the store is left as it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    stored_ids: list[str] = field(default_factory=list, repr=False)  # the examples this ingest added

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def inserted(self) -> int:
        return sum(f.inserted for f in self.files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates_in_file + f.duplicates_in_store for f in self.files)


def ingest_files(store: Store, paths: list[str | Path], *, config: Config, split: str | None = None,
                 kind: str | None = None, source: str = "import") -> IngestReport:
    """Read, check and store the examples of `paths` in one transaction: all files land, or none."""
    if source not in INGEST_SOURCES:
        raise DataError(f"source '{source}': expected one of: {', '.join(INGEST_SOURCES)}.")
    frames = []
    for index, path in enumerate(paths):
        rows = read_rows(Path(path), data=config.data)
        prepared = prepare_examples(rows, data=config.data, seed=config.core.seed, split=split, kind=kind,
                                    think=config.think())
        frames.append(prepared.with_columns(pl.lit(index).alias("file_index")))
    batch = pl.concat(frames, how="vertical") if frames else pl.DataFrame()
    unique = batch.unique(subset="content_hash", keep="first", maintain_order=True)
    with store.transaction() as con:
        con.register("batch_rows", unique)
        con.execute("CREATE TEMP TABLE fresh AS SELECT b.* FROM batch_rows b "
                    "ANTI JOIN examples e ON b.content_hash = e.content_hash")
        con.unregister("batch_rows")
        fresh = con.sql("SELECT * FROM fresh").pl()
        reports = []
        for index, path in enumerate(paths):
            report = _file_report(Path(path), batch, unique, fresh, index)
            ingest_id = con.execute(
                "INSERT INTO ingests (path, file_sha256, rows, inserted, duplicates) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                [report.path, _file_sha256(Path(path)), report.rows, report.inserted,
                 report.duplicates_in_file + report.duplicates_in_store]).fetchall()[0][0]
            con.execute("""
                INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source, ingest_id, origin)
                SELECT id, content_hash, input, output, CAST(fields AS JSON), kind, split, ?, ?, origin
                FROM fresh WHERE file_index = ?""", [source, ingest_id, index])
            reports.append(report)
        con.execute("DROP TABLE fresh")
    return IngestReport(files=reports, warnings=small_splits(store, empty=False), stored_ids=fresh["id"].to_list())


def read_rows(path: Path, *, data: DataSettings, need_output: bool = True) -> pl.DataFrame:
    """One file as a frame of strings: input, output, kind, split, fields (JSON of the other columns), origin.
    `need_output`: a CSV or Parquet file without the output column is an error (else its outputs are null)."""
    why = not_a_file(path)
    if why:
        raise DataError(f"{path}: {why}. Give the data files themselves (JSONL, CSV or Parquet).")
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}' (expected one of: "
                        f"{', '.join(sorted(FORMATS))}). Rename the file or convert it.")
    if fmt == "jsonl":
        return _read_jsonl(path, data)
    return _read_table(path, data, fmt, need_output=need_output)


def prepare_examples(rows: pl.DataFrame, *, data: DataSettings, seed: int, split: str | None = None,
                     kind: str | None = None, think: UserPattern | None = None) -> pl.DataFrame:
    """Check every row, then give each its content hash, stable id, kind and split. `think` is the project's
    compiled think_pattern (`Config.think()`, which names the project file); by default `data`'s."""
    _check_rows(rows, split_given=split is not None, kind_given=kind is not None)
    think = think or UserPattern(data.think_pattern, setting="[data] think_pattern", dotall=True)
    hashes = [content_hash(i, o) for i, o in zip(rows["input"], rows["output"], strict=True)]
    detected = [detect_kind(o, think) for o in rows["output"]]
    kinds = [kind] * len(rows) if kind else [k or d for k, d in zip(rows["kind"], detected, strict=True)]
    wanted = [split] * len(rows) if split else [s or "auto" for s in rows["split"]]
    # Dealt by the input alone, so two rows with one input and different outputs can't straddle train and test.
    inputs = [hashlib.sha256(i.encode()).hexdigest() for i in rows["input"]]
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


def _read_jsonl(path: Path, data: DataSettings) -> pl.DataFrame:
    columns: dict[str, list] = {"input": [], "output": [], "kind": [], "split": [], "fields": [], "origin": []}
    names = {"input": data.input_column, "output": data.output_column, "kind": data.kind_column,
             "split": data.split_column}
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        record = _parse_json_line(path, number, raw)
        for target, name in names.items():
            value = record.pop(name, None)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}:{number}: field '{name}': expected text, got {_describe(value)}. "
                                f"Write it as a JSON string.")
            columns[target].append(value)
        columns["fields"].append(json.dumps(record, ensure_ascii=False) if record else None)
        columns["origin"].append(f"{path}:{number}")
    if not columns["origin"]:
        raise DataError(f"{path}: the file has no rows.")
    return pl.DataFrame(columns, schema={name: pl.String for name in columns})


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


def _check_rows(rows: pl.DataFrame, *, split_given: bool, kind_given: bool) -> None:
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
        return
    first = bad_rows.row(0, named=True)
    cond_index = next(i for i in range(len(problems)) if first[str(i)])
    _, column, reason, fix = problems[cond_index]
    value = rows[column][first["row"]]
    shown = f" ({json.dumps(value, ensure_ascii=False)})" if value is not None and reason.startswith("not") else ""
    more = f" {bad_rows.height - 1} more row(s) have problems too." if bad_rows.height > 1 else ""
    raise DataError(f"{rows['origin'][first['row']]}: field '{column}': {reason}{shown}. {fix}{more}")


def _file_report(path: Path, batch: pl.DataFrame, unique: pl.DataFrame, fresh: pl.DataFrame,
                 index: int) -> FileReport:
    mine = fresh.filter(pl.col("file_index") == index)
    kept = unique.filter(pl.col("file_index") == index).height
    rows = batch.filter(pl.col("file_index") == index).height
    return FileReport(
        path=str(path), rows=rows, inserted=mine.height, duplicates_in_file=rows - kept,
        duplicates_in_store=kept - mine.height,
        by_split=dict(mine.group_by("split").len().sort("split").iter_rows()),
        by_kind=dict(mine.group_by("kind").len().sort("kind").iter_rows()),
    )


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
