"""Where models run and in what precision: CUDA with bf16 where it is supported, else CPU in fp32."""

from __future__ import annotations

from typing import Any


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, precision: str = "auto") -> Any:
    import torch

    if precision == "fp32" or (precision == "auto" and device == "cpu"):
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def load_model(base_model: str, *, device: str, dtype: Any, adapter: str | None = None) -> tuple[Any, Any]:
    """The base model (plus an adapter, when given) and its tokenizer, ready for generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device)
    if adapter:
        from peft import PeftModel

        # Merged for speed: the same function, one matmul per layer instead of two.
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload().to(device)
    model.eval()
    return model, tokenizer
