"""`refinery drift` (issue 29): production inputs against the train and analysis inputs, with real embeddings. A
planted drift (the demo's generator with a condition and a cue phrasing never seen, in 10 % of 2,000 inputs) is
named and grouped; inputs drawn from the reference distribution name nothing; `--add` feeds a stratified sample to
the analysis split, and inputs without an expected output wait apart for one."""

from __future__ import annotations

import json
import sys

import duckdb
import pytest
from conftest import REPO, write

from refinery.ingest import ingest_files
from refinery.project import load_project
from refinery.stages.drift import detect_drift, mmd_test
from refinery.store import Store

sys.path.insert(0, str(REPO / "data" / "demo"))
from make_production import production_set  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """The demo's reference: its seed set (train) and its 600 evaluation inputs (analysis)."""
    import shutil

    root = tmp_path_factory.mktemp("drift") / "demo"
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "templates", root / "templates")
    write(root / "refinery.toml", f'base_model = "{REPO / "data" / "tiny-base"}"\n')
    project = load_project(root, environ={})
    with Store(project.store_path) as store:
        ingest_files(store, [REPO / "data" / "demo" / "seed.jsonl"], config=project.config, split="train",
                     source="seed")
        ingest_files(store, [REPO / "data" / "demo" / "eval.jsonl"], config=project.config, split="analysis")
    return project


def _copy(project, tmp_path):
    import shutil

    return load_project(shutil.copytree(project.root, tmp_path / "demo"), environ={})


def _write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_a_planted_drift_is_named_and_its_inputs_grouped(reference, tmp_path) -> None:
    rows = production_set(size=2000, drift=0.1, seed=11)
    report, production = detect_drift(reference, [_write_rows(tmp_path / "production.jsonl", rows)])
    named = {f["feature"]: f for f in report.features}
    assert named["the word 'reasoning'"]["q"] < 0.05 and named["the word 'reasoning'"]["never_seen"]  # the new cue
    assert named["the word 'hail'"]["q"] < 0.05 and named["the word 'hail'"]["reference"] == 0  # the new condition
    assert named["the word 'reasoning'"]["production"] == sum("show your reasoning" in r["input"] for r in rows)
    drifted = {i for i, r in enumerate(rows) if r["drifted"]}
    grouped = {m for g in report.groups for m in g.members}
    assert len(drifted & grouped) >= 0.8 * len(drifted)  # the goal: 80 % of the drifted inputs in the top groups
    assert len(grouped - drifted) <= 0.05 * len(grouped)  # and little else
    assert report.drifted and report.groups[0].kind == "feature"
    assert production["group"].is_not_null().sum() == len(grouped)
    assert [p["inputs"] for p in report.periods] and report.periods[0]["drifting_share"] == 0.0  # before day 15


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_inputs_from_the_reference_distribution_name_no_drift(reference, tmp_path, seed: int) -> None:
    """One seed in the default suite, three with the slow tests; bench/run --parts drift runs five."""
    rows = production_set(size=2000, drift=0.0, seed=seed)
    report, _ = detect_drift(reference, [_write_rows(tmp_path / "production.jsonl", rows)])
    assert report.features == [] and report.groups == []
    assert report.embedding["far_p"] >= 0.05
    assert not report.drifted, report.embedding


def test_mmd_tells_shifted_samples_from_alike_ones() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 8)), rng.normal(size=(80, 8))
    assert mmd_test(x, y, rng=np.random.default_rng(1))[1] > 0.05
    shifted, p = mmd_test(x, y + 0.8, rng=np.random.default_rng(1))
    assert p < 0.01 and shifted > mmd_test(x, y, rng=np.random.default_rng(1))[0]


