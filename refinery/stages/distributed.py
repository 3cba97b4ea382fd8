"""Distributed jobs: a round's training on several processes, started by torchrun (DDP: gloo on a CPU, NCCL on
GPUs) or by `accelerate launch` with the user's config (FSDP, DeepSpeed ZeRO), and its held-out generation sharded
over several processes. refinery's own process writes the job (its data and settings) into the round folder, starts
the launcher, passes rank 0's progress on, and reads back what the processes wrote. The processes never open the
store: only the round's process writes it, once.

Entry point: `run_job(job_dir, command, ...)` with `launch_command(...)`; the stage that writes a job is what every
process runs (`python -m refinery.stages.train JOB_DIR`, `python -m refinery.stages.infer JOB_DIR`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from refinery.errors import RefineryError

PROGRESS = "refinery-progress"  # rank 0 prints "refinery-progress DONE OF" as it goes


def rank() -> int:
    """This process's rank in a distributed job (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The processes of the distributed job this process belongs to (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its machine (its GPU, where there are GPUs)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launch_command(worker: str, job_dir: Path, *, processes: int, launcher: str = "torchrun",
                   accelerate_config: str | None = None) -> list[str]:
    """The command that starts `processes` processes of the module `worker` on `job_dir`: torchrun on this machine
    alone (a free port of its own), or accelerate launch with the accelerate config (its path resolved and checked
    against the project by `project.train_settings`)."""
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(processes), "-m", worker, str(job_dir)]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    if accelerate_config:
        command += ["--config_file", accelerate_config]
    return [*command, "-m", worker, str(job_dir)]


def run_job(job_dir: Path, command: list[str], *, processes: int, what: str,
            on_step: Callable[[int, int], None] | None = None) -> None:
    """Run the job written in `job_dir` with `command` (from `launch_command`), passing rank 0's progress to
    `on_step`. A job that fails raises with the end of its log (job_dir/log.txt); what it made is the caller's to
    read back."""
    threads = max(1, (os.cpu_count() or 1) // processes)  # a CPU's cores shared, not fought over
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
                    done, total = line.split()[1:3]
                    on_step(int(done), int(total))
                elif not line.startswith(PROGRESS):
                    log.write(line)
            code = process.wait()
        except BaseException:  # Ctrl-C, or the round stopped: take the processes down with it
            process.kill()
            process.wait()
            raise
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise RefineryError(f"{what} ({processes} processes) failed with exit code {code}; the end of its log "
                            f"({log_path}):\n{tail}")


def leave_group() -> None:
    """Destroy the job's process group (the trainer made it) before the process exits. Left to the interpreter's
    exit, gloo's threads can still hold work when it tears down, and the process aborts ("terminate called without
    an active exception", SIGABRT: rank 1 of the two-process test, once, in a full suite run here on 2026-12-07;
    pytorch/pytorch#190489)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report_step(done: int, total: int) -> None:
    """Rank 0's progress, on stdout, where `run_job` reads it."""
    print(f"{PROGRESS} {done} {total}", flush=True)
