"""The mix sweep: one adapter per reasoning share on the same training data, each measured on the test split.

It composes the stages as a round does (through `loop`'s template check and toggled variants) but adds no data.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import polars as pl

from refinery.device import check_loadable
from refinery.errors import RefineryError
from refinery.project import Project, resolve_base_model
from refinery.stages.loop import STORE_WAIT, Quiet, Reporter, check_templates, make_toggles
from refinery.stages.measure import ask, check_mix_settings
from refinery.store import Store, content_hash, detect_kind


def run_sweep(project: Project, shares: list[float], *, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train one adapter per reasoning share on the same training data and measure each on the test split, with
    the thinking cue and without when `[mix] cue` is set (else the test split as stored: the cue-mode figures are
    None). Nothing is added to the training data; results go to runs/sweep-*/sweep.json."""
    from refinery.rules import load_rules
    from refinery.stages import train
    from refinery.stages.analyze import make_embedder
    from refinery.stages.generate import template_environment
    from refinery.stages.mix import CUE_FIGURES, training_set

    reporter = reporter or Quiet()
    rules = load_rules(project.rules_dir)
    env = template_environment(project.templates_dir)
    check_templates(env, rules, project)
    check_mix_settings(project, rules)
    base_model = resolve_base_model(project)
    check_loadable(base_model)
    config = project.config
    embedder = make_embedder(config.analyze.embedder, root=project.root)
    think = config.think()
    with Store(project.store_path, wait=STORE_WAIT) as store:
        examples = store.frame("SELECT id, input, output, kind FROM examples WHERE status = 'active' "
                               "AND split = 'train' ORDER BY id")
        test = store.frame("SELECT id AS example_id, input, output AS expected, fields, split FROM examples "
                           "WHERE status = 'active' AND split = 'test' ORDER BY id")
    if examples.height == 0 or test.height == 0:
        raise RefineryError("a sweep needs train and test examples: ingest some first.")
    sweep_dir = project.runs_dir / time.strftime("sweep-%Y%m%d-%H%M%S")
    rows = []
    for share in shares:
        # Toggled variants make up the short kind for this share; in memory only: a sweep adds no data.
        toggles = make_toggles(project, env, rules, embedder, share=share)
        made = pl.DataFrame({"id": [content_hash(c.input, c.output)[:16] for c in toggles],
                             "input": [c.input for c in toggles], "output": [c.output for c in toggles],
                             "kind": [detect_kind(c.output, think) for c in toggles]}, schema=examples.schema)
        chosen = training_set(pl.concat([examples, made]), reasoning_share=share, seed=config.core.seed)
        kinds = dict(chosen.group_by("kind").len().iter_rows()) if chosen.height else {}
        row: dict[str, Any] = {"share": share, "examples": chosen.height, "reasoning": kinds.get("reasoning", 0),
                               "direct": kinds.get("direct", 0), "toggled": len(toggles)}
        if chosen.height == 0:
            rows.append({**row, "error": "no examples of a kind this share needs"})
            continue
        reporter.stage(f"share {share}")
        began = time.perf_counter()
        result = train.train(chosen, base_model=base_model, settings=config.train,
                             out_dir=sweep_dir / f"share-{share}", on_step=reporter.progress)
        model_path, adapter = ((result.weights_path, None) if result.method == "full"
                               else (base_model, result.weights_path))
        measured = ask(project, rules, test, model_path=model_path, adapter=adapter)
        mix = measured.metrics.get("mix") or dict.fromkeys(CUE_FIGURES)  # no cue set: not measured
        row.update(test_pass_rate=measured.metrics["test"]["pass_rate"],
                   test_weighted_score=measured.metrics["test"]["weighted_score"], **mix,
                   steps=result.steps, seconds=round(time.perf_counter() - began, 1))
        reporter.stage_done(f"share {share}", row["seconds"], f"test pass {row['test_pass_rate']:.0%}")
        rows.append(row)
    document = {"dir": str(sweep_dir), "train_examples": examples.height, "test_examples": test.height,
                "steps": _span([r["steps"] for r in rows if "steps" in r]), "rows": rows}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(document, indent=2))
    return document


def _span(values: list[int]) -> str:
    """"600", or "300-600" when the step rule gave the shares' sets different budgets."""
    low, high = min(values, default=0), max(values, default=0)
    return f"{low}" if low == high else f"{low}-{high}"


