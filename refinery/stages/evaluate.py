"""Evaluate: run every check on every prediction, then sum the results into metrics per split and per check."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from refinery.rules import CompiledCheck, RuleSet

RESULT_SCHEMA = {"example_id": pl.String, "variant": pl.String, "rule_file": pl.String, "check_name": pl.String,
                 "applies": pl.Boolean, "passed": pl.Boolean, "severity": pl.Float64, "detail": pl.String}


def run_checks(rules: RuleSet, rows: pl.DataFrame) -> pl.DataFrame:
    """One result per example, variant and check.

    `rows` has example_id, variant, input, expected (the stored output), fields (JSON text) and prediction.
    A check that does not apply to an example (its `when`/`unless` on the input, or nothing to compare with) has
    passed = null; a lookup check whose key is missing from the input or its table says so in the detail.
    """
    records: dict[str, list] = {name: [] for name in RESULT_SCHEMA}
    fields = [json.loads(f) if f else {} for f in rows["fields"]]
    for check in rules.checks:
        if check.type == "judge":  # judge.judge_checks answers these, in batches
            continue
        run = CompiledCheck(check)
        for i, (example_id, variant, text, expected, prediction) in enumerate(rows.select(
                "example_id", "variant", "input", "expected", "prediction").iter_rows()):
            applies = run.applies(text)
            passed, detail = run.verdict(prediction, expected, fields[i], input=text) if applies else (None, None)
            if passed is None:
                applies = False
            for name, value in zip(RESULT_SCHEMA, (example_id, variant, check.file, check.name, applies, passed,
                                                   check.severity, detail), strict=True):
                records[name].append(value)
    return pl.DataFrame(records, schema=RESULT_SCHEMA)


def summarize(results: pl.DataFrame, splits: pl.DataFrame) -> dict[str, Any]:
    """Metrics per split: examples, pass rate (every applicable check passed), weighted score, and per check.

    `splits` maps example_id to split. Only the '' variant (the example as stored) counts here.
    """
    stored = results.filter(pl.col("variant") == "").join(splits.select("example_id", "split"), on="example_id")
    applied = stored.filter(pl.col("applies"))
    # Every evaluated example counts; one that no check applies to has nothing to fail, so it passes.
    per_example = stored.group_by("split", "example_id").agg(
        pl.col("passed").filter(pl.col("applies")).all().alias("ok"),
        (pl.col("passed").cast(pl.Float64) * pl.col("severity")).filter(pl.col("applies")).sum().alias("won"),
        pl.col("severity").filter(pl.col("applies")).sum().alias("weight"))
    per_check = applied.group_by("split", "check_name").agg(
        pl.len().alias("applies"), pl.col("passed").sum().alias("passed")).sort("check_name")
    metrics: dict[str, Any] = {}
    for split, group in per_example.group_by("split"):
        checks = per_check.filter(pl.col("split") == split[0])
        metrics[split[0]] = {
            "examples": group.height,
            "pass_rate": _ratio(group["ok"].sum(), group.height),
            "weighted_score": _ratio(group["won"].sum(), group["weight"].sum()),
            "checks": {name: {"applies": n, "passed": p, "rate": _ratio(p, n)}
                       for name, n, p in checks.select("check_name", "applies", "passed").iter_rows()},
        }
    return dict(sorted(metrics.items()))


def _ratio(num: float, den: float) -> float:
    return round(float(num) / float(den), 4) if den else 0.0
