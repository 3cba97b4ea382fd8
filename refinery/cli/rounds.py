"""The commands of a project's data and rounds: init, ingest, status, export, iterate, baseline, ceiling, rerun,
mix and report. Registered on the app by `refinery.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from refinery.cli.app import JsonOption, _choice, _project, app
from refinery.cli.terminal import (
    StageReporter,
    console,
    num,
    pct,
    print_json,
    print_metric_history,
    print_round,
    print_wide,
    show_counts,
    warn,
)
from refinery.errors import RefineryError


@app.command()
def init(directory: Annotated[Path, typer.Argument(
             metavar="DIR", help="Folder to scaffold (created if missing).")] = Path("."),
         force: Annotated[bool, typer.Option("--force", help="Write the scaffold over an existing project's "
                                                            "(data and runs are kept).")] = False) -> None:
    """Scaffold a project: refinery.toml with every setting commented, rules/, templates/, data/, runs/."""
    from refinery.project import init_project
    written = init_project(directory, force=force)
    root = written[0].parent
    console.print(f"Created a refinery project in {root}:")
    for path in written:
        console.print(f"  {path.relative_to(root)}")
    console.print("Next: put your examples in data/ and run `refinery ingest data/FILE`.")


@app.command()
def ingest(ctx: typer.Context,
           files: Annotated[list[Path], typer.Argument(help="JSONL, CSV or Parquet files with input and output "
                                                            "columns (names set in [data]).", show_default=False,
                                                       metavar="FILE")],
           split: Annotated[str | None, typer.Option(
               metavar="SPLIT",
               help="Put every row in this split: train, analysis, test, corner, auto (deal test/analysis/train "
                    "by [data] shares) or holdout (deal test/analysis only). Default: the file's split column, "
                    "else auto.", show_default=False)] = None,
           kind: Annotated[str | None, typer.Option(
               metavar="KIND",
               help="reasoning or direct for every row. Default: the kind column, else detected from a <think> "
                    "block in the output.", show_default=False)] = None,
           source: Annotated[str, typer.Option(metavar="SOURCE", help="seed (the starting set) or import.")] = "import",
           as_json: JsonOption = False) -> None:
    """Check, deduplicate and store examples. One bad row fails the whole ingest and stores nothing."""
    from refinery.ingest import DEALT, KINDS, SPLITS, ingest_files
    from refinery.stages.measure import over_context
    from refinery.store import Store
    _choice("--split", split, SPLITS + DEALT)
    _choice("--kind", kind, KINDS)
    _choice("--source", source, ("seed", "import"))
    project = _project(ctx)
    with Store(project.store_path) as store, console.status("Reading and checking examples...") as _:
        report = ingest_files(store, files, config=project.config, split=split, kind=kind, source=source)
        report.warnings += [w for w in [over_context(project, store, report.ingests)] if w]
    if as_json:
        return print_json({"files": [vars(f) for f in report.files], "rows": report.rows,
                            "inserted": report.inserted, "duplicates": report.duplicates,
                            "warnings": report.warnings})
    table = Table("file", "rows", "stored", "duplicates", "splits", "kinds", title="Ingested")
    for f in report.files:
        table.add_row(f.path, str(f.rows), str(f.inserted), str(f.duplicates_in_file + f.duplicates_in_store),
                      show_counts(f.by_split), show_counts(f.by_kind))
    console.print(table)
    console.print(f"{report.inserted} new examples stored, {report.duplicates} duplicates skipped "
                  f"({sum(f.duplicates_in_file for f in report.files)} within this ingest, "
                  f"{sum(f.duplicates_in_store for f in report.files)} already in the store).")
    warn(report.warnings)


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show examples by split, kind and source, and the last rounds."""
    from refinery.report.status import project_status
    from refinery.store import Store
    project = _project(ctx)
    with Store(project.store_path, read_only=True) as store:
        result = project_status(store)
    if as_json:
        return print_json(result.to_dict())
    console.print(f"Project {project.root}  store {project.store_path}")
    pending = f", {result.pending} pending review" if result.pending else ""
    console.print(f"{result.examples} active examples, {result.rejected} rejected{pending}")
    table = Table("split", "total", "reasoning", "direct", "seed", "import", "generated", "relabel")
    for split in ("train", "analysis", "test", "corner"):
        rows = result.counts.filter(split=split)
        cells = [rows.filter(kind=k)["examples"].sum() for k in ("reasoning", "direct")]
        cells += [rows.filter(source=s)["examples"].sum() for s in ("seed", "import", "generated", "relabel")]
        table.add_row(split, str(rows["examples"].sum()), *map(str, cells))
    console.print(table)
    if not result.rounds:
        console.print("No rounds yet.")
    else:
        console.print(_rounds_table(result.rounds))
    if result.last_iterate:
        console.print(f"Last iterate: {result.last_iterate}", markup=False)
    if result.sweep:
        s = result.sweep
        source = f"round {s['round']}'s" if s["round"] is not None else "the train split's"
        console.print(f"Last sweep ({s['sweep']}): {s['arms']} arms of {', '.join(s['grid'])} on {source} "
                      f"{s['train_examples']} training examples; {s['verdict']}", markup=False)


