"""The fuzz suite: hostile ingest files, project files, rules and templates, generated with Hypothesis and run
through the real CLI on real projects. For every case: exit code 0 or 1, no traceback, an error that names the
file, and on failure a store exactly as it was.

REFINERY_FUZZ_EXAMPLES sets the cases in all (default 400, split over the four properties; docs/fuzz.md has the
figures of longer runs); REFINERY_FUZZ_RANDOM=1 draws new cases instead of the same derandomized ones each run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from conftest import store_snapshot, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refinery.cli import main
from refinery.config import SECTIONS, CoreSettings
from refinery.errors import ConfigError
from refinery.project import init_project, load_project
from refinery.rules import load_rules
from refinery.stages.generate import render_candidates, template_environment, vet_candidates

EXAMPLES = int(os.environ.get("REFINERY_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=max(1, EXAMPLES // 4), deadline=None, database=None,
                derandomize=not os.environ.get("REFINERY_FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck))
SENTINEL = 'base_model = "models/none"'  # every fuzz project's model is missing: a sound round stops there
SEED = "".join(json.dumps({"input": f"say {w}", "output": w.upper()}) + "\n" for w in ("one", "two", "three"))


def make_project(root: Path, *, rules: str | None = None, template: str | None = None) -> Path:
    init_project(root)
    (root / "refinery.toml").write_text(SENTINEL + "\n" + (root / "refinery.toml").read_text())
    write(root / "data" / "seed.jsonl", SEED)
    if rules is not None:
        for path in [*(root / "rules").glob("*.toml"), *(root / "templates").glob("*.jinja")]:
            path.unlink()
        write(root / "rules" / "fuzz.toml", rules)
    if template is not None:
        write(root / "templates" / "fuzz.jinja", template)
    assert run(root, "ingest", "data/seed.jsonl", "--split", "train")[0] == 0
    assert run(root, "ingest", "data/seed.jsonl", "--split", "analysis")[0] == 0  # duplicates: nothing new
    return root


def run(root: Path, *args: str) -> tuple[int, str, str]:
    """`refinery ARGS` in-process from the project folder; an uncaught exception fails the case as it is."""
    out, err, before = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(before)
    return code, out.getvalue(), err.getvalue()


def check_case(root: Path, args: tuple[str, ...], names: tuple[str, ...]) -> int:
    """Run one case and assert what every case must hold; returns the exit code."""
    store = root / "runs" / "refinery.duckdb"
    before = store.read_bytes()
    code, out, err = run(root, *args)
    assert code in (0, 1), (code, err)
    assert "Traceback" not in out + err
    if code == 1:
        assert err.startswith("Error: "), err
        assert any(name in err for name in names), err
        assert not store.with_name(store.name + ".wal").exists(), err
        if store.read_bytes() != before:  # the same bytes are the same store; else compare every table's rows
            copy = root.parent / "before.duckdb"
            copy.write_bytes(before)
            assert store_snapshot(store) == store_snapshot(copy), err
    TALLY[args[0]][code] += 1
    return code


TALLY: dict[str, dict[int, int]] = {name: {0: 0, 1: 0} for name in ("ingest", "status", "mix", "iterate")}


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    print(f"\nfuzz cases by command (exit 0 / exit 1): {TALLY}")


# values


def huge_nesting(n: int) -> str:
    return "[" * n + "]" * n


TEXT = st.text(min_size=1, max_size=40).filter(str.strip)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
RAW_JSON = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v)),
    st.sampled_from([huge_nesting(5000), huge_nesting(999), "9" * 5000, '"\\ud800"', '"\\udfff x"', "NaN",
                     "-Infinity", '"\\u0000"', "1e999", '{"a": 1, "a": 2}']),
)


@st.composite
def jsonl_lines(draw, sound: bool = False) -> str:
    """One line of a JSONL file: a sound row, a row with hostile values, or not JSON at all."""
    kind = "row" if sound else draw(st.sampled_from(["row", "row", "hostile_row", "raw", "text"]))
    if kind == "row":
        row = {"input": draw(TEXT), "output": draw(TEXT)}
        row.update(draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)))
        return json.dumps(row, ensure_ascii=draw(st.booleans()))
    if kind == "hostile_row":
        pairs = {"input": draw(RAW_JSON), "output": draw(RAW_JSON)}
        for key in draw(st.lists(st.sampled_from(["split", "kind", "extra", "\\ud800", "input"]), max_size=2)):
            pairs[key] = draw(RAW_JSON)
        return "{" + ", ".join(f'"{k}": {v}' for k, v in pairs.items()) + "}"
    if kind == "raw":
        return draw(RAW_JSON)
    return draw(st.text(max_size=30)).replace("\n", " ")


@st.composite
def ingest_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".jsonl", ".jsonl", ".csv", ".parquet", ".txt"]))
    if suffix == ".jsonl":
        sound = draw(st.integers(0, 2)) == 0  # a third of the files hold sound rows only (with hostile text)
        body = "\n".join(draw(st.lists(jsonl_lines(sound), max_size=6))).encode("utf-8", "surrogatepass")
        return suffix, body if draw(st.integers(0, 9)) else body + draw(st.binary(max_size=8))
    if suffix == ".csv":
        header = draw(st.sampled_from(["input,output", "input,output,split", "a,b", ""]))
        rows = draw(st.lists(st.text(max_size=20), max_size=4))
        return suffix, ("\n".join([header, *rows])).encode("utf-8", "surrogatepass")
    return suffix, draw(st.binary(max_size=64))


@FUZZ
@given(ingest_files(), st.sampled_from([(), ("--split", "train"), ("--split", "holdout"), ("--split", "bogus"),
                                        ("--kind", "direct"), ("--source", "seed")]))
def test_fuzz_ingest(fuzz_root, file: tuple[str, bytes], options: tuple[str, ...]) -> None:
    root = fuzz_root("ingest")
    suffix, body = file
    (root / "data" / f"fuzz{suffix}").write_bytes(body)
    check_case(root, ("ingest", f"data/fuzz{suffix}", *options), (f"fuzz{suffix}", "--split", "--kind"))


# project files

SAFE_PATHS = ["runs/other.duckdb", "notes.txt", "rules", "data", ".", "..", "runs", "refinery.toml", "x/y/z.duckdb",
              "data/seed.jsonl", ""]
PATH_KEYS = {"store", "runs_dir", "rules_dir", "templates_dir", "base_model", "production", "embedder"}
TOML_LITERALS = st.one_of(
    st.integers(-(10**30), 10**30).map(str), st.sampled_from(["nan", "inf", "-inf", "+nan", "1e309", "0.0", "-0",
                                                              "true", "false", "[]", "{}", "[1, 'a']", "{ a = 1 }",
                                                              "1979-05-27", '"""multi\nline"""', "0x10", "1_000"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=20).map(lambda s: json.dumps(s)),
)
SETTING_NAMES = {"": [f for f in CoreSettings.__dataclass_fields__]} | {
    name: list(cls.__dataclass_fields__) for name, cls in SECTIONS.items()}


@st.composite
def project_files(draw) -> str:
    sections = draw(st.dictionaries(st.sampled_from(["", *SECTIONS, "bogus"]), st.just(None), max_size=4))
    lines = []
    for section in sorted(sections):
        if section:
            lines.append(f"[{section}]")
        names = SETTING_NAMES.get(section, []) + ["unknown_key"]
        for key in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
            value = (json.dumps(draw(st.sampled_from(SAFE_PATHS))) if key in PATH_KEYS
                     else draw(TOML_LITERALS))
            lines.append(f"{key} = {value}")
    if draw(st.integers(0, 7)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=15)).replace("\n", " "))
    return SENTINEL + "\n" + "\n".join(lines) + "\n"


@pytest.mark.slow  # `make test-slow` (in .ci/run): keeps the default run under 10 minutes
@FUZZ
@given(project_files(), st.sampled_from(["status", "mix"]))
def test_fuzz_project_file(fuzz_root, text: str, command: str) -> None:
    root = fuzz_root("config")
    write(root / "notes.txt", "a file, not a folder\n")
    (root / "refinery.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    check_case(root, (command,), ("refinery.toml", "runs/other.duckdb", "x/y/z.duckdb", "store"))


# rules

REGEXES = ["\\S", "(", "[a-", "(?P<x>a)", "a{99999}", "\\", "(?i)sunny", "<w>(.*?)</w>", "(a)|(b)", "", ".*"]
RULE_VALUES = st.one_of(st.sampled_from([json.dumps(r) for r in REGEXES]), TOML_LITERALS,
                        st.sampled_from(['"regex"', '"contains"', '"absent"', '"equals"', '"json_schema"', '"regexx"',
                                         '{ type = "object" }', '{ type = "objekt" }', '["a", "b"]', '["fuzz.jinja"]',
                                         '"INV"', '"DIR"', '"fuzz.jinja"', '"variants.jinja"', '{ a = "b" }']))
RULE_KEYS = {"check": ["name", "type", "description", "when", "unless", "pattern", "text", "extract", "field",
                       "lookup", "schema", "severity", "bogus"],
             "target": ["checks", "templates", "bogus"], "template": ["file", "kind", "params", "description"],
             "lookup": ["name", "key", "ignore_case", "table", "description"]}


@st.composite
def rules_files(draw) -> str:
    lines = []
    for table in draw(st.lists(st.sampled_from([*RULE_KEYS, "bogus"]), min_size=1, max_size=4)):
        lines.append(f"[[{table}]]")
        keys = RULE_KEYS.get(table, ["x"])
        if table == "check" and draw(st.booleans()):  # often a sound core, so that deeper checks are reached
            lines += [f'name = "c{len(lines)}"', 'type = "regex"', "pattern = '\\S'"]
            keys = [k for k in keys if k not in ("name", "type", "pattern")]
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            lines.append(f"{key} = {draw(RULE_VALUES)}")
    if draw(st.integers(0, 7)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=15)).replace("\n", " "))
    return "\n".join(lines) + "\n"


@pytest.mark.slow  # `make test-slow` (in .ci/run): keeps the default run under 10 minutes
@FUZZ
@given(rules_files())
def test_fuzz_rules(fuzz_root, text: str) -> None:
    root = fuzz_root("rules")
    (root / "rules" / "fuzz.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    check_case(root, ("iterate",), ("rules/fuzz.toml", "templates/", SENTINEL))


# templates

FRAGMENTS = [
    "{% set input %}{{ parent.input }} {{ choice(['a', 'b']) }}{% endset %}", "{% set output %}{{ parent.output }}"
    "{% endset %}", "{% set input %}{% endset %}", "{% set output %}   {% endset %}", "{% set input = 5 %}",
    "{% set output = none %}", "{{ 1 // 0 }}", "{{ 1 + 'a' }}", "{{ choice([]) }}", "{{ randint(5, 2) }}",
    "{{ randint(1, 9) }}", "{% set fields = 'abc' %}", "{% set fields = 5 %}", "{% set fields = {'k': 1} %}",
    "{% set fields = {'k': range(2)} %}", "{% set fields = none %}", "{% set fields = {'n': 'nan' | float} %}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{% include 'fuzz.jinja' %}",
    "{% import 'fuzz.jinja' as me %}", "{% for i in range(10**6) %}{% endfor %}", "{{ parent.fields.nope }}",
    "{{ parent.__class__ }}", "{{ params.x }}", "{{ params.nope }}", "{% if %}", "{% endif %}", "{{", "}}", "{#",
    "\n", "{{ '\\ud800' }}", "{{ index }}", "{{ tojson(parent) }}", "{{ [1, 2][5] }}", "{{ {}['k'] }}",
    "{{ undefined_name }}", "{% include 'missing.jinja' %}", "{{ parent.input | upper }}", "{{ 'x' * 3 }}",
    "{% set input %}\u00e9\u2603\U0001f600{% endset %}", "{{ 2 ** 64 }}", "{{ (1, 2) | list | sum }}",
]


@st.composite
def templates(draw) -> str:
    parts = draw(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=10), max_size=6))
    if draw(st.integers(0, 2)):  # most often a template that sets both, with the hostile parts around them
        parts += [FRAGMENTS[0], FRAGMENTS[1]]
        parts = draw(st.permutations(parts))
    return "".join(parts)


TEMPLATE_RULES = """\
[[check]]
name = "nonempty"
type = "regex"
pattern = '\\S'

