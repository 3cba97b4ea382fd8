"""Report: every round's figures gathered from the store, as a self-contained HTML page with plots (inline SVG,
no network needed to view it) or as a terminal summary with the same figures."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from refinery import __version__
from refinery.errors import RefineryError
from refinery.project import Project
from refinery.report.figures import Report
from refinery.stages.measure import REFERENCE_KINDS
from refinery.store import Store

MAIN_SPLIT = "test"  # the plateau and every reported figure use the test split
MAP_ROUNDS = 4  # the failure map shows the last rounds with clusters, one panel each
MIX_FIGURES = ("answer_accuracy_cue_on", "answer_accuracy_cue_off", "think_leakage_cue_off", "mean_tokens_cue_on",
               "mean_tokens_cue_off")


def build_report(project: Project) -> Report:
    """Gather every figure of the report from the project's store."""
    from refinery.report.calibration import calibrate, judge_check_names
    from refinery.report.status import latest_sweeps
    from refinery.rules import load_rules

    judge_checks = judge_check_names(load_rules(project.rules_dir), required=False)
    with Store(project.store_path, read_only=True) as store:
        judges = [{**vars(c), "reasons": _judge_reasons(store, c.check)}
                  for c in calibrate(store, checks=judge_checks, settings=project.config.judge)]
        rounds = _rounds(store)
        if not any(r["status"] == "done" for r in rounds):
            failed = f" ({len(rounds)} started, none finished)" if rounds else ""
            raise RefineryError(f"no finished round yet{failed}, so nothing to report: run `refinery iterate` "
                                f"first, then `refinery report`.")
        metrics = {r["number"]: r.pop("metrics") for r in rounds}
        done = [r["number"] for r in rounds if r["status"] == "done"]
        failure_map, variance = _failure_map(store)
        mix, sweeps = _mix(metrics, done), latest_sweeps(store)
        sweep = sweeps["mix"]
        return Report(project=str(project.root), store=str(project.store_path),
                      created_at=datetime.now().isoformat(timespec="seconds"), rounds=rounds,
                      checks=_checks(metrics, done), patterns=_patterns(store, project), added=_added(store),
                      outcomes=_outcomes(store), mix=mix, sweep=sweep,
                      mix_section=_has_mix(store, project, mix, sweep), failure_map=failure_map,
                      map_variance=variance, judges=judges, train_examples=store.scalar(
                          "SELECT count(*) FROM examples WHERE split = 'train' AND status = 'active'"),
                      drift=_latest_drift(store), recipe=sweeps["recipe"])



def write_report(project: Project, *, out: str | Path | None = None, report: Report | None = None) -> Path:
    """Write the HTML page (default: runs/report.html) and return its path."""
    report = report or build_report(project)
    path = Path(out) if out is not None else project.runs_dir / "report.html"
    if path.is_dir():
        path = path / "report.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise RefineryError(f"{path}: cannot write the report: {exc.strerror}. Pass --out with a writable "
                            f"path.") from None
    return path


def render_html(report: Report) -> str:
    """The page: the Jinja template inside the package, with the plots as inline SVG."""
    from importlib.resources import files

    import jinja2
    from markupsafe import Markup

    from refinery.report.plots import draw_plots

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(pct=pct, pts=pts, num=num, round_name=round_name)
    template = env.from_string(files("refinery.report").joinpath("report.html.jinja").read_text(encoding="utf-8"))
    plots = {name: Markup(svg) if svg else None for name, svg in draw_plots(report).items()}
    return template.render(r=report, v=views(report), plots=plots, version=__version__)


# ---- gathering -------------------------------------------------------------------------------------------------

def _judge_reasons(store: Store, check: str, *, top: int = 3) -> list[dict[str, Any]]:
    """The judge's most frequent reasons for failing `check` in the last finished round, with their counts."""
    return store.frame("""
        SELECT detail AS reason, count(*) AS failures FROM rule_results
        WHERE check_name = ? AND applies AND NOT passed AND variant = ''
            AND round = (SELECT max(number) FROM rounds WHERE status = 'done' AND number >= 0)
        GROUP BY detail ORDER BY failures DESC, detail LIMIT ?""", [check, top]).to_dicts()


