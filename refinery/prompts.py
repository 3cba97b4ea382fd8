"""The one place an example becomes the text a model sees: training and inference both call `render_prompt`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# For base models without a chat template (plain causal LMs from the hub).
FALLBACK_FORMAT = "### Input:\n{input}\n### Output:\n"


def render_prompt(tokenizer: Any, text: str, *, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt for one input: the model's chat template, one user turn, and the assistant's opening; with
    `shots`, worked examples (input, output) as earlier turns first (the few-shot baseline).

    The tokenizer adds its BOS token when the prompt is tokenized (as trl does for prompt/completion data), so a
    BOS the template writes itself is dropped here rather than doubled.
    """
    if getattr(tokenizer, "chat_template", None):
        turns = [m for i, o in shots for m in ({"role": "user", "content": i}, {"role": "assistant", "content": o})]
        prompt = tokenizer.apply_chat_template([*turns, {"role": "user", "content": text}],
                                               add_generation_prompt=True, tokenize=False)
    else:
        prompt = "".join(FALLBACK_FORMAT.format(input=i) + o + "\n" for i, o in shots)
        prompt += FALLBACK_FORMAT.format(input=text)
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and _adds_bos(tokenizer):
        prompt = prompt[len(bos):]
    return prompt


def fit_shots(tokenizer: Any, text: str, shots: Sequence[tuple[str, str]], *, max_tokens: int) -> list:
    """The most shots (from the first) whose prompt stays within `max_tokens`: a small model's context is short."""
    chosen = list(shots)
    while chosen and len(tokenizer(render_prompt(tokenizer, text, shots=chosen), verbose=False)["input_ids"]) \
            > max_tokens:
        chosen.pop()
    return chosen


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
