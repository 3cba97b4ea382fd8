"""Rules as data: the checks a correct output must satisfy and the templates that answer each failing check.

A rules file is TOML with `[[check]]`, `[[target]]`, `[[template]]` and `[[lookup]]` tables; every `*.toml` under
`rules/` is read. A lookup is a table that gives an equals check its expected value from the input (the emoji of
the weather word, say), so that a generated example is checked against the task, not against itself. A problem
in a file is an error naming the file, the line and the fix, e.g.
`rules/weather.toml:12: check 'emoji': unknown type 'regexx' (expected one of: regex, contains, absent, ...)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from refinery.config import UserPattern, display_path, not_a_file, parse_toml, read_text
from refinery.errors import ConfigError

CHECK_TYPES = ("regex", "contains", "absent", "json_schema", "equals", "judge")
NEEDS = {"regex": ("pattern",), "contains": ("text",), "absent": ("pattern",), "json_schema": ("schema",),
         "equals": ("extract",), "judge": ("rubric",)}
CHECK_KEYS = ("name", "type", "description", "when", "unless", "pattern", "text", "extract", "field", "lookup",
              "schema", "rubric", "scale", "threshold", "severity")
TARGET_KEYS = ("checks", "templates", "features")
TEMPLATE_KEYS = ("file", "kind", "description", "params")
TEMPLATE_KINDS = ("INV", "DIR")
LOOKUP_KEYS = ("name", "description", "key", "ignore_case", "table")
TABLES = ("check", "target", "template", "lookup")


@dataclass(frozen=True)
class Lookup:
    """A table that gives an equals check its expected value from the input: the first group of `key` (a regular
    expression on the input), normalised, is looked up in `table`."""

    name: str
    key: str
    table: dict[str, str]  # normalised keys
    source: str
    ignore_case: bool = False
    description: str = ""

    def normalise(self, key: str) -> str:
        """A key as the table holds it: whitespace collapsed and trimmed; case folded with ignore_case."""
        key = " ".join(key.split())
        return key.casefold() if self.ignore_case else key

    def look_up(self, text: str) -> tuple[str | None, str]:
        """(value, normalised key) for an input, or (None, why there is none): it has no key, or the table lacks
        it."""
        found = UserPattern(self.key, setting=f"{self.source}: lookup '{self.name}': key", on="input").search(text)
        key = self.normalise(found.group(1) or "") if found else ""
        if not key:
            return None, f"no key for lookup {self.name}: /{self.key}/ found none in the input"
        if key not in self.table:
            return None, f"key {key!r} is not in lookup {self.name} ({self.source}); add it there"
        return self.table[key], key


@dataclass(frozen=True)
class Check:
    """One check. It applies to an example when `when` matches its input and `unless` does not."""

    name: str
    type: str
    source: str  # file:line, for messages and the store
    description: str = ""
    when: str | None = None
    unless: str | None = None
    pattern: str | None = None  # regex: must match the output; absent: must not
    text: str | None = None  # contains: must appear literally
    extract: str | None = None  # equals / json_schema: a regex whose first group is the value
    field: str | None = None  # equals: the example field to compare with; unset: the same extract of the expected
    lookup: str | None = None  # equals: the [[lookup]] that gives the expected value from the input (not with field)
    schema: dict[str, Any] | None = None
    rubric: str | None = None  # judge: a Jinja prompt seeing input, output, expected and fields (stages/judge.py)
    scale: int | None = None  # judge: ask a score from 1 to scale instead of PASS/FAIL
    threshold: float | None = None  # judge with a scale: the lowest score that passes
    severity: float = 1.0
    lookup_table: Lookup | None = dataclasses.field(default=None, repr=False)  # the lookup named, set by load_rules

    @property
    def file(self) -> str:
        return self.source.rsplit(":", 1)[0]

    def scope(self) -> str:
        """The inputs the check applies to, in words: "inputs with '<weather>'", "inputs without '<weather>'"."""
        def shown(pattern: str) -> str:
            return "'" + re.sub(r"^\(\?i\)", "", pattern) + "'"

        parts = ([f"with {shown(self.when)}"] if self.when else []) + (
            [f"without {shown(self.unless)}"] if self.unless else [])
        return "inputs " + " and ".join(parts) if parts else "inputs it applies to"


@dataclass(frozen=True)
class Target:
    """Which counterexample templates answer which failing checks (and, when `features` is set, only the patterns
    whose feature contains one of those phrases, e.g. "touches punctuation")."""

    checks: tuple[str, ...]
    templates: tuple[str, ...]
    source: str
    features: tuple[str, ...] = ()

    def answers(self, failing: list[str], feature: str | None) -> bool:
        if not set(self.checks) & set(failing):
            return False
        return not self.features or (feature is not None and any(f in feature for f in self.features))


@dataclass(frozen=True)
class TemplateSpec:
    """A generator template's declaration: INV keeps the parent's expected output, DIR changes it as declared."""

    file: str
    kind: str
    source: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleSet:
    checks: tuple[Check, ...]
    targets: tuple[Target, ...] = field(default=())
    templates: tuple[TemplateSpec, ...] = field(default=())
    lookups: tuple[Lookup, ...] = field(default=())

    def template(self, file: str) -> TemplateSpec:
        """The declaration of a template; an undeclared one is DIR with no parameters."""
        return next((t for t in self.templates if t.file == file), TemplateSpec(file, "DIR", ""))

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def cues(self) -> list[tuple[str, UserPattern]]:
        """(check name, compiled `when`) of every conditional check: the input cues hypotheses may name."""
        return [(c.name, _compile(c, "when")) for c in self.checks if c.when]

    def templates_for(self, failing: list[str], feature: str | None = None) -> list[str]:
        """Templates that answer any of the failing checks, those of targets naming the pattern's feature first,
        then in the order the rules name them."""
        out: list[str] = []
        for specific in (True, False):
            for target in self.targets:
                if bool(target.features) == specific and target.answers(failing, feature):
                    out += [t for t in target.templates if t not in out]
        return out


def load_rules(rules_dir: Path) -> RuleSet:
    """Read every `*.toml` file in `rules_dir`; check and lookup names must be unique across files, and a check's
    lookup may be declared in any of them."""
    files = sorted(rules_dir.glob("*.toml")) if rules_dir.is_dir() else []
    if not files:
        raise ConfigError(f"{display_path(rules_dir)}: no rules files (*.toml). Add checks there; "
                          f"`refinery init` shows the format in rules/README.md.")
    checks: list[Check] = []
    targets: list[Target] = []
    specs: list[TemplateSpec] = []
    lookups: dict[str, Lookup] = {}
    for path in files:
        why = not_a_file(path)
        if why:
            folder = display_path(rules_dir)  # not the path's own: a broken link resolves to where it points
            raise ConfigError(f"{folder}/{path.name}: {why}. Every *.toml in {folder}/ is read as a rules file: "
                              f"remove it, or rename it so that its name does not end in .toml.")
        file_checks, file_targets, file_specs, file_lookups = parse_rules(read_text(path), path)
        specs += file_specs
        for check in file_checks:
            clash = next((c for c in checks if c.name == check.name), None)
            if clash:
                raise ConfigError(f"{check.source}: check '{check.name}' is already defined at {clash.source}. "
                                  f"Give each check its own name.")
            checks.append(check)
        for lookup in file_lookups:
            if lookup.name in lookups:
                raise ConfigError(f"{lookup.source}: lookup '{lookup.name}' is already declared at "
                                  f"{lookups[lookup.name].source}. Give each lookup its own name.")
            lookups[lookup.name] = lookup
        targets += file_targets
    known = {c.name for c in checks}
    for target in targets:
        for name in target.checks:
            if name not in known:
                raise ConfigError(f"{target.source}: target names check '{name}', which no rules file "
                                  f"defines.{_suggest(name, known)}")
    checks = [_resolve_lookup(c, lookups) for c in checks]
    return RuleSet(tuple(checks), tuple(targets), tuple(specs), tuple(lookups.values()))


def _resolve_lookup(check: Check, lookups: dict[str, Lookup]) -> Check:
    if check.lookup is None:
        return check
    if check.lookup not in lookups:
        raise ConfigError(f"{check.source}: check '{check.name}': lookup '{check.lookup}' names a table that no "
                          f"rules file declares. Declare it under [[lookup]] with name = \"{check.lookup}\", or fix "
                          f"the name.{_suggest(check.lookup, lookups)}")
    return dataclasses.replace(check, lookup_table=lookups[check.lookup])


def parse_rules(text: str, path: Path) -> tuple[list[Check], list[Target], list[TemplateSpec], list[Lookup]]:
    """Parse one rules file; every problem names its line. A check's lookup is resolved by `load_rules`."""
    shown = display_path(path)
    data = parse_toml(path, text)
    unknown = [k for k in data if k not in TABLES]
    if unknown:
        raise ConfigError(f"{shown}: unknown table '{unknown[0]}' (expected [[check]], [[target]], [[template]] or "
                          f"[[lookup]]).")
    for name in TABLES:
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{shown}: '{name}' must be an array of tables: write each one under its own "
                              f"[[{name}]] header (not [{name}] or {name} = ...).")
    lines = {name: _table_lines(text, name) for name in TABLES}
    if any(len(lines[name]) != len(data.get(name, [])) for name in ("check", "target", "lookup")):
        raise ConfigError(f"{shown}: write each check, target and lookup under its own [[check]], [[target]] or "
                          f"[[lookup]] header line (inline arrays of tables are not supported).")
    checks = [_parse_check(raw, shown, text, lines["check"][i]) for i, raw in enumerate(data.get("check", []))]
    targets = [_parse_target(raw, shown, text, lines["target"][i]) for i, raw in enumerate(data.get("target", []))]
    specs = [_parse_template(raw, shown, text, lines["template"][i] if i < len(lines["template"]) else 0)
             for i, raw in enumerate(data.get("template", []))]
    lookups = [_parse_lookup(raw, shown, text, lines["lookup"][i]) for i, raw in enumerate(data.get("lookup", []))]
    return checks, targets, specs, lookups


