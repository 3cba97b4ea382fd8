"""`refinery drift`: production inputs against what the model was trained and evaluated on, and a sample of what is
new fed into the analysis split. Registered on the main app by `refinery.cli`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from refinery.cli.app import JsonOption, _project, app
from refinery.cli.terminal import console, pct, print_json
from refinery.errors import RefineryError


@app.command()
def drift(ctx: typer.Context,
          files: Annotated[list[Path] | None, typer.Argument(metavar="FILE...", help="Production inputs: JSONL, CSV "
                                                             "or Parquet with an input column; optional output (what "
                                                             "the model answered), expected and timestamp.",
                                                             show_default=False)] = None,
          add: Annotated[int, typer.Option("--add", metavar="N", help="Store a stratified sample of N drifting "
                                           "inputs in the analysis split (those without an expected output wait "
                                           "for one: `refinery relabel ID --output TEXT`).", min=0)] = 0,
          waiting: Annotated[bool, typer.Option("--waiting", help="List the sampled inputs that wait for an "
                                                "expected output, and stop.")] = False,
          as_json: JsonOption = False) -> None:
    """Find what is new in production inputs: input features more common than in the train and analysis inputs
    (Fisher, Benjamini-Hochberg), an embedding two-sample test (MMD) and the inputs unlike any seen, grouped; with
    outputs, the rule checks that need no expected output; with timestamps, the same per period."""
    from refinery.stages import drift as stage

    project = _project(ctx)
    if waiting:
        return _print_waiting(project, as_json)
    if not files:
        raise RefineryError("drift needs production files: `refinery drift FILE...` (JSONL, CSV or Parquet with an "
                            "input column).")
    report, production = stage.detect_drift(project, [str(f) for f in files], on_progress=_say)
    report = stage.record_drift(project, report, production, add=add)
    if as_json:
        return print_json(report.to_json())
    print_drift(report)


def _say(message: str) -> None:
    print(f"Drift: {message}", file=sys.stderr, flush=True)


def print_drift(report) -> None:
    """What a person reads: the verdict, the drifting features, the embedding test, the groups, the checks."""
    from refinery.stages.hypotheses import format_p

    e = report.embedding
    sample = f" on a seeded sample of {report.sampled:,} of them" if report.sampled < report.production else ""
    console.print(f"Drift run {report.run}: {report.production:,} production inputs against {report.reference:,} "
                  f"train and analysis inputs ({report.tested:,} features tested{sample}).", markup=False)
    if not report.drifted:
        console.print(f"No drift found: no feature is more common in production (q < 0.05 after "
                      f"Benjamini-Hochberg over {report.tested:,}), and the embedding samples do not differ "
                      f"(MMD {e['mmd']:.4f}, {format_p(e['p'])}; {pct(e['far_share'])} of production inputs unlike any "
                      f"reference input, {pct(e['far_expected'])} expected).", markup=False)
    if report.features:
        table = Table("feature", "production", "reference", "q", title="Features more common in production")
        for f in report.features[:12]:
            ref = "never" if f["never_seen"] else f"{pct(f['reference_share'])} ({f['reference']})"
            table.add_row(f["feature"], f"{pct(f['production_share'])} ({f['production']})", ref, f"{f['q']:.2g}")
        console.print(table)
        if len(report.features) > 12:
            console.print(f"... and {len(report.features) - 12} more (--json lists them all).", markup=False)
    if report.drifted:
        console.print(f"Embeddings: MMD {e['mmd']:.4f} between samples of {e['production_sample']:,} and "
                      f"{e['reference_sample']:,} ({format_p(e['p'])}, {e['permutations']} permutations); "
                      f"{e['far']} production inputs ({pct(e['far_share'])}) unlike any reference input "
                      f"({pct(e['far_expected'])} expected, {format_p(e['far_p'])}).", markup=False)
    for n, group in enumerate(report.groups, 1):
        console.print(f"\n#{n} {group.statement}\n   {group.size} inputs ({pct(group.share)}), e.g. "
                      + "; ".join(repr(x[:90]) for x in group.examples[:2]), markup=False)
    if report.checks:
        table = Table("check", "production outputs", "pass rate", "test split (last round)",
                      title="Checks that need no expected output, on production outputs")
        for c in report.checks:
            table.add_row(c["check"], str(c["applies"]), pct(c["pass_rate"]),
                          pct(c["test_pass_rate"]) if c["test_pass_rate"] is not None else "-")
        console.print(table)
    if report.periods:
        table = Table("from", "inputs", "in a drifting group", "unlike any reference (sampled)", title="Over time")
        for p in report.periods:
            table.add_row(p["period"], str(p["inputs"]), pct(p["drifting_share"]), str(p["far"]))
        console.print(table)
    if report.added or report.pending:
        console.print(f"\nAdded {report.added} drifting inputs to the analysis split; {report.pending} wait for an "
                      f"expected output (`refinery drift --waiting`, then `refinery relabel ID --output TEXT`). "
                      f"The next `refinery iterate` mines them.", markup=False)


def _print_waiting(project, as_json: bool) -> None:
    from refinery.store import Store

    with Store(project.store_path, read_only=True) as store:
        rows = store.frame("SELECT id, run, drift_group, origin, input FROM drift_inputs WHERE example_id IS NULL "
                           "ORDER BY run, id")
    if as_json:
        return print_json(rows.to_dicts())
    if rows.is_empty():
        console.print("No production input waits for an expected output.")
        return
    console.print(f"{rows.height} production input(s) wait for an expected output; give each one with "
                  f"`refinery relabel ID --output TEXT`:", markup=False)
    for r in rows.iter_rows(named=True):
        console.print(f"{r['id']}  run {r['run']}, {r['drift_group'] or 'no group'}, {r['origin']}\n    "
                      f"{r['input']}", markup=False)
