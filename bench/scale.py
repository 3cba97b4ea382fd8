"""Scale: the analysis of many failures and the ingest of many examples, each size in its own process, timed and
measured for peak memory with `/usr/bin/time -v`.

Analysis runs refinery's `analyze.analyze` (cluster + describe) on synthetic failures: demo-like inputs from the
demo's generator, failing checks planted by input feature, and precomputed synthetic embeddings (embedding
100k texts would take minutes; its throughput is measured on its own). Ingest runs the real `refinery ingest`
command on generated JSONL files.

    python -m bench.scale --n 10000 --clusterer silhouette   # one analysis worker; prints one JSON line
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.demo import DEMO_DATA, REPO

DIM = 384
CENTRES = 8  # synthetic embeddings: failures scattered around this many directions
CHECKS_WHEN_TAG = ("display_weather_present", "emoji_correct")
SEED_CONDITIONS = ("sunny", "rain")


def demo_generator():
    """data/demo/make_demo.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_demo", DEMO_DATA / "make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """n broad demo examples (the eval set's distribution), as the demo generator writes them."""
    return demo_generator().eval_set(random.Random(seed), n)


def planted_failures(row: dict[str, Any], rng: random.Random) -> tuple[list[str], list[str]]:
    """(failing, applicable) checks for one example: failures planted by input feature, like the demo's first
    rounds (the emoji wrong for conditions the seed never shows, the tag lost after punctuation, a stray <think>)."""
    tag, cue = row["condition"] is not None, row["cue"] is not None
    applicable = ["answer_correct", "format_exact"]
    applicable += list(CHECKS_WHEN_TAG) if tag else ["display_weather_absent"]
    applicable += ["think_present"] if cue else ["think_absent"]
    failing = []
    if tag and rng.random() < (0.2 if row["condition"] in SEED_CONDITIONS else 0.85):
        failing.append("emoji_correct")
    if tag and re.search(r"[!?.,:)]$", row["weather"] or "") and rng.random() < 0.6:
        failing.append("display_weather_present")
    if cue and row["cue"] != "use thinking." and rng.random() < 0.5:
        failing.append("think_present")
    if rng.random() < 0.08:
        failing.append("answer_correct")
    return sorted(failing), sorted(applicable)


