"""Judge: checks that need judgement. A `type = "judge"` check renders its rubric (Jinja, seeing the input, the
model's output and the expected output) into a prompt, a judge model answers PASS or FAIL with a one-sentence
reason, greedily and in batches, and the verdict becomes a check result like any rule's, so its failures feed
analysis, patterns and targeting. Verdicts are cached in the store by (judge, rubric, prompt): evaluating the same
outputs again costs nothing. An answer that is neither PASS nor FAIL fails the check as "judge: no verdict", never
passes it silently.

Entry point: `judge_checks(rules, rows, project=...)`, the judge checks' results in `evaluate.RESULT_SCHEMA`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from refinery.config import JudgeSettings
from refinery.errors import ConfigError, JudgeError
from refinery.project import Project, resolve_base_model
from refinery.rules import Check, CompiledCheck, RuleSet
from refinery.store import ROUND_WAIT, Store

# What every rubric's prompt ends with: the verdict format the parser reads.
ASK = "\n\nAnswer with PASS or FAIL on the first line, then one sentence that says why."
WORD = re.compile(r"(?<![A-Za-z])(PASS|FAIL)(?![A-Za-z])", re.IGNORECASE)
ASK_SCORE = ("\n\nAnswer with a score from 1 to {scale} on the first line ({threshold} or more passes), then one "
             "sentence that says why.")
SCORED = re.compile(re.escape(ASK_SCORE).replace(re.escape("{scale}"), r"(\d+)")
                    .replace(re.escape("{threshold}"), r"[^)]*") + "$")  # a prompt that asks ASK_SCORE
ASK_PICK = "\n\nAnswer with 1, 2 or TIE on the first line, then one sentence that says why."  # `compare`
NO_VERDICT = "judge: no verdict"
LIKELIHOOD = re.compile(r"^\s*\(p=[01]\.\d\d\)")  # after a verdict read from likelihoods: its share of the choices


@dataclass(frozen=True)
class Verdict:
    """What the judge said of one output: passed (None: no verdict could be read), its reason, its raw answer."""

    passed: bool | None
    reason: str
    answer: str


def parse_verdict(answer: str) -> Verdict:
    """PASS or FAIL as a word of the answer's first line ("PASS: ...", "**FAIL** - ...", "The answer is: FAIL."),
    the rest of the answer after it the reason. A first line with both words, or neither, is no verdict."""
    line = answer.strip().split("\n", 1)[0]
    words = {w.upper() for w in WORD.findall(line)}
    if len(words) != 1:
        return Verdict(None, "", answer)
    return Verdict(words == {"PASS"}, _reason(answer[WORD.search(answer).end():]), answer)


def _reason(rest: str) -> str:
    """What follows the verdict, as one line: a likelihood verdict's "(p=0.93)" and leading punctuation dropped."""
    return " ".join(LIKELIHOOD.sub("", rest, count=1).lstrip(" \t:.,;*_-–—").split())[:300]


def parse_score(answer: str, *, scale: int, threshold: float) -> Verdict:
    """A score from 1 to `scale`, the first whole number of the answer's first line ("4", "Score: 4/5", "**3**"),
    passing at `threshold` or more; the reason is the rest, and it starts with the score. Any other first line is
    no verdict."""
    line = answer.strip().split("\n", 1)[0]
    found = re.search(r"(?<![\d.])(\d{1,2})(?![\d.]*\d)", line)
    if not found or not 1 <= int(found.group(1)) <= scale:
        return Verdict(None, "", answer)
    score = int(found.group(1))
    rest = answer[answer.index(found.group(0), answer.index(line)) + len(found.group(0)):]
    reason = _reason(re.sub(rf"^\s*/\s*{scale}\b", "", rest))
    return Verdict(score >= threshold, f"score {score}/{scale}" + (f": {reason}" if reason else ""), answer)


