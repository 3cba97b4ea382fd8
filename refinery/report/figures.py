"""The report's figures as data: what `page.build_report` gathers from the store, and what the page, its plots and
the terminal summary read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Report:
    """The figures of every round, as plain rows (JSON-ready). Rounds are ordered by number: production (-1),
    baseline (0), then the training rounds."""

    project: str
    store: str
    created_at: str
    rounds: list[dict[str, Any]]  # number, kind, status, trained_on, pass rates per split, weighted score, seconds
    checks: list[dict[str, Any]]  # round, check, applies, passed, rate (test split)
    patterns: list[dict[str, Any]]  # each cluster with its history into the next round
    added: list[dict[str, Any]]  # round, template, pattern, status, examples (generated examples per round)
    outcomes: list[dict[str, Any]]  # round, outcome, candidates (every rendered counterexample)
    mix: list[dict[str, Any]]  # round, answer accuracy with/without the cue, <think> leakage, mean tokens
    sweep: dict[str, Any] | None  # the latest `refinery mix --sweep` (a sweep of reasoning_share alone)
    mix_section: bool  # whether the reasoning/direct mix section is shown (see `_has_mix`)
    failure_map: list[dict[str, Any]]  # round, pattern, rank, label, example_id, x, y (PCA of input embeddings)
    map_variance: list[float]  # variance explained by the map's two components
    train_examples: int = 0  # active examples in the train split now (what the next round starts from)
    judges: list[dict[str, Any]] = field(default_factory=list)  # each judge check's calibration (judge.Calibration)
    drift: dict[str, Any] | None = None  # the latest `refinery drift` run (drift.DriftReport.to_json())
    recipe: dict[str, Any] | None = None  # the latest `refinery sweep` of other keys (its stored document)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.rounds if r["status"] == "done"]

    @property
    def trained(self) -> list[dict[str, Any]]:
        """The finished training rounds (not the baseline or production)."""
        return [r for r in self.done if r["kind"] == "round"]

    def reference(self, kind: str) -> dict[str, Any] | None:
        """The finished baseline or production round, if the project measured one."""
        return next((r for r in reversed(self.done) if r["kind"] == kind), None)
