"""The mix sweep: one adapter per reasoning share on the same training data, each measured on the test split.

It composes the stages as a round does (through `loop`'s template check and toggled variants) but adds no data.
"""

from __future__ import annotations

import json
import time
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