def test_add_stores_a_stratified_sample_and_keeps_inputs_without_an_expected_output_apart(reference, tmp_path,
                                                                                          cli) -> None:
    project = _copy(reference, tmp_path)
    rows = production_set(size=2000, drift=0.1, seed=11)
    for i, row in enumerate(rows):  # half the drifted rows come without an expected output
        if row["drifted"] and i % 2:
            del row["expected"]
    path = _write_rows(tmp_path / "production.jsonl", rows)
    result = cli("--project", str(project.root), "drift", path, "--add", "20")
    assert result.code == 0, result.err
    con = duckdb.connect(str(project.store_path), read_only=True)
    try:
        added = con.execute("SELECT input, origin, split, source FROM examples "
                            "WHERE origin LIKE 'drift 1: %'").fetchall()
        waiting = con.execute("SELECT id, input, drift_group FROM drift_inputs WHERE example_id IS NULL").fetchall()
        runs = con.execute("SELECT id, production, drifted FROM drift_runs").fetchall()
    finally:
        con.close()
    assert runs == [(1, 2000, True)]
    assert 15 <= len(added) + len(waiting) <= 22 and added and waiting
    assert {(s, src) for _, _, s, src in added} == {("analysis", "import")}
    drifted = {r["input"] for r in rows if r["drifted"]}
    assert all(text in drifted for text, *_ in added) and all(text in drifted for _, text, _ in waiting)
    assert f"Added {len(added)} drifting inputs to the analysis split; {len(waiting)} wait for an expected output" \
        in result.out
    shown = cli("--project", str(project.root), "drift", "--waiting")
    assert shown.code == 0 and waiting[0][0] in shown.out
    done = cli("--project", str(project.root), "relabel", waiting[0][0], "--output", "Answer: 3")
    assert done.code == 0, done.err
    con = duckdb.connect(str(project.store_path), read_only=True)
    try:
        made = con.execute("SELECT e.split, e.origin, e.output FROM drift_inputs d JOIN examples e ON e.id = "
                           "d.example_id WHERE d.id = ?", [waiting[0][0]]).fetchall()
    finally:
        con.close()
    assert made and made[0][0] == "analysis" and made[0][1].startswith("drift 1: ") and made[0][2] == "Answer: 3"


def test_production_outputs_meet_the_checks_that_need_no_expected_output(reference, tmp_path) -> None:
    rows = [{"input": "<weather>Sunny</weather> Bo has 2 apples and buys 3 more. How many apples now?",
             "output": "Answer: 5<display_weather>☀️</display_weather>"},
            {"input": "<weather>Rain</weather> Bo has 2 apples and buys 3 more. How many apples now?",
             "output": "Answer: 5"},
            {"input": "Bo has 2 apples and buys 3 more. How many apples now?", "output": "Answer: 5"}]
    report, _ = detect_drift(reference, [_write_rows(tmp_path / "outputs.jsonl", rows)])
    checks = {c["check"]: c for c in report.checks}
    assert checks["display_weather_present"]["applies"] == 2 and checks["display_weather_present"]["pass_rate"] == 0.5
    assert "answer_correct" not in checks  # it compares with an expected output, which production does not have
    assert checks["emoji_correct"]["applies"] == 2 and checks["emoji_correct"]["pass_rate"] == 0.5  # by its lookup


def test_a_bad_timestamp_names_its_line_and_stores_nothing(reference, tmp_path, cli) -> None:
    project = _copy(reference, tmp_path)
    path = _write_rows(tmp_path / "bad.jsonl", [{"input": "Bo has 2 apples.", "timestamp": "2026-03-01"},
                                                {"input": "Bo has 3 apples.", "timestamp": "yesterday"}])
    result = cli("--project", str(project.root), "drift", path, "--add", "5")
    assert (result.code, result.err) == (1, f"Error: {path}:2: timestamp 'yesterday' is not a date or time "
                                            f"(expected ISO 8601, like 2026-03-01 or 2026-03-01T14:05:00). Fix "
                                            f"it, or drop the column.\n")
    con = duckdb.connect(str(project.store_path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM drift_runs").fetchone() == (0,)
    finally:
        con.close()


@pytest.mark.slow  # a baseline first: `make test-slow` (in .ci/run)
def test_the_report_shows_the_latest_drift_run(reference, tmp_path, cli) -> None:
    project = _copy(reference, tmp_path)
    test = (REPO / "data" / "demo" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    write(tmp_path / "test.jsonl", "\n".join(test) + "\n")
    assert cli("--project", str(project.root), "ingest", str(tmp_path / "test.jsonl"), "--split", "test").code == 0
    assert cli("--project", str(project.root), "baseline").code == 0  # the report needs a finished round
    rows = production_set(size=600, drift=0.2, seed=5)
    assert cli("--project", str(project.root), "drift", _write_rows(tmp_path / "p.jsonl", rows)).code == 0
    text = cli("--project", str(project.root), "report", "--text")
    assert text.code == 0, text.err
    assert "Drift of production inputs (run 1): 600 production inputs against 620 train and analysis inputs; " \
           "drift found." in text.out
    assert "the word 'reasoning'" in text.out and "never" in text.out
    page = cli("--project", str(project.root), "report")
    assert page.code == 0, page.err
    html = (project.runs_dir / "report.html").read_text(encoding="utf-8")
    assert '<section id="drift">' in html and 'data-plot="drift"' in html and "Drift found." in html
