"""Preference pairs from the loop's failures, and DPO on them after SFT, with the real tiny model and a real store."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, make_demo, write

from refinery.config import TrainSettings
from refinery.errors import ConfigError
from refinery.project import load_project
from refinery.stages.loop import run_round
from refinery.stages.pairs import Pair, vet_pairs
from refinery.store import Store

BASE = str(REPO / "data" / "tiny-base")


def completion_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """sum log p(completion + EOS | prompt), the prompt rendered as training and inference render it."""
    import torch

    from refinery.prompts import render_prompt

    rendered = render_prompt(tokenizer, prompt)
    start = len(tokenizer(rendered)["input_ids"])
    ids = tokenizer(rendered + completion + tokenizer.eos_token)["input_ids"]
    with torch.no_grad():
        logps = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
    return sum(logps[i - 1, ids[i]].item() for i in range(start, len(ids)))


def logprobs(adapter: str, pairs: pl.DataFrame) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) of each pair under the base model with `adapter`."""
    import torch
    from peft import PeftModel

    from refinery.device import load_base, load_tokenizer

    tokenizer = load_tokenizer(BASE)
    model = PeftModel.from_pretrained(load_base(BASE, dtype=torch.float32), adapter).eval()
    return [(completion_logprob(model, tokenizer, p, c), completion_logprob(model, tokenizer, p, r))
            for p, c, r in pairs.select("prompt", "chosen", "rejected").iter_rows()]


def margin(adapter: str, pairs: pl.DataFrame) -> float:
    """Mean log p(chosen) - log p(rejected) over `pairs` under the base model with `adapter`."""
    gaps = [c - r for c, r in logprobs(adapter, pairs)]
    return sum(gaps) / len(gaps)


def chosen_logprob(adapter: str, pairs: pl.DataFrame) -> float:
    """Mean log p(chosen) over `pairs` under the base model with `adapter`."""
    return sum(c for c, _ in logprobs(adapter, pairs)) / pairs.height


def wrong(output: str) -> str:
    """The failure the demo's first rounds make: the weather tag dropped, or one where none belongs."""
    if "<display_weather>" in output:
        return re.sub(r"<display_weather>.*</display_weather>", "", output)
    return output + "<display_weather>☀️</display_weather>"


def test_dpo_lowers_the_rejected_output_against_the_chosen_one(tmp_path: Path) -> None:
    from refinery.stages.train import train, train_dpo

    seed = pl.read_ndjson(REPO / "data" / "demo" / "seed.jsonl").select("input", "output")
    settings = TrainSettings(batch_size=4, steps=6, dpo_steps=8, dpo_sft_weight=0.0)  # plain DPO first
    sft = train(seed, base_model=BASE, settings=settings, out_dir=tmp_path / "sft")
    pairs = seed.head(4).select(pl.col("input").alias("prompt"), pl.col("output").alias("chosen"),
                                pl.col("output").map_elements(wrong, return_dtype=pl.String).alias("rejected"))
    dpo = train_dpo(pairs, base_model=BASE, settings=settings, start_from=sft.weights_path, out_dir=tmp_path / "dpo")
    assert dpo.steps == 8 and Path(dpo.weights_path, "adapter_config.json").is_file()
    assert not Path(dpo.weights_path, "ref").exists()  # trl's frozen reference copy is not saved
    # The SFT adapter is the reference: policy and reference start equal, so the first loss is log 2.
    assert dpo.log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    before, after = margin(sft.weights_path, pairs), margin(dpo.weights_path, pairs)
    assert after > before + 1.0, (before, after)
    # With dpo_sft_weight the chosen outputs' own likelihood is held up while the margin still widens (RPO).
    held = train_dpo(pairs, base_model=BASE, settings=replace(settings, dpo_sft_weight=1.0),
                     start_from=sft.weights_path, out_dir=tmp_path / "rpo")
    assert margin(held.weights_path, pairs) > before + 1.0
    assert chosen_logprob(held.weights_path, pairs) > chosen_logprob(dpo.weights_path, pairs)


