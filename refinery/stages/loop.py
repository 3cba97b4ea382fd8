"""The round: train -> infer -> evaluate -> analyse -> generate -> record, composed from the stage modules.

The store is opened per stage, never across training, so `refinery status` works while a round runs. A round
that raises (or is interrupted) is marked failed; one whose process died is marked failed by the next round.
Generated examples, clusters and the round's metrics are written together in the last transaction, so a
failed round adds nothing to the training data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from refinery.device import check_loadable
from refinery.errors import RefineryError
from refinery.project import Project, resolve_base_model, train_settings
from refinery.stages.measure import (
    check_mix_settings,
    fit_to_context,
    held_out,
    model_context,
    questions,
    references,
    score,
    versions,
)
from refinery.stages.pairs import active_pairs, collect_pairs, insert_pairs
from refinery.stages.targeting import generate_round, known_vocabulary, vet, why_none
from refinery.store import ROUND_WAIT as STORE_WAIT
from refinery.store import Store, content_hash, detect_kind, insert_frame, process_alive, small_splits

STAGES = ("train", "infer", "evaluate", "analyze", "generate", "record")


class Reporter(Protocol):
    """What a round tells the person watching it."""

    def started(self, number: int, examples: int) -> None: ...
    def restarting(self, number: int, note: str) -> None: ...
    def stage(self, name: str) -> None: ...
    def progress(self, done: int, total: int) -> None: ...
    def stage_done(self, name: str, seconds: float, note: str) -> None: ...


class Quiet:
    def started(self, number: int, examples: int) -> None: ...
    def restarting(self, number: int, note: str) -> None: ...
    def stage(self, name: str) -> None: ...
    def progress(self, done: int, total: int) -> None: ...
    def stage_done(self, name: str, seconds: float, note: str) -> None: ...


@dataclass
class RoundSummary:
    """What a round did, with the figures to compare it with the one before."""

    number: int
    status: str
    train: dict[str, Any]
    metrics: dict[str, Any]
    previous: int | None
    previous_metrics: dict[str, Any] | None
    clusters: list[dict[str, Any]]
    generated: list[dict[str, Any]]
    stages: dict[str, float] = field(default_factory=dict)
    round_dir: str = ""
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # baseline / production metrics
    nothing_generated: str = ""  # why the round rendered no counterexample, when it rendered none
    warnings: list[str] = field(default_factory=list)  # splits too small to measure
    budget: list[dict[str, Any]] = field(default_factory=list)  # how the counterexample budget was shared
    plan: dict[str, Any] | None = None  # targeting.Plan: exploration against patterns, and why
    too_long: dict[str, dict[str, int]] = field(default_factory=dict)  # per stage: inputs cut or left out, room

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_round(project: Project, *, reporter: Reporter | None = None) -> RoundSummary:
    """Run one round end to end and record it; returns its summary."""
    from refinery.rules import load_rules
    from refinery.stages.generate import template_environment

    reporter = reporter or Quiet()
    rules = load_rules(project.rules_dir)  # bad rules or templates stop the round before it starts
    env = template_environment(project.templates_dir)
    check_templates(env, rules, project)
    check_mix_settings(project, rules)
    train_settings(project)  # an accelerate config that is missing, said before the round starts
    base_model = resolve_base_model(project)
    check_loadable(base_model)
    from refinery.stages.analyze import make_embedder

    # Built now so that a bad setting stops us before training; the model itself loads on first use, once a round.
    embedder = make_embedder(project.config.analyze.embedder, root=project.root)
    toggles = make_toggles(project, env, rules, embedder, share=project.config.mix.reasoning_share)
    with Store(project.store_path, wait=STORE_WAIT) as store:
        number, train_rows, resume = _begin(store, project, toggles)
        attempt, error = store.one("SELECT attempts, error FROM rounds WHERE number = ?", [number])
    round_dir = project.runs_dir / f"round-{number:03d}"
    round_dir.mkdir(parents=True, exist_ok=True)
    (round_dir / "config.json").write_text(json.dumps(project.config.to_dict(), indent=2))
    timer = _Timer(project, number, reporter)
    try:
        if attempt > 1:
            reporter.restarting(number, _restart_note(number, attempt, error, resume))
        reporter.started(number, train_rows.height)
        return _run_stages(project, number, train_rows, rules, env, base_model, embedder, round_dir, timer, resume)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        _fail(project, number, reason)
        raise


def _warm_start(project: Project, number: int, train_rows: pl.DataFrame) -> tuple[str | None, int | None]:
    """`[train] warm_start`: the adapter of the last finished round before `number`, and the steps of this round:
    the step rule on the examples that adapter has not trained on (the rest it has learnt already). (None, None)
    when there is no such adapter (the first round, or a full fine-tune before it): a fresh start on every example."""
    from refinery.stages.train import dpo_alone, recorded_training, step_budget

    with Store(project.store_path, wait=STORE_WAIT) as store:
        found = store.con.execute("SELECT number, adapter_path FROM rounds WHERE kind = 'round' AND status = 'done' "
                                  "AND number < ? AND adapter_path IS NOT NULL ORDER BY number DESC",
                                  [number]).fetchall()
        if not found or not (Path(found[0][1]) / "adapter_config.json").is_file():
            return None, None
        # what the adapter has learnt is the training set of the last round that ran SFT: a round of DPO alone
        # moved the weights on pairs and learnt none of its training set
        learnt = next((n for n, _ in found if not dpo_alone(recorded_training(project.runs_dir, n))), None)
        seen = set(store.frame("SELECT example_id FROM round_examples WHERE round = ?", [learnt])["example_id"])
    new = sum(i not in seen for i in train_rows["id"])
    return found[0][1], step_budget(project.config.train, new)


def _restart_note(number: int, attempt: int, error: str | None, resume: bool) -> str:
    """"Restarting interrupted round 2 (attempt 2; ...)": what the next `iterate` does with a round that did not
    finish, from the error its last attempt recorded ("attempt 1: interrupted")."""
    reason = (error or "").split(": ", 1)[-1] or "did not finish"
    word = "interrupted" if reason.startswith("interrupted") else "failed"
    then = "reusing its trained adapter" if resume else "training again"
    return f"Restarting {word} round {number} (attempt {attempt}; the last attempt: {reason}); {then}."


def _train_stage(project: Project, number: int, train_rows: pl.DataFrame, base_model: str, round_dir: Path,
                 timer: _Timer) -> Any:
    """The round's training under `[train] objective`, recorded in `train.json`. The last round's adapter is where
    SFT starts with `[train] warm_start`, and where DPO alone (objective "dpo") starts whatever warm_start says."""
    from refinery.stages import train

    config = train_settings(project)
    with Store(project.store_path, wait=STORE_WAIT) as store:  # this round's pairs need its own evaluation
        pairs = active_pairs(store, before=number)  # train_round uses them only under objective sft+dpo or dpo
    last, steps = _warm_start(project, number, train_rows) \
        if config.warm_start or config.objective == "dpo" else (None, None)
    if not (config.warm_start or (last and pairs.height)):  # no DPO alone to start: SFT starts fresh
        last = steps = None
    with timer.stage("train") as note:
        result, what = train.train_round(train_rows, pairs, base_model=base_model, settings=config,
                                         out_dir=round_dir, on_step=timer.progress, start_from=last, steps=steps)
        warm = f", from round {Path(last).parent.name.split('-')[-1].lstrip('0')}'s adapter" if last else ""
        note(f"{what}{warm}, {result.device}")
    (round_dir / "train.json").write_text(json.dumps(asdict(result)))
    return result


def _run_stages(project, number, train_rows, rules, env, base_model, embedder, round_dir, timer,
                resume: bool) -> RoundSummary:
    from refinery.stages import analyze, infer, train

    config, too_long = project.config, {}
    if resume:  # an interrupted attempt finished training on this same set: its adapter is reused
        result = train.TrainResult(**json.loads((round_dir / "train.json").read_text()))
        timer.resumed("train", result.seconds, "adapter of the interrupted attempt reused")
    else:
        fitted = fit_to_context(project, train_rows, base_model=base_model, what="training examples",
                                completion="output", room=min(config.train.max_length, model_context(base_model)))
        too_long["train"] = fitted.counts()
        result = _train_stage(project, number, fitted.rows.with_columns(pl.Series("input", fitted.inputs)),
                              base_model, round_dir, timer)
    weights = result.weights_path
    model_path, adapter = (weights, None) if result.method == "full" else (base_model, weights)
    with Store(project.store_path, wait=STORE_WAIT) as store:
        asked = questions(project, held_out(store))  # with a cue set, the test split also with it added and removed
    with timer.stage("infer") as note:
        fitted = fit_to_context(project, asked, base_model=base_model, what="held-out inputs")
        asked, too_long["infer"] = fitted.rows, fitted.counts()
        checked: list[dict[str, Any]] = []
        outputs = infer.generate(fitted.inputs, base_model=model_path, settings=config.infer,
                                 adapter=adapter, on_batch=timer.progress, on_check=checked.append)
        predictions = pl.concat([asked.select("example_id", "variant"), outputs], how="horizontal").with_columns(
            pl.lit(number).alias("round"))
        _write(project, "predictions", predictions)
        engines = "".join(f"; vLLM against transformers on {c['compared']}: {c['different']} differ"
                          for c in checked)
        note(f"{outputs.height} outputs, {outputs['tokens'].mean() or 0:.1f} tokens each{engines}")
    with timer.stage("evaluate") as note:
        all_results, metrics = score(project, rules, asked, predictions)
        _write(project, "rule_results", all_results.with_columns(pl.lit(number).alias("round")))
        rows = asked.with_columns(predictions["output"].alias("prediction")).filter(pl.col("variant") == "")
        results = all_results.filter(pl.col("variant") == "")
        note(_metric_note(metrics))
    with timer.stage("analyze") as note:
        failures, passing = _failures(rows, results)
        settings = config.analyze
        vectors = passing_vectors = described = None
        cues = rules.cues()
        with Store(project.store_path, wait=STORE_WAIT) as store:
            known = known_vocabulary(store)
            if failures.height:
                vectors, passing_vectors = (
                    analyze.embed_examples(store, frame.select("example_id", pl.col("input").alias("text")),
                                           embedder=embedder) for frame in (failures, passing))
                described = analyze.describe_inputs(store, pl.concat([failures, passing]), cues=cues)
        clusterer = analyze.make_clusterer(settings.clusterer, max_clusters=settings.max_clusters,
                                           min_cluster_size=settings.min_cluster_size, seed=config.core.seed)
        clusters = analyze.analyze(failures, passing, embeddings=vectors, passing_embeddings=passing_vectors,
                                   seed=config.core.seed, cues=cues, known_words=known, described=described,
                                   scopes={c.name: c.scope() for c in rules.checks},
                                   severities={c.name: c.severity for c in rules.checks}, clusterer=clusterer)
        for cluster in clusters:
            cluster.id = f"r{number:03d}-c{cluster.rank:02d}"
        note(f"{failures.height} failing analysis cases in {len(clusters)} patterns")
    with timer.stage("generate") as note:
        candidates, targets, plan = generate_round(project, env, rules, clusters, rows, number, embedder,
                                                   known_words=known, failing=failures.height)
        kept = sum(c.outcome in ("stored", "pending") for c in candidates)
        held = " (pending review)" if project.config.generate.review else ""
        why = "" if candidates else why_none(project, rules, clusters, rows)
        pairs = collect_pairs(project, rules, failures=failures, clusters=clusters, candidates=candidates,
                              model_path=model_path, adapter=adapter, embedder=embedder)
        note(f"{kept} of {len(candidates)} candidates kept{held}" + (f": {why}" if why else ""))
    with timer.stage("record") as note:
        _record(project, number, clusters, candidates, metrics, result, weights, targets, plan, pairs=pairs)
        note(f"{sum(p.status == 'active' for p in pairs)} preference pairs")
    summary = _summary(project, number, result, metrics, clusters, candidates, rows, timer.seconds, targets)
    summary.plan = plan.to_dict() if plan else None
    summary.too_long = {stage: counts for stage, counts in too_long.items() if counts["truncated"] + counts["skipped"]}
    summary.round_dir, summary.nothing_generated = str(round_dir), why
    (round_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    return summary


def _begin(store: Store, project: Project, toggles: list) -> tuple[int, pl.DataFrame, bool]:
    """Open a round with its training set: the last round again when it did not finish (its partial rows are
    cleared; its adapter is reused when it trained on the same set), else a new one. Refuses to run beside a live
    round. The toggled variants that make up the mix are stored with it (vetted data; kept if the round fails).

    Returns the round number, the training set, and whether training can be skipped (resumed)."""
    from refinery.stages.mix import training_set

    for number, pid in store.con.execute("SELECT number, pid FROM rounds WHERE status = 'running'").fetchall():
        if pid and pid != os.getpid() and process_alive(pid):
            raise RefineryError(f"round {number} is running in process {pid}. Wait for it to finish, or stop that "
                                f"process; the next `refinery iterate` then restarts that round.")
        _mark_failed(store, number, f"interrupted: process {pid} ended before the round finished")
    last = store.one("SELECT number, status, train_set_hash, error, attempts FROM rounds WHERE kind = 'round' "
                     "ORDER BY number DESC LIMIT 1")
    restart = last if last and last[1] != "done" else None
    number = restart[0] if restart else max(store.scalar("SELECT max(number) FROM rounds") or 0, 0) + 1
    share = project.config.mix.reasoning_share
    with store.transaction() as con:
        _insert_generated(con, toggles, number, project.config.think())
        examples = store.frame("SELECT id, input, output, kind FROM examples WHERE status = 'active' "
                               "AND split = 'train' ORDER BY id")
        if examples.height == 0:
            raise RefineryError("no training examples: ingest some first, e.g. `refinery ingest data/seed.jsonl "
                                "--split train --source seed`.")
        chosen = training_set(examples, reasoning_share=share, seed=project.config.core.seed)
        if chosen.height == 0:
            kinds = ", ".join(f"{k} {n}" for k, n in examples.group_by("kind").len().sort("kind").iter_rows())
            raise RefineryError(f"[mix] reasoning_share = {share} leaves no training examples (train split: "
                                f"{kinds}). Change the share, or add examples of the missing kind.")
        digest = hashlib.sha256("\n".join(chosen["id"].to_list()).encode()).hexdigest()
        config, runtime = json.dumps(project.config.to_dict()), json.dumps(versions())
        resume = False
        if restart:
            trained = store.one("SELECT status FROM round_stages WHERE round = ? AND stage = 'train'", [number])
            train_file = project.runs_dir / f"round-{number:03d}" / "train.json"
            resume = bool(trained and trained[0] == "done" and restart[2] == digest and train_file.is_file()
                          and Path(json.loads(train_file.read_text())["weights_path"]).is_dir())
            for table in ("predictions", "rule_results", "round_examples", "generations"):
                con.execute(f"DELETE FROM {table} WHERE round = ?", [number])
            con.execute("DELETE FROM round_stages WHERE round = ? AND (stage <> 'train' OR NOT ?)", [number, resume])
            con.execute("UPDATE rounds SET status = 'running', config = ?, versions = ?, train_set_hash = ?, "
                        "pid = ?, attempts = attempts + 1, error = ?, metrics = NULL, stop_reason = NULL, "
                        "started_at = current_timestamp, finished_at = NULL WHERE number = ?",
                        [config, runtime, digest, os.getpid(), f"attempt {restart[4]}: {restart[3]}", number])
        else:
            con.execute("INSERT INTO rounds (number, status, config, versions, train_set_hash, pid) "
                        "VALUES (?, 'running', ?, ?, ?, ?)", [number, config, runtime, digest, os.getpid()])
        insert_frame(con, "round_examples",
                     chosen.select(pl.lit(number).alias("round"), pl.col("id").alias("example_id")))
    return number, chosen, resume


def _failures(rows: pl.DataFrame, results: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The analysis examples that failed a check and those that did not, with which checks applied and failed."""
    per_example = results.group_by("example_id").agg(
        pl.col("check_name").filter(pl.col("passed") == False).sort().alias("failing"),  # noqa: E712
        pl.col("check_name").filter(pl.col("applies")).sort().alias("applicable"))
    analysis = rows.filter(pl.col("split") == "analysis").join(per_example, on="example_id").sort("example_id")
    failed = pl.col("failing").list.len() > 0
    return analysis.filter(failed), analysis.filter(~failed)


