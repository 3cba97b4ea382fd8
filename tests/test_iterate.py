"""Iterating: the plateau rule, the few-shot baseline and the production model, kills at any point, one iterate
at a time, and re-running a round from its record. Real model, real store, real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refinery.config import PlateauSettings
from refinery.stages.loop import run_round
from refinery.stages.plateau import stop_reason
from refinery.store import Store


def settings(**values) -> PlateauSettings:
    return PlateauSettings(**values)


def test_the_plateau_rule_states_why_it_stops() -> None:
    rising = [(0, 0.10), (1, 0.20), (2, 0.30)]
    assert stop_reason(rising, settings(patience=2, margin=0.01), run=2, budget=10) is None
    flat = [(0, 0.10), (1, 0.30), (2, 0.305), (3, 0.29)]
    assert stop_reason(flat, settings(patience=2, margin=0.01), run=3, budget=10) == (
        "plateau: test pass rate has not improved by more than 1.0% in the last 2 rounds: best before 30.0% "
        "(round 1), since 30.5% (round 2), 29.0% (round 3)")
    assert stop_reason(rising, settings(target=0.3), run=2, budget=10) == (
        "target reached: test pass rate 30.0% in round 2 >= target 30.0%")
    assert stop_reason(rising, settings(), run=2, budget=2) == (
        "round budget spent: 2 of 2 rounds run, test pass rate 30.0% and still improving (best 30.0% in round 2)")
    # Required to beat production: a plateau below it does not stop; the budget still does.
    beat = settings(patience=2, margin=0.01, beat_production=True)
    assert stop_reason(flat, beat, run=3, budget=10, production=0.4) is None
    assert stop_reason(flat, beat, run=3, budget=10, production=0.2).endswith("; production 20.0% beaten")
    assert stop_reason(flat, beat, run=10, budget=10, production=0.4) == (
        "round budget spent: 10 of 10 rounds run, test pass rate 29.0% and not improving (best 30.5% in round 2); "
        "production 40.0% not beaten")
    weighted = settings(metric="test_weighted_score", patience=1, margin=0.0)
    assert stop_reason([(1, 0.5), (2, 0.5)], weighted, run=2, budget=5).startswith(
        "plateau: test weighted score has not improved by more than 0.000 in the last round")


def test_baseline_is_round_zero_and_iterate_stops_on_a_plateau(demo_project, cli) -> None:
    result = cli("baseline", "--json")
    assert result.code == 0, result.err
    baseline = json.loads(result.out)
    with Store(demo_project.store_path) as store:
        kind, metrics = store.one("SELECT kind, metrics FROM rounds WHERE number = 0")
        held_out = store.scalar("SELECT count(*) FROM examples WHERE split <> 'train'")
        assert kind == "baseline" and json.loads(metrics) == baseline["metrics"]
        assert store.scalar("SELECT count(*) FROM predictions WHERE round = 0 AND variant = ''") == held_out
        prompt = store.scalar("SELECT prompt FROM predictions WHERE round = 0 LIMIT 1")
    shots = baseline["metrics"]["shots"]
    assert 1 <= shots <= 4 and prompt.count("<|assistant|>") == shots + 1  # worked examples, then the question
    again = cli("baseline", "--shots", "1", "--json")  # measuring again replaces round 0
    assert json.loads(again.out)["metrics"]["shots"] == 1
    config = demo_project.root / "refinery.toml"
    config.write_text(config.read_text() + "\n[plateau]\npatience = 1\nmargin = 1.0\nmax_rounds = 3\n")
    result = cli("iterate", "--until-plateau", "--steps", "8", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert len(document["rounds"]) == 1 and document["rounds"][0]["previous"] == 0
    assert [h["round"] for h in document["history"]] == [0, 1]
    assert document["stop_reason"].startswith("plateau: test pass rate has not improved by more than 100.0% in the "
                                              "last round: best before ")
    with Store(demo_project.store_path) as store:
        assert store.scalar("SELECT stop_reason FROM rounds WHERE number = 1") == document["stop_reason"]
    printed = cli("iterate", "--until-plateau", "--rounds", "1", "--steps", "8")
    assert "Stopped: plateau: " in printed.out and "vs baseline: test pass rate" in printed.out


def test_the_ceiling_trains_on_oracle_data_and_is_a_reference_not_a_round(demo_project, cli) -> None:
    """`refinery ceiling`: the project's recipe on train + every analysis example, measured on test and corner,
    recorded as round -2; the plateau rule and the next round's comparison ignore it; the report reads rounds
    against it."""
    config = demo_project.root / "refinery.toml"
    config.write_text(config.read_text().replace("steps = 16\n", "steps = 6\n"))
    result = cli("ceiling", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    with Store(demo_project.store_path) as store:
        train, analysis = (store.scalar(f"SELECT count(*) FROM examples WHERE split = '{s}' AND status = 'active'")
                           for s in ("train", "analysis"))
        kind, metrics, adapter = store.one("SELECT kind, metrics, adapter_path FROM rounds WHERE number = -2")
        asked = store.scalar("SELECT count(DISTINCT example_id) FROM predictions WHERE round = -2 AND variant = ''")
        held = store.scalar("SELECT count(*) FROM examples WHERE split IN ('test', 'corner')")
    assert (document["examples"], document["train"], document["analysis"]) == (train + analysis, train, analysis)
    assert document["steps"] == 6 and kind == "ceiling" and Path(adapter).name == "adapter"
    assert json.loads(metrics)["test"] == document["metrics"]["test"] and asked == held  # analysis is not asked
    printed = cli("ceiling")
    assert f"Ceiling (round -2): 6 steps on {train + analysis} examples ({train} train + {analysis} analysis)" \
        in printed.out
    assert "Test pass rate at the ceiling: " in printed.out
    result = cli("iterate", "--until-plateau", "--rounds", "1", "--json")
    rounds = json.loads(result.out)
    assert [h["round"] for h in rounds["history"]] == [1] and rounds["rounds"][0]["previous"] is None
    with Store(demo_project.store_path) as store:  # the round added counterexamples to the train split...
        assert store.scalar("SELECT count(*) FROM examples WHERE source = 'generated' AND status = 'active'") > 0
    again = json.loads(cli("ceiling", "--json").out)  # ...which the ceiling leaves out: it does not move with rounds
    assert (again["examples"], again["train"]) == (train + analysis, train)
    text = cli("report", "--text").out
    ceiling = again["metrics"]["test"]["pass_rate"]
    assert f"; ceiling {ceiling:.1%} (oracle data), so the loop reached " in text


@pytest.mark.slow  # `make test-slow` (in .ci/run): keeps the default run under 10 minutes
def test_a_production_adapter_is_measured_once_and_compared(demo_project, cli) -> None:
    first = run_round(demo_project)
    shutil.copytree(Path(first.train["weights"]), demo_project.root / "prod")
    config = demo_project.root / "refinery.toml"
    config.write_text(config.read_text() + "\n[baseline]\nproduction = \"prod\"\n")
    result = cli("iterate", "--steps", "8", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    with Store(demo_project.store_path) as store:
        kind, metrics = store.one("SELECT kind, metrics FROM rounds WHERE number = -1")
    # The production model is round 1's adapter: asked the same questions it gives the same figures.
    assert kind == "production" and json.loads(metrics)["test"] == first.metrics["test"]
    assert document["rounds"][0]["references"]["production"]["test"] == first.metrics["test"]
    assert document["rounds"][0]["number"] == 2 and document["rounds"][0]["previous"] == 1
    assert [h["kind"] for h in document["history"]] == ["production", "round", "round"]
    cli("iterate", "--steps", "8")  # unchanged adapter: not measured again
    with Store(demo_project.store_path) as store:
        assert store.scalar("SELECT count(*) FROM round_stages WHERE round = -1") == 1
    (demo_project.root / "prod" / "adapter_config.json").unlink()
    bad = cli("iterate")
    assert bad.code == 1 and bad.err.startswith('Error: [baseline] production = "prod": ')


def test_rerun_retrains_a_round_from_its_record(demo_project, cli) -> None:
    first = run_round(demo_project)
    run_round(demo_project)  # more data since: the rerun must still use round 1's exact set
    result = cli("rerun", "1", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["examples"] == first.train["examples"] == 20
    assert document["weights_max_abs_diff"] == 0.0  # CPU training from the same record is bit-identical
    assert document["rerun"]["test"] == document["recorded"]["test"] == first.metrics["test"]
    assert Path(document["dir"], "rerun.json").is_file()
    assert cli("rerun", "7").err == "Error: no training round 7. `refinery status` lists the rounds.\n"


def _start(project_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "REFINERY_PROJECT": str(project_dir)}
    refinery = Path(sys.executable).parent / "refinery"  # the console script, as a person runs it
    return subprocess.Popen([str(refinery), "iterate", *args], env=env, cwd=project_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(process: subprocess.Popen, text: str, timeout: float = 240) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"iterate ended ({process.returncode}) before {text!r}: {seen}")
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {timeout} s: {seen}")


@pytest.mark.parametrize("kill_after", ["Round 1: training on", pytest.param("  infer", marks=pytest.mark.slow),
                                        pytest.param("  analyze", marks=pytest.mark.slow)],
                         ids=["mid-training", "mid-evaluation", "mid-generation"])  # the last two: `make test-slow`
def test_a_killed_iterate_leaves_the_store_consistent_and_the_next_resumes(demo_project, cli, kill_after) -> None:
    with Store(demo_project.store_path) as store:
        before = store.frame("SELECT id FROM examples ORDER BY id")["id"].to_list()
    process = _start(demo_project.root, "--steps", "40")
    try:
        _wait_for(process, kill_after)
        if kill_after.startswith("Round"):  # a second iterate meanwhile is refused, naming the first
            second = cli("iterate")
            assert second.code == 1
            assert second.err.startswith(f"Error: another `refinery iterate` is running on this project: process "
                                         f"{process.pid}, started ")
            assert second.err.endswith(", on round 1 of at most 1. Wait for it to finish, or stop it (an "
                                       "interrupted round restarts with the next `iterate`).\n")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    with Store(demo_project.store_path) as store:  # consistent: nothing half-written, nothing added
        assert store.one("SELECT number, status FROM rounds") == (1, "running")
        assert store.frame("SELECT id FROM examples ORDER BY id")["id"].to_list() == before
        assert store.scalar("SELECT count(*) FROM clusters") == 0
        asked = store.scalar("SELECT count(*) FROM examples WHERE split <> 'train'") + \
            2 * store.scalar("SELECT count(*) FROM examples WHERE split = 'test'")  # and the cue on / off
        checks = 7
        # each table is written in one transaction: all of a stage's rows or none
        assert store.scalar("SELECT count(*) FROM predictions") in (0, asked)
        assert store.scalar("SELECT count(*) FROM rule_results") in (0, asked * checks)
    resumed = cli("iterate", "--steps", "40", "--json")
    assert resumed.code == 0, resumed.err
    summary = json.loads(resumed.out)["rounds"][0]
    assert summary["number"] == 1 and summary["status"] == "done"
    with Store(demo_project.store_path) as store:
        assert store.one("SELECT status, attempts FROM rounds WHERE number = 1") == ("done", 2)
        assert store.scalar("SELECT error FROM rounds WHERE number = 1").startswith("attempt 1: interrupted: process")
        generated = store.scalar("SELECT count(*) FROM examples WHERE source = 'generated'")
        assert generated == sum(g["stored"] for g in summary["generated"]) > 0
        assert store.scalar("SELECT count(*) FROM examples") == len(before) + generated
        held_out = store.scalar("SELECT count(*) FROM examples WHERE split <> 'train'")
        assert store.scalar("SELECT count(*) FROM predictions WHERE variant = ''") == held_out  # no duplicates
    trained_again = "adapter of the interrupted attempt reused" not in resumed.err
    assert trained_again == (kill_after == "Round 1: training on")
