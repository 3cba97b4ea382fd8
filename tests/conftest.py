"""Shared fixtures: real projects in temp folders, real DuckDB files, the CLI run in-process."""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from refinery.cli import main  # noqa: E402
from refinery.ingest import ingest_files  # noqa: E402
from refinery.project import init_project, load_project  # noqa: E402
from refinery.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A freshly scaffolded project, made the working directory."""
    root = tmp_path / "proj"
    init_project(root)
    monkeypatch.chdir(root)
    monkeypatch.delenv("REFINERY_PROJECT", raising=False)
    return root


@pytest.fixture
def project(project_dir: Path):
    return load_project(project_dir)


@pytest.fixture
def store(project):
    with Store(project.store_path) as s:
        yield s


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    """Run `refinery ARGS` in-process; returns the exit code and what a person would see."""
    def run(*args: str) -> CliResult:
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


CONFIG = f"""\
base_model = "{REPO / 'data' / 'tiny-base'}"

[train]
steps = 16
batch_size = 8

[infer]
max_new_tokens = 40

[generate]
clusters = 2
per_cluster = 4

[mix]
cue = "use thinking."
cue_pattern = '(?i)(please )?use thinking[.!]?|think it through[.!]?'
answer_check = "answer_correct"
toggle_template = "think_toggle.jinja"
"""


@pytest.fixture
def demo_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A small copy of the demo (seed, 70 held-out rows, corner cases) with fast training settings."""
    project = make_demo(tmp_path / "demo")
    monkeypatch.chdir(project.root)
    return project


def make_demo(root: Path):
    """The demo_project fixture's project at `root`, for fixtures of a wider scope."""
    shutil.copytree(REPO / "rules", root / "rules")
    shutil.copytree(REPO / "templates", root / "templates")
    write(root / "refinery.toml", CONFIG)
    lines = (REPO / "data" / "demo" / "eval.jsonl").read_text().splitlines()[:70]
    write(root / "data" / "eval.jsonl", "\n".join(lines) + "\n")
    project = load_project(root, environ={})
    with Store(project.store_path) as store:
        ingest_files(store, [REPO / "data" / "demo" / "seed.jsonl"], config=project.config, split="train",
                     source="seed")
        ingest_files(store, [root / "data" / "eval.jsonl"], config=project.config, split="holdout")
        ingest_files(store, [REPO / "data" / "demo" / "corner.jsonl"], config=project.config, split="corner")
    return project


def store_snapshot(path: Path) -> dict[str, list]:
    """Every row of every table of a store, opened read-only: equal snapshots mean nothing was added, removed or
    changed (row counts and content alike)."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [name for (name,) in con.execute("SELECT table_name FROM information_schema.tables "
                                                  "WHERE table_schema = 'main' ORDER BY table_name").fetchall()]
        return {name: sorted(con.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in tables}
    finally:
        con.close()


class StopAt:
    """A reporter that interrupts the round when a stage starts, as Ctrl-C would."""

    def __init__(self, stage: str):
        self.at = stage

    def started(self, number: int, examples: int) -> None: ...
    def restarting(self, number: int, note: str) -> None: ...

    def stage(self, name: str) -> None:
        if name == self.at:
            raise KeyboardInterrupt

    def progress(self, done: int, total: int) -> None: ...
    def stage_done(self, name: str, seconds: float, note: str) -> None: ...


SEED = '{"input": "hello", "output": "world"}\n{"input": "good day", "output": "to you"}\n'


@pytest.fixture
def stocked(project_dir: Path, cli) -> Path:
    """A new project with two examples in its store: something a failed command must leave alone."""
    write(project_dir / "data" / "seed.jsonl", SEED)
    assert cli("ingest", "data/seed.jsonl", "--split", "train").code == 0
    return project_dir


def fails_unchanged(cli, root: Path, *args: str) -> str:
    """Run a command that must fail: exit 1, `Error:` and no traceback, the store and the project file untouched;
    return its stderr."""
    store = root / "runs" / "refinery.duckdb"
    before, files = store_snapshot(store), _project_files(root)
    result = cli(*args)
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err and result.err.startswith("Error: "), result.err
    assert store_snapshot(store) == before and _project_files(root) == files
    return result.err


def _project_files(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in ("refinery.toml", "pyproject.toml") if (root / name).is_file()}


def uncomment_setting(config: Path, key: str, line: str) -> int:
    """Uncomment the scaffold's `# KEY = ...` line as `line`; returns its line number."""
    lines = config.read_text().splitlines()
    number = next(i for i, text in enumerate(lines) if re.match(rf"# {key} = ", text))
    lines[number] = line
    config.write_text("\n".join(lines) + "\n")
    return number + 1
