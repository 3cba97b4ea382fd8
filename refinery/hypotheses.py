"""Hypotheses a person can check: which input features make a check fail more often, with the statistics.

For one check, every analysis example it applies to is a trial (failed or passed). Each readable feature of the
input (words, word pairs, character 3-grams, a word touching punctuation, capitals, tags, rule cues, length bands,
example fields) is
tested: failure rate with and without it, lift, and a one-sided Fisher exact p-value, adjusted for every feature
tried with the Benjamini-Hochberg false-discovery rate.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

PUNCT = "!?.,:;)"


def input_features(text: str, fields: dict[str, Any] | None = None, *,
                   cues: Iterable[tuple[str, re.Pattern]] = ()) -> set[str]:
    """The features of one input, each named so that a person can read it in a sentence."""
    plain = re.sub(r"<[^>]*>", " ", text)
    words = re.findall(r"[A-Za-z][A-Za-z']*", plain)
    lower = [w.lower() for w in words]
    out = {f"the word '{w}'" for w in lower}
    out |= {f"'{a} {b}'" for a, b in zip(lower, lower[1:])}
    for token in re.findall(r"\S+", plain.lower()):  # character 3-grams, punctuation kept: 'ny!' in 'sunny!'
        out |= {f"the characters '{token[i:i + 3]}'" for i in range(len(token) - 2)}
    out |= {f"'{m.lower()}' touches punctuation" for m in re.findall(rf"([A-Za-z]+)[{re.escape(PUNCT)}]", text)}
    if re.search(rf"[{re.escape(PUNCT)}]\s*</\w+>", text):
        out.add("punctuation just before a closing tag")
    caps = [w for w in words if len(w) > 1 and w.isupper()]
    out |= {f"'{w}' in capitals" for w in caps}
    if caps:
        out.add("a word in capitals")
    tags = set(re.findall(r"<(\w+)>", text))
    out |= {f"a <{t}> tag" for t in tags}
    if not tags:
        out.add("no tag at all")
    out |= {f"the cue of {name}" if pattern.search(text) else f"no cue of {name}" for name, pattern in cues}
    out.add(f"{_band(len(words))} words")
    for key, value in (fields or {}).items():
        if isinstance(value, (str, bool, int)) and not isinstance(value, float) and len(str(value)) <= 30:
            out.add(f"{key} = {value}")
    return out


def score_features(features: list[set[str]], failed: list[bool], *, min_count: int = 3) -> pl.DataFrame:
    """One row per feature seen at least `min_count` times: counts, rates, lift, p and q (BH), by p."""
    from scipy.stats import hypergeom

    total, fails = len(failed), int(sum(failed))
    seen: Counter[str] = Counter()
    seen_failing: Counter[str] = Counter()
    for feats, bad in zip(features, failed, strict=True):
        seen.update(feats)
        if bad:
            seen_failing.update(feats)
    names = [f for f, n in seen.items() if n >= min_count and n < total]
    if not names:
        return pl.DataFrame(schema={"feature": pl.String, "with_failed": pl.Int64, "with_total": pl.Int64,
                                    "without_failed": pl.Int64, "without_total": pl.Int64, "rate_with": pl.Float64,
                                    "rate_without": pl.Float64, "lift": pl.Float64, "p": pl.Float64,
                                    "q": pl.Float64})
    n_with = np.array([seen[f] for f in names])
    a = np.array([seen_failing[f] for f in names])
    # One-sided Fisher exact test: P(at least a failures among the n_with examples with the feature).
    p = hypergeom.sf(a - 1, total, fails, n_with)
    rate_with = a / n_with
    rate_without = (fails - a) / (total - n_with)
    lift = rate_with / np.maximum(rate_without, 1e-9)
    return pl.DataFrame({
        "feature": names, "with_failed": a, "with_total": n_with, "without_failed": fails - a,
        "without_total": total - n_with, "rate_with": rate_with, "rate_without": rate_without,
        "lift": lift, "p": p, "q": benjamini_hochberg(p),
    }).sort("p", "feature")


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """False-discovery-rate adjusted p-values (q), in the input order."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def best_hypothesis(tests: pl.DataFrame, members: list[set[str]], *, alpha: float = 0.05) -> dict[str, Any] | None:
    """The significant feature (q < alpha, failing more often with it) that covers most of a cluster's members."""
    significant = tests.filter((pl.col("q") < alpha) & (pl.col("rate_with") > pl.col("rate_without")))
    if significant.height == 0 or not members:
        return None
    coverage = {f: sum(f in m for m in members) / len(members) for f in significant["feature"]}
    ranked = significant.with_columns(pl.col("feature").replace_strict(coverage, return_dtype=pl.Float64)
                                      .alias("coverage"))
    # Character n-grams are the least readable features: one must explain clearly more to be the statement.
    readability = pl.when(pl.col("feature").str.starts_with("the characters")).then(0.8).otherwise(1.0)
    ranked = ranked.with_columns((pl.col("coverage") * (pl.col("rate_with") - pl.col("rate_without")) * readability)
                                 .alias("strength")).sort(["strength", "p", "feature"], descending=[True, False, False])
    return ranked.row(0, named=True)


def statement(check: str, hypothesis: dict[str, Any] | None, *, failing: int, size: int) -> str:
    """`emoji_correct fails: 78 % of inputs with 'sunny' touches punctuation (31/40) vs 6 % elsewhere (p < 1e-6)`."""
    if hypothesis is None:
        return f"{check} fails in {failing}/{size}; no input feature tested stands out (q < 0.05)"
    h = hypothesis
    return (f"{check} fails: {h['rate_with']:.0%} of inputs with {h['feature']} ({h['with_failed']}/"
            f"{h['with_total']}) vs {h['rate_without']:.0%} elsewhere ({format_p(h['p'])})")


def format_p(p: float) -> str:
    if p < 1e-6:
        return "p < 1e-6"
    return f"p = {p:.2g}"


def _band(n: int) -> str:
    for upper in (10, 20, 30, 40):
        if n < upper:
            return f"{upper - 10}-{upper - 1}"
    return "40+"
