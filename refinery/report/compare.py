"""Compare: two rounds' outputs on the test split, side by side before the judge. Each example is asked twice, in an
order drawn for it and then swapped; it counts as a win only when both orders agree, and the share whose verdict
flipped with the order is the judge's position bias, said beside the result.

Entry point: `compare_rounds(project, a, b)`, a `Comparison` (B's wins, ties and losses against A).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from refinery.errors import RefineryError
from refinery.project import Project, resolve_base_model
from refinery.stages.judge import ASK_PICK, ask_judge, judge_name, local_judge_model
from refinery.stages.measure import KINDS
from refinery.store import Store

# The default question; `rubric` replaces it (Jinja seeing input, expected, fields, first and second).
RUBRIC = """Two replies to the same request follow. Judge which one is better: correct, and closest to the reference \
answer in content and format.

Request:
{{ input }}

Reference answer:
{{ expected }}

Reply 1:
{{ first }}

Reply 2:
{{ second }}"""
PICK = re.compile(r"(?<!\w)(?<!\d\.)(1|2|TIE)(?!\w)(?!\.\d)", re.IGNORECASE)
NAMES = {"baseline": 0, "production": -1}


@dataclass(frozen=True)
class Comparison:
    """B against A on the test split: B's wins, ties and losses (an example whose verdict flipped with the order
    counts as a tie), `score` = (wins + ties / 2) / judged with its 95 % bootstrap interval, and the judge's
    position bias: the share of judged examples that flipped, and how often it picked the reply shown first."""

    a: int
    b: int
    judge: str
    examples: int
    wins: int
    ties: int
    losses: int
    no_verdict: int
    flipped: int
    score: float | None
    low: float | None
    high: float | None
    first_picked: float | None
    warnings: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # example_id, b_first, verdicts, outcome

    @property
    def judged(self) -> int:
        return self.wins + self.ties + self.losses


def compare_rounds(project: Project, a: str | int, b: str | int, *, rubric: str | None = None, seed: int = 0,
                   answer: Callable[[list[str]], list[str]] | None = None) -> Comparison:
    """Judge B's test outputs against A's: rounds by number, or `baseline` (0) and `production` (-1). `rubric`:
    the question in Jinja (default `RUBRIC`); `answer`: prompts to answers (default: the project's judge)."""
    first, second = parse_round(a), parse_round(b)
    rows = _paired_outputs(project, first, second)
    question = rubric or RUBRIC
    asked, orders = [], []
    for row in rows.iter_rows(named=True):
        b_first = random.Random(f"{seed}:{row['example_id']}").random() < 0.5
        shown = [row["b"], row["a"]] if b_first else [row["a"], row["b"]]
        asked += [(question, render_pair(question, row, shown)), (question, render_pair(question, row, shown[::-1]))]
        orders.append(b_first)
    answers = ask_judge(project, asked, answer)
    outcomes = [_outcome(b_first, answers[2 * i], answers[2 * i + 1]) for i, b_first in enumerate(orders)]
    return _summarise(project, first, second, rows, orders, answers, outcomes, seed=seed)


def parse_round(value: str | int) -> int:
    """A round as the user names it: a number, `baseline` or `production`."""
    text = str(value).strip().lower()
    if text in NAMES:
        return NAMES[text]
    if re.fullmatch(r"-?\d{1,6}", text):
        return int(text)
    raise RefineryError(f"round {value!r}: expected a round number, baseline or production.")


def parse_pick(answer: str) -> str | None:
    """'1', '2' or 'TIE' as a word of the answer's first line ("Reply 2 is better", "**1**", "Tie."); both numbers,
    or none, is no verdict."""
    line = answer.strip().split("\n", 1)[0]
    picks = {p.upper() for p in PICK.findall(line)}
    return picks.pop() if len(picks) == 1 else None


def render_pair(rubric: str, row: dict[str, Any], shown: list[str]) -> str:
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    fields = json.loads(row["fields"]) if row.get("fields") else {}
    try:
        text = env.from_string(rubric).render(input=row["input"], expected=row["expected"], fields=fields,
                                              first=shown[0], second=shown[1])
    except TemplateError as exc:
        raise RefineryError(f"compare rubric: {exc} (it sees input, expected, fields, first and second).") from None
    return text.rstrip() + ASK_PICK


def bootstrap_interval(scores: list[float], *, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean of `scores` (seeded, so the same data gives the same
    interval)."""
    import numpy as np

    values = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _paired_outputs(project: Project, a: int, b: int) -> pl.DataFrame:
    """The test examples both rounds answered: example_id, input, expected, fields, a, b (their outputs)."""
    with Store(project.store_path, read_only=True) as store:
        for number in (a, b):
            if not store.scalar("SELECT count(*) FROM rounds WHERE number = ? AND status = 'done'", [number]):
                how = {0: "`refinery baseline`", -1: "[baseline] production and `refinery baseline`"}.get(
                    number, "`refinery iterate`")
                raise RefineryError(f"round {_name(number)} has not finished, so it has no outputs to compare: run "
                                    f"{how} first (`refinery status` lists the rounds).")
        rows = store.frame("""
            SELECT e.id AS example_id, e.input, e.output AS expected, e.fields::VARCHAR AS fields,
                   pa.output AS a, pb.output AS b
            FROM examples e
            JOIN predictions pa ON pa.example_id = e.id AND pa.round = ? AND pa.variant = ''
            JOIN predictions pb ON pb.example_id = e.id AND pb.round = ? AND pb.variant = ''
            WHERE e.split = 'test' AND e.status = 'active' ORDER BY e.id""", [a, b])
    if rows.is_empty():
        raise RefineryError(f"rounds {_name(a)} and {_name(b)} have no test example answered by both: ingest a test "
                            f"split (`refinery ingest FILE --split test`) and run the rounds again.")
    return rows


def _outcome(b_first: bool, one: str, two: str) -> str:
    """'win', 'tie' or 'loss' for B, 'flip' when the two orders disagree, 'none' when either gave no verdict."""
    picks = [parse_pick(one), parse_pick(two)]
    if None in picks:
        return "none"
    # In the first order reply 1 is B when b_first; in the swapped order reply 2 is.
    said = [_winner(picks[0], b_is="1" if b_first else "2"), _winner(picks[1], b_is="2" if b_first else "1")]
    return said[0] if said[0] == said[1] else "flip"


def _winner(pick: str, *, b_is: str) -> str:
    return "tie" if pick == "TIE" else "win" if pick == b_is else "loss"


def _summarise(project: Project, a: int, b: int, rows: pl.DataFrame, orders: list[bool], answers: list[str],
               outcomes: list[str], *, seed: int) -> Comparison:
    count = {k: outcomes.count(k) for k in ("win", "tie", "loss", "flip", "none")}
    scores = [{"win": 1.0, "loss": 0.0}.get(o, 0.5) for o in outcomes if o != "none"]
    low, high = bootstrap_interval(scores, seed=seed) if scores else (None, None)
    picks = [parse_pick(x) for x in answers]
    decided = [p for p in picks if p in ("1", "2")]
    detail = [{"example_id": i, "b_first": f, "verdicts": [answers[2 * n], answers[2 * n + 1]], "outcome": o}
              for n, (i, f, o) in enumerate(zip(rows["example_id"], orders, outcomes, strict=True))]
    return Comparison(
        a=a, b=b, judge=judge_name(project), examples=rows.height, wins=count["win"],
        ties=count["tie"] + count["flip"], losses=count["loss"], no_verdict=count["none"], flipped=count["flip"],
        score=sum(scores) / len(scores) if scores else None, low=low, high=high,
        first_picked=decided.count("1") / len(decided) if decided else None,
        warnings=_warnings(project, count), rows=detail)


def _warnings(project: Project, count: dict[str, int]) -> list[str]:
    said = []
    family = _self_judging(project)
    if family:
        said.append(f"The judge is {family}: self-preference may inflate the result for outputs that read like its "
                    f"own. Set [judge] model to another family's model to check.")
    judged = count["win"] + count["tie"] + count["loss"] + count["flip"]
    if judged and count["flip"] / judged > 0.2:
        said.append(f"The verdict flipped with the order on {count['flip']} of {judged} examples: the judge is "
                    f"biased by position, and those count as ties.")
    if count["none"]:
        said.append(f"{count['none']} example(s) got no verdict in one order or both (an answer without 1, 2 or "
                    f"TIE on its first line); they are left out of the counts.")
    return said


def _self_judging(project: Project) -> str | None:
    """A phrase when the judge is the base model or a model of its family (same architecture and vocabulary), else
    None. An endpoint's model is not inspected."""
    settings = project.config.judge
    if settings.base_url:
        return None
    if not settings.model or settings.model == project.config.core.base_model:
        return "the base model itself"
    judge = _family(local_judge_model(project))
    base = _family(resolve_base_model(project))
    return f"of the base model's family ({judge[0]}, {judge[1]} tokens)" if judge and judge == base else None


def _family(model: str) -> tuple[str, int] | None:
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    return data.get("model_type", "?"), data.get("vocab_size", 0)


def _name(number: int) -> str:
    return KINDS.get(number, str(number)) if number <= 0 else str(number)


def round_label(number: int) -> str:
    """A round as a sentence names it: "round 3", "the baseline", "the production model"."""
    return {0: "the baseline", -1: "the production model"}.get(number, f"round {number}")
