"""Rules as data and the evaluate stage: each kind of check true and false, metrics, and bad rules files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write

from refinery.errors import ConfigError
from refinery.evaluate import run_checks, summarize
from refinery.rules import check_one, load_rules, parse_rules

RULES = """\
[[check]]
name = "tag"
when = '<weather>'
type = "regex"
pattern = '<display_weather>[^<]+</display_weather>'

[[check]]
name = "no_tag"
unless = '<weather>'
type = "absent"
pattern = 'display_weather'
severity = 3

[[check]]
name = "says_answer"
type = "contains"
text = "Answer:"

[[check]]
name = "answer"
type = "equals"
extract = 'Answer: (-?\\d+)'
field = "answer"

[[check]]
name = "same_answer_as_expected"
type = "equals"
extract = 'Answer: (-?\\d+)'

[[check]]
name = "json_payload"
when = 'json'
type = "json_schema"
extract = '<json>(.*)</json>'
schema = { type = "object", required = ["city"], properties = { city = { type = "string" } } }

[[target]]
checks = ["tag", "no_tag"]
templates = ["punctuation.jinja", "no_tag.jinja"]
"""


@pytest.fixture
def rules(tmp_path: Path):
    write(tmp_path / "rules" / "r.toml", RULES)
    return load_rules(tmp_path / "rules")


@pytest.mark.parametrize(("name", "text", "prediction", "expected", "fields", "verdict"), [
    ("tag", "<weather>Sunny</weather> q", "Answer: 1<display_weather>☀️</display_weather>", "", {}, True),
    ("tag", "<weather>Sunny</weather> q", "Answer: 1", "", {}, False),
    ("tag", "no weather here", "Answer: 1", "", {}, None),
    ("no_tag", "q", "Answer: 1", "", {}, True),
    ("no_tag", "q", "Answer: 1<display_weather>☀️</display_weather>", "", {}, False),
    ("no_tag", "<weather>Rain</weather> q", "anything", "", {}, None),
    ("says_answer", "q", "Answer: 3", "", {}, True),
    ("says_answer", "q", "answer 3", "", {}, False),
    ("answer", "q", "<think>1 + 2 = 3</think>Answer: 3", "", {"answer": 3}, True),
    ("answer", "q", "Answer: 4", "", {"answer": 3}, False),
    ("answer", "q", "no answer at all", "", {"answer": 3}, False),
    ("answer", "q", "Answer: 4", "", {}, None),  # no field to compare with: does not apply
    ("same_answer_as_expected", "q", "Answer: 12", "Answer: 12", {}, True),
    ("same_answer_as_expected", "q", "Answer: 21", "Answer: 12", {}, False),
    ("json_payload", "json please", '<json>{"city": "Oslo"}</json>', "", {}, True),
    ("json_payload", "json please", '<json>{"city": 5}</json>', "", {}, False),
    ("json_payload", "json please", '<json>{"city": </json>', "", {}, False),
    ("json_payload", "plain", "whatever", "", {}, None),
])
def test_each_kind_of_check_true_and_false(rules, name, text, prediction, expected, fields, verdict) -> None:
    assert check_one(rules.check(name), input=text, prediction=prediction, expected=expected,
                     fields=fields) is verdict


def test_results_and_metrics_per_split_and_check(rules) -> None:
    rows = pl.DataFrame({
        "example_id": ["a", "b", "c"],
        "variant": ["", "", ""],
        "input": ["<weather>Sunny</weather> q", "q", "q"],
        "expected": ["Answer: 1<display_weather>☀️</display_weather>", "Answer: 2", "Answer: 3"],
        "fields": [json.dumps({"answer": 1}), json.dumps({"answer": 2}), json.dumps({"answer": 3})],
        "prediction": ["Answer: 1<display_weather>☀️</display_weather>", "Answer: 2<display_weather>x"
                       "</display_weather>", "Answer: 3"],
    })
    results = run_checks(rules, rows)
    assert results.height == 3 * len(rules.checks)
    b = {r["check_name"]: r for r in results.filter(example_id="b").iter_rows(named=True)}
    assert (b["no_tag"]["passed"], b["no_tag"]["detail"]) == (False, "found 'display_weather'")
    assert (b["tag"]["applies"], b["tag"]["passed"]) == (False, None)
    assert b["answer"]["passed"] is True
    splits = pl.DataFrame({"example_id": ["a", "b", "c"], "split": ["test", "test", "analysis"]})
    metrics = summarize(results, splits)
    assert metrics["test"]["examples"] == 2
    assert metrics["test"]["pass_rate"] == 0.5
    assert metrics["test"]["checks"]["no_tag"] == {"applies": 1, "passed": 0, "rate": 0.0}
    # a passes 4 checks of weight 1; b fails no_tag (weight 3) and passes 3 of weight 1: (4 + 3) / (4 + 6)
    assert metrics["test"]["weighted_score"] == 0.7
    assert metrics["analysis"]["pass_rate"] == 1.0
    # an example that no check applies to still counts, as passing (nothing to fail)
    only_tag = run_checks(rules.__class__(checks=(rules.check("tag"),)), rows)
    counted = summarize(only_tag, splits)
    assert counted["test"]["examples"] == 2 and counted["test"]["pass_rate"] == 1.0


def test_targets_map_failing_checks_to_templates(rules) -> None:
    assert rules.templates_for(["no_tag"]) == ["punctuation.jinja", "no_tag.jinja"]
    assert rules.templates_for(["answer"]) == []


def test_the_demo_rules_agree_with_the_demo_data() -> None:
    """Every expected output of the demo passes every check that applies to it: the rules and data are one task."""
    rules = load_rules(REPO / "rules")
    rows = pl.concat([pl.read_ndjson(REPO / "data" / "demo" / f"{n}.jsonl", infer_schema_length=None)
                      .select("input", "output", "emoji", "answer") for n in ("seed", "eval", "corner")])
    frame = pl.DataFrame({
        "example_id": [str(i) for i in range(rows.height)], "variant": [""] * rows.height,
        "input": rows["input"], "expected": rows["output"], "prediction": rows["output"],
        "fields": [json.dumps({"emoji": e, "answer": a}) for e, a in zip(rows["emoji"], rows["answer"],
                                                                      strict=True)]})
    results = run_checks(rules, frame)
    failed = results.filter(pl.col("passed") == False)  # noqa: E712
    assert failed.height == 0, failed.head(5)
    applied = results.filter("applies").group_by("check_name").len()
    assert set(applied["check_name"]) == {c.name for c in rules.checks}  # every check is exercised
    # ...and a wrong output fails the check it should
    emoji = rules.check("emoji_correct")
    assert check_one(emoji, input="<weather>Rain</weather> q", prediction="Answer: 1<display_weather>☀️"
                     "</display_weather>", fields={"emoji": "🌧️"}) is False


@pytest.mark.parametrize(("text", "message"), [
    ('[[check]]\nname = "a"\ntype = "regexx"\npattern = "x"\n',
     "rules/bad.toml:3: check 'a': unknown type 'regexx' (expected one of: regex, contains, absent, json_schema, "
     "equals). Did you mean 'regex'?"),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x"\n\n[[check]]\nname = "b"\ntype = "absent"\n'
     'pattern = "(unclosed"\n',
     "rules/bad.toml:9: check 'b': pattern = '(unclosed' is not a valid regular expression: missing ), "
     "unterminated subpattern at position 0."),
    ('[[check]]\nname = "a"\ntype = "equals"\n',
     "rules/bad.toml:1: check 'a': a equals check needs 'extract'."),
    ('[[check]]\nname = "a"\ntype = "regex"\npatern = "x"\n',
     "rules/bad.toml:4: check 'a': unknown key 'patern' (expected one of: name, type, description, when, unless, "
     "pattern, text, extract, field, schema, severity). Did you mean 'pattern'?"),
    ('[[check]]\ntype = "regex"\npattern = "x"\n',
     "rules/bad.toml:1: check without a name. Add name = \"...\"."),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x"\nseverity = 0\n',
     "rules/bad.toml:5: check 'a': severity = 0: expected a number > 0."),
    ('[[check]]\nname = "a"\ntype = "json_schema"\nschema = { type = "objekt" }\n',
     "rules/bad.toml:4: check 'a': schema is not a valid JSON schema: 'objekt' is not valid under any of the "
     "given schemas."),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x"\n[[target]]\nchecks = ["b"]\ntemplates = ["t"]\n',
     "rules/bad.toml:5: target names check 'b', which no rules file defines."),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x\n',
     "rules/bad.toml:4: invalid TOML: Illegal character '\\n'. Fix the syntax on that line."),
    ('[[checks]]\nname = "a"\n',
     "rules/bad.toml: unknown table 'checks' (expected [[check]], [[target]] or [[template]])."),
    ('[[template]]\nfile = "a.jinja"\nkind = "SAME"\n',
     "rules/bad.toml:3: template 'a.jinja': kind = 'SAME': expected INV (keeps the parent's expected output) or DIR "
     "(changes it as the template declares)."),
    ('[check]\nname = "a"\ntype = "regex"\npattern = "x"\n',
     "rules/bad.toml: 'check' must be an array of tables: write each one under its own [[check]] header (not "
     "[check] or check = ...)."),
])
def test_bad_rules_files_name_file_line_and_problem(tmp_path: Path, monkeypatch, text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path / "rules")
    assert str(err.value) == message


def test_check_names_are_unique_across_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "a.toml", '[[check]]\nname = "x"\ntype = "regex"\npattern = "a"\n')
    write(tmp_path / "rules" / "b.toml", '\n[[check]]\nname = "x"\ntype = "regex"\npattern = "b"\n')
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path / "rules")
    assert str(err.value) == ("rules/b.toml:2: check 'x' is already defined at rules/a.toml:1. "
                              "Give each check its own name.")
    assert parse_rules('[[check]]\nname = "y"\ntype = "contains"\ntext = "t"\n', tmp_path / "c.toml")[0][0].name == "y"
