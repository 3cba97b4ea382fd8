"""Rules as data and the evaluate stage: each kind of check true and false, metrics, and bad rules files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write

from refinery.errors import ConfigError
from refinery.rules import CompiledCheck, check_one, load_rules, parse_rules
from refinery.stages.evaluate import run_checks, summarize

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


LOOKUP_CHECK = '[[check]]\nname = "emoji"\ntype = "equals"\nextract = "<e>(.*)</e>"\nlookup = "weather_emoji"\n\n'
LOOKUP = '[[lookup]]\nname = "weather_emoji"\nkey = \'<weather>(.*?)</weather>\'\n'


@pytest.mark.parametrize(("text", "message"), [
    ('[[check]]\nname = "a"\ntype = "regexx"\npattern = "x"\n',
     "rules/bad.toml:3: check 'a': unknown type 'regexx' (expected one of: regex, contains, absent, json_schema, "
     "equals, judge). Did you mean 'regex'?"),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x"\n\n[[check]]\nname = "b"\ntype = "absent"\n'
     'pattern = "(unclosed"\n',
     "rules/bad.toml:9: check 'b': pattern = '(unclosed' is not a valid regular expression: missing ), "
     "unterminated subpattern at position 0."),
    ('[[check]]\nname = "a"\ntype = "equals"\n',
     "rules/bad.toml:1: check 'a': a equals check needs 'extract'."),
    ('[[check]]\nname = "a"\ntype = "regex"\npatern = "x"\n',
     "rules/bad.toml:4: check 'a': unknown key 'patern' (expected one of: name, type, description, when, unless, "
     "pattern, text, extract, field, lookup, schema, rubric, scale, threshold, severity). Did you mean 'pattern'?"),
    ('[[check]]\ntype = "regex"\npattern = "x"\n',
     "rules/bad.toml:1: check without a name. Add name = \"...\"."),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x"\nseverity = 0\n',
     "rules/bad.toml:5: check 'a': severity = 0: expected a finite number > 0."),
    ('[[check]]\nname = "a"\ntype = "json_schema"\nschema = { type = "objekt" }\n',
     "rules/bad.toml:4: check 'a': schema is not a valid JSON schema: 'objekt' is not valid under any of the "
     "given schemas."),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x"\n[[target]]\nchecks = ["b"]\ntemplates = ["t"]\n',
     "rules/bad.toml:5: target names check 'b', which no rules file defines."),
    ('[[check]]\nname = "a"\ntype = "regex"\npattern = "x\n',
     "rules/bad.toml:4: invalid TOML: Illegal character '\\n'. Fix the syntax on that line."),
    ('[[checks]]\nname = "a"\n',
     "rules/bad.toml: unknown table 'checks' (expected [[check]], [[target]], [[template]] or [[lookup]])."),
    ('[[template]]\nfile = "a.jinja"\nkind = "SAME"\n',
     "rules/bad.toml:3: template 'a.jinja': kind = 'SAME': expected INV (keeps the parent's expected output) or DIR "
     "(changes it as the template declares)."),
    ('[check]\nname = "a"\ntype = "regex"\npattern = "x"\n',
     "rules/bad.toml: 'check' must be an array of tables: write each one under its own [[check]] header (not "
     "[check] or check = ...)."),
    (LOOKUP_CHECK.replace('"weather_emoji"', '"weather_emoj"') + LOOKUP + 'table = { sunny = "s" }\n',
     "rules/bad.toml:1: check 'emoji': lookup 'weather_emoj' names a table that no rules file declares. Declare it "
     "under [[lookup]] with name = \"weather_emoj\", or fix the name. Did you mean 'weather_emoji'?"),
    (LOOKUP_CHECK + '[[lookup]]\nname = "weather_emoji"\nkey = \'<weather>.*?</weather>\'\ntable = { sunny = "s" }\n',
     "rules/bad.toml:9: lookup 'weather_emoji': key = '<weather>.*?</weather>' has no group. Put the part of the "
     "input that is the key in parentheses, e.g. '<city>(.*?)</city>'."),
    (LOOKUP_CHECK + LOOKUP + '\n[lookup.table]\nsunny = "s"\n"clear skies" = 3\n',
     "rules/bad.toml:13: lookup 'weather_emoji': 'clear skies' = 3: expected a string (the value the check expects "
     "for that key)."),
    (LOOKUP_CHECK.replace('lookup = ', 'field = "emoji"\nlookup = ') + LOOKUP + 'table = { sunny = "s" }\n',
     "rules/bad.toml:6: check 'emoji': lookup and field both say where the expected value comes from. Keep one: "
     "lookup (from the input, through a table) or field (from the example)."),
    ('[[check]]\nname = "emoji"\ntype = "regex"\npattern = "x"\nlookup = "weather_emoji"\n',
     "rules/bad.toml:5: check 'emoji': lookup gives the expected value of an equals check; this is a regex check. "
     "Remove lookup, or make it type = \"equals\"."),
    (LOOKUP_CHECK + LOOKUP,
     "rules/bad.toml:7: lookup 'weather_emoji' needs a table of keys and the values they give: table = { key = "
     "\"value\", ... }, or a [lookup.table] section below [[lookup]] with one key = \"value\" per line."),
    (LOOKUP_CHECK + LOOKUP + 'ignore_case = true\n\n[lookup.table]\nSunny = "s"\n"sunny " = "t"\n',
     "rules/bad.toml:14: lookup 'weather_emoji': keys 'Sunny' and 'sunny ' are the same key 'sunny' once "
     "normalised (whitespace collapsed, case ignored) but give different values ('s', 't'). Keep one."),
    (LOOKUP_CHECK + '[[lookup]]\nname = "weather_emoji"\ntable = { sunny = "s" }\n',
     "rules/bad.toml:7: lookup 'weather_emoji' needs 'key': a regular expression on the input whose first group is "
     "the key, e.g. key = '<city>(.*?)</city>'."),
])
def test_bad_rules_files_name_file_line_and_problem(tmp_path: Path, monkeypatch, text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path / "rules")
    assert str(err.value) == message


EMOJI_RULES = """\
[[check]]
name = "emoji"
when = '<weather>'
type = "equals"
extract = '<display_weather>(.*?)</display_weather>'
lookup = "weather_emoji"

