"""The report after two real rounds and a real mix sweep: the page opened in headless Chromium (its plots and tables
rendered, seen in a screenshot), and the terminal summary and JSON holding the store's own figures."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import CONFIG, make_demo, write
from PIL import Image

from refinery.cli import main
from refinery.project import load_project
from refinery.report.page import build_report, report_text, write_report
from refinery.report.plots import PALETTE, PASS, REFERENCE, SCORE
from refinery.store import Store

WIDTH = 1280
ROUNDS = (-1, 0, 1, 2)
NAMES = {-1: "production", 0: "baseline", 1: "round 1", 2: "round 2"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The small demo after two rounds (`refinery iterate --rounds 2`), a one-share mix sweep, a two-arm recipe
    sweep on round 1's set, and `refinery baseline` with round 1's adapter as the production model; and a copy taken
    before the baseline. All real."""
    project = make_demo(tmp_path_factory.mktemp("report") / "demo")
    root = str(project.root)
    assert main(["--project", root, "iterate", "--rounds", "2", "--steps", "8", "--json"]) == 0
    assert main(["--project", root, "mix", "--sweep", "0.5", "--steps", "2", "--json"]) == 0
    assert main(["--project", root, "sweep", "rank=4", "--round", "1", "--steps", "2", "--json"]) == 0
    plain = load_project(shutil.copytree(project.root, project.root.parent / "no-baseline"), environ={})
    write(project.root / "refinery.toml", CONFIG + '\n[baseline]\nproduction = "runs/round-001/adapter"\n')
    assert main(["--project", root, "baseline", "--shots", "1", "--json"]) == 0
    return load_project(project.root, environ={}), plain


@pytest.fixture
def reported(measured):
    return measured[0]


def test_the_page_renders_its_plots_and_tables_in_chromium(reported, cli, tmp_path) -> None:
    browser = _chromium()
    result = cli("--project", str(reported.root), "report")
    page = reported.runs_dir / "report.html"
    assert result.code == 0 and result.out == f"Wrote {page}\n"
    html = page.read_text(encoding="utf-8")
    # self-contained: nothing to fetch (the SVG namespaces are names, not requests)
    assert not re.search(r"<script|<link|<img|@import|(src|href)=\"(https?:)?//|url\((https?:)?//", html)

    boxes = _layout(browser, page, tmp_path)  # where each plot and table landed, measured in the same browser
    window, profile = f"--window-size={WIDTH},{boxes['page']['h']}", tmp_path / "profile"
    dom = _Dom()
    dom.feed(_run(browser, profile, "--dump-dom", window, page.as_uri()))
    assert set(dom.plots) == {"metric", "checks", "added", "mix", "sweep", "map"}
    assert PASS in dom.plots["metric"]["strokes"] and SCORE in dom.plots["metric"]["strokes"]
    with Store(reported.store_path) as store:
        members = store.scalar("""SELECT count(*) FROM cluster_members m JOIN clusters c ON c.id = m.cluster_id
                                  JOIN embeddings e ON e.example_id = m.example_id AND e.text_kind = 'input'""")
        second = store.scalar("SELECT count(*) FROM clusters WHERE rank = 2")
        passing = _test_pass_rates(store)
        checks = _check_counts(store)
    assert dom.plots["map"]["points"] == members > 0  # one dot per failing case in the map
    assert {REFERENCE[kind][0] for kind in ("baseline", "production")} <= dom.plots["metric"]["strokes"]
    recipe = [row[:3] for row in dom.tables["recipe-table"]]
    assert [cells[1] for cells in recipe] == ["rank=16 (current)", "rank=4"] and all("%" in c[2] for c in recipe)
    rounds = {row[0]: row for row in dom.tables["rounds-table"]}
    assert list(rounds) == [NAMES[n] for n in ROUNDS]
    assert {n: rounds[NAMES[n]][4] for n in ROUNDS} == {n: f"{rate:.1%}" for n, rate in passing.items()}
    for row in dom.tables["checks-table"]:
        assert row[1:] == [f"{checks[(n, row[0])][2]:.1%} {checks[(n, row[0])][1]}/{checks[(n, row[0])][0]}"
                           for n in ROUNDS]

    shot = tmp_path / "report.png"
    _run(browser, profile, f"--screenshot={shot}", window, page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, boxes["page"]["h"])
    assert len(image.getcolors(maxcolors=1 << 20)) > 500  # not blank: text, plots, shading
    # the rounds' lines span two thirds of the plot since the baseline has its own place on the x axis ("base")
    assert _share(image, boxes["metric"], PASS) > 0.001 and _share(image, boxes["metric"], SCORE) > 0.001
    assert _share(image, boxes["metric"], REFERENCE["production"][0]) > 0.0003
    assert _share(image, boxes["map"], PALETTE[0]) > 0.001  # cluster 1's colour, and cluster 2's where there is one
    # cluster 2's dots where there is one; some sit under cluster 1's (a case failing two checks is in a pattern of
    # each, and the worst pattern's dot is drawn on top)
    assert (_share(image, boxes["map"], PALETTE[1]) > 0.0001) == (second > 0)
    assert _share(image, boxes["added"], PALETTE[0]) > 0.01
    assert _share(image, boxes["metric"], PALETTE[1]) == 0  # the colours are where their plots are
    assert _share(image, boxes["rounds-table"], "#1f2933") > 0.001  # table text drawn
    sections = ("metric", "rounds-table", "checks", "checks-table", "added", "mix", "sweep", "map")
    order = [boxes[k]["y"] for k in sections]
    assert order == sorted(order) and all(boxes[k]["h"] > 100 for k in ("metric", "checks", "map"))


