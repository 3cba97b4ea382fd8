"""The review commands: failure patterns (`refinery clusters ...`), generated examples (`refinery examples ...`)
and `refinery relabel`. Registered on the main app by `refinery.cli`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from refinery.cli.app import JsonOption, _project, app
from refinery.cli.terminal import console, print_json

clusters_app = typer.Typer(help="Review failure patterns: list them with their evidence, show all members, accept, "
                                "reject, merge or rename them.", rich_markup_mode=None)
app.add_typer(clusters_app, name="clusters")
ClusterId = Annotated[str, typer.Argument(metavar="ID", help="A pattern id such as r003-c01.", show_default=False)]


@clusters_app.callback(invoke_without_command=True)
def clusters(ctx: typer.Context,
             round: Annotated[int | None, typer.Option("--round", metavar="N", help="Which round (default: the "
                                                       "last finished one).", show_default=False)] = None,
             history: Annotated[bool, typer.Option("--history", help="For each targeted pattern: counterexamples "
                                                   "added and how its failures changed in the next round.")] = False,
             as_json: JsonOption = False) -> None:
    """List the failure patterns of a round, worst first, with the statement, evidence and a few members."""
    if ctx.invoked_subcommand:
        return
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path, read_only=True) as store:
        if history:
            from refinery.rules import load_rules
            cues = load_rules(_project(ctx).rules_dir).cues()
            table = review.pattern_history(store, cues=cues)
            return print_json(table.to_dicts()) if as_json else _print_history(table)
        patterns = review.list_patterns(store, round=round)
        plan = review.round_plan(store, round=round)
    if as_json:
        return print_json([vars(p) for p in patterns])
    if plan:
        console.print(f"Budget {plan['budget']}: {plan['why']}.", markup=False)
    if not patterns:
        console.print("No failure patterns in that round.")
    for p in patterns:
        _print_pattern(p)


@clusters_app.command("show")
def clusters_show(ctx: typer.Context, cluster_id: ClusterId, as_json: JsonOption = False) -> None:
    """Show one pattern with every member: input, model output, expected output."""
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path, read_only=True) as store:
        pattern = review.show_pattern(store, cluster_id)
    if as_json:
        return print_json(vars(pattern))
    _print_pattern(pattern)


@clusters_app.command("accept")
def clusters_accept(ctx: typer.Context, cluster_id: ClusterId, as_json: JsonOption = False) -> None:
    """Target this pattern: the next round generates counterexamples for it if it has none yet."""
    _decide(ctx, cluster_id, "accept", as_json)


@clusters_app.command("reject")
def clusters_reject(ctx: typer.Context, cluster_id: ClusterId, as_json: JsonOption = False) -> None:
    """Do not target this pattern: its counterexamples are withdrawn from the next round's training set."""
    _decide(ctx, cluster_id, "reject", as_json)


@clusters_app.command("merge")
def clusters_merge(ctx: typer.Context, cluster_id: ClusterId,
                   other: Annotated[str, typer.Argument(metavar="OTHER", help="The pattern to fold into ID.")],
                   as_json: JsonOption = False) -> None:
    """Fold OTHER into ID (same round): members, counts and counterexamples move; OTHER is kept as merged."""
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path) as store:
        pattern = review.merge_patterns(store, cluster_id, other)
    if as_json:
        return print_json(vars(pattern))
    console.print(f"Merged {other} into {cluster_id}: now {pattern.size} members.")


@clusters_app.command("rename")
def clusters_rename(ctx: typer.Context, cluster_id: ClusterId,
                    label: Annotated[str, typer.Argument(metavar="LABEL", help="The new label.")]) -> None:
    """Give a pattern a label of your own."""
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path) as store:
        pattern = review.rename_pattern(store, cluster_id, label)
    console.print(f"{pattern.id} is now labelled: {pattern.label}")


examples_app = typer.Typer(help="Generated examples and their lineage; with `[generate] review = true`, the "
                                "counterexamples waiting for a person to accept or reject them.",
                           rich_markup_mode=None)
