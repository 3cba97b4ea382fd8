"""docs/benchmarks.md and its plots, written from the results JSON of `bench/run`. Every figure and every
sentence that judges one comes from the results; nothing here is a measured value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import stats
from bench.efficiency import ARMS
from bench.regimes import second_run

ARM_NAMES = {"targeted": "targeted (refinery)", "random": "random augmentation", "steps": "no new data, more steps"}
ARM_COLOURS = {"targeted": "#1f77b4", "random": "#ff7f0e", "steps": "#7f7f7f"}
PLOT = "benchmarks/sample-efficiency.svg"
REGIMES = {  # part -> (section title, what the arms start from)
    "efficiency": ("1. Sample efficiency, cold start (the bundled demo)",
                   "- The bundled demo (weather tags): its seed set (20 examples), base model (`data/tiny-base`), "
                   "rules, templates and settings, ingested as `make demo` does"),
    "usually_right": ("2. Sample efficiency, the model starts usually right",
                      "- The usually-right scenario (`data/demo/usually-right/`, its distribution stated in "
                      "`bench/README.md` before it was run): a broad seed set drawn from the same natural "
                      "distribution as its analysis and test sets, hard slices each at most 8 % of inputs; the "
                      "demo's base model, rules, templates and settings"),
}


def write_report(results: dict[str, Any], docs: Path, *, target: float | None = None) -> Path:
    """docs/benchmarks.md: rendered anew when the run measured any of the page's main parts (the ceiling, the demo,
    the efficiency regimes), keeping the old page's sections of the spliced parts (stages, scale, objective, ...)
    this run did not measure; else the old page with only the sections of the parts this run measured replaced."""
    from bench.report_parts import SPLICED, carry, splice

    docs.mkdir(parents=True, exist_ok=True)
    page = docs / "benchmarks.md"
    old = page.read_text(encoding="utf-8") if page.is_file() else ""
    if any(results.get(part) for part in ("ceiling", "demo", *REGIMES)) or not old:
        for part in REGIMES:
            if results.get(part):
                plot_efficiency(results[part], docs / _plot(part))
        text = carry(render(results, target=target), old, results)
    else:
        text = old
    if any(results.get(part) for part in SPLICED):
        text = splice(text, results)
    page.write_text(text, encoding="utf-8")
    return page


def render(results: dict[str, Any], *, target: float | None = None) -> str:
    s = results["settings"]
    lines = ["# Benchmarks", "",
             f"Written by `bench/run` on {results['date']} from one run of {_minutes(results['seconds'].get('total'))}"
             f" (commit {results['commit']}); raw results in `{_rel(Path(s['out']) / 'results.json')}`. "
             f"Re-run it all with `bench/run` (see `bench/README.md`)." + second_run(results), ""]
    answers = [(part, results[part]) for part in REGIMES if results.get(part)]
    if answers:
        lines += ["## The answer", ""]
        for part, rows in answers:  # named by its regime unless the cold start is all there is
            named = part != "efficiency" or len(answers) > 1
            lines += [(f"*{REGIMES[part][0].split('. ', 1)[1]}.* " if named else "") + statement(rows, target), ""]
    lines += _machine(results)
    if results.get("ceiling"):
        lines += _ceiling(results["ceiling"])
    if results.get("demo"):
        lines += _demo(results["demo"], results.get("ceiling"))
    if results.get("efficiency"):
        lines += _efficiency(results["efficiency"], s, target)
        lines += regime_lines(results["efficiency"])
    if results.get("usually_right"):
        lines += _efficiency(results["usually_right"], s, target, regime="usually_right")
        lines += regime_lines(results["usually_right"])
    if not answers:
        lines += ["## Sample efficiency", "", "Not run this time (`bench/run --parts efficiency,usually_right`).", ""]
    for part, error in (results.get("errors") or {}).items():
        last = error.strip().splitlines()[-1] if error.strip() else "?"
        lines += [f"**The {part} part failed** in this run: `{last}` (traceback in the results JSON).", ""]
    return "\n".join(lines).rstrip() + "\n"


def statement(rows: list[dict[str, Any]], target: float | None) -> str:
    """The plain verdict on targeted against random, from the data."""
    target = stats.auto_target(rows) if target is None else target
    v = stats.verdict(rows, target)
    if v["outcome"] == "no data":
        return "No verdict: targeted against random needs at least two rounds of both arms."
    f = v["final"]
    d = f["difference"]
    head = {"targeted beat random": "**Targeted data beat random augmentation.**",
            "targeted ahead, within chance": "**Targeted data did better than random augmentation, but by no more "
                                             "than chance explains.**",
            "random beat targeted": "**Targeted data did not beat random augmentation: random did better.**",
            "random ahead, within chance": "**Targeted data did not beat random augmentation: random did better, "
                                           "though by no more than chance explains.**",
            "no clear difference": "**Targeted data did not clearly beat random augmentation.**"}[v["outcome"]]
    text = (f"{head} At round {v['rounds']} ({v['seeds']} seed{'s' if v['seeds'] != 1 else ''}, the same number of "
            f"added examples in both arms), the median test pass rate was {_pct(f['targeted']['median'])} with "
            f"refinery's targeted counterexamples against {_pct(f['random']['median'])} with random ones: "
            f"{_pts(d['median'])}" + (f" (per seed {_pts(d['min'])} to {_pts(d['max'])}; targeted higher in "
                                      f"{f['wins']}, lower in {f['losses']}, equal in {f['ties']})."
                                      if v["seeds"] > 1 else "."))
    m = v.get("mcnemar")
    if m:
        text += (f" On the same {m['pairs']} test examples (all seeds pooled), {m['only_targeted']} passed only with "
                 f"targeted data and {m['only_random']} only with random data (exact McNemar p = {m['p']:.2g}"
                 + ("; a difference this size is within chance)." if m["p"] >= 0.05 else ")."))
    t = v.get("paired")
    if t:
        t_test = f"paired t-test p = {t['p']:.2g}" if t["p"] is not None else "the same gap in every seed"
        text += (f" Paired over the {t['seeds']} seeds, the mean gap was {_pts(t['mean'])} ({t_test}; exact "
                 f"Wilcoxon signed-rank p = {t['wilcoxon_p']:.2g}, which cannot go below "
                 f"{2 / 2 ** t['seeds']:.2g} with {t['seeds']} seeds).")
    if v["mean_difference_rounds_2_on"] is not None and v["rounds"] > 2:
        text += f" Over rounds 2-{v['rounds']} the mean gap was {_pts(v['mean_difference_rounds_2_on'])}."
    text += " " + _reach_sentence(v)
    steps = stats.curves(rows).get("steps")
    if steps:
        last = steps[-1]
        text += (f" Training longer on the seed set alone ({int(last['steps']['median'])} steps in round "
                 f"{last['round']}) gave {_pct(last['pass_rate']['median'])}.")
    return text


def _reach_sentence(v: dict[str, Any]) -> str:
    target, reach, ratio = v["target"], v["reach"], v["data_ratio"]
    t, r = reach.get("targeted"), reach.get("random")
    if not t or not r:
        return ""
    text = (f"To reach {_pct(target)} on the test split, {_reached(t, 'the targeted arm', v['rounds'])}; "
            f"{_reached(r, 'random augmentation', v['rounds'])}.")
    if ratio is None:
        return text + " No ratio of examples can be given from that."
    value = ratio["value"]
    if ratio["bound"] == "exact":
        text += f" Random augmentation needed {value:.1f}x the examples targeted data needed."
    elif ratio["bound"] == "at least":
        text += f" Random augmentation needed more than {value:.1f}x the examples targeted data needed."
    else:
        text += f" Targeted data needed more than {1 / value:.1f}x the examples random augmentation needed."
    anchor = ("the published anchor for error-driven and targeted augmentation: about half the data of random "
              "selection, or less")
    if value >= 2 and ratio["bound"] != "at most":
        return text + f" That matches {anchor}."
    if value > 1 and ratio["bound"] != "at most":
        return text + f" That is a saving, but smaller than {anchor}."
    if value <= 1:
        return text + f" That is no saving in data, against {anchor}."
    return text + f" That is short of {anchor}."


def _reached(entry: dict[str, Any], name: str, rounds: int) -> str:
    if entry["reached"] == entry["seeds"]:
        return f"{name} needed a median of {_num(entry['median'])} added examples"
    if entry["reached"]:
        return (f"{name} got there in only {entry['reached']} of {entry['seeds']} seeds within {rounds} rounds "
                f"(median at least {_num(entry['median_at_least'])} examples)")
    return f"{name} did not get there within {rounds} rounds ({_num(entry['median_at_least'])} examples added)"


def _machine(results: dict[str, Any]) -> list[str]:
    m, v = results["machine"], results["versions"]
    load = ", ".join(m.get("load_at_start") or []) or "?"
    lines = ["## Machine and versions", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable, torch threads {m['torch_threads']}); "
             f"memory {m['memory_gib']} GiB; GPU: {m['gpu']}; {m['os']}; Python {m['python']}.",
             f"- Load average when the run started: {load} (1, 5, 15 min). Timings are single runs: on a shared "
             f"machine they move with the load.",
             "- " + ", ".join(f"{name} {ver}" for name, ver in v.items()) + ".",
             "- Time per part: " + ", ".join(f"{k} {_minutes(s)}" for k, s in results["seconds"].items()) + ".", ""]
    return lines


def regime_lines(rows: list[dict[str, Any]]) -> list[str]:
    from bench.regimes import effect_lines, per_round_lines, slice_lines

    return per_round_lines(rows) + slice_lines(rows) + effect_lines(rows)


def _efficiency(rows: list[dict[str, Any]], s: dict[str, Any], target: float | None, *,
                regime: str = "efficiency") -> list[str]:
    table = stats.curves(rows)
    seeds = sorted({r["seed"] for r in rows})
    rounds = max(r["round"] for r in rows)
    first = min(rows, key=lambda r: (r["arm"] != "targeted", r["round"]))
    target = stats.auto_target(rows) if target is None else target
    title, data = REGIMES[regime]
    out = [f"## {title}: targeted data against random data and more steps", "",
           "### Method", "",
           data + (f", with only the first {s['eval_rows']} rows of its eval set" if s.get("eval_rows") else "")
           + ".",
           f"- {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}). A seed sets "
           f"`[core] seed` (the deal of the held-out rows into analysis and test, and generation) and "
           f"`[train] seed`; the three arms of a seed share both, so they start from the same model on the same "
           f"split.",
           f"- {rounds} rounds per arm, training steps by the project's `[train]` settings (round 1: "
           f"{first['steps']}; batch {first.get('batch_size', '?')}; every run's steps below), each round "
           + ("continuing the last round's LoRA adapter (`[train] warm_start`)" if s.get("warm_start", True)
              else "a fresh LoRA adapter from the base model")
           + ". Round r's model is trained on the seed set plus what rounds 1..r-1 added, so round 1 is the same "
           "seed-only model in every arm.",
           "- **targeted**: refinery as shipped (`[generate] targeting = \"patterns\"`): each round's budget "
           "planned from its failures: the failing share of the analysis split (at least 10 %) rendered from "
           "random analysis examples, the rest shared over every failure pattern with "
           "templates by failing mass (`refinery/stages/targeting.py`).",
           "- **random**: `targeting = \"random\"`: the same templates rendered from analysis examples drawn at "
           "random, one template per example in turn, not aimed at any failure, with the same vetting (rules, "
           "duplicates, test leaks). Its `per_round` is set, round by round, to the number the targeted arm of the "
           "same seed stored in that round, so both arms hold the same number of added examples every round.",
           "- **steps**: `targeting = \"off\"` (no new data), on the seed set, with the compute the targeted arm "
           "has spent by round r: with `[train] warm_start` (the default) each round continues the last round's "
           "adapter for as many steps as the targeted arm's round (its round 2, with no adapter before it, trains "
           "rounds 1-2's steps at once); without it, round r trains rounds 1..r's steps in one fresh model. Its "
           "round 1 (the same seed-only model) is the targeted arm's, not trained a third time.",
           f"- Figures are the test split's pass rate (an example passes when every check that applies to it "
           f"passes; {_test_size(rows)} test examples per seed), never mined. Spread: min-max over seeds "
           f"(interquartile range in the JSON).",
           "- Examples to reach a target: the examples added before the first round whose pass rate reached it "
           "(round granularity, so an upper bound). Target: "
           + (f"{_pct(target)}, set with `--target`." if s.get("target") is not None else
              f"{_pct(target)}, chosen by the data: halfway from the median seed-only pass rate to the best median "
              f"any arm reached, rounded down (arm-neutral)."), ""]
    out += ["### Test pass rate per round", "",
            "| round | " + " | ".join(ARM_NAMES[a] for a in ARMS if a in table)
            + " | added examples (targeted = random) | steps (steps arm) |",
            "|---|" + "---|" * (len([a for a in ARMS if a in table]) + 2)]
    for i in range(rounds):
        cells = []
        for arm in ARMS:
            if arm in table:
                c = table[arm][i] if i < len(table[arm]) else None
                cells.append(_spread_pct(c["pass_rate"]) if c else "")
        added = table.get("targeted", [{}] * rounds)[i].get("added_before") if "targeted" in table else None
        arm_steps = table["steps"][i]["steps"]["median"] if "steps" in table and i < len(table["steps"]) else None
        out.append(f"| {i + 1} | " + " | ".join(cells) + f" | {_spread_num(added) if added else ''} | "
                   f"{_num(arm_steps) if arm_steps is not None else ''} |")
    out += ["", f"Median, with min-max over seeds in brackets. ![Sample-efficiency curves]({_plot(regime)})", ""]
    from bench.regimes import near_best_target

    near = near_best_target(rows)
    for goal in sorted({target, 0.90, 0.95} | ({round(near, 4)} if near is not None else set())):
        out += _reach_lines(rows, goal) + ([f"({_pct(goal)} is one point below the better arm's median final "
                                             f"pass rate.)", ""] if near is not None and goal == round(near, 4)
                                           else [])
    out += _shortfall_lines(rows)
    out += _same_start_lines(rows)
    out += _template_lines(rows)
    out += ["### Every run", "", "| seed | arm | round | examples added before | steps | test pass rate | added this "
            "round | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["seed"], ARMS.index(r["arm"]), r["round"])):
        seconds = f"(the {r['shared_with']} run)" if r.get("shared_with") else f"{r['seconds']:.0f}"
        out.append(f"| {r['seed']} | {r['arm']} | {r['round']} | {r['added_before']} | {r['steps']} | "
                   f"{_pct(r['test_pass_rate'])} | {r['added']} | {seconds} |")
    return out + [""]


def _reach_lines(rows: list[dict[str, Any]], target: float) -> list[str]:
    reach = stats.reach_table(rows, target)
    out = [f"### Added examples needed to reach {_pct(target)} on the test split", "",
           "| arm | seeds that reached it | median added examples | per seed |", "|---|---|---|---|"]
    for arm, entry in reach.items():
        per = []
        for seed, v in entry["per_seed"].items():
            if v["reached"]:
                per.append(f"seed {seed}: {v['examples']} (round {v['round']}, {v['steps']} steps)")
            else:
                per.append(f"seed {seed}: not within {v['rounds']} rounds ({v['max_examples']} added)")
        if entry["median"] is not None:
            median = _num(entry["median"])
        elif arm == "steps":
            median = "not reached" if not entry["reached"] else f"{entry['reached']} of {entry['seeds']} seeds"
        else:
            median = f"more than {_num(entry['median_at_least'])}" if entry["reached"] < entry["seeds"] else "?"
        out.append(f"| {ARM_NAMES[arm]} | {entry['reached']} of {entry['seeds']} | {median} | {'; '.join(per)} |")
    return out + ["", "The steps arm adds no examples: it either reaches the target with more steps (0 examples) or "
                  "does not.", ""]


def _shortfall_lines(rows: list[dict[str, Any]]) -> list[str]:
    short = [r for r in rows if r["arm"] == "random" and r["wanted"] is not None and r["added"] != r["wanted"]]
    if not short:
        return ["Equal counts held: in every round the random arm stored exactly as many examples as the targeted "
                "arm of the same seed.", ""]
    parts = [f"seed {r['seed']} round {r['round']}: {r['added']} of {r['wanted']}" for r in short]
    return ["**Equal counts did not always hold**: the random arm stored fewer examples than the targeted arm in "
            + "; ".join(parts) + " (candidates rejected by vetting beyond what the engine renders).", ""]


def _same_start_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Round 1 trains the same seed-only model in every arm of a seed: the check that the arms start level."""
    seeds = sorted({r["seed"] for r in rows})
    first = {seed: {r["test_pass_rate"] for r in rows if r["seed"] == seed and r["round"] == 1
                    and not r.get("shared_with")} for seed in seeds}
    level = [seed for seed, rates in first.items() if len(rates) == 1]
    if len(level) == len(seeds):
        return ["The arms start level: round 1 (the seed-only model), trained separately in the targeted and the "
                "random arm, gave the same test pass rate in both, "
                + (f"for each of the {len(seeds)} seeds." if len(seeds) > 1 else "for the one seed."), ""]
    differ = [seed for seed in seeds if seed not in level]
    return [f"**The arms did not start level** for seed(s) {', '.join(map(str, differ))}: round 1 gave different "
            f"test pass rates, so training was not deterministic there; compare those seeds with care.", ""]


