"""Infer: batched greedy generation, left-padded, with or without an adapter."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from refinery.config import InferSettings
from refinery.device import load_model, pick_device, pick_dtype
from refinery.prompts import render_prompt


def generate(inputs: list[str], *, base_model: str, settings: InferSettings, adapter: str | None = None,
             shots: Sequence[tuple[str, str]] = (), on_batch: Callable[[int, int], None] | None = None
             ) -> pl.DataFrame:
    """One row per input: prompt, output (special tokens removed), tokens generated, latency in ms.

    Latency is the batch's wall time divided by its size: what one example costs when served in batches. With
    `shots`, every prompt starts with those worked examples (the caller makes them fit the model's context).
    """
    device = pick_device()
    model, tokenizer = load_model(base_model, device=device, dtype=pick_dtype(device), adapter=adapter)
    return generate_with(model, tokenizer, inputs, settings=settings, shots=shots, on_batch=on_batch)


def generate_with(model: Any, tokenizer: Any, inputs: list[str], *, settings: InferSettings,
                  shots: Sequence[tuple[str, str]] = (),
                  on_batch: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """`generate` for a model already loaded."""
    import torch

    prompts = [render_prompt(tokenizer, text, shots=shots) for text in inputs]
    stop_ids = _stop_ids(model, tokenizer)
    outputs, tokens, latency = [], [], []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start:start + settings.batch_size]
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(model.device)
        began = time.perf_counter()
        with torch.inference_mode():
            generated = model.generate(**encoded, do_sample=False, max_new_tokens=settings.max_new_tokens,
                                       eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
        per_example = (time.perf_counter() - began) * 1000 / len(batch)
        new = generated[:, encoded["input_ids"].shape[1]:]
        for row in new.tolist():
            length = next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))
            outputs.append(tokenizer.decode(row[:length], skip_special_tokens=True))
            tokens.append(length)
            latency.append(round(per_example, 3))
        if on_batch:
            on_batch(min(start + len(batch), len(prompts)), len(prompts))
    return pl.DataFrame({"prompt": prompts, "output": outputs, "tokens": tokens, "latency_ms": latency},
                        schema={"prompt": pl.String, "output": pl.String, "tokens": pl.Int32,
                                "latency_ms": pl.Float64})


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({*ids, tokenizer.eos_token_id} - {None})
