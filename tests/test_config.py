"""Finding the project file, reading it, and every kind of config error with its exact message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, write

from refinery.config import Config
from refinery.errors import ConfigError
from refinery.project import find_config_file, init_project, load_project, read_config, resolve_base_model

PYPROJECT = """\
[project]
name = "demo"

[tool.refinery]
base_model = "data/model"
seed = 3

[tool.refinery.train]
rank = 8
learning_rate = 1
"""


def test_walks_up_from_a_nested_folder_to_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", PYPROJECT)
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    project = load_project(cwd=nested, environ={})
    assert project.root == tmp_path.resolve()
    assert project.config.core.seed == 3
    assert project.config.train.rank == 8
    assert project.config.train.learning_rate == 1.0 and isinstance(project.config.train.learning_rate, float)
    assert project.config.train.alpha == 32  # untouched keys keep their defaults


def test_nearest_project_wins_and_refinery_toml_beats_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", PYPROJECT)
    inner = tmp_path / "inner"
    write(inner / "pyproject.toml", PYPROJECT)
    write(inner / "refinery.toml", "seed = 9\n")
    assert find_config_file(cwd=inner, environ={}) == (inner / "refinery.toml").resolve()
    assert load_project(cwd=inner, environ={}).config.core.seed == 9


def test_pyproject_without_a_refinery_table_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "refinery.toml", "seed = 5\n")
    write(tmp_path / "sub" / "pyproject.toml", "[project]\nname = 'x'\n")
    assert find_config_file(cwd=tmp_path / "sub", environ={}) == (tmp_path / "refinery.toml").resolve()


def test_explicit_folder_then_environment_then_cwd(tmp_path: Path) -> None:
    write(tmp_path / "a" / "refinery.toml", "seed = 1\n")
    write(tmp_path / "b" / "refinery.toml", "seed = 2\n")
    write(tmp_path / "c" / "refinery.toml", "seed = 3\n")
    env = {"REFINERY_PROJECT": str(tmp_path / "b")}
    assert load_project(tmp_path / "a", cwd=tmp_path / "c", environ=env).config.core.seed == 1
    assert load_project(cwd=tmp_path / "c", environ=env).config.core.seed == 2
    assert load_project(cwd=tmp_path / "c", environ={}).config.core.seed == 3
    assert load_project(tmp_path / "a" / "refinery.toml", environ={}).config.core.seed == 1


def test_no_project_names_every_place_looked(tmp_path: Path) -> None:
    nested = tmp_path / "x" / "y"
    nested.mkdir(parents=True)
    write(tmp_path / "x" / "pyproject.toml", "[project]\nname = 'x'\n")
    with pytest.raises(ConfigError) as err:
        find_config_file(cwd=nested, environ={})
    message = str(err.value)
    assert message.startswith("no refinery project found. Looked for refinery.toml, or pyproject.toml with a "
                              "[tool.refinery] table, in:\n"
                              f"  {nested.resolve()}\n"
                              f"  {(tmp_path / 'x').resolve()} (its pyproject.toml has no [tool.refinery] table)\n"
                              f"  {tmp_path.resolve()}\n")
    assert message.endswith("  /\nCreate one with `refinery init DIR`, or point at one with --project DIR or "
                            "$REFINERY_PROJECT.")


def test_explicit_folder_without_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        find_config_file(tmp_path, environ={})
    assert str(err.value) == (
        f"no refinery project found (--project {tmp_path}). Looked for refinery.toml, or pyproject.toml with a "
        f"[tool.refinery] table, in:\n  {tmp_path.resolve()}\nCreate one with `refinery init DIR`, or point at "
        f"one with --project DIR or $REFINERY_PROJECT.")


@pytest.mark.parametrize(("text", "message"), [
    ("[tool.refinery.train]\nrank = 8\nrnak = 4\n",
     "pyproject.toml:3: [tool.refinery.train] unknown key 'rnak' (expected one of: accelerate_config, alpha, "
     "batch_size, dpo_beta, dpo_learning_rate, dpo_sft_weight, dpo_steps, dropout, epochs, launcher, learning_rate, "
     "lr_schedule, max_length, max_steps, method, min_steps, objective, precision, processes, rank, seed, steps, "
     "target_modules, warm_start, warmup). Did you mean 'rank'?"),
    ("[tool.refinery.train]\nmin_steps = 500\nmax_steps = 400\n",
     "pyproject.toml:2: [tool.refinery.train] min_steps = 500 is above max_steps = 400: expected min_steps <= "
     "max_steps. Lower min_steps or raise max_steps."),
    ("[tool.refinery.train]\nlr_schedule = \"step\"\n",
     "pyproject.toml:2: [tool.refinery.train] lr_schedule = \"step\": expected one of: cosine, linear, constant."),
    ("[tool.refinery]\nbase_model = 'x'\nflavour = 'mild'\n",
     "pyproject.toml:3: [tool.refinery] unknown key 'flavour' (expected one of: base_model, rules_dir, runs_dir, "
     "seed, store, templates_dir, [data], [train], [infer], [analyze], [generate], [mix], [plateau], [baseline], "
     "[judge]). Remove it or fix its spelling."),
    ("[tool.refinery.train]\nrank = \"sixteen\"\n",
     "pyproject.toml:2: [tool.refinery.train] rank = \"sixteen\": expected an integer from 1 to 1024."),
    ("[tool.refinery.train]\n\nsteps = 0\n",
     "pyproject.toml:3: [tool.refinery.train] steps = 0: expected an integer >= 1."),
    ("[tool.refinery.train]\ntarget_modules = \"mlp\"\n",
     "pyproject.toml:2: [tool.refinery.train] target_modules = \"mlp\": expected one of: attention, "
     "attention-mlp, all-linear."),
    ("[tool.refinery.data]\ntest_fraction = 0.3\n",
     "pyproject.toml:2: [tool.refinery.data] test_fraction = 0.3: expected a number from 0.05 to 0.1."),
    ("[tool.refinery.data]\nthink_pattern = \"<think>(\"\n",
     "pyproject.toml:2: [tool.refinery.data] think_pattern = \"<think>(\": expected a valid regular expression."),
    ("[tool.refinery.mix]\nreasoning_share = true\n",
     "pyproject.toml:2: [tool.refinery.mix] reasoning_share = true: expected a number from 0 to 1."),
    ("[tool.refinery]\ntrain = 3\n",
     "pyproject.toml:2: [tool.refinery] train = 3: expected a table ([tool.refinery.train]), not a value."),
    ("[tool.refinery]\nseed = = 1\n",
     "pyproject.toml:2: invalid TOML: Invalid value. Fix the syntax on that line."),
])
def test_config_errors_name_file_line_key_and_expectation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pyproject.toml", text)
    with pytest.raises(ConfigError) as err:
        load_project(environ={})
    assert str(err.value) == message


def test_refinery_toml_errors_use_its_own_section_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "refinery.toml", "seed = 1\n\n[infer]\nbatch_size = -4\n")
    with pytest.raises(ConfigError) as err:
        load_project(environ={})
    assert str(err.value) == "refinery.toml:4: [infer] batch_size = -4: expected an integer >= 1."
    write(tmp_path / "refinery.toml", "sead = 1\n")
    with pytest.raises(ConfigError) as err:
        load_project(environ={})
    assert str(err.value).startswith("refinery.toml:1: (top level) unknown key 'sead' (expected one of: ")
    assert str(err.value).endswith("Did you mean 'seed'?")


def test_command_line_overrides_are_checked_like_the_file() -> None:
    config = Config().override("train", steps=12, learning_rate=0.5)
    assert (config.train.steps, config.train.learning_rate, config.train.rank) == (12, 0.5, 16)
    with pytest.raises(ConfigError) as err:
        Config().override("train", steps=0)
    assert str(err.value) == "command line: steps = 0: expected an integer >= 1."


def test_init_scaffolds_a_project_whose_commented_defaults_are_the_defaults(tmp_path: Path) -> None:
    written = init_project(tmp_path / "new")
    names = sorted(str(p.relative_to(tmp_path / "new")) for p in written)
    assert names == ["data/README.md", "refinery.toml", "rules/README.md", "rules/checks.toml", "runs/.gitignore",
                     "templates/README.md", "templates/variants.jinja"]
    from refinery.rules import load_rules
    rules = load_rules(tmp_path / "new" / "rules")
    assert [c.name for c in rules.checks] == ["not_empty", "matches_expected"]
    # a starter family aimed at both checks, so the first round can add data: INV, the expected output kept
    assert rules.templates_for(["matches_expected"]) == ["variants.jinja"] == rules.templates_for(["not_empty"])
    assert rules.template("variants.jinja").kind == "INV"
    config_file = tmp_path / "new" / "refinery.toml"
    assert read_config(config_file) == Config()
    # Uncommenting every setting must give a valid file with the same values: the comments tell the truth.
    uncommented = re.sub(r"^# (\w+ = .*)$", r"\1", config_file.read_text(), flags=re.MULTILINE)
    config_file.write_text(uncommented)
    expected = (Config().override("mix", reasoning_share=0.4, cue="use thinking.",
                                  cue_pattern=r"(?i)(please )?use thinking[.!]?|think it through[.!]?",
                                  answer_check="answer_correct", toggle_template="think_toggle.jinja")
                .override("train", steps=300, accelerate_config="accelerate/fsdp.yaml")
                .override("generate", explore=0.2)
                .override("plateau", target=0.95).override("baseline", production="runs/production-adapter")
                .override("judge", model="pypi:smollm2-135m-instruct", base_url="http://127.0.0.1:8000/v1",
                          api_key_env="OPENAI_API_KEY"))
    assert read_config(config_file) == expected
    assert uncommented.count("\n# ") > 30  # the help text stays as comments


def test_the_thinking_cue_settings_are_optional_and_a_new_project_sets_none(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing demo-specific by default: a project from `refinery init` has no cue, no cue pattern, no answer
    check and no toggle template; the file documents each, commented out, with an example."""
    mix = Config().mix
    assert (mix.cue, mix.cue_pattern, mix.answer_check, mix.toggle_template) == (None, None, None, None)
    init_project(tmp_path / "new")
    text = (tmp_path / "new" / "refinery.toml").read_text()
    mix = load_project(tmp_path / "new", environ={}).config.mix
    assert (mix.cue, mix.cue_pattern, mix.answer_check, mix.toggle_template) == (None, None, None, None)
    section = text[text.index("[mix]"):text.index("[plateau]")]
    for line in ('# cue = "use thinking."', '# answer_check = "answer_correct"',
                 '# toggle_template = "think_toggle.jinja"',
                 '# cue_pattern = "(?i)(please )?use thinking[.!]?|think it through[.!]?"'):
        assert line in section.splitlines()
    assert not re.search(r"^(cue|cue_pattern|answer_check|toggle_template) =", section, flags=re.MULTILINE)
    assert "use thinking" not in text.replace("# cue = \"use thinking.\"", "").replace(
        '# cue_pattern = "(?i)(please )?use thinking[.!]?|think it through[.!]?"', "")  # only as examples
    # an empty value is no way to unset a key: leave it out (or commented out)
    monkeypatch.chdir(tmp_path / "new")
    write(tmp_path / "new" / "refinery.toml", '[mix]\ntoggle_template = ""\n')
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path / "new", environ={})
    assert str(err.value) == 'refinery.toml:2: [mix] toggle_template = "": expected a non-empty string.'