def synthetic_analysis(n_failures: int, *, seed: int = 0):
    """(failures, passing, embeddings): n_failures failing demo-like examples, a quarter as many passing ones,
    and one normalized 384-d vector per failure near one of a few directions."""
    import numpy as np
    import polars as pl

    rng = random.Random(seed)
    failing_rows: list[dict] = []
    passing_rows: list[dict] = []
    batch = 0
    while len(failing_rows) < n_failures or len(passing_rows) < n_failures // 4:
        for i, row in enumerate(demo_rows(max(1000, n_failures // 2), seed * 1000 + batch)):
            failing, applicable = planted_failures(row, rng)
            entry = {"example_id": f"b{batch}-{i}", "input": row["input"], "failing": failing,
                     "applicable": applicable, "fields": json.dumps({k: v for k, v in row.items()
                                                                     if k not in ("input", "output")})}
            (failing_rows if failing else passing_rows).append(entry)
        batch += 1
    schema = {"example_id": pl.String, "input": pl.String, "failing": pl.List(pl.String),
              "applicable": pl.List(pl.String), "fields": pl.String}
    failures = pl.DataFrame(failing_rows[:n_failures], schema=schema)
    passing = pl.DataFrame(passing_rows[:n_failures // 4], schema=schema)
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(CENTRES, DIM))
    which = generator.integers(0, CENTRES, size=n_failures)
    vectors = centres[which] + generator.normal(scale=0.8, size=(n_failures, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return failures, passing, vectors.astype(np.float32)


class TimedClusterer:
    """Wraps a clusterer and records how long its fit_predict took (the rest of `analyze` is the description)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def fit_predict(self, features):
        began = time.perf_counter()
        labels = self.inner.fit_predict(features)
        self.seconds += time.perf_counter() - began
        return labels


def make_clusterer(name: str, *, seed: int = 0):
    """silhouette: the engine's default (k-means, k by silhouette over 2..[analyze] max_clusters);
    kmeans-fixed: one k-means at k = max_clusters, the linear-time swap; hdbscan: the engine's HDBSCAN."""
    from refinery.config import AnalyzeSettings
    from refinery.stages import analyze

    settings = AnalyzeSettings()
    if name == "silhouette":
        return analyze.make_clusterer("kmeans", max_clusters=settings.max_clusters,
                                      min_cluster_size=settings.min_cluster_size, seed=seed)
    if name == "hdbscan":
        return analyze.make_clusterer("hdbscan", max_clusters=settings.max_clusters,
                                      min_cluster_size=settings.min_cluster_size, seed=seed)
    if name == "kmeans-fixed":
        return FixedKMeans(settings.max_clusters, seed)
    raise ValueError(f"unknown clusterer {name!r}")


class FixedKMeans:
    def __init__(self, k: int, seed: int):
        self.k, self.seed = k, seed

    def fit_predict(self, features):
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=min(self.k, len(features)), n_init=4, random_state=self.seed).fit_predict(features)


KEPT = "+kept"  # a clusterer's name with this: the inputs' features kept in a store first, as a round does


def analyze_worker(n: int, clusterer: str) -> dict[str, Any]:
    """One analysis at one size: time to cluster and to describe, and the memory before the work began. With
    `KEPT`, the features are first read and kept in a fresh store (`describe_inputs`, timed as a first round pays
    it), read back as a later round does (timed), and the analysis is given them: its time is a later round's."""
    import tempfile

    import polars as pl

    from refinery.stages import analyze
    from refinery.store import Store

    failures, passing, vectors = synthetic_analysis(n)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from refinery.rules import load_rules

    rules = load_rules(REPO / "rules")
    cues = [(c.name, re.compile(c.when)) for c in rules.checks if c.when]
    timed = TimedClusterer(make_clusterer(clusterer.removesuffix(KEPT)))
    described, kept = None, {}
    if clusterer.endswith(KEPT):
        with tempfile.TemporaryDirectory() as folder:
            with Store(Path(folder) / "store.duckdb") as store:
                for when in ("first_round", "later_round"):
                    began = time.perf_counter()
                    described = analyze.describe_inputs(store, pl.concat([failures, passing]), cues=cues)
                    kept[f"kept_{when}_seconds"] = round(time.perf_counter() - began, 3)
            kept["store_mb"] = round(sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**20, 1)
    began = time.perf_counter()
    clusters = analyze.analyze(failures, passing, embeddings=vectors, severities={c.name: c.severity
                                                                                   for c in rules.checks},
                               clusterer=timed, cues=cues, described=described)
    total = time.perf_counter() - began + kept.get("kept_later_round_seconds", 0.0)
    return {"n": n, "passing": passing.height, "clusterer": clusterer, "seconds": round(total, 3),
            "cluster_seconds": round(timed.seconds, 3), "describe_seconds": round(total - timed.seconds, 3),
            "clusters": len(clusters), "baseline_rss_mb": round(baseline_kb / 1024, 1),
            "top_statement": clusters[0].statement if clusters else "", **kept}


def embed_throughput(n: int, *, log) -> dict[str, Any]:
    """refinery's embedder on n demo inputs, in this (warm) process, model loaded first: texts per second."""
    from refinery.stages.analyze import MiniLMEmbedder

    log(f"embedding throughput: {n:,} texts")
    texts = [r["input"] for r in demo_rows(n, 11)]
    embedder = MiniLMEmbedder()
    began = time.perf_counter()
    embedder.encode(texts[:8])
    load = time.perf_counter() - began
    began = time.perf_counter()
    embedder.encode(texts)
    seconds = time.perf_counter() - began
    log(f"  {n / seconds:.0f} texts/s")
    return {"n": n, "seconds": round(seconds, 3), "per_second": round(n / seconds, 1), "load_seconds": round(load, 2)}


def measured(command: list[str], *, timeout: float, cwd: Path | None = None) -> dict[str, Any]:
    """Run a command under /usr/bin/time -v: wall seconds, peak RSS (MB), exit code, and its last stdout line."""
    began = time.perf_counter()
    try:
        done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, timeout=timeout,
                              cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": round(time.perf_counter() - began, 1), "timeout": timeout}
    wall = time.perf_counter() - began
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    out = {"status": "ok" if done.returncode == 0 else "error", "seconds": round(wall, 3),
           "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else None}
    if done.returncode != 0:
        out["error"] = (done.stderr.strip().splitlines() or ["?"])[-1][:300]
    out["result"] = _json_document(done.stdout)
    return out


def _json_document(text: str) -> dict[str, Any] | None:
    """The JSON a command printed: the whole output (`refinery ... --json`), or its last line (a worker)."""
    for candidate in (text, text.strip().splitlines()[-1] if text.strip() else ""):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def run_analysis_scale(sizes: list[int], clusterers: list[str], *, timeout: float, log) -> list[dict[str, Any]]:
    """Each clusterer at each size, smallest first. A size whose time, extrapolated from the two sizes before it,
    would pass the timeout is not run (recorded as skipped, with the prediction)."""
    rows = []
    for clusterer in clusterers:
        done: list[tuple[int, float]] = []
        for n in sorted(sizes):
            predicted = predict(done, n)
            if predicted is not None and predicted["seconds"] > timeout:
                log(f"analysis: {n:,} failures, {clusterer}: skipped, predicted {predicted['seconds']:.0f} s")
                rows.append({"n": n, "clusterer": clusterer, "status": "skipped", "seconds": None,
                             "timeout": timeout, "predicted": predicted})
                continue
            log(f"analysis: {n:,} failures, {clusterer}")
            result = measured([sys.executable, "-m", "bench.scale", "--n", str(n), "--clusterer", clusterer],
                              timeout=timeout, cwd=REPO)
            rows.append({"n": n, "clusterer": clusterer, **result})
            if result["status"] == "ok":
                done.append((n, result["result"]["seconds"]))
            log(f"  {_brief(result)}")
    return rows


def predict(done: list[tuple[int, float]], n: int) -> dict[str, float] | None:
    """Time at size n from the last two sizes measured, growing as n^b with b from them (at least 1)."""
    if len(done) < 2:
        return None
    (n1, t1), (n2, t2) = done[-2], done[-1]
    exponent = max(1.0, math.log(max(t2, 1e-6) / max(t1, 1e-6)) / math.log(n2 / n1))
    return {"seconds": round(t2 * (n / n2) ** exponent, 1), "exponent": round(exponent, 2)}


def write_jsonl(path: Path, n: int, seed: int) -> int:
    """n demo examples as a JSONL file (the eval generator, so inputs vary like the demo's); returns bytes."""
    rows = demo_rows(n, seed)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path.stat().st_size


def run_ingest_scale(sizes: list[int], work: Path, *, timeout: float, log) -> list[dict[str, Any]]:
    """`refinery ingest FILE --split holdout --json` into a fresh project per size."""
    cli = Path(sys.executable).with_name("refinery")
    rows = []
    for n in sizes:
        folder = work / f"ingest-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "examples.jsonl"
        log(f"ingest: writing {n:,} examples")
        size = write_jsonl(data, n, seed=n)
        subprocess.run([str(cli), "init", str(folder / "project")], check=True, capture_output=True)
        log(f"ingest: {n:,} examples")
        result = measured([str(cli), "--project", str(folder / "project"), "ingest", str(data), "--split", "holdout",
                           "--json"], timeout=timeout)
        store = folder / "project" / "runs" / "refinery.duckdb"
        report = result.pop("result", None) or {}
        rows.append({"n": n, "file_mb": round(size / 2**20, 1), **result, "inserted": report.get("inserted"),
                     "duplicates": report.get("duplicates"),
                     "store_mb": round(store.stat().st_size / 2**20, 1) if store.exists() else None})
        log(f"  {_brief(result)}")
        shutil.rmtree(folder)  # a million examples make a store of some hundred MB
    return rows


def _brief(result: dict[str, Any]) -> str:
    if result.get("status") != "ok":
        return f"{result.get('status')} after {result.get('seconds')} s {result.get('error', '')}"
    return f"{result['seconds']:.1f} s, peak {result.get('peak_rss_mb')} MB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One analysis worker; prints one JSON line.")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--clusterer", default="silhouette",
                        choices=[f"{name}{kept}" for kept in ("", KEPT) for name in ("silhouette", "kmeans-fixed",
                                                                                     "hdbscan")])
    args = parser.parse_args(argv)
    print(json.dumps(analyze_worker(args.n, args.clusterer)))


if __name__ == "__main__":
    main()
