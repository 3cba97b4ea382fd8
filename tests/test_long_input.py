"""Inputs longer than the model's context (issue 26): one 100,000-character input once made a round allocate
23.7 GB in generation and die. Every stage fits inputs to the bundled model's 256 positions by `[data] too_long`,
says what it did, and a whole round with such inputs completes in bounded memory. Real model, real tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, make_demo

from refinery.errors import RefineryError
from refinery.ingest import ingest_files
from refinery.project import load_project
from refinery.stages.measure import fit_to_context, model_context
from refinery.store import Store

BASE = str(REPO / "data" / "tiny-base")
LONG = ("<weather>Sunny!</weather> " + "Alice has 3 apples and buys 2 more. " * 2800)[:100_000]
MEMORY_BOUND = 2 * 2**30  # bytes of peak RSS the round may take (1.12 GiB measured here, 2026-12-06)


def _rows(*inputs: str) -> pl.DataFrame:
    return pl.DataFrame({"example_id": [f"e{i}" for i in range(len(inputs))], "input": list(inputs),
                         "output": ["Answer: 5"] * len(inputs)})


@pytest.mark.parametrize("rule", ["truncate", "skip"])
def test_fit_to_context_cuts_or_leaves_out_only_what_is_over(demo_project, rule: str) -> None:
    project = demo_project.with_config(demo_project.config.override("data", too_long=rule))
    fitted = fit_to_context(project, _rows("short one", LONG, "another"), base_model=BASE, what="held-out inputs")
    assert model_context(BASE) == 256 and fitted.room == 256 - 40  # the context less [infer] max_new_tokens
    assert (fitted.truncated, fitted.skipped) == ((1, 0) if rule == "truncate" else (0, 1))
    assert fitted.rows["example_id"].to_list() == (["e0", "e1", "e2"] if rule == "truncate" else ["e0", "e2"])
    assert fitted.rows["input"].to_list()[1 if rule == "truncate" else 0] in (LONG, "short one")  # rows as stored
    if rule == "truncate":
        cut = fitted.inputs[1]
        assert LONG.startswith(cut) and 100 < len(cut) < 2000 and fitted.inputs[0::2] == ["short one", "another"]


def test_fit_for_training_leaves_room_for_the_completion(demo_project) -> None:
    rows = _rows(LONG).with_columns(pl.lit("Answer: 5 " * 20).alias("output"))
    fitted = fit_to_context(demo_project, rows, base_model=BASE, what="training examples", completion="output",
                            room=256)
    from refinery.device import load_tokenizer
    from refinery.prompts import prompt_lengths

    tokenizer = load_tokenizer(BASE)
    answer = len(tokenizer("Answer: 5 " * 20, add_special_tokens=False, verbose=False)["input_ids"]) + 1
    assert fitted.truncated == 1 and prompt_lengths(tokenizer, fitted.inputs)[0] + answer <= 256
    too_big = _rows("short").with_columns(pl.lit("9" * 400).alias("output"))  # the answer alone is over
    left = fit_to_context(demo_project, too_big, base_model=BASE, what="training examples", completion="output",
                          room=256)
    assert (left.truncated, left.skipped, left.rows.height) == (0, 1, 0)


def test_too_long_error_names_the_examples_and_the_setting(demo_project) -> None:
    project = demo_project.with_config(demo_project.config.override("data", too_long="error"))
    with pytest.raises(RefineryError) as caught:
        fit_to_context(project, _rows("short", LONG), base_model=BASE, what="held-out inputs")
    assert str(caught.value) == (
        '1 held-out inputs take more tokens than the base model\'s context leaves for them (216), e.g. e1. '
        'refinery.toml: [data] too_long = "error" stops the round here: shorten them, or set it to "truncate" or '
        '"skip".')


def test_ingest_says_how_many_rows_are_over_the_context_and_what_will_happen(demo_project, cli) -> None:
    rows = [{"input": LONG, "output": "Answer: 5"}, {"input": "What is 2 + 3?", "output": "Answer: 5"},
            {"input": "Alice has 3 apples. " * 15, "output": "y"}]  # 300 bytes, fewer tokens: not over
    Path("long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("ingest", "long.jsonl", "--split", "analysis")
    assert result.code == 0
    assert result.err.endswith(
        "Warning: 1 of the examples stored take more tokens than the base model's context (256; input and output, "
        'by its tokenizer). refinery.toml: [data] too_long = "truncate": a round cuts the end of their inputs to '
        "fit.\n")


@pytest.mark.slow  # `make test-slow` (in .ci/run): keeps the default run under 10 minutes
def test_a_round_with_a_100000_character_input_completes_in_bounded_memory(tmp_path: Path) -> None:
    """The probe's case, as a person runs it: a long input in the analysis split (and one in training), then
    `refinery iterate` in its own process; its peak RSS is measured by the kernel (wait4)."""
    project = make_demo(tmp_path / "demo")
    long_rows = tmp_path / "long.jsonl"
    long_rows.write_text(json.dumps({"input": LONG, "output": "Answer: 5<display_weather>☀️</display_weather>"})
                         + "\n")
    train_row = tmp_path / "long-train.jsonl"
    train_row.write_text(json.dumps({"input": "Bob: " + LONG, "output": "Answer: 5<display_weather>☀️"
                                     "</display_weather>"}) + "\n")
    with Store(project.store_path) as store:
        ingest_files(store, [long_rows], config=project.config, split="analysis")
        ingest_files(store, [train_row], config=project.config, split="train")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "REFINERY_PROJECT": str(project.root)}
    with (tmp_path / "out.txt").open("w") as out_file, (tmp_path / "err.txt").open("w") as err_file:
        child = subprocess.Popen([str(Path(sys.executable).with_name("refinery")), "iterate", "--steps", "4"],
                                 stdout=out_file, stderr=err_file, env=env, cwd=project.root)
        _, status, usage = os.wait4(child.pid, 0)
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    peak = usage.ru_maxrss * 1024
    print(f"\nround with a 100,000-character input: peak RSS {peak / 2**30:.2f} GiB")
    assert os.waitstatus_to_exitcode(status) == 0, err
    assert "Longer than the model's context (256 tokens for them): training examples: 1 cut to fit, 0 left out" \
        in out
    assert "Longer than the model's context (216 tokens for them): held-out inputs: 1 cut to fit, 0 left out" in out
    assert peak < MEMORY_BOUND
    with Store(load_project(project.root).store_path) as store:
        assert store.scalar("SELECT status FROM rounds WHERE number = 1") == "done"
        assert store.scalar("SELECT count(*) FROM predictions p JOIN examples e ON e.id = p.example_id "
                            "WHERE length(e.input) = 100000") == 1
