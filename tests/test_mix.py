"""The reasoning/direct mix: shares by sampling, cue variants, setting the share, and a real sweep."""

from __future__ import annotations

import json

import polars as pl
import pytest

from refinery.errors import ConfigError
from refinery.mix import cue_variants, shortfall, training_set
from refinery.project import load_project, set_setting


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
    from refinery.loop import run_round
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


def test_setting_the_share_edits_the_project_file_and_checks_it(project_dir, cli) -> None:
    result = json.loads(cli("mix", "--reasoning", "0.4", "--json").out)
    assert result["reasoning_share"] == 0.4
    text = (project_dir / "refinery.toml").read_text()
    assert "[mix]\nreasoning_share = 0.4\n" in text and text.count("[mix]") == 1
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
