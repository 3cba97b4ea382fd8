"""Drift: what is new in production inputs against what the model was trained and evaluated on (the inputs people
brought to the train and analysis splits: generated counterexamples are left out, their mix being skewed on
purpose), named with evidence, and a sample of it fed back into the analysis split.

Three views of one comparison. Features: every input feature the analysis reads (words, word pairs, character
3-grams, tags and where they stand, cues, punctuation, capitals, length) plus years, each one's share of production
inputs against the reference, a one-sided Fisher test (more common in production) and Benjamini-Hochberg across
features; a feature the reference never has is named as never seen. Embeddings: an MMD two-sample test with a
permutation p-value between samples of the two, and the production inputs farther from every reference input than
nearly all reference inputs are from each other, clustered. Groups: the drifting features found greedily, each
setting its carriers aside (as the analysis finds causes), then the far inputs no feature explains.

Entry point: `detect_drift(project, paths, ...)`, a `DriftReport`; `record_drift(...)` stores it and a sample.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from refinery.errors import DataError
from refinery.ingest import read_rows
from refinery.project import Project
from refinery.rules import RuleSet, load_rules
from refinery.stages.hypotheses import format_p, read_features, score_features
from refinery.store import ROUND_WAIT, Store

YEAR = re.compile(r"(?<!\d)(19\d\d|20\d\d)(?!\d)")
ALPHA = 0.05
SAMPLE = 1000  # inputs a side in the embedding test: plenty for MMD, and it bounds the cost at any file size
FEATURE_SAMPLE = 20_000  # production inputs in the feature test: a 0.5 % share is 100 of them; bounds the cost
PERMUTATIONS = 200
FAR_QUANTILE = 0.01  # "far": less similar to its nearest reference input than 99 % of reference inputs are to theirs
MAX_GROUPS = 8
MIN_RATIO = 1.5  # a group's feature is at least this many times as common in production as in the reference


@dataclass
class DriftGroup:
    """Production inputs that drift together: the carriers of one drifting feature (kind "feature"), or far inputs
    close to each other (kind "far")."""

    kind: str
    label: str
    statement: str
    size: int
    share: float  # of all production inputs
    examples: list[str]
    members: list[int] = field(default_factory=list)  # positions among the production rows


@dataclass
class DriftReport:
    """One drift run: the figures of each view, and what stands out."""

    files: list[str]
    production: int
    sampled: int  # production inputs in the feature test: all of them, or a seeded sample of FEATURE_SAMPLE
    reference: int
    features: list[dict[str, Any]]  # significant drifting features, strongest first
    tested: int  # distinct features tested
    embedding: dict[str, Any]  # mmd, p, sample sizes; far share, expected share, p
    groups: list[DriftGroup]
    checks: list[dict[str, Any]]  # rule checks on production outputs against the last round's test split
    periods: list[dict[str, Any]]  # per period (timestamps given): inputs, share in drifting groups, far share
    map: dict[str, Any]  # 2-D coordinates of the embedding samples, for the report
    run: int | None = None
    added: int = 0
    pending: int = 0

    @property
    def drifted(self) -> bool:
        return bool(self.features) or self.embedding.get("p", 1.0) < ALPHA

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for group in out["groups"]:
            group.pop("members")
        return {**out, "drifted": self.drifted}


def read_production(paths: list[str | Path], *, project: Project) -> pl.DataFrame:
    """Production rows from JSONL, CSV or Parquet files: input (the project's [data] input_column), and when given
    output (what the model answered), expected (a person's expected output), timestamp (and `at`, parsed); the other
    columns as fields (JSON, kept with an input `--add` stores, as ingest keeps them); origin is file:line."""
    frames = []
    for path in paths:
        rows = read_rows(Path(path), data=project.config.data, need_output=False)
        extra = [json.loads(f) if f else {} for f in rows["fields"]]
        for name in ("expected", "timestamp"):
            values = [e.pop(name, None) for e in extra]
            rows = rows.with_columns(pl.Series(name, [None if v is None else str(v) for v in values],
                                               dtype=pl.String))
        rows = rows.with_columns(pl.Series("fields", [json.dumps(e, ensure_ascii=False) if e else None
                                                      for e in extra], dtype=pl.String))
        empty = rows.filter(pl.col("input").is_null() | (pl.col("input").str.strip_chars() == ""))
        if empty.height:
            raise DataError(f"{empty['origin'][0]}: no input (expected text in the "
                            f"'{project.config.data.input_column}' field). Drop the row, or fill it in.")
        frames.append(rows.select("input", "output", "expected", "timestamp", "fields", "origin"))
    production = pl.concat(frames)
    parsed = production.with_columns(pl.col("timestamp").str.to_datetime(strict=False).alias("at"))
    bad = parsed.filter(pl.col("timestamp").is_not_null() & pl.col("at").is_null())
    if bad.height:
        raise DataError(f"{bad['origin'][0]}: timestamp {bad['timestamp'][0]!r} is not a date or time (expected ISO "
                        f"8601, like 2026-03-01 or 2026-03-01T14:05:00). Fix it, or drop the column.")
    return parsed


def detect_drift(project: Project, paths: list[str | Path], *, embedder: Any = None,
                 on_progress: Callable[[str], None] | None = None) -> tuple[DriftReport, pl.DataFrame]:
    """Compare the production inputs in `paths` with the project's train and analysis inputs: the report, and the
    production rows with the group each belongs to (`group`, None for none)."""
    from refinery.stages.analyze import make_embedder

    say = on_progress or (lambda _: None)
    production = read_production(paths, project=project)
    with Store(project.store_path, wait=ROUND_WAIT) as store:
        # What people brought, not the loop's counterexamples: their mix is skewed on purpose (more cues, more
        # punctuation), and every production share would differ from it.
        reference = store.frame("SELECT input FROM examples WHERE status = 'active' AND split IN ('train', "
                                "'analysis') AND source <> 'generated' ORDER BY id")["input"].to_list()
    if not reference:
        raise DataError("the store has no train or analysis examples to compare with: ingest the data the model "
                        "was trained and evaluated on first (`refinery ingest FILE`).")
    rules = load_rules(project.rules_dir)
    texts = production["input"].to_list()
    looked = _sample(len(texts), np.random.default_rng(project.config.core.seed), size=FEATURE_SAMPLE)
    say(f"features of {len(looked):,} production inputs" + (f" (a sample of {len(texts):,})" if len(looked) <
                                                            len(texts) else "") + f" and {len(reference):,} reference")
    features_of = _features({texts[i] for i in looked} | set(reference), cues=rules.cues())
    prod_features = [features_of[texts[i]] for i in looked]
    ref_features = [features_of[t] for t in reference]
    tests = score_features([*prod_features, *ref_features], [True] * len(prod_features) + [False] * len(reference))
    drifting = _drifting(tests, len(prod_features), len(ref_features))
    groups = _feature_groups(prod_features, ref_features, [texts[i] for i in looked], first=tests)
    for group in groups:  # positions in the sample, as positions in the file
        group.members = [int(looked[m]) for m in group.members]
    say("embedding samples of both")
    embedder = embedder or make_embedder(project.config.analyze.embedder, root=project.root)
    embedding, far, far_vectors, coords = _embedding_view(project, embedder, texts, reference,
                                                          seed=project.config.core.seed)
    groups += _far_groups(far, far_vectors, texts, groups, significant=embedding["far_p"] < ALPHA,
                          seed=project.config.core.seed)
    member_of = {m: g.label for g in groups for m in g.members}
    production = production.with_columns(
        pl.Series("group", [member_of.get(i) for i in range(len(texts))], dtype=pl.String),
        pl.Series("looked", np.isin(np.arange(len(texts)), looked)))
    report = DriftReport(
        files=[str(p) for p in paths], production=production.height, sampled=len(looked), reference=len(reference),
        features=drifting, tested=tests.height, embedding=embedding, groups=groups,
        checks=_output_checks(project, rules, production), periods=_periods(production, far), map=coords)
    return report, production


def _features(texts: set[str], *, cues: Any) -> dict[str, frozenset[str]]:
    """Each distinct text's features (computed once however often it repeats), years among them."""
    ordered = sorted(texts)
    return {t: frozenset(features | {f"the year {y}" for y in YEAR.findall(t)})
            for t, features in zip(ordered, read_features(ordered, cues=cues), strict=True)}


def _drifting(tests: pl.DataFrame, prod: int, ref: int) -> list[dict[str, Any]]:
    """From the feature tests (`score_features`, production as "failed"; `prod` and `ref` inputs), the features
    more common in production (q < ALPHA), strongest first, each with its shares and whether the reference ever
    has it. Features with the same counts ('show your', 'your reasoning', the characters 'rea') are one row, named
    by the most readable of them, the others in `same`."""
    significant = tests.filter((pl.col("q") < ALPHA) & (pl.col("rate_with") > pl.col("rate_without")))
    rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in significant.iter_rows(named=True):
        rows.setdefault((row["with_failed"], row["with_total"]), []).append(row)
    out = []
    for (in_prod, total), same in rows.items():
        names = sorted((r["feature"] for r in same), key=readability)
        in_ref = total - in_prod
        out.append({"feature": names[0], "same": names[1:], "production": in_prod,
                    "production_share": in_prod / prod, "reference": in_ref, "reference_share": in_ref / ref,
                    "never_seen": in_ref == 0, "p": same[0]["p"], "q": same[0]["q"]})
    out.sort(key=lambda f: (-(f["production_share"] - f["reference_share"]), f["p"], f["feature"]))
    return out


def readability(feature: str) -> tuple[int, str]:
    """How a person reads a feature, best first: a word, a word pair, a tag or cue, punctuation, 3-grams last."""
    order = ("the word ", "'", "a <", "the <", "the cue", "the year", "the characters ")
    rank = next((n for n, start in enumerate(order) if feature.startswith(start)), len(order) - 1)
    if " touches punctuation" in feature or " in capitals" in feature:
        rank = 4
    return rank, feature


def _feature_groups(prod: list[frozenset[str]], ref: list[frozenset[str]], texts: list[str], *,
                    first: pl.DataFrame) -> list[DriftGroup]:
    """The new parts of production, found greedily as the analysis finds causes: the drifting feature with the
    strongest evidence (smallest p) among those at least MIN_RATIO times as common in production as in the
    reference (a shift of a common feature, 66 % to 72 %, is listed among the features but is not a group of its
    own), its carriers set aside, the test again on the rest. `first`: the tests on every input, already run."""
    left = np.ones(len(prod), dtype=bool)
    least = max(5, len(prod) // 200)
    groups: list[DriftGroup] = []
    while len(groups) < MAX_GROUPS and left.any():
        index = np.flatnonzero(left)
        tests = first if not groups else score_features([*(prod[i] for i in index), *ref],
                                                        [True] * len(index) + [False] * len(ref))
        share, ref_share = pl.col("with_failed") / len(index), (pl.col("with_total") - pl.col("with_failed")) / len(ref)
        found = tests.filter((pl.col("q") < ALPHA) & (pl.col("with_failed") >= least)
                             & (share >= MIN_RATIO * ref_share) & (share > ref_share))
        if found.is_empty():
            break
        best = min(found.iter_rows(named=True), key=lambda r: (r["p"], *readability(r["feature"])))
        same = found.filter((pl.col("with_failed") == best["with_failed"])
                            & (pl.col("with_total") == best["with_total"]))
        name = min(same["feature"], key=readability)  # the same counts, as a person reads them best
        members = [int(i) for i in index if name in prod[i]]
        in_ref = best["with_total"] - best["with_failed"]
        seen = "never in the reference" if in_ref == 0 else f"{in_ref / len(ref):.1%} of reference inputs"
        which = "production inputs" if not groups else "the production inputs no group above holds"
        statement = (f"{name}: {len(members) / len(index):.1%} of {which} against {seen} "
                     f"({format_p(best['p'])}, q = {best['q']:.2g})")
        groups.append(DriftGroup("feature", name, statement, len(members), len(members) / len(prod),
                                 _examples(texts, members), members))
        left[members] = False
    return groups


def _examples(texts: list[str], members: list[int], n: int = 3) -> list[str]:
    return list(dict.fromkeys(texts[m] for m in members))[:n]


def _embedding_view(project: Project, embedder: Any, texts: list[str], reference: list[str], *,
                    seed: int) -> tuple[dict[str, Any], list[int], np.ndarray, dict[str, Any]]:
    """MMD between seeded samples of production and reference inputs (permutation p), and the production inputs
    of the sample that are far from every reference input (their rows, their vectors). Vectors are cached in the
    store by text."""
    rng = np.random.default_rng(seed)
    prod_index = _sample(len(texts), rng)
    ref_index = _sample(len(reference), rng)
    with Store(project.store_path, wait=ROUND_WAIT) as store:
        vectors = _embed(store, embedder, [texts[i] for i in prod_index] + [reference[i] for i in ref_index])
    prod, ref = vectors[:len(prod_index)], vectors[len(prod_index):]
    mmd, p = mmd_test(prod, ref, rng=rng)
    nearest_ref = (prod @ ref.T).max(axis=1)
    within = ref @ ref.T
    np.fill_diagonal(within, -np.inf)
    threshold = float(np.quantile(within.max(axis=1), FAR_QUANTILE)) if len(ref) > 1 else -1.0
    far_mask = nearest_ref < threshold
    far = [int(prod_index[i]) for i in np.flatnonzero(far_mask)]
    from scipy.stats import binomtest

    far_p = binomtest(int(far_mask.sum()), len(prod_index), FAR_QUANTILE, alternative="greater").pvalue \
        if len(prod_index) else 1.0
    view = {"mmd": mmd, "p": p, "permutations": PERMUTATIONS, "production_sample": len(prod_index),
            "reference_sample": len(ref_index), "far": len(far), "far_share": len(far) / max(1, len(prod_index)),
            "far_expected": FAR_QUANTILE, "far_p": float(far_p), "far_threshold": threshold}
    return view, far, prod[far_mask], _map(prod, ref, far_mask)


def _sample(n: int, rng: np.random.Generator, *, size: int = SAMPLE) -> np.ndarray:
    """Positions of a seeded sample of `size` of `n` rows, in order (all of them when there are no more)."""
    return np.sort(rng.choice(n, size=size, replace=False)) if n > size else np.arange(n)


def _embed(store: Store, embedder: Any, texts: list[str]) -> np.ndarray:
    from refinery.stages.analyze import embed_examples

    ids = ["text:" + hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
    unique = pl.DataFrame({"example_id": ids, "text": texts}).unique("example_id", keep="first", maintain_order=True)
    vectors = embed_examples(store, unique, embedder=embedder, text_kind="drift")
    row = {i: n for n, i in enumerate(unique["example_id"])}
    return vectors[[row[i] for i in ids]]


def mmd_test(x: np.ndarray, y: np.ndarray, *, rng: np.random.Generator,
             permutations: int = PERMUTATIONS) -> tuple[float, float]:
    """The squared maximum mean discrepancy between two samples (a Gaussian kernel, the median distance as its
    width) and its permutation p-value: how often shuffling the labels gives an MMD as large."""
    if len(x) < 2 or len(y) < 2:
        return 0.0, 1.0
    both = np.vstack([x, y]).astype(np.float64)
    squared = np.maximum(0.0, 2.0 - 2.0 * both @ both.T) if np.allclose(np.linalg.norm(both, axis=1), 1.0) else \
        ((both[:, None, :] - both[None, :, :]) ** 2).sum(-1)
    width = np.median(squared[np.triu_indices(len(both), 1)]) or 1.0
    kernel = np.exp(-squared / width)
    n = len(x)

    def statistic(order: np.ndarray) -> float:
        k = kernel[np.ix_(order, order)]
        kx, ky, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
        m = len(order) - n
        return float((kx.sum() - np.trace(kx)) / (n * (n - 1)) + (ky.sum() - np.trace(ky)) / (m * (m - 1))
                     - 2 * kxy.mean())

    observed = statistic(np.arange(len(both)))
    larger = sum(statistic(rng.permutation(len(both))) >= observed for _ in range(permutations))
    return observed, (larger + 1) / (permutations + 1)


def _map(prod: np.ndarray, ref: np.ndarray, far: np.ndarray) -> dict[str, Any]:
    """Both samples on their first two principal components, for the report's map."""
    both = np.vstack([prod, ref])
    if len(both) < 3:
        return {"production": [], "reference": [], "far": []}
    centred = both - both.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = np.round(centred @ vt[:2].T, 4)
    return {"production": xy[:len(prod)].tolist(), "reference": xy[len(prod):].tolist(),
            "far": [int(i) for i in np.flatnonzero(far)]}


def _far_groups(far: list[int], vectors: np.ndarray, texts: list[str], groups: list[DriftGroup], *,
                significant: bool, seed: int) -> list[DriftGroup]:
    """The far inputs that no drifting feature's group holds, clustered by embedding (k by silhouette), when there
    are more far inputs than chance gives (`significant`)."""
    from refinery.stages.analyze import SilhouetteKMeans

    held = {m for g in groups for m in g.members}
    left = [n for n, i in enumerate(far) if i not in held]
    if not significant or len(left) < 5:
        return []
    labels = SilhouetteKMeans(max_k=min(5, len(left) // 5), seed=seed).fit_predict(vectors[left])
    out = []
    for label in sorted(set(labels.tolist()), key=lambda k: (-(labels == k).sum(), k)):
        members = [far[left[i]] for i in np.flatnonzero(labels == label)]
        example = texts[members[0]]
        out.append(DriftGroup(
            "far", f"far inputs {len(out) + 1}",
            f"{len(members)} production inputs unlike any reference input (less similar to their nearest one than "
            f"{1 - FAR_QUANTILE:.0%} of reference inputs are to theirs), and like each other: "
            f"{example[:80]!r}", len(members), len(members) / len(texts), _examples(texts, members), members))
    return out


def _output_checks(project: Project, rules: RuleSet, production: pl.DataFrame) -> list[dict[str, Any]]:
    """The checks that need no expected output, on the production outputs given, each with its pass rate there and
    on the last finished round's test split."""
    from dataclasses import replace

    from refinery.stages.evaluate import run_checks

    given = production.with_row_index("n").filter(pl.col("output").is_not_null())
    usable = tuple(c for c in rules.checks if c.type in ("regex", "contains", "absent", "json_schema")
                   or (c.type == "equals" and c.lookup))
    if given.is_empty() or not usable:
        return []
    rows = given.select(pl.col("n").cast(pl.String).alias("example_id"), pl.lit("").alias("variant"), "input",
                        pl.lit("").alias("expected"), pl.lit(None, dtype=pl.String).alias("fields"),
                        pl.col("output").alias("prediction"))
    results = run_checks(replace(rules, checks=usable), rows).filter("applies")
    with Store(project.store_path, wait=ROUND_WAIT) as store:
        last = store.frame("""
            SELECT r.check_name, avg(r.passed::INTEGER) AS rate, count(*) AS applies FROM rule_results r
            JOIN examples e ON e.id = r.example_id
            WHERE r.round = (SELECT max(number) FROM rounds WHERE status = 'done' AND number > 0)
                AND e.split = 'test' AND r.variant = '' AND r.applies GROUP BY r.check_name""")
    test = {r["check_name"]: r for r in last.iter_rows(named=True)}
    out = []
    for (name,), group in results.group_by("check_name", maintain_order=True):
        known = test.get(name)
        out.append({"check": name, "applies": group.height, "pass_rate": group["passed"].mean(),
                    "test_pass_rate": known["rate"] if known else None,
                    "test_applies": known["applies"] if known else 0})
    return out


def _periods(production: pl.DataFrame, far: list[int]) -> list[dict[str, Any]]:
    """Per day (per week past two weeks, per month past four months), when timestamps are given: the inputs, the
    share of those in the feature test that fall in a drifting group, and how many of the embedding sample are far."""
    parsed = production.with_row_index("n").filter(pl.col("at").is_not_null())
    if parsed.is_empty():
        return []
    days = (parsed["at"].max() - parsed["at"].min()).days
    every = "1mo" if days > 120 else "1w" if days > 14 else "1d"
    far_set = set(far)
    marked = parsed.with_columns(pl.col("group").is_not_null().alias("drifting"),
                                 pl.col("n").is_in(list(far_set)).alias("far"))
    periods = marked.sort("at").group_by_dynamic("at", every=every, start_by="datapoint").agg(
        pl.len().alias("inputs"), pl.col("drifting").filter(pl.col("looked")).mean().alias("drifting_share"),
        pl.col("far").sum().alias("far"))
    return [{"period": str(r["at"].date()), "inputs": r["inputs"], "drifting_share": r["drifting_share"],
             "far": r["far"]} for r in periods.iter_rows(named=True)]


def record_drift(project: Project, report: DriftReport, production: pl.DataFrame, *, add: int = 0) -> DriftReport:
    """Store the run (drift_runs) and, with `add`, a stratified sample of the drifting inputs, in one transaction.
    A sampled input with an expected output becomes an analysis example (source import, origin "drift N: FILE:LINE");
    one without waits in drift_inputs, never scored, until a person gives it one (`refinery relabel ID --output
    TEXT`). An input already in the store is not added twice."""
    from refinery.ingest import prepare_examples

    config = project.config
    picked = stratified_sample(production, report.groups, add, seed=config.core.seed) if add else production.head(0)
    labelled = picked.filter(pl.col("expected").is_not_null())
    waiting = picked.filter(pl.col("expected").is_null())
    with Store(project.store_path, wait=ROUND_WAIT) as store, store.transaction() as con:
        run = con.execute("SELECT coalesce(max(id), 0) + 1 FROM drift_runs").fetchall()[0][0]
        summary = report.to_json() | {"run": run}
        examples = prepare_examples(
            labelled.select("input", pl.col("expected").alias("output"), *(pl.lit(None, dtype=pl.String).alias(c)
                                                                            for c in ("kind", "split")),
                            "fields", pl.format("drift {}: {}", pl.lit(run), "origin").alias("origin")),
            data=config.data, seed=config.core.seed, split="analysis", think=config.think())
        con.register("drift_examples", examples.unique("content_hash", keep="first", maintain_order=True))
        added = con.execute("""
            INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source, origin)
            SELECT d.id, d.content_hash, d.input, d.output, CAST(d.fields AS JSON), d.kind, d.split, 'import', d.origin
            FROM drift_examples d ANTI JOIN examples e ON e.content_hash = d.content_hash
            RETURNING id""").fetchall()
        con.unregister("drift_examples")
        pending = waiting.select(
            pl.lit(run).alias("run"), pl.col("input").map_elements(_input_id, return_dtype=pl.String).alias("id"),
            "input", "output", "origin", "group").unique("id", keep="first", maintain_order=True)
        con.register("drift_pending", pending)
        kept = con.execute("""
            INSERT INTO drift_inputs (id, run, input, output, origin, drift_group)
            SELECT p.id, p.run, p.input, p.output, p.origin, p."group" FROM drift_pending p
            WHERE p.id NOT IN (SELECT id FROM drift_inputs) AND p.input NOT IN (SELECT input FROM examples)
            RETURNING id""").fetchall()
        con.unregister("drift_pending")
        summary |= {"added": len(added), "pending": len(kept)}
        con.execute("INSERT INTO drift_runs (id, files, production, reference, drifted, summary) VALUES "
                    "(?, ?, ?, ?, ?, ?)", [run, json.dumps(report.files), report.production, report.reference,
                                           report.drifted, json.dumps(summary)])
    report.run, report.added, report.pending = run, len(added), len(kept)
    return report


def _input_id(text: str) -> str:
    return "d" + hashlib.sha256(text.encode()).hexdigest()[:15]


def stratified_sample(production: pl.DataFrame, groups: list[DriftGroup], n: int, *, seed: int) -> pl.DataFrame:
    """`n` drifting production rows: each group (strongest first) gets its share of `n` by size, at least one, and
    its members are drawn at random (seeded); distinct inputs only. Nothing when no group stands out."""
    rng = np.random.default_rng(seed)
    sizes = [g.size for g in groups]
    if not sizes or n <= 0:
        return production.head(0)
    quota = [max(1, round(n * s / sum(sizes))) for s in sizes]
    texts = production["input"].to_list()
    chosen: list[int] = []
    seen: set[str] = set()
    for group, want in zip(groups, quota, strict=True):
        taken = 0
        for m in rng.permutation(group.members):
            if taken >= want or len(chosen) >= n:
                break
            if texts[m] not in seen:
                seen.add(texts[m])
                chosen.append(int(m))
                taken += 1
    return production[chosen]
