"""A real pretrained model against the bundled one: the rounds two finished projects recorded, side by side.

`--model-project DIR` is a project that ran the demo on another base model (examples/smollm2-cpu after its rounds);
the reference is a project that ran it on the bundled model on the same machine (by default the objective part's
sft arm of seed 0, run in the same invocation). Per round: the test pass rate and the seconds of the round and its
stages; per project: seconds per optimizer step, per training example and per generated token.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any


def read_rounds(root: Path) -> dict[str, Any]:
    """The finished rounds of the project at `root`, with their timings and how much they trained and generated."""
    from refinery.project import load_project
    from refinery.store import Store

    project = load_project(root, environ={})
    with Store(project.store_path, read_only=True) as store:
        numbers = [n for (n,) in store.con.execute("SELECT number FROM rounds WHERE kind = 'round' AND status = "
                                                   "'done' ORDER BY number").fetchall()]
        rounds = [_round(store, project.runs_dir, n) for n in numbers]
    if not rounds:
        raise SystemExit(f"{root}: no finished round; run `refinery iterate` there first.")
    return {"project": str(root), "base_model": project.config.core.base_model, "rounds": rounds,
            "speed": _speed(rounds)}


def _round(store, runs_dir: Path, number: int) -> dict[str, Any]:
    summary = json.loads((runs_dir / f"round-{number:03d}" / "summary.json").read_text())
    stages = dict(store.con.execute("SELECT stage, seconds FROM round_stages WHERE round = ?", [number]).fetchall())
    outputs, tokens = store.one("SELECT count(*), sum(tokens) FROM predictions WHERE round = ?", [number])
    config = json.loads(store.scalar("SELECT config FROM rounds WHERE number = ?", [number]))
    train = summary["train"]
    return {"round": number, "test_pass_rate": summary["metrics"]["test"]["pass_rate"],
            "test_examples": summary["metrics"]["test"]["examples"], "train_examples": train["examples"],
            "steps": train["steps"], "batch_size": config["train"]["batch_size"],
            "train_seconds": train["seconds"], "stages": stages, "seconds": round(sum(stages.values()), 1),
            "outputs": outputs, "generated_tokens": int(tokens or 0),
            "added": sum(g.get("stored", 0) for g in summary["generated"])}


def _speed(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over rounds: training seconds per step and per example-step, inference seconds per token."""
    def median(values: list[float]) -> float:
        return statistics.median(values)

    return {"seconds_per_step": median([r["train_seconds"] / r["steps"] for r in rounds]),
            "seconds_per_example_step": median([r["train_seconds"] / (r["steps"] * r["batch_size"])
                                                for r in rounds]),
            "seconds_per_token": median([r["stages"].get("infer", 0) / r["generated_tokens"] for r in rounds
                                         if r["generated_tokens"]] or [math.nan]),
            "seconds_per_round": median([r["seconds"] for r in rounds])}


def compare(model: Path, reference: Path) -> dict[str, Any]:
    """Both projects' rounds, and how many times slower the model is than the reference per unit of work."""
    ours, ref = read_rounds(model), read_rounds(reference)
    ratios = {key: ours["speed"][key] / ref["speed"][key] for key in ours["speed"] if ref["speed"].get(key)}
    return {"model": ours, "reference": ref, "ratios": ratios}
