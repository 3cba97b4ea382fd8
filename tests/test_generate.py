"""The generate stage: demo templates render valid counterexamples; broken templates give exact messages."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import REPO, write

from refinery.errors import ConfigError
from refinery.rules import check_one, load_rules
from refinery.stages.generate import render_candidates, template_environment, vet_candidates

DEMO_TEMPLATES = ["punctuation.jinja", "synonyms.jinja", "no_tag.jinja", "think_toggle.jinja",
                  "category_mapping.jinja", "capitalisation.jinja", "schema_strict.jinja"]
ANCHORED_FAMILIES = ["punctuation.jinja", "synonyms.jinja", "no_tag.jinja", "think_toggle.jinja"]
# The demo's word problems, read back from an input: the answer is computed here, not taken from the template.
PROBLEM = re.compile(r"[A-Z][a-z]+ has (\d+) (\w+) and ([a-z ]+?) (\d+)( more)?\. How many \2 (now|are left)\?")
DISPLAY = re.compile(r"<display_weather>.*?</display_weather>")
THINK = re.compile(r"^<think>.*?</think>")


def demo_parents(name: str = "eval", n: int = 40) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "data" / "demo" / f"{name}.jsonl").read_text().splitlines()][:n]
    return [{"id": f"p{i}", "input": r.pop("input"), "output": r.pop("output"), "fields": r}
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def demo_rules():
    return load_rules(REPO / "rules")


def render(rules, template: str, parents: list[dict], *, count: int) -> list:
    """Every parent's renders, vetted against every check (nothing stored or known before)."""
    env = template_environment(REPO / "templates")
    spec = rules.template(template)
    candidates = [c for p in parents for c in render_candidates(env, template, p, count=count, seed=0, spec=spec)]
    return vet_candidates(candidates, rules, known_hashes=set(), held_out_inputs=set())


def solve(text: str) -> tuple[str, str, int]:
    """The word problem in an input, its worked arithmetic and its answer."""
    found = PROBLEM.search(text)
    assert found, f"no word problem in {text!r}"
    a, b, add = int(found[1]), int(found[4]), found[5] is not None
    assert add == (found[6] == "now"), text
    result = a + b if add else a - b
    return found[0], f"{a} {'+' if add else '-'} {b} = {result}", result


def assert_answer_matches_problem(candidate) -> None:
    _, work, result = solve(candidate.input)
    think = f"<think>{work}</think>" if candidate.output.startswith("<think>") else ""
    assert candidate.output.startswith(f"{think}Answer: {result}"), (candidate.input, candidate.output)


@pytest.mark.parametrize("template", DEMO_TEMPLATES)
def test_demo_templates_render_examples_that_pass_every_check(demo_rules, template: str) -> None:
    spec = demo_rules.template(template)
    assert spec.source, f"{template} is not declared INV or DIR in rules/"
    vetted = render(demo_rules, template, demo_parents(), count=3)
    assert not [c for c in vetted if c.outcome == "failed_checks"]
    kept = [c for c in vetted if c.outcome == "stored"]
    assert len({c.input for c in kept}) == len(kept) >= 25  # distinct inputs, most parents yield new ones
    if spec.kind == "INV":
        assert all(c.output == c.parent_output for c in kept)
    for c in kept:
        for check in demo_rules.checks:
            assert check_one(check, input=c.input, prediction=c.output, fields=c.fields) is not False
        assert_answer_matches_problem(c)  # the answer and work are right for the problem in the input


@pytest.mark.parametrize("template", ANCHORED_FAMILIES)
def test_anchored_families_keep_the_parents_problem_or_take_a_fresh_one(demo_rules, template: str) -> None:
    parents = {p["id"]: p for p in demo_parents(n=200)}
    vetted = render(demo_rules, template, list(parents.values()), count=4)
    assert {c.outcome for c in vetted} <= {"stored", "duplicate"}
    assert not [c for c in vetted if c.input == parents[c.parent_id]["input"]]  # every render is a new input
    assert len({c.input for c in vetted}) >= 0.95 * len(vetted)
    problems = [solve(c.input)[0] for c in vetted]
    fresh = [p != solve(parents[c.parent_id]["input"])[0] for c, p in zip(vetted, problems, strict=True)]
    assert 0.4 <= sum(fresh) / len(vetted) <= 0.75  # about half take a fresh problem
    assert len(set(problems)) >= 450  # new names, objects and numbers, not a few problems over and over
    for c, is_fresh in zip(vetted, fresh, strict=True):
        parent = parents[c.parent_id]
        assert_answer_matches_problem(c)
        assert c.fields["problem"] == solve(c.input)[0] and c.fields["answer"] == solve(c.input)[2]
        if is_fresh:
            continue
        # on the parent's problem, the output changes only as the family declares
        if template in ("punctuation.jinja", "synonyms.jinja"):
            assert c.output == parent["output"]
        elif template == "no_tag.jinja":
            assert THINK.sub("", c.output) == DISPLAY.sub("", THINK.sub("", parent["output"]))
        else:
            assert THINK.sub("", c.output) == THINK.sub("", parent["output"])


