"""Reviewing failure patterns: planted patterns come back with the right statement; decisions act on the next round."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from conftest import REPO, store_snapshot

from refinery.rules import load_rules
from refinery.stages.analyze import MiniLMEmbedder, analyze
from refinery.stages.loop import run_round
from refinery.store import Store


def test_three_planted_patterns_of_different_kinds_are_the_top_patterns() -> None:
    """A token next to punctuation, a missing tag when a cue is absent, a wrong value for one category."""
    rules = load_rules(REPO / "rules")
    cues = [(c.name, re.compile(c.when)) for c in rules.checks if c.when]
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "eval.jsonl").read_text().splitlines()]
    failing = []
    for r in rows:
        planted = []
        if r["weather"] and r["weather"][-1] in "!.,?)":
            planted.append("format_exact")
        if r["weather"] and r["cue"] is None:
            planted.append("display_weather_present")
        if r["condition"] == "fog":
            planted.append("emoji_correct")
        failing.append(planted)
    frame = pl.DataFrame({"example_id": [f"e{i}" for i in range(len(rows))], "input": [r["input"] for r in rows],
                          "fields": [json.dumps({k: v for k, v in r.items() if k not in ("input", "output")})
                                     for r in rows], "failing": failing},
                         schema_overrides={"failing": pl.List(pl.String)})
    failures = frame.filter(pl.col("failing").list.len() > 0)
    passing = frame.filter(pl.col("failing").list.len() == 0)
    clusters = analyze(failures, passing, embeddings=MiniLMEmbedder().encode(failures["input"].to_list()),
                       severities={c.name: c.severity for c in rules.checks}, cues=cues)
    top = {next(iter(c.checks)): c.statement for c in clusters[:3]}
    assert top["format_exact"].startswith("format_exact fails: 100% of inputs with punctuation just before a "
                                          "closing tag")
    assert top["display_weather_present"].startswith("display_weather_present fails: 76% of inputs with no cue of "
                                                     "think_present (221/290) vs 0% elsewhere")
    assert top["emoji_correct"] == ("emoji_correct fails: 100% of inputs with condition = fog (72/72) vs 0% "
                                    "elsewhere (p < 1e-6); 72 of 72 members carry it")


@pytest.fixture
def reviewed(demo_project):
    """The demo project after one round that targeted only its worst pattern, so others are left to review."""
    project = demo_project.with_config(demo_project.config.override("generate", clusters=1, explore=0.0))
    summary = run_round(project)
    assert len(summary.clusters) >= 2
    return project, summary


def test_clusters_lists_patterns_with_statement_score_evidence_and_members(reviewed, cli) -> None:
    project, summary = reviewed
    listed = json.loads(cli("clusters", "--json").out)
    assert [p["id"] for p in listed] == [c["id"] for c in summary.clusters]
    first = listed[0]
    assert first["rank"] == 1 and first["status"] == "proposed"
    assert first["score"] == pytest.approx(first["score_parts"]["failures"] * first["score_parts"]["mean_severity"],
                                           rel=1e-3)
    assert first["statement"].startswith(next(iter(first["checks"])) + " fails")
    assert all(e["q"] < 0.05 for e in first["evidence"])
    with Store(project.store_path) as store:
        for m in first["members"]:
            expected, output = store.one("SELECT e.output, p.output FROM examples e JOIN predictions p ON "
                                         "p.example_id = e.id AND p.round = 1 WHERE e.id = ?", [m["example_id"]])
            assert (m["expected"], m["output"]) == (expected, output)
    shown = json.loads(cli("clusters", "show", first["id"], "--json").out)
    assert len(shown["members"]) == first["size"]
    text = cli("clusters").out
    kind = {"cause": "cause", "all": "fails on all", "cluster": "embedding cluster"}[first["kind"]]
    assert f"#1 {first['id']}  [proposed]  {kind}  score" in text and "failing checks:" in text
    assert cli("clusters", "show", "r009-c01").err.startswith("Error: no pattern 'r009-c01'. Recent patterns: ")


def test_reject_withdraws_counterexamples_and_accept_targets_the_next_round(reviewed, cli) -> None:
    project, summary = reviewed
    targeted = summary.generated[0]["cluster"]
    with Store(project.store_path) as store:
        made = store.scalar("SELECT count(*) FROM examples WHERE cluster_id = ? AND status = 'active'", [targeted])
        untargeted = store.frame("SELECT c.id FROM clusters c WHERE c.round = 1 AND NOT EXISTS "
                                 "(SELECT 1 FROM generations g WHERE g.cluster_id = c.id)")["id"].to_list()
    assert made > 0
    result = cli("clusters", "reject", targeted)
    assert result.out == f"{targeted} rejected ({made} counterexamples withdrawn).\n"
    assert untargeted
    assert cli("clusters", "accept", untargeted[0]).out == f"{untargeted[0]} accepted (0 counterexamples restored).\n"
    second = run_round(project)
    with Store(project.store_path) as store:
        trained = set(store.frame("SELECT example_id FROM round_examples WHERE round = 2")["example_id"])
        withdrawn = set(store.frame("SELECT id FROM examples WHERE cluster_id = ?", [targeted])["id"])
        assert not trained & withdrawn  # the rejected pattern's counterexamples were not trained on
        assert store.scalar("SELECT count(*) FROM examples WHERE round_added = 2 AND cluster_id = ?",
                            [untargeted[0]]) > 0  # the accepted pattern was targeted by the next round
    history = {r["pattern"]: r for r in json.loads(cli("clusters", "--history", "--json").out)}
    row = history[targeted]
    assert row["status"] == "rejected" and row["next_round"] == second.number
    assert row["change"] in ("fixed", "shrunk", "unchanged", "grown")
    assert row["failing_after"] is not None
    assert (row["feature"] is None) == (row["feature_failing_before"] is None)
    if row["feature"]:
        assert row["feature_failing_after"] is not None


def test_merge_rename_and_relabel(reviewed, cli) -> None:
    project, summary = reviewed
    ids = [c["id"] for c in summary.clusters]
    # patterns of different checks can share members (an input failing two checks): the merge holds the union
    members = [{m["example_id"] for m in json.loads(cli("clusters", "show", i, "--json").out)["members"]}
               for i in ids[:2]]
    result = cli("clusters", "merge", ids[0], ids[1])
    assert result.out == f"Merged {ids[1]} into {ids[0]}: now {len(members[0] | members[1])} members.\n"
    assert [p["id"] for p in json.loads(cli("clusters", "--json").out)] == [ids[0]] + ids[2:]
    assert cli("clusters", "accept", ids[1]).err == (f"Error: pattern {ids[1]} was merged into {ids[0]}; "
                                                     f"decide on that one.\n")
    assert cli("clusters", "rename", ids[0], "emoji wrong for rare conditions").out == (
        f"{ids[0]} is now labelled: emoji wrong for rare conditions\n")
    example = json.loads(cli("clusters", "show", ids[0], "--json").out)["members"][0]["example_id"]
    result = json.loads(cli("relabel", example, "--output", "Answer: 99", "--json").out)
    with Store(project.store_path) as store:
        old = store.one("SELECT status FROM examples WHERE id = ?", [example])
        new = store.one("SELECT source, parent_id, output, split FROM examples WHERE id = ?", [result["new"]])
    assert old == ("rejected",)
    assert new[:3] == ("relabel", example, "Answer: 99")
    assert cli("relabel", example, "--output", "x").err == (f"Error: example {example} is already rejected "
                                                            f"(relabelled or withdrawn).\n")
    assert cli("relabel", "nope", "--output", "x").err == ("Error: no example 'nope'. `refinery clusters show ID` "
                                                           "lists example ids, and `refinery drift --waiting` the "
                                                           "production inputs that wait for an expected output.\n")


@pytest.fixture
def three_patterns(project):
    """A finished round with three patterns and no members, written with SQL: no training."""
    with Store(project.store_path) as store, store.transaction() as con:
        con.execute("INSERT INTO rounds (number, kind, status, config) VALUES (1, 'round', 'done', '{}')")
        for rank in (1, 2, 3):
            con.execute("INSERT INTO clusters (id, round, rank, statement, size, score, checks) "
                        "VALUES (?, 1, ?, 'a pattern', 0, 1.0, '{}')", [f"r001-c0{rank}", rank])
    return project


def test_merges_form_a_tree_in_the_cli(three_patterns, cli) -> None:
    assert cli("clusters", "merge", "r001-c01", "r001-c02").out == "Merged r001-c02 into r001-c01: now 0 members.\n"
    before = store_snapshot(three_patterns.store_path)
    refused = {
        ("merge", "r001-c02", "r001-c01"): "merging r001-c01 into r001-c02 would make a cycle: r001-c02 is already "
                                           "merged into r001-c01. Nothing to do.",
        ("merge", "r001-c01", "r001-c02"): "pattern r001-c02 is already merged into r001-c01. Nothing to do.",
        ("merge", "r001-c03", "r001-c02"): "pattern r001-c02 was already merged into r001-c01, and a pattern is "
                                           "merged only once: merge r001-c01 into r001-c03 to join the two.",
        ("merge", "r001-c02", "r001-c03"): "pattern r001-c02 was merged into r001-c01: merge r001-c03 into "
                                           "r001-c01 instead.",
        ("rename", "r001-c02", "a name"): "pattern r001-c02 was merged into r001-c01: rename r001-c01 instead.",
    }
    for args, message in refused.items():
        result = cli("clusters", *args)
        assert (result.code, result.err) == (1, f"Error: {message}\n"), args
    assert store_snapshot(three_patterns.store_path) == before
    # A chain: r001-c01 (holding r001-c02) merged into r001-c03; r001-c02 now points the way to r001-c03.
    assert cli("clusters", "merge", "r001-c03", "r001-c01").code == 0
    assert cli("clusters", "merge", "r001-c02", "r001-c03").err == (
        "Error: merging r001-c03 into r001-c02 would make a cycle: r001-c02 is already merged into r001-c03 "
        "(through r001-c01). Nothing to do.\n")
    assert cli("clusters", "rename", "r001-c02", "x").err == ("Error: pattern r001-c02 was merged into r001-c03: "
                                                              "rename r001-c03 instead.\n")
    assert cli("clusters", "accept", "r001-c02").err == ("Error: pattern r001-c02 was merged into r001-c03; decide "
                                                        "on that one.\n")
    assert [p["id"] for p in json.loads(cli("clusters", "--json").out)] == ["r001-c03"]
