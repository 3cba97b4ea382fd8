"""What a hostile probe of the CLI tried with its input (issue 26): regular expressions that backtrack without end,
files that are not files, TOML nested thousands deep, NUL bytes in paths, CSV cells spanning lines, project files
written by hand, columns named twice. Each gives its exact message, exit code 1, no traceback, and an unchanged
store; or, where the input is fine after all, the right result in bounded time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest
from conftest import fails_unchanged as fails_within
from conftest import uncomment_setting, write

from refinery import config
from refinery.config import UserPattern
from refinery.errors import ConfigError
from refinery.project import load_project
from refinery.report.review import check_output
from refinery.rules import load_rules
from refinery.stages.evaluate import run_checks
from refinery.stages.mix import cue_variants

SLOW = "^(a|aa)+$"  # still exponential in `regex`, which cuts (a+)+ short
TEXT = "a" * 40 + "!"
SIMPLIFY = ("catastrophic backtracking? Simplify it: avoid nested or overlapping repeats such as (a+)+ or "
            "(a|aa)+.")
TOOK = 'took longer than 1 s on one {} ("' + "a" * 40 + '..."): ' + SIMPLIFY


def fails_unchanged(cli, root: Path, *args: str) -> str:
    """conftest's `fails_unchanged`, failed rather than hung when the command runs past 30 s."""
    with within(30):
        return fails_within(cli, root, *args)


@contextmanager
def within(seconds: int):
    """Fail the test, rather than hang it, when the block runs longer than `seconds`."""
    def stop(*_):
        raise AssertionError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# 4. regular expressions that backtrack


