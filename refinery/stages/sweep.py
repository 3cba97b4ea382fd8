"""Sweeps: one model per arm of a recipe grid (`refinery sweep KEY=V1,V2`, and `refinery mix --sweep`, the grid of
the one key `reasoning_share`), each trained fresh with the same seed on the same training set and measured on the
test and corner splits with the same checks; the best arm is set against the current recipe by a paired test.

Each finished arm is stored at once (sweeps, sweep_arms): the same sweep run again trains only the arms it had not
finished. Entry points: `run_grid(project, grid, ...)` and `apply_arm(project, arm)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from refinery.device import PeakMemory, check_loadable
from refinery.errors import RefineryError
from refinery.project import Project, resolve_base_model
from refinery.stages.loop import STORE_WAIT, Quiet, Reporter
from refinery.stages.measure import ask, check_mix_settings, held_out
from refinery.store import Store, content_hash, detect_kind


@dataclass
class SweepData:
    """What every arm trains on and is measured with."""

    round: int | None  # whose training set (None: the train split as it stands)
    examples: pl.DataFrame  # id, input, output, kind
    held: pl.DataFrame  # the test and corner examples, as the evals ask them
    toggles: Callable[[float | None], pl.DataFrame] | None  # toggled variants for a share (reasoning_share swept)


def run_grid(project: Project, grid: dict[str, list[Any]], *, from_round: int | None = None, pool: bool = False,
             budget: int | None = None, against_current: bool = True,
             reporter: Reporter | None = None) -> dict[str, Any]:
    """Train one arm per combination of `grid` (`grid.grid_arms`: at most `budget`, a seeded sample), each fresh by
    SFT with the same seed on the same set: round `from_round`'s training set (default: the last finished round's;
    the train split before any round), or with `pool` the train split as it stands (what the next round chooses
    from). With `against_current`, the current recipe is an arm too (added when the grid leaves it out) and the
    best arm is tested against it (exact McNemar on the test split); else against the runner-up. Arms that would
    train the same weights (`grid.training_key`) are trained once. Returns the sweep's figures, also stored."""
    from refinery.rules import load_rules
    from refinery.stages.grid import arm_config, arm_label, current_arm, grid_arms, training_key

    reporter = reporter or Quiet()
    config = project.config
    rules = load_rules(project.rules_dir)
    check_mix_settings(project, rules)
    arms, total = grid_arms(grid, budget=budget, seed=config.core.seed)
    current = current_arm(config, list(grid))
    if against_current and current not in arms:
        arms = [current, *arms]
    data = _sweep_data(project, rules, from_round=from_round, pool=pool, shares="reasoning_share" in grid)
    sweep_id, finished = _open_sweep(project, data.round, grid, budget, against_current)
    out_dir = project.runs_dir / f"sweep-{sweep_id:03d}"
    rows: list[dict[str, Any]] = []
    for index, arm in enumerate(arms):
        row = finished.get(index)
        if row is None:
            arm_project = project.with_config(arm_config(config, arm))
            base = str(Path(resolve_base_model(arm_project)).resolve())
            key = training_key(arm_project.config, modules=_modules(arm_project, base), base=base)
            label = arm_label(arm) + (" (current)" if arm == current else "")
            twin = next((r for r in rows if r["key"] == key and "error" not in r), None)
            row = ({**twin, "same_as": twin["arm"], "train_seconds": 0.0, "eval_seconds": 0.0} if twin else
                   _run_arm(arm_project, rules, arm, data, base, out_dir / f"arm-{index}", label, reporter))
            row.update(arm=index, label=label, settings=arm, current=arm == current, key=key)
            _save_arm(project, sweep_id, row)
        rows.append(row)
    document = {"sweep": sweep_id, "dir": str(out_dir), "round": data.round, "grid": grid, "grid_arms": total,
                "budget": budget, "train_examples": data.examples.height,
                "test_examples": int((data.held["split"] == "test").sum()),
                "corner_examples": int((data.held["split"] == "corner").sum()), "resumed": len(finished),
                "steps": _span([r["steps"] for r in rows if "steps" in r]), **_outcome(rows, against_current),
                "rows": [{k: v for k, v in r.items() if k not in ("passed", "key")} for r in rows]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(document, indent=2))
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        con.execute("UPDATE sweeps SET document = ? WHERE id = ?", [json.dumps(document), sweep_id])
    return document


def _modules(project: Project, base: str) -> list[str] | None:
    """The modules the arm's LoRA targets on its base model, so that two presets naming the same ones train once."""
    from refinery.stages.train import preset_modules

    settings = project.config.train
    return preset_modules(base, settings.target_modules) if settings.method == "lora" else None


