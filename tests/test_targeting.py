"""Generation aimed at a pattern: the demo's families render what the pattern's feature names, the budget follows
the failing mass and what earlier targeting did, and `[[target]]` may name features."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from conftest import REPO, write
from test_generate import demo_parents

from refinery.errors import ConfigError
from refinery.rules import load_rules
from refinery.stages.generate import render_candidates, share_budget, template_environment, vet_candidates
from refinery.stages.hypotheses import UNSEEN, collect_words, input_features
from refinery.stages.targeting import (
    Target,
    _lineage,
    choose_patterns,
    feature_words,
    plan_budget,
    plan_targets,
    spread,
)


@pytest.fixture(scope="module")
def demo_rules():
    return load_rules(REPO / "rules")


def aimed(rules, template: str, parents: list[dict], pattern: dict, *, count: int = 4) -> list:
    """Renders for `pattern`, vetted against every check."""
    env = template_environment(REPO / "templates")
    lookups = {lookup.name: dict(lookup.table) for lookup in rules.lookups}
    made = [c for p in parents for c in render_candidates(env, template, p, count=count, seed=3, pattern=pattern,
                                                          lookups=lookups, spec=rules.template(template))]
    return vet_candidates(made, rules, known_hashes=set(), held_out_inputs=set())


def pattern(feature: str, words: list[str]) -> dict:
    return {"id": "r001-c01", "kind": "cause", "check": "emoji_correct", "feature": feature,
            "statement": f"emoji_correct fails: ... {feature}", "words": words, "marks": list("!?.,:;)"),
            "members": []}


def seed_vocabulary() -> set[str]:
    return collect_words(p["input"] for p in demo_parents("seed", 20))


@pytest.mark.parametrize("template", ["category_mapping.jinja", "synonyms.jinja"])
def test_renders_for_unseen_words_carry_those_words_with_the_tables_emoji(demo_rules, template: str) -> None:
    known = seed_vocabulary()
    parents = [p for p in demo_parents(n=200) if p["fields"]["condition"] in ("rain", "snow")][:12]
    unseen = feature_words(UNSEEN, [p["input"] for p in parents], known)
    assert "drizzle" in unseen or "flurries" in unseen  # the demo's seed set only says Sunny and Rainy
    made = aimed(demo_rules, template, parents, pattern(UNSEEN, unseen))
    assert made and all(c.outcome in ("stored", "duplicate") for c in made), [c.detail for c in made][:3]
    table = next(lu for lu in demo_rules.lookups if lu.name == "weather_emoji").table
    carrying = [c for c in made if UNSEEN in input_features(c.input, c.fields, known_words=known)]
    assert len(carrying) == len(made)
    for c in made:  # the emoji is the table's for the phrase rendered (vetting checks it too)
        phrase = c.fields["weather"].rstrip("!.,?: )").lower()
        assert c.output.endswith(f"<display_weather>{table[phrase]}</display_weather>")
        assert set(phrase.split()) & set(unseen), c.input


def test_renders_for_a_word_touching_punctuation_touch_it(demo_rules) -> None:
    parents = [p for p in demo_parents(n=300) if (p["fields"]["weather"] or "").lower().startswith("sunny")][:8]
    feature = "'sunny' touches punctuation"
    made = aimed(demo_rules, "punctuation.jinja", parents, pattern(feature, ["sunny"]), count=6)
    stored = [c for c in made if c.outcome == "stored"]
    assert len(stored) >= 30
    assert all(feature in input_features(c.input, c.fields) for c in stored), \
        [c.input for c in stored if feature not in input_features(c.input, c.fields)][:3]
    # unaimed, the same family also puts a space between word and mark, or the mark before the word
    plain = [c for p in parents for c in render_candidates(
        template_environment(REPO / "templates"), "punctuation.jinja", p, count=6, seed=3,
        spec=demo_rules.template("punctuation.jinja"))]
    assert sum(feature not in input_features(c.input, c.fields) for c in plain) >= 10


@pytest.mark.parametrize("template", ["category_mapping.jinja", "schema_strict.jinja", "punctuation.jinja"])
def test_renders_for_a_tag_at_the_end_put_it_there(demo_rules, template: str) -> None:
    parents = [p for p in demo_parents(n=60) if p["fields"]["weather"]][:6]
    made = aimed(demo_rules, template, parents, pattern("the <weather> tag at the end", []))
    tagged = [c for c in made if "<weather>" in c.input]
    assert tagged and all(c.input.rstrip(" !?.,:;)-").endswith("</weather>") for c in tagged)
    assert all("the <weather> tag at the end" in input_features(c.input, c.fields) for c in tagged)
    assert all(c.outcome != "failed_checks" for c in made), [c.detail for c in made if c.outcome == "failed_checks"]


def test_the_budget_is_shared_by_failing_mass() -> None:
    assert share_budget({"a": 60.0, "b": 30.0, "c": 10.0, "d": 0.0}, 100) == {"a": 60, "b": 30, "c": 10, "d": 0}
    assert share_budget({"a": 1.0, "b": 1.0, "c": 1.0}, 10) == {"a": 4, "b": 3, "c": 3}
    assert share_budget({"a": 5.0, "b": 1.0}, 0) == {"a": 0, "b": 0}
    assert sum(share_budget({"a": 3.3, "b": 2.2, "c": 1.1}, 120).values()) == 120


def test_a_pattern_that_shrank_gets_less_and_one_that_did_not_gets_more_and_another_family() -> None:
    earlier = {"round": 2, "size": 40, "stored": 30, "times": 1}
    shrank = _lineage(SimpleNamespace(size=10), earlier)
    assert shrank == (0.25, "shrinking (40 -> 10 members since round 2's 30 examples): x0.25", 0)
    stuck = _lineage(SimpleNamespace(size=44), earlier)
    assert stuck == (1.5, "not shrinking (40 -> 44 members since round 2's 30 examples): x1.5, another family "
                          "first", 1)
    assert _lineage(SimpleNamespace(size=5), None) == (1.0, "new", 0)


def test_a_target_may_name_features(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "rules" / "checks.toml", """
[[check]]
name = "emoji"
type = "regex"
pattern = 'x'