def test_the_terminal_summary_gives_the_stores_figures(reported, cli) -> None:
    result = cli("--project", str(reported.root), "report", "--text")
    assert result.code == 0, result.err
    text = result.out
    with Store(reported.store_path) as store:
        passing = _test_pass_rates(store)
        checks = _check_counts(store)
        trained = dict(store.con.execute("SELECT round, count(*) FROM round_examples GROUP BY ALL").fetchall())
        tests = store.scalar("SELECT count(*) FROM examples WHERE split = 'test' AND status = 'active'")
        added = store.con.execute("SELECT template, round_added, count(*) FROM examples WHERE source = 'generated' "
                                  "GROUP BY ALL").fetchall()
        history = store.con.execute("""
            SELECT c.id, count(*) FILTER (WHERE r.round = 1), count(*) FILTER (WHERE r.round = 2)
            FROM clusters c JOIN cluster_members m ON m.cluster_id = c.id
            JOIN rule_results r ON r.example_id = m.example_id AND r.variant = '' AND NOT r.passed
                 AND r.check_name = json_keys(c.checks)[1]
            WHERE c.round = 1 AND c.id IN (SELECT cluster_id FROM generations) GROUP BY c.id""").fetchall()
    rows = _rows(text, "1. Main metric per round")
    assert list(rows) == [NAMES[n] for n in ROUNDS]
    for n in ROUNDS:
        assert rows[NAMES[n]][1:5] == ["done", str(trained.get(n, "-")), str(tests), f"{passing[n]:.1%}"]
    assert text.splitlines()[1].startswith(f"Test pass rate {passing[2]:.1%} in round 2 "
                                           f"({(passing[2] - passing[0]) * 100:+.1f} pts vs baseline, "
                                           f"{passing[0]:.1%}); ")
    for check, cells in _rows(text, "2. Pass rate per check").items():
        assert cells[1:] == [f"{checks[(n, check)][2]:.1%} ({checks[(n, check)][1]}/{checks[(n, check)][0]})"
                             for n in ROUNDS]
    by_template = _rows(text, "4. Data added per round, by template")
    for template, n, count in added:
        assert by_template[template][n] == str(count)
    patterns = _rows(text, "round 1: ", key=1)
    assert history and all(patterns[cid][7] == f"{before} -> {after}" for cid, before, after in history)
    sweep = json.loads(next(reported.runs_dir.glob("sweep-*/sweep.json")).read_text())
    shares = _rows(text, "   latest sweep")
    assert [shares[f"{r['share']:g}"][2] for r in sweep["rows"]] == [f"{r['test_pass_rate']:.1%}"
                                                                     for r in sweep["rows"]]
    assert "6. Failure map: PCA of the failing cases' input embeddings" in text
    recipe = json.loads((reported.runs_dir / "sweep-002" / "sweep.json").read_text())
    assert "7. Recipe sweep 2 (runs/sweep-002" in text.replace(str(reported.root) + "/", "")
    arms = _rows(text, "   arms", key=1)
    assert {label: cells[2] for label, cells in arms.items()} == {
        r["label"]: f"{r['test_pass_rate']:.1%}" for r in recipe["rows"]} and len(arms) == 2


