"""The one place an example becomes the text a model sees: training and inference both call `render_prompt`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# For base models without a chat template (plain causal LMs from the hub).
FALLBACK_FORMAT = "### Input:\n{input}\n### Output:\n"
CUT_MARK = " [...] "  # where `cut_input(middle=True)` took text out


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


def cut_input(tokenizer: Any, text: str, *, max_tokens: int, shots: Sequence[tuple[str, str]] = (),
              middle: bool = False) -> str | None:
    """`text` cut at its end, on a token boundary, until its rendered prompt takes at most `max_tokens`; None when
    not even an empty input fits (the template and shots alone are over). `middle`: cut out of the middle instead,
    keeping its start and its end (a judge's prompt ends with the verdict it asks for)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    keep = len(ids)
    for _ in range(8):  # a cut changes how the template's own tokens merge at its edge by a token or two at most
        cut = _kept(tokenizer, ids, keep, middle=middle)
        over = prompt_lengths(tokenizer, [cut], shots=shots)[0] - max_tokens
        if over <= 0:
            return cut
        if keep == 0:
            return None
        keep = max(0, keep - over - (1 if keep < len(ids) else 0))
    return None


def _kept(tokenizer: Any, ids: list[int], keep: int, *, middle: bool) -> str:
    """`keep` tokens of `ids` as text: the first ones, or with `middle` the first and last halves around CUT_MARK."""
    if keep >= len(ids):
        return tokenizer.decode(ids)
    if not middle:
        return tokenizer.decode(ids[:keep])
    head = keep // 2
    return tokenizer.decode(ids[:head]) + CUT_MARK + tokenizer.decode(ids[len(ids) - (keep - head):])
