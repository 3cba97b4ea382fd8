"""Evaluate: run every check on every prediction, then sum the results into metrics per split and per check."""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl

from refinery.rules import Check, RuleSet

RESULT_SCHEMA = {"example_id": pl.String, "variant": pl.String, "rule_file": pl.String, "check_name": pl.String,
                 "applies": pl.Boolean, "passed": pl.Boolean, "severity": pl.Float64, "detail": pl.String}


def run_checks(rules: RuleSet, rows: pl.DataFrame) -> pl.DataFrame:
    """One result per example, variant and check.

    `rows` has example_id, variant, input, expected (the stored output), fields (JSON text) and prediction.
    A check that does not apply to an example (its `when`/`unless` on the input) has passed = null.
    """
    records: dict[str, list] = {name: [] for name in RESULT_SCHEMA}
    fields = [json.loads(f) if f else {} for f in rows["fields"]]
    for check in rules.checks:
        run = _Compiled(check)
        for i, (example_id, variant, text, expected, prediction) in enumerate(rows.select(
                "example_id", "variant", "input", "expected", "prediction").iter_rows()):
            applies = run.applies(text)
            passed, detail = run.verdict(prediction, expected, fields[i]) if applies else (None, None)
            if passed is None:
                applies = False
            for name, value in zip(RESULT_SCHEMA, (example_id, variant, check.file, check.name, applies, passed,
                                                   check.severity, detail), strict=True):
                records[name].append(value)
    return pl.DataFrame(records, schema=RESULT_SCHEMA)


def check_one(check: Check, *, input: str, prediction: str, expected: str = "",
              fields: dict[str, Any] | None = None) -> bool | None:
    """Whether one output passes one check (None when the check does not apply): for generated examples."""
    run = _Compiled(check)
    if not run.applies(input):
        return None
    return run.verdict(prediction, expected, fields or {})[0]


def summarize(results: pl.DataFrame, splits: pl.DataFrame) -> dict[str, Any]:
    """Metrics per split: examples, pass rate (every applicable check passed), weighted score, and per check.

    `splits` maps example_id to split. Only the '' variant (the example as stored) counts here.
    """
    applied = (results.filter(pl.col("variant") == "", pl.col("applies"))
               .join(splits.select("example_id", "split"), on="example_id"))
    per_example = applied.group_by("split", "example_id").agg(
        pl.col("passed").all().alias("ok"),
        (pl.col("passed").cast(pl.Float64) * pl.col("severity")).sum().alias("won"),
        pl.col("severity").sum().alias("weight"))
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


class _Compiled:
    """A check with its regular expressions compiled once."""

    def __init__(self, check: Check):
        self.check = check
        self.when = re.compile(check.when) if check.when else None
        self.unless = re.compile(check.unless) if check.unless else None
        self.pattern = re.compile(check.pattern) if check.pattern else None
        self.extract = re.compile(check.extract) if check.extract else None

    def applies(self, text: str) -> bool:
        if self.when and not self.when.search(text):
            return False
        return not (self.unless and self.unless.search(text))

    def verdict(self, prediction: str, expected: str, fields: dict[str, Any]) -> tuple[bool | None, str]:
        kind = self.check.type
        if kind == "regex":
            return (True, "") if self.pattern.search(prediction) else (False, f"no match for /{self.pattern.pattern}/")
        if kind == "absent":
            found = self.pattern.search(prediction)
            return (False, f"found {found.group(0)!r}") if found else (True, "")
        if kind == "contains":
            return (True, "") if self.check.text in prediction else (False, f"missing {self.check.text!r}")
        if kind == "equals":
            return self._equals(prediction, expected, fields)
        return self._json_schema(prediction)

    def _value(self, text: str) -> str | None:
        found = self.extract.search(text)
        if not found:
            return None
        return (found.group(1) if found.re.groups else found.group(0)).strip()

    def _equals(self, prediction: str, expected: str, fields: dict[str, Any]) -> tuple[bool | None, str]:
        if self.check.field:
            want = fields.get(self.check.field)
            want = None if want is None else (json.dumps(want) if isinstance(want, bool) else str(want)).strip()
        else:
            want = self._value(expected)
        if want is None:  # nothing to compare with: the check does not apply to this example
            return None, ""
        got = self._value(prediction)
        if got is None:
            return False, f"no value: /{self.extract.pattern}/ did not match"
        return (True, "") if got == want else (False, f"got {got!r}, expected {want!r}")

    def _json_schema(self, prediction: str) -> tuple[bool, str]:
        import jsonschema

        text = self._value(prediction) if self.extract else prediction
        if text is None:
            return False, f"no JSON: /{self.extract.pattern}/ did not match"
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            return False, f"not JSON: {exc.msg}"
        validator = jsonschema.validators.validator_for(self.check.schema)(self.check.schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        return (False, f"schema: {error.message}") if error else (True, "")
