"""The figures of the sample-efficiency comparison, computed from the per-round rows: medians and spreads per
arm and round, examples needed to reach a target pass rate, and the verdict on targeted against random."""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.efficiency import ARMS


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and interquartile range (inclusive quartiles) of a few values."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None}
    q1, q3 = (statistics.quantiles(values, n=4, method="inclusive")[::2] if len(values) > 1
              else (values[0], values[0]))
    return {"n": len(values), "median": statistics.median(values), "min": values[0], "max": values[-1],
            "q1": q1, "q3": q3}


def curves(rows: list[dict[str, Any]], arms: tuple[str, ...] = ARMS) -> dict[str, list[dict[str, Any]]]:
    """Per arm, per round: the spread of the test pass rate and of the examples added before the round."""
    out: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        for number in sorted({r["round"] for r in mine}):
            these = [r for r in mine if r["round"] == number]
            out.setdefault(arm, []).append({
                "round": number, "pass_rate": spread([r["test_pass_rate"] for r in these]),
                "added_before": spread([r["added_before"] for r in these]),
                "steps": spread([r["steps"] for r in these]), "seeds": len(these)})
    return out


def examples_to_reach(rows: list[dict[str, Any]], arm: str, seed: int, target: float) -> dict[str, Any]:
    """Examples in the training set beyond the seed set (and steps) at the first round whose test pass rate
    reached `target`; reached False when no round did."""
    mine = sorted((r for r in rows if r["arm"] == arm and r["seed"] == seed), key=lambda r: r["round"])
    for r in mine:
        if r["test_pass_rate"] >= target:
            return {"reached": True, "round": r["round"], "examples": r["added_before"], "steps": r["steps"]}
    last = mine[-1] if mine else {"added_before": 0, "round": 0, "steps": 0}
    return {"reached": False, "round": None, "examples": None, "max_examples": last["added_before"],
            "rounds": last["round"], "steps": last["steps"]}


def auto_target(rows: list[dict[str, Any]]) -> float:
    """Halfway from the median seed-only pass rate (round 1) to the best median pass rate any arm reached, to the
    whole percent below: arm-neutral, and reachable by at least one arm's median curve."""
    table = curves(rows)
    start = [c["pass_rate"]["median"] for arm in table for c in table[arm] if c["round"] == 1]
    later = [c["pass_rate"]["median"] for arm in table for c in table[arm] if c["round"] > 1]
    if not start or not later:
        return 1.0
    low, high = statistics.median(start), max(later)
    if high <= low:
        return round(high, 2)
    return math.floor((low + (high - low) / 2) * 100) / 100


