"""Measure a model against the evals without adding data: the few-shot baseline (round 0), the production model
(round -1), the ceiling of the project's recipe on oracle data (round -2), and a re-run of a recorded round from
its snapshot.

Each asks the held-out splits (and, when `[mix] cue` is set, the test split with the cue added and removed) and
checks the outputs with the project's rules, like a round does; baselines are written to the store as rounds of
their own kind, so every comparison can be traced with SQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from refinery.errors import RefineryError
from refinery.models import needs_conversion
from refinery.project import Project, resolve_base_model, train_settings
from refinery.stages.mix import cue_metrics, cue_variants
from refinery.stages.pairs import active_pairs
from refinery.store import ROUND_WAIT as STORE_WAIT
from refinery.store import Store, insert_frame

KINDS = {0: "baseline", -1: "production", -2: "ceiling"}
REFERENCE_KINDS = tuple(KINDS.values())


@dataclass
class Asked:
    """What a model answered and how it did: predictions and rule results (every variant) and the metrics."""

    predictions: pl.DataFrame
    results: pl.DataFrame
    metrics: dict[str, Any]


def held_out(store: Store, *, splits: tuple[str, ...] = ("analysis", "test", "corner")) -> pl.DataFrame:
    """The active held-out examples, as the evals ask them."""
    return store.frame("SELECT id AS example_id, input, output AS expected, fields, split FROM examples "
                       "WHERE status = 'active' AND split IN (SELECT unnest(?)) ORDER BY id", [list(splits)])


def questions(project: Project, rows: pl.DataFrame) -> pl.DataFrame:
    """What the evals ask: `rows` as stored (variant ''), and, when the project sets a thinking cue (`[mix] cue`
    and `cue_pattern`), their test examples again with the cue added and removed, to measure both modes."""
    stored = rows.with_columns(pl.lit("").alias("variant"))
    mix = project.config.mix
    if not measures_cue(project):
        return stored
    variants = cue_variants(rows.filter(pl.col("split") == "test"), cue=mix.cue, cue_pattern=mix.cue_pattern,
                            setting=project.config.setting("mix", "cue_pattern"))
    return pl.concat([stored, variants])


def measures_cue(project: Project) -> bool:
    """Whether the evals ask the cue-on and cue-off variants: `[mix] cue` and `cue_pattern` set, both or neither."""
    mix = project.config.mix
    if (mix.cue is None) != (mix.cue_pattern is None):
        given, missing = ("cue", "cue_pattern") if mix.cue is not None else ("cue_pattern", "cue")
        raise RefineryError(f"[mix] {given} is set but {missing} is not: set both (cue is added to an input for the "
                            f"cue-on evaluation, cue_pattern finds and removes it for the cue-off one), or neither.")
    return mix.cue is not None


def check_mix_settings(project: Project, rules) -> None:
    """Stop before any work when the `[mix]` cue settings do not fit together or name a check that does not exist."""
    measures_cue(project)
    name = project.config.mix.answer_check
    if name is not None and name not in {c.name for c in rules.checks}:
        raise RefineryError(f"[mix] answer_check = \"{name}\": no such check in {project.config.core.rules_dir}/ "
                            f"(checks: {', '.join(c.name for c in rules.checks)}). Name the check that tells whether "
                            f"the answer is right, or leave it unset.")


def score(project: Project, rules, asked: pl.DataFrame, predictions: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Check every output of `asked`: rule results of every variant, and the metrics per split (stored variant),
    with the figures of both cue modes under "mix" when cue variants were asked (answer accuracy needs
    `[mix] answer_check`)."""
    from refinery.stages import evaluate, judge

    config = project.config
    answered = asked.with_columns(predictions["output"].alias("prediction"))
    results = pl.concat([evaluate.run_checks(rules, answered), judge.judge_checks(rules, answered, project=project)])
    metrics = evaluate.summarize(results.filter(pl.col("variant") == ""), asked.filter(pl.col("variant") == ""))
    if (asked["variant"] != "").any():
        metrics["mix"] = cue_metrics(results, predictions, answer_check=config.mix.answer_check,
                                     think=config.think())
    return results, metrics