def _rounds_table(rounds: list[dict]) -> Table:
    table = Table("round", "status", "started", "seconds", "test", "analysis", title="Last rounds (pass rates)")
    for r in rounds:
        seconds = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        measured = r["metrics"] or {}
        rates = [f"{measured[s]['pass_rate']:.1%}" if s in measured else "-" for s in ("test", "analysis")]
        name = str(r["number"]) + ("" if r["kind"] == "round" else f" ({r['kind']})")
        table.add_row(name, r["status"], r["started_at"].replace("T", " ")[:16], seconds, *rates)
    return table


@app.command()
def export(ctx: typer.Context,
           split: Annotated[str, typer.Option(metavar="SPLIT", help="train, analysis, test, corner or all.")] = "train",
           output: Annotated[Path | None, typer.Option(
               "--output", "-o", metavar="PATH", help="File to write. Default: runs/export/SPLIT.jsonl (or .parquet).",
               show_default=False)] = None,
           fmt: Annotated[str | None, typer.Option(
               "--format", metavar="FORMAT", help="jsonl or parquet. Default: from the file name, else jsonl.",
               show_default=False)] = None,
           force: Annotated[bool, typer.Option("--force", help="Write over an existing file given with -o (never "
                                                              "the store or a file refinery keeps in runs/).")] = False,
           pairs: Annotated[bool, typer.Option("--pairs", help="Write the rounds' active preference pairs instead "
                                               "(prompt/chosen/rejected, for trl's DPOTrainer). Default file: "
                                               "runs/export/pairs.jsonl.")] = False,
           as_json: JsonOption = False) -> None:
    """Write a split as prompt/completion pairs (trl's conversational format) to JSONL or Parquet; with --pairs,
    the preference pairs as prompt/chosen/rejected."""
    from refinery.export import export_pairs, export_split, export_target
    from refinery.store import Store
    project = _project(ctx)
    target = export_target(project, output, split="pairs" if pairs else split, fmt=fmt, force=force)
    with Store(project.store_path, read_only=True) as store:
        if pairs:
            count = export_pairs(store, target, fmt=fmt)
        else:
            count = export_split(store, target, split=split, fmt=fmt)
    if pairs:
        if as_json:
            return print_json({"path": str(target), "pairs": count})
        return console.print(f"Wrote {count} preference pairs to {target}")
    if as_json:
        return print_json({"path": str(target), "split": split, "examples": count})
    console.print(f"Wrote {count} examples (split: {split}) to {target}")