def test_init_refuses_an_existing_project_unless_forced(tmp_path: Path) -> None:
    init_project(tmp_path)
    (tmp_path / "data" / "mine.jsonl").write_text("{}\n")
    (tmp_path / "refinery.toml").write_text("seed = 7\n")
    with pytest.raises(ConfigError) as err:
        init_project(tmp_path)
    assert str(err.value) == (f"{tmp_path / 'refinery.toml'} already makes {tmp_path} a refinery project. "
                              f"Pass --force to write the scaffold again (your settings, data and runs are kept).")
    init_project(tmp_path, force=True)
    assert (tmp_path / "data" / "mine.jsonl").read_text() == "{}\n"
    assert (tmp_path / "refinery.toml").read_text() == "seed = 7\n"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="afile is a file; give a folder"):
        init_project(tmp_path / "afile")


def test_unreadable_and_misshapen_project_files(tmp_path: Path) -> None:
    (tmp_path / "refinery.toml").write_bytes(b"seed = 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"refinery.toml: not UTF-8 text \(invalid continuation byte at byte 14\)"):
        load_project(tmp_path, environ={})
    (tmp_path / "refinery.toml").unlink()
    write(tmp_path / "pyproject.toml", "[tool]\nrefinery = 1\n")
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path, environ={})
    assert str(err.value) == "pyproject.toml: [tool] refinery = 1: expected a table ([tool.refinery])."
    write(tmp_path / "pyproject.toml", "[tool.refinery]\nseed = -1\n")
    with pytest.raises(ConfigError, match="seed = -1: expected an integer from 0 to 4.29497e"):
        load_project(tmp_path, environ={})


