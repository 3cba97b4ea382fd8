"""The verdict of targeted against random data per round, in each regime (cold start, usually right): paired
tests per round, examples needed to come within a point of the better arm, the worst hard slice per round, and
what targeting did to each pattern against what random data of the same count did to it."""

from __future__ import annotations

import statistics
from typing import Any

from bench import stats


def second_run(results: dict[str, Any]) -> str:
    """A part measured by a second invocation and merged into these results (said, never hidden)."""
    second = results.get("second_run")
    if not second:
        return ""
    s = second["settings"]
    return (f" The usually-right part ran in a second invocation on {second['date']} at commit {second['commit']} "
            f"(`--parts {','.join(s['parts'])} --seeds {s['seeds']} --rounds {s['rounds']} --efficiency-arms "
            f"{','.join(s['efficiency_arms'])}`), merged into these results.")


def per_round_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Targeted against random at every round: medians, the per-seed gap, McNemar and the paired test."""
    rounds = sorted({r["round"] for r in rows})
    if not any(r["arm"] == "random" for r in rows):
        return []
    out = ["### Targeted against random, round by round", "",
           "| round | targeted | random | gap (median, min to max over seeds) | McNemar (only targeted / only random, "
           "p) | paired t-test p | Wilcoxon p | budget explored at random (targeted arm, median) |",
           "|---|---|---|---|---|---|---|---|"]
    for number in rounds:
        pairs = stats.paired_rates(rows, number)
        if not pairs:
            continue
        gaps = stats.spread([t - r for t, r in pairs])
        m = stats.mcnemar(rows, number)
        t = stats.paired_test([t - r for t, r in pairs])
        out.append(f"| {number} | {_pct(statistics.median(t for t, _ in pairs))} | "
                   f"{_pct(statistics.median(r for _, r in pairs))} | {_pts(gaps['median'])} ({_pts(gaps['min'])} "
                   f"to {_pts(gaps['max'])}) | "
                   + (f"{m['only_targeted']} / {m['only_random']}, p = {m['p']:.2g}" if m else "") + " | "
                   + (f"{t['p']:.2g}" if t and t["p"] is not None else "n/a") + " | "
                   + (f"{t['wilcoxon_p']:.2g}" if t else "n/a") + f" | {_explored(rows, number)} |")
    return out + [""]


def _explored(rows: list[dict[str, Any]], number: int) -> str:
    plans = [r["plan"] for r in rows if r["arm"] == "targeted" and r["round"] == number and r.get("plan")]
    if not plans:
        return "n/a"
    explored, budget = (statistics.median(p[key] for p in plans) for key in ("explore", "budget"))
    return f"{explored:.0f} of {budget:.0f}"


def near_best_target(rows: list[dict[str, Any]]) -> float | None:
    """One point below the better of the targeted and random arms' median final pass rates."""
    last = max((r["round"] for r in rows), default=0)
    finals = [statistics.median(r["test_pass_rate"] for r in rows if r["arm"] == arm and r["round"] == last)
              for arm in ("targeted", "random") if any(r["arm"] == arm and r["round"] == last for r in rows)]
    return max(finals) - 0.01 if finals and max(finals) > 0.01 else None


def slice_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The worst hard slice per round and arm, and every slice at the last round (scenarios with slice labels)."""
    with_slices = [r for r in rows if r.get("slices")]
    if not with_slices:
        return []
    arms = [a for a in ("targeted", "random", "steps") if any(r["arm"] == a for r in with_slices)]
    out = ["### The worst hard slice per round", "",
           "The slice with the lowest test pass rate in each seed's run (the engine never sees slice labels), "
           "median over seeds, with the slice that was worst most often.", "",
           "| round | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for number in sorted({r["round"] for r in with_slices}):
        cells = []
        for arm in arms:
            worst = [w for r in with_slices if r["arm"] == arm and r["round"] == number
                     for w in [_worst(r["slices"])] if w]
            cells.append(f"{_pct(statistics.median(w[1] for w in worst))} "
                         f"({statistics.mode(w[0] for w in worst)})" if worst else "")
        out.append(f"| {number} | " + " | ".join(cells) + " |")
    last = max(r["round"] for r in with_slices)
    names = sorted({name for r in with_slices for name in r["slices"]})
    out += ["", f"Every slice at round {last} (median test pass rate over seeds; test examples in the slice):", "",
            "| slice | examples | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    for name in names:
        these = {arm: [r["slices"][name] for r in with_slices if r["arm"] == arm and r["round"] == last
                       and name in r["slices"]] for arm in arms}
        size = next((v[0]["examples"] for v in these.values() if v), 0)
        out.append(f"| {name} | {size} | " + " | ".join(
            _pct(statistics.median(s["pass_rate"] for s in these[arm])) if these[arm] else "" for arm in arms) + " |")
    return out + [""]


def _worst(slices: dict[str, dict[str, Any]]) -> tuple[str, float] | None:
    hard = {name: s["pass_rate"] for name, s in slices.items() if name != "none"}
    if not hard:  # a test split too small to hold any hard case
        return None
    name = min(hard, key=lambda n: (hard[n], n))
    return name, hard[name]


def effect_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per round: the patterns the targeted arm stored counterexamples for, and their members' failure rate on
    their own check before, after targeted data, and after random data of the same count (pooled over patterns
    and seeds, weighted by members)."""
    targeted = [r for r in rows if r["arm"] == "targeted" and r.get("effects") is not None]
    if not any(r["effects"] for r in targeted):
        return []
    out = ["### Per pattern: what targeting did to the patterns it aimed at", "",
           "Each pattern the targeted arm stored counterexamples for in round r: its members' failure rate on the "
           "pattern's own check in round r, and in round r + 1 after the targeted data, and after the random arm's "
           "data of the same count (the same analysis examples, asked by the random arm's model). Pooled over "
           "patterns and seeds, weighted by members; patterns fixed = members' failure rate 0 next round.", "",
           "| round | patterns (all seeds) | members | failing before | after targeted data | after random data | "
           "patterns fixed: targeted / random |", "|---|---|---|---|---|---|---|"]
    for number in sorted({r["round"] for r in targeted}):
        effects = [e for r in targeted if r["round"] == number for e in r["effects"]
                   if e["targeted_after"] is not None and e["random_after"] is not None and e["before"] is not None]
        if not effects:
            continue
        members = sum(e["members"] for e in effects)

        def pooled(key: str) -> float:
            return sum(e[key] * e["members"] for e in effects) / members

        fixed_t = sum(e["targeted_after"] == 0 for e in effects)
        fixed_r = sum(e["random_after"] == 0 for e in effects)
        out.append(f"| {number} | {len(effects)} | {members} | {_pct(pooled('before'))} | "
                   f"{_pct(pooled('targeted_after'))} | {_pct(pooled('random_after'))} | {fixed_t} / {fixed_r} |")
    return out + [""]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"