def _template_lines(rows: list[dict[str, Any]]) -> list[str]:
    totals: dict[str, dict[str, int]] = {}
    for r in rows:
        for template, n in (r.get("by_template") or {}).items():
            totals.setdefault(template, {}).setdefault(r["arm"], 0)
            totals[template][r["arm"]] += n
    if not totals:
        return []
    out = ["### What each arm added, by template (all seeds and rounds)", "", "| template | targeted | random |",
           "|---|---|---|"]
    for template in sorted(totals):
        out.append(f"| {template} | {totals[template].get('targeted', 0)} | {totals[template].get('random', 0)} |")
    return out + [""]


def _ceiling(c: dict[str, Any]) -> list[str]:
    t = c["settings"]
    rule = (f"a fixed {t['steps']} steps" if t.get("steps") else
            f"the step rule: {t['epochs']:g} epochs at batch {t['batch_size']}, at least {t['min_steps']} and at most "
            f"{t['max_steps']} steps, {t['lr_schedule']} schedule")
    failed = ", ".join(f"{name} {n}" for name, n in c["failures"].items() if n) or "none"
    where = f"the demo project in {c['from_project']}" if c.get("from_project") else "a fresh copy of the demo"
    return ["## The ceiling: the per-round recipe on oracle data", "",
            f"`refinery ceiling` on {where}: the demo's own `[train]` settings ({t['method']}, "
            f"{t['target_modules']}, rank {t['rank']}, lr {t['learning_rate']:g}; {rule}) trained on the seed set plus "
            f"every analysis example ({c['examples']} examples: the best data the loop could ever add), measured on "
            f"the test split, which is never trained on.", "",
            "| oracle examples | steps | test examples | test pass rate | weighted score | corner | failures by check "
            "| training s | total s |", "|---|---|---|---|---|---|---|---|---|",
            f"| {c['examples']} | {c['steps']} | {c['test_examples']} | {_pct(c['test_pass_rate'])} | "
            f"{c['test_weighted_score']:.3f} | {_pct(c['corner_pass_rate'])} | {failed} | {c['train_seconds']:.0f} | "
            f"{c['seconds']:.0f} |", ""]