def test_json_and_a_project_without_a_baseline(measured, cli) -> None:
    reported, plain = measured
    document = json.loads(cli("--project", str(reported.root), "report", "--json").out)
    with Store(reported.store_path) as store:
        metrics = {n: json.loads(m) for n, m in store.con.execute("SELECT number, metrics FROM rounds").fetchall()}
        clusters = [c for (c,) in store.con.execute("SELECT id FROM clusters ORDER BY round, rank").fetchall()]
    assert [(r["number"], r["kind"], r["pass_rate"]) for r in document["rounds"]] == [
        (n, {-1: "production", 0: "baseline"}.get(n, "round"), metrics[n]["test"]["pass_rate"]) for n in ROUNDS]
    assert [p["pattern"] for p in document["patterns"]] == clusters
    assert [m["answer_accuracy_cue_off"] for m in document["mix"]] == [metrics[n]["mix"]["answer_accuracy_cue_off"]
                                                                       for n in ROUNDS]
    assert len(document["map_variance"]) == 2 and document["sweep"]["rows"][0]["share"] == 0.5

    # the same project before `refinery baseline`: no reference lines, the gain counted from round 1
    report = build_report(plain)
    assert [r["number"] for r in report.rounds] == [1, 2]
    gain = (metrics[2]["test"]["pass_rate"] - metrics[1]["test"]["pass_rate"]) * 100
    assert report_text(report).splitlines()[1].startswith(f"Test pass rate {metrics[2]['test']['pass_rate']:.1%} in "
                                                          f"round 2 ({gain:+.1f} pts vs round 1")
    html = write_report(plain, report=report).read_text()
    metric = html[html.index('data-plot="metric"'):html.index("</svg>", html.index('data-plot="metric"'))]
    assert PASS in metric and not any(colour in metric for colour, _ in REFERENCE.values())
    assert "baseline not measured" in html and "horizontal lines" not in html


def test_no_finished_round_is_an_error_that_says_what_to_do(project_dir, cli) -> None:
    result = cli("report")
    assert result.code == 1
    assert result.err == ("Error: no finished round yet, so nothing to report: run `refinery iterate` first, then "
                          "`refinery report`.\n")
    assert not (project_dir / "runs" / "report.html").exists()


def test_a_task_without_reasoning_gets_no_mix_section(project, cli) -> None:
    """A project from `refinery init` (no thinking cue, no reasoning share) with one finished round, recorded by
    hand: the report leaves the reasoning/direct mix section out, and numbers the failure map 5. Once the store
    holds a reasoning example the section is back, saying why it has no figures."""
    metrics = {"test": {"examples": 2, "pass_rate": 0.5, "weighted_score": 0.5,
                        "checks": {"not_empty": {"applies": 2, "passed": 1, "rate": 0.5}}}}
    with Store(project.store_path) as store:
        store.con.execute("INSERT INTO rounds (number, kind, status, config, metrics, finished_at) VALUES "
                          "(1, 'round', 'done', '{}', ?, current_timestamp)", [json.dumps(metrics)])
    text = cli("report", "--text")
    assert text.code == 0, text.err
    assert "Reasoning/direct mix" not in text.out and "sweep" not in text.out
    assert "5. Failure map: no embedded failures to map yet." in text.out
    assert cli("report").code == 0
    html = (project.runs_dir / "report.html").read_text(encoding="utf-8")
    assert 'id="mix"' not in html and 'href="#mix"' not in html and "Reasoning / direct mix" not in html
    assert '<a href="#map"><b>5</b>Failure map</a>' in html and '<span class="n">5</span>Failure map' in html

    write(project.root / "data" / "r.jsonl", json.dumps({"input": "q", "output": "<think>1</think>1"}) + "\n")
    assert cli("ingest", "data/r.jsonl", "--split", "train").code == 0
    text = cli("report", "--text").out
    assert "5. Reasoning/direct mix: no cue-mode figures recorded (they need [mix] cue and cue_pattern)." in text
    assert "6. Failure map: no embedded failures to map yet." in text
    # a sweep run without a cue has no cue-mode figures: the page shows its test pass rates alone
    from refinery.stages.mix import CUE_FIGURES
    rows = [{"share": s, "examples": 10, "reasoning": r, "direct": 10 - r, "toggled": 0, "test_pass_rate": rate,
             "test_weighted_score": rate, **dict.fromkeys(CUE_FIGURES)} for s, r, rate in ((0.2, 2, 0.25),
                                                                                          (0.6, 6, 0.5))]
    sweep = {"sweep": 1, "dir": "runs/sweep-001", "grid": {"reasoning_share": [0.2, 0.6]}, "train_examples": 10,
             "test_examples": 4, "steps": "2", "rows": rows}
    with Store(project.store_path) as store:
        store.con.execute("INSERT INTO sweeps (id, key, grid, document) VALUES (1, 'k', ?, ?)",
                          [json.dumps(sweep["grid"]), json.dumps(sweep)])
    shares = _rows(cli("report", "--text").out, "   latest sweep")
    assert shares["0.2"][1:] == ["10 (2/8)", "25.0%", "-", "-", "-", "-", "-"]
    assert cli("report").code == 0
    html = (project.runs_dir / "report.html").read_text(encoding="utf-8")
    assert 'data-plot="sweep"' in html and 'data-plot="mix"' not in html


