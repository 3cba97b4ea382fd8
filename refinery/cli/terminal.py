"""What refinery prints in a terminal: the console, the progress of a round's stages, a round's summary with its
budget plan, the metric history of an `iterate`, and the small formatters the commands share."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
LOG_WIDTH = 160  # a wide table written to a file or a pipe (no terminal to fit) keeps one line per row


def print_wide(renderable: Any) -> None:
    """A wide table: fitted to the terminal, or LOG_WIDTH columns wide when the output is not a terminal."""
    if console.is_terminal:
        return console.print(renderable)
    Console(highlight=False, soft_wrap=True, width=LOG_WIDTH).print(renderable)


def print_metric_history(result) -> None:
    from refinery.stages.plateau import LABELS, show
    label = LABELS[result.metric][0]
    table = Table("round", "kind", label, "change", title=f"{label.capitalize()} by round")
    previous = None
    for h in result.history:
        change = "" if previous is None or h["kind"] == "production" else f"{h['value'] - previous:+.3f}"
        table.add_row(str(h["round"]), h["kind"], show(h["value"], result.metric), change)
        previous = h["value"] if h["kind"] != "production" else previous
    console.print(table)
    console.print(f"Stopped: {result.stop_reason}")


class StageReporter:
    """A progress bar for the running stage and a line for each finished one, on stderr."""

    def __enter__(self) -> StageReporter:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.out = Console(stderr=True, highlight=False, soft_wrap=True)  # a long note stays one line in a log
        self.bar = Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.out, transient=True)
        self.task = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar.live.is_started:
            self.bar.stop()

    def begin(self, title: str, stage: str) -> None:
        """A title line, then the bar for the first stage (for commands that are not rounds)."""
        self.out.print(title)
        self.bar.start()
        self.stage(stage)

    def restarting(self, number: int, note: str) -> None:
        self.out.print(note, markup=False)

    def started(self, number: int, examples: int) -> None:
        self.out.print(f"Round {number}: training on {examples} examples")
        self.bar.start()  # only now: an error before the round starts prints alone

    def stage(self, name: str) -> None:
        if not self.bar.live.is_started:  # at the first stage: an error before any work prints alone
            self.bar.start()
        self.task = self.bar.add_task(name, total=None)

    def progress(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def stage_done(self, name: str, seconds: float, note: str) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        self.out.print(f"  {name:<9} {seconds:6.1f} s  {note}", markup=False)

    def printing(self, show):
        """A round callback that prints the round's summary with the progress bar paused."""
        def on_round(summary) -> None:
            self.bar.stop()
            show(summary)
        return on_round


