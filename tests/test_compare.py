"""The judge beyond one check (issue 27): a round with a judge check end to end, `refinery compare` (both orders
asked, flips counted, the interval), a person's labels and `refinery judge calibrate` (agreement and Cohen's kappa),
and the judge behind an OpenAI-compatible endpoint: a real `transformers serve` on 127.0.0.1, the endpoint down,
its key missing from the environment.

One project is built per module (the small demo, a judge check, the baseline and one round on the bundled model);
each test works on its own copy of it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from conftest import REPO, make_demo, write
from sklearn.metrics import cohen_kappa_score

from refinery.cli import main
from refinery.project import load_project
from refinery.report.calibration import calibrate, cohen_kappa
from refinery.report.compare import RUBRIC as RUBRIC_PAIR
from refinery.report.compare import bootstrap_interval, compare_rounds, parse_pick, render_pair
from refinery.rules import load_rules
from refinery.stages.judge import judge_checks
from refinery.store import Store

RUBRIC = ('[[check]]\nname = "polite"\ntype = "judge"\nwhen = "weather"\nseverity = 2\n'
          'rubric = "Is this reply to {{ input }} polite? Reply: {{ output }} (a good reply: {{ expected }})"\n')


@pytest.fixture(scope="module")
def judged_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The small demo with a judge check, its baseline and one round (4 steps): the folder and what iterate said."""
    project = make_demo(tmp_path_factory.mktemp("judged") / "demo")
    write(project.rules_dir / "judge.toml", RUBRIC)
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert main(["--project", str(project.root), "baseline"]) == 0
        assert main(["--project", str(project.root), "iterate", "--steps", "4"]) == 0
    return project.root, said.getvalue()


