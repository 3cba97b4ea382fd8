"""The sections of docs/benchmarks.md that the objective, model and judge parts write. Each is a marked block that a
run of its part replaces and any other run keeps, so one part can be measured again without re-running the rest."""

from __future__ import annotations

import re
import statistics
from typing import Any

from bench import stats
from bench.report import _minutes, _pct, _pts, _spread_pct
from refinery.config import TrainSettings

SPLICED = ("stages", "scale", "objective", "model", "judge", "distributed", "drift", "sweep")
DPO_KEYS = ("dpo_steps", "dpo_beta", "dpo_learning_rate", "dpo_sft_weight")
ARM_NAMES = {"sft": "SFT", "sft+dpo": "SFT then DPO", "dpo": "DPO alone after round 1"}


def splice(page: str, results: dict[str, Any]) -> str:
    """`page` with the block of each spliced part this run measured, replacing the page's own or appended."""
    for part in SPLICED:
        if not results.get(part):
            continue
        block = _block(part, SECTIONS[part](results[part], results))
        found = _find(page, part)
        page = page.replace(found, block) if found else page.rstrip("\n") + "\n\n" + block + "\n"
    return page


def carry(new: str, old: str, results: dict[str, Any]) -> str:
    """The spliced blocks of `old` whose part this run did not measure, appended to `new`."""
    for part in SPLICED:
        found = _find(old, part)
        if found and not results.get(part):
            new = new.rstrip("\n") + "\n\n" + found + "\n"
    return new


def _block(part: str, lines: list[str]) -> str:
    return f"<!-- bench:{part} -->\n" + "\n".join(lines).rstrip() + f"\n<!-- /bench:{part} -->"


def _find(page: str, part: str) -> str | None:
    match = re.search(rf"<!-- bench:{re.escape(part)} -->.*?<!-- /bench:{re.escape(part)} -->", page, re.S)
    return match.group(0) if match else None


def _run_line(results: dict[str, Any], part: str) -> str:
    s = results["settings"]
    return (f"Measured by `bench/run --parts {','.join(s['parts'])}` on {results['date']} (commit "
            f"{results['commit']}), {_minutes(results['seconds'].get(part))} for this part; load average at the "
            f"start {', '.join(results['machine'].get('load_at_start') or []) or '?'}.")


