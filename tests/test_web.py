"""`refinery review`: the local review page on a real store (a finished round written with SQL, as a round writes
it, no training), over HTTP and in a real headless Chromium driven by Selenium through Debian's chromium-driver."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import uvicorn
from conftest import REPO, make_demo, store_snapshot

from refinery.project import load_project
from refinery.report.web import make_app
from refinery.rules import load_rules
from refinery.stages.evaluate import run_checks, summarize
from refinery.store import Store, content_hash, insert_frame

TOKEN = "test-token-0123456789"
SCRIPT = "<script>alert(1)</script> Ann has 2 pens and buys 3 more. How many pens now?"
PUNCTUATED = re.compile(r"<weather>[^<]*[?!.,]</weather>")  # the planted cause: the model drops the tag
DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo's data and one finished round: two patterns, a pending counterexample, a wrong expected output."""
    project = make_demo(tmp_path_factory.mktemp("review") / "demo")
    rules = load_rules(project.rules_dir)
    with Store(project.store_path) as store, store.transaction() as con:
        _insert(con, SCRIPT, "Answer: 5", "analysis", {"answer": 5})
        # A member whose stored expected output is wrong (snow for a sunny day): the browser test relabels it.
        wrong = store.frame("SELECT id, input, output FROM examples WHERE split = 'analysis' AND "
                            "regexp_matches(input, '<weather>[^<]*[?!.,]</weather>') AND output LIKE '%☀️%' "
                            "ORDER BY id LIMIT 1").row(0, named=True)
        bad = wrong["output"].replace("☀️", "❄️")
        digest = content_hash(wrong["input"], bad)
        con.execute("UPDATE examples SET id = ?, content_hash = ?, output = ? WHERE id = ?",
                    [digest[:16], digest, bad, wrong["id"]])
        rows = store.frame("SELECT id AS example_id, '' AS variant, input, output AS expected, fields, split "
                           "FROM examples WHERE split IN ('analysis', 'test', 'corner')")
        rows = rows.with_columns(pl.struct("input", "expected").map_elements(_model, return_dtype=pl.String)
                                 .alias("prediction"))
        results = run_checks(rules, rows)
        metrics = summarize(results, rows.select("example_id", "split"))
        baseline = rows.with_columns(pl.col("expected").str.replace(r"<display_weather>.*?</display_weather>", "")
                                     .alias("prediction"))  # the few-shot baseline never shows the tag
        before = summarize(run_checks(rules, baseline), rows.select("example_id", "split"))
        stop = "plateau: test pass rate has not improved by more than 1.0% in the last 2 rounds"
        for number, kind in ((0, "baseline"), (1, "round")):
            con.execute("INSERT INTO rounds (number, kind, status, config, metrics, stop_reason, finished_at) "
                        "VALUES (?, ?, 'done', '{}', ?, ?, current_timestamp)",
                        [number, kind, json.dumps(metrics if number else before), stop if number else None])
        insert_frame(con, "predictions", rows.select("example_id", "variant", pl.col("prediction").alias("output"),
                                                     pl.lit(1, pl.Int32).alias("round"), pl.lit("").alias("prompt"),
                                                     pl.lit(10, pl.Int32).alias("tokens")))
        insert_frame(con, "rule_results", results.with_columns(pl.lit(1, pl.Int32).alias("round")))
        analysis = rows.filter(pl.col("split") == "analysis")["example_id"]
        failing = results.filter((pl.col("passed") == False) & pl.col("example_id").is_in(analysis.to_list()))  # noqa: E712
        dropped = failing.filter(pl.col("check_name") == "display_weather_present")["example_id"].sort().to_list()
        stray = failing.filter(pl.col("check_name") == "display_weather_absent")["example_id"].sort().to_list()
        evidence = [{"feature": "weather word touches punctuation", "check": "display_weather_present",
                     "with_failed": len(dropped), "with_total": len(dropped), "without_failed": 0,
                     "without_total": 20, "rate_with": 1.0, "rate_without": 0.0, "lift": 1e9, "p": 1e-6, "q": 2e-5}]
        for cid, rank, kind, members, checks, statement in (
                ("r001-c01", 1, "cause", dropped, {"display_weather_present": len(dropped)},
                 "display_weather_present fails when the weather word touches punctuation"),
                ("r001-c02", 2, "cluster", stray, {"display_weather_absent": len(stray)},
                 "display_weather_absent fails on a cluster of inputs")):
            con.execute("INSERT INTO clusters (id, round, rank, label, statement, size, score, score_parts, checks, "
                        "evidence, kind, feature, p, q, budget) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 4)",
                        [cid, rank, cid, statement, len(members), 3.0 * len(members),
                         json.dumps({"failures": len(members), "mean_severity": 3.0}), json.dumps(checks),
                         json.dumps(evidence if kind == "cause" else []), kind,
                         "weather word touches punctuation" if kind == "cause" else None,
                         None if kind == "cause" else 0.001, None if kind == "cause" else 0.01])
            con.executemany("INSERT INTO cluster_members (cluster_id, example_id, distance, representative) "
                            "VALUES (?, ?, ?, ?)", [[cid, m, i / 10, i == 0] for i, m in enumerate(members)])
        parent = store.one("SELECT id, input, output FROM examples WHERE id = ?", [dropped[0]])
        pending = _generated(con, "<weather>Sunny,</weather> Bo has 1 cup and buys 1 more. How many cups now?",
                             "Answer: 2<display_weather>☀️</display_weather>", "r001-c01", parent[0], "pending")
        active = _generated(con, "Cy has 2 hats and buys 2 more. How many hats now?", "Answer: 4", "r001-c02",
                            stray[0], "active")
    return {"project": project, "relabel": digest[:16], "fixed": wrong["output"], "pending": pending,
            "active": active, "script": stray}


