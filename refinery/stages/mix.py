"""Mix: the training set of a round, with the configured share of reasoning (<think>) examples."""

from __future__ import annotations

import math
import re
from typing import Any

import polars as pl

from refinery.config import UserPattern

CUE_MODES = ("cue-on", "cue-off")
CUE_FIGURES = ("answer_accuracy_cue_on", "mean_tokens_cue_on", "answer_accuracy_cue_off", "mean_tokens_cue_off",
               "think_leakage_cue_off", "examples_per_mode")  # what `cue_metrics` gives


def training_set(examples: pl.DataFrame, *, reasoning_share: float | None, seed: int = 0) -> pl.DataFrame:
    """The examples to train on. With a share, the kind in surplus is subsampled (seeded) until the share holds.

    Nothing is duplicated to reach a share: a set with too few of one kind trains on fewer examples, and a set
    without one of the kinds a share needs gives an empty set (the caller says why). The round first makes up
    the short kind with toggled variants (see `shortfall`), so sampling loses little.
    """
    if reasoning_share is None or examples.height == 0:
        return examples
    reasoning = examples.filter(pl.col("kind") == "reasoning")
    direct = examples.filter(pl.col("kind") == "direct")
    if reasoning_share >= 1.0:
        return reasoning
    if reasoning_share <= 0.0:
        return direct
    if reasoning.height == 0 or direct.height == 0:  # a share strictly between 0 and 1 needs both kinds
        return examples.clear()
    # Largest set with the share: keep all of the scarcer kind, subsample the other.
    total = min(reasoning.height / reasoning_share, direct.height / (1 - reasoning_share))
    keep_r, keep_d = round(total * reasoning_share), round(total * (1 - reasoning_share))
    return pl.concat([reasoning.sample(n=min(keep_r, reasoning.height), seed=seed),
                      direct.sample(n=min(keep_d, direct.height), seed=seed)]).sort("id")


def shortfall(examples: pl.DataFrame, *, reasoning_share: float | None) -> tuple[str | None, int]:
    """Which kind the share asks for more of than the data holds, and how many more would meet it with every
    example kept: ("reasoning", 12), or (None, 0) when sampling alone loses nothing."""
    if reasoning_share is None or examples.height == 0 or reasoning_share in (0.0, 1.0):
        return None, 0
    reasoning = examples.filter(pl.col("kind") == "reasoning").height
    direct = examples.height - reasoning
    # Keep every example of the kind in surplus; add the short kind until it reaches its share.
    if reasoning / examples.height < reasoning_share:
        return "reasoning", _ceil(direct * reasoning_share / (1 - reasoning_share)) - reasoning
    if reasoning / examples.height > reasoning_share:
        return "direct", _ceil(reasoning * (1 - reasoning_share) / reasoning_share) - direct
    return None, 0


def missing_kind(train: pl.DataFrame, *, reasoning_share: float | None, toggle_template: str | None) -> str | None:
    """What a person setting a share should hear when the train split lacks a kind the share needs: the round
    makes it up with the toggle template, or it has nothing to train on. None when the data can give the share."""
    if reasoning_share is None or train.height == 0:
        return None
    needed = (["reasoning"] if reasoning_share > 0 else []) + (["direct"] if reasoning_share < 1 else [])
    kind = next((k for k in needed if train.filter(pl.col("kind") == k).height == 0), None)
    if kind is None:
        return None
    other = "direct" if kind == "reasoning" else "reasoning"
    if toggle_template and 0 < reasoning_share < 1:
        made = shortfall(train, reasoning_share=reasoning_share)[1]
        return (f"the train split has no {kind} examples: the next round makes up {made} from {other} ones with "
                f"[mix] toggle_template = \"{toggle_template}\" (fewer if vetting drops some).")
    fix = (f"Ingest {kind} examples, set [mix] toggle_template to make them from {other} ones, or choose another "
           f"share." if 0 < reasoning_share < 1 else f"Ingest {kind} examples, or choose another share.")
    return (f"the train split has no {kind} examples, so no training set holds reasoning_share = "
            f"{reasoning_share:g}: the next round would stop with nothing to train on. {fix}")


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)  # 10 * 0.8 / 0.2 is 40.000000000000004 in floating point


def cue_variants(rows: pl.DataFrame, *, cue: str, cue_pattern: str,
                 setting: str = "[mix] cue_pattern") -> pl.DataFrame:
    """Each row twice: with the thinking cue (added when missing) and without it (removed), as variants. `setting`
    names where cue_pattern is written, for the error when it runs too long."""
    pattern = UserPattern(cue_pattern, setting=setting, on="input")
    off = [re.sub(r"\s{2,}", " ", pattern.sub("", text)).strip() for text in rows["input"]]
    on = [text if pattern.search(text) else f"{cue} {text}" for text in rows["input"]]
    return pl.concat([rows.with_columns(pl.Series("input", on), pl.lit("cue-on").alias("variant")),
                      rows.with_columns(pl.Series("input", off), pl.lit("cue-off").alias("variant"))])


def cue_metrics(results: pl.DataFrame, outputs: pl.DataFrame, *, answer_check: str | None,
                think: UserPattern) -> dict[str, Any]:
    """Answer accuracy with and without the cue, <think> leakage without it, and mean output tokens per mode.

    `results` are rule results of the cue variants; `outputs` has variant, output and tokens. Without an
    `answer_check` the accuracies are None. `think` is the project's think_pattern (`Config.think()`).
    """
    figures: dict[str, Any] = {}
    for mode in CUE_MODES:
        answers = results.filter(pl.col("variant") == mode, pl.col("check_name") == answer_check,
                                 pl.col("applies")) if answer_check else results.clear()
        produced = outputs.filter(pl.col("variant") == mode)
        key = mode.replace("-", "_")
        figures[f"answer_accuracy_{key}"] = round(float(answers["passed"].mean()), 4) if answers.height else None
        figures[f"mean_tokens_{key}"] = round(float(produced["tokens"].mean()), 2) if produced.height else None
    off = outputs.filter(pl.col("variant") == "cue-off")["output"]
    leaked = sum(bool(think.search(o)) for o in off)
    figures["think_leakage_cue_off"] = round(leaked / len(off), 4) if len(off) else None
    figures["examples_per_mode"] = outputs.filter(pl.col("variant") == "cue-on").height
    return figures
