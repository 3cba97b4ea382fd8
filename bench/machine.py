"""The machine and software a benchmark ran on: CPU, cores and memory from /proc, library versions, the commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.demo import REPO

LIBRARIES = ("refinery", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "sentence-transformers",
             "scikit-learn", "numpy", "scipy", "polars", "duckdb", "pyarrow", "jinja2", "matplotlib")


def machine() -> dict[str, Any]:
    cpu = _first(Path("/proc/cpuinfo"), "model name") or platform.processor() or "unknown"
    mem_kb = _first(Path("/proc/meminfo"), "MemTotal")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None, "gpu": gpu,
            "torch_threads": threads, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_at_start": load}


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def _first(path: Path, key: str) -> str | None:
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None
