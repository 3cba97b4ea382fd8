"""The sweep part: `refinery sweep` over LoRA placement, rank and LoRA against a full fine-tune on the demo, at
round 1's training set (the 20 seed examples) and at the last round's, to measure the usual guidance (attention
plus MLP for stronger recall; a low rank for few examples, a higher one as the data grows; a full fine-tune when
LoRA does not move the behaviour) on this task, and whether the answer changes with the data size.

It needs a demo project with finished rounds (`make demo`, then `bench/run --parts sweep --from-project .`); arms a
sweep already finished are read back from its store, not trained again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

GRID = ["target_modules=attention,attention-mlp,all-linear", "rank=4,16,64", "method=lora,full"]


def run_sweeps(project_dir: Path, *, log) -> dict[str, Any]:
    from refinery.project import load_project
    from refinery.stages.grid import mcnemar, parse_grid
    from refinery.stages.sweep import run_grid
    from refinery.store import Store

    project = load_project(project_dir, environ={})
    with Store(project.store_path, read_only=True) as store:
        done = store.frame("SELECT number FROM rounds WHERE status = 'done' AND kind = 'round' ORDER BY number")
    if done.height < 2:
        raise RuntimeError(f"{project_dir}: the sweep part needs a demo project with finished rounds (make demo, "
                           f"then bench/run --parts sweep --from-project DIR).")
    out: dict[str, Any] = {"project": str(project_dir), "grid": GRID, "sweeps": []}
    for number in (int(done["number"][0]), int(done["number"][-1])):
        began = time.perf_counter()
        document = run_grid(project, parse_grid(GRID, project.config), from_round=number)
        with Store(project.store_path, read_only=True) as store:
            passed = {arm: json.loads(p) for arm, p in store.con.execute(
                "SELECT arm, passed FROM sweep_arms WHERE sweep = ?", [document["sweep"]]).fetchall()}
            document["started"] = str(store.scalar("SELECT created_at FROM sweeps WHERE id = ?",
                                                   [document["sweep"]]))[:16]
        best = document["best"]
        document["against_best"] = {r["arm"]: mcnemar(passed[best], passed[r.get("same_as", r["arm"])])
                                    for r in document["rows"] if "error" not in r}
        document["bench_seconds"] = round(time.perf_counter() - began, 1)
        log(f"sweep at round {number}: {document['verdict']}")
        out["sweeps"].append(document)
    return out


def sweep_section(result: dict[str, Any], results: dict[str, Any], run_line: str) -> list[str]:
    lines = ["## Choosing the recipe: placement, rank and LoRA against a full fine-tune", "", run_line, "",
             f"`refinery sweep {' '.join(GRID)} --round N` on the demo project `{result['project']}`, at round 1's "
             f"training set and at the last round's: every arm trained fresh by SFT with the same seed (the step "
             f"rule's budget for the set; `[train]` otherwise as the demo sets it: alpha 32, learning rate 3e-3, "
             f"batch 16), measured on the 500 test and 14 corner examples. Arms that train the same weights are "
             f"trained once (= arm N). p: exact McNemar of the arm against the best arm on the same test examples.",
             ""]
    for document in result["sweeps"]:
        lines += [f"### Round {document['round']}'s training set: {document['train_examples']} examples, "
                  f"{document['steps']} steps", "",
                  f"Sweep {document['sweep']} of the project's store, started {document['started']} UTC"
                  + (f"; {document['resumed']} of its arms read back as finished by an earlier run of it"
                     if document["resumed"] else "") + ".", "",
                  "| arm | target_modules | rank | method | test pass | p vs best | corner | train s | eval s | "
                  "peak GiB | weights MB | test failures by check |", "|---" * 12 + "|"]
        for r in document["rows"]:
            s, p = r["settings"], document["against_best"].get(str(r["arm"]), document["against_best"].get(r["arm"]))
            cost = ([f"= arm {r['same_as']}", "", "", ""] if "same_as" in r else
                    [f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}", f"{r['peak_memory_bytes'] / 2**30:.2f}",
                     f"{r['weights_bytes'] / 1e6:.2f}"])
            mark = " (best)" if r["arm"] == document["best"] else " (now)" if r["current"] else ""
            lines.append(f"| {r['arm']}{mark} | {s['target_modules']} | {s['rank']} | {s['method']} | "
                         f"{r['test_pass_rate']:.1%} | {_versus(r, document['best'], p)} | "
                         f"{r['corner_pass_rate']:.1%} | " + " | ".join(cost) + " | "
                         + ", ".join(f"{k} {n}" for k, n in r["failures"].items()) + " |")
        lines += ["", f"Verdict: {document['verdict']}", "", *_by_setting(document), ""]
    return lines


def _versus(row: dict[str, Any], best: int, paired: dict[str, Any]) -> str:
    if row["arm"] == best:
        return "-"
    return "same outputs" if paired["only_a"] + paired["only_b"] == 0 else _p(paired["p"])


def _by_setting(document: dict[str, Any]) -> list[str]:
    """Per swept key and value, the best arm with it (LoRA arms for the LoRA keys) and its p against the best."""
    rows = [r for r in document["rows"] if "error" not in r]
    lines = []
    for key in document["grid"]:
        cells = []
        for value in document["grid"][key]:
            having = [r for r in rows if r["settings"][key] == value
                      and (key == "method" or r["settings"].get("method") != "full")]
            if not having:
                continue
            top = max(having, key=lambda r: (r["test_pass_rate"], r["current"]))
            paired = document["against_best"].get(str(top["arm"]), document["against_best"].get(top["arm"]))
            versus = _versus(top, document["best"], paired)
            versus = {"-": "the best", "same outputs": "the best's outputs"}.get(versus, f"p {versus} against the best")
            cells.append(f"{value} {top['test_pass_rate']:.1%} ({versus})")
        lines.append(f"- Best arm by {key}{' (LoRA arms)' if key != 'method' else ''}: " + "; ".join(cells) + ".")
    return lines


def _p(p: float) -> str:
    return "< 1e-6" if p < 1e-6 else f"{p:.2g}"