@app.command()
def iterate(ctx: typer.Context,
            rounds: Annotated[int | None, typer.Option(
                metavar="N", min=1, show_default=False,
                help="How many rounds to run (default 1). With --until-plateau: the most to run (default "
                     "[plateau] max_rounds).")] = None,
            until_plateau: Annotated[bool, typer.Option(
                "--until-plateau", help="Keep going until the main metric on the test split stops improving by more "
                                        "than [plateau] margin for [plateau] patience rounds, reaches [plateau] "
                                        "target, or the round budget is spent.")] = False,
            steps: Annotated[int | None, typer.Option(metavar="N", help="Training steps per round (overrides "
                                                                       "[train] steps).", show_default=False)] = None,
            as_json: JsonOption = False) -> None:
    """Run rounds: train, evaluate the held-out splits, cluster the failures, generate counterexamples.

    An interrupted round (Ctrl-C, a killed process) is restarted by the next `iterate`, reusing its adapter when
    training had finished. Only one `iterate` runs on a project at a time."""
    from refinery.stages.iterate import iterate as run
    project = _project(ctx)
    if steps is not None:
        project = project.with_config(project.config.override("train", steps=steps))
    with StageReporter() as reporter:
        result = run(project, rounds=rounds, until_plateau=until_plateau, reporter=reporter,
                     on_round=None if as_json else reporter.printing(print_round))
    if as_json:
        return print_json(result.to_dict())
    print_metric_history(result)


@app.command()
def baseline(ctx: typer.Context,
             shots: Annotated[int | None, typer.Option(metavar="N", min=0, show_default=False,
                                                       help="Worked examples in the prompt (overrides [baseline] "
                                                            "shots).")] = None,
             as_json: JsonOption = False) -> None:
    """Measure the base model with a few-shot prompt of training examples, recorded as round 0: the prompt-first
    baseline every round is compared with. Also measures [baseline] production (round -1) when set."""
    from refinery.stages.measure import run_baseline
    project = _project(ctx)
    if shots is not None:
        project = project.with_config(project.config.override("baseline", shots=shots))
    with StageReporter() as reporter:
        reporter.begin("Baseline: the base model, few-shot", "measure")
        document = run_baseline(project, on_batch=reporter.progress)
    if as_json:
        return print_json(document)
    for doc in (document, document.get("production")):
        if not doc:
            continue
        shots = doc.get("shots")
        plural = "" if shots == 1 else "s"
        name = f"round {doc['round']} ({doc['kind']}" + (f", {shots} shot{plural})" if shots is not None else ")")
        table = Table("split", "examples", "pass rate", "weighted score", title=f"{name}")
        for split, m in doc["metrics"].items():
            if isinstance(m, dict) and "pass_rate" in m:
                table.add_row(split, str(m["examples"]), f"{m['pass_rate']:.1%}", f"{m['weighted_score']:.3f}")
        console.print(table)