def _model(row: dict) -> str:
    """The planted model: drops the display tag when the weather word touches punctuation, shows one for <script>."""
    if row["input"] == SCRIPT:
        return "Answer: 5<display_weather>☀️</display_weather>"
    if PUNCTUATED.search(row["input"]):
        return re.sub(r"<display_weather>.*?</display_weather>", "", row["expected"])
    return row["expected"]


def _insert(con, text: str, output: str, split: str, fields: dict) -> str:
    digest = content_hash(text, output)
    con.execute("INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source) "
                "VALUES (?, ?, ?, ?, ?, 'direct', ?, 'import')", [digest[:16], digest, text, output,
                                                                   json.dumps(fields), split])
    return digest[:16]


def _generated(con, text: str, output: str, cluster: str, parent: str, status: str) -> str:
    digest = content_hash(text, output)
    con.execute("INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source, parent_id, "
                "template, cluster_id, round_added, status, feature) VALUES (?, ?, ?, ?, ?, 'direct', 'train', "
                "'generated', ?, 'punctuation.jinja', ?, 1, ?, 'weather word touches punctuation')",
                [digest[:16], digest, text, output, json.dumps({"answer": int(re.search(r"\d+", output).group())}),
                 parent, cluster, status])
    con.execute("INSERT INTO generations (round, cluster_id, template, parent_id, input, output, targets, outcome, "
                "example_id, feature, carries) VALUES (1, ?, 'punctuation.jinja', ?, ?, ?, '[]', ?, ?, "
                "'weather word touches punctuation', true)",
                [cluster, parent, text, output, "stored" if status == "active" else "pending", digest[:16]])
    return digest[:16]


