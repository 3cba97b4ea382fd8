"""The ceiling and the demo: what the project's recipe reaches on oracle data, and what the loop reaches.

- ceiling: a fresh copy of the demo, trained with its own settings on the train split plus every analysis
  example (`refinery ceiling`, round -2), measured on the test split: the reference every demo figure is set
  against.
- demo: a fresh copy of the demo run as `make demo` runs it (baseline, then rounds until the plateau rule stops),
  with the test pass rate and the seconds of every round and stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.demo import make_project


def run_ceiling(*, seed: int, eval_rows: int | None, train: dict[str, Any], work: Path, log) -> dict[str, Any]:
    """`refinery ceiling` on a fresh demo project (its `[train]` settings with `train` over them)."""
    from refinery.stages.measure import run_ceiling as measure

    overrides: dict[str, dict[str, Any]] = {"core": {"seed": seed}, "train": train}
    project = make_project(work / "ceiling", overrides=overrides, eval_rows=eval_rows)
    began = time.perf_counter()
    document = measure(project)
    seconds = time.perf_counter() - began
    row = _ceiling_row(document["metrics"], project.config.to_dict()["train"], seed=seed, seconds=seconds)
    log(f"ceiling: test pass {row['test_pass_rate']:.1%} of {row['test_examples']} after {row['steps']} steps on "
        f"{row['examples']} oracle examples; {seconds:.0f} s")
    return row


def run_demo(*, seed: int, eval_rows: int | None, train: dict[str, Any], work: Path, log,
             on_round=None, max_rounds: int | None = None) -> dict[str, Any]:
    """The demo as `make demo` runs it: baseline, then `iterate --until-plateau`; per-round figures."""
    from refinery.stages.iterate import iterate
    from refinery.stages.measure import run_baseline

    overrides: dict[str, dict[str, Any]] = {"core": {"seed": seed}, "train": train}
    project = make_project(work / "demo", overrides=overrides, eval_rows=eval_rows)
    began = time.perf_counter()
    baseline = run_baseline(project)
    out: dict[str, Any] = {"seed": seed, "baseline_test_pass_rate": baseline["metrics"]["test"]["pass_rate"],
                           "baseline_seconds": round(time.perf_counter() - began, 1), "rounds": []}

    clock = [time.perf_counter()]

    def keep(summary) -> None:
        wall = time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
        row = _round_row(summary, wall)  # wall time, set-up included
        out["rounds"].append(row)
        log(f"demo round {row['round']}: test pass {row['test_pass_rate']:.1%} on {row['train_examples']} examples, "
            f"{row['steps']} steps; added {row['added']}; {row['seconds']:.0f} s")
        if on_round:
            on_round(out)

    result = iterate(project, rounds=max_rounds, until_plateau=True, on_round=keep)
    out["stop_reason"] = result.stop_reason
    out["seconds"] = round(time.perf_counter() - began, 1)
    return out


def read_ceiling(root: Path) -> dict[str, Any]:
    """The ceiling a project recorded (`refinery ceiling`, round -2), in `run_ceiling`'s shape."""
    from refinery.project import load_project
    from refinery.store import Store

    project = load_project(root, environ={})
    with Store(project.store_path) as store:
        row = store.one("SELECT metrics, config FROM rounds WHERE number = -2 AND status = 'done'")
        seconds = store.scalar("SELECT sum(seconds) FROM round_stages WHERE round = -2")
    if row is None:
        raise SystemExit(f"{root}: no ceiling recorded; run `refinery ceiling` there first.")
    metrics, config = json.loads(row[0]), json.loads(row[1])
    return {**_ceiling_row(metrics, config["train"], seed=config["seed"], seconds=seconds or 0),
            "from_project": str(root)}


def _ceiling_row(metrics: dict[str, Any], train: dict[str, Any], *, seed: int, seconds: float) -> dict[str, Any]:
    """The ceiling's figures from its recorded metrics (`metrics["ceiling"]` holds what it trained on)."""
    detail, test = metrics["ceiling"], metrics["test"]
    return {"seed": seed, "examples": detail["examples"], "steps": detail["steps"],
            "train_seconds": detail["train_seconds"], "seconds": round(seconds, 1),
            "test_examples": test["examples"], "test_pass_rate": test["pass_rate"],
            "test_weighted_score": test["weighted_score"],
            "corner_pass_rate": metrics.get("corner", {}).get("pass_rate"),
            "failures": _failures(test["checks"]), "settings": train}


def _failures(checks: dict[str, Any]) -> dict[str, int]:
    """Failing outputs per check: applies - passed."""
    return {name: c["applies"] - c["passed"] for name, c in checks.items()}


def read_demo(root: Path) -> dict[str, Any]:
    """The baseline and rounds a project recorded (as `make demo` leaves them), in `run_demo`'s shape."""
    from refinery.project import load_project
    from refinery.store import Store

    project = load_project(root, environ={})
    with Store(project.store_path) as store:
        base = store.one("SELECT metrics FROM rounds WHERE number = 0 AND status = 'done'")
        base_seconds = store.scalar("SELECT sum(seconds) FROM round_stages WHERE round = 0")
        rounds = store.frame("SELECT number, stop_reason, date_diff('millisecond', started_at, finished_at) / 1000.0 "
                             "AS seconds FROM rounds WHERE kind = 'round' AND status = 'done' ORDER BY number")
    out: dict[str, Any] = {"seed": project.config.core.seed, "from_project": str(root), "rounds": [],
                           "baseline_test_pass_rate": json.loads(base[0])["test"]["pass_rate"] if base else None,
                           "baseline_seconds": round(base_seconds or 0, 1)}
    for number, stop, seconds in rounds.iter_rows():
        summary = json.loads((project.runs_dir / f"round-{number:03d}" / "summary.json").read_text())
        out["rounds"].append(_round_row(summary, seconds))
        if stop:  # one per `iterate` run
            out.setdefault("stops", []).append({"round": number, "reason": stop})
            out["stop_reason"] = stop
    out["seconds"] = round(sum(r["seconds"] for r in out["rounds"]) + out["baseline_seconds"], 1)
    return out


def _round_row(summary: Any, seconds: float) -> dict[str, Any]:
    """One round's figures from its summary (a RoundSummary or the summary.json it wrote)."""
    s = summary if isinstance(summary, dict) else summary.to_dict()
    m, train = s["metrics"], s["train"]
    return {"round": s["number"], "train_examples": train["examples"], "steps": train["steps"],
            "test_pass_rate": m["test"]["pass_rate"], "test_examples": m["test"]["examples"],
            "test_weighted_score": m["test"]["weighted_score"],
            "analysis_pass_rate": m.get("analysis", {}).get("pass_rate"),
            "corner_pass_rate": m.get("corner", {}).get("pass_rate"),
            "failures": {name: n for name, n in _failures(m["test"]["checks"]).items() if n},
            "added": sum(g.get("stored", 0) for g in s["generated"]),
            "stages": s["stages"], "seconds": round(seconds, 1)}