def make_toggles(project, env, rules, embedder, *, share: float | None) -> list:
    """Toggled variants (`[mix] toggle_template`) of the kind in surplus, enough to make up the kind the share is
    short of; vetted like every counterexample. Empty when sampling alone meets the share, or when no toggle
    template is set (the share is then met by sampling only)."""
    from refinery.stages.generate import render_candidates
    from refinery.stages.mix import shortfall

    name = project.config.mix.toggle_template
    if name is None:
        return []
    with Store(project.store_path, wait=STORE_WAIT) as store:
        examples = store.frame("SELECT id, input, output, fields, kind FROM examples WHERE status = 'active' "
                               "AND split = 'train' ORDER BY id")
    short, missing = shortfall(examples, reasoning_share=share)
    if not short or missing <= 0:
        return []
    think = project.config.think()
    parents = examples.filter(pl.col("kind") != short).sample(fraction=1.0, shuffle=True,
                                                              seed=project.config.core.seed)
    per_parent = min(12, math.ceil(3 * missing / parents.height))  # three times what is missing: vetting drops some
    candidates = []
    for row in parents.head(2 * missing).iter_rows(named=True):
        parent = {"id": row["id"], "input": row["input"], "output": row["output"],
                  "fields": json.loads(row["fields"]) if row["fields"] else {}}
        candidates += render_candidates(env, name, parent, count=per_parent, seed=project.config.core.seed,
                                        spec=rules.template(name))
    kept = [c for c in vet(project, rules, candidates, embedder)
            if c.outcome == "stored" and detect_kind(c.output, think) == short]
    return kept[:missing]