def _parse_check(raw: dict[str, Any], shown: str, text: str, line: int) -> Check:
    def where(key: str | None = None) -> str:
        return f"{shown}:{_key_line(text, line, key) if key else line}"

    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where('name')}: check without a name. Add name = \"...\".")
    label = f"check '{name}'"
    for key in raw:
        if key not in CHECK_KEYS:
            raise ConfigError(f"{where(key)}: {label}: unknown key '{key}' (expected one of: "
                              f"{', '.join(CHECK_KEYS)}).{_suggest(key, CHECK_KEYS)}")
    kind = raw.get("type")
    if kind not in CHECK_TYPES:
        raise ConfigError(f"{where('type')}: {label}: unknown type {_quote(kind)} (expected one of: "
                          f"{', '.join(CHECK_TYPES)}).{_suggest(str(kind), CHECK_TYPES)}")
    for key in NEEDS[kind]:
        if key not in raw:
            raise ConfigError(f"{where()}: {label}: a {kind} check needs '{key}'.")
    for key in ("when", "unless", "pattern", "extract"):
        if key in raw:
            _check_regex(raw[key], f"{where(key)}: {label}: {key}")
    for key in ("name", "description", "text", "field", "lookup", "rubric"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where(key)}: {label}: {key} must be a string.")
    if "rubric" in raw:
        _check_rubric(raw["rubric"], f"{where('rubric')}: {label}: rubric", judge=kind == "judge")
    if "scale" in raw or "threshold" in raw:
        _check_scale(raw, where, label, judge=kind == "judge")
    if "lookup" in raw and kind != "equals":
        raise ConfigError(f"{where('lookup')}: {label}: lookup gives the expected value of an equals check; this is "
                          f"a {kind} check. Remove lookup, or make it type = \"equals\".")
    if "lookup" in raw and "field" in raw:
        raise ConfigError(f"{where('lookup')}: {label}: lookup and field both say where the expected value comes "
                          f"from. Keep one: lookup (from the input, through a table) or field (from the example).")
    if "schema" in raw and not isinstance(raw["schema"], dict):
        raise ConfigError(f"{where('schema')}: {label}: schema must be a table (a JSON schema written in TOML).")
    if "schema" in raw:
        _check_schema(raw["schema"], f"{where('schema')}: {label}: schema")
    severity = raw.get("severity", 1.0)
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or not 0 < severity < math.inf:
        raise ConfigError(f"{where('severity')}: {label}: severity = {severity!r}: expected a finite number > 0.")
    values = {k: v for k, v in raw.items() if k not in ("severity",)}
    return Check(source=f"{shown}:{line}", severity=float(severity), **values)


