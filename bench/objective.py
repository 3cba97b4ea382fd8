"""SFT alone against SFT then DPO (`[train] objective`), on the demo with refinery's targeted data.

Per seed, fresh copies of the demo (same seed set, base model, split deal and training seed), one per arm:
- sft:     `[train] objective = "sft"`, the demo as shipped;
- sft+dpo: the same rounds, then DPO on the preference pairs earlier rounds collected, from each round's SFT weights;
- dpo:     (when asked for) DPO alone from the last round's weights after round 1, no SFT.
Every arm generates with the same settings (`targeting = "patterns"`, the same budget), so each holds the data its
own failures call for: the arms share round 1's model (no pairs exist yet) and then go their own way. The pairs'
chosen outputs are analysis examples' expected outputs (and counterexamples' targets): DPO learns from analysis
labels SFT never trains on, which the report says beside the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.efficiency import per_seed, run_arm

ARMS = ("sft", "sft+dpo")


def run_objective(*, seeds: list[int], rounds: int, train: dict[str, Any], eval_rows: int | None, work: Path, log,
                  arms: tuple[str, ...] = ARMS, on_row=None) -> list[dict[str, Any]]:
    """Every arm for every seed; one row per (seed, arm, round). `on_row` is called after each round."""
    def run_arms(seed: int, keep) -> None:
        for arm in arms:
            run_arm(arm, seed, rounds, train=train, eval_rows=eval_rows, work=work / "objective", log=log, keep=keep,
                    wanted=None)

    return per_seed(seeds, run_arms, log=log, on_row=on_row)