def _record(project, number, clusters, candidates, metrics, result, weights, targets, plan, *,
            pairs: list) -> None:
    shares = {t.cluster_id: t.share for t in targets}
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        for cluster in clusters:
            con.execute("INSERT INTO clusters (id, round, rank, label, statement, size, score, score_parts, checks, "
                        "evidence, hypothesis, kind, feature, p, q, budget) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [cluster.id, number, cluster.rank, cluster.label, cluster.statement, cluster.size,
                         cluster.score, json.dumps(cluster.score_parts), json.dumps(cluster.checks),
                         json.dumps(cluster.terms),
                         json.dumps(cluster.hypothesis, ensure_ascii=False) if cluster.hypothesis else None,
                         cluster.kind, cluster.feature, cluster.p, cluster.q, shares.get(cluster.id)])
            con.executemany("INSERT INTO cluster_members (cluster_id, example_id, distance, representative) "
                            "VALUES (?, ?, ?, ?)",
                            [[cluster.id, m, d, m in cluster.representatives]
                             for m, d in zip(cluster.members, cluster.distances, strict=True)])
        _insert_generated(con, candidates, number, project.config.think())
        insert_pairs(con, pairs, number)
        con.execute("UPDATE rounds SET status = 'done', metrics = ?, adapter_path = ?, plan = ?, "
                    "finished_at = current_timestamp WHERE number = ?",
                    [json.dumps(metrics), weights, json.dumps(plan.to_dict()) if plan else None, number])