def test_base_model_resolves_bundled_local_and_hub_names(tmp_path: Path) -> None:
    write(tmp_path / "refinery.toml", "")
    project = load_project(tmp_path, environ={})
    assert Path(resolve_base_model(project)) == REPO / "data" / "tiny-base"
    (tmp_path / "models" / "mine").mkdir(parents=True)
    local = project.with_config(project.config.override("core", base_model="models/mine"))
    assert resolve_base_model(local) == str(tmp_path / "models" / "mine")
    hub = project.with_config(project.config.override("core", base_model="Qwen/Qwen3-0.6B"))
    assert resolve_base_model(hub) == "Qwen/Qwen3-0.6B"
    missing = project.with_config(project.config.override("core", base_model="bundled:nope"))
    with pytest.raises(ConfigError, match="no bundled model at .*data/nope"):
        resolve_base_model(missing)


def test_the_repository_is_itself_a_project() -> None:
    project = load_project(REPO, environ={})
    assert project.config_file == REPO / "pyproject.toml"
    assert Path(resolve_base_model(project)) == REPO / "data" / "tiny-base"
    mix = project.config.mix  # the demo's thinking cue is the demo's setting, not the engine's default
    assert (mix.cue, mix.answer_check, mix.toggle_template) == ("use thinking.", "answer_correct", "think_toggle.jinja")
    assert re.fullmatch(mix.cue_pattern, "Please use thinking!") and re.fullmatch(mix.cue_pattern, "think it through.")