def _demo(d: dict[str, Any], ceiling: dict[str, Any] | None) -> list[str]:
    top = ceiling["test_pass_rate"] if ceiling else None
    where = (f"The demo as `make demo` ran it, read from its project ({d['from_project']})" if d.get("from_project")
             else "A fresh copy of the demo run as `make demo` runs it")
    out = ["## The demo, round by round", "",
           f"{where}: the few-shot baseline ({_pct(d['baseline_test_pass_rate'])} of the test split, "
           f"{d['baseline_seconds']:.0f} s), then `refinery iterate --until-plateau`, which stopped: "
           + _stops(d) + ".", "",
           "| round | trained on | steps | test pass rate | of the ceiling | weighted score | analysis | corner "
           "| test failures by check | added | train s | round s |", "|---" * 12 + "|"]
    for r in d["rounds"]:
        reached = _pct(r["test_pass_rate"] / top) if top else "n/a"
        failed = ", ".join(f"{k} {v}" for k, v in r["failures"].items()) or "none"
        out.append(f"| {r['round']} | {r['train_examples']} | {r['steps']} | {_pct(r['test_pass_rate'])} | "
                   f"{reached} | {r['test_weighted_score']:.3f} | {_pct(r['analysis_pass_rate'])} | "
                   f"{_pct(r['corner_pass_rate'])} | {failed} | {r['added']} | {r['stages'].get('train', 0):.0f} | "
                   f"{r['seconds']:.0f} |")
    if d["rounds"]:
        seconds = sorted(r["seconds"] for r in d["rounds"])
        how = ("from each round's start to its end as the store recorded them" if d.get("from_project") else
               "wall time of each round in a warm process; the first includes loading the embedder")
        out += ["", f"Seconds per round: median {seconds[len(seconds) // 2]:.0f}, from {seconds[0]:.0f} to "
                    f"{seconds[-1]:.0f} ({how}). Baseline and rounds together: {_minutes(d.get('seconds'))}."]
    return out + [""]