def reach_table(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Per arm: per seed examples needed to reach target, and their median (None when not every seed got there;
    a seed that never reached it counts as more than the most it had)."""
    seeds = sorted({r["seed"] for r in rows})
    out: dict[str, Any] = {}
    for arm in ARMS:
        per_seed = {seed: examples_to_reach(rows, arm, seed, target) for seed in seeds
                    if any(r["arm"] == arm and r["seed"] == seed for r in rows)}
        if not per_seed:
            continue
        reached = [v["examples"] for v in per_seed.values() if v["reached"]]
        out[arm] = {"per_seed": per_seed, "reached": len(reached), "seeds": len(per_seed),
                    "median": statistics.median(reached) if len(reached) == len(per_seed) else None,
                    # a lower bound on the median when some seeds never got there: they count as "at least max"
                    "median_at_least": statistics.median([v["examples"] if v["reached"] else v["max_examples"]
                                                          for v in per_seed.values()])}
    return out


def verdict(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Targeted against random: paired by seed at the last round, over rounds 2.., and in examples to target."""
    last = max((r["round"] for r in rows), default=0)
    pairs = paired_rates(rows, last)
    differences = [t - r for t, r in pairs]
    later = [t - r for number in range(2, last + 1) for t, r in paired_rates(rows, number)]
    reach = reach_table(rows, target)
    out: dict[str, Any] = {
        "rounds": last, "seeds": len(pairs), "target": target,
        "final": {"targeted": spread([t for t, _ in pairs]), "random": spread([r for _, r in pairs]),
                  "difference": spread(differences),
                  "wins": sum(d > 0 for d in differences), "losses": sum(d < 0 for d in differences),
                  "ties": sum(d == 0 for d in differences)},
        "mean_difference_rounds_2_on": statistics.fmean(later) if later else None,
        "reach": {arm: {k: v for k, v in reach[arm].items() if k != "per_seed"} for arm in reach},
    }
    out["data_ratio"] = data_ratio(reach.get("targeted"), reach.get("random"))
    out["mcnemar"] = mcnemar(rows, last)
    out["paired"] = paired_test(differences)
    median_difference = out["final"]["difference"]["median"]
    chance = out["mcnemar"] is None or out["mcnemar"]["p"] >= 0.05
    if median_difference is None or last < 2:
        out["outcome"] = "no data"
    elif median_difference > 0 and out["final"]["wins"] > out["final"]["losses"]:
        out["outcome"] = "targeted ahead, within chance" if chance else "targeted beat random"
    elif median_difference < 0 and out["final"]["losses"] > out["final"]["wins"]:
        out["outcome"] = "random ahead, within chance" if chance else "random beat targeted"
    else:
        out["outcome"] = "no clear difference"
    return out


def paired_test(differences: list[float]) -> dict[str, Any] | None:
    """A paired t-test over seeds on targeted minus random (two-sided), and the exact Wilcoxon signed-rank p (which
    cannot go below 2 / 2^seeds: 0.0625 with 5 seeds). None with fewer than 2 seeds or no difference at all."""
    from scipy.stats import ttest_1samp, wilcoxon

    if len(differences) < 2 or not any(differences):
        return None
    nonzero = [d for d in differences if d]
    w = wilcoxon(nonzero, method="exact").pvalue if nonzero else 1.0
    out = {"seeds": len(differences), "mean": statistics.fmean(differences), "t": None, "p": None,
           "wilcoxon_p": float(w)}
    if statistics.pstdev(differences) > 0:  # every seed the same gap: no spread for a t statistic
        t = ttest_1samp(differences, 0.0)
        out.update(t=float(t.statistic), p=float(t.pvalue))
    return out


def mcnemar(rows: list[dict[str, Any]], number: int) -> dict[str, Any] | None:
    """Targeted against random on the same test examples at one round, pooled over seeds: how many only targeted
    passed (b), only random passed (c), and the exact two-sided McNemar p-value (a binomial test on b of b + c)."""
    out = mcnemar_arms(rows, number, "targeted", "random")
    return out and {"pairs": out["pairs"], "only_targeted": out["only_a"], "only_random": out["only_b"],
                    "p": out["p"]}


def mcnemar_arms(rows: list[dict[str, Any]], number: int, a: str, b: str) -> dict[str, Any] | None:
    """Arm `a` against arm `b` on the same test examples at round `number`, pooled over seeds: how many only `a`
    passed, only `b` passed, and the exact two-sided McNemar p-value (refinery's own, `grid.mcnemar`, on the pairs
    of every seed)."""
    from refinery.stages.grid import mcnemar as paired

    by = {(r["arm"], r["seed"]): r.get("test_outcomes") for r in rows if r["round"] == number}
    first, second = {}, {}
    for (arm, seed), outcomes in by.items():
        other = by.get((b, seed))
        if arm != a or not outcomes or not other:
            continue
        for example_id in outcomes.keys() & other.keys():
            first[seed, example_id], second[seed, example_id] = outcomes[example_id], other[example_id]
    if not first:
        return None
    out = paired(first, second)
    return {"pairs": out["examples"], "only_a": out["only_a"], "only_b": out["only_b"], "p": out["p"]}


def data_ratio(t: dict[str, Any] | None, r: dict[str, Any] | None) -> dict[str, Any] | None:
    """How many times the examples targeted data needed random data needed to reach the target (median over
    seeds): exact when every seed of both arms got there; a bound when one arm fell short in some seed (a seed
    that never got there counts as the most it had, so the true figure is beyond it); None when neither did."""
    if not t or not r:
        return None
    t_all, r_all = t["reached"] == t["seeds"], r["reached"] == r["seeds"]
    if t_all and r_all and t["median"]:
        return {"value": r["median"] / t["median"], "bound": "exact"}
    if t_all and t["median"] and r["median_at_least"]:
        return {"value": r["median_at_least"] / t["median"], "bound": "at least"}
    if r_all and r["median"] and t["median_at_least"]:
        return {"value": r["median"] / t["median_at_least"], "bound": "at most"}
    return None


def paired_rates(rows: list[dict[str, Any]], number: int) -> list[tuple[float, float]]:
    by = {(r["arm"], r["seed"]): r["test_pass_rate"] for r in rows if r["round"] == number}
    seeds = sorted({seed for arm, seed in by if arm == "targeted"})
    return [(by[("targeted", s)], by[("random", s)]) for s in seeds if ("random", s) in by]