def _sweep_data(project: Project, rules, *, from_round: int | None, pool: bool, shares: bool) -> SweepData:
    with Store(project.store_path, wait=STORE_WAIT) as store:
        done = store.frame("SELECT number FROM rounds WHERE status = 'done' AND kind = 'round' "
                           "ORDER BY number")["number"].to_list()
        if from_round is not None and from_round not in done:
            raise RefineryError(f"--round {from_round}: no finished round {from_round} (finished rounds: "
                                f"{', '.join(map(str, done)) or 'none'}).")
        number = None if pool else from_round if from_round is not None else (done[-1] if done else None)
        examples = (store.frame("SELECT e.id, e.input, e.output, e.kind FROM round_examples r JOIN examples e ON "
                                "e.id = r.example_id WHERE r.round = ? ORDER BY e.id", [number]) if number else
                    store.frame("SELECT id, input, output, kind FROM examples WHERE status = 'active' AND split = "
                                "'train' ORDER BY id"))
        held = held_out(store, splits=("test", "corner"))
    if examples.height == 0 or not (held["split"] == "test").any():
        raise RefineryError("a sweep needs train and test examples: ingest some first.")
    return SweepData(number, examples, held, _toggler(project, rules) if shares else None)


def _toggler(project: Project, rules) -> Callable[[float | None], pl.DataFrame]:
    """For a swept share: the toggled variants (`[mix] toggle_template`) that make up the kind the share is short
    of, as rows; in memory only (a sweep adds no data)."""
    from refinery.stages.analyze import make_embedder
    from refinery.stages.generate import template_environment
    from refinery.stages.loop import check_templates, make_toggles

    env = template_environment(project.templates_dir)
    check_templates(env, rules, project)
    embedder = make_embedder(project.config.analyze.embedder, root=project.root)
    think = project.config.think()

    def toggles(share: float | None) -> pl.DataFrame:
        made = make_toggles(project, env, rules, embedder, share=share)
        return pl.DataFrame({"id": [content_hash(c.input, c.output)[:16] for c in made],
                             "input": [c.input for c in made], "output": [c.output for c in made],
                             "kind": [detect_kind(c.output, think) for c in made]},
                            schema={"id": pl.String, "input": pl.String, "output": pl.String, "kind": pl.String})
    return toggles


def _run_arm(project: Project, rules, arm: dict[str, Any], data: SweepData, base_model: str, out_dir: Path,
             label: str, reporter: Reporter) -> dict[str, Any]:
    """Train one arm on the sweep's set (under its share, when the share is swept) on `base_model` (resolved) and
    measure it."""
    from refinery.stages import train
    from refinery.stages.mix import CUE_FIGURES, training_set

    config = project.config
    chosen, row = data.examples, {"toggled": 0}
    if "reasoning_share" in arm:
        row["share"] = share = arm["reasoning_share"]
        made = data.toggles(share) if data.toggles else data.examples.clear()
        chosen = training_set(pl.concat([data.examples, made.select(data.examples.columns)]), reasoning_share=share,
                              seed=config.core.seed)
        row["toggled"] = made.height
    kinds = dict(chosen.group_by("kind").len().iter_rows()) if chosen.height else {}
    row |= {"examples": chosen.height, "reasoning": kinds.get("reasoning", 0), "direct": kinds.get("direct", 0)}
    if chosen.height == 0:
        return {**row, "error": "no examples of a kind this share needs"}
    check_loadable(base_model)
    reporter.stage(label)
    with PeakMemory() as peak:
        began = time.perf_counter()
        result = train.train(chosen, base_model=base_model, settings=config.train, out_dir=out_dir,
                             on_step=reporter.progress)
        trained = time.perf_counter() - began
        model_path, adapter = ((result.weights_path, None) if result.method == "full"
                               else (base_model, result.weights_path))
        measured = ask(project, rules, data.held, model_path=model_path, adapter=adapter)
    test, corner = measured.metrics["test"], measured.metrics.get("corner")
    row |= {"test_pass_rate": test["pass_rate"], "test_weighted_score": test["weighted_score"],
            "corner_pass_rate": corner["pass_rate"] if corner else None,
            "failures": _failures(measured.results, data.held), "steps": result.steps,
            "train_seconds": round(trained, 1), "eval_seconds": round(time.perf_counter() - began - trained, 1),
            "peak_memory_bytes": peak.bytes, "memory": peak.kind, "weights_bytes": _size(Path(result.weights_path)),
            **(measured.metrics.get("mix") or dict.fromkeys(CUE_FIGURES)),  # no cue set: not measured
            "passed": _passed(measured.results, data.held)}
    reporter.stage_done(label, row["train_seconds"] + row["eval_seconds"], f"test pass {row['test_pass_rate']:.1%}")
    return row