def run_grid(project: Project, grid: dict[str, list[Any]], *, from_round: int | None = None,
             budget: int | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train one arm per combination of `grid` (`grid.grid_arms`, at most `budget`, seeded), each fresh with the
    same seed on the same training set (round `from_round`'s, default the last finished round's; the train split before
    any round), plus the current recipe when the grid leaves it out, and measure each on the test split with the
    same checks. The best arm is set against the current recipe with an exact McNemar test. Each finished arm is
    stored at once (sweep_arms): the same sweep run again trains only the arms it had not finished. Work in
    progress (issue 30): no `--apply` yet; the arms' weights go to runs/sweep-NNN/arm-N."""
    from refinery.rules import load_rules
    from refinery.stages import train
    from refinery.stages.grid import SPECIAL, arm_config, arm_label, grid_arms, mcnemar
    from refinery.stages.measure import held_out
    from refinery.stages.mix import training_set

    reporter = reporter or Quiet()
    config = project.config
    rules = load_rules(project.rules_dir)
    arms, total = grid_arms(grid, budget=budget, seed=config.core.seed)
    current = {k: getattr(getattr(config, SPECIAL.get(k, "train")), k) for k in grid}
    if current not in arms:
        arms = [current, *arms]
    with Store(project.store_path, wait=STORE_WAIT) as store:
        number = from_round if from_round is not None else store.scalar(
            "SELECT max(number) FROM rounds WHERE status = 'done' AND kind = 'round'")
        examples = (store.frame("SELECT e.id, e.input, e.output, e.kind FROM round_examples r JOIN examples e ON "
                                "e.id = r.example_id WHERE r.round = ? ORDER BY e.id", [number]) if number else
                    store.frame("SELECT id, input, output, kind FROM examples WHERE status = 'active' AND split = "
                                "'train' ORDER BY id"))
        test = held_out(store, splits=("test",))
    if examples.height == 0 or test.height == 0:
        raise RefineryError("a sweep needs train and test examples: ingest some first.")
    sweep_id, finished = _open_sweep(project, number, grid, budget)
    out_dir = project.runs_dir / f"sweep-{sweep_id:03d}"
    rows = []
    for index, arm in enumerate(arms):
        if index in finished:  # an earlier run of this sweep finished it
            rows.append(finished[index])
            continue
        label = arm_label(arm) + (" (current)" if arm == current else "")
        arm_project = project.with_config(arm_config(config, arm))
        base_model = resolve_base_model(arm_project)
        check_loadable(base_model)
        share = arm_project.config.mix.reasoning_share
        rows_for_arm = examples if share is None else training_set(examples, reasoning_share=share,
                                                                     seed=config.core.seed)
        reporter.stage(label)
        began = time.perf_counter()
        result = train.train(rows_for_arm, base_model=base_model, settings=arm_project.config.train,
                             out_dir=out_dir / f"arm-{index}", on_step=reporter.progress)
        trained = time.perf_counter() - began
        model_path, adapter = ((result.weights_path, None) if result.method == "full"
                               else (base_model, result.weights_path))
        measured = ask(arm_project, rules, test, model_path=model_path, adapter=adapter)
        per_example = _passed(measured.results)
        rows.append({"arm": index, "label": label, "settings": arm, "current": arm == current,
                     "test_pass_rate": measured.metrics["test"]["pass_rate"],
                     "test_weighted_score": measured.metrics["test"]["weighted_score"],
                     "failures": _failures(measured.results), "train_seconds": round(trained, 1),
                     "steps": result.steps, "adapter_bytes": _size(Path(result.weights_path)),
                     "passed": per_example})
        _save_arm(project, sweep_id, rows[-1])
        reporter.stage_done(label, rows[-1]["train_seconds"], f"test pass {rows[-1]['test_pass_rate']:.0%}")
    base = next(r for r in rows if r["current"])
    best = max(rows, key=lambda r: (r["test_pass_rate"], r["test_weighted_score"], -r["arm"]))
    paired = mcnemar(best["passed"], base["passed"])
    document = {"dir": str(out_dir), "round": number, "grid": grid, "grid_arms": total, "budget": budget,
                "train_examples": examples.height, "test_examples": test.height,
                "rows": [{k: v for k, v in r.items() if k != "passed"} for r in rows], "best": best["arm"],
                "current": base["arm"], "against_current": paired,
                "verdict": _verdict(best, base, paired)}
    document["sweep"], document["resumed"] = sweep_id, len(finished)
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        con.execute("UPDATE sweeps SET document = ? WHERE id = ?", [json.dumps(document), sweep_id])
    return document


def _open_sweep(project: Project, number: int | None, grid: dict[str, list[Any]],
                budget: int | None) -> tuple[int, dict[int, dict[str, Any]]]:
    """The sweep's id (an earlier unfinished or finished run of the same sweep, or a new one) and its finished arms.
    The same sweep: the same round, grid and budget, from the same [train], [mix] and base model."""
    import dataclasses
    import hashlib

    config = project.config
    basis = {"round": number, "grid": grid, "budget": budget, "train": dataclasses.asdict(config.train),
             "mix": dataclasses.asdict(config.mix), "base_model": config.core.base_model}
    key = hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        found = con.execute("SELECT id FROM sweeps WHERE key = ?", [key]).fetchall()
        if found:
            sweep_id = found[0][0]
        else:
            sweep_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM sweeps").fetchall()[0][0]
            con.execute("INSERT INTO sweeps (id, key, round, grid) VALUES (?, ?, ?, ?)",
                        [sweep_id, key, number, json.dumps(grid)])
        arms = con.execute("SELECT arm, row, passed FROM sweep_arms WHERE sweep = ?", [sweep_id]).fetchall()
    return sweep_id, {arm: {**json.loads(row), "passed": json.loads(passed)} for arm, row, passed in arms}


def _save_arm(project: Project, sweep_id: int, row: dict[str, Any]) -> None:
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        con.execute("INSERT INTO sweep_arms (sweep, arm, row, passed) VALUES (?, ?, ?, ?)",
                    [sweep_id, row["arm"], json.dumps({k: v for k, v in row.items() if k != "passed"}),
                     json.dumps(row["passed"])])


def _passed(results: pl.DataFrame) -> dict[str, bool]:
    """Per test example as stored (variant ''), whether every check that applies passed."""
    stored = results.filter((pl.col("variant") == "") & pl.col("applies"))
    return dict(stored.group_by("example_id").agg(pl.col("passed").all()).iter_rows())


def _failures(results: pl.DataFrame) -> dict[str, int]:
    failed = results.filter((pl.col("variant") == "") & pl.col("applies") & ~pl.col("passed"))
    return dict(sorted(failed.group_by("check_name").len().iter_rows()))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _verdict(best: dict[str, Any], base: dict[str, Any], paired: dict[str, Any]) -> str:
    if best is base:
        return f"the current recipe ({base['label']}) is the best arm."
    gap = best["test_pass_rate"] - base["test_pass_rate"]
    text = (f"best: {best['label']}, test pass {best['test_pass_rate']:.1%} against {base['test_pass_rate']:.1%} "
            f"for the current recipe ({gap:+.1%}; it passes {paired['only_a']} examples the current fails and fails "
            f"{paired['only_b']} it passes, McNemar p = {paired['p']:.2g})")
    return text + (": within noise." if paired["p"] >= 0.05 else ".")


def apply_arm(project: Project, arm: int, *, sweep: int | None = None) -> dict[str, Any]:
    """Write arm `arm`'s settings of sweep `sweep` (default: the latest finished) into the project file, each with a
    comment naming the sweep, comments elsewhere kept; returns what was written."""
    from refinery.project import set_setting
    from refinery.stages.grid import SPECIAL

    with Store(project.store_path, read_only=True) as store:
        number = sweep or store.scalar("SELECT max(id) FROM sweeps WHERE document IS NOT NULL")
        found = store.one("SELECT row FROM sweep_arms WHERE sweep = ? AND arm = ?", [number, arm]) if number else None
    if found is None:
        raise RefineryError(f"no arm {arm} in sweep {number or '(none finished)'}: `refinery sweep ... --json` lists "
                            f"a sweep's arms.")
    row = json.loads(found[0])
    note = f"chosen by refinery sweep {number} (arm {arm}: test pass {row['test_pass_rate']:.1%})"
    for key, value in row["settings"].items():
        project = set_setting(project, SPECIAL.get(key, "train"), key, value, comment=note)
    return {"sweep": number, "arm": arm, "settings": row["settings"], "comment": note,
            "file": str(project.config_file)}
