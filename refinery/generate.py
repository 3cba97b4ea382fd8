"""Generate: render counterexamples from Jinja templates for the worst failure patterns, and keep only good ones.

A template is rendered once per counterexample with `parent` (the failing example: id, input, output, fields)
and a seeded `rng` in scope, and defines at its top level `input`, `output` and, optionally, `fields` (merged
over the parent's). Templates run in Jinja's sandbox with undefined names as errors; an error names the
template file and line.
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
                      spec: TemplateSpec | None = None) -> list[Candidate]:
    """Render `template` `count` times for one parent; the seed makes each render vary, reproducibly.

    In scope: `parent`, `params` (from the template's [[template]] declaration in rules/), `choice`, `randint`.
    """
    compiled = load_template(env, template)
    spec = spec or TemplateSpec(template, "DIR", "")
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}:{template}:{parent['id']}:{i}")
        context = {"parent": parent, "params": spec.params, "rng": rng, "choice": rng.choice,
                   "randint": rng.randint, "index": i}
        module = _render(env, compiled, template, context)
        fields = {**parent.get("fields", {}), **dict(getattr(module, "fields", {}) or {})}
        out.append(Candidate(input=str(module.input).strip(), output=str(module.output).strip(), fields=fields,
                             template=template, parent_id=parent["id"], cluster_id=cluster_id,
                             targets=list(targets or []), kind=spec.kind, parent_output=parent.get("output", "")))
    return out


def vet_candidates(candidates: list[Candidate], rules: RuleSet, *, known_hashes: set[str],
                   held_out_inputs: set[str]) -> list[Candidate]:
    """Mark each candidate stored, duplicate, leak or failed_checks; every applicable check must pass.

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
        failing = _failing(compiled, candidate)
        if failing:
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
    from jinja2 import TemplateError

    try:
        module = compiled.make_module(context)
    except TemplateError as exc:
        where = _error_site(env, template)
        reason = str(exc).rstrip(".")
        raise ConfigError(f"{where}: template error: {reason}. (Rendering for parent {context['parent']['id']}.)") \
            from None
    for name in ("input", "output"):
        if not hasattr(module, name):
            raise ConfigError(f"{_shown(compiled.filename, env, template)}: the template sets no '{name}'. "
                              f"Add {{% set {name} %}}...{{% endset %}} at its top level.")
    return module


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