def _latest_drift(store: Store) -> dict[str, Any] | None:
    """The latest drift run's figures, as `refinery drift` stored them."""
    found = store.one("SELECT summary FROM drift_runs ORDER BY id DESC LIMIT 1")
    return json.loads(found[0]) if found else None


def _rounds(store: Store) -> list[dict[str, Any]]:
    frame = store.frame("""
        SELECT r.number, r.kind, r.status, r.metrics, r.stop_reason, r.error, r.started_at, r.plan,
               CASE WHEN r.kind = 'round' THEN date_diff('millisecond', r.started_at, r.finished_at) / 1000.0
                    ELSE (SELECT sum(s.seconds) FROM round_stages s WHERE s.round = r.number) END AS seconds,
               (SELECT count(*) FROM round_examples x WHERE x.round = r.number)::INTEGER AS trained_on
        FROM rounds r ORDER BY r.number""")
    rows = []
    for r in frame.iter_rows(named=True):
        measured = json.loads(r["metrics"]) if r["metrics"] else {}
        main = measured.get(MAIN_SPLIT, {})
        rows.append({
            "number": r["number"], "kind": r["kind"], "status": r["status"], "trained_on": r["trained_on"],
            "examples": main.get("examples"), "pass_rate": main.get("pass_rate"),
            "weighted_score": main.get("weighted_score"),
            **{f"{split}_pass_rate": measured.get(split, {}).get("pass_rate") for split in ("analysis", "corner")},
            "seconds": r["seconds"], "started_at": r["started_at"].isoformat(sep=" ", timespec="seconds"),
            "stop_reason": r["stop_reason"], "error": r["error"], "metrics": measured,
            "plan": json.loads(r["plan"]) if r["plan"] else None})
    return rows


def _checks(metrics: dict[int, dict], done: list[int]) -> list[dict[str, Any]]:
    return [{"round": n, "check": name, **figures} for n in done
            for name, figures in metrics[n].get(MAIN_SPLIT, {}).get("checks", {}).items()]


def _mix(metrics: dict[int, dict], done: list[int]) -> list[dict[str, Any]]:
    return [{"round": n, **{k: metrics[n]["mix"].get(k) for k in (*MIX_FIGURES, "examples_per_mode")}}
            for n in done if metrics[n].get("mix")]


def _has_mix(store: Store, project: Project, mix: list, sweep: dict | None) -> bool:
    """Whether the mix section has anything to say: cue-mode figures or a sweep recorded, a thinking cue or a
    reasoning share set, or reasoning examples in the store. A task without reasoning gets no such section."""
    settings = project.config.mix
    if mix or sweep is not None or settings.cue is not None or settings.reasoning_share is not None:
        return True
    return bool(store.scalar("SELECT count(*) FROM examples WHERE kind = 'reasoning' AND status = 'active'"))


def _patterns(store: Store, project: Project) -> list[dict[str, Any]]:
    """Every pattern of every finished round, worst first within a round, with what became of it next round."""
    from refinery.report.review import pattern_history

    clusters = store.frame("""
        SELECT c.round, c.id AS pattern, c.rank, coalesce(c.label, c.id) AS label, c.statement, c.size, c.score,
               c.status, c.merged_into, c.checks
        FROM clusters c JOIN rounds r ON r.number = c.round WHERE r.status = 'done' ORDER BY c.round, c.rank""")
    from refinery.rules import load_rules
    cues = load_rules(project.rules_dir).cues()
    history = {h["pattern"]: h for h in pattern_history(store, cues=cues).iter_rows(named=True)}
    rows = []
    for c in clusters.iter_rows(named=True):
        h = history.get(c["pattern"], {})
        rows.append({**{k: v for k, v in c.items() if k != "checks"},
                     "check": h.get("check") or next(iter(json.loads(c["checks"] or "{}")), None),
                     "added": h.get("added", 0), "next_round": h.get("next_round"),
                     "failing_before": h.get("failing_before"), "failing_after": h.get("failing_after"),
                     "change": h.get("change", "not targeted"), "feature": h.get("feature"),
                     "feature_failing_before": h.get("feature_failing_before"),
                     "feature_failing_after": h.get("feature_failing_after"),
                     "regressions": h.get("regressions") or ""})
    return rows