@pytest.fixture
def site(built: dict, tmp_path: Path):
    """A copy of the built project, served by uvicorn on a free port in a background thread."""
    root = tmp_path / "demo"
    shutil.copytree(built["project"].root, root)
    project = load_project(root, environ={})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(make_app(project, token=TOKEN), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield {**built, "project": project, "base": f"http://127.0.0.1:{sock.getsockname()[1]}"}
    server.should_exit = True
    thread.join(10)
    sock.close()


class Client:
    """urllib with cookies; answers (status, body) instead of raising on 4xx/5xx."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, form: dict, *, origin: str | None = "self") -> tuple[int, str]:
        headers = {} if origin is None else {"Origin": self.base if origin == "self" else origin}
        return self._open(urllib.request.Request(self.base + path, data=urllib.parse.urlencode(form).encode(),
                                                 headers=headers, method="POST"))

    def csrf(self, path: str = "/round/1") -> str:
        return re.search(r'name="csrf" value="([^"]+)"', self.get(path)[1]).group(1)

    def raw(self, path: str, *, cookie: str = "", form: dict | None = None,
            origin: str | None = None) -> tuple[int, dict[str, str], str]:
        """One request with exactly the Cookie and Origin given, redirects not followed: status, headers, body."""
        headers = {"Cookie": cookie, **({"Origin": origin} if origin else {})}
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.build_opener(_NoRedirect).open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def _open(self, request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _status(project, query: str, params: list) -> list[tuple]:
    with Store(project.store_path, read_only=True) as store:
        return store.con.execute(query, params).fetchall()


def test_every_request_needs_the_token(site) -> None:
    client = Client(site["base"])
    assert client.get("/")[0] == 403
    assert client.get("/pattern/r001-c01?token=wrong")[0] == 403
    status, body = client.get(f"/?token={TOKEN}")  # then a cookie carries it
    assert status == 200 and "plateau: test pass rate has not improved" in body
    assert client.get("/pattern/r001-c01")[0] == 200
    assert Client(site["base"]).get("/examples")[0] == 403


def test_user_data_is_escaped_and_failing_spans_are_marked(site) -> None:
    client = Client(site["base"])
    client.get(f"/?token={TOKEN}")
    status, body = client.get("/pattern/r001-c02")
    assert status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert(1)" not in body
    assert '<span class="badge fail"' in body and "display_weather_absent</span>" in body
    assert '<mark title="display_weather_absent"><bdi>display_weather</bdi></mark>' in body
    status, body = client.get("/examples?text=alert&split=analysis")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert(1)" not in body


def test_posts_need_the_csrf_token_and_this_sites_origin(site) -> None:
    client = Client(site["base"])
    client.get(f"/?token={TOKEN}")
    csrf = client.csrf()
    status, body = client.post("/pattern/r001-c01/decide", {"decision": "reject", "next": "/round/1"})
    assert status == 403 and "CSRF token is missing or stale" in body
    status, _ = client.post("/pattern/r001-c01/decide", {"decision": "reject", "csrf": csrf},
                            origin="http://evil.example")
    assert status == 403
    assert client.post("/pattern/r001-c01/decide", {"decision": "reject", "csrf": csrf}, origin=None)[0] == 403
    assert _status(site["project"], "SELECT status FROM clusters WHERE id = 'r001-c01'", []) == [("proposed",)]
    # A new output that fails a check is refused, with the failures named; nothing is written.
    status, body = client.post(f"/example/{site['relabel']}/relabel",
                               {"output": "Answer: 999", "csrf": csrf, "next": "/pattern/r001-c01"})
    assert status == 200 and "not relabelled" in body and "display_weather_present" in body
    assert _status(site["project"], "SELECT count(*) FROM examples WHERE source = 'relabel'", []) == [(0,)]
    status, body = client.post("/pattern/r001-c01/rename", {"label": "tag dropped <b>", "csrf": csrf,
                                                            "next": "https://evil.example/"})
    assert status == 200 and "r001-c01 is now labelled: tag dropped &lt;b&gt;" in body  # redirected home, escaped
    status, body = client.post("/pattern/r001-c01/merge", {"other": "r001-c02", "csrf": csrf, "next": "/round/1"})
    assert "Merged r001-c02 into r001-c01: now 34 members." in body
    status, body = client.post("/examples/decide", {"all": "1", "decision": "reject", "csrf": csrf,
                                                    "next": "/examples"})
    assert "1 examples rejected; 0 still pending." in body
    assert _status(site["project"], "SELECT id, status, merged_into FROM clusters ORDER BY id", []) == [
        ("r001-c01", "proposed", None), ("r001-c02", "merged", "r001-c01")]


def test_a_store_held_by_a_writer_gives_a_busy_page(site) -> None:
    client = Client(site["base"])
    client.get(f"/?token={TOKEN}")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(site["project"].store_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status, body = client.get("/round/1")
        assert status == 503
        assert "The store is busy: a round is writing; this page retries in a few seconds." in body
        assert '<meta http-equiv="refresh" content="3">' in body
    finally:
        holder.kill()
        holder.wait()
    assert client.get("/round/1")[0] == 200


def _port(site) -> str:
    return site["base"].rsplit(":", 1)[1]


def _add_pattern(project, cid: str) -> None:
    """A third pattern of round 1, without members: enough to merge into and out of."""
    with Store(project.store_path) as store, store.transaction() as con:
        con.execute("INSERT INTO clusters (id, round, rank, label, statement, size, score, checks) "
                    "VALUES (?, 1, 3, ?, 'a third pattern', 0, 0.0, '{}')", [cid, cid])


def test_merges_form_a_tree_and_a_merged_pattern_is_left_alone(site) -> None:
    project = site["project"]
    _add_pattern(project, "r001-c03")
    client = Client(site["base"])
    client.get(f"/?token={TOKEN}")
    csrf = client.csrf()
    status, body = client.post("/pattern/r001-c01/merge", {"other": "r001-c02", "csrf": csrf, "next": "/round/1"})
    assert status == 200 and "Merged r001-c02 into r001-c01: now 34 members." in body
    before = store_snapshot(project.store_path)
    refused = {
        ("/pattern/r001-c02/merge", "other", "r001-c01"):
            "merging r001-c01 into r001-c02 would make a cycle: r001-c02 is already merged into r001-c01. "
            "Nothing to do.",
        ("/pattern/r001-c03/merge", "other", "r001-c02"):
            "pattern r001-c02 was already merged into r001-c01, and a pattern is merged only once: merge r001-c01 "
            "into r001-c03 to join the two.",
        ("/pattern/r001-c02/merge", "other", "r001-c03"):
            "pattern r001-c02 was merged into r001-c01: merge r001-c03 into r001-c01 instead.",
        ("/pattern/r001-c02/rename", "label", "new name"):
            "pattern r001-c02 was merged into r001-c01: rename r001-c01 instead.",
    }
    for (path, field, value), message in refused.items():
        status, body = client.post(path, {field: value, "csrf": csrf, "next": "/round/1"})
        assert status == 200 and f'<p class="flash error" role="status" id="flash"><bdi>{message}</bdi></p>' in body
    assert store_snapshot(project.store_path) == before
    status, body = client.get("/round/1")
    assert 'id="pattern-r001-c01"' in body and 'id="pattern-r001-c02"' not in body
    status, body = client.get("/pattern/r001-c02")
    assert 'Merged into <a href="/pattern/r001-c01">r001-c01</a>: decide on, rename and merge that one.' in body
    assert "/pattern/r001-c02/rename" not in body and "/pattern/r001-c02/merge" not in body


def test_hostile_tokens_cookies_and_rounds_get_an_answer_not_a_500(site) -> None:
    client, token = Client(site["base"]), f"refinery-token-{_port(site)}={TOKEN}"
    assert client.raw("/?token=%C3%A9t%C3%A9")[0] == 403  # non-ASCII: hmac.compare_digest raised TypeError
    status, _, body = client.raw("/", cookie=f"refinery-token-{_port(site)}=\u00e9t\u00e9")
    assert status == 403 and "it holds the access token" in body
    before = store_snapshot(site["project"].store_path)
    status, _, body = client.raw("/pattern/r001-c01/decide", cookie=token, origin=site["base"],
                                 form={"decision": "reject", "csrf": "\u00e9t\u00e9", "next": "/round/1"})
    assert status == 403 and "The form&#39;s CSRF token is missing or stale. Reload the page and try again." in body
    assert store_snapshot(site["project"].store_path) == before
    for flash in ("%7Bnot%20json", "%5B1%2C2%5D", "%7B%22text%22%3A5%7D", "[" * 3000):
        status, headers, body = client.raw("/", cookie=f"{token}; refinery-flash={flash}")
        assert status == 200 and "<h1>Rounds</h1>" in body and 'id="flash"' not in body
        assert 'refinery-flash=""' in headers["set-cookie"]  # removed, so the next page is clean too
    for given, shown in (("--1", "--1"), ("%C2%B2", "\u00b2"), ("99999999999", "99999999999")):
        status, _, body = client.raw(f"/examples?round={given}", cookie=token)
        assert status == 400 and (f"round &#39;<bdi>{shown}</bdi>&#39; is not a round number" in body or
                                  f"<bdi>round &#39;{shown}&#39; is not a round number: expected a whole number such "
                                  f"as 1, or nothing for the last finished round.</bdi>" in body)


def test_a_post_from_another_scheme_or_port_is_refused(site) -> None:
    client, token = Client(site["base"]), f"refinery-token-{_port(site)}={TOKEN}"
    client.get(f"/?token={TOKEN}")
    form = {"decision": "reject", "csrf": client.csrf(), "next": "/round/1"}
    before = store_snapshot(site["project"].store_path)
    other_port = f"http://127.0.0.1:{int(_port(site)) + 1}"
    for origin in (site["base"].replace("http://", "https://"), other_port, "http://127.0.0.1", "http://:0"):
        status, _, body = client.raw("/pattern/r001-c01/decide", cookie=token, origin=origin, form=form)
        assert status == 403 and "A form posted from another site was refused." in body, origin
    assert store_snapshot(site["project"].store_path) == before


def test_every_response_is_uncached_and_error_pages_carry_a_csp(site) -> None:
    client, token = Client(site["base"]), f"refinery-token-{_port(site)}={TOKEN}"
    answers = {"page": client.raw("/round/1", cookie=token), "first visit": client.raw(f"/?token={TOKEN}"),
               "no token": client.raw("/"), "no such page": client.raw("/nowhere", cookie=token),
               "no such pattern": client.raw("/pattern/r009-c01", cookie=token),
               "GET on a form": client.raw("/pattern/r001-c01/decide", cookie=token),
               "bad round": client.raw("/examples?round=x", cookie=token)}
    assert {k: a[0] for k, a in answers.items()} == {"page": 200, "first visit": 303, "no token": 403,
                                                     "no such page": 404, "no such pattern": 404,
                                                     "GET on a form": 405, "bad round": 400}
    for what, (_, headers, _) in answers.items():
        assert headers["cache-control"] == "no-store", what
        assert headers["content-security-policy"].startswith("default-src 'none'"), what
        assert "frame-ancestors 'none'" in headers["content-security-policy"], what


def test_invisible_and_bidi_characters_are_shown_as_markers(site) -> None:
    client = Client(site["base"])
    client.get(f"/?token={TOKEN}")
    label = "\u202egnp.exe\u200b <b>x</b>"
    status, body = client.post("/pattern/r001-c01/rename", {"label": label, "csrf": client.csrf(),
                                                            "next": "/pattern/r001-c01"})
    shown = ('<bdi><span class="invisible" title="RIGHT-TO-LEFT OVERRIDE">⟨U+202E⟩</span>gnp.exe'
             '<span class="invisible" title="ZERO WIDTH SPACE">⟨U+200B⟩</span> &lt;b&gt;x&lt;/b&gt;</bdi>')
    assert status == 200 and f"<span>“{shown}”</span>" in body
    assert f'id="flash"><bdi>r001-c01 is now labelled: {shown[5:]}</p>' in body
    assert f'name="label" value="{label.replace("<", "&lt;").replace(">", "&gt;")}"' in body  # edited as it is
    assert _status(site["project"], "SELECT label FROM clusters WHERE id = 'r001-c01'", []) == [(label,)]


def test_an_action_waiting_for_a_busy_store_blocks_no_other_request(site) -> None:
    client = Client(site["base"])
    client.get(f"/?token={TOKEN}")
    form = {"decision": "reject", "csrf": client.csrf(), "next": "/round/1"}
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(site["project"].store_path)],
                              stdout=subprocess.PIPE, text=True)
    done: dict[str, tuple[float, int]] = {}

    def act() -> None:
        status = client.post("/pattern/r001-c01/decide", form)[0]
        done["action"] = (time.monotonic(), status)
    try:
        assert holder.stdout.readline().strip() == "held"
        action = threading.Thread(target=act)
        action.start()
        time.sleep(0.5)  # the action is now waiting up to 5 s for the store
        assert Client(site["base"]).get("/")[0] == 403  # answered at once, not after the action
        status, body = client.get("/round/1")
        done["page"] = (time.monotonic(), status)
        action.join(30)
    finally:
        holder.kill()
        holder.wait()
    assert done["page"][1] == 503 and done["action"][1] == 503
    assert done["page"][0] < done["action"][0]  # the page did not wait for the action to give up
    assert _status(site["project"], "SELECT status FROM clusters WHERE id = 'r001-c01'", []) == [("proposed",)]


def test_review_refuses_a_host_other_machines_reach_unless_allowed(built, cli, tmp_path: Path) -> None:
    root = str(built["project"].root)
    for host, where in (("0.0.0.0", "every network interface"), ("", "every network interface"),
                        ("192.0.2.7", "'192.0.2.7', not only this machine's loopback")):
        result = cli("--project", root, "review", "--host", host, "--no-browser")
        assert result.code == 1 and result.err == (
            f"Error: --host '{host}' listens on {where}: other machines could reach the review page, and its "
            f"token travels unencrypted. Leave --host out (127.0.0.1), or pass --allow-remote if other machines "
            f"should reach it.\n")
    process = subprocess.Popen([sys.executable, "-m", "refinery.cli", "--project", root, "review", "--host",
                                "0.0.0.0", "--allow-remote", "--no-browser"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        warning = process.stderr.readline()
        lines = [process.stdout.readline(), process.stdout.readline()]
        port = re.fullmatch(r"http://\S+:(\d+)/\?token=\S{20,}", lines[1].strip()).group(1)
        assert Client(f"http://127.0.0.1:{port}").get("/" + lines[1].strip().split("/", 3)[3])[0] == 200
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    finally:
        process.kill()
    assert warning == ("Warning: listening on every network interface (--allow-remote): anyone on the network who "
                       "sees the URL can change the store, and the URL is sent unencrypted.\n")


def test_the_command_prints_the_url_and_stops_on_ctrl_c(built, tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(built["project"].root, root)
    process = subprocess.Popen([sys.executable, "-m", "refinery.cli", "--project", str(root), "review",
                                "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [process.stdout.readline(), process.stdout.readline()]
        url = lines[1].strip()
        assert lines[0].startswith("Reviewing ") and re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=\S{20,}", url)
        client = Client(url.split("/?")[0])
        assert client.get("/" + url.split("/", 3)[3])[0] == 200
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode in (0, 130) and "Traceback" not in err, err
    assert "Stopped." in out


def test_a_person_reviews_a_round_in_chromium(site) -> None:
    from selenium.webdriver.common.by import By

    driver = _browser()
    shots = os.environ.get("REFINERY_SCREENSHOTS") == "1"
    try:
        driver.get(f"{site['base']}/?token={TOKEN}")
        assert "plateau: test pass rate" in driver.find_element(By.CSS_SELECTOR, ".stop").text
        if shots:
            driver.save_screenshot(str(DOCS / "review-rounds.png"))
        driver.find_element(By.CSS_SELECTOR, "a[href='/round/1']").click()
        assert driver.find_element(By.TAG_NAME, "h1").text == "Round 1: failure patterns, worst first"
        if shots:
            driver.save_screenshot(str(DOCS / "review-patterns.png"))
        # Keyboard: j twice selects the second pattern, r rejects it.
        _keys(driver, "jj")
        assert "r001-c02" in driver.find_element(By.CSS_SELECTOR, ".item.current").text
        _keys(driver, "r")
        assert driver.find_element(By.ID, "flash").text == "r001-c02 rejected (1 counterexamples withdrawn)."
        assert "current" in driver.find_element(By.ID, "pattern-r001-c02").get_attribute("class")

        driver.find_element(By.CSS_SELECTOR, "#pattern-r001-c01 a[data-open]").click()
        member = driver.find_element(By.ID, f"member-{site['relabel']}")
        assert "display_weather_present" in member.find_element(By.CSS_SELECTOR, ".badge.fail").text
        if shots:
            driver.save_screenshot(str(DOCS / "review-pattern.png"))
        area = member.find_element(By.TAG_NAME, "textarea")
        area.clear()
        area.send_keys(site["fixed"])
        member.find_element(By.CSS_SELECTOR, "form.relabel button").click()
        flash = driver.find_element(By.ID, "flash").text
        assert flash.startswith(f"Relabelled {site['relabel']} -> ") and "passes every applicable check" in flash

        driver.find_element(By.LINK_TEXT, "Pending").click()
        row = driver.find_element(By.ID, f"example-{site['pending']}")
        assert "r001-c01" in row.text and "punctuation.jinja" in row.text
        if shots:
            driver.save_screenshot(str(DOCS / "review-examples.png"))
        _keys(driver, "ja")  # select the pending example, accept it
        assert driver.find_element(By.ID, "flash").text == "1 examples active; 0 still pending."
    finally:
        driver.quit()
    project = site["project"]
    assert _status(project, "SELECT source, status, output FROM examples WHERE parent_id = ?",
                   [site["relabel"]]) == [("relabel", "active", site["fixed"])]
    assert _status(project, "SELECT status FROM examples WHERE id = ?", [site["relabel"]]) == [("rejected",)]
    assert _status(project, "SELECT id, status FROM clusters ORDER BY id", []) == [("r001-c01", "proposed"),
                                                                                  ("r001-c02", "rejected")]
    assert _status(project, "SELECT id, status FROM examples WHERE source = 'generated' ORDER BY status",
                   []) == [(site["pending"], "active"), (site["active"], "rejected")]


def _keys(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "h1").click()  # focus on the page, not on a field
    for key in keys:
        ActionChains(driver).send_keys(key).perform()


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = "chromium" if chromium is None else "chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is not installed; `make test` installs Debian's packages (`make chromium`).")
        pytest.skip(f"{missing} is not installed (`make chromium` installs Debian's packages)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver), options=options)
    driver.implicitly_wait(5)
    return driver


def test_a_person_labels_judge_results_and_the_page_shows_the_calibration(site) -> None:
    """A judge check's results written as a round writes them (the judge fails every output without the tag), then
    a person's verdicts given on the judge page: stored, counted in the calibration table, refused when hostile."""
    project = site["project"]
    write_rules = project.rules_dir / "judge.toml"
    write_rules.write_text('[[check]]\nname = "shows_weather"\ntype = "judge"\nwhen = "<weather>"\n'
                           'rubric = "Does {{ output }} show the weather of {{ input }}?"\n', encoding="utf-8")
    with Store(project.store_path) as store, store.transaction() as con:
        con.execute("""INSERT INTO rule_results (round, example_id, variant, rule_file, check_name, applies, passed,
                           severity, detail)
                       SELECT round, example_id, variant, 'judge.toml', 'shows_weather', true, passed, 1.0,
                              CASE WHEN passed THEN 'the tag is there' ELSE 'no weather shown' END
                       FROM rule_results WHERE round = 1 AND check_name = 'display_weather_present'""")
        judged = con.execute("SELECT example_id, passed FROM rule_results WHERE check_name = 'shows_weather' "
                             "ORDER BY example_id LIMIT 3").fetchall()
    client = Client(site["base"])
    client.get(f"/judge?token={TOKEN}")
    status, body = client.get("/judge")
    assert status == 200 and "Judge checks, round 1" in body and "uncalibrated: 0 label(s), needs 10" in body
    assert f'id="judged-{judged[0][0]}-shows_weather"' in body and "no weather shown" in body
    csrf = client.csrf("/judge")
    for (example, passed), verdict in zip(judged, ("pass", "fail", "pass"), strict=True):
        status, body = client.post("/judge/label", {"round": "1", "example": example, "check": "shows_weather",
                                                    "verdict": verdict, "csrf": csrf, "next": "/judge"})
        assert status == 200 and f"Labelled {example} {verdict} on &#39;shows_weather&#39; (round 1)." in body
    assert _status(project, "SELECT example_id, passed FROM judge_labels ORDER BY example_id", []) == [
        (e, v == "pass") for (e, _), v in zip(judged, ("pass", "fail", "pass"), strict=True)]
    status, body = client.get("/judge")
    assert f'id="judged-{judged[0][0]}-shows_weather"' not in body  # labelled: no longer in the unlabelled list
    agree = sum(p == (v == "pass") for (_, p), v in zip(judged, ("pass", "fail", "pass"), strict=True))
    assert f'<td class="num">3</td><td class="num">{agree / 3:.1%}</td>' in body
    before = store_snapshot(project.store_path)
    for form, message in (
            ({"round": "1", "example": judged[0][0], "check": "display_weather_present", "verdict": "pass"},
             "check &#39;display_weather_present&#39; is not a judge check (expected one of: shows_weather)."),
            ({"round": "x", "example": judged[0][0], "check": "shows_weather", "verdict": "pass"},
             "round &#39;x&#39;, verdict &#39;pass&#39;: expected a round number and pass or fail."),
            ({"round": "1", "example": "nope", "check": "shows_weather", "verdict": "fail"},
             "round 1 has no result of judge check &#39;shows_weather&#39; for example nope")):
        status, body = client.post("/judge/label", {**form, "csrf": csrf, "next": "/judge"})
        assert status == 200 and message in body
    assert store_snapshot(project.store_path) == before
