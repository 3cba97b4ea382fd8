"""Export a split in the prompt/completion form trl's SFTTrainer reads, or the preference pairs in the
prompt/chosen/rejected form its DPOTrainer reads (conversational, one turn each)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from refinery.config import display_path
from refinery.errors import DataError
from refinery.project import Project
from refinery.store import SPLITS, Store

EXPORT_FORMATS = ("jsonl", "parquet")


def export_target(project: Project, output: str | Path | None, *, split: str, fmt: str | None = None,
                  force: bool = False) -> Path:
    """Where an export goes: `output`, else runs/export/SPLIT.jsonl (or .parquet: refinery's own file, rewritten
    freely). Never the store, the project file or a file refinery keeps in the runs folder, by any name (a
    symlink or a hard link is the same file); another existing file only with `force`."""
    if output is None:
        return project.runs_dir / "export" / f"{split}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    path, shown = Path(output), str(output)  # as given: a link is named, not what it points to
    runs = project.runs_dir.resolve()
    there = path.exists() or path.is_symlink()
    kept = _kept_file(project, path) if there else None
    if kept:
        raise DataError(f"{shown}: that is {kept}; an export there would destroy it. Give another file with -o.")
    if path.is_dir():
        raise DataError(f"{shown}: that is a folder. Give a file path with -o.")
    resolved = path.resolve()
    if there and resolved.is_relative_to(runs) and not resolved.is_relative_to(runs / "export"):
        folder = display_path(project.runs_dir)
        raise DataError(f"{shown}: refinery keeps this file in {folder}/, and an export over it would break the "
                        f"project. Give a new file, outside {folder}/ or under {folder}/export/.")
    if there and not force:
        raise DataError(f"{shown}: the file exists. Pass --force to write over it, or give another file with -o.")
    return path


def _open_pipe(path: Path, shown: str) -> Any:
    """A named pipe opened for writing, if something reads it: a blocking open would wait for ever."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        raise DataError(f"{shown}: a named pipe that nothing reads, so the export would wait for ever. Start its "
                        f"reader first, or give a file path with -o.") from None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")


def _kept_file(project: Project, path: Path) -> str | None:
    """What `path` is, if it is one of the files the project lives in: compared by device and inode, so a
    symlink or a hard link to the store is caught as well as its own name."""
    store = project.store_path
    kept = {store: "the project's store", store.with_name(store.name + ".wal"): "the project's store",
            project.config_file: f"the project file ({display_path(project.config_file)})"}
    for candidate, what in kept.items():
        try:
            if os.path.samefile(path, candidate):
                return what
        except OSError:  # either side missing or unreadable: not the same file
            continue
    return None


def export_split(store: Store, path: str | Path, *, split: str = "train", fmt: str | None = None) -> int:
    """Write the active examples of `split` ("all" for every split) to `path`; return how many."""
    path = Path(path)
    fmt = _format(path, fmt)
    if split != "all" and split not in SPLITS:
        raise DataError(f"split '{split}': expected one of: {', '.join(SPLITS)}, all.")
    where = "" if split == "all" else "AND split = ?"
    rows = store.frame(f"SELECT id, input, output, kind, split, source FROM examples "
                       f"WHERE status = 'active' {where} ORDER BY rowid", [] if split == "all" else [split])
    return _write(to_prompt_completion(rows), path, fmt)


def export_pairs(store: Store, path: str | Path, *, fmt: str | None = None) -> int:
    """Write the active preference pairs of every round to `path`; return how many."""
    from refinery.stages.pairs import active_pairs

    path = Path(path)
    fmt = _format(path, fmt)
    return _write(to_preference(active_pairs(store)), path, fmt)


def _format(path: Path, fmt: str | None) -> str:
    fmt = fmt or {".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower(), "jsonl")
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"export format '{fmt}': expected one of: {', '.join(EXPORT_FORMATS)}.")
    return fmt


def _write(frame: pl.DataFrame, path: Path, fmt: str) -> int:
    """Write a file to a new name beside `path` and rename it over: a reader never sees half an export, and a
    hard link to the old file keeps the old content instead of being overwritten through the other name. A
    device or pipe (`-o /dev/stdout`) is written in place."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = path
        if not path.exists() or path.is_file():
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".part", dir=path.parent)
            os.close(handle)
            target = Path(temporary)
        elif stat.S_ISFIFO(path.stat().st_mode):
            target = _open_pipe(path, str(path))
        with target if not isinstance(target, Path) else contextlib.nullcontext():
            if fmt == "parquet":
                frame.write_parquet(target)
            else:
                frame.write_ndjson(target)
        if temporary:
            os.chmod(temporary, _mode(path))
            os.replace(temporary, path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DataError(f"{path}: cannot write the export: {_reason(exc)}. Give another file path with -o.") from None
    finally:
        if temporary and os.path.exists(temporary):
            os.unlink(temporary)
    return frame.height


def _mode(path: Path) -> int:
    """The permissions the export gets: the old file's, else what the umask gives a new file (mkstemp's are
    private)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _reason(exc: Exception) -> str:
    """A write error in words: an OSError's own, or the IO error inside a polars message."""
    text = getattr(exc, "strerror", None) or str(exc)
    inner = re.search(r"IO error: (.*?)(?: \(os error \d+\))?$", text)
    return (inner.group(1) if inner else re.sub(r" \(os error \d+\)$", "", text)) or type(exc).__name__


def _turn(role: str, column: str) -> pl.Expr:
    return pl.concat_list(pl.struct(pl.lit(role).alias("role"), pl.col(column).alias("content")))


def to_preference(pairs: pl.DataFrame) -> pl.DataFrame:
    """Pairs as trl's conversational preference data (prompt, chosen, rejected), with their lineage."""
    return pairs.select(
        "id",
        _turn("user", "prompt").alias("prompt"),
        _turn("assistant", "chosen").alias("chosen"),
        _turn("assistant", "rejected").alias("rejected"),
        "round",
        "source",
        "example_id",
        "pattern",
    )


def to_prompt_completion(rows: pl.DataFrame) -> pl.DataFrame:
    """Examples as trl's conversational prompt/completion pairs; the model's chat template renders them."""
    turn = _turn
    return rows.select(
        "id",
        turn("user", "input").alias("prompt"),
        turn("assistant", "output").alias("completion"),
        "kind",
        "split",
        "source",
    )