@app.command()
def ceiling(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Train with the project's [train] settings on oracle data, the training examples you brought (not the
    loop's counterexamples) plus every analysis example (the best data the loop could ever add), and measure the
    test split: recorded as round -2, the reference every round's figures are set against. Adds no data."""
    from refinery.stages.measure import run_ceiling
    with StageReporter() as reporter:
        document = run_ceiling(_project(ctx), on_step=reporter.progress, on_start=lambda examples: reporter.begin(
            f"Ceiling: the project's recipe on {examples} oracle examples (brought train + analysis)", "train"))
    if as_json:
        return print_json(document)
    test = document["metrics"]["test"]
    table = Table("check", "applies", "failed", "pass rate",
                  title=f"Ceiling (round -2): {document['steps']} steps on {document['examples']} examples "
                        f"({document['train']} train + {document['analysis']} analysis), "
                        f"{document['train_seconds']:.0f} s training")
    for name, c in test["checks"].items():
        table.add_row(name, str(c["applies"]), str(c["applies"] - c["passed"]), pct(c["rate"]))
    console.print(table)
    console.print(f"Test pass rate at the ceiling: {pct(test['pass_rate'])} of {test['examples']} examples "
                  f"(weighted score {test['weighted_score']:.3f}).")


@app.command()
def rerun(ctx: typer.Context,
          number: Annotated[int, typer.Argument(metavar="N", help="The round to train again.")],
          as_json: JsonOption = False) -> None:
    """Train round N again from its record (config snapshot, seeds, exact training set; under objective "sft+dpo"
    or "dpo" its DPO too, on the pairs of the rounds before it) and compare the test figures and the weights with
    what it recorded. Adds nothing to the store."""
    from refinery.stages.measure import rerun_round
    with StageReporter() as reporter:
        title = f"Re-running round {number} from its record: {{}} examples"
        document = rerun_round(_project(ctx), number, on_step=reporter.progress,
                               on_start=lambda examples: reporter.begin(title.format(examples), "train"))
    if as_json:
        return print_json(document)
    table = Table("", "test pass rate", "weighted score", "answer acc. cue on", "cue off",
                  title=f"Round {number}: recorded vs re-run ({document['examples']} examples, training set "
                        f"{document['train_set_hash'][:12]})")
    for name in ("recorded", "rerun"):
        test, mix = document[name]["test"] or {}, document[name]["mix"] or {}
        table.add_row(name, pct(test.get("pass_rate")), f"{test.get('weighted_score', 0):.3f}",
                      pct(mix.get("answer_accuracy_cue_on")), pct(mix.get("answer_accuracy_cue_off")))
    console.print(table)
    diff = document["weights_max_abs_diff"]
    console.print("Weights: " + ("bit-identical to the recorded adapter" if diff == 0 else
                                 "recorded adapter not found" if diff is None else f"max abs difference {diff:.3g}"))
    for name, (was, now) in document["versions_changed"].items():
        console.print(f"  {name}: recorded {was}, now {now}")
    console.print(f"Written to {document['dir']}")


@app.command()
def mix(ctx: typer.Context,
        reasoning: Annotated[float | None, typer.Option(
            "--reasoning", metavar="SHARE", min=0.0, max=1.0,
            help="Set the share of reasoning examples in the training set ([mix] reasoning_share in the project "
                 "file).", show_default=False)] = None,
        sweep: Annotated[str | None, typer.Option(
            "--sweep", metavar="SHARES", help="Comma-separated shares, e.g. 0.2,0.4,0.6,0.8: train one adapter per "
            "share on the same data and compare them on the test split (with and without the thinking cue, when "
            "[mix] cue is set).",
            show_default=False)] = None,
        steps: Annotated[int | None, typer.Option(metavar="N", help="Training steps per adapter in a sweep.",
                                                  show_default=False)] = None,
        as_json: JsonOption = False) -> None:
    """Show or set the reasoning/direct mix, or sweep shares to pick one for your latency and quality needs."""
    from refinery.project import set_setting
    from refinery.stages.mix import missing_kind, training_set
    from refinery.store import Store
    project = _project(ctx)
    if sweep is not None:
        return _sweep(project, sweep, steps, as_json)
    if reasoning is not None:
        project = set_setting(project, "mix", "reasoning_share", reasoning)
    with Store(project.store_path, read_only=True) as store:
        train = store.frame("SELECT id, kind FROM examples WHERE status = 'active' AND split = 'train' ORDER BY id")
    share = project.config.mix.reasoning_share
    chosen = training_set(train, reasoning_share=share, seed=project.config.core.seed)
    counts = {k: int(train.filter(kind=k).height) for k in ("reasoning", "direct")}
    used = {k: int(chosen.filter(kind=k).height) for k in ("reasoning", "direct")}
    warning = missing_kind(train, reasoning_share=share, toggle_template=project.config.mix.toggle_template)
    document = {"reasoning_share": share, "train_split": counts, "training_set": used,
                "project_file": str(project.config_file), "warning": warning}
    if as_json:
        return print_json(document)
    shown = "unset (the data as it is)" if share is None else f"{share:g}"
    console.print(f"reasoning_share = {shown}  ({project.config_file.name})")
    console.print(f"train split: {counts['reasoning']} reasoning, {counts['direct']} direct; the next round trains "
                  f"on {used['reasoning']} reasoning + {used['direct']} direct = {chosen.height}")
    warn([warning] if warning else [])


def _sweep(project, sweep: str, steps: int | None, as_json: bool) -> None:
    from refinery.stages.sweep import run_grid
    try:
        shares = [float(s) for s in sweep.split(",") if s.strip()]
    except ValueError:
        raise RefineryError(f"--sweep {sweep}: expected comma-separated shares from 0 to 1, e.g. 0.2,0.4,0.6") \
            from None
    if not shares or any(not 0 <= s <= 1 for s in shares):
        raise RefineryError(f"--sweep {sweep}: expected comma-separated shares from 0 to 1, e.g. 0.2,0.4,0.6")
    if steps is not None:
        project = project.with_config(project.config.override("train", steps=steps))
    with StageReporter() as reporter:
        document = run_grid(project, {"reasoning_share": shares}, pool=True, against_current=False,
                            reporter=reporter)
    if as_json:
        return print_json(document)
    cue = project.config.mix.cue is not None  # cue modes are asked only with [mix] cue set
    modes = ("answer acc. cue on", "cue off", "<think> w/o cue", "tokens cue on", "cue off") if cue else ()
    table = Table("share", "trained on (r/d)", "test pass", *modes,
                  title=f"Mix sweep: {document['train_examples']} train examples, "
                  f"{document['test_examples']} test examples, {document['steps']} steps each")
    for r in document["rows"]:
        if "error" in r:
            table.add_row(f"{r['share']:g}", "0", r["error"], *[""] * len(modes))
            continue
        figures = (pct(r["answer_accuracy_cue_on"]), pct(r["answer_accuracy_cue_off"]),
                   pct(r["think_leakage_cue_off"]), num(r["mean_tokens_cue_on"]), num(r["mean_tokens_cue_off"]))
        table.add_row(f"{r['share']:g}", f"{r['examples']} ({r['reasoning']}/{r['direct']})",
                      pct(r["test_pass_rate"]), *(figures if cue else ()))
    console.print(table)
    if not cue:
        console.print("No thinking cue set ([mix] cue and cue_pattern), so the test split was asked as stored only.",
                      markup=False)
    console.print(document["verdict"], markup=False)
    console.print(f"Adapters and sweep.json in {document['dir']}")


@app.command()
def report(ctx: typer.Context,
           out: Annotated[Path | None, typer.Option(
               "--out", "-o", metavar="PATH", help="Where to write the page: a file, or a folder to put report.html "
               "in. Default: report.html in the project's runs folder.", show_default=False)] = None,
           text: Annotated[bool, typer.Option("--text", help="Print the same figures as tables instead of "
                                                             "writing the page.")] = False,
           as_json: JsonOption = False) -> None:
    """Write the report: one self-contained HTML page (plots inline, opens offline) with the main metric per round
    against the baseline, pass rate per check, failure patterns and their history, data added by template and
    pattern, the reasoning/direct mix, and a map of the failures coloured by cluster."""
    from refinery.report.page import build_report, report_text, write_report
    project = _project(ctx)
    result = build_report(project)
    if as_json:
        return print_json(result.to_dict())
    if text:
        return print(report_text(result, width=console.width if console.is_terminal else 120), end="")
    console.print(f"Wrote {write_report(project, out=out, report=result)}")


@app.command()
def sweep(ctx: typer.Context,
          settings: Annotated[list[str] | None, typer.Argument(metavar="KEY=V1,V2...", help="A [train] setting, "
                                                               "base_model or reasoning_share, and the values to "
                                                               "try; several make a grid.", show_default=False)] = None,
          round: Annotated[int | None, typer.Option("--round", metavar="N", help="Train on round N's training set "
                                                    "(default: the last finished round's).",
                                                    show_default=False)] = None,
          budget: Annotated[int | None, typer.Option("--budget", metavar="N", help="At most N arms: a seeded sample "
                                                     "of the grid.", min=1, show_default=False)] = None,
          steps: Annotated[int | None, typer.Option(metavar="N", help="Training steps per arm.",
                                                    show_default=False)] = None,
          apply: Annotated[int | None, typer.Option("--apply", metavar="ARM", help="Write arm ARM's settings of the "
                                                    "latest finished sweep into the project file, with a comment.",
                                                    show_default=False)] = None,
          as_json: JsonOption = False) -> None:
    """Choose the recipe by evals: train one adapter per combination of settings, on the same data with the same
    seed, measure each on the test and corner splits, and test the best against the current recipe (McNemar). Run
    again after an interruption, it trains only the arms it had not finished.

    Example: refinery sweep target_modules=attention,attention-mlp,all-linear rank=4,16,64 method=lora,full"""
    from refinery.stages.grid import parse_grid
    from refinery.stages.sweep import apply_arm, run_grid

    project = _project(ctx)
    if apply is not None:
        written = apply_arm(project, apply)
        if as_json:
            return print_json(written)
        console.print(f"Wrote {', '.join(f'{k} = {v}' for k, v in written['settings'].items())} into "
                      f"{written['file']} ({written['comment']}).", markup=False)
        return
    if not settings:
        raise RefineryError("sweep needs KEY=V1,V2 (for example rank=4,16,64), or --apply ARM.")
    if steps is not None:
        project = project.with_config(project.config.override("train", steps=steps))
    grid = parse_grid(settings, project.config)
    with StageReporter() as reporter:
        document = run_grid(project, grid, from_round=round, budget=budget, reporter=reporter)
    if as_json:
        return print_json(document)
    print_wide(sweep_table(document))
    console.print(document["verdict"], markup=False)
    console.print(f"Weights and sweep.json in {document['dir']}; `refinery sweep --apply ARM` writes an arm's "
                  f"settings into {project.config_file.name}.", markup=False)


def sweep_table(document: dict) -> Table:
    """One line per arm: the value of each swept key, pass rates and weighted score, cost and the check it fails
    most (`--json` and the report have every check's failures)."""
    source = f"round {document['round']}'s" if document["round"] is not None else "the train split's"
    sampled = f"{len(document['rows'])} arms" + (f" ({document['budget']} sampled of {document['grid_arms']})"
                                                 if document["budget"] else "")
    keys = list(document["grid"])
    table = Table("arm", *keys, "test", "weighted", "corner", "steps", "train s", "eval s", "peak GB", "MB",
                  "most failed check",
                  title=f"Sweep {document['sweep']}: {sampled} on {source} {document['train_examples']} training "
                        f"examples; {document['test_examples']} test, {document['corner_examples']} corner")
    for r in document["rows"]:
        arm = str(r["arm"]) + (" *" if r["arm"] == document["best"] else "") + (" (now)" if r["current"] else "")
        values = [str(r["settings"][k]) for k in keys]
        if "error" in r:
            table.add_row(arm, *values, r["error"], *[""] * 8)
            continue
        cost = ([f"= arm {r['same_as']}", "", "", ""] if "same_as" in r else
                [f"{r['train_seconds']:.1f}", f"{r['eval_seconds']:.1f}", f"{r['peak_memory_bytes'] / 2**30:.2f}",
                 f"{r['weights_bytes'] / 1e6:.1f}"])
        worst = max(r["failures"].items(), key=lambda kv: (kv[1], kv[0]), default=None)
        table.add_row(arm, *values, pct(r["test_pass_rate"]), f"{r['test_weighted_score']:.3f}",
                      pct(r["corner_pass_rate"]), str(r["steps"]), *cost,
                      f"{worst[0]} {worst[1]}" if worst else "-")
    return table
