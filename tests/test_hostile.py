"""Bad input never crashes and never destroys: each case a hostile user tried gives its exact `Error:` line and exit
code 1, and leaves every table of the store as it was. Real projects, real DuckDB files, real Jinja."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, store_snapshot, uncomment_setting, write

from refinery.errors import ConfigError
from refinery.rules import load_rules
from refinery.stages.generate import Candidate, render_candidates, template_environment, vet_candidates
from refinery.stages.loop import run_round
from refinery.store import Store


def fails_unchanged(cli, store: Path, *args: str) -> str:
    """Run a command that must fail; check exit code 1 and the store untouched; return its stderr."""
    before = store_snapshot(store)
    result = cli(*args)
    assert result.code == 1, (result.out, result.err)
    assert "Traceback" not in result.err
    assert store_snapshot(store) == before
    return result.err


# export -o


def test_export_refuses_to_write_over_the_store_or_runs_files_or_an_existing_file(stocked: Path, cli) -> None:
    store = stocked / "runs" / "refinery.duckdb"
    before = store.read_bytes()
    err = fails_unchanged(cli, store, "export", "--split", "train", "-o", "runs/refinery.duckdb")
    assert err == ("Error: runs/refinery.duckdb: that is the project's store; an export there would destroy it. "
                   "Give another file with -o.\n")
    assert fails_unchanged(cli, store, "export", "-o", "runs/refinery.duckdb", "--force") == err  # never, forced
    (stocked / "link.jsonl").symlink_to(store)  # nor through a link to it
    assert fails_unchanged(cli, store, "export", "-o", "link.jsonl", "--force").startswith(
        "Error: link.jsonl: that is the project's store;")
    assert fails_unchanged(cli, store, "export", "-o", "runs/.gitignore", "--force") == (
        "Error: runs/.gitignore: refinery keeps this file in runs/, and an export over it would break the project. "
        "Give a new file, outside runs/ or under runs/export/.\n")
    assert store.read_bytes() == before
    write(stocked / "mine.jsonl", "my own notes\n")
    assert fails_unchanged(cli, store, "export", "-o", "mine.jsonl") == (
        "Error: mine.jsonl: the file exists. Pass --force to write over it, or give another file with -o.\n")
    assert (stocked / "mine.jsonl").read_text() == "my own notes\n"
    assert fails_unchanged(cli, store, "export", "-o", "data") == (
        "Error: data: that is a folder. Give a file path with -o.\n")
    forced = cli("export", "-o", "mine.jsonl", "--force")
    assert (forced.code, forced.out) == (0, "Wrote 2 examples (split: train) to mine.jsonl\n")
    assert [json.loads(line)["completion"][0]["content"] for line in (stocked / "mine.jsonl").open()] == \
        ["world", "to you"]
    for _ in range(2):  # the default file is refinery's own export: written again without --force
        assert cli("export").code == 0
    assert cli("status").code == 0


# templates that raise while rendering


LIB = "{% macro boom() %}\n{{ {}['missing'] }}\n{% endmacro %}\n"
RAISING = {
    "floor_division_by_zero": ("{% set input %}{{ 1 // 0 }}{% endset %}{% set output %}x{% endset %}",
                               "t.jinja:1: template error: integer division or modulo by zero (ZeroDivisionError)."),
    "int_plus_text": ("{% set input %}x{% endset %}\n{% set output %}{{ 1 + 'a' }}{% endset %}",
                      "t.jinja:2: template error: unsupported operand type(s) for +: 'int' and 'str' (TypeError)."),
    "choice_of_nothing": ("{% set input %}{{ choice([]) }}{% endset %}{% set output %}x{% endset %}",
                          "t.jinja:1: template error: Cannot choose from an empty sequence (IndexError)."),
    "randint_backwards": ("{% set input %}{{ randint(5, 2) }}{% endset %}{% set output %}x{% endset %}",
                          "t.jinja:1: template error: empty range for randrange() (5, 3, -2) (ValueError)."),
    "fields_text": ("{% set input %}x{% endset %}{% set output %}y{% endset %}\n{% set fields = 'abc' %}",
                    "t.jinja:2: fields = 'abc': expected a mapping like {\"key\": value}, or no fields at all."),
    "fields_number": ("{% set input %}x{% endset %}{% set output %}y{% endset %}\n\n{%- set fields = 5 -%}",
                      "t.jinja:3: fields = 5: expected a mapping like {\"key\": value}, or no fields at all."),
    "fields_not_json": ("{% set input %}x{% endset %}{% set output %}y{% endset %}{% set fields = {'a': range(2)} %}",
                        "t.jinja:1: fields cannot be stored: a value is not text, a number, true/false, a list or a "
                        "mapping (Object of type range is not JSON serializable)."),
    "lone_surrogate": ("{% set input %}{{ '\\ud800' }}{% endset %}{% set output %}x{% endset %}",
                       "t.jinja:1: input cannot be stored: it holds a lone surrogate (\\ud800), half of a UTF-16 "
                       "pair."),
    "endless_macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{% set input %}{{ f(1) }}{% endset %}"
                      "{% set output %}x{% endset %}",
                      "t.jinja:1: template error: it calls itself without end (a macro that recurses with no way out, "
                      "or a template that includes or imports itself)."),
    "includes_itself": ("{% set input %}{% include 't.jinja' %}{% endset %}{% set output %}x{% endset %}",
                        "t.jinja:1: template error: it calls itself without end (a macro that recurses with no way "
                        "out, or a template that includes or imports itself)."),
    "imported_macro_raises": ("{% import '_lib.jinja' as lib %}\n{% set input %}{{ lib.boom() }}{% endset %}"
                              "{% set output %}x{% endset %}",
                              "_lib.jinja:2: template error: 'dict object' has no attribute 'missing'."),
    "sandbox_range": ("{% set input %}{% for i in range(10**6) %}{% endfor %}{% endset %}{% set output %}x"
                      "{% endset %}",
                      "t.jinja:1: template error: Range too big. The sandbox blocks ranges larger than MAX_RANGE "
                      "(100000) (OverflowError)."),
}


@pytest.mark.parametrize(("text", "message"), list(RAISING.values()), ids=list(RAISING))
def test_a_template_that_raises_names_its_file_and_line(tmp_path: Path, monkeypatch, text: str,
                                                        message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "templates" / "t.jinja", text)
    write(tmp_path / "templates" / "_lib.jinja", LIB)
    with pytest.raises(ConfigError) as err:
        render_candidates(template_environment(Path("templates")), "t.jinja",
                          {"id": "p0", "input": "i", "output": "o", "fields": {}}, count=1, seed=0)
    assert str(err.value) == f"templates/{message} (Rendering for parent p0.)"


def test_a_raising_template_stops_the_round_before_training(demo_project, cli) -> None:
    write(demo_project.root / "templates" / "punctuation.jinja", "{%- set input %}a{% endset -%}\n"
          "{%- set output %}{{ parent.fields.answer // 0 }}{% endset -%}\n")
    with Store(demo_project.store_path) as store:
        first = store.scalar("SELECT min(id) FROM examples WHERE split = 'analysis' AND status = 'active'")
    err = fails_unchanged(cli, demo_project.store_path, "iterate")
    assert err == ("Error: templates/punctuation.jinja:2: template error: integer division or modulo by zero "
                   f"(ZeroDivisionError). (Rendering for parent {first}.)\n")
    assert not (demo_project.runs_dir / "round-001").exists()


def test_an_empty_render_is_rejected_with_its_reason_not_stored(demo_project) -> None:
    rules = load_rules(REPO / "rules")
    made = [Candidate(input="", output="Answer: 5", fields={}, template="e.jinja", parent_id="p", cluster_id="c"),
            Candidate(input="Tom has 2 pens and buys 3 more. How many pens now?", output="", fields={},
                      template="e.jinja", parent_id="p", cluster_id="c")]
    vetted = vet_candidates(made, rules, known_hashes=set(), held_out_inputs=set())
    assert [(c.outcome, c.detail) for c in vetted] == [
        ("failed_checks", "template e.jinja rendered an empty input"),
        ("failed_checks", "template e.jinja rendered an empty output")]
    # and in a real round: every render of the family is logged with the reason, none is trained on
    write(demo_project.root / "templates" / "capitalisation.jinja",
          "{%- set input %}{{ parent.input if index else '' }}{% endset -%}\n"
          "{%- set output %}{{ '  ' if index else parent.output }}{% endset -%}\n")
    config = demo_project.config.override("generate", targeting="random").override("train", steps=4)
    run_round(demo_project.with_config(config))
    with Store(demo_project.store_path) as store:
        logged = store.frame("SELECT outcome, detail, input, output FROM generations "
                             "WHERE template = 'capitalisation.jinja'")
        stored = store.scalar("SELECT count(*) FROM examples WHERE template = 'capitalisation.jinja' "
                              "OR trim(input) = '' OR trim(output) = ''")
    assert logged.height > 0 and stored == 0
    assert set(logged["outcome"]) == {"failed_checks"}
    assert set(logged["detail"]) == {"template capitalisation.jinja rendered an empty input",
                                     "template capitalisation.jinja rendered an empty output"}


# rules and project files


def test_a_rules_file_that_is_a_folder_or_a_broken_link_is_named(stocked: Path, cli) -> None:
    store = stocked / "runs" / "refinery.duckdb"
    (stocked / "rules" / "extra.toml").mkdir()
    assert fails_unchanged(cli, store, "iterate") == (
        "Error: rules/extra.toml: it is a folder, not a file. Every *.toml in rules/ is read as a rules file: "
        "remove it, or rename it so that its name does not end in .toml.\n")
    (stocked / "rules" / "extra.toml").rmdir()
    (stocked / "rules" / "gone.toml").symlink_to(stocked / "nowhere.toml")
    assert fails_unchanged(cli, store, "iterate") == (
        f"Error: rules/gone.toml: it is a link to {stocked / 'nowhere.toml'}, which does not exist. Every *.toml in "
        f"rules/ is read as a rules file: remove it, or rename it so that its name does not end in .toml.\n")


@pytest.mark.parametrize(("key", "value", "command", "message"), [
    ("reasoning_share", "nan", "mix", "[mix] reasoning_share = nan: expected a number from 0 to 1."),
    ("reasoning_share", "-inf", "status", "[mix] reasoning_share = -inf: expected a number from 0 to 1."),
    ("epochs", "inf", "status", "[train] epochs = inf: expected a number >= 0.01."),
    ("runs_dir", '"notes.txt"', "status", '(top level) runs_dir = "notes.txt": that is a file, not a folder. Point '
     "runs_dir at a folder (it is created when missing), or move the file."),
    ("templates_dir", '"notes.txt"', "iterate", '(top level) templates_dir = "notes.txt": that is a file, not a '
     "folder. Point templates_dir at a folder (it is created when missing), or move the file."),
])
def test_a_bad_number_or_folder_in_the_project_file_names_its_line(stocked: Path, cli, key, value, command,
                                                                   message) -> None:
    write(stocked / "notes.txt", "not a folder\n")
    line = uncomment_setting(stocked / "refinery.toml", key, f"{key} = {value}")
    err = fails_unchanged(cli, stocked / "runs" / "refinery.duckdb", command)
    assert err == f"Error: refinery.toml:{line}: {message}\n"


@pytest.mark.parametrize("missing", ["weights", "tokenizer"])
def test_a_base_model_folder_without_weights_or_tokenizer_fails_before_the_store(demo_project, cli,
                                                                                 missing: str) -> None:
    folder = demo_project.root / "models" / "half"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "data" / "tiny-base" / "config.json", folder)
    if missing == "tokenizer":
        shutil.copy(REPO / "data" / "tiny-base" / "model.safetensors", folder)
    config = demo_project.root / "refinery.toml"
    config.write_text(config.read_text().replace(str(REPO / "data" / "tiny-base"), "models/half"))
    err = fails_unchanged(cli, demo_project.store_path, "iterate")
    if missing == "weights":
        assert err == (f'Error: base_model = "{folder}": the folder has a config.json but no weights (expected one '
                       f"of: model.safetensors, model.safetensors.index.json). Save the model there with "
                       f"save_pretrained, or set base_model to another model; bundled:tiny-base always works.\n")
    else:
        assert err.startswith(f'Error: base_model = "{folder}": cannot load its tokenizer (')
        assert err.endswith("). Save the tokenizer beside the model (tokenizer.save_pretrained), or set base_model "
                            "to another model; bundled:tiny-base always works.\n")


# ingest


SURROGATE = "holds a lone surrogate (\\{}), half of a UTF-16 pair and not a character. Write the character itself, " \
            "or both halves of its pair."


@pytest.mark.parametrize(("line", "message"), [
    ("[" * 5000 + "]" * 5000, "JSON nested too deeply to read (lists or objects inside each other about a thousand "
     "levels or more). Flatten the row."),
    ('{"input": "a", "output": "b", "deep": ' + "[" * 3000 + "]" * 3000 + "}",
     "JSON nested too deeply to read (lists or objects inside each other about a thousand levels or more). Flatten "
     "the row."),
    ('{"input": "a", "output": "b", "n": ' + "7" * 5000 + "}",
     "a number has more than 4300 digits, more than can be read. Write it as a JSON string."),
    ('{"input": "a\\ud800", "output": "b"}', "field 'input': " + SURROGATE.format("ud800")),
    ('{"input": "a", "output": "b", "note": ["x", {"y": "\\udfff"}]}', "field 'note': " + SURROGATE.format("udfff")),
    ('{"input": "a", "output": "b", "\\udc00key": 1}', 'key "\\udc00key": ' + SURROGATE.format("udc00")),
], ids=["nested-array", "nested-field", "huge-integer", "surrogate-input", "surrogate-field", "surrogate-key"])
def test_unreadable_json_rows_name_file_and_line(stocked: Path, cli, line: str, message: str) -> None:
    write(stocked / "data" / "bad.jsonl", '{"input": "fine", "output": "row"}\n' + line + "\n")
    err = fails_unchanged(cli, stocked / "runs" / "refinery.duckdb", "ingest", "data/bad.jsonl")
    assert err == f"Error: data/bad.jsonl:2: {message}\n"