[[check]]
name = "emoji_cased"
when = '<weather>'
type = "equals"
extract = '<display_weather>(.*?)</display_weather>'
lookup = "cased"

[[lookup]]
name = "weather_emoji"
key = '<weather>\\W*(.*?)\\W*</weather>'
ignore_case = true
table = { sunny = "☀️", "clear skies" = "☀️", fog = "🌫️" }

[[lookup]]
name = "cased"
key = '<weather>\\W*(.*?)\\W*</weather>'
table = { Sunny = "☀️" }
"""
SUN, FOG = "Answer: 1<display_weather>☀️</display_weather>", "Answer: 1<display_weather>🌫️</display_weather>"


@pytest.mark.parametrize(("check", "text", "prediction", "verdict", "detail"), [
    ("emoji", "<weather>Sunny!</weather> q", SUN, True, ""),
    ("emoji", "q <weather>  CLEAR   Skies... </weather>", SUN, True, ""),  # case and spaces normalised
    ("emoji", "<weather>fog</weather> q", SUN, False,
     "got '☀️', expected '🌫️' for 'fog' (lookup weather_emoji)"),
    ("emoji", "<weather>fog</weather> q", "Answer: 1", False,
     "no value: /<display_weather>(.*?)</display_weather>/ did not match"),
    ("emoji", "<weather>Foggy</weather> q", FOG, None,  # a key the table lacks: nothing to compare with
     "key 'foggy' is not in lookup weather_emoji (rules/r.toml:15); add it there"),
    ("emoji", "<weather>?!</weather> q", FOG, None,
     "no key for lookup weather_emoji: /<weather>\\W*(.*?)\\W*</weather>/ found none in the input"),
    ("emoji", "no tag", SUN, None, None),  # `when` does not match: the check does not apply
    ("emoji_cased", "<weather>Sunny</weather> q", SUN, True, ""),
    ("emoji_cased", "<weather>sunny</weather> q", SUN, None,
     "key 'sunny' is not in lookup cased (rules/r.toml:21); add it there"),
])
def test_a_lookup_check_takes_its_expected_value_from_the_input(tmp_path: Path, monkeypatch, check, text,
                                                               prediction, verdict, detail) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "r.toml", EMOJI_RULES)
    rules = load_rules(Path("rules"))
    # the example's own emoji field plays no part: the table says what the emoji must be
    rows = pl.DataFrame({"example_id": ["a"], "variant": [""], "input": [text], "expected": [prediction],
                         "fields": [json.dumps({"emoji": "☀️"})], "prediction": [prediction]})
    results = run_checks(rules, rows).filter(pl.col("check_name") == check)
    assert (results["passed"][0], results["detail"][0]) == (verdict, detail)
    assert results["applies"][0] is (verdict is not None)
    # vetting a generated example is strict: an input whose key cannot be looked up fails, it is not kept
    run = CompiledCheck(rules.check(check))
    strict = run.verdict(prediction, prediction, {}, input=text, strict=True) if run.applies(text) else (None, None)
    assert strict == (False if verdict is None and detail else verdict, detail)


def test_lookup_names_are_unique_across_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "a.toml", LOOKUP + 'table = { sunny = "s" }\n')
    write(tmp_path / "rules" / "b.toml", LOOKUP_CHECK + LOOKUP + 'table = { sunny = "s" }\n')
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path / "rules")
    assert str(err.value) == ("rules/b.toml:7: lookup 'weather_emoji' is already declared at rules/a.toml:1. "
                              "Give each lookup its own name.")
    (tmp_path / "rules" / "a.toml").unlink()  # a check may name a lookup of another file
    write(tmp_path / "rules" / "b.toml", LOOKUP_CHECK)
    write(tmp_path / "rules" / "c.toml", LOOKUP + 'table = { sunny = "s" }\n')
    assert load_rules(tmp_path / "rules").check("emoji").lookup_table.source == "rules/c.toml:1"


def test_the_demo_emoji_table_gives_every_emoji_of_the_demo_data_and_templates() -> None:
    """The weather_emoji lookup agrees with the emoji field of every seed, eval and corner row, and gives each
    weather word of the templates' params (in any case) its condition's emoji."""
    rules = load_rules(REPO / "rules")
    lookup = rules.check("emoji_correct").lookup_table
    tagged = 0
    for name in ("seed", "eval", "corner"):
        for line in (REPO / "data" / "demo" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["weather"] is None:
                assert row["emoji"] is None and "<weather>" not in row["input"]
                continue
            tagged += 1
            assert lookup.look_up(row["input"])[0] == row["emoji"], (name, row["input"], lookup.look_up(row["input"]))
    assert tagged > 400
    conditions = rules.template("category_mapping.jinja").params["conditions"]
    synonyms = rules.template("synonyms.jinja").params["synonyms"]
    for condition, spec in conditions.items():
        for word in spec["phrases"] + synonyms[condition]:
            for cased in (word, word.upper(), word.title(), word.swapcase()):
                assert lookup.look_up(f"<weather>{cased}!</weather> q")[0] == spec["emoji"], (condition, cased)


def test_check_names_are_unique_across_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "a.toml", '[[check]]\nname = "x"\ntype = "regex"\npattern = "a"\n')
    write(tmp_path / "rules" / "b.toml", '\n[[check]]\nname = "x"\ntype = "regex"\npattern = "b"\n')
    with pytest.raises(ConfigError) as err:
        load_rules(tmp_path / "rules")
    assert str(err.value) == ("rules/b.toml:2: check 'x' is already defined at rules/a.toml:1. "
                              "Give each check its own name.")
    assert parse_rules('[[check]]\nname = "y"\ntype = "contains"\ntext = "t"\n', tmp_path / "c.toml")[0][0].name == "y"