@pytest.fixture(scope="module")
def dpo_rounds(tmp_path_factory: pytest.TempPathFactory):
    """The demo project with objective "sft+dpo", after two rounds: round 1 collects pairs, round 2 trains on them."""
    project = make_demo(tmp_path_factory.mktemp("pairs") / "demo")
    project = project.with_config(project.config.override("train", objective="sft+dpo", dpo_steps=4))
    return project, [run_round(project), run_round(project)]


def test_a_sft_dpo_round_records_pairs_none_from_test_or_corner(dpo_rounds) -> None:
    project, (first, second) = dpo_rounds
    assert "dpo" not in first.train  # round 1: no pairs yet, SFT only
    assert second.train["dpo"]["pairs"] > 0 and second.train["weights"].endswith("dpo-adapter")
    with Store(project.store_path, read_only=True) as store:
        assert store.scalar("SELECT adapter_path FROM rounds WHERE number = 2") == second.train["weights"]
        counts = dict(store.frame("SELECT round, count(*) FROM pairs WHERE status = 'active' GROUP BY round").rows())
        assert counts.get(1, 0) > 0 and counts.get(2, 0) > 0
        # Analysis pairs are analysis examples; counterexample pairs are the generated examples stored with them.
        assert store.frame("SELECT p.source, e.split, e.source FROM pairs p JOIN examples e ON e.id = p.example_id "
                           "GROUP BY ALL ORDER BY ALL").rows() in (
            [("analysis", "analysis", "import")],
            [("analysis", "analysis", "import"), ("counterexample", "train", "generated")])
        held = "SELECT input FROM examples WHERE split IN ('test', 'corner')"
        assert store.scalar(f"SELECT count(*) FROM pairs p JOIN examples e ON e.id = p.example_id "
                            f"WHERE e.split IN ('test', 'corner') OR p.prompt IN ({held})") == 0
        assert store.scalar("SELECT count(*) FROM pairs WHERE chosen = rejected") == 0
        row = store.frame("SELECT p.example_id, p.pattern, p.checks FROM pairs p WHERE p.round = 1 "
                          "AND p.pattern IS NOT NULL LIMIT 1").row(0)
        assert store.scalar("SELECT count(*) FROM cluster_members WHERE cluster_id = ? AND example_id = ?",
                            [row[1], row[0]]) == 1 and json.loads(row[2])


def test_pairs_leaking_a_test_input_or_stored_twice_are_not_active(dpo_rounds) -> None:
    from refinery.stages.analyze import make_embedder

    project, _ = dpo_rounds
    with Store(project.store_path) as store:
        test_input = store.scalar("SELECT input FROM examples WHERE split = 'test' ORDER BY id LIMIT 1")
        stored = store.frame("SELECT example_id, prompt, chosen, rejected FROM pairs WHERE status = 'active' "
                             "LIMIT 1").row(0, named=True)
        pairs = [Pair("x1", test_input, "a", "b", "analysis"),
                 Pair("x2", test_input.replace("?", " ?"), "a", "b", "analysis"),  # a near-duplicate
                 Pair(stored["example_id"], stored["prompt"], stored["chosen"], stored["rejected"], "analysis")]
        vetted = vet_pairs(store, pairs, embedder=make_embedder("all-MiniLM-L6-v2"), near_test=0.95)
    assert [p.status for p in vetted] == ["leak", "leak", "duplicate"]
    assert vetted[1].detail.startswith("near-duplicate of ")


def test_export_pairs_writes_trl_preference_format(dpo_rounds, cli, tmp_path: Path) -> None:
    project, _ = dpo_rounds
    with Store(project.store_path, read_only=True) as store:
        active = store.frame("SELECT prompt, chosen, rejected FROM pairs WHERE status = 'active' ORDER BY id")
    for name in ("pairs.jsonl", "pairs.parquet"):
        result = cli("--project", str(project.root), "export", "--pairs", "-o", str(tmp_path / name))
        assert result.code == 0 and result.out.strip() == f"Wrote {active.height} preference pairs to " \
            f"{tmp_path / name}"
        back = pl.read_parquet(tmp_path / name) if name.endswith("parquet") else pl.read_ndjson(tmp_path / name)
        assert back.height == active.height
        first = back.row(0, named=True)
        assert first["prompt"] == [{"role": "user", "content": active["prompt"][0]}]
        assert first["chosen"] == [{"role": "assistant", "content": active["chosen"][0]}]
        assert first["rejected"] == [{"role": "assistant", "content": active["rejected"][0]}]


