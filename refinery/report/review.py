"""Review: list failure patterns with their evidence, accept, reject, merge and rename them, relabel examples,
and follow each targeted pattern into the next round.

Decisions take effect in the next round: rejecting a pattern withdraws the counterexamples made for it (they
stay in the store with status 'rejected'), accepting one that was not targeted makes the next round generate
for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from refinery.errors import RefineryError
from refinery.stages.hypotheses import UNSEEN, collect_words, read_features
from refinery.store import Store, content_hash


@dataclass
class Pattern:
    """A cluster as a person reviews it."""

    id: str
    round: int
    rank: int
    label: str
    statement: str
    status: str
    size: int
    score: float
    score_parts: dict[str, Any]
    checks: dict[str, int]
    evidence: list[dict[str, Any]]
    generated: int
    members: list[dict[str, Any]]
    kind: str = "cluster"  # cause: a check and a feature; all: a check failing on all its inputs; cluster: embedding
    feature: str | None = None
    p: float | None = None  # a cluster's own test against the rest
    q: float | None = None
    budget: int | None = None  # counterexamples its round's budget gave it
    merged_into: str | None = None


def list_patterns(store: Store, *, round: int | None = None, members: int = 3) -> list[Pattern]:
    """The patterns of a round (default: the last done one), worst first, with up to `members` examples each."""
    number = round if round is not None else store.scalar("SELECT max(number) FROM rounds WHERE status = 'done'")
    if number is None:
        raise RefineryError("no finished round yet: run `refinery iterate` first.")
    ids = store.frame("SELECT id FROM clusters WHERE round = ? AND status <> 'merged' ORDER BY rank", [number])
    if ids.height == 0 and store.scalar("SELECT count(*) FROM rounds WHERE number = ?", [number]) == 0:
        raise RefineryError(f"no round {number}. Rounds: {_rounds(store)}.")
    return [show_pattern(store, i, members=members) for i in ids["id"]]


def round_plan(store: Store, *, round: int | None = None) -> dict[str, Any] | None:
    """How a round (default: the last done one) shared its counterexample budget (targeting.Plan), if recorded."""
    plan = store.scalar("SELECT plan FROM rounds WHERE number = coalesce(?, (SELECT max(number) FROM rounds "
                        "WHERE status = 'done'))", [round])
    return json.loads(plan) if plan else None


def show_pattern(store: Store, cluster_id: str, *, members: int | None = None) -> Pattern:
    """One pattern with its members (all of them unless `members` is given): input, output, expected."""
    row = _cluster(store, cluster_id)
    limit = "" if members is None else f"LIMIT {int(members)}"
    shown = store.frame(f"""
        SELECT m.example_id, e.input, p.output, e.output AS expected, m.representative
        FROM cluster_members m JOIN examples e ON e.id = m.example_id
        LEFT JOIN predictions p ON p.example_id = m.example_id AND p.round = ? AND p.variant = m.variant
        WHERE m.cluster_id = ? ORDER BY m.distance, m.example_id {limit}""", [row["round"], cluster_id])
    generated = store.scalar("SELECT count(*) FROM examples WHERE cluster_id = ? AND source = 'generated' "
                             "AND status = 'active'", [cluster_id])
    shown = shown.join(_failing(store, row["round"], shown["example_id"].to_list()), on="example_id", how="left")
    return Pattern(id=row["id"], round=row["round"], rank=row["rank"], label=row["label"] or row["id"],
                   statement=row["statement"] or "", status=row["status"], size=row["size"], score=row["score"],
                   score_parts=json.loads(row["score_parts"] or "{}"), checks=json.loads(row["checks"] or "{}"),
                   evidence=json.loads(row["evidence"] or "[]"), generated=generated, members=shown.to_dicts(),
                   kind=row["kind"], feature=row["feature"], p=row["p"], q=row["q"], budget=row["budget"],
                   merged_into=row["merged_into"])


def _failing(store: Store, round: int, ids: list[str]) -> pl.DataFrame:
    """Per member, the checks its output failed in the round, each with its detail (a judge's reason, a rule's
    mismatch): "polite: it ignores the question"."""
    return store.frame("""
        SELECT example_id, list(check_name || CASE WHEN coalesce(detail, '') = '' THEN '' ELSE ': ' || detail END
                                ORDER BY check_name) AS failing
        FROM rule_results WHERE round = ? AND variant = '' AND passed = false AND example_id IN (SELECT unnest(?))
        GROUP BY example_id""", [round, ids]).with_columns(pl.col("failing").cast(pl.List(pl.String)))


def decide(store: Store, cluster_id: str, decision: str) -> dict[str, Any]:
    """Accept or reject a pattern. Rejecting withdraws its counterexamples from training; returns what changed."""
    if decision not in ("accept", "reject"):
        raise RefineryError(f"decision '{decision}': expected accept or reject.")
    row = _cluster(store, cluster_id)
    if row["status"] == "merged":
        raise RefineryError(f"pattern {cluster_id} was merged into {_merge_path(store, row)[-1]}; decide on that one.")
    status = "accepted" if decision == "accept" else "rejected"
    with store.transaction() as con:
        con.execute("UPDATE clusters SET status = ? WHERE id = ?", [status, cluster_id])
        # Accepting restores withdrawn counterexamples; ones pending review stay pending (a person decides those).
        # Rejecting withdraws active and pending ones alike.
        new_status, from_statuses = (("active", ["rejected"]) if decision == "accept"
                                     else ("rejected", ["active", "pending"]))
        changed = con.execute("UPDATE examples SET status = ? WHERE cluster_id = ? AND source = 'generated' "
                              "AND status IN (SELECT unnest(?)) RETURNING id",
                              [new_status, cluster_id, from_statuses]).fetchall()
    return {"id": cluster_id, "status": status, "examples_" + ("restored" if decision == "accept" else "withdrawn"):
            len(changed)}


def list_examples(store: Store, *, status: str | None = None, round: int | None = None,
                  source: str | None = "generated") -> pl.DataFrame:
    """Examples with their lineage (round, pattern, template, parent), newest first."""
    where, params = ["true"], []
    for column, value in (("status", status), ("round_added", round), ("source", source)):
        if value is not None:
            where.append(f"e.{column} = ?")
            params.append(value)
    return store.frame(f"""
        SELECT e.id, e.status, e.round_added AS round, e.cluster_id, e.template, e.parent_id, e.kind, e.input,
               e.output FROM examples e WHERE {' AND '.join(where)}
        ORDER BY e.round_added DESC NULLS LAST, e.cluster_id, e.template, e.id""", params)


def no_examples_note(store: Store, *, pending: bool = False, round: int | None = None) -> str:
    """What to tell a person whom `list_examples` showed nothing: run a round, or why the rounds added nothing."""
    if pending:
        return "No examples pending review."
    rounds = store.frame("SELECT number FROM rounds WHERE kind = 'round' AND status = 'done' ORDER BY number")
    if round is not None:
        rounds = rounds.filter(pl.col("number") == round)
    if rounds.height == 0:
        if round is not None:
            return f"No examples generated in round {round}: it is not a finished round."
        return "No examples generated yet. Run `refinery iterate` to generate some."
    last = rounds["number"][-1]
    note = store.scalar("SELECT json_extract_string(detail, '$.note') FROM round_stages "
                        "WHERE round = ? AND stage = 'generate'", [last]) or ""
    if ": " in note:
        why = note.split(": ", 1)[1]
    else:
        outcomes = store.frame("SELECT outcome, count(*) AS n FROM generations WHERE round = ? GROUP BY ALL "
                               "ORDER BY ALL", [last])
        counts = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in outcomes.iter_rows())
        why = f"none of its {outcomes['n'].sum()} candidates was kept ({counts or 'none rendered'})"
    which = f"round {last}" if round is not None or rounds.height == 1 else f"{rounds.height} rounds (last: {last})"
    return f"No examples generated in {which}: {why}."


def decide_examples(store: Store, ids: list[str], decision: str, *, every_pending: bool = False) -> dict[str, Any]:
    """Accept pending counterexamples into the training data, or reject them. `every_pending` takes all of them."""
    if decision not in ("accept", "reject"):
        raise RefineryError(f"decision '{decision}': expected accept or reject.")
    if every_pending:
        ids = store.frame("SELECT id FROM examples WHERE status = 'pending' ORDER BY id")["id"].to_list()
    elif not ids:
        raise RefineryError(f"name the examples to {decision} (ids from `refinery examples --pending`), or pass "
                            f"--all-pending.")
    found = dict(store.frame("SELECT id, status FROM examples WHERE id IN (SELECT unnest(?))", [ids]).iter_rows())
    missing = [i for i in ids if i not in found]
    if missing:
        raise RefineryError(f"no example {', '.join(repr(i) for i in missing)}. `refinery examples --pending` "
                            f"lists the ones waiting for review.")
    not_pending = [f"{i} ({found[i]})" for i in ids if found[i] != "pending"]
    if not_pending:
        raise RefineryError(f"only pending examples can be decided here; these are not: {', '.join(not_pending)}.")
    status = "active" if decision == "accept" else "rejected"
    with store.transaction() as con:
        con.execute("UPDATE examples SET status = ? WHERE id IN (SELECT unnest(?))", [status, ids])
    return {"decision": decision, "status": status, "examples": len(ids),
            "pending_left": store.scalar("SELECT count(*) FROM examples WHERE status = 'pending'")}


def merge_patterns(store: Store, into: str, other: str) -> Pattern:
    """Fold `other` into `into` (same round): its members join, it is kept as status 'merged'."""
    target, source = _cluster(store, into), _cluster(store, other)
    if into == other:
        raise RefineryError("merge needs two different patterns.")
    _check_mergeable(store, target, source)
    if target["round"] != source["round"]:
        raise RefineryError(f"{into} is from round {target['round']} and {other} from round {source['round']}: "
                            f"only patterns of the same round can be merged.")
    checks = json.loads(target["checks"] or "{}")
    for name, n in json.loads(source["checks"] or "{}").items():
        checks[name] = checks.get(name, 0) + n
    with store.transaction() as con:
        con.execute("INSERT OR IGNORE INTO cluster_members (cluster_id, example_id, variant, distance, representative) "
                    "SELECT ?, example_id, variant, distance + 1e6, false FROM cluster_members WHERE cluster_id = ?",
                    [into, other])
        size = con.execute("SELECT count(*) FROM cluster_members WHERE cluster_id = ?", [into]).fetchall()[0][0]
        con.execute("UPDATE clusters SET size = ?, score = score + ?, checks = ? WHERE id = ?",
                    [size, source["score"], json.dumps(dict(sorted(checks.items(), key=lambda kv: -kv[1]))), into])
        con.execute("UPDATE clusters SET status = 'merged', merged_into = ? WHERE id = ?", [into, other])
        con.execute("UPDATE examples SET cluster_id = ? WHERE cluster_id = ?", [into, other])
    return show_pattern(store, into, members=3)


def rename_pattern(store: Store, cluster_id: str, label: str) -> Pattern:
    row = _cluster(store, cluster_id)
    if row["status"] == "merged":
        root = _merge_path(store, row)[-1]
        raise RefineryError(f"pattern {cluster_id} was merged into {root}: rename {root} instead.")
    if not label.strip():
        raise RefineryError("the new label is empty.")
    with store.transaction() as con:
        con.execute("UPDATE clusters SET label = ? WHERE id = ?", [label.strip(), cluster_id])
    return show_pattern(store, cluster_id, members=3)


def relabel(store: Store, example_id: str, output: str, *, think: Any = None) -> dict[str, Any]:
    """Correct an expected output: a new example (source 'relabel', parent the old one); the old one is kept,
    status 'rejected'. A production input that `refinery drift --add` left waiting for an expected output (an id
    from drift_inputs) becomes an analysis example with it; `think` (the project's think pattern) gives its kind."""
    old = store.one("SELECT id, input, output, fields, kind, split, status FROM examples WHERE id = ?", [example_id])
    if not output.strip():
        raise RefineryError("the new output is empty.")
    if old is None and think is not None and store.one(
            "SELECT id FROM drift_inputs WHERE id = ? AND example_id IS NULL", [example_id]):
        return _expect_drift_input(store, example_id, output, think)
    if old is None:
        raise RefineryError(f"no example '{example_id}'. `refinery clusters show ID` lists example ids, and "
                            f"`refinery drift --waiting` the production inputs that wait for an expected output.")
    if old[6] != "active":
        raise RefineryError(f"example {example_id} is already rejected (relabelled or withdrawn).")
    digest = content_hash(old[1], output)
    if store.scalar("SELECT count(*) FROM examples WHERE content_hash = ?", [digest]):
        raise RefineryError(f"an example with this input and output already exists ({digest[:16]}).")
    number = store.scalar("SELECT max(number) FROM rounds")
    with store.transaction() as con:
        con.execute("UPDATE examples SET status = 'rejected' WHERE id = ?", [example_id])
        con.execute("INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source, parent_id, "
                    "round_added) VALUES (?, ?, ?, ?, ?, ?, ?, 'relabel', ?, ?)",
                    [digest[:16], digest, old[1], output, old[3], old[4], old[5], example_id, number])
    return {"old": example_id, "new": digest[:16], "split": old[5], "output": output}


def _expect_drift_input(store: Store, input_id: str, output: str, think: Any) -> dict[str, Any]:
    """A waiting production input with its expected output: an analysis example (source import, origin 'drift N:
    FILE:LINE'), the drift input marked with it."""
    from refinery.store import detect_kind

    run, text, origin = store.one("SELECT run, input, origin FROM drift_inputs WHERE id = ?", [input_id])
    digest = content_hash(text, output)
    if store.scalar("SELECT count(*) FROM examples WHERE content_hash = ?", [digest]):
        raise RefineryError(f"an example with this input and output already exists ({digest[:16]}).")
    with store.transaction() as con:
        con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source, origin) VALUES "
                    "(?, ?, ?, ?, ?, 'analysis', 'import', ?)",
                    [digest[:16], digest, text, output, detect_kind(output, think), f"drift {run}: {origin}"])
        con.execute("UPDATE drift_inputs SET example_id = ? WHERE id = ?", [digest[:16], input_id])
    return {"old": input_id, "new": digest[:16], "split": "analysis", "output": output}