def _insert_generated(con, candidates: list, number: int, think) -> None:
    """Stored and pending candidates become training examples with their lineage; every one is logged. `think` is
    the project's compiled think_pattern (`Config.think()`)."""
    for c in candidates:
        digest = content_hash(c.input, c.output)
        example_id = digest[:16] if c.outcome in ("stored", "pending", "duplicate") else None
        if c.outcome in ("stored", "pending"):
            con.execute("INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source, "
                        "parent_id, template, cluster_id, round_added, status, feature) VALUES (?, ?, ?, ?, ?, ?, "
                        "'train', 'generated', ?, ?, ?, ?, ?, ?)",
                        [example_id, digest, c.input, c.output, json.dumps(c.fields, ensure_ascii=False),
                         detect_kind(c.output, think), c.parent_id, c.template, c.cluster_id, number,
                         "active" if c.outcome == "stored" else "pending", c.feature if c.carries else None])
        con.execute("INSERT INTO generations (round, cluster_id, template, parent_id, input, output, targets, "
                    "outcome, example_id, detail, feature, carries) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [number, c.cluster_id, c.template, c.parent_id, c.input, c.output, json.dumps(c.targets),
                     c.outcome, example_id, c.detail, c.feature, c.carries])


def _summary(project, number, result, metrics, clusters, candidates, rows, stages, targets) -> RoundSummary:
    by_id = {r["example_id"]: r for r in rows.iter_rows(named=True)}
    with Store(project.store_path, wait=STORE_WAIT) as store:
        previous = store.one("SELECT number, metrics FROM rounds WHERE status = 'done' AND number < ? "
                             "AND kind IN ('round', 'baseline') ORDER BY number DESC LIMIT 1", [number])
        compared = references(store)
        warnings = small_splits(store)
    shown = []
    for cluster in clusters[:5]:
        examples = [{"example_id": m, "input": by_id[m]["input"], "output": by_id[m]["prediction"],
                     "expected": by_id[m]["expected"]} for m in cluster.representatives[:3]]
        shown.append({"id": cluster.id, "label": cluster.label, "rank": cluster.rank, "size": cluster.size,
                      "score": cluster.score, "statement": cluster.statement, "checks": cluster.checks,
                      "terms": cluster.terms[:3],
                      "examples": examples})
    generated: dict[tuple, dict[str, Any]] = {}
    for c in candidates:
        outcomes = dict.fromkeys(("stored", "pending", "duplicate", "leak", "failed_checks", "over_cap"), 0)
        entry = generated.setdefault((c.cluster_id, c.template),
                                     {"cluster": c.cluster_id, "template": c.template, **outcomes})
        entry[c.outcome] += 1
    train = {"examples": result.examples, "steps": result.steps, "seconds": result.seconds,
             "final_loss": result.final_loss, "device": result.device, "dtype": result.dtype,
             "weights": result.weights_path, **({"dpo": result.dpo} if result.dpo else {})}
    return RoundSummary(number=number, status="done", train=train, metrics=metrics,
                        previous=previous[0] if previous else None,
                        previous_metrics=json.loads(previous[1]) if previous else None,
                        clusters=shown, generated=list(generated.values()), stages=dict(stages),
                        references=compared, warnings=warnings, budget=_budget(targets, candidates))


