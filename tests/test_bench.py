"""The benchmark runs end to end on its quick setting, and what it writes holds real numbers that agree.

The quick run takes about two minutes, so its tests are slow-marked: `make test-bench` runs them, and `.ci/run` after
`make test`; the benchmark's arithmetic (verdicts, the paired test, the regime tables) stays in the default run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import stats  # noqa: E402
from bench.report import statement  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([str(REPO / "bench" / "run"), "--quick", "--out", str(out), "--docs", str(out / "docs")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "quick" / "results.json").read_text(encoding="utf-8"))
    page = (out / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    return results, page, out


@pytest.mark.slow
def test_quick_run_measures_the_ceiling_and_the_demo_per_round(quick) -> None:
    results, page, out = quick
    ceiling, demo = results["ceiling"], results["demo"]
    # the ceiling trains on the seed set plus every analysis row the quick setting keeps (40), 4 steps
    assert (ceiling["examples"], ceiling["steps"], ceiling["test_examples"]) == (60, 4, 40)
    assert 0.0 <= ceiling["test_pass_rate"] <= 1.0 and sum(ceiling["failures"].values()) >= 0
    assert f"| 60 | 4 | 40 | {100 * ceiling['test_pass_rate']:.1f} % |" in page
    assert [r["round"] for r in demo["rounds"]] == [1, 2] and demo["stop_reason"]
    for r in demo["rounds"]:
        assert r["seconds"] > 0 and r["steps"] == 4 and 0.0 <= r["test_pass_rate"] <= 1.0
        assert re.search(rf"\| {r['round']} \| {r['train_examples']} \| 4 \| {100 * r['test_pass_rate']:.1f} % \| ",
                         page)
    assert demo["rounds"][1]["train_examples"] == demo["rounds"][0]["train_examples"] + demo["rounds"][0]["added"]


@pytest.mark.slow
def test_quick_run_compares_the_three_arms_with_equal_data(quick) -> None:
    results, page, out = quick
    rows = results["efficiency"]
    assert {(r["arm"], r["round"]) for r in rows} == {(a, n) for a in ("targeted", "random", "steps") for n in (1, 2)}
    by = {(r["arm"], r["round"]): r for r in rows}
    for r in rows:
        assert 0.0 <= r["test_pass_rate"] <= 1.0 and r["seconds"] > 0
        # the per-example outcomes the significance test uses give the pass rate the round reported
        outcomes = r["test_outcomes"]
        assert len(outcomes) == r["test_examples"] > 0
        assert round(sum(outcomes.values()) / len(outcomes), 4) == r["test_pass_rate"]
    # round 1 is the same seed-only model in every arm: trained anew in the random arm, shared by the steps arm
    assert by[("steps", 1)]["shared_with"] == "targeted" and "shared_with" not in by[("random", 1)]
    assert len({by[(arm, 1)]["final_loss"] for arm in ("targeted", "random", "steps")}) == 1
    assert len({by[(arm, 1)]["test_pass_rate"] for arm in ("targeted", "random", "steps")}) == 1
    # random gets, round by round, the count the targeted arm stored; the steps arm adds nothing but steps
    for n in (1, 2):
        assert by[("random", n)]["wanted"] == by[("targeted", n)]["added"]
        assert by[("steps", n)]["added"] == 0
        assert by[("steps", n)]["steps"] == sum(by[("targeted", k)]["steps"] for k in range(1, n + 1))
    assert by[("targeted", 1)]["added"] > 0
    assert by[("targeted", 2)]["added_before"] == by[("targeted", 1)]["added"]
    assert by[("random", 2)]["added_before"] == by[("random", 1)]["added"]
    if by[("random", 1)]["added"] == by[("random", 1)]["wanted"]:
        assert "Equal counts held" in page
    else:
        assert "Equal counts did not always hold" in page
    # the verdict on the page is the one the figures give
    assert statement(rows, None) in page
    verdict = stats.verdict(rows, stats.auto_target(rows))
    assert f"{100 * verdict['final']['targeted']['median']:.1f} %" in page
    assert verdict["mcnemar"]["pairs"] == by[("targeted", 2)]["test_examples"]
    svg = out / "docs" / "benchmarks" / "sample-efficiency.svg"
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml") and "benchmarks/sample-efficiency.svg" in page


@pytest.mark.slow
def test_quick_run_measures_the_usually_right_regime_with_slices_and_pattern_effects(quick) -> None:
    results, page, _ = quick
    rows = results["usually_right"]
    assert {(r["arm"], r["round"]) for r in rows} == {(a, n) for a in ("targeted", "random", "steps") for n in (1, 2)}
    slices = {json.loads(line)["input"]: json.loads(line)["slices"]
              for line in (REPO / "data" / "demo" / "usually-right" / "slices.jsonl").read_text().splitlines()}
    for r in rows:
        assert r["train_examples"] >= 300 and r["test_examples"] == 40  # the broad seed set; --eval-rows 40
        # every test example counted once in "none" or in each of its slices
        assert sum(s["examples"] for s in r["slices"].values()) >= r["test_examples"]
        assert set(r["slices"]) <= {"none", *{name for names in slices.values() for name in names}}
    targeted = [r for r in rows if r["arm"] == "targeted"]
    for effect in targeted[0]["effects"]:  # round 1's patterns, measured in round 2 of both arms
        assert 0.0 <= effect["before"] <= 1.0 and effect["targeted_after"] is not None
        assert effect["random_after"] is not None and effect["members"] > 0
    assert all(e["targeted_after"] is None for e in targeted[1]["effects"])  # no round 3 was run
    assert targeted[0]["plan"]["budget"] == targeted[0]["plan"]["explore"] + sum(targeted[0]["plan"]["patterns"]
                                                                                .values())
    assert "## 2. Sample efficiency, the model starts usually right" in page
    assert "### Targeted against random, round by round" in page and "### The worst hard slice per round" in page


def test_the_regime_tables_from_planted_rows() -> None:
    from bench.regimes import effect_lines, near_best_target, per_round_lines, slice_lines

    rows = planted_rows([0.7, 0.8, 0.9], [0.7, 0.75, 0.85])
    for r in rows:
        r["slices"] = {"none": {"examples": 40, "pass_rate": 0.95}, "capitals": {"examples": 10, "pass_rate": 0.5},
                       "tag_after": {"examples": 10, "pass_rate": 0.6 if r["arm"] == "targeted" else 0.4}}
        r["plan"] = {"budget": 120, "explore": 30, "patterns": {"c1": 90}}
        r["effects"] = [{"members": 10, "before": 0.8, "targeted_after": 0.2, "random_after": 0.6},
                        {"members": 30, "before": 0.4, "targeted_after": 0.0, "random_after": 0.4}] \
            if r["arm"] == "targeted" else []
    assert near_best_target(rows) == pytest.approx(0.89)
    table = "\n".join(per_round_lines(rows))
    # round 2: 0.8 against 0.75 in every seed; 3 examples a seed pass only with targeted data
    assert "| 2 | 80.0 % | 75.0 % | +5.0 (+5.0 to +5.0) | 9 / 0, p = 0.0039 | n/a | 0.25 | 30 of 120 |" in table
    worst = "\n".join(slice_lines(rows))
    assert "| 3 | 50.0 % (capitals) | 40.0 % (tag_after) | 40.0 % (tag_after) |" in worst
    assert "| tag_after | 10 | 60.0 % | 40.0 % | 40.0 % |" in worst
    effects = "\n".join(effect_lines(rows))
    # pooled by members: before (8 + 12) / 40, targeted after (2 + 0) / 40, random after (6 + 12) / 40
    assert "| 1 | 6 | 120 | 50.0 % | 5.0 % | 45.0 % | 3 / 0 |" in effects


@pytest.mark.slow
def test_quick_run_times_the_stages_against_the_bare_libraries(quick) -> None:
    results, page, _ = quick
    st = results["stages"]
    assert set(st["round"]) >= {"train", "infer", "evaluate", "analyze", "generate", "record"}
    assert st["train"]["bare_steps"] == st["counts"]["steps"] and st["train"]["bare_seconds"] > 0
    assert st["infer"]["prompts"] == st["counts"]["outputs"] > 0
    assert st["analyze"]["texts"] == st["counts"]["failures"]
    ratio = st["round"]["train"] / st["train"]["bare_seconds"]
    line = next(line for line in page.splitlines() if line.startswith("| train |"))
    assert line.endswith(f"| {ratio:.2f} |")
    assert re.search(r"\| - embed \| [\d.]+ \|", page)


@pytest.mark.slow
def test_quick_run_measures_scale(quick) -> None:
    results, page, _ = quick
    sc = results["scale"]
    for r in sc["analysis"]:
        assert r["status"] == "ok" and r["peak_rss_mb"] > 0
        res = r["result"]
        assert res["n"] == r["n"] and res["clusters"] >= 1
        assert res["seconds"] == pytest.approx(res["cluster_seconds"] + res["describe_seconds"], abs=0.01)
    for r in sc["ingest"]:
        assert r["status"] == "ok" and r["inserted"] + r["duplicates"] == r["n"] and r["peak_rss_mb"] > 0
        assert f"| {r['n']:,} | {r['file_mb']} | {r['seconds']:.1f} |" in page
    assert sc["embed"]["per_second"] > 0 and f"{sc['embed']['per_second']:.0f} texts/s" in page



def planted_rows(targeted: list[float], random: list[float], *, seeds: int = 3, per_round: int = 50,
                 test: int = 60) -> list[dict]:
    """Efficiency rows as bench/efficiency.py writes them, with planted pass rates (the same in every seed)."""
    rows = []
    for seed in range(seeds):
        for arm, rates in (("targeted", targeted), ("random", random), ("steps", [targeted[0]] * len(targeted))):
            for number, rate in enumerate(rates, start=1):
                passed = round(rate * test)
                rows.append({"seed": seed, "arm": arm, "round": number, "steps": 300 * (number if arm == "steps"
                                                                                         else 1),
                             "added_before": 0 if arm == "steps" else per_round * (number - 1),
                             "added": 0 if arm == "steps" else per_round, "test_pass_rate": passed / test,
                             "test_outcomes": {f"s{seed}-e{i:02d}": i < passed for i in range(test)}})
    return rows


def test_the_verdict_counts_the_examples_each_arm_needs() -> None:
    rows = planted_rows([0.1, 0.4, 0.6], [0.1, 0.25, 0.45])
    assert stats.auto_target(rows) == 0.35  # halfway from 10 % to the best median, 60 %
    v = stats.verdict(rows, 0.4)
    assert v["reach"]["targeted"]["median"] == 50 and v["reach"]["random"]["median"] == 100
    assert v["data_ratio"] == {"value": 2.0, "bound": "exact"}
    # 9 test examples per seed pass only with targeted data, none only with random data
    assert (v["mcnemar"]["only_targeted"], v["mcnemar"]["only_random"], v["mcnemar"]["pairs"]) == (27, 0, 180)
    assert v["outcome"] == "targeted beat random"
    text = statement(rows, 0.4)
    assert text.startswith("**Targeted data beat random augmentation.**")
    assert "60.0 % with refinery's targeted counterexamples against 45.0 % with random ones: +15.0 points" in text
    assert "Random augmentation needed 2.0x the examples targeted data needed. That matches the published" in text


def test_an_arm_that_never_gets_there_gives_a_bound() -> None:
    rows = planted_rows([0.1, 0.2, 0.3], [0.1, 0.3, 0.5])
    v = stats.verdict(rows, 0.4)
    assert v["reach"]["targeted"]["reached"] == 0 and v["reach"]["random"]["median"] == 100
    assert v["data_ratio"] == {"value": 1.0, "bound": "at most"}
    assert v["outcome"] == "random beat targeted"
    text = statement(rows, 0.4)
    assert "the targeted arm did not get there within 3 rounds (100 examples added)" in text
    assert "Targeted data needed more than 1.0x the examples random augmentation needed." in text


def test_the_paired_test_over_seeds() -> None:
    from scipy.stats import ttest_1samp

    from bench.stats import paired_test

    gaps = [0.02, 0.04, 0.01, 0.03, 0.05]
    result = paired_test(gaps)
    assert result["p"] == pytest.approx(ttest_1samp(gaps, 0.0).pvalue) and result["p"] < 0.05
    assert result["wilcoxon_p"] == pytest.approx(0.0625)  # 2 / 2^5: the least five seeds can give
    assert paired_test([0.02] * 5)["p"] is None and paired_test([0.0, 0.0]) is None and paired_test([0.1]) is None


def _objective_rows(gap: float) -> list[dict]:
    """Two seeds, SFT and SFT+DPO, two rounds; at round 2 SFT+DPO passes examples a2, a3 that SFT fails."""
    rows = []
    for seed in (0, 1):
        for arm in ("sft", "sft+dpo"):
            for number in (1, 2):
                better = arm == "sft+dpo" and number == 2
                outcomes = {"a1": True, "a2": better, "a3": better, "a4": False}
                rows.append({"seed": seed, "arm": arm, "round": number, "steps": 40, "batch_size": 16,
                             "test_pass_rate": sum(outcomes.values()) / 4 + (gap if better else 0.0),
                             "test_outcomes": outcomes, "train_seconds": 10.0, "seconds": 30.0,
                             "stages": {"train": 12.0}, "pairs": 7, "added_before": 0, "added": 5,
                             "dpo": {"steps": 20, "pairs": 7, "seconds": 2.5} if better else None})
    return rows


def test_the_objective_section_is_spliced_into_the_page_and_replaced_by_the_next_run(tmp_path: Path) -> None:
    from bench.report import write_report
    from bench.report_parts import carry

    (tmp_path / "benchmarks.md").write_text("# Benchmarks\n\nThe efficiency run's page.\n", encoding="utf-8")
    results = {"settings": {"parts": ["objective"], "train": []}, "date": "2026-12-05", "commit": "abc1234",
               "seconds": {"objective": 240.0}, "machine": {"load_at_start": ["1.00"]}}
    write_report({**results, "objective": _objective_rows(0.0)}, tmp_path)
    page = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    assert page.startswith("# Benchmarks\n\nThe efficiency run's page.\n\n<!-- bench:objective -->\n")
    # round 2: +50 points on both seeds; 2 examples x 2 seeds only SFT+DPO passed, none only SFT: p = 2 / 2^4
    assert "| 2 | +50.0 points | 2 / 0 / 0 | 4 | 0 | 0.125 |" in page
    assert "| 2 | 25.0 % | 75.0 % | 7 |" in page  # pairs of round 1, what round 2's DPO trains on
    assert "of which DPO training 2.5 s (median of 2 runs)" in page
    write_report({**results, "objective": _objective_rows(0.01)}, tmp_path)  # measured again: replaced in place
    again = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    assert again.count("<!-- bench:objective -->") == 1 and "| 2 | 25.0 % | 76.0 % | 7 |" in again
    kept = carry("# Benchmarks\n\nA new main run.\n", again, {"efficiency": [{}]})
    assert kept.endswith(again[again.index("<!-- bench:objective -->"):])


def test_the_judge_part_plants_rule_failures_in_half_its_outputs() -> None:
    from bench.judge import planted_rows
    from refinery.rules import load_rules
    from refinery.stages.evaluate import run_checks

    rows = planted_rows(20)
    verdicts = run_checks(load_rules(REPO / "rules"), rows).filter(check_name="emoji_correct")
    assert verdicts.height == 20 and verdicts["applies"].all()
    assert verdicts.sort("example_id")["passed"].to_list() == [True] * 10 + [False] * 10


def test_the_judge_part_times_a_real_judge_and_its_cache(tmp_path: Path) -> None:
    from bench.judge import judge_section, run_judge

    said: list[str] = []
    generated, row = run_judge([str(REPO / "data" / "tiny-base")], count=6, work=tmp_path, log=said.append)
    assert (generated["verdict"], row["verdict"]) == ("generate", "likelihood")
    assert generated["verdicts"] == 0 and row["verdicts"] == 6  # the word-problem model never writes PASS or FAIL
    assert row["auc"] is not None and 0 <= row["auc"] <= 1
    assert row["outputs"] == 6 and row["rule_passes"] == 3
    assert row["verdicts"] + row["no_verdict"] == 6 and 0 <= row["agreement"] <= 1
    assert row["seconds_per_verdict"] > row["cached_seconds_per_verdict"] > 0 and row["speedup"] > 1
    assert said and said[0].startswith(f"judge {REPO / 'data' / 'tiny-base'} (generate): agreement ")
    page = "\n".join(judge_section([generated, row], {"settings": {}}, "Measured here."))
    assert "| bundled tiny model | likelihood | 6 of 6 | " in page and f"{row['agreement']:.1%}" in page
