"""Sample efficiency: refinery's targeted counterexamples against random augmentation and against more steps.

Per seed, three fresh copies of the demo (same seed set, base model, split deal and training seed):
- targeted: `[generate] targeting = "patterns"`, the demo's settings;
- random:   `targeting = "random"` (the same templates on random analysis examples, not aimed at any failure),
            with `per_round` set, round by round, to what the targeted arm stored in that round;
- steps:    `targeting = "off"` (no new data), on the seed set, with the targeted arm's compute: with
            `[train] warm_start` (the default) each round continues the last round's adapter for as many steps as
            the targeted arm's round; without it, round r trains the targeted arm's rounds 1..r steps at once.
Round r's model is trained on the seed set plus what rounds 1..r-1 added, so round 1 is the same seed-only model
in every arm. The steps arm's round 1 is not trained again: it is the targeted arm's round 1 (the random arm's
round 1, trained anew, checks that the arms start level).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.demo import make_project

ARMS = ("targeted", "random", "steps")
OBJECTIVES = ("sft", "sft+dpo", "dpo")


def run_efficiency(*, seeds: list[int], rounds: int, train: dict[str, Any], eval_rows: int | None, work: Path,
                   log, on_row=None) -> list[dict[str, Any]]:
    """Every arm for every seed; one row per (seed, arm, round). `train`: [train] overrides every arm takes (with
    `steps`, a fixed budget a round). `on_row` is called after each round."""
    def arms(seed: int, keep) -> None:
        targeted = run_arm("targeted", seed, rounds, train, eval_rows, work, log, keep, wanted=None)
        run_arm("random", seed, rounds, train, eval_rows, work, log, keep,
                wanted=[row["added"] for row in targeted])
        keep({**targeted[0], "arm": "steps", "added": 0, "by_template": {}, "shared_with": "targeted"})
        run_arm("steps", seed, rounds, train, eval_rows, work, log, keep, wanted=None, first=2,
                compute=[row["steps"] for row in targeted])

    return per_seed(seeds, arms, log=log, on_row=on_row)


def per_seed(seeds: list[int], arms, *, log, on_row=None) -> list[dict[str, Any]]:
    """`arms(seed, keep)` for every seed, `keep` collecting its rows (and passing them all to `on_row` after each);
    logs the time per seed and what is left."""
    rows: list[dict[str, Any]] = []

    def keep(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row:
            on_row(rows)

    began = time.perf_counter()
    for done, seed in enumerate(seeds):
        arms(seed, keep)
        each = (time.perf_counter() - began) / (done + 1)
        if done + 1 < len(seeds):
            log(f"{each / 60:.1f} min per seed; about {each * (len(seeds) - done - 1) / 60:.0f} min to go in this "
                f"part")
    return rows


def arm_overrides(arm: str, seed: int, shared: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The settings every arm shares for one seed (with the run's [train] overrides `shared`), and the arm's own."""
    train: dict[str, Any] = {**shared, "seed": seed}
    if arm in OBJECTIVES:  # bench/objective.py's arms: targeted data, trained under one `[train] objective`
        train["objective"] = arm
    targeting = {"random": "random", "steps": "off"}.get(arm, "patterns")
    return {"core": {"seed": seed}, "train": train, "generate": {"targeting": targeting, "review": False}}