def _budget(targets: list, candidates: list) -> list[dict[str, Any]]:
    """How the round's budget was shared: per target, its share, why, what it stored and how many carry the
    feature."""
    out = []
    for t in targets:
        mine = [c for c in candidates if c.cluster_id == t.cluster_id and c.outcome in ("stored", "pending")]
        out.append({"cluster": t.cluster_id, "share": t.share, "why": t.why, "stored": len(mine),
                    "feature": (t.pattern or {}).get("feature"), "carrying": sum(bool(c.carries) for c in mine)})
    return out


def _write(project: Project, table: str, frame: pl.DataFrame) -> None:
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        insert_frame(con, table, frame)


def _fail(project: Project, number: int, reason: str) -> None:
    try:
        with Store(project.store_path, wait=STORE_WAIT) as store:
            _mark_failed(store, number, reason)
    except RefineryError:
        pass  # the store is held elsewhere; the next round marks this one failed


def _mark_failed(store: Store, number: int, reason: str) -> None:
    with store.transaction() as con:
        con.execute("UPDATE rounds SET status = 'failed', error = ?, finished_at = current_timestamp "
                    "WHERE number = ? AND status = 'running'", [reason[:2000], number])
        con.execute("UPDATE round_stages SET status = 'failed', finished_at = current_timestamp "
                    "WHERE round = ? AND status = 'running'", [number])


