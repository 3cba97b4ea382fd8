"""The usually-right scenario's generator: its slice shares are the ones bench/README.md states, its rows carry
only the demo's fields, its slice labels say how a row was drawn, and its expected outputs pass the demo's rules."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from refinery.rules import check_one, load_rules

N = 5000  # rows per set for the share checks
DEMO_FIELDS = {"input", "output", "weather", "condition", "emoji", "think", "cue", "answer", "problem", "work"}


def _load(name: str):
    # Loaded by path, as bench/ will: data/demo is not a package.
    spec = importlib.util.spec_from_file_location(name, REPO / "data" / "demo" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scenario = _load("make_usually_right")


@pytest.fixture(scope="module")
def big() -> dict[str, list[dict]]:
    sets = scenario.make_sets(seed_size=N, analysis_size=N, test_size=N)
    return {name: sets[name] for name in ("seed", "eval", "test")}


def tolerance(p: float, n: int) -> float:
    """Four binomial standard deviations: a share outside it would be a wrong generator, not bad luck."""
    return 4 * math.sqrt(p * (1 - p) / n)


def share(rows: list[dict], name: str) -> float:
    return sum(name in scenario.slices(row) for row in rows) / len(rows)


@pytest.mark.parametrize("split", ["seed", "eval", "test"])
def test_each_slice_has_the_share_the_docs_state(big: dict, split: str) -> None:
    rows = big[split]
    tagged = [row for row in rows if row["weather"] is not None]
    assert abs(len(tagged) / N - scenario.TAGGED) <= tolerance(scenario.TAGGED, N)
    for name, p in scenario.HARD_OF_TAGGED.items():
        assert abs(share(tagged, name) - p) <= tolerance(p, len(tagged)), name
        assert not any(name in scenario.slices(row) for row in rows if row["weather"] is None), name
    for name, p in scenario.of_all_inputs().items():
        assert p <= 0.10 + 1e-9, name  # the cap, as stated
        assert abs(share(rows, name) - p) <= tolerance(p, N), name
        assert share(rows, name) <= 0.10 + tolerance(0.10, N), name
    clean = sum(not scenario.slices(row) for row in rows) / N
    assert abs(clean - scenario.no_slice_share()) <= tolerance(scenario.no_slice_share(), N)
    assert round(scenario.no_slice_share(), 3) == 0.619  # the figure the docs give


def test_the_docs_state_the_distribution_the_generator_draws() -> None:
    readme = (REPO / "bench" / "README.md").read_text(encoding="utf-8")
    section = " ".join(readme.split("## The usually-right scenario", 1)[1].split("\n## ", 1)[0].split())
    for name, of_tagged in scenario.HARD_OF_TAGGED.items():
        assert f"| `{name}` |" in section and f"| {of_tagged:.2f} | {scenario.TAGGED * of_tagged:.2f} |" in section
    assert f"| | {scenario.CUE_VARIANT:.2f} |" in section
    for condition, everyday in scenario.EVERYDAY.items():
        row = f"| {condition} | {', '.join(everyday)} | {', '.join(scenario.UNCOMMON[condition])} |"
        assert row in section, row
    assert "61.9 %" in section and f"present in {round(scenario.TAGGED * 100)} % of inputs" in section
    assert all(f"({n}" in section for n in scenario.SIZES.values()) and f'"{scenario.SEED}-seed"' in section


def test_the_phrase_lists_split_the_demo_phrases_and_the_rules_know_every_one() -> None:
    rules = load_rules(REPO / "rules")
    table = next(lookup for lookup in rules.lookups if lookup.name == "weather_emoji")
    demo = _load("make_demo")
    for condition, (emoji, phrases) in demo.CONDITIONS.items():
        split = scenario.EVERYDAY[condition] + scenario.UNCOMMON[condition]
        assert sorted(split) == sorted(phrases) and scenario.UNCOMMON[condition], condition
        for phrase in phrases:  # a missing key would make emoji_correct not apply to the row
            assert table.table.get(table.normalise(phrase)) == emoji, phrase
    everyday = {p.casefold() for phrases in scenario.EVERYDAY.values() for p in phrases}
    assert not everyday & scenario.UNCOMMON_KEYS  # so a row's phrase says which list it came from


def test_rows_carry_the_demo_fields_and_no_slice_label(big: dict) -> None:
    slice_words = set(scenario.SLICES)
    for rows in [*big.values(), scenario.make_sets()["corner"]]:
        for row in rows:
            assert set(row) == DEMO_FIELDS
            assert not slice_words & {str(value) for value in row.values()}


def test_slice_labels_agree_with_how_the_row_was_drawn(big: dict) -> None:
    demo = _load("make_demo")
    for row in big["eval"]:
        labels = set(scenario.slices(row))
        cue = row["cue"]
        assert ("cue_variant" in labels) == (cue is not None and cue != "use thinking.")
        assert cue is None or cue in demo.CUES
        if row["weather"] is None:
            assert "<weather>" not in row["input"] and not labels - {"cue_variant"}
            continue
        word = re.search(r"<weather>(.*?)</weather>", row["input"]).group(1)
        marks = [m for m in scenario.MARKS if word.endswith(m)] if "punctuation" in labels else []
        mark = max(marks, key=len, default="")  # "!!" ends with "!" too
        assert bool(mark) == ("punctuation" in labels)
        phrase = word[:len(word) - len(mark)]
        assert not re.search(r"\W$", phrase)  # without the label, nothing touches the word
        listed = scenario.UNCOMMON if "unseen_phrase" in labels else scenario.EVERYDAY
        shown = [p.upper() if "capitals" in labels else p for p in listed[row["condition"]]]
        assert phrase in shown, (phrase, labels)
        assert ("capitals" not in labels) or phrase == phrase.upper() != phrase.lower()
        assert (row["condition"] in scenario.RARE) == ("rare_condition" in labels)
        assert row["input"].endswith("</weather>") == ("tag_after" in labels)
        assert row["input"].startswith("<weather>") == ("tag_after" not in labels)
        assert row["output"].endswith(f"<display_weather>{demo.CONDITIONS[row['condition']][0]}</display_weather>")


def test_every_expected_output_passes_the_demo_rules() -> None:
    rules = load_rules(REPO / "rules")
    sets = scenario.make_sets()
    for row in [row for rows in sets.values() for row in rows]:
        verdicts = {check.name: check_one(check, input=row["input"], prediction=row["output"],
                                          expected=row["output"], fields=row, strict=True) for check in rules.checks}
        assert False not in verdicts.values(), (row["input"], verdicts)
        # The emoji check applies to every tagged row: the lookup knows its weather word.
        assert (verdicts["emoji_correct"] is True) == (row["weather"] is not None), row["input"]
        assert verdicts["answer_correct"] is True and verdicts["format_exact"] is True


def test_the_same_seed_gives_the_same_rows_and_each_set_has_its_own_stream() -> None:
    first = scenario.make_sets()
    assert scenario.make_sets() == first
    assert scenario.make_sets(seed=12)["seed"] != first["seed"]
    inputs = {name: {row["input"] for row in rows} for name, rows in first.items()}
    for a in inputs:
        for b in inputs:
            assert a == b or not inputs[a] & inputs[b], (a, b)  # no shared input: ingesting drops nothing
    assert all(len(inputs[name]) == len(first[name]) for name in first)
    # One set's size leaves the others' rows as they are.
    resized = scenario.make_sets(seed_size=40, analysis_size=7)
    assert resized["seed"] == first["seed"][:40] and resized["eval"] == first["eval"][:7]
    assert resized["test"] == first["test"] and resized["corner"] == first["corner"]


def test_the_script_writes_the_committed_files(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO / "data" / "demo" / "make_usually_right.py"), "--out",
                          str(tmp_path)], capture_output=True, text=True, check=True)
    names = ["seed", "eval", "test", "corner", "slices"]
    assert sorted(path.stem for path in tmp_path.glob("*.jsonl")) == sorted(names), run.stdout
    for name in names:  # the committed files are what the generator makes
        written = (tmp_path / f"{name}.jsonl").read_bytes()
        assert written == (REPO / "data" / "demo" / "usually-right" / f"{name}.jsonl").read_bytes(), name
    labels = [json.loads(line) for line in (tmp_path / "slices.jsonl").read_text(encoding="utf-8").splitlines()]
    sets = scenario.make_sets()
    assert [(r["set"], r["input"]) for r in labels] == [(n, row["input"]) for n, rows in sets.items() for row in rows]
    assert [r["slices"] for r in labels] == [scenario.slices(row) for rows in sets.values() for row in rows]