def print_round(summary) -> None:
    prev = summary.previous_metrics or {}
    total = sum(summary.stages.values())
    console.print(f"\nRound {summary.number} done in {total:.0f} s "
                  f"({', '.join(f'{k} {v:.1f} s' for k, v in summary.stages.items())})")
    versus = f"vs round {summary.previous}" if summary.previous else "vs -"
    table = Table("split", "examples", "pass rate", versus, "weighted score", title="Pass rates")
    for split, m in summary.metrics.items():
        if split == "mix":
            continue
        before = prev.get(split, {}).get("pass_rate")
        delta = f"{m['pass_rate'] - before:+.1%}" if before is not None else "-"
        table.add_row(split, str(m["examples"]), f"{m['pass_rate']:.1%}", delta, f"{m['weighted_score']:.3f}")
    console.print(table)
    for stage, counts in summary.too_long.items():  # [data] too_long at work: said every round it acts
        what = "training examples" if stage == "train" else "held-out inputs"
        console.print(f"Longer than the model's context ({counts['room']} tokens for them): {what}: "
                      f"{counts['truncated']} cut to fit, {counts['skipped']} left out ([data] too_long).")
    warn(summary.warnings)
    now = summary.metrics.get("test", {})
    for kind, metrics in summary.references.items():
        ref = metrics.get("test")
        if ref and now and not (kind == "baseline" and summary.previous == 0):
            console.print(f"vs {kind}: test pass rate {ref['pass_rate']:.1%} -> {now['pass_rate']:.1%} "
                          f"({now['pass_rate'] - ref['pass_rate']:+.1%}), weighted score {ref['weighted_score']:.3f} "
                          f"-> {now['weighted_score']:.3f}")
    test = summary.metrics.get("test", {}).get("checks", {})
    checks = Table("check", "test pass rate", versus, title="Checks on the test split")
    for name, c in test.items():
        before = prev.get("test", {}).get("checks", {}).get(name, {}).get("rate")
        delta = f"{c['rate'] - before:+.1%}" if before is not None else "-"
        checks.add_row(name, f"{c['rate']:.1%} ({c['passed']}/{c['applies']})", delta)
    console.print(checks)
    mix = summary.metrics.get("mix")
    if mix:  # only when the project sets a thinking cue ([mix] cue, cue_pattern)
        answers = (f"answer accuracy {pct(mix['answer_accuracy_cue_on'])} with the cue, "
                   f"{pct(mix['answer_accuracy_cue_off'])} without; "
                   if mix["answer_accuracy_cue_on"] is not None or mix["answer_accuracy_cue_off"] is not None else "")
        console.print(f"Thinking cue on the test split: {answers}<think> without the cue "
                      f"{pct(mix['think_leakage_cue_off'])}; mean output tokens {mix['mean_tokens_cue_on']} with, "
                      f"{mix['mean_tokens_cue_off']} without.")
    console.print("Top failure patterns (analysis split)")
    for c in summary.clusters[:3]:
        console.print(f"  #{c['rank']} {c['id']}  score {c['score']:.1f}  size {c['size']}: {c['statement']}")
        for e in c["examples"][:2]:
            console.print(f"      input    {e['input']}\n      output   {e['output']}\n      expected {e['expected']}")
    total = {k: sum(g[k] for g in summary.generated)
             for k in ("stored", "pending", "duplicate", "leak", "failed_checks", "over_cap")}
    held = (f", {total['pending']} held for review (`refinery examples --pending`)" if total["pending"] else "")
    if summary.nothing_generated:
        return console.print(f"Generated no counterexamples: {summary.nothing_generated}.", markup=False)
    print_budget(summary.budget, summary.plan)
    kept = total["stored"] + total["pending"]
    console.print(f"Generated {total['stored']} counterexamples{held} (not stored: {total['duplicate']} duplicates, "
                  f"{total['leak']} leaks, {total['failed_checks']} failing their checks, {total['over_cap']} over "
                  f"budget)" + (":" if kept else "."), markup=False)
    for g in summary.generated:
        if g["stored"] or g["pending"]:
            console.print(f"  {g['cluster'] or 'at random'}  {g['template']:<20} {g['stored'] + g['pending']}")


def print_budget(budget: list[dict], plan: dict | None) -> None:
    """"Budget 120: 36 of 120 from random analysis examples (...), 84 over 2 patterns by failing mass:" then
    "r003-c01 64 (new); ..." (a pattern a person accepted: its own share), and how many carry their feature."""
    aimed = [b for b in budget if b["cluster"] and b["share"]]
    if plan:
        console.print(f"Budget {plan['budget']}: {plan['why']}" + (":" if aimed else "."), markup=False)
    if aimed:
        console.print("  " + "; ".join(f"{b['cluster']} {b['share']} ({b['why']})" for b in aimed) + ".",
                      markup=False)
    featured = [b for b in aimed if b["feature"] and b["stored"]]
    if featured:
        console.print("Carrying the pattern's feature: " + "; ".join(
            f"{b['cluster']} {b['carrying']} of {b['stored']}" for b in featured) + ".", markup=False)


def warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"Warning: {warning}", file=sys.stderr)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def show_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False, default=str))