@pytest.mark.parametrize("template", ANCHORED_FAMILIES)
def test_anchored_families_change_what_they_declare(demo_rules, template: str) -> None:
    parents = {p["id"]: p for p in demo_parents(n=200)}
    for c in render(demo_rules, template, list(parents.values()), count=2):
        parent = parents[c.parent_id]
        tagged = "<weather>" in parent["input"]
        if template == "no_tag.jinja":
            assert "<weather>" not in c.input and "display_weather" not in c.output
            if tagged and solve(c.input)[0] == parent["fields"]["problem"]:  # only the tag removed
                assert c.output == DISPLAY.sub("", parent["output"])
        elif template == "think_toggle.jinja":
            assert c.output.startswith("<think>") != parent["output"].startswith("<think>")
            assert (re.search(r"(?i)use thinking|think it through", c.input) is not None) == \
                c.output.startswith("<think>")
            assert DISPLAY.findall(c.output) == DISPLAY.findall(parent["output"])  # the tag and emoji kept
            assert c.input.startswith(f"<weather>{parent['fields']['weather']}</weather> ") if tagged else \
                "<weather>" not in c.input
        else:  # punctuation and synonyms keep the condition and its emoji
            assert ("<weather>" in c.input) == tagged
            assert DISPLAY.findall(c.output) == DISPLAY.findall(parent["output"])
            assert c.fields["condition"] == parent["fields"]["condition"]


# A weather tag with a punctuation mark against the word, inside the tag or just outside it.
PUNCTUATED = re.compile(r"^(?P<lead>[^\w\s<]*)(?P<g0>\s*)<weather>(?P<pre>[^\w\s]*)(?P<g1>\s*)(?P<word>\w[\w ]*?)"
                        r"(?P<g2>\s*)(?P<post>[^\w\s]*)</weather>(?P<g3>\s*)(?P<trail>[^\w\s<]*) ")


def test_punctuation_puts_each_mark_after_and_before_the_word_with_each_spacing(demo_rules) -> None:
    params = demo_rules.template("punctuation.jinja").params
    parents = {p["id"]: p for p in demo_parents(n=600)}
    seen = set()
    for c in render(demo_rules, "punctuation.jinja", list(parents.values()), count=2):
        parent = parents[c.parent_id]
        if "<weather>" not in parent["input"]:
            continue
        found = PUNCTUATED.match(c.input)
        assert found, c.input
        word = re.sub(r"[^\w ]", "", parent["fields"]["weather"]).strip()
        assert found["word"] == word  # the parent's word, in its case
        marks = [(side, found[side]) for side in ("lead", "pre", "post", "trail") if found[side]]
        assert len(marks) == 1, c.input  # one mark, on one side of the word
        [(where, mark)] = marks
        gap = found["g0"] + found["g1"] + found["g2"] + found["g3"]
        seen.add(("after" if where in ("post", "trail") else "before", mark, gap,
                  "inside" if where in ("pre", "post") else "outside"))
    assert {(side, mark) for side, mark, _, _ in seen} == {(s, m) for s in params["sides"] for m in params["marks"]}
    assert {gap for _, _, gap, _ in seen} == {"", " ", "  "} == set(params["gaps"])  # no space, one, two
    assert {(side, where) for side, _, _, where in seen} == {(s, b) for s in ("after", "before")
                                                           for b in ("inside", "outside")}


def test_punctuation_of_the_thinking_cue_when_there_is_no_tag(demo_rules) -> None:
    parents = [p for p in demo_parents(n=200) if p["fields"]["cue"] and not p["fields"]["weather"]]
    made = render(demo_rules, "punctuation.jinja", parents, count=2)
    assert len(made) >= 40
    for c, parent in zip(made, [p for p in parents for _ in range(2)], strict=True):
        cue = c.input[:c.input.index(solve(c.input)[0])].strip()
        assert cue != parent["fields"]["cue"] and re.sub(r"[^\w ]", "", cue).strip().lower() == \
            re.sub(r"[^\w ]", "", parent["fields"]["cue"]).strip().lower()  # the same words, other punctuation
        assert c.output.startswith("<think>")


