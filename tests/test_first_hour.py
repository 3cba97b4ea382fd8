"""A new user's first hour (issue 13): the README's "Your own project" commands, run verbatim on a small sentiment
task of their own with the files `refinery init` wrote, and what a person sees on the way: warnings for splits too
small to measure, why a round added nothing, readers that do not lock each other out, the report's first page,
the help text, and the small messages. Real parts throughout: the bundled tiny model, the offline MiniLM
embedder, DuckDB files in tmp_path, Jinja."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, StopAt, write

from refinery.cli import main
from refinery.project import load_project, set_setting
from refinery.stages.loop import run_round
from refinery.store import Store

POSITIVE = ["great", "lovely", "superb", "wonderful", "excellent", "charming", "brilliant", "delightful", "pleasant",
            "fine"]
NEGATIVE = ["awful", "dull", "terrible", "boring", "poor", "bad", "grim", "dreadful", "tedious", "weak"]
THINGS = ["film", "meal", "hotel", "book", "concert", "show"]


def reviews(count: int, *, start: int = 0) -> list[dict[str, str]]:
    """A tiny sentiment task: a one-line review in, its label out."""
    rows = []
    for i in range(start, start + count):
        words = POSITIVE if i % 2 == 0 else NEGATIVE
        rows.append({"input": f"Review: the {THINGS[i % len(THINGS)]} was {words[(i // 2) % len(words)]}.",
                     "output": "positive" if i % 2 == 0 else "negative"})
    return rows


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def readme_commands() -> list[str]:
    """The bash block of the README's "Your own project" section, one command per line, comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Your own project"):]
    block = section[section.index("```bash\n") + 8:section.index("\n```", section.index("```bash\n"))]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """Every README command run in order, as a person types them, with what each printed."""
    import os

    home = tmp_path_factory.mktemp("first-hour")
    seen: list[tuple[str, int, str, str]] = []
    old = Path.cwd()
    os.chdir(home)
    try:
        for line in readme_commands():
            for command in line.split(" && "):
                words = shlex.split(command)
                if words[0] == "cd":
                    os.chdir(words[1])
                    continue
                assert words[0] == "refinery", command
                if words[1] == "ingest" and not Path("data/seed.jsonl").exists():
                    _bring_data(Path.cwd())
                seen.append((command, *_run(words[1:])))
    finally:
        os.chdir(old)
    return home / "my-task", seen


def _bring_data(root: Path) -> None:
    """What the person puts in data/ (40 reviews), and the one speed setting a test needs: a few training steps."""
    write(root / "data" / "seed.jsonl", jsonl(reviews(20)))
    write(root / "data" / "eval.jsonl", jsonl(reviews(16, start=20)))
    write(root / "data" / "hard.jsonl", jsonl([{"input": "Review: the FILM was GREAT!!", "output": "positive"},
                                              {"input": "review: the meal was   dreadful", "output": "negative"},
                                              {"input": "Review: the show was not bad.", "output": "positive"},
                                              {"input": "Review: the book was fine, I guess.",
                                               "output": "positive"}]))
    project = set_setting(load_project(root, environ={}), "train", "steps", 4)
    set_setting(project, "infer", "max_new_tokens", 6)


def _run(args: list[str]) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):  # rich's consoles write to sys.stdout / sys.stderr as they are
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _output(seen, command: str, nth: int = 0) -> tuple[int, str, str]:
    return [s[1:] for s in seen if s[0] == command][nth]


