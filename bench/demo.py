"""Fresh copies of the bundled demo for the benchmarks: the demo's settings, data, rules and templates in a
temp folder, ingested the way `make demo` does (seed -> train, eval -> analysis, test -> test, corner -> corner)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "demo"
USUALLY_RIGHT = DEMO_DATA / "usually-right"  # the second regime's data (data/demo/make_usually_right.py)
SPLITS = {"seed": "train", "eval": "analysis", "test": "test", "corner": "corner"}  # file -> split, as `make demo`


def demo_settings() -> dict[str, Any]:
    """The demo's `[tool.refinery]` table from the repository's pyproject.toml, base model made absolute."""
    table = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["refinery"]
    settings = {key: dict(value) if isinstance(value, dict) else value for key, value in table.items()}
    base = settings.get("base_model", "bundled:tiny-base")
    if not base.startswith("bundled:"):
        settings["base_model"] = str((REPO / base).resolve())
    return settings


def make_project(root: Path, *, overrides: dict[str, dict[str, Any]], eval_rows: int | None = None,
                 source: Path = DEMO_DATA):
    """A demo project in `root` with `overrides` ({"train": {"steps": 8}, "core": {"seed": 1}, ...}) merged over
    the demo's settings, the seed, eval, test and corner files of `source` ingested; returns the loaded project."""
    from refinery.ingest import ingest_files
    from refinery.project import load_project
    from refinery.store import Store

    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "templates", root / "templates")
    settings = demo_settings()
    for section, values in overrides.items():
        if section == "core":
            settings.update(values)
        else:
            settings.setdefault(section, {}).update(values)
    (root / "refinery.toml").write_text(to_toml(settings), encoding="utf-8")
    data = root / "data"
    data.mkdir()
    for name in SPLITS:
        lines = (source / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        if name in ("eval", "test") and eval_rows is not None:
            lines = lines[:eval_rows]
        (data / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    project = load_project(root, environ={})
    with Store(project.store_path) as store:
        for name, split in SPLITS.items():
            ingest_files(store, [data / f"{name}.jsonl"], config=project.config, split=split,
                         source="seed" if name == "seed" else "import")
    return project


def to_toml(settings: dict[str, Any]) -> str:
    """A refinery.toml: top-level keys, then one table per section (values: bool, number or string)."""
    from refinery.config import toml_value

    lines = ["# Written by bench/: the demo's settings with the benchmark's overrides."]
    lines += [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict) and v is not None]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
