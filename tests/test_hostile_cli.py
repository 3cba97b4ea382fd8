"""Hostile arguments, paths and files at the CLI's edge (issue 26): each case does what the probe did and asserts
what a person sees (the `Error:` line, exit code 1, no traceback) and that the store and the project file are as
they were. Real projects, real DuckDB files, the real CLI (in-process, and once as a process for raw bytes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import SEED, fails_unchanged, store_snapshot, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refinery.store import Store

LONG = "a" * 300  # one path component over the 255 bytes a Linux file system allows


# 1. export over the store or the project file, by any name


def test_export_over_a_hard_link_to_the_store_or_the_project_file_is_refused(stocked: Path, cli) -> None:
    os.link(stocked / "runs" / "refinery.duckdb", stocked / "b.duckdb")
    assert fails_unchanged(cli, stocked, "export", "-o", "b.duckdb", "--force") == (
        "Error: b.duckdb: that is the project's store; an export there would destroy it. Give another file with "
        "-o.\n")
    assert fails_unchanged(cli, stocked, "export", "-o", "refinery.toml", "--force") == (
        "Error: refinery.toml: that is the project file (refinery.toml); an export there would destroy it. Give "
        "another file with -o.\n")
    os.link(stocked / "refinery.toml", stocked / "settings.txt")
    assert "that is the project file" in fails_unchanged(cli, stocked, "export", "-o", "settings.txt", "--force")
    assert cli("status").code == 0


def test_a_forced_export_replaces_its_file_and_leaves_other_links_alone(stocked: Path, cli) -> None:
    notes = write(stocked / "notes.txt", "mine\n")
    os.chmod(notes, 0o640)
    os.link(notes, stocked / "other-name.txt")
    result = cli("export", "-o", "notes.txt", "--force")
    assert (result.code, result.out) == (0, "Wrote 2 examples (split: train) to notes.txt\n")
    assert (stocked / "other-name.txt").read_text() == "mine\n"  # the other name still holds the old file
    assert [json.loads(line)["id"] for line in notes.open()] and notes.stat().st_mode & 0o777 == 0o640
    assert not list(stocked.glob(".notes.txt.*"))  # no temporary file left behind


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_an_export_to_a_full_device_says_so(stocked: Path, cli, fmt: str) -> None:
    assert fails_unchanged(cli, stocked, "export", "-o", "/dev/full", "--format", fmt, "--force") == (
        "Error: /dev/full: cannot write the export: No space left on device. Give another file path with -o.\n")


def test_an_export_to_a_named_pipe_needs_its_reader(stocked: Path, cli) -> None:
    import threading
    import time

    os.mkfifo(stocked / "pipe")
    assert fails_unchanged(cli, stocked, "export", "-o", "pipe", "--force") == (
        "Error: pipe: a named pipe that nothing reads, so the export would wait for ever. Start its reader first, "
        "or give a file path with -o.\n")
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append((stocked / "pipe").read_bytes()))
    reader.start()
    time.sleep(0.3)  # let the reader's open() wait for a writer
    assert cli("export", "-o", "pipe", "--force").code == 0
    reader.join(timeout=30)
    assert [json.loads(line)["id"] for line in read[0].decode().splitlines()] and len(read[0].splitlines()) == 2


# 2. the content hash


PAIRS = '{"input": "p\\u0000q", "output": "r"}\n{"input": "p", "output": "q\\u0000r"}\n'


def test_rows_that_differ_only_in_where_a_nul_byte_splits_them_are_both_stored(project_dir: Path, cli) -> None:
    write(project_dir / "data" / "nul.jsonl", PAIRS)
    result = cli("ingest", "data/nul.jsonl", "--split", "train")
    assert result.code == 0 and "2 new examples stored, 0 duplicates skipped" in result.out
    with Store(project_dir / "runs" / "refinery.duckdb") as store:
        assert sorted(store.frame("SELECT input, output FROM examples").rows()) == [("p", "q\x00r"), ("p\x00q", "r")]


def _old_hash(input_text: str, output_text: str) -> str:
    return hashlib.sha256(f"{input_text}\x00{output_text}".encode()).hexdigest()


def test_the_rehash_migration_keeps_ids_and_says_when_a_row_may_have_been_hidden(project_dir: Path, cli) -> None:
    """A store written before m007: its rows carry the NUL-joined hash, and the second NUL row was dropped at
    ingest as a duplicate. Opening it rehashes every row (ids unchanged), says so, and a new ingest stores the
    row that was hidden."""
    write(project_dir / "data" / "nul.jsonl", PAIRS)
    write(project_dir / "data" / "first.jsonl", PAIRS.splitlines()[0] + "\n" + SEED)
    assert cli("ingest", "data/first.jsonl", "--split", "train").code == 0
    path = project_dir / "runs" / "refinery.duckdb"
    con = duckdb.connect(str(path))
    for row_id, i, o in con.execute("SELECT id, input, output FROM examples").fetchall():
        con.execute("UPDATE examples SET content_hash = ? WHERE id = ?", [_old_hash(i, o), row_id])
    con.execute("DELETE FROM _migrations WHERE name = 'm007_unambiguous_content_hash'")
    ids = sorted(con.execute("SELECT id FROM examples").fetchall())
    con.close()
    status = cli("status")
    assert status.code == 0
    assert status.err == ("refinery: the store's examples were rehashed (input and output are now hashed "
                          "unambiguously). Examples holding a NUL byte: 1. At ingest, each of them may have hidden a "
                          "different row as its duplicate: ingest their files again to store any row that was "
                          "skipped.\n")
    result = cli("ingest", "data/nul.jsonl", "--split", "train")
    assert result.code == 0 and "1 new examples stored, 1 duplicates skipped" in result.out
    with Store(path) as store:
        kept = store.frame("SELECT id, input, output, content_hash FROM examples")
    assert kept.height == 4 and set(ids) <= set(kept.select("id").rows())
    assert all(h == hashlib.sha256(json.dumps([i, o]).encode()).hexdigest()
               for _, i, o, h in kept.rows())


# 6, 10. arguments, paths and the file system


def test_arguments_that_are_not_utf8_are_refused_by_position(stocked: Path, cli) -> None:
    assert fails_unchanged(cli, stocked, "ingest", "bad\udcff.jsonl") == (
        "Error: argument 2 (bad\\xff.jsonl) is not valid UTF-8. refinery takes text arguments only; rename the "
        "file, or give the value in UTF-8.\n")
    assert fails_unchanged(cli, stocked, "clusters", "show", "\udcff").startswith("Error: argument 3 (\\xff) ")
    assert fails_unchanged(cli, stocked, "relabel", "abc", "--output", "caf\udce9").startswith(
        "Error: argument 4 (caf\\xe9) is not valid UTF-8.")


def test_raw_bytes_on_the_command_line_give_one_error_line(stocked: Path) -> None:
    refinery = Path(sys.executable).with_name("refinery")
    done = subprocess.run([str(refinery), b"clusters", b"show", b"\xff"], capture_output=True, text=True,
                          cwd=stocked, timeout=120)
    assert (done.returncode, done.stderr) == (1, "Error: argument 3 (\\xff) is not valid UTF-8. refinery takes text "
                                                 "arguments only; rename the file, or give the value in UTF-8.\n")


TOO_LONG = ": a name in the path is too long for the file system (255 bytes a folder or file name at most); give " \
           "a shorter path.\n"


def test_a_path_component_over_255_bytes_is_named_with_the_fix(stocked: Path, cli) -> None:
    shown = f"{'a' * 60}...{'a' * 54}.jsonl"
    assert fails_unchanged(cli, stocked, "ingest", f"{LONG}.jsonl") == f"Error: {shown}{TOO_LONG}"
    assert fails_unchanged(cli, stocked, "export", "-o", f"{LONG}.jsonl") == f"Error: {shown}{TOO_LONG}"
    err = fails_unchanged(cli, stocked, "--project", LONG, "status")
    assert err.startswith("Error: ") and err.endswith(TOO_LONG)


def test_init_under_a_file_names_the_path(tmp_path: Path, cli) -> None:
    write(tmp_path / "afile", "x\n")
    result = cli("init", str(tmp_path / "afile" / "sub"))
    assert (result.code, result.err) == (1, f"Error: {tmp_path}/afile/sub: a part of the path is a file, not a "
                                            f"folder; check the path.\n")


def test_version_prints_and_exits_zero(cli) -> None:
    from refinery import __version__
    result = cli("--version")
    assert (result.code, result.out) == (0, f"refinery {__version__}\n")


@pytest.mark.parametrize("size", [300_000, 1_000_000])
def test_status_on_a_store_cut_short_is_one_error_line(stocked: Path, cli, size: int) -> None:
    store = stocked / "runs" / "refinery.duckdb"
    whole = store.read_bytes()
    assert len(whole) > size
    store.write_bytes(whole[:size])
    result = cli("status")
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.startswith("Error: the store cannot be used: IO Error: Could not read enough bytes from file")
    assert result.err.endswith("restore the file from a copy (or move it away and ingest the data again).\n")
    assert store.read_bytes() == whole[:size]


# a fuzz over arguments and paths


HOSTILE_PATHS = st.sampled_from(["", ".", "..", "/", "/dev/null", "/dev/full", "/proc/self/mem", "data", LONG,
                                 f"data/{LONG}", "runs/refinery.duckdb", "refinery.toml", "afile/sub", "fifo",
                                 "caf\udce9.jsonl", "-", "--", "link-to-store", "hard-link-to-store",
                                 "nowhere/x.jsonl", "data/seed.jsonl"])
WORDS = st.one_of(HOSTILE_PATHS, st.text(max_size=12).filter(lambda t: "\x00" not in t),
                  st.sampled_from(["-1", "0", "1.5", "nan", "1e999", "\u00b2", "all", "train", "--json", "--force",
                                   "--help"]))
COMMANDS = st.sampled_from([("ingest",), ("ingest", "--split"), ("export", "-o"), ("export", "--split"),
                            ("export", "--format"), ("export", "--force", "-o"), ("status",), ("clusters",),
                            ("clusters", "show"), ("clusters", "--round"), ("relabel",), ("mix", "--reasoning"),
                            ("--project",), ("init",), ("examples",)])


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory) -> Path:
    """One project for every case, with a FIFO, a file where a folder is expected, and two links to the store."""
    from refinery.cli import main
    from refinery.project import init_project

    root = tmp_path_factory.mktemp("fuzz") / "proj"
    init_project(root)
    write(root / "data" / "seed.jsonl", SEED)
    write(root / "afile", "x\n")
    os.mkfifo(root / "fifo")
    before = Path.cwd()
    os.chdir(root)
    try:
        assert main(["ingest", "data/seed.jsonl", "--split", "train"]) == 0
    finally:
        os.chdir(before)
    (root / "link-to-store").symlink_to(root / "runs" / "refinery.duckdb")
    os.link(root / "runs" / "refinery.duckdb", root / "hard-link-to-store")
    return root


@pytest.mark.slow  # `make test-slow` (in .ci/run): keeps the default run under 10 minutes
@settings(max_examples=80, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(command=COMMANDS, words=st.lists(WORDS, min_size=0, max_size=3))
def test_fuzz_arguments_and_paths(fuzz_project: Path, command: tuple[str, ...], words: list[str]) -> None:
    """Any of these commands with hostile words after it: exit 0, 1 or 2 (a usage error), never a traceback; a
    failure leaves the store and the project file as they were."""
    import contextlib
    import io

    from refinery.cli import main

    store, config = fuzz_project / "runs" / "refinery.duckdb", fuzz_project / "refinery.toml"
    before, text = store_snapshot(store), config.read_bytes()
    out, err, cwd = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(fuzz_project)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*command, *words])
    finally:
        os.chdir(cwd)
    assert code in (0, 1, 2), (command, words, code, err.getvalue())
    assert "Traceback" not in out.getvalue() + err.getvalue()
    if code:
        assert store_snapshot(store) == before and config.read_bytes() == text, (command, words)


# 3. a round whose process died


def test_a_round_whose_process_died_shows_as_died_with_its_pid(stocked: Path, cli) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs: the round's process was killed (out of memory, say)
    with Store(stocked / "runs" / "refinery.duckdb") as store:
        store.con.execute("INSERT INTO rounds (number, status, config, versions, train_set_hash, pid) "
                          "VALUES (1, 'running', '{}', '{}', 'x', ?)", [gone.pid])
    result = cli("status")
    assert result.code == 0
    assert f"Last iterate: round 1 died: its process ({gone.pid}) ended before the round finished (killed, or out " \
           f"of memory?); the next `refinery iterate` restarts it" in result.out
    document = json.loads(cli("status", "--json").out)
    assert [(r["number"], r["status"], r["pid"]) for r in document["rounds"]] == [(1, "died", gone.pid)]


def test_init_into_a_read_only_folder_names_it(tmp_path: Path, cli) -> None:
    """The folder made read-only by its mode, or for root (whom modes do not stop) by chattr +i."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.access(folder, os.W_OK)
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not allowed: no way to make a folder read-only")
    try:
        result = cli("init", str(folder / "p"))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)
    reason = "not permitted" if immutable else "permission denied"
    assert (result.code, result.err) == (1, f"Error: {folder}/p: {reason}; check the permissions, or give another "
                                            f"path.\n")
    assert not (folder / "p").exists()