def run_arm(arm: str, seed: int, rounds: int, train: dict[str, Any], eval_rows: int | None, work: Path, log, keep,
             *, wanted: list[int] | None, first: int = 1, compute: list[int] | None = None
             ) -> list[dict[str, Any]]:
    from refinery.loop import run_round
    from refinery.train import dpo_alone

    project = make_project(work / f"seed-{seed}" / arm, overrides=arm_overrides(arm, seed, train),
                           eval_rows=eval_rows)
    base = project.config
    seed_examples = _train_count(project)
    out = []
    for number in range(first, rounds + 1):
        config = base
        if arm == "random":
            want = wanted[number - 1]
            config = (base.override("generate", per_round=want) if want > 0
                      else base.override("generate", targeting="off"))
        if arm == "steps":  # the targeted arm's compute: its steps of this round on top of the last round's
            # adapter when rounds warm-start, else all its steps up to this round in one fresh model
            warm = base.train.warm_start and number > first  # its first round has no adapter to continue
            config = base.override("train", steps=compute[number - 1] if warm else sum(compute[:number]))
        began = time.perf_counter()
        summary = run_round(project.with_config(config))
        seconds = time.perf_counter() - began
        added = sum(g.get("stored", 0) for g in summary.generated)
        size = _training_set(project, summary.number)  # not summary.train's count: a DPO-alone round trains on pairs
        row = {
            "seed": seed, "arm": arm, "round": number, "steps": summary.train["steps"],
            "batch_size": config.train.batch_size,
            "train_examples": size, "added_before": size - seed_examples,
            "added": added, "wanted": wanted[number - 1] if wanted else None,
            "by_template": _by_template(summary.generated),
            "test_pass_rate": summary.metrics["test"]["pass_rate"],
            "test_examples": summary.metrics["test"]["examples"],
            "test_weighted_score": summary.metrics["test"]["weighted_score"],
            "analysis_pass_rate": summary.metrics.get("analysis", {}).get("pass_rate"),
            "corner_pass_rate": summary.metrics.get("corner", {}).get("pass_rate"),
            "final_loss": summary.train["final_loss"], "train_seconds": summary.train["seconds"],
            "dpo": summary.train.get("dpo"), "pairs": _pair_count(project, summary.number),
            "stages": summary.stages, "seconds": round(seconds, 2), "project": str(project.root),
            "test_outcomes": _test_outcomes(project, summary.number),
        }
        out.append(row)
        keep(row)
        short = f" (wanted {row['wanted']})" if wanted and row["wanted"] != added else ""
        what = (f"DPO {row['dpo']['steps']} steps on {row['dpo']['pairs']} pairs" if dpo_alone(summary.train)
                else f"{row['train_examples']} examples, {row['steps']} steps")
        log(f"seed {seed} {arm:8s} round {number}: test pass {row['test_pass_rate']:.1%} on {what}; "
            f"added {added}{short}; {seconds:.1f} s")
    return out


def _train_count(project) -> int:
    from refinery.store import Store

    with Store(project.store_path) as store:
        return store.scalar("SELECT count(*) FROM examples WHERE split = 'train' AND status = 'active'")


def _training_set(project, number: int) -> int:
    """The examples round `number`'s training set held."""
    from refinery.store import Store

    with Store(project.store_path) as store:
        return store.scalar("SELECT count(*) FROM round_examples WHERE round = ?", [number])


def _pair_count(project, number: int) -> int:
    """The active preference pairs round `number` collected (what later rounds' DPO can train on)."""
    from refinery.store import Store

    with Store(project.store_path) as store:
        return store.scalar("SELECT count(*) FROM pairs WHERE round = ? AND status = 'active'", [number])


def _test_outcomes(project, number: int) -> dict[str, bool]:
    """Per test example of the round: did it pass (every applicable check passed), as `summarize` counts it."""
    from refinery.store import Store

    with Store(project.store_path) as store:
        rows = store.con.execute("""
            SELECT e.id, coalesce(bool_and(r.passed) FILTER (WHERE r.applies), true)
            FROM examples e JOIN rule_results r ON r.example_id = e.id AND r.round = ? AND r.variant = ''
            WHERE e.split = 'test' AND e.status = 'active' GROUP BY e.id ORDER BY e.id""", [number]).fetchall()
    return {example_id: bool(ok) for example_id, ok in rows}


def _by_template(generated: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in generated:
        out[g["template"]] = out.get(g["template"], 0) + g.get("stored", 0)
    return out


def save_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
