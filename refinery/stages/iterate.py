"""Iterate: rounds one after another until asked to stop, with the reason written down.

One `iterate` at a time per project: a lock file under runs/ (an OS lock, released when the process ends, however
it ends) makes a second one stop at once with a message naming the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from refinery.errors import Interrupted, RefineryError
from refinery.project import Project
from refinery.stages.loop import Reporter, RoundSummary, run_round
from refinery.stages.measure import measure_production, production_is_current
from refinery.stages.plateau import main_metric, stop_reason
from refinery.store import ROUND_WAIT as STORE_WAIT
from refinery.store import Store


@dataclass
class IterateResult:
    """The rounds one `iterate` ran, why it stopped, and the main metric of every round so far."""

    rounds: list[RoundSummary]
    stop_reason: str
    metric: str
    history: list[dict[str, Any]] = field(default_factory=list)  # round, kind, value (baseline and production too)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def iterate(project: Project, *, rounds: int | None = None, until_plateau: bool = False,
            reporter: Reporter | None = None,
            on_round: Callable[[RoundSummary], None] | None = None) -> IterateResult:
    """Run rounds: `rounds` of them, or until the `[plateau]` rule stops (budget: `rounds`, else
    `[plateau] max_rounds`). The stop reason is recorded on the last round; `on_round` sees each summary.
    Ctrl-C raises `Interrupted`, saying which round stopped and that the next `iterate` restarts it."""
    try:
        return _iterate(project, rounds=rounds, until_plateau=until_plateau, reporter=reporter, on_round=on_round)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(project)) from None


def _interrupted(project: Project) -> str:
    """What a Ctrl-C stopped: the unfinished round (marked failed by the round itself), or a start-up."""
    last = None
    try:
        if project.store_path.is_file():
            with Store(project.store_path, wait=5) as store:
                last = store.one("SELECT number, status FROM rounds WHERE kind = 'round' ORDER BY number DESC "
                                 "LIMIT 1")
    except RefineryError:
        pass  # the store is held elsewhere: the message does without the round's number
    if last and last[1] != "done":
        return (f"round {last[0]} was interrupted and is marked failed; the next `refinery iterate` restarts it "
                f"(rounds that finished are kept).")
    return ("the round was interrupted before it began; nothing of it was recorded, and the next `refinery "
            "iterate` starts it.")


def _iterate(project: Project, *, rounds: int | None, until_plateau: bool, reporter: Reporter | None,
             on_round: Callable[[RoundSummary], None] | None) -> IterateResult:
    settings = project.config.plateau
    budget = rounds or (settings.max_rounds if until_plateau else 1)
    with project_lock(project) as note_round:
        if project.config.baseline.production:
            with Store(project.store_path, wait=STORE_WAIT) as store:
                current = production_is_current(store, project)
            if not current:
                measure_production(project)
        done: list[RoundSummary] = []
        while True:
            note_round(len(done) + 1, budget)
            done.append(run_round(project, reporter=reporter))
            if on_round:
                on_round(done[-1])
            history, production = _history(project)
            if until_plateau:
                reason = stop_reason([(h["round"], h["value"]) for h in history if h["kind"] != "production"],
                                     settings, run=len(done), budget=budget, production=production)
            else:
                reason = f"ran the {budget} round{'s' if budget > 1 else ''} asked for" if len(done) >= budget \
                    else None
            if reason:
                with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
                    con.execute("UPDATE rounds SET stop_reason = ? WHERE number = ?", [reason, done[-1].number])
                return IterateResult(done, reason, settings.metric, history)


def _history(project: Project) -> tuple[list[dict[str, Any]], float | None]:
    """The main metric of the baseline, the production model and every finished round, in order."""
    with Store(project.store_path, wait=STORE_WAIT) as store:
        rows = store.frame("SELECT number, kind, metrics FROM rounds WHERE status = 'done' ORDER BY number")
    history, production = [], None
    for number, kind, metrics in rows.iter_rows():
        value = main_metric(json.loads(metrics), project.config.plateau.metric)
        if value is None or kind == "ceiling":  # oracle data: a reference to read against, not a round to beat
            continue
        if kind == "production":
            production = value
        history.append({"round": number, "kind": kind, "value": value})
    return history, production


@contextmanager
def project_lock(project: Project) -> Iterator:
    """Hold runs/iterate.lock for the duration; yields a function that notes the round in progress in it."""
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    path = project.runs_dir / "iterate.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RefineryError(f"another `refinery iterate` is running on this project: {holder}. Wait for it to "
                                f"finish, or stop it (an interrupted round restarts with the next `iterate`)."
                                ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S")

        def note_round(run: int, budget: int) -> None:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}, started {started}, on round {run} of at most {budget}")
            handle.flush()

        yield note_round
    finally:
        handle.close()
