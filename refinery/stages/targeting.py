"""What a round renders: the plan of its budget, the patterns it aims at, and the vetting of what comes out.

The round's budget (`[generate] clusters x per_cluster`, at most `per_round`) is planned in two parts. An
exploration share is rendered from analysis examples drawn at random, every template in turn (what `targeting =
"random"` does with the whole budget): the failing share of the analysis split, at least 10 % (or the fixed share
`[generate] explore`). When nearly everything fails, a random example is a failure anyway and random parents cover
every family, so the plan is as broad as random augmentation; when failures are few, most of the budget goes to
their causes, and the floor keeps data flowing to what analysis cannot see. The rest is shared across every pattern
that has templates (embedding clusters marked not significant only when nothing else is left) by failing mass
(members x severity), weighed by what earlier rounds' targeting did: a pattern that shrank after it was targeted
gets less, one that did not shrink gets more and another template family first, a pattern that no longer fails is
not there to get any. Within a pattern, parents take its templates in turn, so the share spreads over members and
families. Each template renders with the pattern in scope, so that what it renders carries the pattern's feature;
whether it does is checked and stored.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import polars as pl

from refinery.store import ROUND_WAIT as STORE_WAIT
from refinery.store import Store

NOT_SHRINKING = 1.5  # weight of a pattern whose members did not fall after it was targeted
MEMBERS_IN_SCOPE = 20  # members whose fields a template sees in `pattern.members`


@dataclass
class Target:
    """One thing to render for: a pattern (or, for random augmentation, none) and its share of the budget."""

    cluster_id: str | None
    failing: list[str]
    members: list[str]
    templates: list[str]
    share: int
    pattern: dict[str, Any] | None = None
    why: str = ""  # how its share was decided, for the round summary


@dataclass
class Plan:
    """How a round's budget is spent: `explore` examples from random parents, `shares` per pattern, and why."""

    budget: int
    failing_share: float  # of the analysis split
    explore: int
    shares: dict[str, int]
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "failing_share": round(self.failing_share, 4), "explore": self.explore,
                "patterns": dict(self.shares), "why": self.why}


EXPLORE_FLOOR = 0.1  # the least exploration share when `[generate] explore` is unset


def plan_budget(weights: dict[str, float], *, budget: int, failing_share: float, explore: float | None) -> Plan:
    """Share `budget` between exploration (random parents) and the patterns (`weights`: weighed failing mass).

    Exploration takes the failing share of the analysis split, at least EXPLORE_FLOOR (or the fixed share
    `explore` when it is set): a random parent is then a failure about as often as a targeted one would be, and
    random parents spread over every family; what is left follows the failing mass, which is concentrated exactly
    when the failures are. With no pattern to aim at and no fixed share, everything explores."""
    from refinery.stages.generate import share_budget

    aimed = {key: w for key, w in weights.items() if w > 0}
    share = explore if explore is not None else max(EXPLORE_FLOOR, failing_share) if aimed else 1.0
    explored = min(budget, round(budget * share))
    shares = share_budget(weights, budget - explored)
    reason = (f"[generate] explore = {explore}" if explore is not None else "no pattern with templates to aim at"
              if not aimed else f"{failing_share:.0%} of the analysis split fails" if failing_share >= EXPLORE_FLOOR
              else f"the exploration floor, {EXPLORE_FLOOR:.0%}")
    why = (f"{explored} of {budget} from random analysis examples ({reason}), {budget - explored} over "
           f"{_patterns(sum(1 for v in shares.values() if v))} by failing mass")
    return Plan(budget, failing_share, explored, shares, why)


def _patterns(n: int) -> str:
    return f"{n} pattern" + ("" if n == 1 else "s")