def ask(project: Project, rules, rows: pl.DataFrame, *, model_path: str, adapter: str | None,
        shots: list[tuple[str, str]] | None = None, on_batch=None) -> Asked:
    """Ask `rows` (and their test examples with the cue on and off) and check every output."""
    from refinery.stages import infer

    fitted = fit_to_context(project, questions(project, rows), base_model=model_path, what="held-out inputs",
                            shots=shots)
    asked = fitted.rows
    outputs = infer.generate(fitted.inputs, base_model=model_path, settings=project.config.infer,
                             adapter=adapter, shots=shots or (), on_batch=on_batch)
    predictions = pl.concat([asked.select("example_id", "variant"), outputs], how="horizontal")
    results, metrics = score(project, rules, asked, predictions)
    return Asked(predictions, results, metrics)


@dataclass
class Fitted:
    """Rows fitted to the model's context under `[data] too_long`: those kept (as stored), the inputs the model is
    given for them (cut where they were too long), and how many were cut or left out."""

    rows: pl.DataFrame
    inputs: list[str]
    truncated: int
    skipped: int
    room: int

    def counts(self) -> dict[str, int]:
        return {"truncated": self.truncated, "skipped": self.skipped, "room": self.room}


def fit_to_context(project: Project, rows: pl.DataFrame, *, base_model: str, what: str,
                   completion: str | None = None, room: int | None = None,
                   shots: list[tuple[str, str]] | None = None) -> Fitted:
    """Fit `rows` (input, and `completion` when training) into the model's context, by `[data] too_long`.

    `room`: tokens for the prompt (and completion); default: the context less `[infer] max_new_tokens`, for
    generation. A prompt past the context made a 100,000-character input allocate 23.7 GB in generation."""
    from refinery.device import load_tokenizer
    from refinery.prompts import cut_input, prompt_lengths

    tokenizer = load_tokenizer(base_model)
    room = room or model_context(base_model) - project.config.infer.max_new_tokens
    inputs = rows["input"].to_list()
    extra = [len(ids) + 1 for ids in tokenizer(rows[completion].to_list(), add_special_tokens=False,
                                               verbose=False)["input_ids"]] if completion and inputs else \
        [0] * len(inputs)
    lengths = prompt_lengths(tokenizer, inputs, shots=shots or ())
    over = [i for i, (n, e) in enumerate(zip(lengths, extra, strict=True)) if n + e > room]
    if not over:
        return Fitted(rows, inputs, 0, 0, room)
    rule = project.config.data.too_long
    if rule == "error":
        ids = rows[rows.columns[0]].gather(over[:5]).to_list()
        raise RefineryError(f"{len(over)} {what} take more tokens than the base model's context leaves for them "
                            f"({room}), e.g. {', '.join(map(str, ids))}. {project.config.setting('data', 'too_long')}"
                            f' = "error" stops the round here: shorten them, or set it to "truncate" or "skip".')
    cut = {i: cut_input(tokenizer, inputs[i], max_tokens=room - extra[i], shots=shots or ()) if rule == "truncate"
           else None for i in over}
    keep = [i for i in range(len(inputs)) if cut.get(i, inputs[i]) is not None]
    return Fitted(rows[keep], [cut.get(i, inputs[i]) for i in keep], sum(v is not None for v in cut.values()),
                  len(inputs) - len(keep), room)


TOO_LONG_DOES = {"truncate": "a round cuts the end of their inputs to fit",
                 "skip": "rounds leave them out of training and evaluation",
                 "error": "a round stops with an error that names them"}


