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
                  cut_middle: bool = False, starts: Sequence[str] | None = None) -> pl.DataFrame:
    """`generate` for a model already loaded. An input whose prompt would leave no room for `max_new_tokens` in
    the model's context is cut at its end (callers fit inputs first, by `[data] too_long`; this is the floor that
    keeps one long input from taking the machine's memory). `starts`: per input, text the answer is made to begin
    with (it goes after the prompt; the output is what the model wrote after it)."""
    import torch

    prompts, lengths = _prompts(model, tokenizer, inputs, settings=settings, shots=shots, cut_middle=cut_middle,
                                starts=starts)
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


def choose(model: Any, tokenizer: Any, inputs: list[str], choices: Sequence[str], *, settings: InferSettings,
           cut_middle: bool = False) -> list[list[float]]:
    """Per input, the log-probability of each of `choices` as the model's whole answer's first tokens (a
    verdict read from the model's distribution, not from what it happens to write). Batched like generation;
    positions follow the left padding, as `generate` places them."""
    import torch

    ids = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
    prompts, lengths = _prompts(model, tokenizer, inputs, settings=settings, shots=(), cut_middle=cut_middle,
                                reserve=max(len(i) for i in ids))
    scores: list[list[float]] = []
    for start, end in token_batches(lengths, rows=settings.batch_size, tokens=settings.batch_tokens):
        encoded = tokenizer(prompts[start:end], return_tensors="pt", padding=True).to(model.device)
        per_choice = []
        for choice in ids:
            tail = torch.tensor([choice] * (end - start), device=model.device)
            input_ids = torch.cat([encoded["input_ids"], tail], dim=1)
            mask = torch.cat([encoded["attention_mask"], torch.ones_like(tail)], dim=1)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
            steps = logits[:, -len(choice) - 1:-1].float().log_softmax(-1)
            per_choice.append(steps.gather(2, tail.unsqueeze(2)).squeeze(2).sum(1).tolist())
        scores.extend([list(row) for row in zip(*per_choice, strict=True)])
    return scores


def _prompts(model: Any, tokenizer: Any, inputs: list[str], *, settings: InferSettings,
             shots: Sequence[tuple[str, str]], cut_middle: bool = False, starts: Sequence[str] | None = None,
             reserve: int | None = None) -> tuple[list[str], list[int]]:
    """Each input's rendered prompt (and its `starts`, if any) and its length in tokens, cut to leave
    `max_new_tokens` (or `reserve`) tokens in the context."""
    room = (getattr(model.config, "max_position_embeddings", None) or 10**9) - (
        settings.max_new_tokens if reserve is None else reserve)
    start = list(starts) if starts is not None else [""] * len(inputs)
    prompts = [render_prompt(tokenizer, text, shots=shots) + begin for text, begin in zip(inputs, start, strict=True)]
    lengths = token_counts(tokenizer, prompts)
    for i, n in enumerate(lengths):
        if n > room:
            begin = token_counts(tokenizer, [start[i]])[0] if start[i] else 0
            cut = cut_input(tokenizer, inputs[i], max_tokens=room - begin, shots=shots, middle=cut_middle)
            prompts[i] = render_prompt(tokenizer, cut or "", shots=shots) + start[i]
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