def _stops(d: dict[str, Any]) -> str:
    """Why each `iterate` run stopped: one run in `make demo`, more where the project was iterated again."""
    stops = d.get("stops") or ([{"round": d["rounds"][-1]["round"], "reason": d["stop_reason"]}]
                               if d.get("stop_reason") and d["rounds"] else [])
    if not stops:
        return "not recorded (the run did not finish)"
    parts = [f"{stops[0]['reason']} (after round {stops[0]['round']})"]
    parts += [f"then another `iterate --until-plateau` went on to round {s['round']}: {s['reason']}" for s in stops[1:]]
    return "; ".join(parts)


def _stages(st: dict[str, Any]) -> list[str]:
    engine, c = st["round"], st["counts"]
    total = sum(v for v in engine.values() if v)
    tr, inf, an = st["train"], st["infer"], st["analyze"]
    notes = st.get("notes", {})
    rows = [
        ("train", engine.get("train"), notes.get("train", ""),
         f"trl `SFTTrainer`, same LoRA and training settings, same {c['train_examples']} pairs: load, train, save",
         tr["bare_seconds"]),
        ("infer", engine.get("infer"), notes.get("infer", ""),
         f"`model.generate` (transformers), same {inf['prompts']} prompts, batch and adapter (merged), decoded",
         inf["bare_seconds"]),
        ("evaluate", engine.get("evaluate"), notes.get("evaluate", ""), "none: refinery's rule checks", None),
        ("analyze", engine.get("analyze"), notes.get("analyze", ""), "the three parts below, re-run on the same "
         "failures", None),
        ("- embed", an["embed"], f"{an['texts']} failing inputs, empty cache, model loaded",
         "`SentenceTransformer(...).encode` of the same texts (model loaded)", an["bare_embed"]),
        ("- cluster", an["cluster"], f"{an['clusterer']}, {an['clusters']} clusters",
         "scikit-learn `KMeans` + `silhouette_score` over the same k, same matrix", an["bare_cluster"]),
        ("- describe", an["describe"], "features, Fisher tests, statements", "none: refinery's statistics", None),
        ("generate", engine.get("generate"), notes.get("generate", ""), "none (render, vet, embed candidates)",
         None),
        ("record (store)", engine.get("record"), "clusters, generated examples, metrics in one transaction",
         "none", None),
    ]
    out = ["## 3. Where the time goes: one demo round", "",
           f"{_capital(st.get('source', 'round 1 of the demo'))} ({c['train_examples']} training examples, "
           f"{c['steps']} steps, {c['outputs']} outputs, {c['failures']} failing analysis cases) in a warm process, "
           f"by stage as `round_stages` records it, {total:.1f} s in all. Each stage is set against the bare library "
           f"doing the same work on the same inputs; ratio = refinery / bare (1.00 = no overhead). The analyse "
           f"stage is split by running refinery's embed, cluster and describe again on the round's failures. One "
           f"run each.", "",
           "| stage | refinery s | share of round | what | bare library | bare s | ratio |",
           "|---|---|---|---|---|---|---|"]
    for name, seconds, what, bare, bare_seconds in rows:
        share = f"{seconds / total:.0%}" if seconds is not None and total and not name.startswith("-") else ""
        ratio = f"{seconds / bare_seconds:.2f}" if seconds and bare_seconds else ""
        out.append(f"| {name} | {_sec(seconds)} | {share} | {what} | {bare} | {_sec(bare_seconds)} | {ratio} |")
    out += ["", f"Training throughput: refinery {tr['engine_steps_per_second']:.1f} steps/s inside its trainer "
            f"({tr['engine_trainer_seconds']:.1f} s), bare trl {tr['bare_steps_per_second']:.1f} steps/s "
            f"({tr['bare_trainer_seconds']:.1f} s): ratio "
            f"{tr['bare_steps_per_second'] / tr['engine_steps_per_second']:.2f} (bare / refinery). Bare "
            f"generation spent {inf['bare_load_seconds']:.1f} s loading and merging. Embedding: refinery "
            f"{an['texts'] / an['embed']:.0f} texts/s, bare {an['texts'] / an['bare_embed']:.0f} texts/s, both "
            f"including the model load." if an["embed"] and an["bare_embed"] else "", ""]
    return out