def over_context(project: Project, store: Store, ingests: list[int]) -> str | None:
    """A warning when some of the examples the ingests `ingests` stored take more tokens than the base model's
    context, counted with its own tokenizer (`tokenizers`, no model load). Checked for a model in a local folder
    (the bundled one, a folder, a converted GGUF already cached); silent for a hub id or a model not converted yet.
    Only rows of more bytes than the context are tokenized: a byte-level token covers at least one byte."""
    name = project.config.core.base_model
    try:
        folder = None if needs_conversion(name) else Path(resolve_base_model(project))
    except RefineryError:  # a missing model is said by the commands that load it
        return None
    if folder is None or not (folder / "tokenizer.json").is_file() or not (folder / "config.json").is_file():
        return None
    context = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
    long = store.frame("SELECT input, output FROM examples WHERE ingest_id IN (SELECT unnest(?)) "
                       "AND strlen(input) + strlen(output) + 2 > ?", [ingests, context]) \
        if context and ingests else None
    if long is None or long.is_empty():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # a batch padded to its longest row would count every row as long
    tokenizer.no_truncation()
    count = [len(e.ids) for e in tokenizer.encode_batch(long["input"].to_list() + long["output"].to_list(),
                                                         add_special_tokens=False)]
    over = sum(i + o > context for i, o in zip(count[:long.height], count[long.height:], strict=True))
    rule = project.config.data.too_long
    return (f"{over} of the examples stored take more tokens than the base model's context ({context}; input and "
            f"output, by its tokenizer). {project.config.setting('data', 'too_long')} = \"{rule}\": "
            f"{TOO_LONG_DOES[rule]}.") if over else None