def test_the_readme_own_project_section_runs_verbatim_and_round_2_trains_on_round_1s_data(walked) -> None:
    root, seen = walked
    for command, code, out, err in seen:
        assert code == 0, f"{command}: {err}"
    assert [s[0] for s in seen] == [c for line in readme_commands() for c in line.split(" && ") if c != "cd my-task"]
    # the scaffold: a starter family aimed at the starter checks
    assert (root / "templates" / "variants.jinja").is_file()
    # 16 held-out rows deal a test split of one or two: ingest says it is too small to measure
    code, out, err = _output(seen, "refinery ingest data/eval.jsonl --split holdout")
    with Store(root / "runs" / "refinery.duckdb", read_only=True) as store:
        splits = dict(store.con.execute("SELECT split, count(*) FROM examples WHERE source <> 'generated' "
                                        "GROUP BY ALL").fetchall())
        added = store.frame("SELECT id, template, round_added FROM examples WHERE source = 'generated'")
        round_2 = {i for (i,) in store.con.execute("SELECT example_id FROM round_examples WHERE round = 2")
                   .fetchall()}
    test = splits["test"]
    plural = "" if test == 1 else "s"
    assert f"Warning: the test split has {test} example{plural} (fewer than 20): one example moves its pass rate " \
           f"by {100 / test:.0f} points, too few for the figures of every round to mean much. Ingest more " \
           f"held-out examples: `refinery ingest FILE --split holdout`.\n" in err
    # round 1 added vetted data from the starter family, and round 2 trained on it
    code, out, err = _output(seen, "refinery iterate", 0)
    assert "Round 1: training on 20 examples" in err
    first = added.filter(added["round_added"] == 1)
    assert first.height > 0 and set(first["template"]) == {"variants.jinja"}
    assert re.search(rf"Generated {first.height} counterexamples \(not stored: \d+ duplicates, \d+ leaks, \d+ failing "
                     rf"their checks, \d+ over budget\):\n", out)
    assert "Warning: the test split has" in err  # the round summary says it too
    code, out, err = _output(seen, "refinery iterate", 1)
    assert f"Round 2: training on {20 + first.height} examples" in err
    assert set(first["id"]) <= round_2
    # the review commands show round 1's patterns and the examples it added
    code, out, err = _output(seen, "refinery clusters")
    assert re.match(r"Budget \d+: \d+ of \d+ from random analysis examples \(.*\), \d+ over \d+ patterns? by "
                    r"failing mass\.\n#1 r001-c01  \[", out)
    code, out, err = _output(seen, "refinery examples")
    assert f"{first.height} examples generated" in out
    # the report, its failure map's legend naming each cluster of a round apart, and the export
    assert (root / "runs" / "report.html").is_file()
    from refinery.report.page import build_report
    points = build_report(load_project(root, environ={})).failure_map
    for n in {p["round"] for p in points}:
        legends = {p["pattern"]: p["legend"] for p in points if p["round"] == n}
        assert len(set(legends.values())) == len(legends), legends
    exported = (root / "train.jsonl").read_text().splitlines()
    assert len(exported) == 20 + added.height


def test_a_split_too_small_to_measure_is_warned_of_at_ingest(project_dir: Path, cli) -> None:
    write(project_dir / "data" / "reviews.jsonl", jsonl(reviews(30)))
    result = cli("ingest", "data/reviews.jsonl")
    assert result.code == 0
    with Store(project_dir / "runs" / "refinery.duckdb", read_only=True) as store:
        counts = dict(store.con.execute("SELECT split, count(*) FROM examples GROUP BY ALL").fetchall())
    assert sum(counts.values()) == 30 and counts["test"] < 20 and counts["analysis"] < 20
    expected = ""
    for split, what in (("test", "the figures of every round"), ("analysis", "the failure patterns")):
        n = counts[split]
        expected += (f"Warning: the {split} split has {n} example{'' if n == 1 else 's'} (fewer than 20): one "
                     f"example moves its pass rate by {100 / n:.0f} points, too few for {what} to mean much. Ingest "
                     f"more held-out examples: `refinery ingest FILE --split holdout`.\n")
    assert result.err == expected
    # enough held-out data (8 % of 320 rows is about 25 test examples): no warning
    write(project_dir / "data" / "more.jsonl", jsonl([{"input": f"Review #{i}: {r['input']}", "output": r["output"]}
                                                      for i, r in enumerate(reviews(320))]))
    result = cli("ingest", "data/more.jsonl", "--split", "holdout")
    assert result.code == 0 and result.err == ""


