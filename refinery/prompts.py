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


def prompt_lengths(tokenizer: Any, texts: Sequence[str], *, shots: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Tokens of each rendered prompt, as the model is fed them (BOS included)."""
    return token_counts(tokenizer, [render_prompt(tokenizer, text, shots=shots) for text in texts])


def token_counts(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    """Tokens of each prompt already rendered."""
    return [len(ids) for ids in tokenizer(list(prompts), verbose=False)["input_ids"]] if prompts else []


def cut_input(tokenizer: Any, text: str, *, max_tokens: int, shots: Sequence[tuple[str, str]] = ()) -> str | None:
    """`text` cut at its end, on a token boundary, until its rendered prompt takes at most `max_tokens`; None when
    not even an empty input fits (the template and shots alone are over)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    keep = len(ids)
    for _ in range(8):  # a cut changes how the template's own tokens merge at its edge by a token or two at most
        over = prompt_lengths(tokenizer, [tokenizer.decode(ids[:keep])], shots=shots)[0] - max_tokens
        if over <= 0:
            return tokenizer.decode(ids[:keep])
        if keep == 0:
            return None
        keep = max(0, keep - over - (1 if keep < len(ids) else 0))
    return None