def _objective(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    arms = tuple(a for a in ARM_NAMES if any(r["arm"] == a for r in rows))
    table = stats.curves(rows, arms)
    seeds = sorted({r["seed"] for r in rows})
    rounds = max(r["round"] for r in rows)
    train = dict(results["settings"].get("train") or [])  # the --train KEY=VALUE overrides
    first = next(r for r in rows if r["round"] == 1)
    dpo_arms = [a for a in arms if a != "sft"]
    out = ["## SFT alone against SFT then DPO on the loop's own preference pairs", "",
           _run_line(results, "objective"), "",
           f"- The bundled demo as `make demo` sets it up, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
           f"({', '.join(map(str, seeds))}; each sets `[core] seed` and `[train] seed`, shared by the arms), "
           f"{rounds} rounds per arm, refinery's targeted counterexamples in every arm (round 1: {first['steps']} "
           f"SFT steps at batch "
           f"{first['batch_size']}, later rounds by the step rule, continuing the last adapter).",
           "- Arms: " + "; ".join(f"**{ARM_NAMES[a]}** (`[train] objective = \"{a}\"`)" for a in arms) + ". DPO "
           "trains on the active pairs of the rounds before (" + ", ".join(
               f"`{key}` {train.get(key, getattr(TrainSettings(), key))}" for key in DPO_KEYS) +
           ": the defaults unless set here), so round 1 is SFT in every arm.",
           "- Equal data, in the sense the loop can give it: every arm generates with the same settings and budget "
           "from its own failures, so the arms' added examples differ after round 1. DPO's chosen outputs are the "
           "expected outputs of failing *analysis* examples (and of counterexamples): labels SFT does not train on. "
           "The test split, which no arm mines or trains on, is the measure.", "",
           "### Test pass rate per round", "",
           "| round | " + " | ".join(ARM_NAMES[a] for a in arms) + "".join(
               f" | pairs available to {ARM_NAMES[a]} (median)" for a in dpo_arms) + " |",
           "|---|" + "---|" * (len(arms) + len(dpo_arms))]
    for i in range(rounds):
        cells = [_spread_pct(table[a][i]["pass_rate"]) if i < len(table[a]) else "" for a in arms]
        pools = [statistics.median([sum(r["pairs"] or 0 for r in rows if r["arm"] == a and r["seed"] == s
                                        and r["round"] <= i) for s in seeds]) for a in dpo_arms]
        out.append(f"| {i + 1} | " + " | ".join(cells + [f"{p:.0f}" for p in pools]) + " |")
    out += ["", "Median, with min-max over seeds in brackets.", ""]
    for arm in (dpo_arms if "sft" in arms else []):
        out += _versus(rows, arm, seeds, rounds)
    out += _dpo_time(rows, arms)
    out += ["### Every run", "", "| seed | arm | round | SFT steps | DPO steps on pairs | test pass rate | train "
            "seconds (SFT + DPO) | round seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["seed"], arms.index(r["arm"]), r["round"])):
        dpo = r.get("dpo") or {}
        sft_steps = "-" if r["arm"] == "dpo" and dpo else r["steps"]
        dpo_text = f"{dpo['steps']} on {dpo['pairs']}" if dpo else "-"
        seconds = r["train_seconds"] if r["arm"] == "dpo" and dpo else r["train_seconds"] + (dpo.get("seconds") or 0)
        out.append(f"| {r['seed']} | {r['arm']} | {r['round']} | {sft_steps} | {dpo_text} | "
                   f"{_pct(r['test_pass_rate'])} | {seconds:.0f} | {r['seconds']:.0f} |")
    return out + [""]


def _versus(rows: list[dict[str, Any]], arm: str, seeds: list[int], rounds: int) -> list[str]:
    """Per round: the arm minus SFT on the same seed, and McNemar on the same test examples."""
    out = [f"### {ARM_NAMES[arm]} minus SFT, same seed and test examples", "",
           "| round | median difference | seeds ahead / behind / level | only it passed | only SFT passed | "
           "McNemar p (pooled over seeds) |", "|---|---|---|---|---|---|"]
    for number in range(2, rounds + 1):
        by = {(r["arm"], r["seed"]): r["test_pass_rate"] for r in rows if r["round"] == number}
        gaps = [by[(arm, s)] - by[("sft", s)] for s in seeds if (arm, s) in by and ("sft", s) in by]
        if not gaps:
            continue
        test = stats.mcnemar_arms(rows, number, arm, "sft")
        ahead, behind = sum(g > 0 for g in gaps), sum(g < 0 for g in gaps)
        p = f"{test['p']:.3g}" if test else "n/a"
        out.append(f"| {number} | {_pts(statistics.median(gaps))} | {ahead} / {behind} / {len(gaps) - ahead - behind}"
                   f" | {test['only_a'] if test else ''} | {test['only_b'] if test else ''} | {p} |")
    return out + [""]


def _dpo_time(rows: list[dict[str, Any]], arms: tuple[str, ...]) -> list[str]:
    """What DPO costs a round: its own training seconds, and the round's seconds against SFT's."""
    out = ["### Time", ""]
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm and r["round"] > 1]
        dpo = [r["dpo"]["seconds"] for r in mine if r.get("dpo")]
        train_stage = [r["stages"].get("train", 0) for r in mine]
        if not mine:
            out.append(f"- {ARM_NAMES[arm]}: no round 2.")
            continue
        text = (f"- {ARM_NAMES[arm]}, rounds 2 and later: median round "
                f"{statistics.median(r['seconds'] for r in mine):.0f} s, train stage "
                f"{statistics.median(train_stage):.0f} s")
        if dpo:
            text += f", of which DPO training {statistics.median(dpo):.1f} s (median of {len(dpo)} runs)"
        out.append(text + ".")
    out += ["- The train stage also loads the base model and the adapter once for each trainer. Every arm collects "
            "the round's pairs in its generate stage (one more generation pass over its stored counterexamples), "
            "whatever its objective.", ""]
    return out


def _model(m: dict[str, Any], results: dict[str, Any]) -> list[str]:
    ours, ref, ratios = m["model"], m["reference"], m["ratios"]
    out = ["## The demo on a real pretrained model", "",
           _run_line(results, "model"), "",
           f"- Real model: `{ours['base_model']}`, the project in `{ours['project']}`; reference: `{ref['base_model']}`"
           f" in `{ref['project']}`, run on this machine. Both on the demo's data "
           f"({ours['rounds'][0]['test_examples']} and {ref['rounds'][0]['test_examples']} test examples); each "
           f"round infers every held-out example, the "
           f"test split also with the thinking cue added and removed.", "",
           "| round | real model: test pass | seconds (train / infer / round) | steps x batch | bundled model: test "
           "pass | seconds (train / infer / round) | steps x batch |", "|---|---|---|---|---|---|---|"]
    for i in range(max(len(ours["rounds"]), len(ref["rounds"]))):
        cells = []
        for side in (ours, ref):
            r = side["rounds"][i] if i < len(side["rounds"]) else None
            cells += ([_pct(r["test_pass_rate"]), f"{r['train_seconds']:.0f} / {r['stages'].get('infer', 0):.0f} / "
                       f"{r['seconds']:.0f}", f"{r['steps']} x {r['batch_size']}"] if r else ["", "", ""])
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    out += ["", "| per unit of work (median over rounds) | real model | bundled model | ratio |", "|---|---|---|---|"]
    names = {"seconds_per_step": "training seconds per optimizer step",
             "seconds_per_example_step": "training seconds per example (step / batch)",
             "seconds_per_token": "inference seconds per generated token (batched)",
             "seconds_per_round": "seconds per round"}
    for key, name in names.items():
        out.append(f"| {name} | {ours['speed'][key]:.4g} | {ref['speed'][key]:.4g} | "
                   f"{ratios[key]:.0f}x |" if key in ratios else f"| {name} | | | |")
    return out + [""]


def _judge(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    from bench.judge import judge_section

    return judge_section(rows, results, _run_line(results, "judge"))


def _distributed(rows: list[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    from bench.distributed import distributed_section

    return distributed_section(rows, results, _run_line(results, "distributed"))


def _drift(result: dict[str, Any], results: dict[str, Any]) -> list[str]:
    from bench.drift import drift_section

    return drift_section(result, results, _run_line(results, "drift"))


def _stages(result: dict[str, Any], results: dict[str, Any]) -> list[str]:
    from bench.report import _stages as stages

    heading, *rest = stages(result)
    return [heading, "", _run_line(results, "stages"), *rest]


def _scale(result: dict[str, Any], results: dict[str, Any]) -> list[str]:
    from bench.report import _scale as scale

    heading, *rest = scale(result, results["settings"])
    return [heading, "", _run_line(results, "scale"), *rest]


def _sweep(result: dict[str, Any], results: dict[str, Any]) -> list[str]:
    from bench.sweep import sweep_section

    return sweep_section(result, results, _run_line(results, "sweep"))


SECTIONS = {"stages": _stages, "scale": _scale, "objective": _objective, "model": _model, "judge": _judge,
            "distributed": _distributed, "drift": _drift, "sweep": _sweep}
