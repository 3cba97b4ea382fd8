"""Rules as data: the checks a correct output must satisfy and the templates that answer each failing check.

A rules file is TOML with `[[check]]` and `[[target]]` tables; every `*.toml` under `rules/` is read. A problem
in a file is an error naming the file, the line and the fix, e.g.
`rules/weather.toml:12: check 'emoji': unknown type 'regexx' (expected one of: regex, contains, absent, ...)`.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinery.config import display_path, parse_toml, read_text
from refinery.errors import ConfigError

CHECK_TYPES = ("regex", "contains", "absent", "json_schema", "equals")
NEEDS = {"regex": ("pattern",), "contains": ("text",), "absent": ("pattern",), "json_schema": ("schema",),
         "equals": ("extract",)}
CHECK_KEYS = ("name", "type", "description", "when", "unless", "pattern", "text", "extract", "field", "schema",
              "severity")
TARGET_KEYS = ("checks", "templates")
TEMPLATE_KEYS = ("file", "kind", "description", "params")
TEMPLATE_KINDS = ("INV", "DIR")


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
    schema: dict[str, Any] | None = None
    severity: float = 1.0

    @property
    def file(self) -> str:
        return self.source.rsplit(":", 1)[0]


@dataclass(frozen=True)
class Target:
    """Which counterexample templates answer which failing checks."""

    checks: tuple[str, ...]
    templates: tuple[str, ...]
    source: str


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

    def template(self, file: str) -> TemplateSpec:
        """The declaration of a template; an undeclared one is DIR with no parameters."""
        return next((t for t in self.templates if t.file == file), TemplateSpec(file, "DIR", ""))

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def cues(self) -> list[tuple[str, re.Pattern]]:
        """(check name, compiled `when`) of every conditional check: the input cues hypotheses may name."""
        return [(c.name, re.compile(c.when)) for c in self.checks if c.when]

    def templates_for(self, failing: list[str]) -> list[str]:
        """Templates that answer any of the failing checks, in the order the rules name them."""
        out: list[str] = []
        for target in self.targets:
            if set(target.checks) & set(failing):
                out += [t for t in target.templates if t not in out]
        return out


def load_rules(rules_dir: Path) -> RuleSet:
    """Read every `*.toml` file in `rules_dir`; check names must be unique across files."""
    files = sorted(rules_dir.glob("*.toml")) if rules_dir.is_dir() else []
    if not files:
        raise ConfigError(f"{display_path(rules_dir)}: no rules files (*.toml). Add checks there; "
                          f"`refinery init` shows the format in rules/README.md.")
    checks: list[Check] = []
    targets: list[Target] = []
    specs: list[TemplateSpec] = []
    for path in files:
        file_checks, file_targets, file_specs = parse_rules(read_text(path), path)
        specs += file_specs
        for check in file_checks:
            clash = next((c for c in checks if c.name == check.name), None)
            if clash:
                raise ConfigError(f"{check.source}: check '{check.name}' is already defined at {clash.source}. "
                                  f"Give each check its own name.")
            checks.append(check)
        targets += file_targets
    known = {c.name for c in checks}
    for target in targets:
        for name in target.checks:
            if name not in known:
                raise ConfigError(f"{target.source}: target names check '{name}', which no rules file "
                                  f"defines.{_suggest(name, known)}")
    return RuleSet(tuple(checks), tuple(targets), tuple(specs))


def parse_rules(text: str, path: Path) -> tuple[list[Check], list[Target], list[TemplateSpec]]:
    """Parse one rules file; every problem names its line."""
    shown = display_path(path)
    data = parse_toml(path, text)
    unknown = [k for k in data if k not in ("check", "target", "template")]
    if unknown:
        raise ConfigError(f"{shown}: unknown table '{unknown[0]}' (expected [[check]], [[target]] or [[template]]).")
    for name in ("check", "target", "template"):
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{shown}: '{name}' must be an array of tables: write each one under its own "
                              f"[[{name}]] header (not [{name}] or {name} = ...).")
    check_lines, target_lines = _table_lines(text, "check"), _table_lines(text, "target")
    if len(check_lines) != len(data.get("check", [])) or len(target_lines) != len(data.get("target", [])):
        raise ConfigError(f"{shown}: write each check and target under its own [[check]] or [[target]] header "
                          f"line (inline arrays of tables are not supported).")
    checks = [_parse_check(raw, shown, text, check_lines[i]) for i, raw in enumerate(data.get("check", []))]
    targets = [_parse_target(raw, shown, text, target_lines[i]) for i, raw in enumerate(data.get("target", []))]
    template_lines = _table_lines(text, "template")
    specs = [_parse_template(raw, shown, text, template_lines[i] if i < len(template_lines) else 0)
             for i, raw in enumerate(data.get("template", []))]
    return checks, targets, specs


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
    for key in ("name", "description", "text", "field"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where(key)}: {label}: {key} must be a string.")
    if "schema" in raw and not isinstance(raw["schema"], dict):
        raise ConfigError(f"{where('schema')}: {label}: schema must be a table (a JSON schema written in TOML).")
    if "schema" in raw:
        _check_schema(raw["schema"], f"{where('schema')}: {label}: schema")
    severity = raw.get("severity", 1.0)
    if isinstance(severity, bool) or not isinstance(severity, (int, float)) or severity <= 0:
        raise ConfigError(f"{where('severity')}: {label}: severity = {severity!r}: expected a number > 0.")
    values = {k: v for k, v in raw.items() if k not in ("severity",)}
    return Check(source=f"{shown}:{line}", severity=float(severity), **values)


def _parse_target(raw: dict[str, Any], shown: str, text: str, line: int) -> Target:
    for key in raw:
        if key not in TARGET_KEYS:
            raise ConfigError(f"{shown}:{_key_line(text, line, key)}: target: unknown key '{key}' (expected one of: "
                              f"{', '.join(TARGET_KEYS)}).")
    for key in TARGET_KEYS:
        value = raw.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{shown}:{_key_line(text, line, key)}: target: {key} must be a non-empty list of "
                              f"names.")
    return Target(tuple(raw["checks"]), tuple(raw["templates"]), f"{shown}:{line}")


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


def _check_regex(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a regular expression in a string.")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{where} = {_quote(value)} is not a valid regular expression: {exc}.") from None


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


def check_one(check: Check, *, input: str, prediction: str, expected: str = "",
              fields: dict[str, Any] | None = None) -> bool | None:
    """Whether one output passes one check (None when the check does not apply): for one-off checks."""
    run = CompiledCheck(check)
    if not run.applies(input):
        return None
    return run.verdict(prediction, expected, fields or {})[0]


class CompiledCheck:
    """A check with its regular expressions compiled once, ready to judge outputs."""

    def __init__(self, check: Check):
        self.check = check
        self.when = re.compile(check.when) if check.when else None
        self.unless = re.compile(check.unless) if check.unless else None
        self.pattern = re.compile(check.pattern) if check.pattern else None
        self.extract = re.compile(check.extract) if check.extract else None

    def applies(self, text: str) -> bool:
        if self.when and not self.when.search(text):
            return False
        return not (self.unless and self.unless.search(text))

    def verdict(self, prediction: str, expected: str, fields: dict[str, Any]) -> tuple[bool | None, str]:
        kind = self.check.type
        if kind == "regex":
            return (True, "") if self.pattern.search(prediction) else (False, f"no match for /{self.pattern.pattern}/")
        if kind == "absent":
            found = self.pattern.search(prediction)
            return (False, f"found {found.group(0)!r}") if found else (True, "")
        if kind == "contains":
            return (True, "") if self.check.text in prediction else (False, f"missing {self.check.text!r}")
        if kind == "equals":
            return self._equals(prediction, expected, fields)
        return self._json_schema(prediction)

    def _value(self, text: str) -> str | None:
        found = self.extract.search(text)
        if not found:
            return None
        return (found.group(1) if found.re.groups else found.group(0)).strip()

    def _equals(self, prediction: str, expected: str, fields: dict[str, Any]) -> tuple[bool | None, str]:
        if self.check.field:
            want = fields.get(self.check.field)
            want = None if want is None else (json.dumps(want) if isinstance(want, bool) else str(want)).strip()
        else:
            want = self._value(expected)
        if want is None:  # nothing to compare with: the check does not apply to this example
            return None, ""
        got = self._value(prediction)
        if got is None:
            return False, f"no value: /{self.extract.pattern}/ did not match"
        return (True, "") if got == want else (False, f"got {got!r}, expected {want!r}")

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
