"""Generate: render counterexamples from Jinja templates for the worst failure patterns, and keep only good ones.

A template is rendered once per counterexample with `parent` (the failing example: id, input, output, fields),
`pattern` (the failure pattern it answers: check, feature, statement, words, members; None when it is not aimed
at one), `lookups` (the project's lookup tables) and a seeded `rng` in scope, and defines at its top level
`input`, `output` and, optionally, `fields` (merged over the parent's). A template uses the pattern's feature as a
constraint on what it renders, so that each counterexample carries the feature the model fails under. Templates
run in Jinja's sandbox with undefined names as errors; an error names the template file and line.
"""

from __future__ import annotations

import dataclasses
import json
import random
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinery.config import display_path
from refinery.errors import ConfigError
from refinery.rules import CompiledCheck, RuleSet, TemplateSpec
from refinery.store import content_hash


@dataclass
class Candidate:
    """One rendered counterexample, with where it came from."""

    input: str
    output: str
    fields: dict[str, Any]
    template: str
    parent_id: str
    cluster_id: str | None
    targets: list[str] = field(default_factory=list)
    kind: str = "DIR"  # INV: must keep the parent's expected output
    feature: str | None = None  # the pattern's feature it was rendered to carry
    carries: bool | None = None  # whether its input does carry that feature (set when vetted)
    parent_output: str = ""
    outcome: str = "stored"  # stored | duplicate | leak | failed_checks
    detail: str = ""


def template_environment(templates_dir: Path):
    """The sandboxed Jinja environment templates render in (StrictUndefined: a missing name is an error)."""
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=FileSystemLoader(str(templates_dir)), undefined=StrictUndefined,
                               keep_trailing_newline=False, autoescape=False)
    env.globals["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def render_candidates(env, template: str, parent: dict[str, Any], *, count: int, seed: int,
                      cluster_id: str | None = None, targets: list[str] | None = None,
                      spec: TemplateSpec | None = None, pattern: dict[str, Any] | None = None,
                      lookups: dict[str, dict[str, str]] | None = None) -> list[Candidate]:
    """Render `template` `count` times for one parent; the seed makes each render vary, reproducibly.

    In scope: `parent`, `pattern`, `lookups`, `params` (from the template's [[template]] declaration in rules/),
    `choice`, `randint`, `index`.
    """
    compiled = load_template(env, template)
    spec = spec or TemplateSpec(template, "DIR", "")
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}:{template}:{parent['id']}:{i}")
        context = {"parent": parent, "pattern": pattern, "lookups": lookups or {}, "params": spec.params,
                   "rng": rng, "choice": rng.choice, "randint": rng.randint, "index": i}
        module = _render(env, compiled, template, context)
        made = _rendered(env, compiled, template, module, parent["id"])
        out.append(Candidate(input=made["input"], output=made["output"],
                             fields={**parent.get("fields", {}), **made["fields"]},
                             template=template, parent_id=parent["id"], cluster_id=cluster_id,
                             targets=list(targets or []), kind=spec.kind, parent_output=parent.get("output", ""),
                             feature=(pattern or {}).get("feature")))
    return out


