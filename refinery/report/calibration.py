"""Calibration: how far a judge check can be trusted. A person's verdicts on judge results (`refinery judge label`,
the review page's judge page) are stored beside the judge's; its agreement and Cohen's kappa with them, and with the
rule checks on the same outputs, say whether its pass rates can be read as they are.

Entry point: `calibrate(store, checks=..., settings=...)`, one `Calibration` per judge check.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from refinery.config import JudgeSettings
from refinery.errors import RefineryError
from refinery.rules import RuleSet
from refinery.store import Store


@dataclass(frozen=True)
class Calibration:
    """One judge check's agreement and Cohen's kappa with a person's labels (every round), and with the rule checks
    on the same outputs (one round: does the judge fail what the rules fail?)."""

    check: str
    labels: int
    agreement: float | None
    kappa: float | None
    rule_outputs: int
    rule_agreement: float | None
    rule_kappa: float | None
    status: str  # "calibrated", or "uncalibrated: " and why


def judge_check_names(rules: RuleSet, check: str | None = None, *, required: bool = True) -> list[str]:
    """The judge checks' names (just `check`, when given, which must be one of them)."""
    names = [c.name for c in rules.checks if c.type == "judge"]
    if not names and required:
        raise RefineryError("the rules have no judge check (a [[check]] with type = \"judge\" and a rubric): add "
                            "one to label or calibrate it.")
    if check is not None and check not in names:
        raise RefineryError(f"check '{check}' is not a judge check (expected one of: {', '.join(names)}).")
    return [check] if check is not None else names


def cohen_kappa(first: list[bool], second: list[bool]) -> float | None:
    """Cohen's kappa of two raters' pass/fail verdicts on the same items, (p_o - p_e) / (1 - p_e): 1 is full
    agreement, 0 what chance gives. None when chance agreement is total (both gave a single verdict throughout),
    where kappa is undefined."""
    n = len(first)
    if n == 0 or n != len(second):
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    p_first, p_second = sum(first) / n, sum(second) / n
    chance = p_first * p_second + (1 - p_first) * (1 - p_second)
    return None if chance >= 1 else (observed - chance) / (1 - chance)


def last_round(store: Store) -> int | None:
    return store.scalar("SELECT max(number) FROM rounds WHERE status = 'done' AND number >= 0")


def judge_results(store: Store, *, checks: list[str], round: int | None = None,
                  unlabelled: bool = False) -> pl.DataFrame:
    """A round's results of the judge `checks` (default: the last finished round): round, example_id, variant,
    check_name, passed (the judge's verdict; no verdict is a fail), detail, input, expected, output, label (a
    person's, or null)."""
    number = round if round is not None else last_round(store)
    return store.frame(f"""
        SELECT r.round, r.example_id, r.variant, r.check_name, r.passed, r.detail, e.input,
               e.output AS expected, p.output, l.passed AS label
        FROM rule_results r JOIN examples e ON e.id = r.example_id
        JOIN predictions p ON p.round = r.round AND p.example_id = r.example_id AND p.variant = r.variant
        LEFT JOIN judge_labels l ON l.round = r.round AND l.example_id = r.example_id
            AND l.variant = r.variant AND l.check_name = r.check_name
        WHERE r.round = ? AND r.applies AND r.check_name IN (SELECT unnest(?))
            {'AND l.passed IS NULL' if unlabelled else ''}
        ORDER BY r.check_name, r.example_id, r.variant""", [number, checks])


def save_label(store: Store, *, round: int, example_id: str, check: str, passed: bool, variant: str = "") -> None:
    """Store a person's verdict on one judge result (replacing an earlier one)."""
    with store.transaction() as con:
        found = con.execute("SELECT count(*) FROM rule_results WHERE round = ? AND example_id = ? AND variant = ? "
                            "AND check_name = ? AND applies", [round, example_id, variant, check]).fetchone()[0]
        if not found:
            raise RefineryError(f"round {round} has no result of judge check '{check}' for example {example_id}"
                                + (f" (variant {variant!r})" if variant else "") + ": `refinery judge label "
                                f"--round {round}` lists the ones to label.")
        con.execute("INSERT OR REPLACE INTO judge_labels (round, example_id, variant, check_name, passed) "
                    "VALUES (?, ?, ?, ?, ?)", [round, example_id, variant, check, passed])


def calibrate(store: Store, *, checks: list[str], settings: JudgeSettings,
              round: int | None = None) -> list[Calibration]:
    """Each judge check's agreement with a person's labels (all rounds) and with the rule checks on the same
    outputs (in `round`, default the last finished one: the judge's verdict against "every applicable rule check
    passed"). A check with fewer than `[judge] min_labels` labels, or agreeing less than `min_agreement`, is
    uncalibrated."""
    number = round if round is not None else last_round(store)
    found = []
    for name in checks:
        labelled = store.frame("""
            SELECT r.passed AS judge, l.passed AS person FROM judge_labels l JOIN rule_results r
                ON r.round = l.round AND r.example_id = l.example_id AND r.variant = l.variant
                AND r.check_name = l.check_name
            WHERE l.check_name = ? AND r.applies AND r.passed IS NOT NULL""", [name])
        ruled = store.frame("""
            SELECT j.passed AS judge, bool_and(r.passed) AS rules FROM rule_results j JOIN rule_results r
                ON r.round = j.round AND r.example_id = j.example_id AND r.variant = j.variant AND r.applies
                AND r.check_name NOT IN (SELECT unnest(?))
            WHERE j.round = ? AND j.check_name = ? AND j.applies AND j.passed IS NOT NULL
            GROUP BY j.example_id, j.variant, j.passed HAVING bool_and(r.passed) IS NOT NULL""",
            [checks, number, name])
        found.append(_calibration(name, labelled, ruled, settings=settings))
    return found


def _calibration(name: str, labelled: pl.DataFrame, ruled: pl.DataFrame, *, settings: JudgeSettings) -> Calibration:
    judge, person = labelled["judge"].to_list(), labelled["person"].to_list()
    agreement = _agreement(judge, person)
    if len(judge) < settings.min_labels:
        status = f"uncalibrated: {len(judge)} label(s), needs {settings.min_labels} (`refinery judge label`)"
    elif agreement < settings.min_agreement:
        status = f"uncalibrated: agrees with a person on {agreement:.0%}, needs {settings.min_agreement:.0%}"
    else:
        status = "calibrated"
    by_judge, by_rules = ruled["judge"].to_list(), ruled["rules"].to_list()
    return Calibration(check=name, labels=len(judge), agreement=agreement, kappa=cohen_kappa(judge, person),
                       rule_outputs=len(by_judge), rule_agreement=_agreement(by_judge, by_rules),
                       rule_kappa=cohen_kappa(by_judge, by_rules), status=status)


def _agreement(first: list[bool], second: list[bool]) -> float | None:
    return sum(a == b for a, b in zip(first, second, strict=True)) / len(first) if first else None
