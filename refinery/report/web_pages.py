"""The review pages and their actions: what each page reads from the store and which template shows it, and what
each form does, through the same functions as the review commands. `web` serves them behind its token and CSRF
guard; every handler here gets the project, an open store and the request."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from markupsafe import Markup, escape
from starlette.requests import Request

from refinery.config import UserPattern
from refinery.errors import RefineryError
from refinery.report import review
from refinery.report.status import round_state
from refinery.store import Store

SPLITS = ("train", "analysis", "test", "corner")
SOURCES = ("seed", "import", "generated", "relabel")
STATUSES = ("active", "pending", "rejected")
KINDS = {"cause": "cause", "all": "fails on all", "cluster": "embedding cluster"}


class BadRequest(RefineryError):
    """A request's parameter is not a value the page can take."""


SHOWN_BLANK = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}  # letters and symbols that draw as nothing


def show_text(value: Any) -> Markup:
    """User text for a page: escaped, isolated in <bdi> (its right-to-left runs cannot reorder the page around it),
    every invisible character (zero-width, bidi controls, other format and control characters) shown as a marker
    such as ⟨U+200B⟩."""
    if value is None or value == "":
        return Markup("")
    shown = re.sub(r"[^\x20-\x7e\n\t]", _mark_invisible, str(escape(str(value))))
    return Markup(f"<bdi>{shown}</bdi>")


def show_plain(value: Any) -> str:
    """User text where no markup can go (a title attribute, an option): invisible characters as ⟨U+200B⟩ text;
    the template escapes the rest."""
    if value is None:
        return ""
    return re.sub(r"[^\x20-\x7e\n\t]", lambda m: f"⟨U+{ord(m.group()):04X}⟩" if _invisible(m.group())
                  else m.group(), str(value))


def _mark_invisible(match: re.Match) -> str:
    char = match.group()
    if not _invisible(char):
        return char
    name = unicodedata.name(char, "control character")
    return f'<span class="invisible" title="{name}">⟨U+{ord(char):04X}⟩</span>'


