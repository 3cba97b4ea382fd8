"""The reasoning/direct mix: shares by sampling, cue variants, setting the share, and a real sweep."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import CONFIG, write

from refinery.errors import ConfigError, RefineryError
from refinery.project import load_project, set_setting
from refinery.rules import load_rules
from refinery.stages.measure import check_mix_settings, questions, score
from refinery.stages.mix import cue_variants, shortfall, training_set
from refinery.store import Store


def kinds(n_reasoning: int, n_direct: int) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"r{i}" for i in range(n_reasoning)] + [f"d{i}" for i in range(n_direct)],
                         "kind": ["reasoning"] * n_reasoning + ["direct"] * n_direct})


@pytest.mark.parametrize(("share", "expected"), [(None, (30, 70)), (0.5, (30, 30)), (0.4, (30, 45)), (0.2, (18, 70)),
                                                 (1.0, (30, 0)), (0.0, (0, 70))])
def test_training_set_meets_the_share_by_sampling(share, expected) -> None:
    chosen = training_set(kinds(30, 70), reasoning_share=share, seed=0)
    got = (chosen.filter(kind="reasoning").height, chosen.filter(kind="direct").height)
    assert got == expected
    assert training_set(kinds(30, 70), reasoning_share=share, seed=0).equals(chosen)  # seeded


def test_a_share_needing_a_missing_kind_gives_nothing() -> None:
    assert training_set(kinds(0, 10), reasoning_share=0.4).height == 0


@pytest.mark.parametrize(("counts", "share", "expected"), [
    ((30, 70), 0.5, ("reasoning", 40)), ((30, 70), 0.2, ("direct", 50)), ((30, 70), 0.3, (None, 0)),
    ((30, 70), None, (None, 0)), ((30, 70), 1.0, (None, 0)), ((0, 10), 0.4, ("reasoning", 7))])
def test_shortfall_says_which_kind_to_make_up_and_how_many(counts, share, expected) -> None:
    assert shortfall(kinds(*counts), reasoning_share=share) == expected
    short, missing = expected
    if short:  # with the missing ones made, sampling keeps every example
        more = kinds(counts[0] + missing, counts[1]) if short == "reasoning" else kinds(counts[0], counts[1] + missing)
        assert training_set(more, reasoning_share=share).height == counts[0] + counts[1] + missing


def test_a_round_makes_up_the_short_kind_with_toggled_variants(demo_project) -> None:
    from refinery.stages.loop import run_round
    from refinery.store import Store

    project = demo_project.with_config(demo_project.config.override("mix", reasoning_share=0.8)
                                       .override("generate", targeting="off"))
    summary = run_round(project)  # the seed set holds 10 reasoning and 10 direct examples
    with Store(project.store_path) as store:
        made = store.frame("SELECT e.id, e.kind, e.template, e.cluster_id, e.parent_id, p.kind AS parent_kind, "
                           "e.input, p.input AS parent_input FROM examples e JOIN examples p ON p.id = e.parent_id "
                           "WHERE e.source = 'generated'")
        trained = store.frame("SELECT e.kind FROM round_examples r JOIN examples e ON e.id = r.example_id "
                              "WHERE r.round = 1")
        logged = store.scalar("SELECT count(*) FROM generations WHERE round = 1 AND template = 'think_toggle.jinja' "
                              "AND outcome = 'stored' AND cluster_id IS NULL")
    assert made.height == 30 and logged == 30  # 10 direct need 30 more reasoning for 0.8 with all kept
    assert set(made["kind"]) == {"reasoning"} and set(made["parent_kind"]) == {"direct"}
    assert set(made["template"]) == {"think_toggle.jinja"} and made["cluster_id"].null_count() == 30
    assert (made["input"] != made["parent_input"]).all()
    assert summary.train["examples"] == trained.height == 50
    assert trained.filter(kind="reasoning").height == 40


def test_cue_variants_add_and_remove_the_cue() -> None:
    rows = pl.DataFrame({"example_id": ["a", "b"], "input": ["Please use thinking. Bob has 2.", "Eli has 9."]})
    variants = cue_variants(rows, cue="use thinking.", cue_pattern=r"(?i)(please )?use thinking[.!]?")
    on = dict(variants.filter(variant="cue-on").select("example_id", "input").iter_rows())
    off = dict(variants.filter(variant="cue-off").select("example_id", "input").iter_rows())
    assert on == {"a": "Please use thinking. Bob has 2.", "b": "use thinking. Eli has 9."}
    assert off == {"a": "Bob has 2.", "b": "Eli has 9."}


def held_out_rows() -> pl.DataFrame:
    """Held-out examples as `measure.held_out` gives them, built by hand: two test examples, one analysis."""
    return pl.DataFrame({"example_id": ["t1", "t2", "a1"],
                         "input": ["Use thinking. Bob has 2.", "Eli has 9.", "Jo has 1."],
                         "expected": ["<think>2</think>2", "9", "1"], "fields": ["{}", "{}", "{}"],
                         "split": ["test", "test", "analysis"]})


def test_a_project_without_a_cue_asks_the_evals_as_stored(project) -> None:
    """`refinery init` sets no thinking cue: no cue-on/cue-off variants are asked and no cue figures reported."""
    rows = held_out_rows()
    asked = questions(project, rows)
    assert asked["variant"].to_list() == ["", "", ""] and asked["input"].to_list() == rows["input"].to_list()
    rules = load_rules(project.rules_dir)
    predictions = asked.select("example_id", "variant").with_columns(
        pl.Series("output", ["<think>2</think>2", "8", "1"]), pl.Series("tokens", [5, 1, 1]))
    results, metrics = score(project, rules, asked, predictions)
    assert "mix" not in metrics and metrics["test"]["pass_rate"] == 0.5
    assert set(results["variant"]) == {""}


def test_a_cue_asks_the_test_split_with_it_added_and_removed(project) -> None:
    cued = project.with_config(project.config.override("mix", cue="use thinking.",
                                                       cue_pattern=r"(?i)use thinking[.!]?"))
    asked = questions(cued, held_out_rows())
    assert asked.select("example_id", "variant").rows() == [
        ("t1", ""), ("t2", ""), ("a1", ""), ("t1", "cue-on"), ("t2", "cue-on"), ("t1", "cue-off"), ("t2", "cue-off")]
    assert asked.filter(variant="cue-off")["input"].to_list() == ["Bob has 2.", "Eli has 9."]
    predictions = asked.select("example_id", "variant").with_columns(
        pl.Series("output", ["<think>2</think>2", "9", "1", "<think>2</think>2", "<think>9</think>9", "2",
                             "<think>9</think>9"]), pl.Series("tokens", [5, 1, 1, 5, 5, 1, 5]))
    rules = load_rules(project.rules_dir)
    mix = score(cued, rules, asked, predictions)[1]["mix"]
    # no [mix] answer_check: leakage and tokens, no answer accuracy
    assert mix == {"answer_accuracy_cue_on": None, "mean_tokens_cue_on": 5.0, "answer_accuracy_cue_off": None,
                   "mean_tokens_cue_off": 3.0, "think_leakage_cue_off": 0.5, "examples_per_mode": 2}
    checked = cued.with_config(cued.config.override("mix", answer_check="matches_expected"))
    mix = score(checked, rules, asked, predictions)[1]["mix"]
    assert (mix["answer_accuracy_cue_on"], mix["answer_accuracy_cue_off"]) == (0.5, 0.0)


def test_half_a_cue_or_an_unknown_answer_check_is_refused(project) -> None:
    rules = load_rules(project.rules_dir)
    half = project.with_config(project.config.override("mix", cue="use thinking."))
    with pytest.raises(RefineryError) as err:
        questions(half, held_out_rows())
    assert str(err.value) == ("[mix] cue is set but cue_pattern is not: set both (cue is added to an input for the "
                              "cue-on evaluation, cue_pattern finds and removes it for the cue-off one), or neither.")
    with pytest.raises(RefineryError, match=r"^\[mix\] cue_pattern is set but cue is not"):
        check_mix_settings(project.with_config(project.config.override("mix", cue_pattern="x")), rules)
    wrong = project.with_config(project.config.override("mix", answer_check="answer_correct"))
    with pytest.raises(RefineryError) as err:
        check_mix_settings(wrong, rules)
    assert str(err.value) == ("[mix] answer_check = \"answer_correct\": no such check in rules/ (checks: not_empty, "
                              "matches_expected). Name the check that tells whether the answer is right, or leave it "
                              "unset.")
    check_mix_settings(project, rules)  # nothing set: nothing to refuse


def test_setting_the_share_edits_the_project_file_and_checks_it(project_dir, cli) -> None:
    result = json.loads(cli("mix", "--reasoning", "0.4", "--json").out)
    assert result["reasoning_share"] == 0.4
    text = (project_dir / "refinery.toml").read_text()
    mix_table = text.split("\n[mix]\n")[1].split("\n[")[0]  # tomlkit adds the key at the end of the table
    assert "\nreasoning_share = 0.4\n" in mix_table and text.count("[mix]") == 1
    assert "# reasoning_share = 0.4\n" in mix_table  # the scaffold's comments are kept
    assert load_project(project_dir, environ={}).config.mix.reasoning_share == 0.4
    cli("mix", "--reasoning", "0.6")
    assert load_project(project_dir, environ={}).config.mix.reasoning_share == 0.6
    assert cli("mix", "--reasoning", "1.5").code == 2  # out of range: a usage error, file untouched
    before = (project_dir / "refinery.toml").read_text()
    with pytest.raises(ConfigError):
        set_setting(load_project(project_dir, environ={}), "mix", "reasoning_share", "lots")
    assert (project_dir / "refinery.toml").read_text() == before


def test_a_sweep_trains_one_adapter_per_share_and_measures_both_cue_modes(demo_project, cli) -> None:
    result = cli("mix", "--sweep", "0.3,0.7", "--steps", "6", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert [r["share"] for r in document["rows"]] == [0.3, 0.7]
    for row in document["rows"]:
        assert row["reasoning"] / row["examples"] == pytest.approx(row["share"], abs=0.06)
        assert row["examples_per_mode"] == document["test_examples"]
        assert 0 <= row["answer_accuracy_cue_on"] <= 1 and row["mean_tokens_cue_off"] > 0
    assert cli("mix", "--sweep", "0.3,abc").err == ("Error: --sweep 0.3,abc: expected comma-separated shares from "
                                                    "0 to 1, e.g. 0.2,0.4,0.6\n")


def test_a_project_without_a_cue_trains_sweeps_and_reports_without_cue_figures(demo_project, cli) -> None:
    """The demo with its [mix] section removed: a round asks no cue variants and prints no cue line, a sweep
    still trains and measures the test split, and the report says why it has no cue-mode figures."""
    write(demo_project.root / "refinery.toml", CONFIG[:CONFIG.index("[mix]")])
    result = cli("iterate", "--steps", "4")
    assert result.code == 0, result.err
    assert "Thinking cue on the test split" not in result.out
    with Store(demo_project.store_path) as store:
        assert store.scalar("SELECT count(*) FROM predictions WHERE variant <> ''") == 0
        assert "mix" not in json.loads(store.scalar("SELECT metrics FROM rounds WHERE number = 1"))
    sweep = cli("mix", "--sweep", "0.5", "--steps", "2")
    assert sweep.code == 0, sweep.err
    assert "No thinking cue set ([mix] cue and cue_pattern), so the test split was asked as stored only." in \
        " ".join(sweep.out.split())  # the terminal wraps it
    assert "cue on" not in sweep.out
    [row] = json.loads(next(demo_project.runs_dir.glob("sweep-*/sweep.json")).read_text())["rows"]
    assert 0 <= row["test_pass_rate"] <= 1 and row["answer_accuracy_cue_on"] is None
    assert row["examples_per_mode"] is None
    text = cli("report", "--text")
    assert text.code == 0, text.err
    # the demo has reasoning examples and a sweep, so the section stays, saying why it has no cue figures
    assert "5. Reasoning/direct mix: no cue-mode figures recorded (they need [mix] cue and cue_pattern)." in text.out
    assert "6. Failure map" in text.out
    assert cli("report").code == 0
    html = (demo_project.runs_dir / "report.html").read_text(encoding="utf-8")
    assert 'data-plot="sweep"' in html and 'data-plot="mix"' not in html
