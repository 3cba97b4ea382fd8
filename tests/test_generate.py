"""The generate stage: demo templates render valid counterexamples; broken templates give exact messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, write

from refinery.errors import ConfigError
from refinery.generate import render_candidates, template_environment, vet_candidates
from refinery.rules import check_one, load_rules

DEMO_TEMPLATES = ["punctuation.jinja", "synonyms.jinja", "no_tag.jinja", "think_toggle.jinja",
                  "category_mapping.jinja", "capitalisation.jinja", "schema_strict.jinja"]


def demo_parents(name: str = "eval", n: int = 40) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / f"{name}.jsonl").read_text().splitlines()][:n]
    return [{"id": f"p{i}", "input": r.pop("input"), "output": r.pop("output"), "fields": r}
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def demo_rules():
    return load_rules(REPO / "rules")


@pytest.mark.parametrize("template", DEMO_TEMPLATES)
def test_demo_templates_render_examples_that_pass_every_check(demo_rules, template: str) -> None:
    env = template_environment(REPO / "templates")
    spec = demo_rules.template(template)
    assert spec.source, f"{template} is not declared INV or DIR in rules/"
    candidates = [c for p in demo_parents() for c in render_candidates(env, template, p, count=3, seed=0,
                                                                       spec=spec)]
    vetted = vet_candidates(candidates, demo_rules, known_hashes=set(), held_out_inputs=set())
    assert not [c for c in vetted if c.outcome == "failed_checks"]
    kept = [c for c in vetted if c.outcome == "stored"]
    assert len({c.input for c in kept}) == len(kept) >= 25  # distinct inputs, most parents yield new ones
    if spec.kind == "INV":
        assert all(c.output == c.parent_output for c in kept)
    for c in kept:
        for check in demo_rules.checks:
            assert check_one(check, input=c.input, prediction=c.output, fields=c.fields) is not False


def test_templates_answer_the_checks_they_target(demo_rules) -> None:
    env = template_environment(REPO / "templates")
    parents = [p for p in demo_parents() if p["fields"]["condition"]][:10]
    no_tag = [c for p in parents for c in render_candidates(env, "no_tag.jinja", p, count=1, seed=0)]
    assert all("<weather>" not in c.input and "display_weather" not in c.output for c in no_tag)
    toggled = [c for p in parents for c in render_candidates(env, "think_toggle.jinja", p, count=1, seed=0)]
    assert all(c.output.startswith("<think>") != p["output"].startswith("<think>")
               for c, p in zip(toggled, parents, strict=True))
    punct = [c for p in parents for c in render_candidates(env, "punctuation.jinja", p, count=4, seed=0)]
    tags = [c.input.split("</weather>")[0] for c in punct]
    assert sum(t[-1] in "!.,?)" for t in tags) == len(tags)  # every variant puts punctuation against the word
    assert demo_rules.templates_for(["emoji_correct"]) == ["category_mapping.jinja", "punctuation.jinja",
                                                          "synonyms.jinja", "capitalisation.jinja"]


def test_candidates_that_leak_or_repeat_are_not_kept(demo_rules) -> None:
    env = template_environment(REPO / "templates")
    parent = demo_parents(n=1)[0]
    [first] = render_candidates(env, "no_tag.jinja", parent, count=1, seed=0)
    vetted = vet_candidates([first], demo_rules, known_hashes=set(), held_out_inputs={first.input})
    assert (vetted[0].outcome, vetted[0].detail) == ("leak", "same input as a test or corner example")
    vetted = vet_candidates([first, first], demo_rules, known_hashes=set(), held_out_inputs=set())
    assert [c.outcome for c in vetted] == ["stored", "duplicate"]
    from refinery.store import content_hash
    vetted = vet_candidates([first], demo_rules, known_hashes={content_hash(first.input, first.output)},
                            held_out_inputs=set())
    assert vetted[0].detail == "already in the store or generated twice"


def test_a_wrong_template_output_is_reported_not_kept(tmp_path: Path, demo_rules) -> None:
    write(tmp_path / "wrong.jinja", "{% set input %}<weather>Sunny</weather> {{ parent.fields.problem }}"
                                    "{% endset %}{% set output %}Answer: {{ parent.fields.answer }}{% endset %}")
    env = template_environment(tmp_path)
    [candidate] = vet_candidates(render_candidates(env, "wrong.jinja", demo_parents(n=1)[0], count=1, seed=0),
                                 demo_rules, known_hashes=set(), held_out_inputs=set())
    assert candidate.outcome == "failed_checks"
    assert candidate.detail == "fails display_weather_present"  # emoji_correct needs an emoji field to apply


@pytest.mark.parametrize(("text", "message"), [
    ("{% set input %}x{% endset %}\n{% set output %}{{ parent.fields.nope }}{% endset %}\n",
     "templates/broken.jinja:2: template error: 'dict object' has no attribute 'nope'. (Rendering for parent p0.)"),
    ("{% set input %}x{% endset %}\n\n{% if %}\n",
     "templates/broken.jinja:3: template syntax error: Expected an expression, got 'end of statement block'."),
    ("{% set input %}x{% endset %}\n",
     "templates/broken.jinja: the template sets no 'output'. Add {% set output %}...{% endset %} at its top level."),
    ("{% set input %}{{ parent.__class__ }}{% endset %}{% set output %}{{ ''.__class__.__mro__ }}{% endset %}",
     "templates/broken.jinja:1: template error: access to attribute '__class__' of 'dict' object is unsafe. "
     "(Rendering for parent p0.)"),
])
def test_broken_templates_name_file_and_line(tmp_path: Path, monkeypatch, text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "templates" / "broken.jinja", text)
    env = template_environment(Path("templates"))
    with pytest.raises(ConfigError) as err:
        render_candidates(env, "broken.jinja", {"id": "p0", "input": "i", "output": "o", "fields": {}}, count=1,
                          seed=0)
    assert str(err.value) == message


def test_a_missing_template_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "templates").mkdir()
    with pytest.raises(ConfigError) as err:
        render_candidates(template_environment(Path("templates")), "gone.jinja",
                          {"id": "p0", "fields": {}}, count=1, seed=0)
    assert str(err.value) == "templates/gone.jinja: no such template. Add it, or fix the name in rules/."


def test_near_duplicates_of_test_examples_and_of_each_other_are_dropped_and_counted(demo_rules) -> None:
    from refinery.analyze import MiniLMEmbedder
    from refinery.generate import Candidate, drop_near_duplicates

    test_input = "<weather>Sunny!</weather> use thinking. Gus has 4 apples and buys 9 more. How many apples now?"
    inputs = [test_input.replace("Sunny!", "sunny."),  # a planted near-duplicate of the test example
              "<weather>Fog</weather> Hana has 17 stamps and loses 8. How many stamps are left?",
              "<weather>fog</weather> Hana has 17 stamps and loses 8. How many stamps are left?",  # piles up
              "Eli has 9 pens and loses 4. How many pens are left?"]
    candidates = [Candidate(input=t, output="x", fields={}, template="t.jinja", parent_id="p", cluster_id="c")
                  for t in inputs]
    embedder = MiniLMEmbedder()
    drop_near_duplicates(candidates, embedder.encode(inputs), embedder.encode([test_input]), ["t1"],
                         near_test=0.95, near_generated=0.995)
    assert [c.outcome for c in candidates] == ["leak", "stored", "duplicate", "stored"]
    assert candidates[0].detail.startswith("near-duplicate of held-out example t1 (cosine 0.99")
    assert candidates[2].detail == "near-duplicate of another counterexample (cosine 1.000)"  # MiniLM is uncased


@pytest.mark.parametrize("template", ["category_mapping.jinja", "schema_strict.jinja"])
def test_fresh_problem_families_spread_beyond_the_failing_example(demo_rules, template: str) -> None:
    env = template_environment(REPO / "templates")
    parents = demo_parents(n=10)
    made = [c for p in parents for c in render_candidates(env, template, p, count=4, seed=0,
                                                          spec=demo_rules.template(template))]
    problems = {c.fields["problem"] for c in made}
    assert len(problems) >= 35  # new problems, names and numbers, not the parent's
    assert not problems & {p["fields"]["problem"] for p in parents}
    if template == "category_mapping.jinja":
        conditions = {c.fields["condition"] for c in made}
        assert conditions == set(demo_rules.template(template).params["conditions"])  # every category
        assert all(c.output.endswith(f"<display_weather>{c.fields['emoji']}</display_weather>") for c in made)


def test_an_inv_template_that_changes_the_output_is_reported(tmp_path) -> None:
    from refinery.rules import RuleSet, TemplateSpec

    (tmp_path / "t.jinja").write_text("{% set input %}{{ parent.input }}!{% endset %}"
                                      "{% set output %}{{ parent.output }} changed{% endset %}")
    spec = TemplateSpec("t.jinja", "INV", "rules/x.toml:1")
    [candidate] = render_candidates(template_environment(tmp_path), "t.jinja",
                                    {"id": "p", "input": "q", "output": "a", "fields": {}}, count=1, seed=0, spec=spec)
    [vetted] = vet_candidates([candidate], RuleSet(checks=()), known_hashes=set(), held_out_inputs=set())
    assert (vetted.outcome, vetted.detail) == ("failed_checks", "INV template t.jinja changed the expected output")