def generate_round(project, env, rules, clusters, rows: pl.DataFrame, number: int, embedder, *,
                   known_words: set[str], failing: int = 0) -> tuple[list, list[Target], Plan | None]:
    """Counterexamples for this round's targets, vetted and capped at each target's share; the targets; the plan
    (None under `targeting = "random"` or `"off"`). `failing`: how many analysis examples failed a check."""
    from refinery.stages.generate import render_candidates

    settings = project.config.generate
    if settings.targeting == "off":
        return [], [], None
    by_id = {r["example_id"]: r for r in rows.iter_rows(named=True)}
    seed = project.config.core.seed + number
    lookups = {lookup.name: dict(lookup.table) for lookup in rules.lookups}
    targets, plan = plan_targets(project, rules, clusters, rows, number, known_words=known_words, failing=failing)
    candidates = []
    for target in targets:
        made: list = []
        for example_id, template in spread(target):
            row = by_id.get(example_id)
            if row is None:  # no longer active (relabelled)
                continue
            parent = {"id": example_id, "input": row["input"], "output": row["expected"],
                      "fields": json.loads(row["fields"]) if row["fields"] else {}}
            made += render_candidates(env, template, parent, count=settings.per_parent, seed=seed,
                                      cluster_id=target.cluster_id, targets=target.failing,
                                      spec=rules.template(template), pattern=target.pattern, lookups=lookups)
            if len(made) >= target.share * 3:
                break
        candidates += made
    vetted = vet(project, rules, candidates, embedder)
    mark_carriers(vetted, rules, known_words)
    capped = cap(vetted, {t.cluster_id: t.share for t in targets})
    if settings.review:  # held for a person: `refinery examples --pending`, then accept or reject
        for c in capped:
            c.outcome = "pending" if c.outcome == "stored" else c.outcome
    return capped, targets, plan


def spread(target: Target):
    """(parent, template) pairs in the order a target renders them: each parent takes the next template in turn,
    and for a pattern a second pass over its members takes the templates after that, so a share spreads over
    members and families instead of piling every family onto the first few members. Random parents (no pattern)
    get one pass, one template each, as random augmentation always rendered them."""
    if target.share == 0 or not target.templates:
        return
    for turn in range(len(target.templates) if target.cluster_id else 1):
        for i, example_id in enumerate(target.members):
            yield example_id, target.templates[(i + turn) % len(target.templates)]


def plan_targets(project, rules, clusters, rows: pl.DataFrame, number: int, *, known_words: set[str],
                 failing: int = 0) -> tuple[list[Target], Plan | None]:
    """The round's targets with their shares: patterns a person accepted since the last round (a full pattern's
    share each), the exploration share on random analysis examples, then every pattern with templates sharing
    the rest by weighed failing mass (see `plan_budget`)."""
    settings = project.config.generate
    if settings.targeting == "random":
        return [t for t in [explore_target(project, rules, rows, number, settings.per_round)] if t], None
    by_id = {r["example_id"]: r for r in rows.iter_rows(named=True)}
    targets = _accepted(project, rules, number, settings.per_cluster)
    aimed = choose_patterns(clusters, rules)
    history = _history(project, number)
    weights, why, turns = {}, {}, {}
    for cluster in aimed:
        factor, why[cluster.id], turns[cluster.id] = _lineage(cluster, history.get(pattern_key(cluster)))
        weights[cluster.id] = cluster.score * factor
    analysis = rows.filter(pl.col("split") == "analysis").height
    plan = plan_budget(weights, budget=min(settings.clusters * settings.per_cluster, settings.per_round),
                       failing_share=failing / analysis if analysis else 0.0, explore=settings.explore)
    exploring = explore_target(project, rules, rows, number, plan.explore)
    targets += [exploring] if exploring and plan.explore else []
    for cluster in aimed:
        templates = rules.templates_for([own_check(cluster)], cluster.feature)
        turn = turns[cluster.id] % len(templates)
        targets.append(Target(cluster.id, [own_check(cluster)], cluster.members, templates[turn:] + templates[:turn],
                              plan.shares[cluster.id], pattern_scope(cluster, by_id, known_words), why[cluster.id]))
    return targets, plan


def explore_target(project, rules, rows: pl.DataFrame, number: int, share: int) -> Target | None:
    """Random analysis examples as parents, every template in turn: random augmentation, or a plan's exploration.
    The draw depends on the seed and round only, so the random arm of a benchmark draws the same parents."""
    parents = sorted(rows.filter(pl.col("split") == "analysis")["example_id"].to_list())
    random.Random(f"{project.config.core.seed}:{number}").shuffle(parents)
    templates = sorted({s.file for s in rules.templates} | {t for g in rules.targets for t in g.templates})
    return Target(None, [], parents, templates, share, why="random analysis examples") if templates else None


