"""Infer: batched greedy generation, left-padded, with or without an adapter."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from refinery.config import InferSettings
from refinery.device import load_model, pick_device, pick_dtype
from refinery.prompts import cut_input, render_prompt, token_counts


def generate(inputs: list[str], *, base_model: str, settings: InferSettings, adapter: str | None = None,
             shots: Sequence[tuple[str, str]] = (), on_batch: Callable[[int, int], None] | None = None,
             cut_middle: bool = False) -> pl.DataFrame:
    """One row per input: prompt, output (special tokens removed), tokens generated, latency in ms.

    Latency is the batch's wall time divided by its size: what one example costs when served in batches. With
    `shots`, every prompt starts with those worked examples (the caller makes them fit the model's context).
    `cut_middle`: an input over the context loses its middle, not its end (a judge's prompt ends with its question).
    """
    device = pick_device()
    model, tokenizer = load_model(base_model, device=device, dtype=pick_dtype(device), adapter=adapter)
    return generate_with(model, tokenizer, inputs, settings=settings, shots=shots, on_batch=on_batch,
                         cut_middle=cut_middle)


def generate_with(model: Any, tokenizer: Any, inputs: list[str], *, settings: InferSettings,
                  shots: Sequence[tuple[str, str]] = (), on_batch: Callable[[int, int], None] | None = None,
                  cut_middle: bool = False) -> pl.DataFrame:
    """`generate` for a model already loaded. An input whose prompt would leave no room for `max_new_tokens` in
    the model's context is cut at its end (callers fit inputs first, by `[data] too_long`; this is the floor that
    keeps one long input from taking the machine's memory)."""
    import torch

    prompts, lengths = _prompts(model, tokenizer, inputs, settings=settings, shots=shots, cut_middle=cut_middle)
    stop_ids = _stop_ids(model, tokenizer)
    outputs, tokens, latency = [], [], []
    for start, end in token_batches(lengths, rows=settings.batch_size, tokens=settings.batch_tokens):
        batch = prompts[start:end]
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
            on_batch(end, len(prompts))
    return pl.DataFrame({"prompt": prompts, "output": outputs, "tokens": tokens, "latency_ms": latency},
                        schema={"prompt": pl.String, "output": pl.String, "tokens": pl.Int32,
                                "latency_ms": pl.Float64})


def _prompts(model: Any, tokenizer: Any, inputs: list[str], *, settings: InferSettings,
             shots: Sequence[tuple[str, str]], cut_middle: bool = False) -> tuple[list[str], list[int]]:
    """Each input's rendered prompt and its length in tokens, cut to leave `max_new_tokens` in the context."""
    room = (getattr(model.config, "max_position_embeddings", None) or 10**9) - settings.max_new_tokens
    prompts = [render_prompt(tokenizer, text, shots=shots) for text in inputs]
    lengths = token_counts(tokenizer, prompts)
    for i, n in enumerate(lengths):
        if n > room:
            cut = cut_input(tokenizer, inputs[i], max_tokens=room, shots=shots, middle=cut_middle)
            prompts[i] = render_prompt(tokenizer, cut or "", shots=shots)
            lengths[i] = token_counts(tokenizer, [prompts[i]])[0]
    return prompts, lengths


def token_batches(lengths: list[int], *, rows: int, tokens: int) -> list[tuple[int, int]]:
    """Consecutive batches (start, end) of at most `rows` prompts and at most `tokens` padded prompt tokens (the
    count times the longest): memory follows tokens, so a batch of long prompts is split, never one prompt."""
    batches, start, longest = [], 0, 0
    for index, length in enumerate(lengths):
        longest_with = max(longest, length)
        if index > start and (index - start >= rows or (index - start + 1) * longest_with > tokens):
            batches.append((start, index))
            start, longest_with = index, length
        longest = longest_with
    if start < len(lengths):
        batches.append((start, len(lengths)))
    return batches


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({*ids, tokenizer.eos_token_id} - {None})
