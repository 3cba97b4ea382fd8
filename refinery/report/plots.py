"""The report's plots: matplotlib figures (no pyplot, no display) saved as SVG text for inlining in the page."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from refinery.report.figures import Report

PASS = "#2563eb"  # the main metric: test pass rate
SCORE = "#0d9488"  # severity-weighted score
LEAK = "#db2777"  # <think> leakage without the cue
REFERENCE = {"baseline": ("#6b7280", (0, (1.5, 2))), "production": ("#b45309", (0, (5, 3))),
             "ceiling": ("#15803d", (0, (6, 2, 1, 2)))}
PALETTE = ["#2563eb", "#f59e0b", "#0d9488", "#db2777", "#7c3aed", "#65a30d", "#ea580c", "#0891b2", "#64748b",
           "#be123c", "#a16207", "#4f46e5"]
STYLE = {
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"], "font.size": 9,
    "axes.edgecolor": "#9aa5b1", "axes.labelcolor": "#3e4c59", "axes.titlesize": 10, "axes.titleweight": "bold",
    "axes.titlecolor": "#1f2933", "axes.titlelocation": "left", "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "axes.axisbelow": True, "grid.color": "#e4e7eb",
    "grid.linewidth": 0.8, "xtick.color": "#616e7c", "ytick.color": "#616e7c", "legend.frameon": False,
    "legend.fontsize": 8, "svg.fonttype": "none", "lines.linewidth": 2, "lines.markersize": 5,
}


def draw_plots(report: Report) -> dict[str, str | None]:
    """Every plot of the page as SVG text, None where there is nothing to plot."""
    plots: dict[str, Callable[[Report], Figure | None]] = {
        "metric": metric_plot, "checks": checks_plot, "added": added_plot, "mix": mix_plot,
        "sweep": sweep_plot, "map": map_plot, "drift": drift_plot}
    return {name: _svg(name, draw, report) for name, draw in plots.items()}


def _svg(name: str, draw: Callable[[Report], Figure | None], report: Report) -> str | None:
    import matplotlib

    with matplotlib.rc_context({**STYLE, "svg.hashsalt": f"refinery-{name}"}):
        figure = draw(report)
        if figure is None:
            return None
        out = io.StringIO()
        figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = out.getvalue()
    svg = text[text.index("<svg"):]
    # ids must be unique in the page: matplotlib names clip paths and glyphs alike in every figure
    svg = re.sub(r'id="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r'(url\(#|xlink:href="#|href="#)([^)"]+)', rf"\g<1>{name}-\2", svg)
    return svg.replace("<svg ", f'<svg class="plot" data-plot="{name}" role="img" ', 1)


def _figure(width: float, height: float, *, layout: str | None = "constrained", **grid: Any) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout=layout)
    return figure, figure.subplots(**grid)


def _percent_axis(ax: Any, *, top: float = 1.0) -> None:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylim(-0.02, max(top, 0.05) * 1.04)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def metric_plot(report: Report) -> Figure | None:
    rounds = [r for r in report.trained if r["pass_rate"] is not None]
    references = [r for r in (report.reference("ceiling"), report.reference("production"),
                              report.reference("baseline"))
                  if r and r["pass_rate"] is not None]
    if not rounds and not references:
        return None
    figure, ax = _figure(10, 2.9)
    xs = [r["number"] for r in rounds]
    for key, colour, name in (("pass_rate", PASS, "test pass rate"), ("weighted_score", SCORE, "weighted score")):
        ys = [r[key] for r in rounds]
        ax.plot(xs, ys, color=colour, marker="o", label=name, zorder=3)
        if ys:
            ax.annotate(f"{ys[-1]:.1%}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(8, 0),
                        va="center", color=colour, fontsize=8.5, fontweight="bold")
    for r in references:
        colour, dash = REFERENCE[r["kind"]]
        ax.axhline(r["pass_rate"], color=colour, linestyle=dash, linewidth=1.6,
                   label=f"{r['kind']} pass rate ({r['pass_rate']:.1%})")
    base = next((r for r in references if r["kind"] == "baseline"), None)
    if base:  # the baseline is round 0: a point where the rounds start from
        ax.plot([0], [base["pass_rate"]], color=REFERENCE["baseline"][0], marker="D", linestyle="none", zorder=4)
        xs = [0, *xs]
    top = max([r[k] or 0 for r in rounds + references for k in ("pass_rate", "weighted_score")] + [0.1])
    _percent_axis(ax, top=min(1.0, top * 1.12))
    _round_axis(ax, xs or [1], baseline=base is not None)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4)
    return figure


def _round_axis(ax: Any, xs: list[int], *, baseline: bool) -> None:
    """Whole rounds on the x axis, labelled (round 0 as "base" when the baseline is plotted), never fractions."""
    from matplotlib.ticker import MaxNLocator

    low, high = min(xs), max(xs)
    if high - low <= 15:
        ax.set_xticks(range(low, high + 1), ["base" if n == 0 and baseline else str(n) for n in range(low, high + 1)])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(low - 0.3, high + 0.5)
    ax.set_xlabel("round")


def checks_plot(report: Report) -> Figure | None:
    """A heatmap: checks down, rounds across, the test pass rate of each check in each cell."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    columns = [r for r in report.done if any(c["round"] == r["number"] for c in report.checks)]
    names = list(dict.fromkeys(c["check"] for c in report.checks))
    if not columns or not names:
        return None
    rates = {(c["round"], c["check"]): c["rate"] for c in report.checks}
    grid = np.array([[rates.get((r["number"], n), np.nan) for r in columns] for n in names], dtype=float)
    cmap = LinearSegmentedColormap.from_list("pass", ["#f87171", "#fde68a", "#86efac", "#22c55e"])
    figure, ax = _figure(min(9, 2.6 + 0.75 * len(columns)), 0.6 + 0.36 * len(names))
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8, color="#1f2933")
    ax.set_xticks(range(len(columns)), [_short(r) for r in columns])
    ax.set_yticks(range(len(names)), names)
    ax.tick_params(length=0)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("round")
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return figure