def _parse_target(raw: dict[str, Any], shown: str, text: str, line: int) -> Target:
    for key in raw:
        if key not in TARGET_KEYS:
            raise ConfigError(f"{shown}:{_key_line(text, line, key)}: target: unknown key '{key}' (expected one of: "
                              f"{', '.join(TARGET_KEYS)}).")
    for key in TARGET_KEYS:
        value = raw.get(key)
        if (value is not None or key != "features") and (
                not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)):
            what = "feature phrases, e.g. [\"touches punctuation\"]" if key == "features" else "names"
            raise ConfigError(f"{shown}:{_key_line(text, line, key)}: target: {key} must be a non-empty list of "
                              f"{what}.")
    return Target(tuple(raw["checks"]), tuple(raw["templates"]), f"{shown}:{line}", tuple(raw.get("features", ())))


def _parse_template(raw: dict[str, Any], shown: str, text: str, line: int) -> TemplateSpec:
    def where(key: str | None = None) -> str:
        return f"{shown}:{_key_line(text, line, key) if key else line}"

    for key in raw:
        if key not in TEMPLATE_KEYS:
            raise ConfigError(f"{where(key)}: template: unknown key '{key}' (expected one of: "
                              f"{', '.join(TEMPLATE_KEYS)}).{_suggest(key, TEMPLATE_KEYS)}")
    if not isinstance(raw.get("file"), str) or not raw["file"]:
        raise ConfigError(f"{where('file')}: template without a file. Add file = \"name.jinja\".")
    if raw.get("kind") not in TEMPLATE_KINDS:
        raise ConfigError(f"{where('kind')}: template '{raw['file']}': kind = {_quote(raw.get('kind'))}: expected INV "
                          f"(keeps the parent's expected output) or DIR (changes it as the template declares).")
    if not isinstance(raw.get("params", {}), dict):
        raise ConfigError(f"{where('params')}: template '{raw['file']}': params must be a table.")
    return TemplateSpec(file=raw["file"], kind=raw["kind"], source=f"{shown}:{line}",
                        description=str(raw.get("description", "")), params=raw.get("params", {}))