def _test_rows(results: pl.DataFrame, held: pl.DataFrame) -> pl.DataFrame:
    """The test examples' results as stored (variant ''), for the checks that apply."""
    test_ids = held.filter(pl.col("split") == "test")["example_id"].to_list()
    return results.filter((pl.col("variant") == "") & pl.col("applies") & pl.col("example_id").is_in(test_ids))


def _passed(results: pl.DataFrame, held: pl.DataFrame) -> dict[str, bool]:
    """Per test example, whether every check that applies passed."""
    return dict(_test_rows(results, held).group_by("example_id").agg(pl.col("passed").all()).iter_rows())


def _failures(results: pl.DataFrame, held: pl.DataFrame) -> dict[str, int]:
    """Test examples failing each check."""
    failed = _test_rows(results, held).filter(~pl.col("passed"))
    return dict(sorted(failed.group_by("check_name").len().iter_rows()))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _span(values: list[int]) -> str:
    """"600", or "300-600" when the arms' sets gave the step rule different budgets."""
    low, high = min(values, default=0), max(values, default=0)
    return f"{low}" if low == high else f"{low}-{high}"


def _outcome(rows: list[dict[str, Any]], against_current: bool) -> dict[str, Any]:
    """The best arm (test pass rate, then weighted score, then the current recipe, then the earlier arm), what it is
    compared with (the current recipe; the runner-up when the current recipe is the best or there is none), the
    paired test and a plain verdict."""
    from refinery.stages.grid import mcnemar

    ranked = sorted((r for r in rows if "error" not in r),  # on a tie, what you have
                    key=lambda r: (-r["test_pass_rate"], -r["test_weighted_score"], not r["current"], r["arm"]))
    if not ranked:
        return {"best": None, "compared_with": None, "paired": None, "verdict": "no arm trained."}
    best = ranked[0]
    current = next((r for r in ranked if r["current"]), None) if against_current else None
    other = current if current is not None and current["key"] != best["key"] else \
        next((r for r in ranked[1:] if r["key"] != best["key"]), None)
    if other is None:
        return {"best": best["arm"], "compared_with": None, "paired": None,
                "verdict": f"best: {_name(best)}, test pass {best['test_pass_rate']:.1%} (no other arm to compare)."}
    paired = mcnemar(best["passed"], other["passed"])
    return {"best": best["arm"], "compared_with": other["arm"], "paired": paired,
            "verdict": _verdict(best, other, paired, kept=current is not None and current["key"] == best["key"])}


def _verdict(best: dict[str, Any], other: dict[str, Any], paired: dict[str, Any], *, kept: bool) -> str:
    """`kept`: the best arm trains what the current recipe does, and `other` is the runner-up."""
    gap = best["test_pass_rate"] - other["test_pass_rate"]
    against = (f"test pass {best['test_pass_rate']:.1%} against {other['test_pass_rate']:.1%} for "
               f"{'the runner-up, ' if kept or not other['current'] else 'the current recipe, '}{_name(other)} "
               f"({gap:+.1%}: it passes {paired['only_a']} test examples that one fails and fails {paired['only_b']} "
               f"it passes; McNemar p = {paired['p']:.2g})")
    head = f"the current recipe ({_name(best)}) is the best arm: " if kept else f"best: {_name(best)}, "
    noise = "within noise, keep what you have." if other["current"] and not kept else "within noise."
    return head + against + (f": {noise}" if paired["p"] >= 0.05 else ".")


def _name(row: dict[str, Any]) -> str:
    from refinery.stages.grid import arm_label

    return arm_label(row["settings"])


def _open_sweep(project: Project, number: int | None, grid: dict[str, list[Any]], budget: int | None,
                against_current: bool) -> tuple[int, dict[int, dict[str, Any]]]:
    """The sweep's id (an earlier run of the same sweep, finished or not, or a new one) and its finished arms. The
    same sweep: the same set, grid and budget, from the same [train], [mix] and base model."""
    import dataclasses

    from refinery.stages.grid import digest

    config = project.config
    basis = {"round": number, "grid": grid, "budget": budget, "train": dataclasses.asdict(config.train),
             "mix": dataclasses.asdict(config.mix), "base_model": config.core.base_model}
    if not against_current:
        basis["against"] = "runner-up"
    key = digest(basis)
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
                     json.dumps(row.get("passed", {}))])


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
    if "error" in row:
        raise RefineryError(f"arm {arm} of sweep {number} did not train ({row['error']}): choose another.")
    note = f"chosen by refinery sweep {number} (arm {arm}: test pass {row['test_pass_rate']:.1%})"
    for key, value in row["settings"].items():
        project = set_setting(project, SPECIAL.get(key, "train"), key, value, comment=note)
    return {"sweep": number, "arm": arm, "settings": row["settings"], "comment": note,
            "file": str(project.config_file)}
