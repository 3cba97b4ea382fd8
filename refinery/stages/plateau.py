"""When to stop iterating: the main metric on the test split has plateaued, reached its target, or the round
budget is spent. Pure functions over the metrics rounds recorded, so the rule is easy to test and to explain."""

from __future__ import annotations

from typing import Any

from refinery.config import PlateauSettings

LABELS = {"test_pass_rate": ("test pass rate", "pass_rate"), "test_weighted_score": ("test weighted score",
                                                                                      "weighted_score")}


def main_metric(metrics: dict[str, Any] | None, name: str) -> float | None:
    """The main metric of a round's recorded metrics (None when the round had no test split)."""
    test = (metrics or {}).get("test")
    return None if not test else test.get(LABELS[name][1])


def show(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if name == "test_pass_rate" else f"{value:.3f}"


def stop_reason(history: list[tuple[int, float]], settings: PlateauSettings, *, run: int, budget: int,
                production: float | None = None) -> str | None:
    """Why to stop after the last round of `history` ((round, main metric) in order, the baseline as round 0 when
    measured), or None to go on. `run` rounds of `budget` have run in this `iterate`."""
    label, _ = LABELS[settings.metric]
    fmt = lambda v: show(v, settings.metric)  # noqa: E731
    number, last = history[-1]
    best_round, best = max(reversed(history), key=lambda rv: rv[1])
    beaten = production is None or best > production
    vs_production = "" if production is None else (
        f"; production {fmt(production)} " + ("beaten" if beaten else "not beaten"))
    if settings.target is not None and last >= settings.target and (beaten or not settings.beat_production):
        return f"target reached: {label} {fmt(last)} in round {number} >= target {fmt(settings.target)}" \
               f"{vs_production}"
    patience = settings.patience
    if len(history) > patience:
        earlier = history[:-patience]
        before_round, before = max(reversed(earlier), key=lambda rv: rv[1])
        recent = history[-patience:]
        if max(v for _, v in recent) - before <= settings.margin and (beaten or not settings.beat_production):
            shown = ", ".join(f"{fmt(v)} (round {r})" for r, v in recent)
            span = "the last round" if patience == 1 else f"the last {patience} rounds"
            return (f"plateau: {label} has not improved by more than {fmt(settings.margin)} in {span}: best before "
                    f"{fmt(before)} (round {before_round}), since {shown}{vs_production}")
    if run >= budget:
        trend = "still improving" if len(history) < 2 or last > max(v for _, v in history[:-1]) else "not improving"
        return (f"round budget spent: {run} of {budget} rounds run, {label} {fmt(last)} and {trend} (best "
                f"{fmt(best)} in round {best_round}){vs_production}")
    return None