def _parse_lookup(raw: dict[str, Any], shown: str, text: str, line: int) -> Lookup:
    def where(key: str | None = None) -> str:
        return f"{shown}:{_key_line(text, line, key) if key else line}"

    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where('name')}: lookup without a name. Add name = \"...\" and give that name to a "
                          f"check's lookup.")
    label = f"lookup '{name}'"
    for key in raw:
        if key not in LOOKUP_KEYS:
            raise ConfigError(f"{where(key)}: {label}: unknown key '{key}' (expected one of: "
                              f"{', '.join(LOOKUP_KEYS)}).{_suggest(key, LOOKUP_KEYS)}")
    if "key" not in raw:
        raise ConfigError(f"{where()}: {label} needs 'key': a regular expression on the input whose first group is "
                          f"the key, e.g. key = '<city>(.*?)</city>'.")
    _check_regex(raw["key"], f"{where('key')}: {label}: key")
    if not re.compile(raw["key"]).groups:
        raise ConfigError(f"{where('key')}: {label}: key = {_quote(raw['key'])} has no group. Put the part of the "
                          f"input that is the key in parentheses, e.g. '<city>(.*?)</city>'.")
    ignore_case = raw.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise ConfigError(f"{where('ignore_case')}: {label}: ignore_case = {ignore_case!r}: expected true or false.")
    if not isinstance(raw.get("description", ""), str):
        raise ConfigError(f"{where('description')}: {label}: description must be a string.")
    table = raw.get("table")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where('table') if 'table' in raw else where()}: {label} needs a table of keys and the "
                          f"values they give: table = {{ key = \"value\", ... }}, or a [lookup.table] section below "
                          f"[[lookup]] with one key = \"value\" per line.")
    lookup = Lookup(name=name, key=raw["key"], table={}, source=f"{shown}:{line}", ignore_case=ignore_case,
                    description=raw.get("description", ""))
    written: dict[str, str] = {}
    for key, value in table.items():
        at = f"{shown}:{_entry_line(text, line, key)}"
        if not isinstance(value, str):
            raise ConfigError(f"{at}: {label}: {_quote(key)} = {value!r}: expected a string (the value the check "
                              f"expects for that key).")
        normal = lookup.normalise(key)
        if normal in lookup.table and lookup.table[normal] != value:
            raise ConfigError(f"{at}: {label}: keys {_quote(written[normal])} and {_quote(key)} are the same key "
                              f"{_quote(normal)} once normalised (whitespace collapsed"
                              f"{', case ignored' if ignore_case else ''}) but give different values "
                              f"({_quote(lookup.table[normal])}, {_quote(value)}). Keep one.")
        lookup.table[normal], written[normal] = value, key
    return lookup