def _added(store: Store) -> list[dict[str, Any]]:
    return store.frame("""
        SELECT round_added AS round, coalesce(template, '-') AS template, cluster_id AS pattern, status,
               count(*)::INTEGER AS examples
        FROM examples WHERE source = 'generated' AND round_added IS NOT NULL GROUP BY ALL ORDER BY ALL""").to_dicts()


def _outcomes(store: Store) -> list[dict[str, Any]]:
    return store.frame("SELECT round, outcome, count(*)::INTEGER AS candidates FROM generations "
                       "GROUP BY ALL ORDER BY ALL").to_dicts()


def _failure_map(store: Store) -> tuple[list[dict[str, Any]], list[float]]:
    """The failing cases of the last rounds with clusters, at their place in a 2-D PCA of their stored input
    embeddings (one PCA for all panels, so the panels compare)."""
    frame = store.frame(f"""
        SELECT c.round, c.id AS pattern, c.rank, coalesce(c.label, c.id) AS label, m.example_id, e.model, e.vector,
               x.input
        FROM clusters c JOIN cluster_members m ON m.cluster_id = c.id
        JOIN embeddings e ON e.example_id = m.example_id AND e.text_kind = 'input'
        JOIN examples x ON x.id = m.example_id
        WHERE c.status <> 'merged' AND c.round IN (
            SELECT DISTINCT c2.round FROM clusters c2 JOIN rounds r ON r.number = c2.round WHERE r.status = 'done'
            ORDER BY c2.round DESC LIMIT {MAP_ROUNDS})
        ORDER BY c.round, c.rank, m.example_id""")
    if frame.height:  # one embedding model per point: the one that covers most of them
        model = frame.group_by("model").len().sort(["len", "model"], descending=[True, False])["model"][0]
        frame = frame.filter(pl.col("model") == model)
    if frame.height < 3:
        return [], []
    import numpy as np
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(np.vstack(frame["vector"].to_list()))
    xy = pca.transform(np.vstack(frame["vector"].to_list()))
    points = frame.drop("vector", "model").with_columns(pl.Series("x", xy[:, 0].round(4)),
                                                        pl.Series("y", xy[:, 1].round(4)),
                                                        pl.Series("legend", _legends(frame), dtype=pl.String))
    return points.drop("input").to_dicts(), [round(float(v), 4) for v in pca.explained_variance_ratio_]


def _legends(frame: pl.DataFrame) -> list[str]:
    """Each point's legend entry: its cluster's label, and where clusters of one round share a label, the word of
    the inputs that sets this cluster apart from the others (the largest share of members with it, less the share
    in the rest of the round), so the legend does not repeat one label for every cluster."""
    words = [set(re.findall(r"\w+", text.lower())) for text in frame["input"]]
    keys = list(zip(frame["round"], frame["pattern"], strict=True))
    out = {}
    for key, label in dict(zip(keys, frame["label"], strict=True)).items():
        same = [k for k, lab in zip(keys, frame["label"], strict=True) if k[0] == key[0] and lab == label]
        if len(set(same)) < 2:
            out[key] = label
            continue
        mine = [w for k, w in zip(keys, words, strict=True) if k == key]
        rest = [w for k, w in zip(keys, words, strict=True) if k[0] == key[0] and k != key]
        lift = {t: sum(t in w for w in mine) / len(mine) - sum(t in w for w in rest) / max(len(rest), 1)
                for t in set().union(*mine)}
        best = max(sorted(lift), key=lift.get) if lift else ""
        short = label if len(label) <= 26 else label[:25] + "…"
        out[key] = f"{short} · “{best}”" if best and lift[best] > 0 else f"{short} · {key[1]}"
    return [out[k] for k in keys]


