"""The one place an example becomes the text a model sees: training and inference both call `render_prompt`."""

from __future__ import annotations

from typing import Any

# For base models without a chat template (plain causal LMs from the hub).
FALLBACK_FORMAT = "### Input:\n{input}\n### Output:\n"


def render_prompt(tokenizer: Any, text: str) -> str:
    """The prompt for one input: the model's chat template, one user turn, and the assistant's opening.

    The tokenizer adds its BOS token when the prompt is tokenized (as trl does for prompt/completion data), so a
    BOS the template writes itself is dropped here rather than doubled.
    """
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=False)
    else:
        prompt = FALLBACK_FORMAT.format(input=text)
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and _adds_bos(tokenizer):
        prompt = prompt[len(bos):]
    return prompt


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