def _rendered(env, compiled, template: str, module, parent_id: str) -> dict[str, Any]:
    """input, output and fields of one render, checked: text that can be stored, fields a mapping of JSON values."""
    from collections.abc import Mapping

    site = f"(Rendering for parent {parent_id}.)"
    fields = getattr(module, "fields", None)
    if fields is not None and not isinstance(fields, Mapping):
        raise ConfigError(f"{_set_site(env, compiled, template, 'fields')}: fields = {_short(fields)}: expected a "
                          f"mapping like {{\"key\": value}}, or no fields at all. {site}")
    made = {"input": str(module.input).strip(), "output": str(module.output).strip(), "fields": dict(fields or {})}
    for name in made:
        try:
            json.dumps(made[name], ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError: a lone surrogate
            raise ConfigError(f"{_set_site(env, compiled, template, name)}: {name} cannot be stored: "
                              f"{_why_not_json(exc)}. {site}") from None
    return made


def _why_not_json(exc: Exception) -> str:
    if isinstance(exc, UnicodeEncodeError):
        return f"it holds a lone surrogate (\\u{ord(exc.object[exc.start]):04x}), half of a UTF-16 pair"
    if isinstance(exc, TypeError):
        return f"a value is not text, a number, true/false, a list or a mapping ({exc})"
    return f"a value is not a finite number ({exc})"


def _set_site(env, compiled, template: str, name: str) -> str:
    """file:line of the template's `{% set name ... %}`, or the file alone when it cannot be found."""
    import re

    shown = _shown(compiled.filename, env, template)
    try:
        source = env.loader.get_source(env, template)[0]
    except Exception:  # noqa: BLE001 - only a nicer message is lost
        return shown
    pattern = re.compile(rf"{{%-?\s*set\s+{name}\b")
    line = next((n for n, text in enumerate(source.splitlines(), start=1) if pattern.search(text)), None)
    return f"{shown}:{line}" if line else shown


def _short(value: Any) -> str:
    shown = repr(str(value)) if isinstance(value, str) else repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def share_budget(weights: dict[str, float], total: int) -> dict[str, int]:
    """`total` counterexamples shared in proportion to `weights` (largest remainder; a zero weight gets none)."""
    mass = sum(w for w in weights.values() if w > 0)
    if mass <= 0 or total <= 0:
        return {key: 0 for key in weights}
    exact = {key: total * max(w, 0.0) / mass for key, w in weights.items()}
    shares = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(exact, key=lambda key: (-(exact[key] - shares[key]), -weights[key], key))
    for key in by_remainder[:total - sum(shares.values())]:
        shares[key] += 1
    return shares


def no_candidates_reason(*, targeting: str, patterns: list[list[str]], analysis: int, rules: RuleSet,
                         rules_dir: str) -> str:
    """Why a round rendered no counterexample at all, said so that a person knows what to change. `patterns`
    holds the failing checks of each pattern the round targeted; `analysis` is the size of the analysis split."""
    if targeting == "off":
        return '[generate] targeting = "off" adds no data'
    if targeting == "random":
        return f"no template is declared in {rules_dir}/ ([[template]] or [[target]]) to render"
    if analysis == 0:
        return ("the analysis split is empty, so there are no failures to target: ingest held-out data with "
                "`refinery ingest FILE --split holdout`")
    if not patterns:
        return "no analysis example failed a check, so there was no failure pattern to target"
    failing = sorted({check for checks in patterns for check in checks})
    if not rules.templates_for(failing):
        return (f"no [[target]] in {rules_dir}/ names the failing checks ({', '.join(failing)}): add one with the "
                f"templates that answer them (see {rules_dir}/checks.toml)")
    return "the targeted patterns have no active members left to render from"


def vet_candidates(candidates: list[Candidate], rules: RuleSet, *, known_hashes: set[str],
                   held_out_inputs: set[str]) -> list[Candidate]:
    """Mark each candidate stored, duplicate, leak or failed_checks; every applicable check must pass, and an
    empty input or output fails.

    A candidate's expected output is what is checked, so a check that compares it with the same extract of
    itself cannot catch it; a lookup check compares it with the value its input's key gives, and a candidate whose
    key is missing from the table fails (what cannot be checked is not kept).
    `held_out_inputs` are the inputs of test and corner examples: a candidate with the same input would leak.
    """
    seen = set(known_hashes)
    compiled = [CompiledCheck(c) for c in rules.checks]
    candidates = [dataclasses.replace(c, outcome="stored", detail="") for c in candidates]
    for candidate in candidates:
        digest = content_hash(candidate.input, candidate.output)
        empty = [name for name in ("input", "output") if not getattr(candidate, name)]
        failing = [] if empty else _failing(compiled, candidate)
        if empty:  # nothing to learn from, whatever the checks say
            candidate.outcome = "failed_checks"
            candidate.detail = f"template {candidate.template} rendered an empty {' and '.join(empty)}"
        elif failing:
            candidate.outcome, candidate.detail = "failed_checks", "fails " + "; ".join(failing)
        elif candidate.kind == "INV" and candidate.output != candidate.parent_output:
            candidate.outcome = "failed_checks"
            candidate.detail = f"INV template {candidate.template} changed the expected output"
        elif candidate.input in held_out_inputs:
            candidate.outcome, candidate.detail = "leak", "same input as a test or corner example"
        elif digest in seen:
            candidate.outcome, candidate.detail = "duplicate", "already in the store or generated twice"
        seen.add(digest)
    return candidates


def _failing(compiled: list[CompiledCheck], candidate: Candidate) -> list[str]:
    """'check: why' for each applicable check the candidate's expected output fails."""
    out = []
    for run in compiled:
        if run.applies(candidate.input):
            passed, why = run.verdict(candidate.output, candidate.output, candidate.fields, input=candidate.input,
                                      strict=True)
            if passed is False:
                out.append(f"{run.check.name}: {why}")
    return out


def drop_near_duplicates(candidates: list[Candidate], vectors: Any, held_out: Any, held_out_ids: list[str], *,
                         near_test: float, near_generated: float) -> list[Candidate]:
    """Mark stored candidates too similar (cosine of normalized input embeddings) to a test or corner input as
    leaks, and those too similar to a candidate kept before them as duplicates; returns the same list."""
    import numpy as np

    kept: list[int] = []
    for i, candidate in enumerate(candidates):
        if candidate.outcome != "stored":
            continue
        if len(held_out_ids):
            similarity = held_out @ vectors[i]
            j = int(np.argmax(similarity))
            if similarity[j] >= near_test:
                candidate.outcome = "leak"
                candidate.detail = f"near-duplicate of held-out example {held_out_ids[j]} (cosine {similarity[j]:.3f})"
                continue
        if kept:
            closest = float(np.max(vectors[kept] @ vectors[i]))
            if closest >= near_generated:
                candidate.outcome = "duplicate"
                candidate.detail = f"near-duplicate of another counterexample (cosine {closest:.3f})"
                continue
        kept.append(i)
    return candidates


def load_template(env, template: str):
    """The compiled template, or an error naming the file (and line, for a syntax error)."""
    from jinja2 import TemplateNotFound, TemplateSyntaxError

    try:
        return env.get_template(template)
    except UnicodeDecodeError as exc:
        folder = display_path(Path(env.loader.searchpath[0]))
        raise ConfigError(f"{folder}/{template}: not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as "
                          f"UTF-8.") from None
    except TemplateNotFound:
        folder = display_path(Path(env.loader.searchpath[0]))
        raise ConfigError(f"{folder}/{template}: no such template. Add it, or fix the name in rules/.") from None
    except TemplateSyntaxError as exc:
        raise ConfigError(f"{_shown(exc.filename, env, template)}:{exc.lineno}: template syntax error: "
                          f"{exc.message}.") from None


def _render(env, compiled, template: str, context: dict[str, Any]):
    try:
        module = compiled.make_module(context)
    except Exception as exc:  # noqa: BLE001 - a template is user code: what it raises is its own error
        where = _error_site(env, template)
        raise ConfigError(f"{where}: template error: {_reason(exc)}. (Rendering for parent "
                          f"{context['parent']['id']}.)") from None
    for name in ("input", "output"):
        if not hasattr(module, name):
            raise ConfigError(f"{_shown(compiled.filename, env, template)}: the template sets no '{name}'. "
                              f"Add {{% set {name} %}}...{{% endset %}} at its top level.")
    return module


def _reason(exc: Exception) -> str:
    from jinja2 import TemplateError

    if isinstance(exc, RecursionError):
        return ("it calls itself without end (a macro that recurses with no way out, or a template that includes "
                "or imports itself)")
    reason = str(exc).rstrip(".") or type(exc).__name__
    return reason if isinstance(exc, TemplateError) else f"{reason} ({type(exc).__name__})"


def _error_site(env, template: str) -> str:
    """file:line of the template line that raised the exception being handled (imports included)."""
    from jinja2.debug import rewrite_traceback_stack

    rewritten = rewrite_traceback_stack(source=None)  # maps generated Python lines back to template lines
    root = str(Path(env.loader.searchpath[0]).resolve())
    frames = [f for f in traceback.extract_tb(rewritten.__traceback__)
              if str(Path(f.filename).resolve()).startswith(root)]
    if not frames:
        return _shown(None, env, template)
    return f"{display_path(Path(frames[-1].filename))}:{frames[-1].lineno}"


def _shown(filename: str | None, env, template: str) -> str:
    if filename:
        return display_path(Path(filename))
    return f"{display_path(Path(env.loader.searchpath[0]))}/{template}"
