"""Train: a LoRA adapter (or a full fine-tune) through trl's SFTTrainer on prompt/completion pairs, and DPO on
preference pairs through trl's DPOTrainer after it (`[train] objective = "sft+dpo"`) or in its place ("dpo").

This is the one module that knows trl's and peft's argument names: refinery's `TrainSettings` are translated
here into `LoraConfig`, `SFTConfig` and `DPOConfig`.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from refinery.config import TrainSettings
from refinery.device import load_base, load_tokenizer, pick_device, pick_dtype
from refinery.errors import RefineryError
from refinery.prompts import render_prompt
from refinery.stages import distributed

WORKER = "refinery.stages.train"  # what every process of a distributed training job runs
TARGETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "attention-mlp": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "all-linear": "all-linear",
}

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}  # refinery's -> transformers'


@dataclass
class TrainResult:
    """Where the weights went and how the run went."""

    weights_path: str  # the adapter folder, or the full model folder for method = "full"
    method: str
    steps: int
    examples: int
    seconds: float
    final_loss: float | None
    device: str
    dtype: str
    log: list[dict[str, Any]]
    start_from: str | None = None  # the adapter it started from (warm_start, or objective "dpo"), else a fresh one
    dpo: dict[str, Any] | None = None  # the DPO run whose weights these are: after SFT ("sft+dpo") or alone ("dpo")


def train(rows: pl.DataFrame, *, base_model: str, settings: TrainSettings, out_dir: Path,
          on_step: Callable[[int, int], None] | None = None, start_from: str | None = None,
          steps: int | None = None) -> TrainResult:
    """Train on rows (input, output); write weights and `train_log.json` under `out_dir`. `start_from`: an
    adapter folder whose weights the new adapter starts from (`[train] warm_start`), instead of a fresh one.
    `steps`: optimizer steps, when not the step rule's for all of `rows`."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    device, dtype = _prepare(settings)
    tokenizer = load_tokenizer(base_model)
    model = load_base(base_model, dtype=dtype)
    peft_config = lora_config(settings)
    if settings.method == "lora":
        resolve_targets(model, settings.target_modules)
    if start_from is not None:
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(model, start_from, is_trainable=True), None
    dataset = Dataset.from_dict(training_pairs(rows, tokenizer))

    started = time.perf_counter()
    steps = steps or step_budget(settings, rows.height)
    trainer_class = SFTTrainer if fused_loss(model, settings) else _plain_loss_trainer(SFTTrainer)
    trainer = trainer_class(model=model, args=sft_config(settings, out_dir, steps=steps, device=device, dtype=dtype),
                            train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
                            callbacks=[_progress(on_step)])
    trainer.remove_callback(PrinterCallback)  # the log goes to train_log.json, progress to on_step
    trainer.train()
    seconds = time.perf_counter() - started
    weights = out_dir / ("adapter" if settings.method == "lora" else "model")
    if trainer.is_world_process_zero():  # in a distributed job, rank 0 alone writes
        trainer.model.save_pretrained(weights)
        if settings.method == "full":
            tokenizer.save_pretrained(weights)
    return _result(trainer, out_dir / "train_log.json", weights=weights, settings=settings, examples=rows.height,
                   seconds=seconds, device=device, dtype=dtype, start_from=start_from)


def train_round(rows: pl.DataFrame, pairs: pl.DataFrame, *, base_model: str, settings: TrainSettings, out_dir: Path,
                on_step: Callable[[int, int], None] | None = None, start_from: str | None = None,
                steps: int | None = None) -> tuple[TrainResult, str]:
    """A round's training under `[train] objective`, and a note on what ran. sft: `train` on `rows`. sft+dpo: then
    DPO on `pairs` from the SFT weights. dpo: DPO on `pairs` from `start_from` (the last round's weights) in place
    of SFT. Without pairs, or for dpo without weights to start from (round 1), SFT alone. The result carries the
    weights the round ends with; for DPO, `dpo` says how it ran (and, after SFT, which SFT weights it started from).
    With `[train] processes` above 1, the same runs as a distributed job (`distributed`), each process taking an equal
    share of the batch."""
    if settings.processes > 1 and distributed.world_size() == 1:
        return _train_distributed(rows, pairs, base_model=base_model, settings=settings, out_dir=out_dir,
                                  on_step=on_step, start_from=start_from, steps=steps)
    if settings.objective == "dpo" and start_from and pairs.height:
        dpo = train_dpo(pairs, base_model=base_model, settings=settings, start_from=start_from, out_dir=out_dir,
                        on_step=on_step)
        return replace(dpo, dpo=_dpo_detail(dpo, start_from, after_sft=False)), \
            f"DPO {dpo.steps} steps on {dpo.examples} pairs (no SFT), loss {_loss(dpo)}"
    sft = train(rows, base_model=base_model, settings=settings, out_dir=out_dir, on_step=on_step,
                start_from=start_from, steps=steps)
    note = f"{sft.steps} steps on {sft.examples} examples, loss {_loss(sft)}"
    if settings.objective == "sft":
        return sft, note
    if pairs.height == 0:
        return sft, f"{note}; no preference pairs yet, so no DPO"
    if settings.objective == "dpo":  # DPO alone needs a round's weights to move: none before this one
        return sft, f"{note}; no earlier round's weights for DPO to start from, so SFT alone"
    dpo = train_dpo(pairs, base_model=base_model, settings=settings, start_from=sft.weights_path, out_dir=out_dir,
                    on_step=on_step)
    return replace(sft, weights_path=dpo.weights_path, dpo=_dpo_detail(dpo, sft.weights_path, after_sft=True)), \
        f"{note}; then DPO {dpo.steps} steps on {dpo.examples} pairs, loss {_loss(dpo)}"


