"""The distributed part: a round's training and generation on 2 processes (torchrun, gloo) against 1 on this
machine. On a 2-core CPU the two processes share the cores a single process already uses, so this shows the cost of
the path, not a speed-up: the figures say what a step, a sample and a generated output cost each way."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.demo import DEMO_DATA, REPO

PROCESSES = (1, 2)


def run_distributed(*, steps: int, repeats: int, prompts: int, work: Path, log) -> list[dict[str, Any]]:
    """One row per process count: training seconds per step and samples per second (median of `repeats` runs of
    `steps` steps, batch 8, on the demo's seed set), the whole run's seconds (the processes' start included), and
    generation seconds for `prompts` held-out inputs."""
    import polars as pl

    from refinery.config import InferSettings, TrainSettings
    from refinery.stages.infer import generate
    from refinery.stages.train import train_round

    rows = pl.read_ndjson(DEMO_DATA / "seed.jsonl").select("input", "output")
    held_out = pl.read_ndjson(DEMO_DATA / "test.jsonl")["input"].to_list()[:prompts]
    no_pairs = pl.DataFrame(schema={"prompt": pl.String, "chosen": pl.String, "rejected": pl.String})
    model = str(REPO / "data" / "tiny-base")
    found = []
    for processes in PROCESSES:
        settings = TrainSettings(batch_size=8, steps=steps, warmup=0.0, seed=0, processes=processes)
        runs = []
        for repeat in range(repeats):
            began = time.perf_counter()
            result, _ = train_round(rows, no_pairs, base_model=model, settings=settings,
                                    out_dir=work / "distributed" / f"p{processes}-r{repeat}")
            runs.append({"wall": time.perf_counter() - began, "train": result.seconds})
        began = time.perf_counter()
        generate(held_out, base_model=model, settings=InferSettings(processes=processes))
        infer_seconds = time.perf_counter() - began
        train_seconds = statistics.median(r["train"] for r in runs)
        found.append({"processes": processes, "steps": steps, "batch": 8, "repeats": repeats,
                      "seconds_per_step": train_seconds / steps, "samples_per_second": steps * 8 / train_seconds,
                      "wall_seconds": statistics.median(r["wall"] for r in runs), "prompts": len(held_out),
                      "infer_seconds": infer_seconds})
        log(f"distributed: {processes} process(es): {found[-1]['seconds_per_step']:.3f} s a step, "
            f"{found[-1]['samples_per_second']:.1f} samples/s, {found[-1]['wall_seconds']:.1f} s a run; "
            f"{len(held_out)} outputs in {infer_seconds:.1f} s")
    return found


def distributed_section(rows: list[dict[str, Any]], results: dict[str, Any], run_line: str) -> list[str]:
    """The page's section on 2 processes against 1."""
    if not rows:
        return []
    first = rows[0]
    out = ["## Two processes against one (torchrun, gloo, this CPU)", "", run_line, "",
           f"- Training: the demo's seed set, LoRA on the bundled model, {first['steps']} steps at an effective batch "
           f"of {first['batch']} (with 2 processes, 4 each), median of {first['repeats']} runs. Seconds per step "
           "count the optimizer's steps alone (the trainer's own clock); a run's seconds include starting the "
           "processes and loading the model in each.",
           f"- Generation: {first['prompts']} held-out demo inputs, greedy, batches of 64 (the default); with 2 "
           "processes each "
           "takes every other input, and the outputs are gathered back in order; the seconds include loading the "
           "model (in each process).", "",
           "| processes | s per step | samples per s | s per training run (all in) | s to generate |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['processes']} | {r['seconds_per_step']:.3f} | {r['samples_per_second']:.1f} | "
                   f"{r['wall_seconds']:.1f} | {r['infer_seconds']:.1f} |")
    if len(rows) == 2:
        ratio = rows[1]["seconds_per_step"] / rows[0]["seconds_per_step"]
        out += ["", f"Two processes took {ratio:.2f}x the time of one per step on this machine. A CPU's two cores "
                    "are already both busy under one process's torch threads, so splitting the batch over two "
                    "processes adds gradient all-reduce and process start without adding compute: the path is here "
                    "to be correct (the suite checks that 2 processes learn like 1), and pays on several GPUs."]
    return out