app.add_typer(examples_app, name="examples")
ExampleIds = Annotated[list[str] | None, typer.Argument(metavar="ID", help="Example ids (from `refinery "
                                                        "examples --pending`).", show_default=False)]
AllPending = Annotated[bool, typer.Option("--all-pending", help="Every pending example.")]


@examples_app.callback(invoke_without_command=True)
def examples(ctx: typer.Context,
             pending: Annotated[bool, typer.Option("--pending", help="Only those waiting for review.")] = False,
             round: Annotated[int | None, typer.Option("--round", metavar="N", help="Only those added in round N.",
                                                       show_default=False)] = None,
             limit: Annotated[int, typer.Option("--limit", metavar="N", help="Show at most N (--json shows all).",
                                                min=1)] = 20,
             as_json: JsonOption = False) -> None:
    """List generated examples, newest first, with the round, pattern and template that made them."""
    if ctx.invoked_subcommand:
        return
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path, read_only=True) as store:
        frame = review.list_examples(store, status="pending" if pending else None, round=round)
    if as_json:
        return print_json(frame.to_dicts())
    what = "pending review" if pending else "generated"
    if frame.height == 0:
        with Store(_project(ctx).store_path, read_only=True) as store:
            return console.print(review.no_examples_note(store, pending=pending, round=round), markup=False)
    table = Table("id", "status", "round", "pattern", "template", "input", "output",
                  title=f"{frame.height} examples {what}" + (f" (first {limit})" if frame.height > limit else ""))
    for r in frame.head(limit).iter_rows(named=True):
        table.add_row(r["id"], r["status"], str(r["round"]), r["cluster_id"] or "-", r["template"] or "-",
                      r["input"], r["output"])
    console.print(table)
    if pending:
        console.print("Decide with `refinery examples accept ID...` or `reject ID...` (or --all-pending).")


@examples_app.command("accept")
def examples_accept(ctx: typer.Context, ids: ExampleIds = None, all_pending: AllPending = False,
                    as_json: JsonOption = False) -> None:
    """Accept pending examples: the next round trains on them."""
    _decide_examples(ctx, ids, "accept", all_pending, as_json)


@examples_app.command("reject")
def examples_reject(ctx: typer.Context, ids: ExampleIds = None, all_pending: AllPending = False,
                    as_json: JsonOption = False) -> None:
    """Reject pending examples: they stay in the store, status rejected, and are never trained on."""
    _decide_examples(ctx, ids, "reject", all_pending, as_json)


def _decide_examples(ctx: typer.Context, ids: list[str] | None, decision: str, every: bool, as_json: bool) -> None:
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path) as store:
        result = review.decide_examples(store, ids or [], decision, every_pending=every)
    if as_json:
        return print_json(result)
    console.print(f"{result['examples']} examples {result['status']}; {result['pending_left']} still pending.")


@app.command("relabel")
def relabel_command(ctx: typer.Context,
                    example_id: Annotated[str, typer.Argument(metavar="EXAMPLE_ID", help="The example to correct.")],
                    output: Annotated[str, typer.Option("--output", metavar="TEXT", help="The corrected expected "
                                                        "output.", show_default=False)],
                    as_json: JsonOption = False) -> None:
    """Correct an expected output. The corrected example is stored as source 'relabel'; the old one is kept,
    status 'rejected'. Given the id of a production input that `refinery drift --add` left waiting, store it as an
    analysis example with this expected output."""
    from refinery.report import review
    from refinery.store import Store
    project = _project(ctx)
    with Store(project.store_path) as store:
        result = review.relabel(store, example_id, output, think=project.config.think())
    if as_json:
        return print_json(result)
    console.print(f"Relabelled {result['old']} -> {result['new']} ({result['split']}): {result['output']}")


