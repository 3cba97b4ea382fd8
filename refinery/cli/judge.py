"""The judge's commands: `refinery compare A B` (two rounds side by side before the judge), `refinery judge label`
(a person's verdicts on judge results) and `refinery judge calibrate`. Registered on the main app by `refinery.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from refinery.cli.app import JsonOption, _project, app
from refinery.cli.terminal import console, pct, print_json
from refinery.errors import RefineryError

judge_app = typer.Typer(help="The LLM judge's checks: label its verdicts as a person, and see how far it agrees.",
                        rich_markup_mode=None)
app.add_typer(judge_app, name="judge")
RoundOption = Annotated[int | None, typer.Option("--round", metavar="N", help="Which round (default: the last "
                                                 "finished one).", show_default=False)]


@app.command()
def compare(ctx: typer.Context,
            a: Annotated[str, typer.Argument(metavar="A", help="A round number, baseline or production.")],
            b: Annotated[str, typer.Argument(metavar="B", help="The round to judge against A.")],
            rubric: Annotated[Path | None, typer.Option("--rubric", metavar="FILE", help="The question in Jinja "
                                                        "(sees input, expected, fields, first, second). Default: "
                                                        "which reply is correct and closest to the reference.",
                                                        show_default=False)] = None,
            seed: Annotated[int, typer.Option("--seed", metavar="N", help="Draws which output each example shows "
                                                                          "first.")] = 0,
            as_json: JsonOption = False) -> None:
    """Judge B's test outputs against A's, each example in both orders: B's wins, ties and losses with a 95 %
    interval, and how often the verdict flipped with the order (position bias)."""
    from refinery.report.compare import compare_rounds, round_label

    question = _read_rubric(rubric) if rubric else None
    result = compare_rounds(_project(ctx), a, b, rubric=question, seed=seed)
    if as_json:
        return print_json({**vars(result), "judged": result.judged})
    table = Table(f"{b} against {a}", "examples", "share")
    for label, count in (("wins", result.wins), ("ties", result.ties), ("losses", result.losses),
                         ("no verdict", result.no_verdict)):
        table.add_row(label, str(count), pct(count / result.examples))
    said = f"{round_label(result.b)} against {round_label(result.a)}"
    console.print(f"{said[0].upper()}{said[1:]} on {result.examples} test examples, judged by {result.judge}, each "
                  f"in both orders.", markup=False)
    console.print(table)
    if result.score is not None:
        console.print(f"B's score (wins + ties / 2): {pct(result.score)}, 95 % interval {pct(result.low)} to "
                      f"{pct(result.high)}.", markup=False)
        console.print(f"Flipped with the order: {result.flipped} of {result.judged} judged "
                      f"({pct(result.flipped / result.judged)}); the reply shown first was picked in "
                      f"{pct(result.first_picked)} of the verdicts that picked one.", markup=False)
    for warning in result.warnings:
        console.print(f"Note: {warning}", markup=False)


@judge_app.command("label")
def label(ctx: typer.Context, round: RoundOption = None,
          check: Annotated[str | None, typer.Option("--check", metavar="NAME", help="One judge check (default: "
                                                    "all).", show_default=False)] = None,
          example: Annotated[str | None, typer.Option("--example", metavar="ID", help="Label this example's "
                                                      "result without asking (with --verdict).",
                                                      show_default=False)] = None,
          variant: Annotated[str, typer.Option("--variant", help="The example's variant, with --example.")] = "",
          verdict: Annotated[str | None, typer.Option("--verdict", metavar="pass|fail", help="Your verdict, with "
                                                      "--example.", show_default=False)] = None) -> None:
    """Give your verdict on the judge's results: each unlabelled one is shown (input, output, expected, the judge's
    word) and you answer p (pass), f (fail), s (skip) or q (quit). Scriptable: --example ID --verdict pass."""
    from refinery.report.calibration import judge_check_names, judge_results, last_round, save_label
    from refinery.rules import load_rules
    from refinery.store import Store

    project = _project(ctx)
    checks = judge_check_names(load_rules(project.rules_dir), check)
    if example is not None or verdict is not None:
        if example is None or verdict not in ("pass", "fail") or check is None:
            raise RefineryError("label one result with --example ID --check NAME --verdict pass|fail (and --round "
                                "N for another round than the last).")
        with Store(project.store_path) as store:
            number = round if round is not None else last_round(store)
            if number is None:
                raise RefineryError("no finished round yet, so no judge result to label: run `refinery iterate` "
                                    "first.")
            save_label(store, round=number, example_id=example, check=check, passed=verdict == "pass",
                       variant=variant)
        return console.print(f"Labelled {example} {verdict} on '{check}' (round {number}).", markup=False)
    with Store(project.store_path, read_only=True) as store:
        pending = judge_results(store, checks=checks, round=round, unlabelled=True)
    if pending.is_empty():
        return console.print("Nothing to label: every judge result of that round has your verdict.", markup=False)
    done = 0
    for row in pending.iter_rows(named=True):
        _show_result(row, left=pending.height - done)
        answer = typer.prompt("Your verdict: p(ass), f(ail), s(kip), q(uit)", default="s").strip().lower()[:1]
        if answer == "q":
            break
        if answer in ("p", "f"):
            done += 1
            with Store(project.store_path) as store:  # each verdict kept as it is given: quitting loses none
                save_label(store, round=row["round"], example_id=row["example_id"], check=row["check_name"],
                           passed=answer == "p", variant=row["variant"])
    console.print(f"Labelled {done} result(s).", markup=False)


@judge_app.command("calibrate")
def calibrate(ctx: typer.Context, round: RoundOption = None, as_json: JsonOption = False) -> None:
    """Each judge check's agreement and Cohen's kappa with your labels, and with the rule checks on the same
    outputs; below [judge] min_agreement (or with too few labels) it is uncalibrated."""
    from refinery.report.calibration import calibrate as run_calibration
    from refinery.report.calibration import judge_check_names
    from refinery.rules import load_rules
    from refinery.store import Store

    project = _project(ctx)
    checks = judge_check_names(load_rules(project.rules_dir), required=False)
    with Store(project.store_path, read_only=True) as store:
        found = run_calibration(store, checks=checks, settings=project.config.judge, round=round)
    if as_json:
        return print_json([vars(c) for c in found])
    if not found:
        return console.print("No judge checks in rules/ (a [[check]] with type = \"judge\" and a rubric): nothing "
                             "to calibrate.", markup=False)
    table = Table("judge check", "your labels", "agrees", "kappa", "outputs with rules", "agrees", "kappa",
                  title="The judge against you, and against the rule checks")
    for c in found:
        table.add_row(c.check, str(c.labels), pct(c.agreement), _kappa(c.kappa), str(c.rule_outputs),
                      pct(c.rule_agreement), _kappa(c.rule_kappa))
    console.print(table)
    for c in found:
        console.print(f"{c.check}: {c.status}", markup=False)


def _show_result(row: dict, *, left: int) -> None:
    said = "PASS" if row["passed"] else "FAIL"
    console.print(f"\n[{left} left] round {row['round']}, {row['example_id']}"
                  + (f" ({row['variant']})" if row["variant"] else "") + f", check '{row['check_name']}'",
                  markup=False)
    for name, text in (("input", row["input"]), ("output", row["output"]), ("expected", row["expected"])):
        console.print(f"  {name:<9}{text}", markup=False)
    console.print(f"  judge    {said}: {row['detail'] or ''}", markup=False)


def _read_rubric(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RefineryError(f"{path}: cannot read the rubric ({exc}). Give a UTF-8 text file.") from None


def _kappa(value: float | None) -> str:
    return "-" if value is None else f"{round(value, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"
