"""Recipe grids for `refinery sweep`: which settings an arm changes, the arms of a grid (bounded by a seeded
budget), which arms train the same weights, and the paired test that compares two arms on the same test examples.

Entry points: `parse_grid(specs, config)`, `grid_arms(grid, budget=..., seed=...)`, `arm_config(config, arm)`,
`training_key(config)`, `mcnemar(a, b)`. The sweep that trains the arms (`stages/sweep.py`) reads these; `mix
--sweep` is the grid with the one key `reasoning_share`.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

from refinery.config import Config, TrainSettings
from refinery.errors import ConfigError

SPECIAL = {"base_model": "core", "reasoning_share": "mix"}  # sweepable keys outside [train]
# Not sweepable: how a run is placed (processes, launcher, accelerate_config), the seed every arm shares, and what
# only a round does (a sweep trains each arm fresh, by SFT, on one round's set: no warm start, no DPO).
PLACES, FRESH, SFT = ("it places the run, not what it learns", "a sweep trains every arm fresh",
                     "a sweep trains every arm by SFT")
NOT_SWEPT = {"processes": PLACES, "launcher": PLACES, "accelerate_config": PLACES, "warm_start": FRESH,
             "seed": "every arm trains with the same seed", "objective": SFT, "dpo_beta": SFT, "dpo_steps": SFT,
             "dpo_learning_rate": SFT, "dpo_sft_weight": SFT}
LORA_ONLY = ("target_modules", "rank", "alpha", "dropout")  # what a full fine-tune does not read


def sweep_keys() -> list[str]:
    """Every key a sweep may vary: the [train] settings that change what is learnt, base_model, reasoning_share."""
    return sorted({f.name for f in dataclasses.fields(TrainSettings)} - set(NOT_SWEPT) | set(SPECIAL))


def parse_grid(specs: list[str], config: Config) -> dict[str, list[Any]]:
    """`["rank=4,16", "target_modules=attention,all-linear"]` as {key: values}, each value read as the setting's
    type and checked as the project file's would be (bounds, choices). A key twice, an unknown key, or a value the
    setting refuses is an error naming it."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"sweep {spec!r}: expected KEY=V1,V2 (for example rank=4,16,64).")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep {spec!r}: '{key}' is not swept ({NOT_SWEPT[key]}).")
        if key not in sweep_keys():
            raise ConfigError(f"sweep {spec!r}: unknown key '{key}' (expected one of: {', '.join(sweep_keys())}).")
        if key in grid:
            raise ConfigError(f"sweep {spec!r}: '{key}' is given twice; put all its values in one KEY=V1,V2.")
        values = [_value(key, v.strip(), config) for v in raw.split(",") if v.strip()]
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"sweep {spec!r}: a value is given twice.")
        grid[key] = values
    if not grid:
        raise ConfigError("sweep: no KEY=V1,V2 given (for example rank=4,16,64).")
    return grid


def _value(key: str, text: str, config: Config) -> Any:
    """`text` as the type of `key`'s setting, checked by the config's own rules."""
    section = SPECIAL.get(key, "train")
    current = getattr(getattr(config, section), key)
    kind = type(current) if current is not None else _declared(section, key)
    try:
        value = (text.lower() in ("true", "1", "yes")) if kind is bool else kind(text)
    except ValueError:
        raise ConfigError(f"sweep {key}={text}: expected a {kind.__name__}.") from None
    try:
        config.override(section, **{key: value})
    except ConfigError as exc:
        raise ConfigError(f"sweep {key}={text}: {str(exc).split(': ', 1)[-1]}") from None
    return value


def _declared(section: str, key: str) -> type:
    from refinery.config import SECTIONS, CoreSettings

    cls = CoreSettings if section == "core" else SECTIONS[section]
    hint = next(f.type for f in dataclasses.fields(cls) if f.name == key)
    text = str(hint)
    return float if "float" in text else int if "int" in text else str


def grid_arms(grid: dict[str, list[Any]], *, budget: int | None = None, seed: int = 0) -> tuple[list[dict], int]:
    """Every combination of the grid's values (the first key varying slowest), or a seeded sample of `budget` of
    them kept in grid order; and how many the full grid has."""
    keys = list(grid)
    every = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
    if budget is None or budget >= len(every):
        return every, len(every)
    chosen = sorted(random.Random(seed).sample(range(len(every)), budget))
    return [every[i] for i in chosen], len(every)


def arm_config(config: Config, arm: dict[str, Any]) -> Config:
    """The project's config with an arm's settings."""
    for key, value in arm.items():
        config = config.override(SPECIAL.get(key, "train"), **{key: value})
    return config


def current_arm(config: Config, keys: list[str]) -> dict[str, Any]:
    """The project's own values of the grid's keys: the current recipe as an arm."""
    return {key: getattr(getattr(config, SPECIAL.get(key, "train")), key) for key in keys}


def digest(basis: dict[str, Any]) -> str:
    """A stable sha256 of a JSON-able dict (its keys sorted), to key sweeps and trainings by what they depend on."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()


def training_key(config: Config, *, modules: list[str] | None = None, base: str | None = None) -> str:
    """What an arm's training depends on: its [train] settings (less LoRA's under a full fine-tune), the base model
    (`base`: where it resolved to, so that two names of one folder are one model) and the reasoning share; with
    `modules`, the module names its target_modules preset resolves to on the base model, instead of the preset's
    name. Arms with the same key train the same weights, so a sweep trains them once."""
    train = {k: v for k, v in dataclasses.asdict(config.train).items()
             if k not in NOT_SWEPT and not (config.train.method == "full" and k in LORA_ONLY)}
    if modules is not None and config.train.method == "lora":
        train["target_modules"] = sorted(modules)
    basis = {"train": train, "base_model": base or config.core.base_model, "share": config.mix.reasoning_share}
    return digest(basis)[:16]


def arm_label(arm: dict[str, Any]) -> str:
    """`rank=16 target_modules=all-linear`."""
    return " ".join(f"{k}={v}" for k, v in arm.items())


def mcnemar(a: dict[str, bool], b: dict[str, bool]) -> dict[str, Any]:
    """The exact McNemar test of two arms' pass/fail on the same examples (ids in both): the examples only A
    passes, only B passes, and the two-sided p."""
    from scipy.stats import binomtest

    shared = sorted(set(a) & set(b))
    only_a = sum(a[i] and not b[i] for i in shared)
    only_b = sum(b[i] and not a[i] for i in shared)
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"examples": len(shared), "only_a": only_a, "only_b": only_b, "p": float(p)}