def _decide(ctx: typer.Context, cluster_id: str, decision: str, as_json: bool) -> None:
    from refinery.report import review
    from refinery.store import Store
    with Store(_project(ctx).store_path) as store:
        result = review.decide(store, cluster_id, decision)
    if as_json:
        return print_json(result)
    moved = {k: v for k, v in result.items() if k.startswith("examples_")}
    detail = ", ".join(f"{v} counterexamples {k.removeprefix('examples_')}" for k, v in moved.items())
    console.print(f"{cluster_id} {result['status']} ({detail}).")


KINDS = {"cause": "cause", "all": "fails on all", "cluster": "embedding cluster"}


def _print_pattern(p) -> None:
    parts = p.score_parts
    budget = f" (budget {p.budget})" if p.budget is not None else ""
    console.print(f"#{p.rank} {p.id}  [{p.status}]  {KINDS.get(p.kind, p.kind)}  score {p.score:.1f} = "
                  f"{parts.get('failures')} failures x {parts.get('mean_severity')} mean severity  counterexamples "
                  f"{p.generated}{budget}", markup=False)
    if p.label and p.label != p.id:
        console.print(f"   label: {p.label}", markup=False)
    console.print(f"   {p.statement}", markup=False)
    console.print("   failing checks: " + ", ".join(f"{k} {v}" for k, v in p.checks.items()), markup=False)
    if p.evidence:
        table = Table("feature", "fails with", "fails without", "lift", "q",
                      title=f"evidence ({p.evidence[0]['check']})")
        for e in p.evidence[:5]:
            table.add_row(e["feature"], f"{e['rate_with']:.0%} ({e['with_failed']}/{e['with_total']})",
                          f"{e['rate_without']:.0%} ({e['without_failed']}/{e['without_total']})",
                          f"{e['lift']:.1f}", f"{e['q']:.1e}")
        console.print(table)
    for m in p.members:
        console.print(f"   {m['example_id']}  input    {m['input']}\n"
                      f"   {' ' * 16}  output   {m['output']}\n   {' ' * 16}  expected {m['expected']}", markup=False)
        if m.get("failing"):
            console.print(f"   {' ' * 16}  failing  {'; '.join(m['failing'])}", markup=False)


def _print_history(table) -> None:
    if table.height == 0:
        console.print("No pattern has been targeted yet.")
        return
    out = Table("round", "pattern", "check", "added", "members failing", "feature", "with it failing", "change",
                "regressions (analysis)", title="Targeted patterns and the next round")
    for r in table.iter_rows(named=True):
        after = "-" if r["failing_after"] is None else str(r["failing_after"])
        f_after = "-" if r["feature_failing_after"] is None else str(r["feature_failing_after"])
        on_feature = f"{r['feature_failing_before']} -> {f_after}" if r["feature"] else "-"
        out.add_row(str(r["round"]), r["pattern"], r["check"], str(r["added"]), f"{r['failing_before']} -> {after}",
                    r["feature"] or "-", on_feature, r["change"], r["regressions"] or "-")
    console.print(out)


@app.command("review")
def review_command(ctx: typer.Context,
                   port: Annotated[int, typer.Option("--port", metavar="N", help="Port to listen on (default: a "
                                                     "free one).", show_default=False, min=0, max=65535)] = 0,
                   host: Annotated[str, typer.Option("--host", metavar="ADDR", help="Address to listen on (loopback "
                                                     "unless --allow-remote).")] = "127.0.0.1",
                   allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Let --host be an address "
                                                              "other machines can reach.")] = False,
                   no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL only; do not open "
                                                            "a browser.")] = False) -> None:
    """Review in the browser: rounds, failure patterns and their members, generated examples; accept, reject,
    merge, rename, relabel. Serves a local page (the printed URL holds its access token) until Ctrl-C."""
    from refinery.report.web import serve
    serve(_project(ctx), host=host, port=port, open_browser=not no_browser, allow_remote=allow_remote,
          announce=lambda text: console.print(text, markup=False))
    console.print("Stopped.")