def own_check(cluster) -> str:
    """The check a pattern is about (the first of its members' failing checks). Its templates answer that check
    only: members also failing other checks (an unseen weather word and a wrong sum) would otherwise draw the other
    checks' families into a pattern they do not answer."""
    return next(iter(cluster.checks))


def choose_patterns(clusters: list, rules) -> list:
    """The patterns that have templates, worst first. An embedding cluster whose inputs fail no more often than
    the rest (not significant) is shown, not targeted: nothing sets its failures apart for a template to aim at;
    such clusters are taken only when nothing else is left."""
    answerable = [c for c in clusters if rules.templates_for([own_check(c)], c.feature)]
    standing_out = [c for c in answerable if c.significant is not False]
    return standing_out or answerable


def pattern_key(cluster) -> tuple[str, str]:
    """What makes two rounds' patterns the same cause: the main check and the feature (or the pattern's kind)."""
    return own_check(cluster), cluster.feature or cluster.kind


def _history(project, number: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Per pattern key, the last earlier round that stored counterexamples for it: its size then, how many."""
    with Store(project.store_path, wait=STORE_WAIT) as store:
        frame = store.frame("""
            SELECT c.round, c.checks, c.kind, c.feature, c.size, count(*) AS stored FROM clusters c
            JOIN examples e ON e.cluster_id = c.id AND e.source = 'generated'
            WHERE c.round < ? GROUP BY ALL ORDER BY c.round""", [number])
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in frame.iter_rows(named=True):
        check = next(iter(json.loads(row["checks"])))
        key = (check, row["feature"] or row["kind"])
        out[key] = {**row, "times": out.get(key, {}).get("times", 0) + 1}
    return out


def _lineage(cluster, earlier: dict[str, Any] | None) -> tuple[float, str, int]:
    """(weight factor, why, template turn) from the last time this pattern was targeted."""
    if earlier is None:
        return 1.0, "new", 0
    was, now = earlier["size"], cluster.size
    since = f"{was} -> {now} members since round {earlier['round']}'s {earlier['stored']} examples"
    if now < was:
        return now / was, f"shrinking ({since}): x{now / was:.2f}", 0
    return NOT_SHRINKING, f"not shrinking ({since}): x{NOT_SHRINKING}, another family first", earlier["times"]


def _accepted(project, rules, number: int, share: int) -> list[Target]:
    """Patterns a person accepted since the last round, not yet rendered for: each gets a full share."""
    from refinery.stages.hypotheses import PUNCT

    with Store(project.store_path, wait=STORE_WAIT) as store:
        accepted = store.frame("""
            SELECT c.id, c.checks, c.kind, c.feature, c.statement, list(m.example_id ORDER BY m.distance) AS members
            FROM clusters c JOIN cluster_members m ON m.cluster_id = c.id
            WHERE c.status = 'accepted' AND c.round < ? AND NOT EXISTS
                (SELECT 1 FROM generations g WHERE g.cluster_id = c.id)
            GROUP BY ALL ORDER BY min(c.round), min(c.rank)""", [number])
    out = []
    for r in accepted.iter_rows(named=True):
        failing = list(json.loads(r["checks"]))[:1]  # the pattern's own check (see own_check)
        scope = {"id": r["id"], "kind": r["kind"], "check": failing[0], "feature": r["feature"],
                 "statement": r["statement"], "words": feature_words(r["feature"], [], set()), "marks": list(PUNCT),
                 "members": []}
        out.append(Target(r["id"], failing, r["members"], rules.templates_for(failing, r["feature"]), share, scope,
                          "accepted by a person"))
    return out


def pattern_scope(cluster, by_id: dict[str, dict], known_words: set[str]) -> dict[str, Any]:
    """The pattern as a template sees it: id, kind, check, feature, statement, the words the feature names (the
    unseen words of its members, for the unseen-word feature), the marks that count as punctuation, and the
    fields of its first members."""
    from refinery.stages.hypotheses import PUNCT

    members = [by_id[m] for m in cluster.members if m in by_id][:MEMBERS_IN_SCOPE]
    return {"id": cluster.id, "kind": cluster.kind, "check": own_check(cluster), "feature": cluster.feature,
            "statement": cluster.statement, "words": feature_words(cluster.feature, [m["input"] for m in members],
                                                                   known_words),
            "marks": list(PUNCT), "members": [json.loads(m["fields"]) if m["fields"] else {} for m in members]}


def feature_words(feature: str | None, inputs: list[str], known_words: set[str]) -> list[str]:
    """The words a feature names ("'sunny' touches punctuation" -> sunny); for an unseen-word feature, the words
    of `inputs` not in `known_words` (inside its tag, for a tag's), most frequent first."""
    from refinery.stages.hypotheses import UNSEEN, unseen_words

    if not feature or feature.startswith("the characters"):
        return []
    if feature.startswith(UNSEEN):
        counts = Counter(w for text in inputs for w in set(unseen_words(text, known_words, feature)))
        return [w for w, _ in counts.most_common()]
    return [word for quoted in re.findall(r"'([^']+)'", feature) for word in quoted.split()]


def mark_carriers(candidates: list, rules, known_words: set[str]) -> None:
    """Set `carries` on every candidate rendered for a feature: whether its input has that feature."""
    from refinery.stages.hypotheses import read_features

    marked = [c for c in candidates if c.feature]
    found = read_features([c.input for c in marked], [c.fields for c in marked], cues=rules.cues(),
                          known_words=known_words)
    for c, features in zip(marked, found, strict=True):
        c.carries = c.feature in features


def cap(candidates: list, shares: dict[str | None, int]) -> list:
    """Keep at most each target's share of stored candidates, taking templates in turn so each gets its part. The
    rest are marked over_cap (logged, not stored)."""
    kept: Counter[str | None] = Counter()
    by_template: dict[tuple, list] = {}
    for c in candidates:
        by_template.setdefault((c.cluster_id, c.template), []).append(c)
    order = []
    while any(by_template.values()):
        for key in list(by_template):
            if by_template[key]:
                order.append(by_template[key].pop(0))
    for c in order:
        if c.outcome == "stored":
            if kept[c.cluster_id] >= shares.get(c.cluster_id, 0):
                c.outcome = "over_cap"
                c.detail = f"budget: this pattern's share is {shares.get(c.cluster_id, 0)}" if c.cluster_id \
                    else f"budget: {shares.get(None, 0)} from random analysis examples this round"
            else:
                kept[c.cluster_id] += 1
    return order


def vet(project, rules, candidates: list, embedder) -> list:
    """Every candidate checked against all rules, the store (duplicates), and the test and corner inputs (exact and
    near-duplicate leaks), and against the candidates kept before it (piling up)."""
    from refinery.stages import analyze
    from refinery.stages.generate import drop_near_duplicates, vet_candidates

    settings = project.config.generate
    with Store(project.store_path, wait=STORE_WAIT) as store:
        known = set(store.frame("SELECT content_hash FROM examples")["content_hash"])
        held = store.frame("SELECT id AS example_id, input AS text FROM examples WHERE split IN ('test', 'corner') "
                           "AND status = 'active' ORDER BY id")
        vetted = vet_candidates(candidates, rules, known_hashes=known, held_out_inputs=set(held["text"]))
        held_vectors = analyze.embed_examples(store, held, embedder=embedder)
    if vetted:
        vectors = embedder.encode([c.input for c in vetted])
        drop_near_duplicates(vetted, vectors, held_vectors, held["example_id"].to_list(),
                             near_test=settings.near_test, near_generated=settings.near_generated)
    return vetted


def why_none(project, rules, clusters, rows) -> str:
    """Why a round rendered nothing, from its settings, rules and patterns."""
    from refinery.stages.generate import no_candidates_reason

    settings = project.config.generate
    if clusters and settings.clusters == 0 and settings.targeting == "patterns":
        return "[generate] clusters = 0 targets no pattern"
    return no_candidates_reason(targeting=settings.targeting,
                                patterns=[list(c.checks) for c in clusters[:settings.clusters]],
                                analysis=rows.filter(pl.col("split") == "analysis").height, rules=rules,
                                rules_dir=project.config.core.rules_dir)


def known_vocabulary(store: Store) -> set[str]:
    """The words of the active training split's inputs: what the unseen-word feature calls seen."""
    from refinery.stages.hypotheses import collect_words

    return collect_words(store.frame("SELECT input FROM examples WHERE split = 'train' AND status = 'active'")["input"])