def added_plot(report: Report) -> Figure | None:
    """Generated examples stored per round, stacked by template."""
    if not report.added:
        return None
    rounds = sorted({a["round"] for a in report.added})
    totals: dict[str, dict[int, int]] = {}
    for a in report.added:
        by_round = totals.setdefault(a["template"], {})
        by_round[a["round"]] = by_round.get(a["round"], 0) + a["examples"]
    order = sorted(totals, key=lambda t: -sum(totals[t].values()))
    figure, ax = _figure(10, 2.8)
    bottom = [0] * len(rounds)
    for i, template in enumerate(order):
        heights = [totals[template].get(n, 0) for n in rounds]
        ax.bar(rounds, heights, bottom=bottom, color=PALETTE[i % len(PALETTE)], width=0.55 if len(rounds) > 2 else 0.4,
               label=template.removesuffix(".jinja"), edgecolor="white", linewidth=0.6)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for n, total in zip(rounds, bottom, strict=True):
        ax.annotate(str(total), (n, total), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(rounds)
    ax.set_xlim(min(rounds) - 0.6, max(rounds) + 0.6)
    ax.set_xlabel("round that generated them")
    ax.set_ylabel("examples added")
    ax.set_ylim(0, max(bottom) * 1.15 + 0.5)
    ax.grid(axis="x", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def mix_plot(report: Report) -> Figure | None:
    rows = [m for m in report.mix if m["think_leakage_cue_off"] is not None]  # accuracy needs [mix] answer_check
    if not rows:
        return None
    kinds = {r["number"]: r["kind"] for r in report.rounds}
    xs = [m["round"] for m in rows]
    figure, (left, right) = _figure(10, 2.9, ncols=2, width_ratios=[1.4, 1])
    _mode_panels(left, right, xs, rows, xlabel="round")
    labels = [_short({"number": x, "kind": kinds.get(x, "round")}) for x in xs]
    for ax in (left, right):
        ax.set_xticks(xs, labels)
    return figure


def sweep_plot(report: Report) -> Figure | None:
    rows = [r for r in (report.sweep or {}).get("rows", []) if "error" not in r]
    if not rows:
        return None
    xs = [r["share"] for r in rows]
    if all(r.get("examples_per_mode") is None for r in rows):  # no thinking cue set: the test pass rate alone
        figure, left = _figure(6, 2.9)
        left.plot(xs, [r["test_pass_rate"] for r in rows], color=SCORE, marker="s", label="test pass rate")
        _percent_axis(left)
        left.set_xlabel("reasoning share of the training set")
        left.set_xticks(xs, [f"{x:g}" for x in xs])
        return figure
    figure, (left, right) = _figure(10, 2.9, ncols=2, width_ratios=[1.4, 1])
    left.plot(xs, [r["test_pass_rate"] for r in rows], color=SCORE, marker="s", label="test pass rate")
    _mode_panels(left, right, xs, rows, xlabel="reasoning share of the training set")
    for ax in (left, right):
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    return figure


def _mode_panels(left: Any, right: Any, xs: list, rows: list[dict], *, xlabel: str) -> None:
    """Left: answer accuracy with and without the cue, and <think> leakage; right: mean output tokens."""
    left.plot(xs, [r["answer_accuracy_cue_on"] for r in rows], color=PASS, marker="o", label="answer accuracy, cue on")
    left.plot(xs, [r["answer_accuracy_cue_off"] for r in rows], color=PASS, marker="o", linestyle=(0, (4, 2)),
              markerfacecolor="white", label="answer accuracy, cue off")
    left.plot(xs, [r["think_leakage_cue_off"] for r in rows], color=LEAK, marker="^",
              label="<think> without the cue")
    _percent_axis(left)
    left.set_xlabel(xlabel)
    left.set_title("answers and leakage", fontsize=9)
    left.legend(loc="upper left", bbox_to_anchor=(0, -0.22), ncol=2)
    right.plot(xs, [r["mean_tokens_cue_on"] for r in rows], color=PASS, marker="o", label="cue on")
    right.plot(xs, [r["mean_tokens_cue_off"] for r in rows], color=PASS, marker="o", linestyle=(0, (4, 2)),
               markerfacecolor="white", label="cue off")
    right.set_ylim(0, max([r["mean_tokens_cue_on"] or 0 for r in rows] + [r["mean_tokens_cue_off"] or 0
                                                                          for r in rows] + [1]) * 1.2)
    right.set_xlabel(xlabel)
    right.set_title("mean output tokens", fontsize=9)
    right.legend(loc="upper left", bbox_to_anchor=(0, -0.22), ncol=2)


def map_plot(report: Report) -> Figure | None:
    """Small multiples: one panel per round, its failing cases coloured by cluster, on shared PCA axes."""
    rounds = sorted({p["round"] for p in report.failure_map})
    if not rounds:
        return None
    most = max(len({p["rank"] for p in report.failure_map if p["round"] == n}) for n in rounds)
    legend = 0.7 + 0.14 * most  # inches under the panels for the axis label and the legends
    figure, axes = _figure(min(10, 3.4 * len(rounds) + 0.6), 3.0 + legend, layout=None, ncols=len(rounds),
                           sharex=True, sharey=True, squeeze=False)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.93, bottom=legend / (3.0 + legend), wspace=0.1)
    for ax, n in zip(axes[0], rounds, strict=True):
        points = [p for p in report.failure_map if p["round"] == n]
        for rank in sorted({p["rank"] for p in points}):
            members = [p for p in points if p["rank"] == rank]
            label = members[0]["legend"]
            label = label if len(label) <= 40 else label[:39] + "…"
            # a failing case can belong to a pattern of each check it fails: the worst pattern's dot is on top
            ax.scatter([p["x"] for p in members], [p["y"] for p in members], s=24, linewidths=0.5,
                       edgecolors="white", color=PALETTE[(rank - 1) % len(PALETTE)], gid=f"points-r{n}-c{rank}",
                       label=f"c{rank:02d} {label} ({len(members)})", zorder=3 + 1 / rank)
        ax.set_title(f"round {n}: {len({p['example_id'] for p in points})} failing cases", fontsize=9)
        ax.set_xlabel("PC 1")
        ax.tick_params(labelsize=7)
        ax.legend(loc="upper left", bbox_to_anchor=(-0.02, -0.17), fontsize=7, handletextpad=0.2, markerscale=1.2,
                  borderaxespad=0)
    axes[0][0].set_ylabel("PC 2")
    return figure


def drift_plot(report: Report) -> Figure | None:
    """The latest drift run's embedding samples on their first two principal components: reference inputs grey,
    production blue, the production inputs unlike any reference input red."""
    points = (report.drift or {}).get("map") or {}
    if not points.get("production"):
        return None
    figure, ax = _figure(6.0, 4.0)
    far = set(points["far"])
    for xy, color, label, size in (
            (points["reference"], "#9aa5b1", f"train and analysis inputs ({len(points['reference'])})", 10),
            ([p for i, p in enumerate(points["production"]) if i not in far], PALETTE[0],
             f"production inputs ({len(points['production']) - len(far)})", 10),
            ([points["production"][i] for i in sorted(far)], "#d64545",
             f"production inputs unlike any reference input ({len(far)})", 22)):
        if xy:
            ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=size, color=color, alpha=0.6, linewidths=0,
                       label=label)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Production against reference inputs (embedding samples)", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.14), fontsize=7)
    return figure


def _short(row: dict[str, Any]) -> str:
    return {"baseline": "base", "production": "prod", "ceiling": "ceil"}.get(row["kind"], str(row["number"]))