def _dpo_detail(dpo: TrainResult, start_from: str, *, after_sft: bool) -> dict[str, Any]:
    return {"steps": dpo.steps, "pairs": dpo.examples, "seconds": dpo.seconds, "final_loss": dpo.final_loss,
            "start_from": start_from, "after_sft": after_sft}


def recorded_training(runs_dir: Path, number: int) -> dict[str, Any]:
    """Round `number`'s `train.json` (its TrainResult), or {} when it has none."""
    path = runs_dir / f"round-{number:03d}" / "train.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def dpo_alone(recorded: dict[str, Any]) -> bool:
    """Whether a round's recorded training (`train.json`) was DPO alone: its weights learnt no example by SFT."""
    return not (recorded.get("dpo") or {}).get("after_sft", True)


def _loss(result: TrainResult) -> str:
    return "n/a" if result.final_loss is None else f"{result.final_loss:.3f}"


def _prepare(settings: TrainSettings) -> tuple[str, Any]:
    """Quiet the libraries' progress bars, seed torch, and pick the device and precision to train in."""
    import datasets
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # peft's call
    torch.manual_seed(settings.seed)
    device = pick_device()
    return device, pick_dtype(device, settings.precision)


def _result(trainer: Any, log_file: Path, *, weights: Path, settings: TrainSettings, examples: int, seconds: float,
            device: str, dtype: Any, start_from: str | None) -> TrainResult:
    """The run's log written to `log_file`, and what it made."""
    log = [entry for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        log_file.write_text(json.dumps(log, indent=1))
    return TrainResult(weights_path=str(weights), method=settings.method, steps=trainer.state.global_step,
                       examples=examples, seconds=round(seconds, 2), final_loss=log[-1]["loss"] if log else None,
                       device=device, dtype=str(dtype).split(".")[-1], log=log, start_from=start_from)


def _progress(on_step: Callable[[int, int], None] | None) -> Any:
    """A trainer callback reporting (step, of steps) after each optimizer step."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(state.global_step, state.max_steps)

    return Progress()


def step_budget(settings: TrainSettings, examples: int) -> int:
    """Optimizer steps of a round on `examples` examples: `[train] steps` when set, else `epochs` passes over the
    set at `batch_size`, kept within [min_steps, max_steps]. A fixed budget cannot learn from what the loop adds:
    on the demo, 300 steps on the seed and every analysis example reached 35 % of the test split, 1,000 steps 96 %
    (docs/recipe.md)."""
    if settings.steps is not None:
        return settings.steps
    wanted = math.ceil(settings.epochs * examples / settings.batch_size)
    return max(settings.min_steps, min(settings.max_steps, wanted))


# trl computes the loss through a fused, tiled LM head that never holds a batch's full logits: it saves memory on a
# large vocabulary, but on a small one it is pure overhead (the bundled 1,024-token model trained 1.7x slower per
# step, with the same losses to 6 digits; docs/recipe.md). Below this many bytes of fp32 logits a batch, the model's
# own loss is used instead.
FUSED_LOSS_BYTES = 256 * 2**20


def fused_loss(model: Any, settings: TrainSettings) -> bool:
    """Whether a batch's full logits would be big enough for trl's fused LM-head loss to pay off."""
    vocab = model.config.get_text_config().vocab_size
    return vocab * settings.batch_size * settings.max_length * 4 > FUSED_LOSS_BYTES


def _plain_loss_trainer(base: type) -> type:
    """`base` (trl's SFTTrainer) with the loss the model computes itself from `labels`; the same value trl computes
    (completion tokens only: trl's collator sets the prompt's labels to -100)."""

    class PlainLossTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k != "completion_mask"}
            outputs = model(**inputs, use_cache=False, num_items_in_batch=num_items_in_batch)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

    return PlainLossTrainer


def training_pairs(rows: pl.DataFrame, tokenizer: Any) -> dict[str, list[str]]:
    """prompt/completion columns: the rendered prompt, and the expected output (trl appends the EOS token)."""
    return {"prompt": [render_prompt(tokenizer, text) for text in rows["input"]],
            "completion": rows["output"].to_list()}


def resolve_targets(model: Any, preset: str) -> list[str]:
    """The model's module names a `[train] target_modules` preset puts LoRA on; an error naming the preset and the
    model's linear layers when the preset's names are not this architecture's."""
    import torch

    from refinery.errors import ConfigError

    linear = {name: name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")}
    wanted = TARGETS[preset]
    hit = [name for name, leaf in linear.items() if wanted == "all-linear" or leaf in wanted]
    missing = [] if wanted == "all-linear" else sorted(set(wanted) - set(linear.values()))
    if not hit or missing:
        raise ConfigError(f"[train] target_modules = \"{preset}\": {type(model).__name__} has no linear layers named "
                          f"{', '.join(missing or wanted)} (its linear layers: "
                          f"{', '.join(sorted(set(linear.values()))) or 'none'}). Use target_modules = \"all-linear\".")
    return hit


@functools.cache  # a sweep asks once per arm, of a few models and presets
def preset_modules(base_model: str, preset: str) -> list[str]:
    """The module names `preset` puts LoRA on in `base_model`, from its config alone (built on the meta device: no
    weights are read). On Llama-style models attention-mlp and all-linear name the same modules."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model, trust_remote_code=False))
    return resolve_targets(model, preset)


def lora_config(settings: TrainSettings) -> Any:
    if settings.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=TARGETS[settings.target_modules], task_type="CAUSAL_LM")


def sft_config(settings: TrainSettings, out_dir: Path, *, steps: int, device: str, dtype: Any) -> Any:
    from trl import SFTConfig

    return SFTConfig(output_dir=str(out_dir / "trainer"), learning_rate=settings.learning_rate,
                     lr_scheduler_type=SCHEDULES[settings.lr_schedule], completion_only_loss=True,
                     **_trainer_args(settings, steps=steps, device=device, dtype=dtype))


def _trainer_args(settings: TrainSettings, *, steps: int, device: str, dtype: Any) -> dict[str, Any]:
    """What SFTConfig and DPOConfig share. trl's defaults are GPU-minded (bf16 on, activation checkpointing on,
    max_length 1024, a learning rate for large models): refinery sets them all."""
    import torch

    return {"max_steps": steps, "per_device_train_batch_size": settings.batch_size,
            "warmup_steps": max(1, round(steps * settings.warmup)) if settings.warmup else 0, "weight_decay": 0.0,
            "max_length": settings.max_length, "bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16,
            "activation_checkpointing": False, "use_cpu": device == "cpu", "seed": settings.seed,
            "data_seed": settings.seed, "logging_steps": max(1, steps // 20), "save_strategy": "no",
            "report_to": [], "disable_tqdm": True, "dataloader_num_workers": 0,
            **(_ddp_args(device) if distributed.world_size() > 1 else {})}


def _ddp_args(device: str) -> dict[str, Any]:
    """A distributed job's trainer settings. Each process averages the loss over its own tokens and DDP averages
    the gradients: with trl 1.16's token averaging across processes instead, the loss it logged here was the
    single-process loss divided by the number of processes (measured: exactly half with 2)."""
    return {"ddp_backend": "gloo" if device == "cpu" else "nccl", "ddp_find_unused_parameters": False,
            "average_tokens_across_devices": False}


def train_dpo(pairs: pl.DataFrame, *, base_model: str, settings: TrainSettings, start_from: str, out_dir: Path,
              on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """DPO on pairs (prompt, chosen, rejected; the prompt is the input as stored) from the weights at `start_from`
    (the round's SFT adapter, or its full model folder), which are also the reference the policy is held to; write
    the new weights and `dpo_log.json` under `out_dir`."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOTrainer

    device, dtype = _prepare(settings)
    model, tokenizer = _dpo_policy(base_model, start_from, method=settings.method, dtype=dtype)

    started = time.perf_counter()
    # ref_model=None: with a PeftModel that already holds an adapter, trl copies it into a frozen "ref" adapter and
    # scores the reference with it, so the reference is the SFT policy (not the base model with adapters disabled,
    # which is what it uses for a fresh adapter); for a full model it loads a second copy from `start_from`.
    trainer = DPOTrainer(model=model, ref_model=None,
                         args=dpo_config(settings, out_dir, device=device, dtype=dtype),
                         train_dataset=Dataset.from_dict(preference_rows(pairs, tokenizer)),
                         processing_class=tokenizer, callbacks=[_progress(on_step)])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    seconds = time.perf_counter() - started
    weights = out_dir / ("dpo-adapter" if settings.method == "lora" else "dpo-model")
    if trainer.is_world_process_zero() and settings.method == "lora":
        trainer.model.save_pretrained(weights, selected_adapters=["default"])  # not trl's frozen "ref" copy
    elif trainer.is_world_process_zero():
        trainer.model.save_pretrained(weights)
        tokenizer.save_pretrained(weights)
    return _result(trainer, out_dir / "dpo_log.json", weights=weights, settings=settings, examples=pairs.height,
                   seconds=seconds, device=device, dtype=dtype, start_from=start_from)


def _dpo_policy(base_model: str, start_from: str, *, method: str, dtype: Any) -> tuple[Any, Any]:
    """The model DPO trains and its tokenizer: the base model with the adapter at `start_from` loaded trainable, or
    the full model saved there."""
    if method == "full":
        return load_base(start_from, dtype=dtype), load_tokenizer(start_from)
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_model, dtype=dtype), start_from, is_trainable=True)
    return model, load_tokenizer(base_model)


def preference_rows(pairs: pl.DataFrame, tokenizer: Any) -> dict[str, list[str]]:
    """prompt/chosen/rejected columns: the rendered prompt and the two outputs (trl appends the EOS token)."""
    return {"prompt": [render_prompt(tokenizer, text) for text in pairs["prompt"]],
            "chosen": pairs["chosen"].to_list(), "rejected": pairs["rejected"].to_list()}


def dpo_config(settings: TrainSettings, out_dir: Path, *, device: str, dtype: Any) -> Any:
    from trl import DPOConfig

    losses = {"sigmoid": 1.0} | ({"sft": settings.dpo_sft_weight} if settings.dpo_sft_weight else {})
    return DPOConfig(output_dir=str(out_dir / "dpo-trainer"), learning_rate=settings.dpo_learning_rate,
                     lr_scheduler_type="constant_with_warmup", beta=settings.dpo_beta, loss_type=list(losses),
                     loss_weights=list(losses.values()),
                     **_trainer_args(settings, steps=settings.dpo_steps, device=device, dtype=dtype))


def _train_distributed(rows: pl.DataFrame, pairs: pl.DataFrame, *, base_model: str, settings: TrainSettings,
                       out_dir: Path, on_step: Callable[[int, int], None] | None, start_from: str | None,
                       steps: int | None) -> tuple[TrainResult, str]:
    """`train_round` as a job of `settings.processes` processes: the job written under out_dir/distributed (the
    rows, the pairs, the settings, and the steps the step rule gives for the effective batch), run, and read back."""
    job = out_dir / "distributed"
    job.mkdir(parents=True, exist_ok=True)
    rows.write_parquet(job / "rows.parquet")
    pairs.write_parquet(job / "pairs.parquet")
    spec = {"base_model": base_model, "settings": asdict(settings), "out_dir": str(out_dir),
            "start_from": start_from, "steps": steps or step_budget(settings, rows.height)}
    (job / "spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    command = distributed.launch_command(WORKER, job, processes=settings.processes, launcher=settings.launcher,
                                         accelerate_config=settings.accelerate_config)
    distributed.run_job(job, command, processes=settings.processes, on_step=on_step,
                        what=f"distributed training ({settings.launcher})")
    if not (job / "result.json").is_file():
        raise RefineryError(f"distributed training ({settings.launcher}) ended without rank 0's result "
                            f"({job / 'result.json'}); its log: {job / 'log.txt'}")
    done = json.loads((job / "result.json").read_text(encoding="utf-8"))
    result = TrainResult(**done["result"])
    per_process = settings.batch_size // settings.processes
    return result, (f"{done['note']}; {settings.processes} processes x {per_process} = effective batch "
                    f"{settings.batch_size} ({settings.launcher})")


def _work(job: Path) -> None:
    """One process of a distributed job (`python -m refinery.stages.train JOB_DIR`, started by the launcher): the
    round's training with this process's share of the batch; rank 0 writes result.json."""
    spec = json.loads((job / "spec.json").read_text(encoding="utf-8"))
    settings = TrainSettings(**spec["settings"])
    share = replace(settings, batch_size=settings.batch_size // distributed.world_size(), processes=1)
    lead = distributed.rank() == 0
    try:
        result, note = train_round(pl.read_parquet(job / "rows.parquet"), pl.read_parquet(job / "pairs.parquet"),
                                   base_model=spec["base_model"], settings=share, out_dir=Path(spec["out_dir"]),
                                   on_step=distributed.report_step if lead else None,
                                   start_from=spec["start_from"], steps=spec["steps"])
    finally:
        distributed.leave_group()
    if lead:
        (job / "result.json").write_text(json.dumps({"result": asdict(result), "note": note}), encoding="utf-8")


if __name__ == "__main__":
    _work(Path(sys.argv[1]))