def model_context(base_model: str) -> int:
    """Positions the model attends over (its config's max_position_embeddings; 10**9 when it states none)."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(base_model), "max_position_embeddings", None) or 10**9)


def choose_shots(train: pl.DataFrame, count: int, *, seed: int) -> list[tuple[str, str]]:
    """`count` training examples for a few-shot prompt, reasoning and direct in turn, seeded."""
    shuffled = train.sample(fraction=1.0, shuffle=True, seed=seed)
    by_kind = [shuffled.filter(pl.col("kind") == k).select("input", "output").rows() for k in ("direct", "reasoning")]
    mixed = [row for pair in zip(*by_kind, strict=False) for row in pair]
    rest = [row for rows in by_kind for row in rows[len(mixed) // 2:]]
    return [tuple(r) for r in (mixed + rest)[:count]]


def _fitting(base_model: str, inputs: list[str], shots: list, *, max_new_tokens: int) -> list:
    """The first shots that fit the longest prompt and its answer into the model's context: every prompt gets the
    same worked examples."""
    from transformers import AutoConfig

    from refinery.device import load_tokenizer
    from refinery.prompts import fit_shots, prompt_lengths

    if not shots:
        return []
    tokenizer = load_tokenizer(base_model)
    room = getattr(AutoConfig.from_pretrained(base_model), "max_position_embeddings", 10**9) - max_new_tokens
    # The longest in tokens, not characters: a prompt past the model's context makes transformers warn, and the
    # answer after it is noise. An input over the context on its own is cut to fit (or left out) by
    # `[data] too_long` and does not decide.
    raw = tokenizer(inputs, verbose=False)["input_ids"] if inputs else []
    rendered = prompt_lengths(tokenizer, inputs)
    fitting = [i for i in range(len(inputs)) if rendered[i] <= room]
    longest = inputs[max(fitting, key=lambda i: len(raw[i]))] if fitting else ""
    return fit_shots(tokenizer, longest, shots, max_tokens=room)


def _rules_and_base(project: Project) -> tuple[Any, str]:
    """The project's rules (with its [mix] settings checked against them) and its base model's path."""
    from refinery.rules import load_rules

    rules = load_rules(project.rules_dir)
    check_mix_settings(project, rules)
    return rules, resolve_base_model(project)


def run_baseline(project: Project, *, on_batch=None) -> dict[str, Any]:
    """Ask the base model with a few-shot prompt of training examples and record it as round 0 (replacing an
    earlier baseline). Also measures the production model when `[baseline] production` names one."""
    rules, base_model = _rules_and_base(project)
    with Store(project.store_path, wait=STORE_WAIT) as store:
        train = store.frame("SELECT input, output, kind FROM examples WHERE status = 'active' AND split = 'train' "
                            "ORDER BY id")
        rows = held_out(store)
    if rows.filter(pl.col("split") == "test").height == 0:
        raise RefineryError("a baseline needs test examples: ingest some with `--split holdout` or `--split test`.")
    wanted = choose_shots(train, project.config.baseline.shots, seed=project.config.core.seed)
    shots = _fitting(base_model, questions(project, rows)["input"].to_list(), wanted,
                     max_new_tokens=project.config.infer.max_new_tokens)
    began = time.perf_counter()
    asked = ask(project, rules, rows, model_path=base_model, adapter=None, shots=shots, on_batch=on_batch)
    asked.metrics["shots"] = len(shots)
    asked.metrics["shots_asked"] = len(wanted)
    record_reference(project, 0, asked, detail={"base_model": base_model, "shots": shots},
                     seconds=time.perf_counter() - began)
    document = {"round": 0, "kind": "baseline", "shots": len(shots), "metrics": asked.metrics}
    if project.config.baseline.production:
        document["production"] = measure_production(project, on_batch=on_batch)
    return document


def production_model(project: Project) -> tuple[str, str | None, str]:
    """(model path, adapter path or None, fingerprint) of `[baseline] production`."""
    name = project.config.baseline.production
    folder = project.path(name)
    if not folder.is_dir():
        raise RefineryError(f"[baseline] production = \"{name}\": no folder {folder}. Name an adapter folder (with "
                            f"adapter_config.json) or a full model folder (with config.json), relative to the "
                            f"project.")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    fingerprint = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()[:16]
    if (folder / "adapter_config.json").is_file():
        return resolve_base_model(project), str(folder), fingerprint
    if (folder / "config.json").is_file():
        return str(folder), None, fingerprint
    raise RefineryError(f"[baseline] production = \"{name}\": {folder} holds neither adapter_config.json nor "
                        f"config.json. Name an adapter folder or a full model folder.")


def measure_production(project: Project, *, on_batch=None) -> dict[str, Any]:
    """Ask the production model the evals (no few-shot prompt) and record it as round -1."""
    from refinery.rules import load_rules

    model_path, adapter, fingerprint = production_model(project)
    rules = load_rules(project.rules_dir)
    check_mix_settings(project, rules)
    with Store(project.store_path, wait=STORE_WAIT) as store:
        rows = held_out(store)
    began = time.perf_counter()
    asked = ask(project, rules, rows, model_path=model_path, adapter=adapter, on_batch=on_batch)
    record_reference(project, -1, asked, detail={"model": model_path, "adapter": adapter,
                                                 "fingerprint": fingerprint},
                     seconds=time.perf_counter() - began)
    return {"round": -1, "kind": "production", "model": adapter or model_path, "metrics": asked.metrics}


def production_is_current(store: Store, project: Project) -> bool:
    """Whether round -1 measured the production model as it is on disk now."""
    if not project.config.baseline.production:
        return True
    row = store.one("SELECT json_extract_string(config, '$.reference.fingerprint') FROM rounds "
                    "WHERE number = -1 AND status = 'done'")
    return bool(row) and row[0] == production_model(project)[2]


def record_reference(project: Project, number: int, asked: Asked, *, detail: dict, seconds: float) -> None:
    """Write round 0 or -1 with its predictions and rule results, replacing what was there, in one transaction."""
    with Store(project.store_path, wait=STORE_WAIT) as store, store.transaction() as con:
        for table, column in (("predictions", "round"), ("rule_results", "round"), ("round_stages", "round"),
                              ("rounds", "number")):
            con.execute(f"DELETE FROM {table} WHERE {column} = ?", [number])
        weights = detail.get("adapter") or detail.get("model")
        con.execute("INSERT INTO rounds (number, kind, status, config, versions, metrics, adapter_path, pid, "
                    "finished_at) VALUES (?, ?, 'done', ?, ?, ?, ?, ?, current_timestamp)",
                    [number, KINDS[number], json.dumps({**project.config.to_dict(), "reference": detail}),
                     json.dumps(versions()), json.dumps(asked.metrics), weights, os.getpid()])
        con.execute("INSERT INTO round_stages (round, stage, status, seconds, finished_at) "
                    "VALUES (?, 'measure', 'done', ?, current_timestamp)", [number, round(seconds, 3)])
        for table, frame in (("predictions", asked.predictions), ("rule_results", asked.results)):
            insert_frame(con, table, frame.with_columns(pl.lit(number).alias("round")))


def references(store: Store) -> dict[str, dict[str, Any]]:
    """The metrics of the baseline, the production model and the ceiling, where measured: {"baseline": {...}}."""
    rows = store.frame("SELECT kind, metrics FROM rounds WHERE kind IN (SELECT unnest(?)) AND status = 'done'",
                       [list(REFERENCE_KINDS)])
    return {kind: json.loads(metrics) for kind, metrics in rows.iter_rows()}


def run_ceiling(project: Project, *, on_start=None, on_step=None) -> dict[str, Any]:
    """Train with the project's `[train]` settings on oracle data, the training examples the project brought
    (seed, imported, relabelled; not the loop's counterexamples) plus every analysis example (the best data the
    loop could ever add), and measure the test and corner splits; recorded as round -2.

    This is the reference a round's figures are set against: where the recipe, not the data, is what holds a
    project back, the rounds plateau well below it."""
    from refinery.stages import train

    rules, base_model = _rules_and_base(project)
    with Store(project.store_path, wait=STORE_WAIT) as store:
        # the training data as the project brought it (not the loop's counterexamples: the ceiling must not move
        # with the rounds run) plus every analysis example
        oracle = store.frame("SELECT id, input, output, kind, split FROM examples WHERE status = 'active' AND "
                             "(split = 'analysis' OR (split = 'train' AND source <> 'generated')) ORDER BY id")
        rows = held_out(store, splits=("test", "corner"))
    if rows.filter(pl.col("split") == "test").height == 0 or oracle.height == 0:
        raise RefineryError("a ceiling needs training or analysis examples and test examples: ingest some first.")
    if on_start:
        on_start(oracle.height)
    out_dir = project.runs_dir / "ceiling"
    began = time.perf_counter()
    result = train.train(oracle, base_model=base_model, settings=project.config.train, out_dir=out_dir,
                         on_step=on_step)
    model_path, adapter = ((result.weights_path, None) if result.method == "full"
                           else (base_model, result.weights_path))
    asked = ask(project, rules, rows, model_path=model_path, adapter=adapter)
    counts = dict(oracle.group_by("split").len().iter_rows())
    detail = {"examples": oracle.height, "train": counts.get("train", 0), "analysis": counts.get("analysis", 0),
              "steps": result.steps, "train_seconds": result.seconds, "method": result.method,
              "model": model_path, "adapter": adapter}
    asked.metrics["ceiling"] = detail
    record_reference(project, -2, asked, detail=detail, seconds=time.perf_counter() - began)
    return {"round": -2, "kind": "ceiling", **detail, "metrics": asked.metrics}


def rerun_round(project: Project, number: int, *, on_start=None, on_step=None) -> dict[str, Any]:
    """Train round `number` again from what it recorded (its config snapshot, its exact training set and, under
    `[train] objective` "sft+dpo" or "dpo", the preference pairs of the rounds before it) and measure it on the
    test split; compare with the figures and the weights it recorded."""
    from refinery.config import config_from_table
    from refinery.rules import load_rules
    from refinery.stages import train

    with Store(project.store_path, wait=STORE_WAIT) as store:
        row = store.one("SELECT status, kind, config, versions, train_set_hash, adapter_path, metrics FROM rounds "
                        "WHERE number = ?", [number])
        if row is None or row[1] != "round":
            raise RefineryError(f"no training round {number}. `refinery status` lists the rounds.")
        if row[0] != "done":
            raise RefineryError(f"round {number} did not finish (status {row[0]}); only finished rounds re-run.")
        examples = store.frame("SELECT e.id, e.input, e.output, e.kind FROM round_examples r JOIN examples e "
                               "ON e.id = r.example_id WHERE r.round = ? ORDER BY e.id", [number])
        test = held_out(store, splits=("test",))
        pairs = active_pairs(store, before=number)  # what its DPO trained on (a pair never changes once stored)
    snapshot = json.loads(row[2])
    snapshot.pop("reference", None)
    config = config_from_table(snapshot, path=Path(f"round {number} snapshot"), text="", pyproject=False)
    recorded = project.with_config(config)
    digest = hashlib.sha256("\n".join(examples["id"].to_list()).encode()).hexdigest()
    if digest != row[4]:
        raise RefineryError(f"round {number}'s training set no longer hashes to what it recorded ({row[4][:12]} vs "
                            f"{digest[:12]}): an example it trained on is gone from the store.")
    if on_start:
        on_start(examples.height)
    start_from, steps = _started_from(project, number)
    out_dir = project.runs_dir / f"round-{number:03d}" / time.strftime("rerun-%Y%m%d-%H%M%S")
    base_model = resolve_base_model(recorded)
    result, _ = train.train_round(examples, pairs, base_model=base_model, settings=train_settings(recorded),
                                  out_dir=out_dir, on_step=on_step, start_from=start_from, steps=steps)
    model_path, adapter = ((result.weights_path, None) if result.method == "full"
                           else (base_model, result.weights_path))
    asked = ask(recorded, load_rules(project.rules_dir), test, model_path=model_path, adapter=adapter)
    before = json.loads(row[6])
    document = {
        "round": number, "dir": str(out_dir), "train_set_hash": digest, "examples": examples.height,
        "recorded": {"test": before.get("test"), "mix": before.get("mix")},
        "rerun": {"test": asked.metrics.get("test"), "mix": asked.metrics.get("mix")},
        "weights_max_abs_diff": _weights_diff(row[5], result.weights_path),
        "versions_changed": {k: [v, versions().get(k)] for k, v in json.loads(row[3] or "{}").items()
                             if versions().get(k) != v},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "rerun.json").write_text(json.dumps(document, indent=2))
    return document


def _started_from(project: Project, number: int) -> tuple[str | None, int | None]:
    """The adapter round `number` started from (`[train] warm_start`, or DPO alone under objective "dpo") and its
    steps, which a re-run takes too."""
    from refinery.stages.train import dpo_alone, recorded_training

    recorded = recorded_training(project.runs_dir, number)
    start_from = recorded.get("start_from")
    if not start_from:
        return None, None
    if not Path(start_from).is_dir():
        why = "[train] objective = \"dpo\"" if dpo_alone(recorded) else "[train] warm_start"
        raise RefineryError(f"round {number} started from the adapter in {start_from} ({why}), which "
                            f"is gone: a re-run cannot start where the round did. Re-run the round before it first, "
                            f"or restore that folder.")
    return start_from, recorded["steps"]


def _weights_diff(recorded: str | None, rerun: str) -> float | None:
    """Largest absolute difference between the recorded and the re-trained weights (0.0: bit-identical)."""
    if not recorded or not Path(recorded).is_dir():
        return None
    from safetensors.torch import load_file

    def tensors(folder: str) -> dict:
        return {k: v for f in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(f).items()}

    old, new = tensors(recorded), tensors(rerun)
    if old.keys() != new.keys():
        return None
    return max((float((old[k].float() - new[k].float()).abs().max()) for k in old), default=0.0)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("refinery", "torch", "transformers", "peft", "trl", "sentence-transformers", "scikit-learn",
                 "duckdb", "polars"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out
