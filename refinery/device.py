"""Where models run and in what precision: CUDA with bf16 where it is supported, else CPU in fp32."""

from __future__ import annotations

from pathlib import Path
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


def load_tokenizer(base_model: str) -> Any:
    """The model's tokenizer with a pad token (its EOS when it has none) and left padding, for batches."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


# The weight files refinery loads, in a model folder: safetensors only (a pickle checkpoint can run code on load).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def load_base(base_model: str, *, dtype: Any) -> Any:
    """The base model's weights, from safetensors only and without the model's own code: the one place refinery
    calls `AutoModelForCausalLM.from_pretrained` on a base model."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, use_safetensors=True,
                                                trust_remote_code=False)


def check_loadable(base_model: str) -> None:
    """Fail early, with the fix, when the base model is neither a local folder nor in the local cache, or its folder
    lacks the weights or the tokenizer: before a round touches the store."""
    from transformers import AutoConfig

    from refinery.errors import ConfigError
    from refinery.models import refuse_pickle

    try:
        AutoConfig.from_pretrained(base_model, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"base_model = \"{base_model}\": cannot load it ({_first_line(exc)}). It must be a model "
                          f"folder, or a hub id already in the local Hugging Face cache (nothing is downloaded here); "
                          f"bundled:tiny-base always works.") from None
    folder = Path(base_model) if Path(base_model).is_dir() else _hub_snapshot(base_model)
    if folder is not None:
        refuse_pickle(folder, label=f'base_model = "{base_model}"')
    if folder is not None and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"base_model = \"{base_model}\": the folder has a config.json but no weights (expected one "
                          f"of: {', '.join(WEIGHT_FILES)}). Save the model there with save_pretrained, or set "
                          f"base_model to another model; bundled:tiny-base always works.")
    try:
        load_tokenizer(base_model)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here; each means the same to a person
        raise ConfigError(f"base_model = \"{base_model}\": cannot load its tokenizer ({_first_line(exc)}). Save the "
                          f"tokenizer beside the model (tokenizer.save_pretrained), or set base_model to another "
                          f"model; bundled:tiny-base always works.") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache's folder of a hub model, when it holds one (nothing is downloaded)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a hub id: from_pretrained then says what is wrong
        return None


def load_model(base_model: str, *, device: str, dtype: Any, adapter: str | None = None) -> tuple[Any, Any]:
    """The base model (plus an adapter, when given) and its tokenizer, ready for generation."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = load_tokenizer(base_model)
    model = load_base(base_model, dtype=dtype).to(device)
    if adapter:
        import warnings

        from peft import PeftModel

        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # peft
        # Merged for speed: the same function, one matmul per layer instead of two.
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload().to(device)
    model.eval()
    return model, tokenizer


class PeakMemory:
    """The most memory the work inside a `with` block used: on a CUDA GPU, torch's peak allocation on it; elsewhere
    the peak resident memory of this process and its children (training processes), sampled every 50 ms."""

    def __init__(self) -> None:
        self.bytes = 0
        self.kind = "rss"
        self._stop: Any = None

    def __enter__(self) -> PeakMemory:
        import threading

        import torch

        if torch.cuda.is_available():
            self.kind = "cuda"
            torch.cuda.reset_peak_memory_stats()
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            try:
                used = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:  # a child ended between listing and reading it
                used = me.memory_info().rss
            self.bytes = max(self.bytes, used)
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.kind == "cuda":
            self.bytes = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            self._thread.join()
