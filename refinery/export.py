"""Export a split in the prompt/completion form trl's SFTTrainer reads (conversational, one turn each)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from refinery.errors import DataError
from refinery.store import SPLITS, Store

EXPORT_FORMATS = ("jsonl", "parquet")


def export_split(store: Store, path: str | Path, *, split: str = "train", fmt: str | None = None) -> int:
    """Write the active examples of `split` ("all" for every split) to `path`; return how many."""
    path = Path(path)
    fmt = fmt or {".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower(), "jsonl")
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"export format '{fmt}': expected one of: {', '.join(EXPORT_FORMATS)}.")
    if split != "all" and split not in SPLITS:
        raise DataError(f"split '{split}': expected one of: {', '.join(SPLITS)}, all.")
    where = "" if split == "all" else "AND split = ?"
    rows = store.frame(f"SELECT id, input, output, kind, split, source FROM examples "
                       f"WHERE status = 'active' {where} ORDER BY rowid", [] if split == "all" else [split])
    frame = to_prompt_completion(rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            frame.write_parquet(path)
        else:
            frame.write_ndjson(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the export: {exc.strerror}. Give a file path with -o.") from None
    return frame.height


def to_prompt_completion(rows: pl.DataFrame) -> pl.DataFrame:
    """Examples as trl's conversational prompt/completion pairs; the model's chat template renders them."""
    def turn(role: str, column: str) -> pl.Expr:
        return pl.concat_list(pl.struct(pl.lit(role).alias("role"), pl.col(column).alias("content")))

    return rows.select(
        "id",
        turn("user", "input").alias("prompt"),
        turn("assistant", "output").alias("completion"),
        "kind",
        "split",
        "source",
    )