def judge_checks(rules: RuleSet, rows: pl.DataFrame, *, project: Project,
                 answer: Callable[[list[str]], list[str]] | None = None) -> pl.DataFrame:
    """The results of every judge check on `rows` (example_id, variant, input, expected, fields, prediction), in
    `evaluate.RESULT_SCHEMA`. `answer`: prompts to the judge's answers (default: the project's judge model)."""
    from refinery.stages.evaluate import RESULT_SCHEMA

    checks = [c for c in rules.checks if c.type == "judge"]
    records: dict[str, list] = {name: [] for name in RESULT_SCHEMA}
    if not checks or rows.is_empty():
        return pl.DataFrame(records, schema=RESULT_SCHEMA)
    asked = [(check, row, render_rubric(check, row)) for check, compiled in ((c, CompiledCheck(c)) for c in checks)
             for row in rows.iter_rows(named=True) if compiled.applies(row["input"])]
    verdicts = ask_judge(project, [(c.rubric, prompt) for c, _, prompt in asked], answer)
    for (check, row, _), answer_text in zip(asked, verdicts, strict=True):
        verdict = parse_score(answer_text, scale=check.scale, threshold=check.threshold) if check.scale else \
            parse_verdict(answer_text)
        detail = verdict.reason if verdict.passed is not None else f"{NO_VERDICT}: {verdict.answer[:200]!r}"
        values = (row["example_id"], row["variant"], check.file, check.name, True, bool(verdict.passed),
                  check.severity, detail)
        for name, value in zip(RESULT_SCHEMA, values, strict=True):
            records[name].append(value)
    return pl.DataFrame(records, schema=RESULT_SCHEMA)


