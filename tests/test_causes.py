"""One pattern per cause: planted causes, two behind one check, come back as patterns of their own (real MiniLM)."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from conftest import REPO

from refinery.stages.analyze import MiniLMEmbedder, analyze
from refinery.stages.hypotheses import (
    UNSEEN,
    all_statement,
    collect_words,
    find_causes,
    input_features,
    score_groups,
    tag_positions,
    unseen_inside,
    unseen_words,
)

SEVERITIES = {"display_weather_present": 3, "display_weather_absent": 3, "emoji_correct": 2, "think_present": 2,
              "think_absent": 2, "answer_correct": 3, "format_exact": 1}
HELD_OUT = {"fog", "snow"}  # conditions whose words the "training" inputs never show
CARRIER_RATE, BACKGROUND = 0.8, 0.03


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def planted_cases(n: int = 1000, seed: int = 1) -> tuple[pl.DataFrame, set[str]]:
    """n analysis cases from the demo's eval and test rows, a quarter of the weather tags moved to the end, with
    failures planted by cause; each failing (example, check) is labelled with the cause that made it fail."""
    rng = np.random.default_rng(seed)
    rows = [json.loads(line) for name in ("eval", "test")
            for line in (REPO / "data" / "demo" / f"{name}.jsonl").read_text().splitlines()][:n]
    known = collect_words([r["problem"] for r in rows] + [r["cue"] or "" for r in rows]
                          + [r["weather"] for r in rows if r["weather"] and r["condition"] not in HELD_OUT])
    cases = [_plant(f"x{i:04d}", row, rng) for i, row in enumerate(rows)]
    return pl.DataFrame(cases, schema={"example_id": pl.String, "input": pl.String, "fields": pl.String,
                                       "applicable": pl.List(pl.String), "failing": pl.List(pl.String),
                                       "truth": pl.String}), known


def _plant(example_id: str, row: dict, rng: np.random.Generator) -> dict:
    text, tagged, truth = row["input"], row["weather"] is not None, {}
    if tagged and rng.random() < 0.5:  # the demo's tags are mostly punctuated: half lose it, so causes overlap less
        text = re.sub(r"[^\w\s]+\s*</weather>", "</weather>", re.sub(r"\s*:\)\s*</weather>", "</weather>", text))
    if tagged and rng.random() < 0.25:
        tag = re.search(r"<weather>.*?</weather>", text).group(0)
        text = f"{text.replace(tag, '').strip()} {tag}"
    cause = {
        "emoji_correct": ("A: punctuation" if re.search(r"[!?.,:;)]\s*</weather>", text) else None,
                          "B: unseen word" if row["condition"] in HELD_OUT else None),
        "display_weather_present": ("C: tag at the end" if text.endswith("</weather>") else None,),
        "think_present": ("D: cue in capitals" if row["cue"] and row["cue"].isupper() else None,),
        "answer_correct": (), "format_exact": (), "think_absent": ()}
    applicable = ["answer_correct", "format_exact", "think_present" if row["cue"] else "think_absent"]
    applicable += ["display_weather_present", "emoji_correct"] if tagged else ["display_weather_absent"]
    for check in applicable:
        if check == "display_weather_absent":
            truth[check] = "E: every untagged input"
            continue
        fired = [c for c in cause[check] if c and rng.random() < CARRIER_RATE]
        if fired or (check != "format_exact" and rng.random() < BACKGROUND):
            truth[check] = fired[0] if fired else "noise"
    fields = {k: v for k, v in row.items() if k not in ("input", "output", "weather")}  # weather: now edited
    return {"example_id": example_id, "input": text, "fields": json.dumps(fields), "applicable": applicable,
            "failing": sorted(truth), "truth": json.dumps(truth)}


def purity_and_coverage(pattern, truth: dict[str, dict[str, str]], cause: str) -> tuple[float, float]:
    check = next(iter(pattern.checks))
    from_cause = sum(truth[m].get(check) == cause for m in pattern.members)
    planted = sum(t.get(check) == cause for t in truth.values())
    return from_cause / pattern.size, from_cause / max(planted, 1)


@pytest.fixture(scope="module")
def planted(embedder):
    cases, known = planted_cases()
    vectors = embedder.encode(cases["input"].to_list())
    failing = (cases["failing"].list.len() > 0).to_numpy()
    failures, passing = cases.filter(pl.Series(failing)), cases.filter(pl.Series(~failing))
    scopes = {"display_weather_absent": "inputs without '<weather>'",
              "display_weather_present": "inputs with '<weather>'", "emoji_correct": "inputs with '<weather>'"}
    patterns = analyze(failures, passing, embeddings=vectors[failing], passing_embeddings=vectors[~failing],
                       severities=SEVERITIES, seed=0, scopes=scopes, known_words=known)
    truth = {r["example_id"]: json.loads(r["truth"]) for r in cases.iter_rows(named=True)}
    return patterns, truth, cases


@pytest.mark.parametrize("cause", ["A: punctuation", "B: unseen word", "C: tag at the end", "D: cue in capitals",
                                   "E: every untagged input"])
def test_each_planted_cause_is_its_own_pattern(planted, cause) -> None:
    patterns, truth, _ = planted
    figures = [(p.label, *purity_and_coverage(p, truth, cause)) for p in patterns]
    best = max(figures, key=lambda f: (f[1] >= 0.7, f[2]))
    assert best[1] >= 0.7 and best[2] >= 0.5, figures


def test_two_causes_behind_one_check_are_named_apart(planted) -> None:
    patterns, truth, cases = planted
    emoji = [p for p in patterns if p.kind == "cause" and next(iter(p.checks)) == "emoji_correct"]
    assert emoji[0].feature == "punctuation just before a closing tag" and emoji[1].feature.startswith(UNSEEN)
    unseen = emoji[1]
    assert unseen.carrying == unseen.size and f"{unseen.size} of {unseen.size} members carry it" in unseen.statement
    named = re.search(r"\(unseen: (.*)\)$", unseen.statement).group(1)
    assert {w.split()[0] for w in named.split(", ")} <= {"fog", "foggy", "mist", "misty", "snow", "snowy",
                                                         "snowing", "flurries"}, named
    untagged = cases.filter(pl.col("applicable").list.contains("display_weather_absent")).height
    everything = [p for p in patterns if p.kind == "all"]
    assert [p.statement for p in everything] == [
        f"display_weather_absent fails on all {untagged} inputs without '<weather>'"]


def test_noise_is_not_stated_as_a_cause(planted) -> None:
    patterns, truth, _ = planted
    for p in patterns:
        check = next(iter(p.checks))
        noise = sum(truth[m].get(check) == "noise" for m in p.members) / p.size
        assert p.kind == "cluster" or noise < 0.5, (p.label, p.statement)
    answer = [p for p in patterns if next(iter(p.checks)) == "answer_correct"]
    assert answer and all(p.kind == "cluster" and p.p is not None for p in answer)


def test_patterns_rank_by_failing_mass(planted) -> None:
    patterns, _, _ = planted
    assert [p.rank for p in patterns] == list(range(1, len(patterns) + 1))
    assert all(a.score >= b.score for a, b in zip(patterns, patterns[1:]))
    for p in patterns:
        assert len(p.members) == len(p.distances) == p.size and p.representatives == p.members[:3]
        assert p.distances == sorted(p.distances)


def test_greedy_finder_names_two_causes_of_one_check_in_order() -> None:
    # 100 trials: x on 30 (27 fail), y on 20 (16 fail), neither on 50 (2 fail); one trial carries both and fails.
    features = [{"x"}] * 30 + [{"y"}] * 20 + [set()] * 50
    failed = [True] * 27 + [False] * 3 + [True] * 16 + [False] * 4 + [True] * 2 + [False] * 48
    features[0] = {"x", "y"}
    causes = find_causes(features, failed)
    assert [c.feature for c in causes] == ["x", "y"]
    assert causes[0].members == list(range(27)) and causes[1].members == list(range(30, 46))
    second = causes[1].test  # tested on the 70 trials left once x's carriers are set aside
    assert (second["with_failed"], second["with_total"], second["without_failed"]) == (16, 20, 2)
    assert causes[1].set_aside == ["x"] and second["q"] < 0.05


def test_tag_position_is_judged_by_the_text_around_it() -> None:
    assert tag_positions("<weather>Sunny!</weather> Bob has 2 cards.") == {"the <weather> tag at the start"}
    assert tag_positions("Bob has 2 cards. <weather>Sunny!</weather>  ") == {"the <weather> tag at the end"}
    assert tag_positions("Bob has <weather>Sunny</weather> 2 cards.") == {"the <weather> tag in the middle"}
    assert "the <weather> tag at the end" in input_features("use thinking. Bob has 2. <weather>Rain</weather>")


def test_unseen_word_is_one_feature() -> None:
    known = collect_words(["<weather>Sunny</weather> Bob has 2 cards.", "Rain. Bob has 3 cards."])
    assert known == {"sunny", "bob", "has", "cards", "rain"}
    text = "<weather>Drizzle!</weather> Bob has 2 CARDS."
    assert UNSEEN in input_features(text, known_words=known)
    assert UNSEEN not in input_features(text.replace("Drizzle", "Rain"), known_words=known)
    assert UNSEEN not in input_features(text)  # no known words, no feature
    assert not any("drizzle" in f and "never" in f for f in input_features(text, known_words=known))
    # and one for each tag's text: a new value of a field apart from new words elsewhere in the input
    inside = unseen_inside("weather")
    assert inside == "a word never seen in training inside <weather>"
    assert inside in input_features(text, known_words=known)
    elsewhere = "<weather>Sunny</weather> Ana has 2 cards."
    assert UNSEEN in input_features(elsewhere, known_words=known)
    assert inside not in input_features(elsewhere, known_words=known)
    assert unseen_words(text + " Ana", known, inside) == ["drizzle"]


def test_all_fail_statement_and_pattern() -> None:
    assert all_statement("display_weather_absent", 133, "inputs without '<weather>'") == (
        "display_weather_absent fails on all 133 inputs without '<weather>'")
    rows = pl.DataFrame({"example_id": [f"e{i}" for i in range(6)], "input": ["Bob has 2 cards."] * 6,
                         "failing": [["display_weather_absent"]] * 4 + [[]] * 2,
                         "applicable": [["display_weather_absent"]] * 4 + [["display_weather_present"]] * 2})
    patterns = analyze(rows.head(4), rows.tail(2), embeddings=None, severities={})
    assert [(p.kind, p.label, p.statement, p.size) for p in patterns] == [
        ("all", "display_weather_absent / all", "display_weather_absent fails on all 4 inputs it applies to", 4)]


def test_group_test_matches_fisher_exact() -> None:
    from scipy.stats import fisher_exact

    rows = score_groups([8, 3], [10, 30], [11, 11], [40, 40]).to_dicts()
    assert rows[0]["p"] == pytest.approx(fisher_exact([[8, 2], [3, 27]], alternative="greater").pvalue)
    assert rows[0]["q"] == pytest.approx(min(1.0, 2 * rows[0]["p"]))
    assert (rows[1]["rate_with"], rows[1]["rate_without"]) == (0.1, 0.8)
    assert rows[1]["p"] == pytest.approx(fisher_exact([[3, 27], [8, 2]], alternative="greater").pvalue)


def test_a_scatter_of_failures_makes_clusters_marked_not_significant(embedder) -> None:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "eval.jsonl").read_text().splitlines()][:240]
    bad = set(np.random.default_rng(3).choice(len(rows), 12, replace=False).tolist())
    cases = pl.DataFrame({"example_id": [f"s{i}" for i in range(len(rows))], "input": [r["input"] for r in rows],
                          "failing": [["answer_correct"] if i in bad else [] for i in range(len(rows))]})
    vectors = embedder.encode(cases["input"].to_list())
    failing = np.array([i in bad for i in range(len(rows))])
    patterns = analyze(cases.filter(pl.Series(failing)), cases.filter(pl.Series(~failing)),
                       embeddings=vectors[failing], passing_embeddings=vectors[~failing], severities={})
    assert patterns and all(p.kind == "cluster" for p in patterns)
    assert sum(p.size for p in patterns) == 12
    assert all(p.significant is False and p.q >= 0.05 for p in patterns)
    assert all(p.statement.endswith("; not significant") for p in patterns), [p.statement for p in patterns]
