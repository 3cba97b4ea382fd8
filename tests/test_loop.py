"""A whole round on a small copy of the demo, with the real model, embedder, DuckDB file and templates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, StopAt

from refinery.errors import RefineryError
from refinery.stages.loop import run_round
from refinery.store import Store


def test_a_round_records_every_figure_it_reports(demo_project) -> None:
    summary = run_round(demo_project)
    assert summary.number == 1 and summary.status == "done"
    with Store(demo_project.store_path) as store:
        held_out = store.scalar("SELECT count(*) FROM examples WHERE split <> 'train'")
        tests = store.scalar("SELECT count(*) FROM examples WHERE split = 'test'")
        assert store.scalar("SELECT count(*) FROM predictions WHERE round = 1 AND variant = ''") == held_out
        # the test split is asked twice more: with the thinking cue added and with it removed
        assert dict(store.con.execute("SELECT variant, count(*) FROM predictions WHERE round = 1 AND variant <> '' "
                                      "GROUP BY ALL").fetchall()) == {"cue-on": tests, "cue-off": tests}
        checks = store.scalar("SELECT count(DISTINCT check_name) FROM rule_results WHERE round = 1")
        assert store.scalar("SELECT count(*) FROM rule_results WHERE round = 1") == (held_out + 2 * tests) * checks
        off = store.frame("SELECT p.output FROM predictions p WHERE round = 1 AND variant = 'cue-off'")
        leak = sum("<think>" in o for o in off["output"]) / off.height
        assert summary.metrics["mix"]["think_leakage_cue_off"] == round(leak, 4)
        status, metrics, train_hash = store.one("SELECT status, metrics, train_set_hash FROM rounds WHERE number = 1")
        assert status == "done" and json.loads(metrics) == summary.metrics and train_hash
        assert store.scalar("SELECT count(*) FROM round_examples WHERE round = 1") == 20
        # the test pass rate printed is the share of test examples whose applicable checks all passed
        recomputed = store.scalar("""
            SELECT avg(ok::INT) FROM (SELECT r.example_id, bool_and(r.passed) AS ok FROM rule_results r
            JOIN examples e ON e.id = r.example_id WHERE r.round = 1 AND e.split = 'test' AND r.applies
            GROUP BY r.example_id)""")
        assert round(recomputed, 4) == summary.metrics["test"]["pass_rate"]
        stages = dict(store.con.execute("SELECT stage, seconds FROM round_stages WHERE round = 1").fetchall())
        assert stages == summary.stages
        clusters = store.frame("SELECT * FROM clusters WHERE round = 1 ORDER BY rank")
        assert clusters.height >= 1 and clusters["id"][0] == summary.clusters[0]["id"]
        members = store.scalar("SELECT count(*) FROM cluster_members m JOIN clusters c ON c.id = m.cluster_id "
                               "WHERE c.round = 1")
        assert members == clusters["size"].sum()
        # lineage: every generated example names its round, cluster, template and an existing parent
        generated = store.frame("SELECT * FROM examples WHERE source = 'generated'")
        assert generated.height == sum(g["stored"] for g in summary.generated) > 0
        assert set(generated["round_added"]) == {1} and set(generated["split"]) == {"train"}
        assert set(generated["cluster_id"]) <= set(clusters["id"]) | {None}  # None: explored at random
        assert generated["template"].null_count() == 0
        parents = store.scalar("SELECT count(*) FROM examples g JOIN examples p ON p.id = g.parent_id "
                               "WHERE g.source = 'generated'")
        assert parents == generated.height
        logged = store.scalar("SELECT count(*) FROM generations WHERE round = 1 AND outcome = 'stored'")
        assert logged == generated.height
        # patterns are causes (a check and a feature), checks failing on all their inputs, or embedding clusters;
        # the budget went to patterns by failing mass, and each example aimed at a feature says whether it has it
        assert set(clusters["kind"]) <= {"cause", "all", "cluster"}
        assert clusters.filter(pl.col("kind") == "cause")["feature"].null_count() == 0
        shares = {b["cluster"]: b["share"] for b in summary.budget}
        aimed = {c: n for c, n in shares.items() if c is not None}
        assert sum(shares.values()) == 2 * 4 and dict(clusters.filter(pl.col("budget").is_not_null())
                                                      .select("id", "budget").iter_rows()) == aimed
        # the plan: the round's failing share explored at random, the rest by failing mass; stored with the round
        plan = json.loads(store.scalar("SELECT plan FROM rounds WHERE number = 1"))
        assert plan == summary.plan and plan["explore"] == shares.get(None, 0)
        assert plan["explore"] == round(8 * max(0.1, plan["failing_share"])) and plan["patterns"] == aimed
        stored = generated.group_by("cluster_id").len()
        assert all(n <= shares[c] for c, n in stored.iter_rows())
        aimed = store.frame("SELECT feature, carries FROM generations WHERE round = 1 AND feature IS NOT NULL")
        assert aimed["carries"].null_count() == 0
        carried = store.scalar("SELECT count(*) FROM generations g JOIN examples e ON e.id = g.example_id "
                               "WHERE g.outcome = 'stored' AND g.carries AND e.feature = g.feature")
        assert carried == sum(b["carrying"] for b in summary.budget)
        # each analysis input's features were read and kept (analyze.describe_inputs), for the rounds after
        kept = "SELECT count(DISTINCT context), count(*), sum(len(ids)) FROM input_features"
        analysis = store.scalar("SELECT count(*) FROM (SELECT DISTINCT input, fields FROM examples "
                                "WHERE split = 'analysis')")
        first = store.one(kept)
        assert first[:2] == (1, analysis) and first[2] > 10 * analysis
    assert (Path(summary.round_dir) / "adapter" / "adapter_config.json").is_file()
    assert json.loads((Path(summary.round_dir) / "config.json").read_text())["train"]["steps"] == 16
    second = run_round(demo_project)  # the next round trains on the seed plus what round 1 generated
    assert second.previous == 1 and second.train["examples"] == 20 + generated.height
    with Store(demo_project.store_path) as store:
        assert store.one(kept) == first  # read back: the analysis split did not change, so nothing was read again


def test_an_interrupted_round_is_marked_failed_and_restarted_by_the_next(demo_project) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_round(demo_project, reporter=StopAt("evaluate"))
    with Store(demo_project.store_path) as store:
        assert store.one("SELECT status, error FROM rounds WHERE number = 1") == (
            "failed", "interrupted")
        assert store.scalar("SELECT count(*) FROM examples WHERE source = 'generated'") == 0
        assert store.scalar("SELECT count(*) FROM round_stages WHERE round = 1 AND status = 'running'") == 0
        assert store.scalar("SELECT count(*) FROM predictions WHERE round = 1") > 0  # infer had finished
    summary = run_round(demo_project)  # round 1 again; training had finished on the same set, so it resumes
    assert summary.number == 1 and summary.previous is None and summary.status == "done"
    with Store(demo_project.store_path) as store:
        assert store.one("SELECT status, attempts, error FROM rounds WHERE number = 1") == (
            "done", 2, "attempt 1: interrupted")
        stages = store.frame("SELECT stage, status FROM round_stages WHERE round = 1 ORDER BY stage")
        assert stages.rows() == [(s, "done") for s in sorted(("train", "infer", "evaluate", "analyze", "generate",
                                                               "record"))]
        held_out = store.scalar("SELECT count(*) FROM examples WHERE split <> 'train'")
        assert store.scalar("SELECT count(*) FROM predictions WHERE round = 1 AND variant = ''") == held_out


def test_a_round_whose_process_died_is_restarted_by_the_next(demo_project) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(demo_project.store_path) as store:
        store.con.execute("INSERT INTO rounds (number, status, config, pid) VALUES (1, 'running', '{}', ?)",
                          [dead.pid])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Store(demo_project.store_path) as store:
            store.con.execute("INSERT INTO rounds (number, status, config, pid) VALUES (2, 'running', '{}', ?)",
                              [alive.pid])
        with pytest.raises(RefineryError) as err:
            run_round(demo_project)
        assert str(err.value) == (f"round 2 is running in process {alive.pid}. Wait for it to finish, or stop that "
                                  f"process; the next `refinery iterate` then restarts that round.")
    finally:
        alive.kill()
        alive.wait()
    with pytest.raises(KeyboardInterrupt):  # starting a round is enough to close the dead ones
        run_round(demo_project, reporter=StopAt("train"))
    with Store(demo_project.store_path) as store:
        rounds = store.con.execute("SELECT number, status, attempts, error FROM rounds ORDER BY number").fetchall()
    ended = "interrupted: process {} ended before the round finished"
    assert rounds == [(1, "failed", 1, ended.format(dead.pid)),  # the last unfinished round is the one restarted
                      (2, "failed", 2, "interrupted")]


def test_iterate_cli_refuses_bad_rules_before_starting(demo_project, cli) -> None:
    (demo_project.root / "rules" / "weather.toml").write_text('[[check]]\nname = "x"\ntype = "regexx"\n')
    result = cli("iterate")
    assert result.code == 1
    assert result.err == ("Error: rules/weather.toml:3: check 'x': unknown type 'regexx' (expected one of: regex, "
                          "contains, absent, json_schema, equals, judge). Did you mean 'regex'?\n")
    with Store(demo_project.store_path) as store:
        assert store.scalar("SELECT count(*) FROM rounds") == 0


def test_iterate_cli_prints_the_round_and_json(demo_project, cli) -> None:
    result = cli("iterate", "--steps", "8")
    assert result.code == 0, result.err
    assert "Round 1 done in" in result.out and "Top failure patterns" in result.out
    assert "Generated " in result.out
    for stage in ("train", "infer", "evaluate", "analyze", "generate", "record"):
        assert f"  {stage}" in result.err
    assert "Test pass rate by round" in result.out and "Stopped: ran the 1 round asked for" in result.out
    document = json.loads(cli("iterate", "--steps", "8", "--json").out)
    assert document["stop_reason"] == "ran the 1 round asked for" and len(document["rounds"]) == 1
    assert [h["round"] for h in document["history"]] == [1, 2]
    document = document["rounds"][0]
    assert document["number"] == 2 and document["previous"] == 1
    assert set(document["metrics"]) == {"analysis", "corner", "test", "mix"}
    mix = document["metrics"]["mix"]
    assert mix["examples_per_mode"] == document["metrics"]["test"]["examples"]
    assert 0 <= mix["think_leakage_cue_off"] <= 1 and mix["mean_tokens_cue_on"] > 0
    assert "Thinking cue on the test split: answer accuracy" in result.out


def test_a_round_with_nothing_held_out_still_finishes(demo_project) -> None:
    with Store(demo_project.store_path) as store:
        store.con.execute("UPDATE examples SET status = 'rejected' WHERE split <> 'train'")
    summary = run_round(demo_project)
    assert (summary.status, summary.metrics, summary.clusters, summary.generated) == ("done", {}, [], [])


def test_a_missing_base_model_stops_before_the_round(demo_project, cli) -> None:
    config = demo_project.root / "refinery.toml"
    config.write_text(config.read_text().replace(str(REPO / "data" / "tiny-base"), "models/nope"))
    result = cli("iterate")
    assert result.code == 1
    assert result.err.startswith('Error: base_model = "models/nope": cannot load it (')
    assert "nothing is downloaded here); bundled:tiny-base always works.\n" in result.err
    with Store(demo_project.store_path) as store:
        assert store.scalar("SELECT count(*) FROM rounds") == 0


def test_review_mode_holds_counterexamples_until_a_person_decides(demo_project, cli) -> None:
    project = demo_project.with_config(demo_project.config.override("generate", review=True))
    first = run_round(project)
    pending = sum(g["pending"] for g in first.generated)
    assert pending > 0 and sum(g["stored"] for g in first.generated) == 0
    with Store(project.store_path) as store:
        rows = store.frame("SELECT id, status FROM examples WHERE source = 'generated' ORDER BY id")
        assert set(rows["status"]) == {"pending"} and rows.height == pending
        assert store.scalar("SELECT count(*) FROM generations WHERE outcome = 'pending'") == pending
    second = run_round(project)  # pending examples are not trained on
    assert second.train["examples"] == 20
    listed = cli("examples", "--pending", "--json", "--round", "1")
    assert listed.code == 0 and {e["id"] for e in json.loads(listed.out)} == set(rows["id"])
    first_two = rows["id"].to_list()[:2]
    accepted = cli("examples", "accept", *first_two)
    assert accepted.code == 0
    left = pending - 2 + sum(g["pending"] for g in second.generated)
    assert accepted.out.strip() == f"2 examples active; {left} still pending."
    again = cli("examples", "accept", first_two[0])
    assert again.code == 1 and again.err.strip() == (f"Error: only pending examples can be decided here; these are "
                                                     f"not: {first_two[0]} (active).")
    assert cli("examples", "reject", "--all-pending").out.strip() == f"{left} examples rejected; 0 still pending."
    third = run_round(project)
    assert third.train["examples"] == 22


def test_random_targeting_renders_every_family_untargeted_within_the_budget(demo_project) -> None:
    project = demo_project.with_config(demo_project.config.override("generate", targeting="random", per_round=10))
    summary = run_round(project)
    with Store(project.store_path) as store:
        made = store.frame("SELECT template, cluster_id, outcome, detail FROM generations WHERE round = 1")
        stored = store.frame("SELECT cluster_id, template FROM examples WHERE source = 'generated'")
    assert stored.height == 10 and stored["cluster_id"].null_count() == 10
    assert made["cluster_id"].null_count() == made.height
    from refinery.rules import load_rules
    rules = load_rules(project.rules_dir)
    assert set(made["template"]) == {s.file for s in rules.templates}  # one template per parent, in turn
    over = made.filter(made["outcome"] == "over_cap")
    assert over.height > 0 and set(over["detail"]) == {"budget: 10 from random analysis examples this round"}
    assert sum(g["over_cap"] for g in summary.generated) == over.height
    off = project.with_config(project.config.override("generate", targeting="off"))
    assert run_round(off).generated == []


def test_a_project_made_by_init_runs_a_round_with_no_demo_settings(project_dir: Path, cli) -> None:
    """A task with no thinking cue and no weather: `init`'s files as written, a tiny sentiment task, the bundled
    model (`bundled:tiny-base`, init's default). The round finishes, asks no cue variants and prints no cue line."""
    words = ["great", "awful", "fine", "bad", "lovely", "poor", "superb", "dull", "nice", "grim"]
    rows = [{"input": f"Review {i}: the film was {w}.", "output": "positive" if i % 2 == 0 else "negative"}
            for i, w in enumerate(words * 3)]
    (project_dir / "data" / "reviews.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert cli("ingest", "data/reviews.jsonl").code == 0
    result = cli("iterate", "--steps", "2")
    assert result.code == 0, result.err
    assert "Round 1 done in" in result.out
    assert "Thinking cue" not in result.out and "cue" not in result.out.lower()
    with Store(project_dir / "runs" / "refinery.duckdb") as store:
        assert store.scalar("SELECT count(*) FROM predictions WHERE variant <> ''") == 0
        metrics = json.loads(store.scalar("SELECT metrics FROM rounds WHERE number = 1"))
    assert "mix" not in metrics


def test_a_warm_started_round_begins_from_the_last_rounds_adapter(demo_project) -> None:
    from safetensors.torch import load_file

    first = run_round(demo_project)
    warm = demo_project.with_config(demo_project.config.override("train", warm_start=True, learning_rate=0.0))
    second = run_round(warm)
    recorded = json.loads((Path(second.round_dir) / "train.json").read_text())
    assert recorded["start_from"] == first.train["weights"] and recorded["steps"] == 16
    # at learning rate 0 the warm-started adapter is round 1's exactly (a fresh one would have new LoRA A weights)
    before = load_file(Path(first.train["weights"]) / "adapter_model.safetensors")
    after = load_file(Path(second.train["weights"]) / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    cold = run_round(demo_project.with_config(demo_project.config.override("train", warm_start=False,
                                                                           learning_rate=0.0)))
    fresh = load_file(Path(cold.train["weights"]) / "adapter_model.safetensors")
    assert any(not (before[k] == fresh[k]).all() for k in before)
