"""Distributed training: a round's training as a job of several processes, started by torchrun (DDP: gloo on a CPU,
NCCL on GPUs) or by `accelerate launch` with the user's config (FSDP, DeepSpeed ZeRO). refinery's own process writes
the job (the training set, the preference pairs and the settings) into the round folder, starts the launcher, passes
rank 0's progress on, and reads back what rank 0 saved. The processes never open the store: only the round's
process writes it, once.

Entry point: `run_job(job_dir, ...)`; `refinery.stages.train` writes the job and reads its result, and is what every
process runs (`python -m refinery.stages.train JOB_DIR`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refinery.config import TrainSettings
from refinery.errors import RefineryError

PROGRESS = "refinery-progress"  # rank 0 prints "refinery-progress STEP OF" after each optimizer step
WORKER = "refinery.stages.train"  # the module every process runs


def rank() -> int:
    """This process's rank in a distributed job (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The processes of the distributed job this process belongs to (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(settings: TrainSettings, job_dir: Path) -> list[str]:
    """The command that starts `settings.processes` processes of the worker on `job_dir`: torchrun on this machine
    alone (a free port of its own), or accelerate launch with the accelerate config (its path resolved against the
    project by `project.train_settings`)."""
    if settings.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(settings.processes), "-m", WORKER, str(job_dir)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(settings.processes)]
    if settings.accelerate_config:
        config = Path(settings.accelerate_config)
        if not config.is_file():
            raise RefineryError(f"[train] accelerate_config = \"{settings.accelerate_config}\": no such file "
                                f"({config}). Write one with `accelerate config --config_file {config}`, or remove "
                                f"the setting.")
        command += ["--config_file", str(config)]
    return [*command, "-m", WORKER, str(job_dir)]


def run_job(job_dir: Path, settings: TrainSettings, *,
            on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Start the job written in `job_dir` (spec.json beside its data), pass rank 0's progress to `on_step`, and
    return what rank 0 wrote to result.json. A job that fails raises with the end of its log (job_dir/log.txt)."""
    command = launch_command(settings, job_dir)
    threads = max(1, (os.cpu_count() or 1) // settings.processes)  # a CPU's cores shared, not fought over
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
           "TOKENIZERS_PARALLELISM": "false"}
    log_path = job_dir / "log.txt"
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            for line in process.stdout:
                if line.startswith(PROGRESS) and on_step:
                    step, total = line.split()[1:3]
                    on_step(int(step), int(total))
                elif not line.startswith(PROGRESS):
                    log.write(line)
            code = process.wait()
        except BaseException:  # Ctrl-C, or the round stopped: take the processes down with it
            process.kill()
            process.wait()
            raise
    result = job_dir / "result.json"
    if code != 0 or not result.is_file():
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise RefineryError(f"distributed training ({settings.processes} processes, {settings.launcher}) failed with "
                            f"exit code {code}; the end of its log ({log_path}):\n{tail}")
    return json.loads(result.read_text(encoding="utf-8"))


def report_step(step: int, total: int) -> None:
    """Rank 0's progress, on stdout, where `run_job` reads it."""
    print(f"{PROGRESS} {step} {total}", flush=True)