def _invisible(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co") or char in SHOWN_BLANK


# --- pages -----------------------------------------------------------------------------------------------------------

def _hits(pattern: UserPattern, text: str) -> list:
    try:
        return pattern.finditer(text)
    except RefineryError:  # too slow on this text: the page shows it unmarked rather than not at all
        return []


def rounds_page(project, store: Store, request: Request) -> tuple[str, dict[str, Any]]:
    rows = store.frame("""
        SELECT r.number, r.kind, r.status, r.pid, r.metrics, r.stop_reason, r.error, r.finished_at,
               (SELECT count(*) FROM clusters c WHERE c.round = r.number AND c.status <> 'merged') AS patterns,
               (SELECT count(*) FROM examples e WHERE e.round_added = r.number AND e.source = 'generated') AS added
        FROM rounds r ORDER BY r.number""").to_dicts()
    for r in rows:
        r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else {}
        r["status"] = round_state(r["status"], r.pop("pid"))
    last = next((r for r in reversed(rows) if r["status"] == "done" and r["metrics"]), None)
    stops = [r for r in rows if r["stop_reason"]]
    names = sorted({c for m in (last or {}).get("metrics", {}).values() if isinstance(m, dict)
                    for c in m.get("checks", {})})
    return "rounds.html", {"rounds": rows, "last": last, "stop": stops[-1] if stops else None, "check_names": names,
                           "pending": store.scalar("SELECT count(*) FROM examples WHERE status = 'pending'")}


def patterns_page(project, store: Store, request: Request) -> tuple[str, dict[str, Any]]:
    number = request.path_params["number"]
    patterns = review.list_patterns(store, round=number, members=0)
    history = {h["pattern"]: h for h in review.pattern_history(store, cues=_cues(project)).to_dicts()}
    rounds = store.frame("SELECT number FROM rounds WHERE status = 'done' ORDER BY number")["number"].to_list()
    return "patterns.html", {"number": number, "patterns": patterns, "history": history, "rounds": rounds,
                             "kinds": KINDS}


def pattern_page(project, store: Store, request: Request) -> tuple[str, dict[str, Any]]:
    pattern = review.show_pattern(store, request.path_params["id"])
    failing = store.frame("""
        SELECT r.example_id, r.check_name, r.detail FROM rule_results r JOIN cluster_members m
        ON m.example_id = r.example_id AND m.variant = r.variant
        WHERE m.cluster_id = ? AND r.round = ? AND r.passed = false ORDER BY r.check_name""",
                          [pattern.id, pattern.round])
    by_member: dict[str, list[dict[str, Any]]] = {}
    for f in failing.iter_rows(named=True):
        by_member.setdefault(f["example_id"], []).append(f)
    marks = _marks(project)
    members = []
    for m in pattern.members:
        checks = by_member.get(m["example_id"], [])
        names = [c["check_name"] for c in checks]
        members.append({**m, "failing": checks,
                        "output_parts": _highlight(m["output"] or "", names, marks),
                        "expected_parts": _highlight(m["expected"] or "", names, marks),
                        "relabelled": store.scalar("SELECT status FROM examples WHERE id = ?",
                                                   [m["example_id"]]) != "active"})
    others = store.frame("SELECT id, label FROM clusters WHERE round = ? AND id <> ? AND status <> 'merged' "
                         "ORDER BY rank", [pattern.round, pattern.id]).to_dicts()
    return "pattern.html", {"p": pattern, "members": members, "others": others, "kinds": KINDS}


def examples_page(project, store: Store, request: Request) -> tuple[str, dict[str, Any]]:
    """Search and filter examples; every value from the form is a bound parameter."""
    q = request.query_params
    given = {k: q.get(k, "").strip() for k in ("split", "source", "status", "check", "pattern", "text", "id", "round")}
    where, params = ["true"], []
    for column in ("split", "source", "status"):
        if given[column]:
            where.append(f"e.{column} = ?")
            params.append(given[column])
    if given["id"]:
        where.append("(e.id = ? OR e.parent_id = ?)")
        params += [given["id"], given["id"]]
    if given["text"]:
        where.append("(e.input ILIKE ? OR e.output ILIKE ?)")
        params += [f"%{given['text']}%"] * 2
    if given["pattern"]:
        where.append("(e.cluster_id = ? OR e.id IN (SELECT example_id FROM cluster_members WHERE cluster_id = ?))")
        params += [given["pattern"]] * 2
    number = _round_number(given["round"], store)
    if given["check"]:
        where.append("e.id IN (SELECT example_id FROM rule_results WHERE round = ? AND check_name = ? "
                     "AND passed = false)")
        params += [number, given["check"]]
    rows = store.frame(f"""
        SELECT e.id, e.split, e.source, e.status, e.round_added, e.cluster_id, e.template, e.feature, e.parent_id,
               e.input, e.output, p.input AS parent_input
        FROM examples e LEFT JOIN examples p ON p.id = e.parent_id
        WHERE {' AND '.join(where)}
        ORDER BY e.status = 'pending' DESC, e.round_added DESC NULLS LAST, e.cluster_id, e.id LIMIT 201""", params)
    checks = store.frame("SELECT DISTINCT check_name FROM rule_results ORDER BY 1")["check_name"].to_list()
    patterns = store.frame("SELECT id FROM clusters WHERE status <> 'merged' ORDER BY round DESC, rank")["id"]
    return "examples.html", {"rows": rows.head(200).to_dicts(), "more": rows.height > 200, "given": given,
                             "number": number, "splits": SPLITS, "sources": SOURCES, "statuses": STATUSES,
                             "checks": checks, "patterns": patterns.to_list(),
                             "pending": store.scalar("SELECT count(*) FROM examples WHERE status = 'pending'")}


def _round_number(given: str, store: Store) -> int | None:
    """The round the 'failing check' filter looks at: the one asked for, else the last finished one."""
    if not given:
        return store.scalar("SELECT max(number) FROM rounds WHERE status = 'done'")
    if not re.fullmatch(r"[0-9]{1,9}", given):  # ASCII digits only: int() refuses '²' and '--1' alike
        raise BadRequest(f"round '{given}' is not a round number: expected a whole number such as 1, or nothing "
                         f"for the last finished round.")
    return int(given)


def _cues(project) -> list | None:
    rules = _rules(project)
    return rules.cues() if rules else None


def _rules(project):
    from refinery.rules import load_rules
    try:
        return load_rules(project.rules_dir)
    except RefineryError:  # a page still shows what the store holds when the rules do not load
        return None


def _marks(project) -> dict[str, UserPattern]:
    """Per check, the regex whose hits a member's texts show highlighted: its extract, else its pattern (run with
    the time bound every user pattern has)."""
    rules = _rules(project)
    out = {}
    for check in rules.checks if rules else ():
        source = check.extract or check.pattern
        if source and check.type != "json_schema":
            out[check.name] = UserPattern(source, setting=f"{check.source}: check '{check.name}': "
                                                          f"{'extract' if check.extract else 'pattern'}")
    return out


def _highlight(text: str, checks: list[str], marks: dict[str, UserPattern]) -> list[dict[str, Any]]:
    """`text` cut into parts, the spans the failing checks' regexes hit marked with the check's name (none for a
    pattern that runs past its time bound). The template escapes every part: no HTML is built here."""
    spans = sorted((m.start(), m.end(), name) for name in checks if name in marks
                   for m in _hits(marks[name], text) if m.end() > m.start())
    parts, at = [], 0
    for start, end, name in spans:
        if start < at:  # overlaps a span already marked
            continue
        if start > at:
            parts.append({"text": text[at:start], "check": None})
        parts.append({"text": text[start:end], "check": name})
        at = end
    if at < len(text):
        parts.append({"text": text[at:], "check": None})
    return parts


# --- actions: each calls the function the CLI command calls ----------------------------------------------------------

def decide_pattern(store: Store, request: Request, form) -> str:
    result = review.decide(store, request.path_params["id"], str(form.get("decision", "")))
    moved = ", ".join(f"{v} counterexamples {k.removeprefix('examples_')}" for k, v in result.items()
                      if k.startswith("examples_"))
    return f"{result['id']} {result['status']} ({moved})."


def rename_pattern(store: Store, request: Request, form) -> str:
    pattern = review.rename_pattern(store, request.path_params["id"], str(form.get("label", "")))
    return f"{pattern.id} is now labelled: {pattern.label}"


def merge_pattern(store: Store, request: Request, form) -> str:
    other = str(form.get("other", ""))
    pattern = review.merge_patterns(store, request.path_params["id"], other)
    return f"Merged {other} into {pattern.id}: now {pattern.size} members."


def relabel_example(store: Store, request: Request, form) -> str:
    """Refuses a new output that fails an applicable check, naming the failures, unless the person ticks
    'save anyway' (the rules can be what is wrong)."""
    example_id, output = request.path_params["id"], str(form.get("output", "")).replace("\r\n", "\n")
    row = store.one("SELECT input, fields FROM examples WHERE id = ?", [example_id])
    from refinery.rules import load_rules
    rules = load_rules(_project_of(request).rules_dir)
    failing = review.check_output(rules, input=row[0], output=output,
                                  fields=json.loads(row[1]) if row and row[1] else {}) if row else []
    if failing and not form.get("anyway"):
        raise RefineryError(f"not relabelled: the new output of {example_id} fails {'; '.join(failing)}. Fix it, "
                            f"or tick 'save anyway' if the rule is what is wrong.")
    result = review.relabel(store, example_id, output)
    note = f" (saved although it fails {'; '.join(failing)})" if failing else " (passes every applicable check)"
    return f"Relabelled {result['old']} -> {result['new']} ({result['split']}){note}."


def decide_examples(store: Store, request: Request, form) -> str:
    every = form.get("all") == "1"
    result = review.decide_examples(store, [str(i) for i in form.getlist("id")], str(form.get("decision", "")),
                                    every_pending=every)
    return f"{result['examples']} examples {result['status']}; {result['pending_left']} still pending."


def _project_of(request: Request):
    return request.app.state.project


# --- the judge: its verdicts beside a person's, and how far they agree -----------------------------------------------

def judge_page(project, store: Store, request: Request) -> tuple[str, dict[str, Any]]:
    """A round's judge results with the judge's reason, a person's verdict (or buttons to give one), and each judge
    check's calibration."""
    from refinery.report.calibration import calibrate, judge_check_names, judge_results

    rules = _rules(project)
    checks = judge_check_names(rules, required=False) if rules else []
    number = _round_number(request.query_params.get("round", "").strip(), store)
    show = request.query_params.get("show", "unlabelled")
    if show not in ("unlabelled", "all"):
        raise BadRequest(f"show '{show}': expected unlabelled or all.")
    rows = judge_results(store, checks=checks, round=number, unlabelled=show == "unlabelled") if checks else None
    return "judge.html", {
        "checks": checks, "number": number, "show": show,
        "rows": rows.head(200).to_dicts() if rows is not None else [], "more": rows is not None and rows.height > 200,
        "calibration": calibrate(store, checks=checks, settings=project.config.judge, round=number)}


def label_judge(store: Store, request: Request, form) -> str:
    """A person's verdict on one judge result, as `refinery judge label --example` stores it."""
    from refinery.report.calibration import judge_check_names, save_label
    from refinery.rules import load_rules

    check, verdict = str(form.get("check", "")), str(form.get("verdict", ""))
    judge_check_names(load_rules(_project_of(request).rules_dir), check)
    given = str(form.get("round", ""))
    if not re.fullmatch(r"[0-9]{1,9}", given) or verdict not in ("pass", "fail"):
        raise BadRequest(f"round '{given}', verdict '{verdict}': expected a round number and pass or fail.")
    example = str(form.get("example", ""))
    save_label(store, round=int(given), example_id=example, check=check, passed=verdict == "pass",
               variant=str(form.get("variant", "")))
    return f"Labelled {example} {verdict} on '{check}' (round {given})."