[[target]]
checks = ["emoji"]
templates = ["mapping.jinja", "synonyms.jinja"]

[[target]]
checks = ["emoji"]
features = ["touches punctuation"]
templates = ["punctuation.jinja"]
""")
    rules = load_rules(tmp_path / "rules")
    assert rules.templates_for(["emoji"], "'sunny' touches punctuation") == [
        "punctuation.jinja", "mapping.jinja", "synonyms.jinja"]
    assert rules.templates_for(["emoji"], UNSEEN) == ["mapping.jinja", "synonyms.jinja"]
    assert rules.templates_for(["emoji"]) == ["mapping.jinja", "synonyms.jinja"]
    write(tmp_path / "rules" / "checks.toml", (tmp_path / "rules" / "checks.toml").read_text()
          .replace('features = ["touches punctuation"]', 'features = "touches punctuation"'))
    with pytest.raises(ConfigError) as error:
        load_rules(tmp_path / "rules")
    assert str(error.value) == ('rules/checks.toml:13: target: features must be a non-empty list of feature '
                                'phrases, e.g. ["touches punctuation"].')


def test_a_check_says_which_inputs_it_applies_to(demo_rules) -> None:
    scopes = {c.name: c.scope() for c in demo_rules.checks}
    assert scopes["display_weather_absent"] == "inputs without '<weather>'"
    assert scopes["think_present"] == "inputs with 'use thinking|think it through'"
    assert scopes["answer_correct"] == "inputs it applies to"


def test_the_words_a_feature_names() -> None:
    assert feature_words("'sunny' touches punctuation", [], set()) == ["sunny"]
    assert feature_words("'light rain'", [], set()) == ["light", "rain"]  # a pair names both of its words
    assert feature_words("the characters 'ny!'", [], set()) == []
    inputs = ["<weather>Drizzle!</weather> Bo has 3 cards.", "<weather>drizzle</weather> Al has 2 cards and flurries"]
    assert feature_words(UNSEEN, inputs, {"bo", "has", "cards", "al", "and"}) == ["drizzle", "flurries"]


def test_a_cluster_that_does_not_stand_out_is_targeted_only_when_nothing_else_is_left(demo_rules) -> None:
    def pattern(name: str, check: str, kind: str, significant: bool | None):
        return SimpleNamespace(id=name, checks={check: 1}, feature=None, kind=kind, significant=significant)

    noise = pattern("c1", "answer_correct", "cluster", False)
    # its members also fail emoji_correct, but the pattern is about answer_correct: only answer_correct's templates
    mixed = SimpleNamespace(id="c5", checks={"no_such_check": 3, "emoji_correct": 3}, feature=None, kind="cause",
                            significant=None)
    cause = pattern("c2", "emoji_correct", "cause", None)
    real = pattern("c3", "answer_correct", "cluster", True)
    unanswered = pattern("c4", "no_such_check", "cause", None)
    assert choose_patterns([noise, unanswered, cause, real], demo_rules) == [cause, real]
    assert choose_patterns([noise, unanswered], demo_rules) == [noise]
    assert choose_patterns([mixed], demo_rules) == []  # its own check has no templates


def test_the_plan_explores_the_failing_share_and_gives_the_rest_by_failing_mass() -> None:
    weights = {"a": 300.0, "b": 100.0, "c": 0.0}
    plan = plan_budget(weights, budget=120, failing_share=0.25, explore=None)
    assert (plan.explore, plan.shares) == (30, {"a": 68, "b": 22, "c": 0})
    assert plan.why == ("30 of 120 from random analysis examples (25% of the analysis split fails), 90 over 2 "
                        "patterns by failing mass")
    floor = plan_budget(weights, budget=120, failing_share=0.02, explore=None)
    assert (floor.explore, sum(floor.shares.values())) == (12, 108) and "the exploration floor, 10%" in floor.why
    assert plan_budget({}, budget=120, failing_share=0.02, explore=None).explore == 120  # nothing to aim at
    assert plan_budget({}, budget=120, failing_share=0.02, explore=0.0).explore == 0  # unless told not to explore
    fixed = plan_budget(weights, budget=120, failing_share=0.95, explore=0.0)  # a fixed share: all aimed
    assert (fixed.to_dict()["explore"], fixed.shares) == (0, {"a": 90, "b": 30, "c": 0})
    assert "([generate] explore = 0.0), 120 over 2 patterns" in fixed.why


def test_a_target_spreads_its_share_over_members_before_it_repeats_a_parent() -> None:
    target = Target("c1", ["emoji_correct"], ["m1", "m2", "m3"], ["t1.jinja", "t2.jinja"], share=4)
    assert list(spread(target)) == [("m1", "t1.jinja"), ("m2", "t2.jinja"), ("m3", "t1.jinja"),
                                    ("m1", "t2.jinja"), ("m2", "t1.jinja"), ("m3", "t2.jinja")]
    assert list(spread(Target("c1", [], ["m1"], ["t1.jinja"], share=0))) == []
    # random parents: one pass, one template each in turn, as random augmentation always rendered them
    assert list(spread(Target(None, [], ["m1", "m2", "m3"], ["t1.jinja", "t2.jinja"], share=4))) == [
        ("m1", "t1.jinja"), ("m2", "t2.jinja"), ("m3", "t1.jinja")]


def _planted(demo_project, failing_share: float, causes: dict[str, int]):
    """The demo project's 70 held-out rows as its analysis split, a share of them failing, and patterns with the
    given sizes (check emoji_correct, a feature each), as analysis would hand them to the plan."""
    from refinery.store import Store

    with Store(demo_project.store_path) as store:
        store.con.execute("UPDATE examples SET split = 'analysis' WHERE split = 'holdout'")
        rows = store.frame("SELECT id AS example_id, input, output AS expected, fields, split FROM examples "
                           "WHERE split = 'analysis' ORDER BY id")
    ids = rows["example_id"].to_list()
    config = demo_project.config  # the demo's budget: 3 x 40 = 120
    project = replace(demo_project, config=replace(config, generate=replace(config.generate, clusters=3,
                                                                             per_cluster=40)))
    patterns, start = [], 0
    for rank, (feature, size) in enumerate(causes.items(), start=1):
        patterns.append(SimpleNamespace(id=f"r001-c{rank:02d}", checks={"emoji_correct": size}, feature=feature,
                                        kind="cause", significant=None, score=2.0 * size, size=size, rank=rank,
                                        statement=f"emoji_correct fails with {feature}",
                                        members=ids[start:start + size]))
        start += size
    return project, rows, patterns, round(failing_share * len(ids))


def test_when_nearly_everything_fails_the_plan_is_as_broad_as_random_augmentation(demo_project, demo_rules) -> None:
    project, rows, patterns, failing = _planted(demo_project, 0.95, {"'sunny' touches punctuation": 20, UNSEEN: 18,
                                                            "the tag after the question": 15})
    targets, plan = plan_targets(project, demo_rules, patterns, rows, 1, known_words=seed_vocabulary(),
                                 failing=failing)
    budget = 120
    assert plan.budget == budget and plan.explore == round(budget * failing / rows.height) >= 0.9 * budget
    explore = next(t for t in targets if t.cluster_id is None)
    families = {template for _, template in list(spread(explore))[:explore.share]}
    every = {s.file for s in demo_rules.templates} | {t for g in demo_rules.targets for t in g.templates}
    assert families == every  # random parents, every family in turn
    assert sum(t.share for t in targets if t.cluster_id) == budget - plan.explore


def test_when_failures_are_few_and_have_a_cause_the_plan_concentrates_on_it(demo_project, demo_rules) -> None:
    project, rows, patterns, failing = _planted(demo_project, 0.08, {"'sunny' touches punctuation": 5, UNSEEN: 1})
    targets, plan = plan_targets(project, demo_rules, patterns, rows, 1, known_words=seed_vocabulary(),
                                 failing=failing)
    shares = {t.cluster_id: t.share for t in targets}
    assert plan.explore == shares[None] == 12  # the exploration floor, 10 % of 120
    assert shares == {None: 12, "r001-c01": 90, "r001-c02": 18}  # 108 by failing mass, 5 : 1
    aimed = next(t for t in targets if t.cluster_id == "r001-c01")
    assert set(aimed.members) == set(patterns[0].members) and aimed.pattern["feature"] == patterns[0].feature