@pytest.fixture
def judged(judged_template: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = shutil.copytree(judged_template[0], tmp_path / "demo")
    monkeypatch.chdir(root)
    monkeypatch.delenv("REFINERY_PROJECT", raising=False)
    return load_project(root, environ={})


def _query(project, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(project.store_path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def test_a_round_with_a_judge_check_records_its_verdicts_and_mines_its_failures(judged_template, judged,
                                                                                 cli) -> None:
    judged_rows = _query(judged, "SELECT count(*), count(*) FILTER (WHERE NOT passed) FROM rule_results "
                                 "WHERE check_name = 'polite' AND round = 1 AND variant = ''")[0]
    weather = _query(judged, "SELECT count(*) FROM examples WHERE split <> 'train' AND input LIKE '%weather%' "
                             "AND status = 'active'")[0][0]
    patterns = _query(judged, "SELECT id FROM clusters WHERE round = 1 AND checks::VARCHAR LIKE '%polite%' "
                              "ORDER BY rank")
    drawn = _query(judged, "SELECT count(*) FROM generations g JOIN clusters c ON c.id = g.cluster_id "
                           "WHERE c.round = 1 AND c.checks::VARCHAR LIKE '%polite%'")[0][0]
    assert judged_rows[0] == weather and judged_rows[1] > 0  # every held-out input with the tag judged, failures kept
    assert patterns and drawn > 0  # mined into a pattern, which drew counterexamples
    assert "polite" in judged_template[1]
    shown = cli("clusters", "show", patterns[0][0])  # each member with the judge's word on it
    assert shown.code == 0 and "failing  " in shown.out and "polite: " in shown.out


@pytest.mark.parametrize(("answer", "pick"), [
    ("1", "1"), ("Reply 2 is better.", "2"), ("**TIE** - both wrong", "TIE"), ("tie.", "TIE"),
    ("1 and 2 are equal", None), ("Neither", None), ("", None), ("2.5", None), ("Reply 12", None),
    ("Both fine\n1", None)])
def test_a_pick_is_one_of_1_2_or_tie_on_the_first_line(answer: str, pick: str | None) -> None:
    assert parse_pick(answer) == pick


def _outputs(project, round: int) -> dict[str, str]:
    return dict(_query(project, "SELECT p.example_id, p.output FROM predictions p JOIN examples e ON e.id = "
                                "p.example_id WHERE p.round = ? AND p.variant = '' AND e.split = 'test'", [round]))


def test_compare_asks_each_example_in_both_orders_and_counts_what_the_order_flips(judged) -> None:
    a, b = _outputs(judged, 0), _outputs(judged, 1)
    asked: list[str] = []

    def longer(prompts: list[str]) -> list[str]:  # a consistent judge: the longer reply wins, equal ones tie
        asked.extend(prompts)
        replies = [p.split("Reply 1:\n", 1)[1].split("\n\nReply 2:\n") for p in prompts]
        return ["TIE" if len(one) == len(two.split("\n\nAnswer with")[0]) else
                "1" if len(one) > len(two.split("\n\nAnswer with")[0]) else "2" for one, two in replies]

    fair = compare_rounds(judged, "baseline", "1", answer=longer)
    # Each example asked in both orders: the two prompts, one when the outputs are the same (then asked once).
    assert fair.examples == len(a) == len(b) > 0
    rows = _query(judged, "SELECT id, input, output, fields::VARCHAR FROM examples WHERE id IN (SELECT unnest(?))",
                  [sorted(a)])
    both = {render_pair(RUBRIC_PAIR, {"input": i, "expected": e, "fields": f}, shown)
            for id_, i, e, f in rows for shown in ([a[id_], b[id_]], [b[id_], a[id_]])}
    assert len(asked) == len(set(asked)) and set(asked) == both
    expected = [(len(b[i]) > len(a[i])) - (len(b[i]) < len(a[i])) for i in sorted(a)]
    assert (fair.wins, fair.ties, fair.losses) == (expected.count(1), expected.count(0), expected.count(-1))
    assert fair.flipped == 0 and fair.no_verdict == 0
    assert fair.score == pytest.approx((fair.wins + fair.ties / 2) / fair.examples)
    assert fair.low <= fair.score <= fair.high
    orders = [r["b_first"] for r in fair.rows]
    assert orders == [r["b_first"] for r in compare_rounds(judged, 0, 1, answer=longer).rows]  # drawn per example
    assert 0 < sum(orders) < len(orders) or len(orders) < 4  # both orders come first somewhere

    con = duckdb.connect(str(judged.store_path))
    con.execute("DELETE FROM judge_verdicts")  # the cache keeps what the judge above said: start again
    con.close()
    biased = compare_rounds(judged, "baseline", "1", answer=lambda prompts: ["1"] * len(prompts), seed=1)
    assert (biased.wins, biased.losses, biased.flipped, biased.ties) == (0, 0, biased.examples, biased.examples)
    assert biased.first_picked == 1.0 and biased.score == 0.5
    assert any("biased by position" in w for w in biased.warnings)


def test_the_interval_is_a_seeded_bootstrap_of_the_scores() -> None:
    assert bootstrap_interval([1.0] * 10, seed=0) == (1.0, 1.0)
    low, high = bootstrap_interval([1.0, 0.0] * 20, seed=0)
    assert low < 0.5 < high and (low, high) == bootstrap_interval([1.0, 0.0] * 20, seed=0)
    assert 0.3 < low and high < 0.7  # 40 coin flips: about 0.5 +- 0.16


def test_compare_with_the_bundled_judge_prints_the_counts_and_the_self_preference_note(judged, cli) -> None:
    result = cli("compare", "baseline", "1")
    assert result.code == 0, result.err
    examples = len(_outputs(judged, 1))
    assert f"Round 1 against the baseline on {examples} test examples, judged by " in result.out
    assert ("Note: The judge is the base model itself: self-preference may inflate the result for outputs that "
            "read like its own.") in " ".join(result.out.split())
    asked = _query(judged, "SELECT count(*) FROM judge_verdicts")[0][0]
    again = cli("compare", "baseline", "1", "--json")  # every verdict from the store
    assert again.code == 0 and _query(judged, "SELECT count(*) FROM judge_verdicts")[0][0] == asked
    document = json.loads(again.out)
    assert document["examples"] == examples and len(document["rows"]) == examples
    assert document["wins"] + document["ties"] + document["losses"] + document["no_verdict"] == examples
    for row in document["rows"]:  # both orders asked of each example, and its outcome read from the two verdicts
        assert len(row["verdicts"]) == 2 and row["outcome"] in ("win", "tie", "loss", "flip", "none")


def test_compare_names_a_round_that_has_not_finished(judged, cli) -> None:
    result = cli("compare", "1", "7")
    assert (result.code, result.err) == (1, "Error: round 7 has not finished, so it has no outputs to compare: run "
                                            "`refinery iterate` first (`refinery status` lists the rounds).\n")
    assert cli("compare", "1", "latest").err == "Error: round 'latest': expected a round number, baseline or " \
                                               "production.\n"


def test_cohen_kappa_matches_the_textbook_and_scikit_learn() -> None:
    judge = [True, True, False, False, True, False, True, True, False, True]
    person = [True, False, False, False, True, True, True, True, False, False]
    # 7 of 10 agree; judge passes 6/10, person 5/10: chance 0.6*0.5 + 0.4*0.5 = 0.5, kappa (0.7-0.5)/0.5 = 0.4
    assert cohen_kappa(judge, person) == pytest.approx(0.4)
    assert cohen_kappa(judge, person) == pytest.approx(cohen_kappa_score(judge, person))
    assert cohen_kappa(judge, judge) == pytest.approx(1.0)
    assert cohen_kappa([True] * 4, [True] * 4) is None  # one verdict throughout: kappa is undefined
    assert cohen_kappa([], []) is None


def test_labels_calibrate_the_judge_and_the_report_says_uncalibrated(judged, cli) -> None:
    results = _query(judged, "SELECT example_id, passed FROM rule_results WHERE round = 1 AND check_name = "
                             "'polite' AND applies AND variant = '' ORDER BY example_id LIMIT 4")
    person = [True, False, not results[2][1], results[3][1]]
    for (example, _), verdict in zip(results, person, strict=True):
        said = cli("judge", "label", "--example", example, "--check", "polite", "--verdict",
                   "pass" if verdict else "fail")
        assert said.code == 0 and said.out.startswith(f"Labelled {example} ")
    with Store(judged.store_path, read_only=True) as store:
        (found,) = calibrate(store, checks=["polite"], settings=judged.config.judge)
    judge = [bool(p) for _, p in results]
    assert found.labels == 4
    assert found.agreement == pytest.approx(sum(j == p for j, p in zip(judge, person, strict=True)) / 4)
    assert found.kappa == cohen_kappa(judge, person)
    assert found.status == "uncalibrated: 4 label(s), needs 10 (`refinery judge label`)"
    rules = _query(judged, """
        SELECT j.passed, bool_and(r.passed) FROM rule_results j JOIN rule_results r ON r.round = j.round
            AND r.example_id = j.example_id AND r.variant = j.variant AND r.applies AND r.check_name <> 'polite'
        WHERE j.round = 1 AND j.check_name = 'polite' AND j.applies GROUP BY j.example_id, j.variant, j.passed""")
    assert found.rule_outputs == len(rules) > 0
    assert found.rule_agreement == pytest.approx(sum(a == b for a, b in rules) / len(rules))
    shown = cli("judge", "calibrate")
    assert shown.code == 0 and "uncalibrated: 4 label(s), needs 10" in shown.out
    report = cli("report", "--text")
    assert report.code == 0, report.err
    assert "Judge checks: agreement with a person's labels and with the rules" in report.out
    assert "uncalibrated: 4 label(s)" in report.out
    assert "The judge's most frequent reasons for a failure (last round)" in report.out
    reasons = _query(judged, "SELECT detail, count(*) AS n FROM rule_results WHERE round = 1 AND check_name = "
                             "'polite' AND applies AND NOT passed AND variant = '' GROUP BY detail ORDER BY n DESC")
    assert re.search(rf"│ polite +│ +{reasons[0][1]} │ {re.escape(reasons[0][0])} +│", report.out)  # the likeliest


def test_label_asks_for_each_unlabelled_result_until_quit(judged, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("p\nf\ns\nq\n"))
    result = cli("judge", "label")
    assert result.code == 0, result.err
    assert result.out.count("Your verdict: p(ass), f(ail), s(kip), q(uit)") == 4
    assert "  judge    FAIL: " in result.out and result.out.endswith("Labelled 2 result(s).\n")
    assert _query(judged, "SELECT passed FROM judge_labels ORDER BY example_id") in ([(True,), (False,)],
                                                                                     [(False,), (True,)])
    wrong = cli("judge", "label", "--example", "nope", "--check", "polite", "--verdict", "pass")
    assert wrong.err == ("Error: round 1 has no result of judge check 'polite' for example nope: `refinery judge "
                         "label --round 1` lists the ones to label.\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_endpoint(project, url: str, *extra: str) -> None:
    config = project.root / "refinery.toml"
    config.write_text(config.read_text(encoding="utf-8") + f'\n[judge]\nbase_url = "{url}"\nmodel = '
                      f'"{REPO / "data" / "tiny-base"}"\n' + "".join(f"{line}\n" for line in extra), encoding="utf-8")


def test_an_endpoint_that_is_down_is_named_and_nothing_is_stored(judged, cli) -> None:
    port = _free_port()
    _use_endpoint(judged, f"http://127.0.0.1:{port}/v1")
    before = _query(judged, "SELECT count(*) FROM judge_verdicts")[0][0]
    result = cli("compare", "baseline", "1")
    assert (result.code, result.err) == (1, f'Error: [judge] base_url = "http://127.0.0.1:{port}/v1": cannot reach '
                                            f"http://127.0.0.1:{port}/v1/chat/completions ([Errno 111] Connection "
                                            f"refused). Start the server, or fix base_url.\n")
    assert _query(judged, "SELECT count(*) FROM judge_verdicts")[0][0] == before


def test_a_key_missing_from_the_environment_is_named_before_anything_is_sent(judged, cli, monkeypatch) -> None:
    monkeypatch.delenv("REFINERY_TEST_JUDGE_KEY", raising=False)
    _use_endpoint(judged, "http://127.0.0.1:9/v1", 'api_key_env = "REFINERY_TEST_JUDGE_KEY"')
    result = cli("compare", "baseline", "1")
    assert (result.code, result.err) == (1, 'Error: [judge] api_key_env = "REFINERY_TEST_JUDGE_KEY": the environment '
                                            "variable REFINERY_TEST_JUDGE_KEY is not set (expected the endpoint's key "
                                            "in it). Export it, or remove api_key_env if the endpoint needs no key.\n")


def test_a_base_url_without_a_model_is_a_config_error(judged, cli) -> None:
    config = judged.root / "refinery.toml"
    config.write_text(config.read_text(encoding="utf-8") + '\n[judge]\nbase_url = "http://127.0.0.1:9/v1"\n')
    result = cli("status")
    line = config.read_text(encoding="utf-8").splitlines().index('base_url = "http://127.0.0.1:9/v1"') + 1
    assert (result.code, result.err) == (1, f'Error: refinery.toml:{line}: [judge] base_url = '
                                            f'"http://127.0.0.1:9/v1" without model: expected the name of the model '
                                            f'the endpoint serves. Add model = "..." to [judge].\n')


@pytest.fixture
def served() -> str:
    """`transformers serve` with the bundled model on a free port of 127.0.0.1: its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", str(REPO / "data" / "tiny-base"),
         "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"transformers serve did not start: {server.stdout.read().decode()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow  # 20 s to start the server: `make test-slow` (in .ci/run)
def test_the_judge_answers_from_a_real_openai_compatible_server(judged, served, monkeypatch) -> None:
    monkeypatch.setenv("REFINERY_TEST_JUDGE_KEY", "sk-local-test")
    _use_endpoint(judged, served, 'api_key_env = "REFINERY_TEST_JUDGE_KEY"', "max_new_tokens = 8")
    project = load_project(judged.root, environ={})
    rows = duckdb.connect(str(project.store_path), read_only=True)
    try:
        frame = rows.sql("""SELECT p.example_id, p.variant, e.input, e.output AS expected, e.fields::VARCHAR AS
                            fields, p.output AS prediction FROM predictions p JOIN examples e ON e.id = p.example_id
                            WHERE p.round = 1 AND p.variant = '' AND e.input LIKE '%weather%' LIMIT 3""").pl()
    finally:
        rows.close()
    results = judge_checks(load_rules(project.rules_dir), frame, project=project)
    assert results.height == 3 and set(results["check_name"]) == {"polite"}
    stored = _query(project, "SELECT judge, answer FROM judge_verdicts WHERE judge LIKE '% at http://127.0.0.1:%'")
    assert len(stored) == 3 and all(isinstance(answer, str) for _, answer in stored)
    # The same greedy model, local: the same answers (the server renders the same chat template).
    assert {a for _, a in stored} <= set(_local_answers(project, frame)) | {""}


def _local_answers(project, frame) -> list[str]:
    from refinery.stages.judge import _local_judge, render_rubric

    checks = [c for c in load_rules(project.rules_dir).checks if c.type == "judge"]
    return _local_judge(project)([render_rubric(checks[0], row) for row in frame.iter_rows(named=True)])
