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

from bench.demo import DEMO_DATA, make_project

ARMS = ("targeted", "random", "steps")
OBJECTIVES = ("sft", "sft+dpo", "dpo")


def run_efficiency(*, seeds: list[int], rounds: int, train: dict[str, Any], eval_rows: int | None, work: Path,
                   log, on_row=None, source: Path = DEMO_DATA, arms: tuple[str, ...] = ARMS
                   ) -> list[dict[str, Any]]:
    """Every arm for every seed on the demo data in `source` (the bundled demo, or a scenario folder with a
    slices.jsonl); one row per (seed, arm, round). `train`: [train] overrides every arm takes (with `steps`, a
    fixed budget a round). `on_row` is called after each round."""
    slices = read_slices(source)

    def run(seed: int, keep) -> None:
        common = {"train": train, "eval_rows": eval_rows, "work": work, "log": log, "keep": keep,
                  "source": source, "slices": slices}
        targeted = run_arm("targeted", seed, rounds, wanted=None, **common)
        if "random" in arms:
            random_rows = run_arm("random", seed, rounds, wanted=[row["added"] for row in targeted], **common)
            for row, effects in zip(targeted, pattern_effects(targeted, random_rows), strict=True):
                row["effects"] = effects
            keep(None)  # the targeted rows changed: save again
        if "steps" in arms:
            keep({**targeted[0], "arm": "steps", "added": 0, "by_template": {}, "shared_with": "targeted",
                  "effects": []})
            run_arm("steps", seed, rounds, wanted=None, first=2, compute=[row["steps"] for row in targeted],
                    **common)

    return per_seed(seeds, run, log=log, on_row=on_row)


def per_seed(seeds: list[int], arms, *, log, on_row=None) -> list[dict[str, Any]]:
    """`arms(seed, keep)` for every seed, `keep` collecting its rows (and passing them all to `on_row` after each);
    logs the time per seed and what is left."""
    rows: list[dict[str, Any]] = []

    def keep(row: dict[str, Any] | None) -> None:
        if row is not None:
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


def run_arm(arm: str, seed: int, rounds: int, *, train: dict[str, Any], eval_rows: int | None, work: Path,
            log, keep, wanted: list[int] | None, first: int = 1, compute: list[int] | None = None,
            source: Path = DEMO_DATA, slices: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    from refinery.stages.loop import run_round
    from refinery.stages.train import dpo_alone

    project = make_project(work / f"seed-{seed}" / arm, overrides=arm_overrides(arm, seed, train),
                           eval_rows=eval_rows, source=source)
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
            "store": str(project.store_path),
            "test_outcomes": _test_outcomes(project, summary.number),
            "plan": summary.plan, "slices": slice_rates(project, summary.number, slices) if slices else None,
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


def read_slices(source: Path) -> dict[str, list[str]] | None:
    """Test inputs -> their hard slices, from a scenario's slices.jsonl (None for the bundled demo). The engine
    never sees these labels: they are read here only to report pass rates per slice."""
    path = source / "slices.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["input"]: r["slices"] for r in rows if r["set"] == "test"}


def slice_rates(project, number: int, slices: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per hard slice (and "none", the inputs in no slice): test examples and the share that passed."""
    from refinery.store import Store

    with Store(project.store_path) as store:
        rows = store.con.execute("""
            SELECT e.input, coalesce(bool_and(r.passed) FILTER (WHERE r.applies), true)
            FROM examples e JOIN rule_results r ON r.example_id = e.id AND r.round = ? AND r.variant = ''
            WHERE e.split = 'test' AND e.status = 'active' GROUP BY e.input""", [number]).fetchall()
    counts: dict[str, list[int]] = {}
    for text, ok in rows:
        for name in slices.get(text) or ["none"]:
            counts.setdefault(name, [0, 0])
            counts[name][0] += 1
            counts[name][1] += bool(ok)
    return {name: {"examples": n, "pass_rate": passed / n} for name, (n, passed) in sorted(counts.items())}


def pattern_effects(targeted: list[dict[str, Any]], random_rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per targeted round: each pattern the round stored counterexamples for, with its members' failure rate on
    its own check in that round, in the targeted arm's next round, and in the random arm's next round (the same
    analysis examples, asked by the model trained on random data of the same count)."""
    from refinery.store import Store

    t_store, r_store = (Path(rows[0]["store"]) for rows in (targeted, random_rows))
    out = []
    with Store(t_store, read_only=True) as ts, Store(r_store, read_only=True) as rs:
        for row in targeted:
            number = row["round"]
            patterns = ts.frame("""
                SELECT c.id, c.checks, c.feature, c.kind, list(DISTINCT m.example_id) AS members FROM clusters c
                JOIN cluster_members m ON m.cluster_id = c.id
                WHERE c.round = ? AND EXISTS (SELECT 1 FROM examples e WHERE e.cluster_id = c.id
                                              AND e.source = 'generated')
                GROUP BY ALL ORDER BY c.id""", [number])
            effects = []
            for p in patterns.iter_rows(named=True):
                check = next(iter(json.loads(p["checks"])))
                effects.append({"pattern": p["id"], "check": check, "feature": p["feature"] or p["kind"],
                                "members": len(p["members"]),
                                "before": _failing(ts, number, check, p["members"]),
                                "targeted_after": _failing(ts, number + 1, check, p["members"]),
                                "random_after": _failing(rs, number + 1, check, p["members"])})
            out.append(effects)
    return out


def _failing(store, number: int, check: str, members: list[str]) -> float | None:
    """The share of `members` failing `check` in round `number` (None when that round was not run)."""
    found = store.con.execute("""
        SELECT count(*), count(*) FILTER (WHERE NOT passed) FROM rule_results
        WHERE round = ? AND check_name = ? AND applies AND variant = '' AND list_contains(?, example_id)""",
                              [number, check, members]).fetchall()[0]
    return found[1] / found[0] if found[0] else None
