"""Preference pairs from a round's own failures: the expected output chosen, the model's output rejected.

A round's pairs come from its failing analysis examples and from the counterexamples it stored that its model
gets wrong; never from a test or corner example, nor from a prompt that is (or nearly is) one of their inputs.
`[train] objective = "sft+dpo"` trains on the active pairs of earlier rounds after each round's SFT.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from refinery.store import ROUND_WAIT as STORE_WAIT
from refinery.store import Store, content_hash


@dataclass
class Pair:
    """One preference pair and where it came from."""

    example_id: str
    prompt: str  # the input as stored; rendered with the model's prompt format at training time
    chosen: str
    rejected: str
    source: str  # analysis | counterexample
    checks: list[str] = field(default_factory=list)  # the checks the rejected output fails
    pattern: str | None = None  # the round's cluster the example is a member of (the worst, when several)
    status: str = "active"  # active | leak | duplicate
    detail: str = ""

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.prompt}\x00{self.chosen}\x00{self.rejected}".encode()).hexdigest()


def analysis_pairs(failures: pl.DataFrame, clusters: list) -> list[Pair]:
    """A pair per failing analysis example (example_id, input, expected, prediction, failing), its output rejected."""
    pattern_of = _patterns(clusters)
    return [Pair(r["example_id"], r["input"], r["expected"], r["prediction"], "analysis", list(r["failing"]),
                 pattern_of.get(r["example_id"]))
            for r in failures.iter_rows(named=True) if r["expected"] != r["prediction"]]


def counterexample_pairs(project, rules, candidates: list, *, model_path: str, adapter: str | None) -> list[Pair]:
    """A pair per counterexample stored this round that the round's model gets wrong: its output, generated with
    the round's weights, rejected."""
    from refinery.stages import evaluate, infer

    stored = [c for c in candidates if c.outcome == "stored"]
    if not stored:
        return []
    outputs = infer.generate([c.input for c in stored], base_model=model_path, settings=project.config.infer,
                             adapter=adapter)["output"]
    rows = pl.DataFrame({"example_id": [content_hash(c.input, c.output)[:16] for c in stored],
                         "variant": [""] * len(stored), "input": [c.input for c in stored],
                         "expected": [c.output for c in stored],
                         "fields": [json.dumps(c.fields, ensure_ascii=False) for c in stored],
                         "prediction": outputs})
    results = evaluate.run_checks(rules, rows)
    failing = results.filter(pl.col("passed") == False).group_by("example_id").agg(  # noqa: E712
        pl.col("check_name").sort())
    by_id = dict(failing.iter_rows())
    return [Pair(r["example_id"], r["input"], r["expected"], r["prediction"], "counterexample",
                 by_id[r["example_id"]], c.cluster_id)
            for c, r in zip(stored, rows.iter_rows(named=True), strict=True)
            if r["example_id"] in by_id and r["expected"] != r["prediction"]]


def vet_pairs(store: Store, pairs: list[Pair], *, embedder, near_test: float) -> list[Pair]:
    """Mark each pair leak (its prompt is a test or corner input, or has cosine >= `near_test` to one) or
    duplicate (the same prompt, chosen and rejected as a pair stored or kept before it); the rest stay active."""
    from refinery.stages.analyze import embed_examples

    held = store.frame("SELECT id AS example_id, input AS text FROM examples WHERE split IN ('test', 'corner') "
                       "AND status = 'active' ORDER BY id")
    seen = set(store.frame("SELECT pair_hash FROM pairs")["pair_hash"])
    texts = set(held["text"])
    if pairs and held.height:
        prompts = pl.DataFrame({"example_id": [p.example_id for p in pairs], "text": [p.prompt for p in pairs]})
        nearest = _nearest(embed_examples(store, prompts, embedder=embedder),
                           embed_examples(store, held, embedder=embedder))
    else:
        nearest = [(0.0, -1)] * len(pairs)
    for pair, (similarity, at) in zip(pairs, nearest, strict=True):
        if pair.prompt in texts:
            pair.status, pair.detail = "leak", "same input as a test or corner example"
        elif similarity >= near_test:
            pair.status = "leak"
            pair.detail = f"near-duplicate of {held['example_id'][at]} (cosine {similarity:.3f} >= {near_test})"
        elif pair.digest in seen:
            pair.status, pair.detail = "duplicate", "the same pair is already stored"
        seen.add(pair.digest)
    return pairs


def collect_pairs(project, rules, *, failures: pl.DataFrame, clusters: list, candidates: list, model_path: str,
                  adapter: str | None, embedder) -> list[Pair]:
    """The round's pairs, vetted: from its failing analysis examples, then from its stored counterexamples."""
    pairs = analysis_pairs(failures, clusters)
    pairs += counterexample_pairs(project, rules, candidates, model_path=model_path, adapter=adapter)
    with Store(project.store_path, wait=STORE_WAIT) as store:
        return vet_pairs(store, pairs, embedder=embedder, near_test=project.config.generate.near_test)


def insert_pairs(con, pairs: list[Pair], number: int) -> None:
    """Every vetted pair of round `number`, active or not, with its lineage."""
    if not pairs:
        return
    con.executemany("INSERT INTO pairs (round, example_id, pattern, checks, source, prompt, chosen, rejected, "
                    "pair_hash, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [[number, p.example_id, p.pattern, json.dumps(p.checks), p.source, p.prompt, p.chosen,
                      p.rejected, p.digest, p.status, p.detail or None] for p in pairs])


def active_pairs(store: Store, *, before: int | None = None) -> pl.DataFrame:
    """The active pairs (id, round, prompt, chosen, rejected, ...), of rounds before `before` when given."""
    where = "" if before is None else "AND round < ?"
    return store.frame(f"SELECT id, round, example_id, pattern, checks, source, prompt, chosen, rejected "
                       f"FROM pairs WHERE status = 'active' {where} ORDER BY id", [] if before is None else [before])


def _patterns(clusters: list) -> dict[str, str]:
    """Example id -> the id of the first (worst-ranked) cluster it is a member of."""
    out: dict[str, str] = {}
    for cluster in sorted(clusters, key=lambda c: c.rank):
        for member in cluster.members:
            out.setdefault(member, cluster.id)
    return out


def _nearest(vectors: Any, held: Any) -> list[tuple[float, int]]:
    """Per row of `vectors`, the highest cosine similarity to a row of `held` and that row's index."""
    import numpy as np

    def unit(m: Any) -> Any:
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    similarity = unit(vectors) @ unit(held).T
    best = similarity.argmax(axis=1)
    return [(float(similarity[i, j]), int(j)) for i, j in enumerate(best)]