def check_output(rules, *, input: str, output: str, fields: dict[str, Any] | None = None) -> list[str]:
    """'check: why' for each applicable check of `rules` that `output`, taken as the expected output of `input`,
    fails: the test a generated example must pass (strict, as when vetting), for a relabel to run first."""
    from refinery.rules import CompiledCheck

    failing = []
    for check in rules.checks:
        run = CompiledCheck(check)
        if run.applies(input):
            passed, why = run.verdict(output, output, fields or {}, input=input, strict=True)
            if passed is False:
                failing.append(f"{check.name}: {why}")
    return failing


def pattern_history(store: Store, *, cues: list[tuple[str, re.Pattern]] | None = None) -> pl.DataFrame:
    """For each pattern targeted in round N: counterexamples added; in round N+1, how many of its members still
    fail its main check (fixed, shrunk, unchanged, grown) and how many analysis inputs with its hypothesis feature
    fail that check, before and after; and which checks got worse on the analysis split.

    `cues` are the rules' `when` patterns, needed to recognise cue features (`refinery clusters` passes them)."""
    targeted = store.frame("""
        SELECT c.id, c.round, c.rank, c.label, c.checks, c.status, c.hypothesis,
               count(g.id) FILTER (WHERE g.outcome = 'stored') AS added
        FROM clusters c JOIN generations g ON g.cluster_id = c.id
        GROUP BY ALL ORDER BY c.round, c.rank""")
    rows = []
    for t in targeted.iter_rows(named=True):
        check = next(iter(json.loads(t["checks"])), None)
        nxt = store.scalar("SELECT min(number) FROM rounds WHERE status = 'done' AND number > ?", [t["round"]])
        before = store.scalar("SELECT count(*) FROM cluster_members m JOIN rule_results r ON r.example_id = "
                              "m.example_id AND r.round = ? AND r.check_name = ? AND r.passed = false "
                              "WHERE m.cluster_id = ?", [t["round"], check, t["id"]])
        after = None if nxt is None else store.scalar(
            "SELECT count(*) FROM cluster_members m JOIN rule_results r ON r.example_id = m.example_id AND "
            "r.round = ? AND r.check_name = ? AND r.passed = false WHERE m.cluster_id = ?", [nxt, check, t["id"]])
        hypothesis = json.loads(t["hypothesis"]) if t["hypothesis"] else None
        feature = hypothesis["feature"] if hypothesis else None
        on_feature = _feature_failures(store, check, feature, t["round"], nxt, cues or []) if feature else (None, None)
        rows.append({"round": t["round"], "pattern": t["id"], "label": t["label"], "check": check,
                     "status": t["status"], "added": t["added"], "failing_before": before, "next_round": nxt,
                     "failing_after": after, "change": _change(before, after), "feature": feature,
                     "feature_failing_before": on_feature[0], "feature_failing_after": on_feature[1],
                     "regressions": ", ".join(_regressions(store, t["round"], nxt)) if nxt else ""})
    schema = {"round": pl.Int64, "pattern": pl.String, "label": pl.String, "check": pl.String, "status": pl.String,
              "added": pl.Int64, "failing_before": pl.Int64, "next_round": pl.Int64, "failing_after": pl.Int64,
              "change": pl.String, "feature": pl.String, "feature_failing_before": pl.Int64,
              "feature_failing_after": pl.Int64, "regressions": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _feature_failures(store: Store, check: str, feature: str, before: int, after: int | None,
                      cues: list[tuple[str, re.Pattern]]) -> tuple[int, int | None]:
    """Analysis examples with `feature` failing `check`: in round `before`, and in round `after`."""
    rows = store.frame("""
        SELECT r.round, e.id, e.input, e.fields, r.passed FROM rule_results r JOIN examples e ON e.id = r.example_id
        WHERE r.round IN (?, ?) AND r.check_name = ? AND r.applies AND r.variant = '' AND e.split = 'analysis'""",
                       [before, after if after is not None else -1, check])
    known = None
    if feature.startswith(UNSEEN):  # unseen in round `before`'s training set, so that both rounds count the same inputs
        known = collect_words(store.frame("SELECT e.input FROM round_examples r JOIN examples e ON e.id = "
                                          "r.example_id WHERE r.round = ?", [before])["input"])
    distinct = rows.unique("id")
    found = read_features(distinct["input"].to_list(), [json.loads(f) if f else {} for f in distinct["fields"]],
                          cues=cues, known_words=known)
    has = {i: feature in features for i, features in zip(distinct["id"], found, strict=True)}
    failing = rows.filter(pl.col("passed") == False)  # noqa: E712
    counts = {n: sum(has[i] for i in failing.filter(pl.col("round") == n)["id"]) for n in (before, after)
              if n is not None}
    return counts[before], counts.get(after)


def _change(before: int, after: int | None) -> str:
    if after is None:
        return "not yet measured"
    if after == 0:
        return "fixed"
    return "shrunk" if after < before else "grown" if after > before else "unchanged"


def _regressions(store: Store, before: int, after: int) -> list[str]:
    """Checks whose pass rate on the analysis split fell from round `before` to round `after`."""
    rates = store.frame("""
        SELECT r.round, r.check_name, avg(r.passed::INT) AS rate FROM rule_results r
        JOIN examples e ON e.id = r.example_id
        WHERE r.round IN (?, ?) AND e.split = 'analysis' AND r.applies AND r.variant = ''
        GROUP BY ALL""", [before, after])
    old = {r["check_name"]: r["rate"] for r in rates.filter(pl.col("round") == before).iter_rows(named=True)}
    new = {r["check_name"]: r["rate"] for r in rates.filter(pl.col("round") == after).iter_rows(named=True)}
    return [f"{c} {old[c]:.0%}->{new[c]:.0%}" for c in sorted(old) if c in new and new[c] < old[c] - 1e-9]


def _cluster(store: Store, cluster_id: str) -> dict[str, Any]:
    rows = store.frame("SELECT * FROM clusters WHERE id = ?", [cluster_id])
    if rows.height == 0:
        known = store.frame("SELECT id FROM clusters ORDER BY round DESC, rank LIMIT 8")["id"].to_list()
        hint = f" Recent patterns: {', '.join(known)}." if known else " No patterns yet: run `refinery iterate`."
        raise RefineryError(f"no pattern '{cluster_id}'.{hint}")
    return rows.row(0, named=True)


def _check_mergeable(store: Store, target: dict[str, Any], source: dict[str, Any]) -> None:
    """Merges form a tree: only patterns not merged themselves take part, so no pattern is merged twice and no two
    end up merged into each other (both gone from their round, neither one decidable)."""
    into, other = target["id"], source["id"]
    if target["status"] == "merged":
        path = _merge_path(store, target)
        if other in path:
            via = path[:path.index(other)]
            chain = f" (through {', '.join(via)})" if via else ""
            raise RefineryError(f"merging {other} into {into} would make a cycle: {into} is already merged into "
                                f"{other}{chain}. Nothing to do.")
        raise RefineryError(f"pattern {into} was merged into {path[-1]}: merge {other} into {path[-1]} instead.")
    if source["status"] == "merged":
        root = _merge_path(store, source)[-1]
        if root == into:
            raise RefineryError(f"pattern {other} is already merged into {into}. Nothing to do.")
        raise RefineryError(f"pattern {other} was already merged into {root}, and a pattern is merged only once: "
                            f"merge {root} into {into} to join the two.")


def _merge_path(store: Store, row: dict[str, Any]) -> list[str]:
    """The patterns a merged one was folded into, in turn, up to the one still standing (a store written before
    merges refused merged patterns may hold a cycle: the path stops where it comes back)."""
    path, seen = [], {row["id"]}
    while row["status"] == "merged" and row["merged_into"] and row["merged_into"] not in seen:
        path.append(row["merged_into"])
        seen.add(row["merged_into"])
        found = store.frame("SELECT * FROM clusters WHERE id = ?", [row["merged_into"]])
        if found.height == 0:
            break
        row = found.row(0, named=True)
    return path or [row["id"]]


def _rounds(store: Store) -> str:
    numbers = store.frame("SELECT number FROM rounds ORDER BY number")["number"].to_list()
    return ", ".join(map(str, numbers)) or "none"
