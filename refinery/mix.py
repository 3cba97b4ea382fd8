"""Mix: the training set of a round, with the configured share of reasoning (<think>) examples."""

from __future__ import annotations

import polars as pl


def training_set(examples: pl.DataFrame, *, reasoning_share: float | None, seed: int = 0) -> pl.DataFrame:
    """The examples to train on. With a share, the kind in surplus is subsampled (seeded) until the share holds.

    Nothing is duplicated to reach a share: a set with too few of one kind trains on fewer examples, and a set
    without one of the kinds a share needs gives an empty set (the caller says why).
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