def check_templates(env, rules, project: Project) -> None:
    """Every template the rules name compiles and renders once from a stored example, so that a template that
    raises stops the round before training rather than after it."""
    from refinery.stages.generate import load_template, render_candidates

    names = {t for target in rules.targets for t in target.templates} | {s.file for s in rules.templates}
    names = sorted(names | ({project.config.mix.toggle_template} - {None}))
    for name in names:
        load_template(env, name)
    parent = _trial_parent(project)
    for name in names if parent else []:
        render_candidates(env, name, parent, count=1, seed=project.config.core.seed, spec=rules.template(name))


def _trial_parent(project: Project) -> dict[str, Any] | None:
    """The example a trial render uses: the first active analysis example (targets render from those), else the
    first training one; None when the store holds neither (or is not there yet: a trial does not create it)."""
    if not project.store_path.is_file():
        return None
    with Store(project.store_path, wait=STORE_WAIT) as store:
        row = store.one("SELECT id, input, output, fields FROM examples WHERE status = 'active' "
                        "AND split IN ('analysis', 'train') ORDER BY split <> 'analysis', id LIMIT 1")
    if row is None:
        return None
    return {"id": row[0], "input": row[1], "output": row[2], "fields": json.loads(row[3]) if row[3] else {}}




def _metric_note(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{split} {m['pass_rate']:.0%}" for split, m in metrics.items() if split != "mix")


class _Timer:
    """Times each stage, records it in round_stages, and tells the reporter."""

    def __init__(self, project: Project, number: int, reporter: Reporter):
        self.project, self.number, self.reporter = project, number, reporter
        self.seconds: dict[str, float] = {}

    def progress(self, done: int, total: int) -> None:
        self.reporter.progress(done, total)

    def resumed(self, name: str, seconds: float, note: str) -> None:
        self.seconds[name] = seconds
        self.reporter.stage_done(name, seconds, note)

    @contextmanager
    def stage(self, name: str):
        notes: list[str] = []
        self.reporter.stage(name)
        with Store(self.project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
            con.execute("INSERT INTO round_stages (round, stage, status) VALUES (?, ?, 'running')", [self.number, name])
        began = time.perf_counter()
        yield notes.append
        seconds = round(time.perf_counter() - began, 3)
        self.seconds[name] = seconds
        with Store(self.project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
            con.execute("UPDATE round_stages SET status = 'done', seconds = ?, finished_at = current_timestamp, "
                        "detail = ? WHERE round = ? AND stage = ?",
                        [seconds, json.dumps({"note": " ".join(notes)}), self.number, name])
        self.reporter.stage_done(name, seconds, " ".join(notes))