# ---- helpers ---------------------------------------------------------------------------------------------------

def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs Debian's package (`make chromium`).")
        pytest.skip("chromium is not installed (`make chromium` installs Debian's package)")
    return path


def _run(browser: str, profile: Path, *args: str) -> str:
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--no-first-run", f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


MEASURE = """<script>
document.addEventListener("DOMContentLoaded", () => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {x: Math.round(r.left), y: Math.round(r.top + scrollY), w: Math.round(r.width), h: Math.round(r.height)}; };
  const out = {page: {x: 0, y: 0, w: 0, h: document.documentElement.scrollHeight}};
  document.querySelectorAll("svg.plot").forEach((el) => { out[el.dataset.plot] = box(el); });
  document.querySelectorAll("table[id]").forEach((el) => { out[el.id] = box(el); });
  document.body.setAttribute("data-boxes", JSON.stringify(out));
});
</script></head>"""


def _layout(browser: str, page: Path, tmp_path: Path) -> dict[str, dict[str, int]]:
    """Bounding boxes of the page's plots and tables, measured by a script in a copy of the page (the page itself
    has none) at the screenshot's width."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</head>", MEASURE, 1), encoding="utf-8")
    dom = _run(browser, tmp_path / "profile", "--dump-dom", f"--window-size={WIDTH},900", probe.as_uri())
    found = re.search(r'data-boxes="([^"]+)"', dom)
    assert found, "the probe script did not run"
    return json.loads(found.group(1).replace("&quot;", '"'))


def _share(image, box: dict[str, int], colour: str, tolerance: int = 10) -> float:
    """The share of the box's pixels within `tolerance` of `colour`."""
    target = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    region = image.crop((box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"]))
    near = sum(n for n, rgb in region.getcolors(maxcolors=1 << 22)
               if all(abs(a - b) <= tolerance for a, b in zip(rgb, target, strict=True)))
    return near / (box["w"] * box["h"])


class _Dom(HTMLParser):
    """From Chromium's DOM dump: each plot's stroke colours and drawn points; each table's rows of cell text."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, dict] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.plot: str | None = None
        self.groups: list[str] = []
        self.table: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("data-plot"):
            self.plot = a["data-plot"]
            self.plots[self.plot] = {"strokes": set(), "points": 0}
        elif self.plot and tag == "path" and "stroke:" in (a.get("style") or ""):
            self.plots[self.plot]["strokes"].update(re.findall(r"stroke: (#[0-9a-f]{6})", a["style"]))
        elif self.plot and tag == "g":
            self.groups.append(a.get("id") or "")
        elif self.plot and tag == "use" and any("-points-" in g for g in self.groups):
            self.plots[self.plot]["points"] += 1
        elif tag == "table" and a.get("id"):
            self.table = a["id"]
            self.tables[self.table] = []
        elif self.table and tag == "tr":
            self.row: list[str] = []
        elif self.table and tag == "td":
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.plot = None
        elif self.plot and tag == "g":
            self.groups.pop()
        elif tag == "table":
            self.table = None
        elif self.table and tag == "td" and self.cell is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif self.table and tag == "tr" and self.row:
            self.tables[self.table].append(self.row)
            self.row = []

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _rows(text: str, title: str, *, key: int = 0) -> dict[str, list[str]]:
    """The rows of the table printed under the line starting with `title`, by the cell in column `key`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[key]:
            rows[cells[key]] = cells
    return rows


def _test_pass_rates(store: Store) -> dict[int, float]:
    """Recomputed from every rule result: an example passes when every check that applies to it passed."""
    return dict(store.con.execute("""
        SELECT round, round(avg(ok::INT), 4) FROM (
            SELECT r.round, r.example_id, coalesce(bool_and(r.passed) FILTER (WHERE r.applies), true) AS ok
            FROM rule_results r JOIN examples e ON e.id = r.example_id
            WHERE e.split = 'test' AND r.variant = '' GROUP BY ALL)
        GROUP BY round""").fetchall())


def _check_counts(store: Store) -> dict[tuple[int, str], tuple[int, int, float]]:
    """(round, check) -> (applies, passed, rate) on the test split."""
    rows = store.con.execute("""
        SELECT r.round, r.check_name, count(*), count(*) FILTER (WHERE r.passed)
        FROM rule_results r JOIN examples e ON e.id = r.example_id
        WHERE e.split = 'test' AND r.variant = '' AND r.applies GROUP BY ALL""").fetchall()
    return {(n, c): (a, p, p / a) for n, c, a, p in rows}