@pytest.mark.slow  # `make test-slow` (in .ci/run): keeps the default run under 10 minutes
def test_readers_do_not_lock_each_other_out_and_a_writer_is_named(project_dir: Path, cli) -> None:
    write(project_dir / "data" / "reviews.jsonl", jsonl(reviews(10)))
    assert cli("ingest", "data/reviews.jsonl", "--split", "train").code == 0
    store = project_dir / "runs" / "refinery.duckdb"
    hold = ("import sys, time; from refinery.store import Store; s = Store(sys.argv[1], read_only=sys.argv[2] == "
            "'r'); print('open', flush=True); time.sleep(30)")
    reader = subprocess.Popen([sys.executable, "-c", hold, str(store), "r"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "open\n"  # `refinery report` reading, say
        for command in (["status"], ["clusters", "--history"], ["examples"], ["export", "-o", "train.jsonl"]):
            result = cli(*command)
            assert result.code == 0, (command, result.err)
        assert cli("examples").out == "No examples generated yet. Run `refinery iterate` to generate some.\n"
    finally:
        reader.kill()
        reader.wait()
    writer = subprocess.Popen([sys.executable, "-c", hold, str(store), "w"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "open\n"
        result = cli("status")
    finally:
        writer.kill()
        writer.wait()
    assert result.code == 1
    assert result.err == (f"Error: {store}: another process (PID {writer.pid}) is writing to the store, and DuckDB "
                          f"lets no process read a file while one writes to it. Wait for it to finish, then run the "
                          f"command again.\n")


def test_help_shows_argument_names_not_python_types(cli) -> None:
    ingest = cli("ingest", "--help").out
    assert ingest.startswith("Usage: refinery ingest [OPTIONS] FILE...\n")
    assert "  FILE...  JSONL, CSV or Parquet files" in ingest
    show = cli("clusters", "show", "--help").out
    assert show.startswith("Usage: refinery clusters show [OPTIONS] ID\n") and "  ID  A pattern id" in show
    accept = cli("examples", "accept", "--help").out
    assert accept.startswith("Usage: refinery examples accept [OPTIONS] [ID...]\n")
    for text in (ingest, show, accept, cli("rerun", "--help").out, cli("init", "--help").out):
        assert not re.search(r"<(list\[|str>|int>|path>|Path>)", text), text


@pytest.mark.parametrize(("name", "text", "line"), [
    ("pyproject.toml", '[project]\nname = "x"\n\n[tool.refinery]\nseed = 1\n\n[tool.refinery.trian]\nsteps = 4\n',
     "pyproject.toml:7: [tool.refinery]"),
    ("refinery.toml", "seed = 1\n\n[trian]\nsteps = 4\n", "refinery.toml:3: (top level)")])
def test_a_misspelt_section_is_reported_at_its_own_line(tmp_path: Path, monkeypatch, cli, name: str, text: str,
                                                        line: str) -> None:
    write(tmp_path / name, text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFINERY_PROJECT", raising=False)
    result = cli("status")
    assert result.code == 1
    assert result.err == (f"Error: {line} unknown key 'trian' (expected one of: base_model, rules_dir, runs_dir, "
                          f"seed, store, templates_dir, [data], [train], [infer], [analyze], [generate], [mix], "
                          f"[plateau], [baseline], [judge]). Did you mean 'train'?\n")


def test_status_gives_the_baseline_its_time_and_says_how_the_last_iterate_ended(project, cli) -> None:
    """Rounds recorded by hand: a baseline that measured for 363 s, round 1 stopped as asked, round 2 interrupted."""
    with Store(project.store_path) as store, store.transaction() as con:
        con.execute("INSERT INTO rounds (number, kind, status, config, metrics, started_at, finished_at) VALUES "
                    "(0, 'baseline', 'done', '{}', '{}', current_timestamp, current_timestamp)")
        con.execute("INSERT INTO round_stages (round, stage, status, seconds) VALUES (0, 'measure', 'done', 363.2)")
        con.execute("INSERT INTO rounds (number, kind, status, config, metrics, stop_reason, finished_at) VALUES "
                    "(1, 'round', 'done', '{}', '{}', 'ran the 1 round asked for', current_timestamp)")
    result = cli("status")
    assert result.out.splitlines()[-1] == "Last iterate: stopped: ran the 1 round asked for"
    assert re.search(r"│ 0 \(baseline\) │ done\s+│ [-\d: ]+│ 363\s+│", result.out), result.out
    with Store(project.store_path) as store, store.transaction() as con:
        con.execute("INSERT INTO rounds (number, kind, status, config, error, finished_at) VALUES "
                    "(2, 'round', 'failed', '{}', 'interrupted', current_timestamp)")
    result = cli("status")
    assert result.out.splitlines()[-1] == ("Last iterate: round 2 did not finish (interrupted); the next `refinery "
                                           "iterate` restarts it")
    assert "ran the 1 round asked for" not in result.out


CHECKS_ONLY = """\
[[check]]
name = "matches_expected"
type = "equals"
extract = '(?s)^(.*)$'
"""


def test_a_round_that_adds_nothing_says_why_and_a_restarted_round_says_so(project_dir: Path, cli) -> None:
    """Rules with a check but no [[target]]: the round says why it generated nothing, and so does `examples`.
    The round is first interrupted after training: the next `iterate` says it restarts it."""
    write(project_dir / "rules" / "checks.toml", CHECKS_ONLY)
    write(project_dir / "data" / "seed.jsonl", jsonl(reviews(12)))
    write(project_dir / "data" / "eval.jsonl", jsonl(reviews(24, start=12)))
    assert cli("ingest", "data/seed.jsonl", "--split", "train").code == 0
    assert cli("ingest", "data/eval.jsonl", "--split", "holdout").code == 0
    project = set_setting(set_setting(load_project(project_dir, environ={}), "train", "steps", 2),
                          "infer", "max_new_tokens", 4)
    with pytest.raises(KeyboardInterrupt):
        run_round(project, reporter=StopAt("infer"))
    status = cli("status").out.splitlines()[-1]
    assert status == "Last iterate: round 1 did not finish (interrupted); the next `refinery iterate` restarts it"

    result = cli("iterate")
    assert result.code == 0, result.err
    assert result.err.startswith("Restarting interrupted round 1 (attempt 2; the last attempt: interrupted); "
                                 "reusing its trained adapter.\nRound 1: training on 12 examples\n")
    why = ("no [[target]] in rules/ names the failing checks (matches_expected): add one with the templates that "
           "answer them (see rules/checks.toml)")
    assert f"Generated no counterexamples: {why}.\n" in result.out
    assert f"0 of 0 candidates kept: {why}" in result.err  # the generate stage's line
    assert cli("examples").out == f"No examples generated in round 1: {why}.\n"
    assert cli("status").out.splitlines()[-1] == "Last iterate: stopped: ran the 1 round asked for"


def test_a_report_with_only_a_baseline(project_dir: Path, cli) -> None:
    """After `refinery baseline` alone: the main plot shows the baseline at round 0 with whole-round ticks, the
    training-set tile counts the train split, and notes wrap inside their card. Run as a separate process, the
    baseline shows no transformers warning about the model's maximum length, though one held-out input is long in
    tokens but short in characters."""
    write(project_dir / "data" / "seed.jsonl", jsonl(reviews(20)))
    dense = "Review: " + " ".join(f"{n}{chr(97 + n % 26)}" for n in range(40))  # many tokens, few characters
    write(project_dir / "data" / "eval.jsonl", jsonl(reviews(24, start=20) + [{"input": dense,
                                                                               "output": "negative"}]))
    assert cli("ingest", "data/seed.jsonl", "--split", "train", "--source", "seed").code == 0
    assert cli("ingest", "data/eval.jsonl", "--split", "holdout").code == 0
    set_setting(load_project(project_dir, environ={}), "infer", "max_new_tokens", 64)
    refinery = Path(sys.executable).parent / "refinery"
    done = subprocess.run([str(refinery), "baseline"], cwd=project_dir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "maximum length" not in done.stderr and "Token indices" not in done.stderr, done.stderr

    assert cli("report").code == 0
    html = (project_dir / "runs" / "report.html").read_text(encoding="utf-8")
    start = html.index('data-plot="metric"')
    metric = html[start:html.index("</svg>", start)]
    ticks = re.findall(r"<!-- (\S+) -->", metric)  # matplotlib comments each tick label's text
    labels = [t for t in re.findall(r">([^<>]+)</text>", metric)] + ticks
    assert "base" in labels, labels
    assert not any(re.fullmatch(r"\d+\.\d+", label) for label in labels), labels
    assert '<div class="value">20</div>\n        <div class="sub">examples in the train split; no round trained ' \
           'yet</div>' in html
    assert "#rounds-table td.stmt { min-width: 150px; max-width: 360px; overflow-wrap: anywhere; }" in html
