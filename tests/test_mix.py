"""The reasoning/direct mix: shares by sampling, cue variants, setting the share, and a real sweep."""

from __future__ import annotations

import json

import polars as pl
import pytest

from refinery.errors import ConfigError
from refinery.mix import cue_variants, training_set
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
