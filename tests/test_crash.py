"""Interrupted iterates: Ctrl-C exits 130 and says what happens next; SIGKILL at random moments across a round never
loses or duplicates an example, writes each stage's rows all or none, and the next iterate completes. Real
subprocesses of the console script, the real tiny model and a real DuckDB file."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_demo, store_snapshot

from refinery.rules import load_rules
from refinery.store import Store


def _start(root: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "REFINERY_PROJECT": str(root)}
    refinery = Path(sys.executable).parent / "refinery"  # the console script, as a person runs it
    err = log.open("a") if log else subprocess.PIPE
    return subprocess.Popen([str(refinery), "iterate", *args], env=env, cwd=root, stdout=subprocess.DEVNULL,
                            stderr=err, text=True)


def _wait_for_line(process: subprocess.Popen, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"iterate ended ({process.returncode}) before {text!r}")
        if text in line:
            return
    raise AssertionError(f"no {text!r} within {timeout} s")


def _wait_for_lock(root: Path, timeout: float = 60) -> None:
    """Until the iterate holds its lock and has noted its round: inside `iterate`, before the round begins."""
    lock, deadline = root / "runs" / "iterate.lock", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.is_file() and lock.read_text().startswith("process "):
            return
        time.sleep(0.01)
    raise AssertionError("the iterate never took its lock")


def test_ctrl_c_at_start_up_exits_130_and_records_nothing(demo_project) -> None:
    before = store_snapshot(demo_project.store_path)
    process = _start(demo_project.root, "--steps", "4")
    _wait_for_lock(demo_project.root)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "Interrupted: the round was interrupted before it began; nothing of it was recorded, and the next `refinery "
        "iterate` starts it.")
    assert store_snapshot(demo_project.store_path) == before


def test_ctrl_c_mid_round_exits_130_and_the_round_restarts(demo_project) -> None:
    process = _start(demo_project.root, "--steps", "4")
    _wait_for_line(process, "Round 1: training on")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "Interrupted: round 1 was interrupted and is marked failed; the next `refinery iterate` restarts it (rounds "
        "that finished are kept).")
    with Store(demo_project.store_path) as store:
        assert store.one("SELECT number, status, error FROM rounds") == (1, "failed", "interrupted")
        assert store.scalar("SELECT count(*) FROM examples WHERE source = 'generated'") == 0


KILLS = int(os.environ.get("REFINERY_CRASH_KILLS", "20"))


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_duplicates_or_half_writes(tmp_path: Path) -> None:
    project = make_demo(tmp_path / "demo")
    log = tmp_path / "iterate.log"
    checks = len(load_rules(project.rules_dir).checks)
    with Store(project.store_path) as store:
        brought = store.frame("SELECT id, content_hash, input, output, split, status FROM examples ORDER BY id")
    began = time.monotonic()
    assert _start(project.root, "--steps", "4", log=log).wait(timeout=600) == 0, log.read_text()
    span = time.monotonic() - began  # one whole iterate, start-up included: the kills fall anywhere in it
    rng = random.Random(int(os.environ.get("REFINERY_CRASH_SEED", "12")))
    landed: collections.Counter = collections.Counter()
    for kill in range(KILLS):
        moment = rng.uniform(0, span)
        process = _start(project.root, "--steps", "4", log=log)
        try:
            assert process.wait(timeout=moment) == 0, log.read_text()  # finished before the kill: a whole round
            landed["after the round"] += 1
        except subprocess.TimeoutExpired:
            landed[f"{int(10 * moment / span) * 10}-{int(10 * moment / span) * 10 + 10} %"] += 1
            process.send_signal(signal.SIGKILL)
            process.wait()
        _assert_consistent(project.store_path, brought, checks, f"kill {kill} at {moment:.1f} s")
    final = _start(project.root, "--steps", "4", log=log)
    assert final.wait(timeout=600) == 0, log.read_text()
    _assert_consistent(project.store_path, brought, checks, "after the last iterate")
    with Store(project.store_path) as store:
        assert store.scalar("SELECT count(*) FROM rounds WHERE status <> 'done'") == 0
    print(f"\n{KILLS} kills over {span:.1f} s iterates, landed at (share of the span): {dict(landed)}")


def _assert_consistent(store_path: Path, brought, checks: int, when: str) -> None:
    with Store(store_path) as store:
        examples = store.frame("SELECT id, content_hash, input, output, split, status, source, round_added "
                               "FROM examples ORDER BY id")
        done = {n for (n,) in store.con.execute("SELECT number FROM rounds WHERE status = 'done'").fetchall()}
        unfinished = store.con.execute("SELECT number FROM rounds WHERE kind = 'round' AND status <> 'done'"
                                       ).fetchall()
        asked = store.scalar("SELECT count(*) FROM examples WHERE split <> 'train' AND status = 'active'") + \
            2 * store.scalar("SELECT count(*) FROM examples WHERE split = 'test' AND status = 'active'")
        per_round = store.con.execute("""
            SELECT r.number, (SELECT count(*) FROM predictions p WHERE p.round = r.number),
                   (SELECT count(*) FROM rule_results c WHERE c.round = r.number),
                   (SELECT count(*) FROM clusters c WHERE c.round = r.number),
                   (SELECT count(*) FROM generations g WHERE g.round = r.number),
                   (SELECT count(*) FROM generations g WHERE g.round = r.number AND g.outcome = 'stored'),
                   (SELECT count(*) FROM examples e WHERE e.round_added = r.number)
            FROM rounds r ORDER BY r.number""").fetchall()
    # no example lost or duplicated: what was brought is there as it was, and every id and content once
    assert examples.filter(examples["source"] != "generated").select(brought.columns).equals(brought), when
    assert examples["id"].n_unique() == examples["content_hash"].n_unique() == examples.height, when
    assert len(unfinished) <= 1, when
    for number, predictions, results, clusters, generations, stored, added in per_round:
        if number in done:  # a finished round has all of its rows
            assert (predictions, results) == (asked, asked * checks), (when, number)
            assert stored == added, (when, number)
        else:  # an unfinished one: each stage's rows all or none, and nothing it generated
            assert predictions in (0, asked) and results in (0, asked * checks), (when, number)
            assert (clusters, generations, added) == (0, 0, 0), (when, number)


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback() -> None:
    """The console script's `main` imports typer, rich and the commands (about 0.2-0.3 s here): a Ctrl-C 20 ms into
    it lands there, and used to print Python's traceback. The import is timed first, so the test says when the
    machine loads too fast for the signal to land in it."""
    loads = subprocess.run([sys.executable, "-X", "importtime", "-c", "import refinery.cli"], capture_output=True,
                           text=True, check=True).stderr.strip().splitlines()[-1]
    assert int(loads.split("|")[1]) > 40_000, f"refinery.cli loads in under 40 ms here: {loads}"
    script = ("import os, signal\n"
              "signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))\n"
              "signal.setitimer(signal.ITIMER_REAL, 0.02)\n"
              "from refinery.entry import main\n"
              "raise SystemExit(main())\n")
    done = subprocess.run([sys.executable, "-c", script, "status"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (130, "Interrupted.\n", "")
