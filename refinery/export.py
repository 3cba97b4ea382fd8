"""Export a split in the prompt/completion form trl's SFTTrainer reads, or the preference pairs in the
prompt/chosen/rejected form its DPOTrainer reads (conversational, one turn each)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from refinery.config import display_path
from refinery.errors import DataError
from refinery.project import Project
from refinery.store import SPLITS, Store

EXPORT_FORMATS = ("jsonl", "parquet")


def export_target(project: Project, output: str | Path | None, *, split: str, fmt: str | None = None,
                  force: bool = False) -> Path:
    """Where an export goes: `output`, else runs/export/SPLIT.jsonl (or .parquet: refinery's own file, rewritten
    freely). Never the store, nor a file refinery keeps in the runs folder; another existing file only with
    `force`."""
    if output is None:
        return project.runs_dir / "export" / f"{split}.{'parquet' if fmt == 'parquet' else 'jsonl'}"
    path, shown = Path(output), str(output)  # as given: a link is named, not what it points to
    resolved, store, runs = path.resolve(), project.store_path.resolve(), project.runs_dir.resolve()
    there = path.exists() or path.is_symlink()
    if resolved in (store, store.with_name(store.name + ".wal")):
        raise DataError(f"{shown}: that is the project's store; an export there would destroy it. Give another "
                        f"file with -o.")
    if path.is_dir():
        raise DataError(f"{shown}: that is a folder. Give a file path with -o.")
    if there and resolved.is_relative_to(runs) and not resolved.is_relative_to(runs / "export"):
        folder = display_path(project.runs_dir)
        raise DataError(f"{shown}: refinery keeps this file in {folder}/, and an export over it would break the "
                        f"project. Give a new file, outside {folder}/ or under {folder}/export/.")
    if there and not force:
        raise DataError(f"{shown}: the file exists. Pass --force to write over it, or give another file with -o.")
    return path


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
    from refinery.pairs import active_pairs

    path = Path(path)
    fmt = _format(path, fmt)
    return _write(to_preference(active_pairs(store)), path, fmt)


def _format(path: Path, fmt: str | None) -> str:
    fmt = fmt or {".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower(), "jsonl")
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"export format '{fmt}': expected one of: {', '.join(EXPORT_FORMATS)}.")
    return fmt


def _write(frame: pl.DataFrame, path: Path, fmt: str) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            frame.write_parquet(path)
        else:
            frame.write_ndjson(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the export: {exc.strerror}. Give a file path with -o.") from None
    return frame.height


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
