"""Train and infer with the real bundled model: one prompt format, LoRA changes only the adapter, batching is exact."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import REPO

from refinery.config import InferSettings, TrainSettings
from refinery.prompts import render_prompt
from refinery.stages.infer import generate, generate_with
from refinery.stages.train import lora_config, sft_config, train, training_pairs

BASE = str(REPO / "data" / "tiny-base")


def seed_rows() -> pl.DataFrame:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "seed.jsonl").read_text().splitlines()]
    return pl.DataFrame({"input": [r["input"] for r in rows], "output": [r["output"] for r in rows]})


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, object]:
    """A LoRA adapter trained for a few real steps on the demo seed set."""
    out = tmp_path_factory.mktemp("round")
    settings = TrainSettings(steps=40, batch_size=8, learning_rate=1e-2)
    result = train(seed_rows(), base_model=BASE, settings=settings, out_dir=out)
    return out, result


def test_training_and_inference_render_the_same_prompt(tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    rows = seed_rows().head(4)
    settings = TrainSettings(steps=1, batch_size=2)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(BASE),
                         args=sft_config(settings, tmp_path, steps=1, device="cpu", dtype=torch.float32),
                         train_dataset=Dataset.from_dict(training_pairs(rows, tokenizer)),
                         processing_class=tokenizer, peft_config=lora_config(settings))
    for i, text in enumerate(rows["input"]):
        processed = trainer.train_dataset[i]
        pairs = list(zip(processed["input_ids"], processed["labels"], strict=True))
        prompt_part = [t for t, label in pairs if label == -100]  # loss on completions only
        at_inference = tokenizer([render_prompt(tokenizer, text)])["input_ids"][0]
        assert prompt_part == at_inference  # the tokens the model learns after are the tokens it is asked with
        completion = [t for t, label in pairs if label != -100]
        assert tokenizer.decode(completion) == rows["output"][i] + tokenizer.eos_token
    assert render_prompt(tokenizer, "hi") == "<|user|>hi<|end|><|assistant|>"


def test_lora_changes_the_adapter_and_not_the_base(trained) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, result = trained
    assert result.steps == 40 and result.method == "lora" and result.device == "cpu"
    assert json.loads((out / "train_log.json").read_text())[-1]["loss"] == result.final_loss
    base = AutoModelForCausalLM.from_pretrained(BASE)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), result.weights_path)
    lora_b = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero: training moved it
    for name, tensor in model.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if key in reference:
            assert torch.equal(tensor, reference[key]), name


def test_generation_with_and_without_the_adapter(trained) -> None:
    _, result = trained
    inputs = seed_rows()["input"].to_list()[:6]
    settings = InferSettings(batch_size=4, max_new_tokens=40)
    plain = generate(inputs, base_model=BASE, settings=settings)
    tuned = generate(inputs, base_model=BASE, settings=settings, adapter=result.weights_path)
    assert plain.columns == ["prompt", "output", "tokens", "latency_ms"]
    assert not any("display_weather" in o for o in plain["output"])  # the base model never learned the tags
    tagged = [o for text, o in zip(inputs, tuned["output"], strict=True) if "<weather>" in text]
    assert sum("<display_weather>" in o for o in tagged) >= len(tagged) / 2  # the adapter taught the tag
    assert (tuned["tokens"] > 0).all() and (tuned["tokens"] <= 40).all() and (tuned["latency_ms"] > 0).all()
    again = generate(inputs, base_model=BASE, settings=settings, adapter=result.weights_path)
    assert again["output"].to_list() == tuned["output"].to_list()  # a saved adapter reloads to the same outputs


def test_left_padded_batches_give_the_same_outputs_as_one_at_a_time() -> None:
    from refinery.device import load_model

    model, tokenizer = load_model(BASE, device="cpu", dtype=torch.float32)
    inputs = ["Bob has 3 coins and finds 2 more. How many coins now?",
              "Hana has 17 stamps and finds 8 more. How many stamps now? Please answer quickly, I need it.",
              "Eli has 9 pens and loses 4. How many pens are left?"]
    batched = generate_with(model, tokenizer, inputs, settings=InferSettings(batch_size=3, max_new_tokens=24))
    single = [generate_with(model, tokenizer, [t], settings=InferSettings(batch_size=1, max_new_tokens=24))
              ["output"][0] for t in inputs]
    assert batched["output"].to_list() == single
    assert tokenizer.padding_side == "left"


def test_full_fine_tuning_updates_the_weights(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    settings = TrainSettings(method="full", steps=3, batch_size=4, learning_rate=1e-3)
    result = train(seed_rows().head(8), base_model=BASE, settings=settings, out_dir=tmp_path)
    assert Path(result.weights_path).name == "model"
    tuned = AutoModelForCausalLM.from_pretrained(result.weights_path).state_dict()
    base = AutoModelForCausalLM.from_pretrained(BASE).state_dict()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert len(changed) > len(base) // 2
    outputs = generate(["Bob has 3 coins and finds 2 more. How many coins now?"], base_model=result.weights_path,
                       settings=InferSettings(max_new_tokens=16))
    assert outputs.height == 1


@pytest.mark.parametrize(("examples", "steps"), [
    (1, 300),      # the floor: a tiny set still gets min_steps
    (20, 300),     # the demo's seed set: 30 epochs would be 38 steps
    (160, 300),    # 30 x 160 / 16 = 300 exactly
    (200, 375),    # ceil(30 x 200 / 16)
    (533, 1000),   # ceil(30 x 533 / 16) = 1,000 (999.4 rounded up)
    (620, 1000),   # the cap: the demo's oracle set would be 1,163
    (100_000, 1000),
])
def test_the_step_rule_gives_the_documented_steps(examples: int, steps: int) -> None:
    from refinery.stages.train import step_budget

    assert step_budget(TrainSettings(), examples) == steps


def test_a_fixed_step_count_replaces_the_rule_and_the_rule_follows_its_settings() -> None:
    from refinery.stages.train import step_budget

    assert step_budget(TrainSettings(steps=7), 10_000) == 7
    assert step_budget(TrainSettings(epochs=2, batch_size=8, min_steps=1, max_steps=50), 100) == 25
    assert step_budget(TrainSettings(epochs=2, batch_size=8, min_steps=30, max_steps=50), 100) == 30
    assert step_budget(TrainSettings(epochs=2, batch_size=8, min_steps=1, max_steps=20), 100) == 20


def test_training_follows_the_step_rule_and_its_schedule(tmp_path: Path) -> None:
    """A real run under the rule: ceil(3 epochs x 8 examples / batch 4) = 6 steps, linear decay to zero."""
    settings = TrainSettings(epochs=3, min_steps=1, max_steps=100, batch_size=4, lr_schedule="linear", warmup=0.0,
                             learning_rate=1e-2)
    result = train(seed_rows().head(8), base_model=BASE, settings=settings, out_dir=tmp_path)
    assert result.steps == 6
    rates = [entry["learning_rate"] for entry in result.log]
    assert rates == sorted(rates, reverse=True) and rates[0] <= 1e-2 and rates[-1] < rates[0]


def test_the_plain_loss_trains_exactly_as_trls_fused_loss(tmp_path: Path) -> None:
    """On a small vocabulary the model's own loss replaces trl's tiled LM head (1.7x faster a step here): same
    completion-only loss, same steps, so the same losses step by step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from refinery.device import load_tokenizer
    from refinery.stages.train import _plain_loss_trainer, fused_loss

    tokenizer = load_tokenizer(BASE)
    settings = TrainSettings(steps=4, batch_size=4, learning_rate=1e-2, warmup=0.0)
    losses = {}
    for name, trainer_class in (("fused", SFTTrainer), ("plain", _plain_loss_trainer(SFTTrainer))):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(BASE)
        args = sft_config(settings, tmp_path / name, steps=4, device="cpu", dtype=torch.float32)
        args.logging_steps = 1
        trainer = trainer_class(model=model, args=args, processing_class=tokenizer, peft_config=lora_config(settings),
                                train_dataset=Dataset.from_dict(training_pairs(seed_rows().head(8), tokenizer)))
        trainer.train()
        losses[name] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        if name == "fused":
            assert not fused_loss(model, settings)  # the bundled model's 1,024-token logits are small
    assert len(losses["plain"]) == 4
    assert losses["plain"] == pytest.approx(losses["fused"], rel=1e-4)
    assert losses["plain"][-1] < losses["plain"][0]  # it learns