def _entry_line(text: str, start: int, key: str) -> int:
    """The line of `key = ...` in a lookup's table (inline, dotted or a [lookup.table] section), else its header."""
    lines = text.splitlines()
    quoted = "|".join(re.escape(k) for k in (f'"{key}"', f"'{key}'", key))
    entry = re.compile(rf"^\s*(table\s*\.\s*)?({quoted})\s*=")
    for number in range(start + 1, len(lines) + 1):
        if re.match(r"^\s*\[\[", lines[number - 1]):
            break
        if entry.match(lines[number - 1]):
            return number
    return _key_line(text, start, "table")


def _check_regex(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a regular expression in a string.")
    try:
        re.compile(value)  # `re` first, for its messages
        regex.compile(value)  # what runs it (with a time bound)
    except (re.error, regex.error) as exc:
        raise ConfigError(f"{where} = {_quote(value)} is not a valid regular expression: {exc}.") from None


def _check_rubric(rubric: str, where: str, *, judge: bool) -> None:
    """A judge check's rubric: Jinja that parses (what it sees is checked when it renders)."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment

    if not judge:
        raise ConfigError(f"{where}: a rubric is the prompt of a judge check. Remove it, or make it type = "
                          f"\"judge\".")
    try:
        SandboxedEnvironment().parse(rubric)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"{where}: not a Jinja template: {exc.message} (line {exc.lineno} of the rubric).") \
            from None


def _check_scale(raw: dict[str, Any], where, label: str, *, judge: bool) -> None:
    """A judge check's score: scale an integer from 2 to 10, threshold a number within it; both or neither."""
    key = "scale" if "scale" in raw else "threshold"
    if not judge:
        raise ConfigError(f"{where(key)}: {label}: {key} belongs to a judge check's score. Remove it, or make it "
                          f"type = \"judge\".")
    scale, threshold = raw.get("scale"), raw.get("threshold")
    if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 10:
        raise ConfigError(f"{where('scale' if 'scale' in raw else None)}: {label}: scale = {_quote(scale)}: expected "
                          f"a whole number from 2 to 10 (the judge scores 1 to scale), with threshold.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 1 <= threshold <= scale:
        raise ConfigError(f"{where('threshold' if 'threshold' in raw else None)}: {label}: threshold = "
                          f"{_quote(threshold)}: expected the lowest passing score, from 1 to {scale}.")


def _check_schema(schema: dict, where: str) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{where} is not a valid JSON schema: {exc.message}.") from None


def _table_lines(text: str, name: str) -> list[int]:
    pattern = re.compile(rf"^\s*\[\[\s*{name}\s*\]\]")
    return [n for n, line in enumerate(text.splitlines(), start=1) if pattern.match(line)]


def _key_line(text: str, start: int, key: str | None) -> int:
    """The line of `key` in the table that starts at line `start` (the header line when not found)."""
    lines = text.splitlines()
    for number in range(start + 1, len(lines) + 1):
        line = lines[number - 1]
        if re.match(r"^\s*\[", line):
            break
        if key and re.match(rf"^\s*{re.escape(key)}\s*[=.]", line):
            return number
    return start


def _quote(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _compile(check: Check, key: str) -> UserPattern | None:
    """One of a check's regular expressions, run with a time bound that names the check when it is passed."""
    source = getattr(check, key)
    on = "input" if key in ("when", "unless") else "output"
    return UserPattern(source, setting=f"{check.source}: check '{check.name}': {key}", on=on) if source else None


def check_one(check: Check, *, input: str, prediction: str, expected: str = "",
              fields: dict[str, Any] | None = None, strict: bool = False) -> bool | None:
    """Whether one output passes one check (None when the check does not apply): for one-off checks."""
    run = CompiledCheck(check)
    if not run.applies(input):
        return None
    return run.verdict(prediction, expected, fields or {}, input=input, strict=strict)[0]


class CompiledCheck:
    """A check with its regular expressions compiled once, ready to judge outputs."""

    def __init__(self, check: Check):
        assert check.lookup is None or check.lookup_table is not None, "load_rules resolves a check's lookup"
        self.check = check
        self.when = _compile(check, "when")
        self.unless = _compile(check, "unless")
        self.pattern = _compile(check, "pattern")
        self.extract = _compile(check, "extract")
        self.lookup = check.lookup_table

    def applies(self, text: str) -> bool:
        if self.when and not self.when.search(text):
            return False
        return not (self.unless and self.unless.search(text))

    def verdict(self, prediction: str, expected: str, fields: dict[str, Any], *, input: str = "",
                strict: bool = False) -> tuple[bool | None, str]:
        """(passed, detail) of one output; passed is None when there is nothing to compare with.

        A lookup check takes its expected value from `input`. When the input has no key, or one the table lacks,
        the check does not apply (the detail says why), unless `strict`: then it fails, since what cannot be
        checked must not be kept (vetting generated examples).
        """
        kind = self.check.type
        if kind == "judge":  # answered by a judge model in batches (refinery/stages/judge.py), not one output at a time
            return None, ""
        if kind == "regex":
            return (True, "") if self.pattern.search(prediction) else (False, f"no match for /{self.pattern.pattern}/")
        if kind == "absent":
            found = self.pattern.search(prediction)
            return (False, f"found {found.group(0)!r}") if found else (True, "")
        if kind == "contains":
            return (True, "") if self.check.text in prediction else (False, f"missing {self.check.text!r}")
        if kind == "equals":
            return self._equals(prediction, expected, fields, input, strict)
        return self._json_schema(prediction)

    def _value(self, text: str) -> str | None:
        found = self.extract.search(text)
        if not found:
            return None
        return (found.group(1) if self.extract.groups else found.group(0)).strip()

    def _equals(self, prediction: str, expected: str, fields: dict[str, Any], input: str,
                strict: bool) -> tuple[bool | None, str]:
        source = ""
        if self.lookup is not None:
            want, key = self.lookup.look_up(input)
            if want is None:  # `key` says why: the input has no key, or the table lacks it
                return (False if strict else None), key
            source = f" for {key!r} (lookup {self.lookup.name})"
        elif self.check.field:
            want = fields.get(self.check.field)
            want = None if want is None else (json.dumps(want) if isinstance(want, bool) else str(want)).strip()
        else:
            want = self._value(expected)
        if want is None:  # nothing to compare with: the check does not apply to this example
            return None, ""
        got = self._value(prediction)
        if got is None:
            return False, f"no value: /{self.extract.pattern}/ did not match"
        return (True, "") if got == want else (False, f"got {got!r}, expected {want!r}{source}")

    def _json_schema(self, prediction: str) -> tuple[bool, str]:
        import jsonschema

        text = self._value(prediction) if self.extract else prediction
        if text is None:
            return False, f"no JSON: /{self.extract.pattern}/ did not match"
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            return False, f"not JSON: {exc.msg}"
        validator = jsonschema.validators.validator_for(self.check.schema)(self.check.schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        return (False, f"schema: {error.message}") if error else (True, "")