# ---- views shared by the page and the terminal summary ----------------------------------------------------------

def views(report: Report) -> dict[str, Any]:
    """The tables of the report, pivoted for display: rounds as columns, one row per check, template, pattern."""
    columns = [r["number"] for r in report.done]
    kinds = {r["number"]: r["kind"] for r in report.rounds}
    added_rounds = sorted({a["round"] for a in report.added} | {o["round"] for o in report.outcomes})
    return {
        "headline": headline(report),
        "rounds": _with_deltas(report.rounds),
        "kinds": kinds,
        "columns": [(n, kinds[n]) for n in columns],
        "checks": _pivot(report.checks, "check", "round", columns),
        "templates": _pivot(report.added, "template", "round", added_rounds, value="examples", total=True),
        "by_pattern": _pivot([{**a, "pattern": a["pattern"] or "at random"} for a in report.added], "pattern",
                             "round", added_rounds, value="examples", total=True),
        "outcomes": _pivot(report.outcomes, "outcome", "round", added_rounds, value="candidates", total=True),
        "added_rounds": added_rounds,
        "patterns": {n: [p for p in report.patterns if p["round"] == n]
                     for n in sorted({p["round"] for p in report.patterns})},
        "regressions": {p["round"]: (p["next_round"], p["regressions"]) for p in report.patterns if p["regressions"]},
        "plans": {r["number"]: f"Budget {r['plan']['budget']}: {r['plan']['why']}." for r in report.rounds
                  if r["plan"]},
        "map": _map_summary(report),
        "map_section": 6 if report.mix_section else 5,  # the failure map's number: 5 when there is no mix section
        "recipe_section": (6 if report.mix_section else 5) + 1 + bool(report.drift),  # after the map and drift
    }


def headline(report: Report) -> dict[str, Any]:
    """The main metric now, at the first round, and for the baseline and production model when measured."""
    trained = report.trained
    now = trained[-1] if trained else report.done[-1]
    first = trained[0] if trained else None
    base, prod, top = report.reference("baseline"), report.reference("production"), report.reference("ceiling")
    versus = next((r for r in (base, first) if r is not None and r is not now), None)
    reached = (now["pass_rate"] / top["pass_rate"] if top and top["pass_rate"] and now["pass_rate"] is not None
               else None)
    return {"now": now, "first": first, "baseline": base, "production": prod, "ceiling": top,
            "of_ceiling": reached, "versus": versus,
            "gain": None if versus is None or now["pass_rate"] is None or versus["pass_rate"] is None
            else now["pass_rate"] - versus["pass_rate"],
            "rounds": len(trained), "failed": sum(r["status"] == "failed" for r in report.rounds),
            "patterns": sum(p["round"] == now["number"] and p["status"] != "merged" for p in report.patterns)}