def _scale(sc: dict[str, Any], s: dict[str, Any]) -> list[str]:
    emb = sc.get("embed") or {}
    rate = emb.get("per_second")
    out = ["## 4. Scale", "", "### Analysis of many failures", "",
           "refinery's `analyze` (cluster + describe, the analyse stage after embedding) on synthetic failures: "
           "demo inputs from the demo's generator (`data/demo/make_demo.py`), failing checks planted by input "
           "feature, a quarter as many passing cases, and **precomputed synthetic 384-d embeddings** (embedding "
           "is measured on its own below). Each size in its own process; peak memory is the process's maximum "
           "resident set (`/usr/bin/time -v`), which includes about the baseline shown (Python, polars, "
           "scikit-learn and the inputs). Clusterers: `silhouette` is the engine's default (k-means with k chosen "
           "by silhouette score over 2..`max_clusters`); `kmeans-fixed` is one k-means at k = `max_clusters`, "
           "swapped in through `analyze(..., clusterer=...)`; `silhouette+kept` is the default given the inputs' "
           "features kept in a store (`analyze.describe_inputs`, as every round of `iterate` does): its times are "
           "a later round's, reading them back included (the first round's cost is in the table after this one).",
           "",
           "| failures | clusterer | total s | cluster s | describe s | peak MB | baseline MB | growth of time "
           "from the size before |", "|---|---|---|---|---|---|---|---|"]
    analysis = sc.get("analysis", [])
    for clusterer in dict.fromkeys(r["clusterer"] for r in analysis):
        previous = None
        for r in [r for r in analysis if r["clusterer"] == clusterer]:
            res = r.get("result") or {}
            if r["status"] == "skipped":
                p = r["predicted"]
                out.append(f"| {r['n']:,} | {clusterer} | not run: about {_minutes(p['seconds'])} or more predicted "
                           f"(time ~ n^{p['exponent']:.2f} from the two sizes before), over the "
                           f"{r['timeout']:.0f} s limit | | | | | |")
                continue
            if r["status"] != "ok":
                out.append(f"| {r['n']:,} | {clusterer} | stopped after {r['seconds']:.0f} s ({r['status']}) | | | "
                           f"| | at least {_growth(previous, (r['n'], r['seconds']))} |")
                previous = None
                continue
            out.append(f"| {r['n']:,} | {clusterer} | {res['seconds']:.1f} | {res['cluster_seconds']:.1f} | "
                       f"{res['describe_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {res['baseline_rss_mb']:.0f} | "
                       f"{_growth(previous, (r['n'], res['seconds']))} |")
            previous = (r["n"], res["seconds"])
    kept = [r for r in analysis if r["status"] == "ok" and "kept_first_round_seconds" in r["result"]]
    if kept:
        out += ["", "Features kept in the store (`silhouette+kept`): reading every distinct input's features and "
                "storing them, as the first round does, then reading them back, as each later round does (the "
                "unseen-word features are read every round: they change with the training words).", "",
                "| failures | first round: read and store s | later rounds: read back s | store MB |",
                "|---|---|---|---|"]
        out += [f"| {r['n']:,} | {r['result']['kept_first_round_seconds']:.1f} | "
                f"{r['result']['kept_later_round_seconds']:.1f} | {r['result']['store_mb']} |" for r in kept]
    out += ["", "Growth: time ratio to the size before, and the exponent b of time ~ n^b (1 = linear, 2 = "
            "quadratic). The default scores each k's silhouette on a seeded sample of at most 3,000 points "
            "(`refinery.stages.analyze.SILHOUETTE_SAMPLE`; the full score is quadratic in the points), so clustering "
            "grows about linearly; past 10,000 failures k is chosen on a seeded sample of 10,000 "
            "(`analyze.FIT_SAMPLE`) and every failure goes to its nearest centre. Describing splits the distinct "
            "inputs into tokens and word pairs in polars and names each distinct token and pair once "
            "(`hypotheses.FeatureIndex.entries`), then counts every feature at once (one sparse product over the "
            "examples, `hypotheses.Incidence.by_feature`) and sums Fisher's tail in numpy "
            "(`hypotheses.hypergeom_tail`). A "
            "size skipped for time shows its prediction from the smaller sizes instead.", ""]
    if rate:
        sizes = sorted({r["n"] for r in analysis})
        per = ", ".join(f"{n:,}: {_minutes(n / rate)}" for n in sizes)
        out += ["### Embedding throughput", "",
                f"refinery's embedder (all-MiniLM-L6-v2, batch 64, CPU, model loaded) on {emb['n']:,} demo "
                f"inputs, in the benchmark's process: **{rate:.0f} texts/s** (model load {emb['load_seconds']:.1f} "
                f"s). Embedding the failures above would add, at that rate: "
                f"{per}. Vectors are cached in the store, so a failing example is embedded once.", ""]
    ingest = sc.get("ingest", [])
    if ingest:
        out += ["### Ingest", "",
                "The real `refinery ingest FILE --split holdout --json` in its own process, into a fresh project, "
                "on JSONL files of demo examples from the demo's generator (the eval set's distribution; a few "
                "repeat, and are skipped as duplicates). The file streams through in batches of 100,000 rows "
                "(`refinery.ingest.BATCH_ROWS`), read by orjson where it reads what Python's json reads; each batch "
                "is stored in the one transaction while the next is read.", "",
                "| examples | file MB | seconds | examples/s | peak MB | stored | duplicates | store MB | growth of "
                "time |", "|---|---|---|---|---|---|---|---|---|"]
        previous = None
        for r in ingest:
            if r["status"] != "ok":
                out.append(f"| {r['n']:,} | {r['file_mb']} | {r['status']} after {r['seconds']:.0f} s | | | | | | |")
                previous = None
                continue
            out.append(f"| {r['n']:,} | {r['file_mb']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:,.0f} | "
                       f"{r['peak_rss_mb']:.0f} | {r['inserted']:,} | {r['duplicates']:,} | {r['store_mb']} | "
                       f"{_growth(previous, (r['n'], r['seconds']))} |")
            previous = (r["n"], r["seconds"])
        out += [""]
    return out