def test_synonyms_swap_the_weather_word_for_each_listed_word_of_its_condition(demo_rules) -> None:
    lists = demo_rules.template("synonyms.jinja").params["synonyms"]
    parents = {p["id"]: p for p in demo_parents(n=600)}
    used = {condition: set() for condition in lists}
    for c in render(demo_rules, "synonyms.jinja", list(parents.values()), count=2):
        parent = parents[c.parent_id]
        old = parent["fields"]["weather"]
        if old is None:  # no tag: the thinking cue said another way, or (no cue either) a fresh problem
            assert "<weather>" not in c.input
            assert c.fields["cue"] != parent["fields"]["cue"] if parent["fields"]["cue"] else \
                solve(c.input)[0] != parent["fields"]["problem"]
            continue
        new = re.match(r"<weather>(.*?)</weather> ", c.input)[1]
        old_word, new_word = (re.sub(r"[^\w ]", "", w).strip() for w in (old, new))
        assert new.replace(new_word, "") == old.replace(old_word, "")  # the punctuation kept
        assert new_word.lower() in lists[parent["fields"]["condition"]] and new_word.lower() != old_word.lower()
        assert new_word.isupper() == old_word.isupper() and new_word[0].isupper() == old_word[0].isupper()
        used[parent["fields"]["condition"]].add(new_word.lower())
    assert used == {condition: set(words) for condition, words in lists.items()}  # every list entry used


def test_templates_answer_the_checks_they_target(demo_rules) -> None:
    assert demo_rules.templates_for(["emoji_correct"]) == ["category_mapping.jinja", "punctuation.jinja",
                                                          "synonyms.jinja", "capitalisation.jinja"]
    assert demo_rules.templates_for(["display_weather_absent"]) == ["no_tag.jinja"]
    assert demo_rules.templates_for(["think_absent"]) == ["think_toggle.jinja"]


def test_candidates_that_leak_or_repeat_are_not_kept(demo_rules) -> None:
    env = template_environment(REPO / "templates")
    parent = demo_parents(n=1)[0]
    [first] = render_candidates(env, "no_tag.jinja", parent, count=1, seed=0,
                                spec=demo_rules.template("no_tag.jinja"))
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
    assert candidate.detail == ("fails display_weather_present: no match for /<display_weather>[^<]+"
                                "</display_weather>/; emoji_correct: no value: /<display_weather>(.*?)"
                                "</display_weather>/ did not match")


def test_a_wrong_emoji_mapping_is_rejected_when_vetted(demo_rules) -> None:
    """The emoji is checked against the rules' weather_emoji table, not against the candidate itself: with fog
    mapped to ☀️ in category_mapping's params, the fog renders agree with themselves (output and emoji field) and
    every one is rejected; the other conditions are kept."""
    spec = demo_rules.template("category_mapping.jinja")
    conditions = {**spec.params["conditions"], "fog": {**spec.params["conditions"]["fog"], "emoji": "☀️"}}
    wrong = dataclasses.replace(spec, params={**spec.params, "conditions": conditions})
    env = template_environment(REPO / "templates")
    candidates = [c for p in demo_parents(n=20) for c in render_candidates(env, "category_mapping.jinja", p, count=4,
                                                                           seed=0, spec=wrong)]
    vetted = vet_candidates(candidates, demo_rules, known_hashes=set(), held_out_inputs=set())
    fog = [c for c in vetted if c.fields["condition"] == "fog"]
    assert len(fog) >= 5
    for c in fog:
        assert c.fields["emoji"] == "☀️" and c.output.endswith("<display_weather>☀️</display_weather>")
        key = c.fields["weather"].rstrip("!.").lower()
        assert (c.outcome, c.detail) == ("failed_checks", f"fails emoji_correct: got '☀️', expected '🌫️' for "
                                                          f"{key!r} (lookup weather_emoji)")
    assert {c.outcome for c in vetted if c.fields["condition"] != "fog"} <= {"stored", "duplicate"}


def test_a_weather_word_missing_from_the_table_is_rejected_when_vetted(tmp_path: Path, demo_rules) -> None:
    """What the rules cannot check is not kept: a candidate whose weather word has no entry in the table."""
    write(tmp_path / "hail.jinja", "{% set input %}<weather>Hail!</weather> {{ parent.fields.problem }}{% endset %}"
                                   "{% set output %}Answer: {{ parent.fields.answer }}<display_weather>🧊"
                                   "</display_weather>{% endset %}")
    parent = demo_parents(n=1)[0]
    assert parent["fields"]["cue"] is None and parent["fields"]["weather"] is None
    [candidate] = vet_candidates(render_candidates(template_environment(tmp_path), "hail.jinja", parent, count=1,
                                                   seed=0), demo_rules, known_hashes=set(), held_out_inputs=set())
    table = demo_rules.check("emoji_correct").lookup_table
    assert (candidate.outcome, candidate.detail) == (
        "failed_checks", f"fails emoji_correct: key 'hail' is not in lookup weather_emoji ({table.source}); add it "
                         f"there")
    # judging a model's output, the same input leaves the check unapplied (the rule result names the key)
    assert check_one(demo_rules.check("emoji_correct"), input=candidate.input, prediction=candidate.output) is None


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
    from refinery.stages.analyze import MiniLMEmbedder
    from refinery.stages.generate import Candidate, drop_near_duplicates

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
