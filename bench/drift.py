"""The drift part: does `refinery drift` name a planted drift, and only a planted one, and what it costs at 100,000
production inputs. The reference is the demo's (its seed set as train, its 600 evaluation inputs as analysis); the
production inputs come from data/demo/make_production.py: a tenth of them drifted (hail, a condition the reference
never shows, and "show your reasoning.", a cue it never shows), or none."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.demo import DEMO_DATA, REPO


def run_drift(*, seeds: list[int], size: int, scale: int, work: Path, log) -> dict[str, Any]:
    """Per seed, a planted and a clean production set of `size` inputs: what drift named; then `scale` inputs
    timed twice (embeddings computed, then cached)."""
    sys.path.insert(0, str(DEMO_DATA))
    from make_production import production_set

    from refinery.stages.drift import detect_drift

    project = _reference(work / "drift" / "project")
    runs = []
    for seed in seeds:
        for drift in (0.1, 0.0):
            rows = production_set(size=size, drift=drift, seed=seed)
            path = _write(work / "drift" / f"production-{seed}-{drift}.jsonl", rows)
            began = time.perf_counter()
            report, _ = detect_drift(project, [path])
            seconds = time.perf_counter() - began
            named = [f["feature"] for f in report.features]
            drifted = {i for i, r in enumerate(rows) if r["drifted"]}
            grouped = {m for g in report.groups for m in g.members}
            runs.append({
                "seed": seed, "drift": drift, "seconds": seconds, "features": len(named), "named": named[:6],
                "hail": min((f["q"] for f in report.features if "hail" in f["feature"]), default=None),
                "cue": min((f["q"] for f in report.features if "reasoning" in f["feature"]), default=None),
                "grouped_drifted": len(drifted & grouped) / len(drifted) if drifted else None,
                "grouped_other": len(grouped - drifted), "groups": len(report.groups),
                "mmd_p": report.embedding["p"], "far_p": report.embedding["far_p"], "drifted": report.drifted})
            log(f"drift seed {seed}, {drift:.0%} planted: {len(named)} features named, groups hold "
                f"{len(drifted & grouped)} of {len(drifted)} drifted and {len(grouped - drifted)} others, "
                f"MMD p {report.embedding['p']:.3f}, {seconds:.1f} s")
    rows = production_set(size=scale, drift=0.1, seed=0)
    path = _write(work / "drift" / "production-scale.jsonl", rows)
    timings = []
    for attempt in ("embeddings computed", "embeddings cached"):
        began = time.perf_counter()
        detect_drift(project, [path])
        timings.append({"run": attempt, "seconds": time.perf_counter() - began})
        log(f"drift of {scale:,} inputs, {attempt}: {timings[-1]['seconds']:.1f} s")
    return {"runs": runs, "size": size, "scale": scale, "timings": timings}


def _reference(root: Path):
    from refinery.ingest import ingest_files
    from refinery.project import load_project
    from refinery.store import Store

    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "refinery.toml").write_text(f'base_model = "{REPO / "data" / "tiny-base"}"\n', encoding="utf-8")
    project = load_project(root, environ={})
    with Store(project.store_path) as store:
        ingest_files(store, [DEMO_DATA / "seed.jsonl"], config=project.config, split="train", source="seed")
        ingest_files(store, [DEMO_DATA / "eval.jsonl"], config=project.config, split="analysis")
    return project


def _write(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def drift_section(result: dict[str, Any], results: dict[str, Any], run_line: str) -> list[str]:
    """The page's drift section."""
    planted = [r for r in result["runs"] if r["drift"]]
    clean = [r for r in result["runs"] if not r["drift"]]
    out = ["## Drift: a planted drift named, a clean one not, and the cost at scale", "", run_line, "",
           f"- Reference: the demo's seed set (train) and its 600 evaluation inputs (analysis). Production: "
           f"{result['size']:,} inputs from `data/demo/make_production.py` per seed, 10 % of them drifted (hail, "
           "a condition the reference never shows; \"show your reasoning.\", a cue it never shows), or none.",
           "- Named: a feature more common in production with q < 0.05 (Benjamini-Hochberg over every feature "
           "tested). Grouped: the drifted inputs that fall in drift's groups (the goal: 80 %).", "",
           "| seed | planted | features named | hail q | cue q | drifted inputs grouped | other inputs grouped | "
           "MMD p | far p | drift found | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        out.append(f"| {r['seed']} | {r['drift']:.0%} | {r['features']} | {_q(r['hail'])} | {_q(r['cue'])} | "
                   f"{'-' if r['grouped_drifted'] is None else format(r['grouped_drifted'], '.1%')} | "
                   f"{r['grouped_other']} | {r['mmd_p']:.3f} | {r['far_p']:.2f} | {'yes' if r['drifted'] else 'no'} | "
                   f"{r['seconds']:.1f} |")
    both = sum(r["hail"] is not None and r["cue"] is not None for r in planted)
    false = sum(r["features"] for r in clean)
    alarms = sum(r["drifted"] for r in clean)
    out += ["", f"Both planted drifts were named in {both} of {len(planted)} seeds. On the clean sets, "
                f"{false} features were named in all ({len(clean)} seeds), and drift was reported on {alarms} "
                f"of {len(clean)} (a clean set is reported only by chance: the MMD test alone, at p < 0.05, "
                f"does so in 1 of 20).", "",
            f"Cost at {result['scale']:,} production inputs (10 % drifted), features tested on a seeded sample of "
            f"20,000, embeddings on 1,000 a side: " + ", ".join(f"{t['seconds']:.1f} s with {t['run']}"
                                                               for t in result["timings"]) + "."]
    return out


def _q(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"