def plot_efficiency(rows: list[dict[str, Any]], path: Path) -> None:
    """Test pass rate per round (median line, min-max band) and against examples added (every seed)."""
    import matplotlib
    from matplotlib.figure import Figure

    table = stats.curves(rows)
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    for arm, points in table.items():
        x = [p["round"] for p in points]
        med = [100 * p["pass_rate"]["median"] for p in points]
        lo = [100 * p["pass_rate"]["min"] for p in points]
        hi = [100 * p["pass_rate"]["max"] for p in points]
        left.plot(x, med, marker="o", color=ARM_COLOURS[arm], label=ARM_NAMES[arm])
        left.fill_between(x, lo, hi, color=ARM_COLOURS[arm], alpha=0.15)
    left.set(xlabel="round", ylabel="test pass rate (%)", title="Per round (median, min-max over seeds)")
    left.set_xticks(sorted({r["round"] for r in rows}))
    left.legend(fontsize=8)
    for arm in ("targeted", "random"):
        mine = [r for r in rows if r["arm"] == arm]
        for seed in sorted({r["seed"] for r in mine}):
            runs = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["round"])
            right.plot([r["added_before"] for r in runs], [100 * r["test_pass_rate"] for r in runs], marker="o",
                       color=ARM_COLOURS[arm], alpha=0.6, label=ARM_NAMES[arm] if seed == mine[0]["seed"] else None)
    right.set(xlabel="examples added to the seed set", ylabel="test pass rate (%)",
              title="Against data added (one line per seed)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": "refinery-bench"}):  # the same SVG for the same figures
        fig.savefig(path, format=path.suffix.lstrip("."), metadata={"Date": None})


def _plot(part: str) -> str:
    return PLOT if part == "efficiency" else f"benchmarks/{part.replace('_', '-')}.svg"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _growth(previous: tuple[int, float] | None, current: tuple[int, float]) -> str:
    if not previous or not previous[1] or not current[1] or current[0] == previous[0]:
        return ""
    ratio = current[1] / previous[1]
    exponent = math.log(ratio) / math.log(current[0] / previous[0])
    return f"x{ratio:.1f} (b = {exponent:.2f})"


def _test_size(rows: list[dict[str, Any]]) -> str:
    sizes = sorted({r["test_examples"] for r in rows})
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


def _spread_pct(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return ""
    if s["min"] == s["max"]:
        return _pct(s["median"])
    return f"{_pct(s['median'])} ({_pct(s['min'])}-{_pct(s['max'])})"


def _spread_num(s: dict[str, Any]) -> str:
    if s["min"] == s["max"]:
        return _num(s["median"])
    return f"{_num(s['median'])} ({_num(s['min'])}-{_num(s['max'])})"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} points"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _sec(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _rel(path: Path) -> str:
    from bench.demo import REPO

    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