def render_rubric(check: Check, row: dict[str, Any]) -> str:
    """The judge's prompt for one output: the rubric with input, output and expected, then the verdict format."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    fields = json.loads(row["fields"]) if row.get("fields") else {}
    try:
        text = env.from_string(check.rubric).render(input=row["input"], output=row["prediction"],
                                                    expected=row["expected"], fields=fields)
    except TemplateError as exc:
        raise ConfigError(f"{check.source}: check '{check.name}': rubric: {exc} (it sees input, output, expected "
                          f"and fields).") from None
    if check.scale:
        return text.rstrip() + ASK_SCORE.format(scale=check.scale, threshold=f"{check.threshold:g}")
    return text.rstrip() + ASK


def answer_choices(prompt: str) -> tuple[str, ...] | None:
    """The answers a prompt's verdict format allows (PASS/FAIL, a score's whole numbers, 1/2/TIE), read from its
    ending; None for a prompt that asks in no format refinery writes."""
    if prompt.endswith(ASK):
        return ("PASS", "FAIL")
    if prompt.endswith(ASK_PICK):
        return ("1", "2", "TIE")
    scale = SCORED.search(prompt)
    return tuple(str(n) for n in range(1, int(scale.group(1)) + 1)) if scale else None


def verdict_mode(settings: JudgeSettings) -> str:
    """likelihood or generate: `[judge] verdict` with auto resolved (likelihood for a local judge; the config
    refuses likelihood with an endpoint)."""
    if settings.verdict == "auto":
        return "generate" if settings.base_url else "likelihood"
    return settings.verdict


def judge_name(project: Project) -> str:
    """The judge model as the cache knows it: `[judge] model` (at its endpoint, if any), else the base model; a
    verdict read from likelihoods says so (its answers differ from generated ones)."""
    settings = project.config.judge
    if settings.base_url:
        return f"{settings.model} at {settings.base_url}"
    name = settings.model or project.config.core.base_model
    return f"{name} (likelihood)" if verdict_mode(settings) == "likelihood" else name


def ask_judge(project: Project, asked: list[tuple[str, str]],
              answer: Callable[[list[str]], list[str]] | None = None) -> list[str]:
    """The judge's answers to (rubric, prompt) pairs: cached where the store has them by (judge, rubric, prompt);
    the judge asked once for each of the rest, which are stored after. `answer`: prompts to answers (default: the
    project's judge, a local model or an endpoint)."""
    judge = judge_name(project)
    keys = [_key(judge, rubric, prompt) for rubric, prompt in asked]
    with Store(project.store_path, wait=ROUND_WAIT) as store:
        cached = dict(store.con.execute(
            "SELECT key, answer FROM judge_verdicts WHERE key IN (SELECT unnest(?))", [sorted(set(keys))]).fetchall())
    missing = sorted({k for k in keys if k not in cached})
    if missing:
        prompts = {k: prompt for k, (_, prompt) in zip(keys, asked, strict=True)}
        answers = (answer or default_judge(project))([prompts[k] for k in missing])
        fresh = pl.DataFrame({"key": missing, "judge": [judge] * len(missing), "answer": answers})
        with Store(project.store_path, wait=ROUND_WAIT) as store, store.transaction() as con:
            con.register("fresh_verdicts", fresh)
            con.execute("INSERT INTO judge_verdicts (key, judge, answer) SELECT key, judge, answer "
                        "FROM fresh_verdicts ANTI JOIN judge_verdicts USING (key)")
            con.unregister("fresh_verdicts")
        cached.update(zip(missing, answers, strict=True))
    return [cached[k] for k in keys]


def _key(judge: str, rubric: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([judge, rubric, prompt]).encode()).hexdigest()


def default_judge(project: Project) -> Callable[[list[str]], list[str]]:
    """The project's judge as a function of prompts: its endpoint when `[judge] base_url` is set, else a local model.
    A missing key is said here, before any prompt is sent."""
    settings = project.config.judge
    return endpoint_judge(settings) if settings.base_url else _local_judge(project)


def local_judge_model(project: Project) -> str:
    """The local judge's model folder: `[judge] model` resolved as base_model is (converted once if it must be),
    else the base model's."""
    model = project.config.judge.model
    if not model:
        return resolve_base_model(project)
    return resolve_base_model(project.with_config(project.config.override("core", base_model=model)))


def _local_judge(project: Project) -> Callable[[list[str]], list[str]]:
    """Greedy, batched answers from a local causal LM (`[judge] model`, or the base model), loaded as the base
    model is; a prompt longer than its context loses its middle (the output under judgement, mostly), so that the
    verdict it asks for is still its end. With likelihood verdicts (`verdict_mode`), the answer starts with the
    choice the model finds likeliest and its probability among the choices, then the reason it writes after it."""
    def ask(prompts: list[str]) -> list[str]:
        from refinery.config import InferSettings
        from refinery.device import load_model, pick_device, pick_dtype
        from refinery.stages import infer

        settings = project.config.judge
        device = pick_device()
        model, tokenizer = load_model(local_judge_model(project), device=device, dtype=pick_dtype(device))
        infer_settings = InferSettings(batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens)
        picked: list[tuple[str, float] | None] = [None] * len(prompts)
        if verdict_mode(settings) == "likelihood":
            picked = _likeliest(model, tokenizer, prompts, settings=infer_settings)
        written = infer.generate_with(model, tokenizer, prompts, settings=infer_settings, cut_middle=True,
                                      starts=[f"{p[0]}\n" if p else "" for p in picked])
        return [f"{p[0]} (p={p[1]:.2f})\n{text}" if p else text
                for p, text in zip(picked, written["output"], strict=True)]
    return ask


def _likeliest(model: Any, tokenizer: Any, prompts: list[str], *,
               settings: Any) -> list[tuple[str, float] | None]:
    """Per prompt, its likeliest allowed answer and that answer's share of the choices' probability, or None for
    a prompt that allows no fixed answers. Prompts are scored together by their set of choices."""
    from refinery.stages import infer

    picked: list[tuple[str, float] | None] = [None] * len(prompts)
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, prompt in enumerate(prompts):
        if choices := answer_choices(prompt):
            groups.setdefault(choices, []).append(index)
    for choices, indices in groups.items():
        scores = infer.choose(model, tokenizer, [prompts[i] for i in indices], choices, settings=settings,
                              cut_middle=True)
        for index, logprobs in zip(indices, scores, strict=True):
            weights = [math.exp(x - max(logprobs)) for x in logprobs]
            best = weights.index(1.0)
            picked[index] = (choices[best], weights[best] / sum(weights))
    return picked


def endpoint_judge(settings: JudgeSettings) -> Callable[[list[str]], list[str]]:
    """Greedy answers (temperature 0) from an OpenAI-compatible /chat/completions endpoint, each prompt as one user
    message, `concurrency` requests at a time. The key, if any, is read from the environment variable
    `api_key_env` and sent as a bearer token."""
    headers = {"Content-Type": "application/json"}
    if settings.api_key_env:
        key = os.environ.get(settings.api_key_env)
        if not key:
            raise ConfigError(f"[judge] api_key_env = \"{settings.api_key_env}\": the environment variable "
                              f"{settings.api_key_env} is not set (expected the endpoint's key in it). Export it, or "
                              f"remove api_key_env if the endpoint needs no key.")
        headers["Authorization"] = f"Bearer {key}"
    url = f"{settings.base_url.rstrip('/')}/chat/completions"

    def one(prompt: str) -> str:
        body = {"model": settings.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": settings.max_new_tokens}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        where = f"[judge] base_url = \"{settings.base_url}\""
        try:
            with urllib.request.urlopen(request, timeout=settings.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise JudgeError(f"{where}: {url} answered HTTP {exc.code} {exc.reason}: {_snippet(exc.read())}. Check "
                             f"[judge] model (the name the endpoint serves) and the key in api_key_env.") from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise JudgeError(f"{where}: cannot reach {url} ({why}). Start the server, or fix base_url.") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise JudgeError(f"{where}: {url} answered {_snippet(raw)}, not a chat completion (expected "
                             f"choices[0].message.content). Point base_url at an OpenAI-compatible API (often "
                             f"ending in /v1).")
        return content

    def ask(prompts: list[str]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            return list(pool.map(one, prompts))
    return ask


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= 200 else text[:200] + "...")