def test_rerun_of_a_sft_dpo_round_trains_its_dpo_again(dpo_rounds) -> None:
    from refinery.stages.measure import rerun_round

    project, (_, second) = dpo_rounds
    document = rerun_round(project, 2)
    assert Path(document["dir"], "dpo-adapter", "adapter_config.json").is_file()
    assert document["weights_max_abs_diff"] == 0.0  # the recorded weights are the DPO ones, and CPU runs repeat
    assert document["rerun"]["test"] == document["recorded"]["test"] == second.metrics["test"]


def test_a_dpo_round_continues_the_last_rounds_weights_without_sft(dpo_rounds) -> None:
    project, (_, second) = dpo_rounds
    with Store(project.store_path, read_only=True) as store:
        pairs = store.scalar("SELECT count(*) FROM pairs WHERE status = 'active' AND round < 3")
    third = run_round(project.with_config(project.config.override("train", objective="dpo")))
    assert third.train["dpo"]["start_from"] == second.train["weights"]  # round 2's DPO adapter, not a fresh one
    assert third.train["steps"] == 4 and third.train["dpo"]["pairs"] == pairs
    assert third.train["weights"].endswith("dpo-adapter")
    assert not Path(third.round_dir, "adapter").exists()  # no SFT ran
    assert third.train["dpo"]["after_sft"] is False


def test_a_warm_start_after_a_dpo_round_counts_what_the_last_sft_round_learnt(dpo_rounds) -> None:
    from refinery.stages.loop import _warm_start
    from refinery.stages.train import step_budget

    project, _ = dpo_rounds
    if not Path(project.runs_dir, "round-003", "train.json").is_file():
        run_round(project.with_config(project.config.override("train", objective="dpo")))
    with Store(project.store_path, read_only=True) as store:
        learnt, third = (store.frame("SELECT example_id AS id FROM round_examples WHERE round = ?", [n])
                         for n in (2, 3))
    start_from, steps = _warm_start(project, 4, third)
    assert start_from.endswith("round-003/dpo-adapter")
    new = third.join(learnt, on="id", how="anti").height  # round 3 trained on pairs, none of its own examples
    assert new > 0 and steps == step_budget(project.config.train, new)


def test_dpo_alone_without_weights_to_start_from_trains_sft_alone(tmp_path: Path) -> None:
    from refinery.stages.train import train_round

    seed = pl.read_ndjson(REPO / "data" / "demo" / "seed.jsonl").select("input", "output")
    pairs = seed.head(2).select(pl.col("input").alias("prompt"), pl.col("output").alias("chosen"),
                                pl.col("output").map_elements(wrong, return_dtype=pl.String).alias("rejected"))
    settings = TrainSettings(batch_size=4, steps=2, objective="dpo")
    result, note = train_round(seed, pairs, base_model=BASE, settings=settings, out_dir=tmp_path)
    assert result.dpo is None and result.steps == 2 and result.weights_path == str(tmp_path / "adapter")
    assert note.endswith("; no earlier round's weights for DPO to start from, so SFT alone")


def test_an_unknown_objective_names_the_choices(tmp_path: Path) -> None:
    write(tmp_path / "refinery.toml", '[train]\nobjective = "ppo"\n')
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path, environ={})
    assert str(err.value) == f"{tmp_path / 'refinery.toml'}:2: [train] objective = \"ppo\": " \
        "expected one of: sft, sft+dpo, dpo."


def test_dpo_alone_with_a_full_fine_tune_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "refinery.toml", '[train]\nmethod = "full"\nobjective = "dpo"\n')
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path, environ={})
    assert str(err.value) == f"{tmp_path / 'refinery.toml'}:3: [train] objective = \"dpo\" with method = " \
        "\"full\": DPO alone continues the last round's LoRA adapter, which a full fine-tune does not make. Use " \
        "objective = \"sft+dpo\", or method = \"lora\"."