[[target]]
checks = ["nonempty"]
templates = ["fuzz.jinja"]

[[template]]
file = "fuzz.jinja"
kind = "DIR"
params = { x = 1 }
"""


@pytest.mark.slow  # `make test-slow` (in .ci/run)
@FUZZ
@given(templates())
def test_fuzz_templates(fuzz_root, text: str) -> None:
    root = fuzz_root("templates")
    (root / "templates" / "fuzz.jinja").write_text(text, encoding="utf-8", errors="surrogatepass")
    check_case(root, ("iterate",), ("templates/fuzz.jinja", SENTINEL))
    # and the stage itself, with every parent: renders are vetted, or the error names the template
    project = load_project(root, environ={})
    rules, env = load_rules(project.rules_dir), template_environment(project.templates_dir)
    parent = {"id": "p0", "input": "say one", "output": "ONE", "fields": {"n": 1}}
    try:
        made = render_candidates(env, "fuzz.jinja", parent, count=2, seed=0, spec=rules.template("fuzz.jinja"))
    except ConfigError as exc:
        assert "fuzz.jinja" in str(exc) or "missing.jinja" in str(exc), str(exc)
        return
    for candidate in vet_candidates(made, rules, known_hashes=set(), held_out_inputs=set()):
        assert candidate.outcome in ("stored", "failed_checks", "duplicate"), candidate
        assert candidate.outcome != "stored" or (candidate.input and candidate.output), candidate


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    """One project per property, made on first use and kept for all its cases."""
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            root = tmp_path_factory.mktemp(f"fuzz-{kind}") / "proj"
            made[kind] = make_project(root, rules=TEMPLATE_RULES if kind == "templates" else
                                      ("" if kind == "rules" else None),
                                      template="" if kind == "templates" else None)
        return made[kind]
    return get


def test_the_fuzz_projects_stop_at_the_missing_model(fuzz_root) -> None:
    """What a sound case ends with in the rules and templates properties: the sentinel, not a crash."""
    root = fuzz_root("rules")
    write(root / "rules" / "fuzz.toml", "[[check]]\nname = \"a\"\ntype = \"regex\"\npattern = '\\S'\n")
    code, _, err = run(root, "iterate")
    assert code == 1 and err.startswith(f"Error: {SENTINEL}: cannot load it ("), err