def _with_deltas(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each round with the change of its test pass rate since the previous finished training round."""
    out, before = [], None
    for r in rounds:
        delta = None if before is None or r["pass_rate"] is None else r["pass_rate"] - before
        out.append({**r, "delta": delta if r["kind"] == "round" else None})
        if r["kind"] == "round" and r["status"] == "done" and r["pass_rate"] is not None:
            before = r["pass_rate"]
    return out


def _pivot(rows: list[dict], key: str, column: str, columns: list, *, value: str | None = None,
           total: bool = False) -> list[dict[str, Any]]:
    """One row per `key`: {key, cells: {column: row or summed value}, total}."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(r[key], {"key": r[key], "cells": {}, "total": 0})
        if value is None:
            entry["cells"][r[column]] = r
        else:
            entry["cells"][r[column]] = entry["cells"].get(r[column], 0) + r[value]
            entry["total"] += r[value]
    ordered = sorted(out.values(), key=lambda e: -e["total"]) if total else list(out.values())
    for entry in ordered:
        entry["cells"] = {c: entry["cells"].get(c) for c in columns}
    return ordered


def _map_summary(report: Report) -> list[dict[str, Any]]:
    panels = []
    for n in sorted({p["round"] for p in report.failure_map}):
        points = [p for p in report.failure_map if p["round"] == n]
        clusters = {}
        for p in points:
            clusters.setdefault(p["pattern"], {"pattern": p["pattern"], "rank": p["rank"], "label": p["legend"],
                                               "points": 0})["points"] += 1
        panels.append({"round": n, "points": len(points), "clusters": list(clusters.values())})
    return panels


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def pts(value: float | None) -> str:
    """A change of a rate, in percentage points."""
    return "-" if value is None else f"{value * 100:+.1f} pts"


def num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


def round_name(number: int, kinds: dict[int, str] | str | None = None) -> str:
    kind = kinds.get(number) if isinstance(kinds, dict) else kinds
    return kind if kind in REFERENCE_KINDS else f"round {number}"  # baseline, production, ceiling


# ---- terminal summary ------------------------------------------------------------------------------------------

def report_text(report: Report, *, width: int = 120) -> str:
    """The report's figures as plain-text tables, section by section in the page's order."""
    import io

    from rich.console import Console

    out = Console(file=io.StringIO(), width=width, highlight=False, color_system=None, emoji=False, soft_wrap=True)
    v = views(report)
    out.print(f"Project {report.project}  store {report.store}", markup=False)
    out.print(_headline_text(v["headline"]), markup=False)
    for section in (_rounds_text, _checks_text, _patterns_text, _added_text, _mix_text, _map_text, _drift_text,
                    _recipe_text):
        for part in section(report, v):
            out.print()
            out.print(part, markup=False) if isinstance(part, str) else out.print(part)
    return "\n".join(line.rstrip() for line in out.file.getvalue().splitlines()) + "\n"


def _headline_text(h: dict[str, Any]) -> str:
    now, versus = h["now"], h["versus"]
    line = f"Test pass rate {pct(now['pass_rate'])} in {round_name(now['number'], now['kind'])}"
    if h["gain"] is not None:
        line += f" ({pts(h['gain'])} vs {round_name(versus['number'], versus['kind'])}, {pct(versus['pass_rate'])})"
    line += f"; weighted score {pct(now['weighted_score'])}; {h['rounds']} training rounds"
    line += f", {h['failed']} failed" if h["failed"] else ""
    if h["production"]:
        line += f"; production {pct(h['production']['pass_rate'])}"
    if h["ceiling"]:
        line += (f"; ceiling {pct(h['ceiling']['pass_rate'])} (oracle data), so the loop reached "
                 f"{pct(h['of_ceiling'], 0)} of it")
    return line + ("" if h["baseline"] else "; baseline not measured") + "."


def _table(title: str, columns: list[str], rows: list[list[str]]):
    """A rich table; columns whose cells are all figures are right-aligned."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        figures = all(re.fullmatch(r"[-+\d.,%()/ >?]*( pts)?", row[i]) for row in rows) and i > 0
        table.add_column(name, justify="right" if figures else "left", no_wrap=i == 0,
                         min_width=max([len(row[i]) for row in rows] + [1]) if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def _rounds_text(report: Report, v: dict[str, Any]) -> list:
    rows = [[round_name(r["number"], r["kind"]), r["status"], num(r["trained_on"] or None), num(r["examples"]),
             pct(r["pass_rate"]), pts(r["delta"]), pct(r["weighted_score"]), pct(r["analysis_pass_rate"]),
             pct(r["corner_pass_rate"]), num(r["seconds"], 1), r["stop_reason"] or (r["error"] or "")[:60]]
            for r in v["rounds"]]
    return [_table("1. Main metric per round (test split; analysis and corner: their pass rates)",
                   ["round", "status", "trained on", "tests", "test pass", "change", "weighted", "analysis", "corner",
                    "seconds", "note"], rows)]


def _checks_text(report: Report, v: dict[str, Any]) -> list:
    if not v["checks"]:
        return ["2. Pass rate per check per round: no check results on the test split yet."]
    rows = [[row["key"], *(f"{pct(c['rate'])} ({c['passed']}/{c['applies']})" if c else "-"
                           for c in row["cells"].values())] for row in v["checks"]]
    tables = [_table("2. Pass rate per check per round (test split)",
                      ["check", *(round_name(n, k) for n, k in v["columns"])], rows)]
    if report.judges:
        tables.append(_table("Judge checks: agreement with a person's labels and with the rules", [
            "judge check", "labels", "agrees", "kappa", "outputs with rules", "agrees", "kappa", "status"],
            [[j["check"], str(j["labels"]), pct(j["agreement"]), num(j["kappa"], 2), str(j["rule_outputs"]),
              pct(j["rule_agreement"]), num(j["rule_kappa"], 2), j["status"]] for j in report.judges]))
        reasons = [[j["check"], str(r["failures"]), r["reason"] or ""] for j in report.judges for r in j["reasons"]]
        tables.append(_table("The judge's most frequent reasons for a failure (last round)",
                             ["judge check", "failures", "reason"], reasons))
    return tables


def _patterns_text(report: Report, v: dict[str, Any]) -> list:
    if not v["patterns"]:
        return ["3. Failure patterns per round: none recorded."]
    parts: list = ["3. Failure patterns per round (analysis split), each targeted one followed into the next round"]
    for n, patterns in sorted(v["patterns"].items(), reverse=True):
        rows = [[str(p["rank"]), p["pattern"], p["label"], str(p["size"]), num(p["score"], 1), p["status"],
                 str(p["added"]), _arrow(p["failing_before"], p["failing_after"]), p["change"]] for p in patterns]
        parts.append(_table(f"{round_name(n, v['kinds'].get(n))}: {len(patterns)} patterns, "
                            f"{sum(p['size'] for p in patterns)} failing cases",
                            ["#", "pattern", "label", "size", "score", "status", "added", "main check failing",
                             "next round"], rows))
        notes = [f"   {p['pattern']}: analysis inputs with {p['feature']} failing {p['check']}: "
                 f"{_arrow(p['feature_failing_before'], p['feature_failing_after'])}"
                 for p in patterns if p["feature"] and p["feature_failing_before"] is not None]
        notes = ([f"   {v['plans'][n]}"] if n in v["plans"] else []) + notes
        if n in v["regressions"]:
            notes.append(f"   checks that fell on the analysis split from round {n} to round {v['regressions'][n][0]}: "
                         f"{v['regressions'][n][1]}")
        parts += ["\n".join(notes)] if notes else []
    return parts


def _arrow(before: int | None, after: int | None) -> str:
    return "-" if before is None else f"{before} -> {'?' if after is None else after}"


def _added_text(report: Report, v: dict[str, Any]) -> list:
    if not v["outcomes"] and not v["templates"]:
        return ["4. Data added per round: no generated examples yet."]
    header = [f"round {n}" for n in v["added_rounds"]] + ["total"]

    def rows(pivot: list[dict]) -> list[list[str]]:
        return [[str(r["key"]), *(num(c) for c in r["cells"].values()), num(r["total"])] for r in pivot]
    return [_table("4. Data added per round, by template", ["template", *header], rows(v["templates"])),
            _table("   by pattern", ["pattern", *header], rows(v["by_pattern"])),
            _table("   every candidate rendered, by outcome", ["outcome", *header], rows(v["outcomes"]))]


def _mix_text(report: Report, v: dict[str, Any]) -> list:
    if not report.mix_section:
        return []
    parts: list = []
    if report.mix:
        parts.append(_table("5. Reasoning/direct mix: the test split with the thinking cue on and off",
                            ["round", "answer acc. cue on", "cue off", "<think> w/o cue", "tokens cue on",
                             "cue off", "examples per mode"],
                            [[round_name(m["round"], v["kinds"].get(m["round"])), pct(m["answer_accuracy_cue_on"]),
                              pct(m["answer_accuracy_cue_off"]), pct(m["think_leakage_cue_off"]),
                              num(m["mean_tokens_cue_on"], 1), num(m["mean_tokens_cue_off"], 1),
                              num(m["examples_per_mode"])] for m in report.mix]))
    else:
        parts.append("5. Reasoning/direct mix: no cue-mode figures recorded (they need [mix] cue and cue_pattern).")
    sweep = report.sweep
    if sweep is None:
        return parts + ["   No sweep yet (`refinery mix --sweep 0.2,0.4,0.6,0.8`)."]
    rows = [[f"{s['share']:g}", s["error"], "", "", "", "", "", ""] if "error" in s else
            [f"{s['share']:g}", f"{s['examples']} ({s['reasoning']}/{s['direct']})", pct(s["test_pass_rate"]),
             pct(s["answer_accuracy_cue_on"]), pct(s["answer_accuracy_cue_off"]), pct(s["think_leakage_cue_off"]),
             num(s["mean_tokens_cue_on"], 1), num(s["mean_tokens_cue_off"], 1)] for s in sweep["rows"]]
    return parts + [_table(f"   latest sweep ({sweep['dir']}, {sweep['steps']} steps each)",
                           ["share", "trained on (r/d)", "test pass", "answer acc. cue on", "cue off",
                            "<think> w/o cue", "tokens cue on", "cue off"], rows)]


def _map_text(report: Report, v: dict[str, Any]) -> list:
    n = v["map_section"]
    if not v["map"]:
        return [f"{n}. Failure map: no embedded failures to map yet."]
    lines = [f"{n}. Failure map: PCA of the failing cases' input embeddings, two components explaining "
             f"{pct(report.map_variance[0])} and {pct(report.map_variance[1])} of the variance"]
    for panel in v["map"]:
        clusters = ", ".join(f"c{c['rank']:02d} {c['label']} {c['points']}" for c in panel["clusters"])
        lines.append(f"   round {panel['round']}: {panel['points']} failures: {clusters}")
    return ["\n".join(lines)]


def _drift_text(report: Report, v: dict[str, Any]) -> list:
    d = report.drift
    if not d:
        return []
    n, e = v["map_section"] + 1, d["embedding"]
    head = (f"{n}. Drift of production inputs (run {d['run']}): {d['production']:,} production inputs against "
            f"{d['reference']:,} train and analysis inputs; " + ("drift found" if d["drifted"] else "no drift found")
            + f". Embeddings: MMD {e['mmd']:.4f} (p = {e['p']:.2g}); {pct(e['far_share'])} of production inputs "
            f"unlike any reference input ({pct(e['far_expected'])} expected).")
    parts: list = [head]
    if d["features"]:
        parts.append(_table("Features more common in production (q < 0.05)", ["feature", "production", "reference",
                                                                              "q"],
                            [[f["feature"], pct(f["production_share"]),
                              "never" if f["never_seen"] else pct(f["reference_share"]), f"{f['q']:.2g}"]
                             for f in d["features"][:12]]))
    parts += [f"#{i} {g['statement']} ({g['size']} inputs)" for i, g in enumerate(d["groups"], 1)]
    return parts


def _recipe_text(report: Report, v: dict[str, Any]) -> list:
    s = report.recipe
    if not s:
        return []
    source = f"round {s['round']}'s" if s["round"] is not None else "the train split's"
    head = (f"{v['recipe_section']}. Recipe sweep {s['sweep']} ({s['dir']}): {len(s['rows'])} arms on {source} "
            f"{s['train_examples']} training examples, measured on {s['test_examples']} test examples. "
            f"{s['verdict'][0].upper()}{s['verdict'][1:]}")
    rows = [[str(r["arm"]), r["label"], r["error"], "", "", "", ""] if "error" in r else
            [str(r["arm"]), r["label"], pct(r["test_pass_rate"]), pct(r["corner_pass_rate"]), str(r["steps"]),
             f"same as arm {r['same_as']}" if "same_as" in r else f"{r['train_seconds']:.1f}",
             ", ".join(f"{k} {n}" for k, n in r["failures"].items()) or "-"] for r in s["rows"]]
    return [head, _table("   arms", ["arm", "settings", "test pass", "corner", "steps", "train s",
                                   "test failures by check"], rows)]