def test_the_probes_think_pattern_no_longer_hangs_ingest(stocked: Path, cli) -> None:
    uncomment_setting(stocked / "refinery.toml", "think_pattern", 'think_pattern = "(a+)+$"')
    write(stocked / "data" / "a.jsonl", json.dumps({"input": "q", "output": TEXT}) + "\n")
    began = time.perf_counter()
    with within(30):
        result = cli("ingest", "data/a.jsonl", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["files"][0]["by_kind"] == {"direct": 1}  # (a+)+$ does not match at the "!"
    assert time.perf_counter() - began < 10


def test_a_think_pattern_that_backtracks_too_long_stops_ingest_naming_the_setting(stocked: Path, cli) -> None:
    uncomment_setting(stocked / "refinery.toml", "think_pattern", f'think_pattern = "{SLOW}"')
    write(stocked / "data" / "a.jsonl", json.dumps({"input": "q", "output": TEXT}) + "\n")
    err = fails_unchanged(cli, stocked, "ingest", "data/a.jsonl")
    assert err == f'Error: refinery.toml: [data] think_pattern = "{SLOW}" {TOOK.format("output")}\n'


def test_a_think_pattern_in_pyproject_is_named_by_its_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", f'[tool.refinery.data]\nthink_pattern = "{SLOW}"\n')
    think = load_project(tmp_path, environ={}).config.think()
    with pytest.raises(ConfigError) as caught, within(30):
        think.search(TEXT)
    assert str(caught.value).startswith(f'{tmp_path / "pyproject.toml"}: [tool.refinery.data] think_pattern = ')


def _rules(root: Path, check: str) -> Path:
    write(root / "rules" / "slow.toml", check)
    return root / "rules"


def _rows(prediction: str, input: str = "q") -> pl.DataFrame:
    return pl.DataFrame({"example_id": ["e1"], "variant": [""], "input": [input], "expected": [prediction],
                         "fields": [None], "prediction": [prediction]}, schema_overrides={"fields": pl.String})


def test_the_probes_rules_pattern_evaluates_at_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rules = load_rules(_rules(tmp_path, '[[check]]\nname = "y"\ntype = "regex"\npattern = "^(a+)+$"\n'))
    with within(30):
        results = run_checks(rules, _rows(TEXT))
    assert results.select("check_name", "applies", "passed").rows() == [("y", True, False)]


@pytest.mark.parametrize(("check", "on"), [
    (f'type = "regex"\npattern = "{SLOW}"', "output"),
    (f'type = "absent"\npattern = "{SLOW}"', "output"),
    (f'type = "equals"\nextract = "({SLOW[1:]})"', "output"),
    (f'type = "contains"\ntext = "b"\nwhen = "{SLOW}"', "input"),
    (f'type = "contains"\ntext = "b"\nunless = "{SLOW}"', "input"),
], ids=["regex", "absent", "extract", "when", "unless"])
def test_a_check_whose_pattern_backtracks_too_long_names_file_check_and_fix(tmp_path: Path, monkeypatch, check: str,
                                                                           on: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "PATTERN_SECONDS", 0.25)  # the same path as the 1 s default, in a quarter the time
    rules = load_rules(_rules(tmp_path, f'[[check]]\nname = "y"\n{check}\n'))
    key, value = next((k, v) for k, v in re.findall(r'(\w+) = "(.*)"', check) if k not in ("type", "text"))
    expected = f'rules/slow.toml:1: check \'y\': {key} = "{value}" ' + TOOK.format(on).replace(" 1 s ", " 0.25 s ")
    rows = _rows("b", input=TEXT) if on == "input" else _rows(TEXT)
    with pytest.raises(ConfigError) as caught, within(30):
        run_checks(rules, rows)
    assert str(caught.value) == expected
    with pytest.raises(ConfigError) as caught, within(30):  # the review page's relabel runs the rules first
        check_output(rules, input=rows["input"][0], output=rows["prediction"][0])
    assert str(caught.value) == expected


def test_a_lookup_key_that_backtracks_too_long_names_the_lookup(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rules = load_rules(_rules(tmp_path, '[[check]]\nname = "y"\ntype = "equals"\nextract = "(.*)"\nlookup = "t"\n\n'
                                        f'[[lookup]]\nname = "t"\nkey = "({SLOW[1:]})"\ntable = {{ a = "b" }}\n'))
    with pytest.raises(ConfigError) as caught, within(30):
        run_checks(rules, _rows("b", input=TEXT))
    assert str(caught.value) == (f'rules/slow.toml:7: lookup \'t\': key = "({SLOW[1:]})" '
                                 f'{TOOK.format("input")}')


def test_a_cue_pattern_that_backtracks_too_long_names_the_setting() -> None:
    rows = pl.DataFrame({"input": [TEXT]})
    with pytest.raises(ConfigError) as caught, within(30):
        cue_variants(rows, cue="think.", cue_pattern=SLOW, setting="refinery.toml: [mix] cue_pattern")
    assert str(caught.value) == f'refinery.toml: [mix] cue_pattern = "{SLOW}" {TOOK.format("input")}'


@pytest.mark.parametrize(("pattern", "text", "dotall"), [
    (r"<think>.*?</think>", "a <think>one\ntwo</think> b", True),
    (r"<think>.*?</think>", "a <think>one\ntwo</think> b", False),
    (r"(?i)(please )?use thinking[.!]?|think it through[.!]?", "Please USE thinking! now", False),
    (r"^\S+$", "one\ntwo", False),
    (r"(?s)^(.*)$", "x\ny", False),
    (r"\b\d{2,}\b", "a 7 and 42", False),
    (r"(?m)^b", "a\nb", False),
])
def test_user_patterns_match_as_re_does(pattern: str, text: str, dotall: bool) -> None:
    wanted = re.compile(pattern, re.DOTALL if dotall else 0)
    got = UserPattern(pattern, setting="s", dotall=dotall)
    found, expected = got.search(text), wanted.search(text)
    assert (found and (found.span(), found.groups())) == (expected and (expected.span(), expected.groups()))
    assert got.sub("", text) == wanted.sub("", text)
    assert [m.span() for m in got.finditer(text)] == [m.span() for m in wanted.finditer(text)]


# 5. a rules file that is a named pipe


def test_a_rules_file_that_is_a_named_pipe_is_named_not_read(stocked: Path, cli) -> None:
    os.mkfifo(stocked / "rules" / "x.toml")
    message = ("Error: rules/x.toml: it is not a regular file but a named pipe (FIFO). Every *.toml in rules/ is "
               "read as a rules file: remove it, or rename it so that its name does not end in .toml.\n")
    assert fails_unchanged(cli, stocked, "clusters", "--history") == message
    assert fails_unchanged(cli, stocked, "iterate") == message


# 6. TOML nested thousands deep; NUL bytes in path settings


DEEP = "a = " + "[" * 3000 + "]" * 3000 + "\n"
TOO_DEEP = ("TOML nested too deeply to read (arrays or tables inside each other about a thousand levels or more). "
            "Flatten it.")


def test_a_rules_file_nested_thousands_deep_is_named(stocked: Path, cli) -> None:
    write(stocked / "rules" / "deep.toml", DEEP)
    assert fails_unchanged(cli, stocked, "clusters", "--history") == f"Error: rules/deep.toml: {TOO_DEEP}\n"


@pytest.mark.parametrize("name", ["refinery.toml", "pyproject.toml"])
def test_a_project_file_nested_thousands_deep_is_named(stocked: Path, cli, name: str) -> None:
    if name == "pyproject.toml":
        (stocked / "refinery.toml").rename(stocked / "kept.toml")
    write(stocked / name, "[tool.refinery]\n" + DEEP)
    assert fails_unchanged(cli, stocked, "status") == f"Error: {name}: {TOO_DEEP}\n"


NUL = ("holds a NUL character (\\u0000), which no path, name or text setting may hold (a path would be cut short "
       "there). Remove it.")


@pytest.mark.parametrize(("key", "section"), [
    ("store", "(top level)"), ("runs_dir", "(top level)"), ("rules_dir", "(top level)"),
    ("templates_dir", "(top level)"), ("base_model", "(top level)"), ("embedder", "[analyze]"),
    ("production", "[baseline]"), ("toggle_template", "[mix]"),
])
def test_a_nul_byte_in_a_path_setting_is_refused_when_the_config_is_read(stocked: Path, cli, key: str,
                                                                         section: str) -> None:
    line = uncomment_setting(stocked / "refinery.toml", key, f'{key} = "runs/a\\u0000b"')
    err = fails_unchanged(cli, stocked, "status")
    assert err == f'Error: refinery.toml:{line}: {section} {key} = "runs/a\\u0000b": {NUL}\n'
    assert sorted(p.name for p in (stocked / "runs").iterdir()) == [".gitignore", "refinery.duckdb"]  # no runs/a


# 8. CSV rows that span lines


CSV = 'input,output\nhi,world\n"two\nlines",fine\n"three\nmore\nlines",also fine\nlast,\n'


def test_a_csv_error_names_the_line_its_row_starts_on(stocked: Path, cli) -> None:
    write(stocked / "data" / "x.csv", CSV)
    assert fails_unchanged(cli, stocked, "ingest", "data/x.csv") == (
        "Error: data/x.csv:8: field 'output': missing. Every row needs an expected output.\n")


def test_csv_origins_are_the_lines_rows_start_on(stocked: Path, cli) -> None:
    write(stocked / "data" / "x.csv", CSV.replace("last,\n", "last,one\n"))
    assert cli("ingest", "data/x.csv").code == 0
    import duckdb
    con = duckdb.connect(str(stocked / "runs" / "refinery.duckdb"), read_only=True)
    try:
        origins = [o for (o,) in con.execute("SELECT origin FROM examples WHERE origin LIKE '%x.csv%' "
                                             "ORDER BY origin").fetchall()]
    finally:
        con.close()
    assert origins == ["data/x.csv:2", "data/x.csv:3", "data/x.csv:5", "data/x.csv:8"]


# 9. mix --reasoning on project files written by hand


@pytest.mark.parametrize("header", ["[mix]  # the reasoning mix", "[ mix ]", "[mix]"])
def test_mix_reasoning_edits_a_hand_written_header_in_place(stocked: Path, cli, header: str) -> None:
    text = f'seed = 3\n\n# my notes\n{header}\ncue = "use thinking."  # a cue\ncue_pattern = "use thinking"\n'
    write(stocked / "refinery.toml", text)
    result = cli("mix", "--reasoning", "0.5")
    assert result.code == 0, result.err
    after = (stocked / "refinery.toml").read_text()
    assert after == text + "reasoning_share = 0.5\n"  # comments, spacing and the header as written
    assert load_project(stocked, environ={}).config.mix.reasoning_share == 0.5


def test_mix_reasoning_edits_pyproject_and_adds_a_missing_table(stocked: Path, cli) -> None:
    (stocked / "refinery.toml").unlink()
    text = '[tool.other]\nx = 1  # kept\n\n[tool.refinery]\nseed = 3\n\n[tool.refinery.train]  # fast\nsteps = 5\n'
    write(stocked / "pyproject.toml", text)
    assert cli("mix", "--reasoning", "0.25").code == 0
    assert (stocked / "pyproject.toml").read_text() == text + "\n[tool.refinery.mix]\nreasoning_share = 0.25\n"


@pytest.fixture
def read_only(stocked: Path):
    """The project file made read-only: by its mode, or for root (whom modes do not stop) by chattr +i."""
    config = stocked / "refinery.toml"
    config.chmod(0o444)
    immutable = os.access(config, os.W_OK)
    if immutable and subprocess.run(["chattr", "+i", str(config)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not allowed: no way to make a file read-only")
    yield config, "Operation not permitted" if immutable else "Permission denied"
    if immutable:
        subprocess.run(["chattr", "-i", str(config)], check=True)
    config.chmod(0o644)


def test_mix_reasoning_on_a_read_only_project_file_names_it(stocked: Path, cli, read_only) -> None:
    config, reason = read_only
    before = config.read_text()
    err = fails_unchanged(cli, stocked, "mix", "--reasoning", "0.5")
    assert err == (f"Error: refinery.toml: cannot write it: {reason}. Make it writable (chmod u+w refinery.toml), or "
                   f"write reasoning_share = 0.5 under [mix] yourself.\n")
    assert config.read_text() == before


def test_mix_reasoning_without_reasoning_examples_warns(stocked: Path, cli) -> None:
    result = cli("mix", "--reasoning", "0.5")
    assert result.code == 0
    assert result.out.endswith("train split: 0 reasoning, 2 direct; the next round trains on 0 reasoning + 0 direct "
                               "= 0\n")
    assert result.err == ("Warning: the train split has no reasoning examples, so no training set holds "
                          "reasoning_share = 0.5: the next round would stop with nothing to train on. Ingest "
                          "reasoning examples, set [mix] toggle_template to make them from direct ones, or choose "
                          "another share.\n")
    assert json.loads(cli("mix", "--reasoning", "1", "--json").out)["warning"] == (
        "the train split has no reasoning examples, so no training set holds reasoning_share = 1: the next round "
        "would stop with nothing to train on. Ingest reasoning examples, or choose another share.")
    assert json.loads(cli("mix", "--reasoning", "0", "--json").out)["warning"] is None
    uncomment_setting(stocked / "refinery.toml", "toggle_template", 'toggle_template = "think_toggle.jinja"')
    assert cli("mix", "--reasoning", "0.5").err == (
        'Warning: the train split has no reasoning examples: the next round makes up 2 from direct ones with [mix] '
        'toggle_template = "think_toggle.jinja" (fewer if vetting drops some).\n')


# 10. columns, folders, pipes and read errors in ingest


def test_one_column_for_input_and_output_is_refused(stocked: Path, cli) -> None:
    line = uncomment_setting(stocked / "refinery.toml", "input_column", 'input_column = "output"')
    assert fails_unchanged(cli, stocked, "ingest", "data/seed.jsonl") == (
        f'Error: refinery.toml:{line}: [data] input_column and output_column are both "output": one column cannot be '
        f"both (input and output would be the same text). Give each its own column.\n")


def test_a_csv_header_naming_a_column_twice_is_refused(stocked: Path, cli) -> None:
    write(stocked / "data" / "dup.csv", "input,output,output\nq,a,b\n")
    assert fails_unchanged(cli, stocked, "ingest", "data/dup.csv") == (
        "Error: data/dup.csv:1: the header names column 'output' twice (columns 2 and 3). Rename one of them, or "
        "remove it: every column needs its own name.\n")


def test_ingest_says_what_a_path_is_when_it_is_not_a_file(stocked: Path, cli) -> None:
    (stocked / "data" / "folder.jsonl").mkdir()
    os.mkfifo(stocked / "data" / "pipe.jsonl")
    fix = "Give the data files themselves (JSONL, CSV or Parquet)."
    assert fails_unchanged(cli, stocked, "ingest", "data") == f"Error: data: it is a folder, not a file. {fix}\n"
    assert fails_unchanged(cli, stocked, "ingest", "data/folder.jsonl") == (
        f"Error: data/folder.jsonl: it is a folder, not a file. {fix}\n")
    assert fails_unchanged(cli, stocked, "ingest", "data/pipe.jsonl") == (
        f"Error: data/pipe.jsonl: it is not a regular file but a named pipe (FIFO). {fix}\n")
    assert fails_unchanged(cli, stocked, "ingest", "data/none.jsonl") == "Error: data/none.jsonl: no such file.\n"


def test_a_read_error_in_an_ingest_file_names_the_file(stocked: Path, cli) -> None:
    (stocked / "data" / "mem.jsonl").symlink_to("/proc/self/mem")  # a regular file whose first read fails (EIO)
    assert fails_unchanged(cli, stocked, "ingest", "data/mem.jsonl") == (
        "Error: data/mem.jsonl: cannot read it: Input/output error. Check the file (and the disk it is on), then "
        "ingest it again.\n")
