"""The DuckDB store: migrations applied once, transactions all-or-nothing, a clear message when it is locked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from refinery import migrations
from refinery.errors import StoreError
from refinery.store import Store

TABLES = {"_migrations", "examples", "ingests", "rounds", "round_stages", "round_examples", "predictions",
          "rule_results", "embeddings", "clusters", "cluster_members", "generations", "pairs", "judge_verdicts",
          "judge_labels", "drift_runs", "drift_inputs", "sweeps", "sweep_arms", "feature_names", "input_features"}


def tables(path: Path) -> set[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()


def test_fresh_store_gets_every_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "refinery.duckdb"
    with Store(path) as store:
        assert store.applied_migrations() == ["m001_initial", "m002_cluster_hypothesis", "m003_review_baselines",
                                              "m004_patterns_per_cause", "m005_preference_pairs", "m006_round_plan",
                                              "m007_unambiguous_content_hash", "m008_judge_verdicts",
                                              "m009_judge_labels", "m010_drift", "m011_sweeps",
                                              "m012_examples_without_hash_index", "m013_feature_cache"]
        assert store.migrate() == []
    assert tables(path) == TABLES
    with Store(path) as store:
        assert store.migrate() == []
        assert store.scalar("SELECT count(*) FROM _migrations") == 13


def test_existing_store_gets_only_new_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "refinery.duckdb"
    with Store(path) as store:
        store.con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source) "
                          "VALUES ('a', 'h', 'in', 'out', 'direct', 'train', 'seed')")

    def m099_add_note(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("ALTER TABLE examples ADD COLUMN note VARCHAR DEFAULT 'none'")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m099_add_note])
    monkeypatch.setattr("refinery.store.MIGRATIONS", migrations.MIGRATIONS)
    with Store(path) as store:
        assert store.applied_migrations() == ["m001_initial", "m002_cluster_hypothesis", "m003_review_baselines",
                                              "m004_patterns_per_cause", "m005_preference_pairs", "m006_round_plan",
                                              "m007_unambiguous_content_hash", "m008_judge_verdicts",
                                              "m009_judge_labels", "m010_drift", "m011_sweeps",
                                              "m012_examples_without_hash_index", "m013_feature_cache",
                                              "m099_add_note"]
        assert store.con.execute("SELECT id, note FROM examples").fetchall() == [("a", "none")]
    with Store(path) as store:
        assert store.migrate() == []


def test_m003_keeps_the_rows_of_a_store_written_before_it(tmp_path: Path) -> None:
    path = tmp_path / "refinery.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)")
    for step in migrations.MIGRATIONS[:2]:
        step(con)
        con.execute("INSERT INTO _migrations (name) VALUES (?)", [step.__name__])
    con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source, status) "
                "VALUES ('a', 'h', 'in', 'out', 'direct', 'train', 'seed', 'rejected')")
    con.execute("INSERT INTO generations (round, template, input, output, outcome) VALUES (1, 't', 'i', 'o', 'leak')")
    con.execute("INSERT INTO rounds (number, status, config) VALUES (0, 'done', '{}'), (1, 'done', '{}')")
    con.close()
    with Store(path) as store:
        assert store.applied_migrations()[-1] == migrations.MIGRATIONS[-1].__name__
        assert store.frame("SELECT id, status FROM examples").rows() == [("a", "rejected")]
        assert store.frame("SELECT id, outcome FROM generations").rows() == [(1, "leak")]
        assert store.frame("SELECT number, kind FROM rounds ORDER BY number").rows() == [(0, "baseline"),
                                                                                         (1, "round")]
        with store.transaction() as c:  # the widened checks, and the id sequence carries on
            c.execute("UPDATE examples SET status = 'pending'")
            c.execute("INSERT INTO generations (round, template, input, output, outcome) "
                      "VALUES (2, 't', 'i2', 'o', 'over_cap')")
        assert store.frame("SELECT id FROM generations ORDER BY id")["id"].to_list() == [1, 2]


def test_store_from_a_newer_refinery_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "refinery.duckdb"
    with Store(path) as store:
        store.con.execute("INSERT INTO _migrations (name) VALUES ('m999_future')")
    with pytest.raises(StoreError) as err:
        Store(path)
    assert str(err.value) == (f"{path}: the store was written by a newer refinery (migration 'm999_future' is "
                              f"unknown to this one). Upgrade refinery to open it.")


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        with pytest.raises(ZeroDivisionError), store.transaction() as con:
            con.execute("INSERT INTO ingests (path, file_sha256, rows, inserted, duplicates) "
                        "VALUES ('f', 'x', 1, 1, 0)")
            _ = 1 / 0
        assert store.scalar("SELECT count(*) FROM ingests") == 0
        with store.transaction() as con:
            con.execute("INSERT INTO ingests (path, file_sha256, rows, inserted, duplicates) "
                        "VALUES ('f', 'x', 1, 1, 0)")
        assert store.scalar("SELECT count(*) FROM ingests") == 1


def test_a_store_held_by_another_process_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    Store(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('ready', flush=True); "
                               f"sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError) as err:
            Store(path, wait=0.5)
        assert str(err.value) == (f"{path}: the store is in use by another process (PID {holder.pid}). "
                                  f"Wait for it to finish or stop it, then run the command again.")
    finally:
        holder.communicate("")


def test_a_store_waits_for_a_brief_holder(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    Store(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('ready', flush=True); "
                               f"time.sleep(1.5)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with Store(path, wait=20) as store:  # opens once the other process lets go
                assert store.applied_migrations()[-1] == migrations.MIGRATIONS[-1].__name__
    finally:
        holder.wait()


def test_the_schema_enforces_its_vocabularies(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        with pytest.raises(duckdb.ConstraintException):
            store.con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source) "
                              "VALUES ('a', 'h', 'i', 'o', 'direct', 'validation', 'seed')")
        store.con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source) "
                          "VALUES ('a', 'h', 'i', 'o', 'direct', 'train', 'seed')")
        with pytest.raises(duckdb.ConstraintException):  # the id is the key (the hash is checked by the code)
            store.con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source) "
                              "VALUES ('a', 'h2', 'i2', 'o', 'direct', 'train', 'seed')")


def test_m012_rebuilds_examples_with_every_row_and_the_id_still_the_key(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A store made before m012 keeps every example, column for column; the id is still unique, the content hash
    no longer indexed (ingest, drift, generate and review look it up before they store)."""
    path = tmp_path / "refinery.duckdb"
    monkeypatch.setattr("refinery.store.MIGRATIONS", migrations.MIGRATIONS[:11])
    with Store(path) as store:
        store.con.execute("""INSERT INTO examples (id, content_hash, input, output, fields, kind, split, source,
                             parent_id, template, cluster_id, round_added, status, ingest_id, origin, feature) VALUES
                             ('a', 'h1', 'in', 'out', '{"n": 1}', 'direct', 'train', 'seed', NULL, NULL, NULL, NULL,
                              'active', 3, 'seed.jsonl:1', NULL),
                             ('b', 'h2', 'in2', 'out2', NULL, 'reasoning', 'analysis', 'generated', 'a', 't.jinja',
                              'r001-c01', 1, 'pending', NULL, NULL, 'the word ''x''')""")
        rows = store.con.execute("SELECT * FROM examples ORDER BY id").fetchall()
    monkeypatch.setattr("refinery.store.MIGRATIONS", migrations.MIGRATIONS)
    with Store(path) as store:
        assert store.applied_migrations()[-1] == migrations.MIGRATIONS[-1].__name__
        assert store.con.execute("SELECT * FROM examples ORDER BY id").fetchall() == rows
        with pytest.raises(duckdb.ConstraintException):
            store.con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source) "
                              "VALUES ('a', 'h9', 'x', 'y', 'direct', 'train', 'seed')")
        store.con.execute("INSERT INTO examples (id, content_hash, input, output, kind, split, source) "
                          "VALUES ('c', 'h1', 'x', 'y', 'direct', 'train', 'seed')")  # the hash: no index now


def test_the_content_hash_is_the_sha256_of_the_pairs_json() -> None:
    """content_hash writes json.dumps([input, output]) out by hand for speed: the same text, so the same hash as
    every store holds (m007), for escapes, non-ASCII, astral characters, lone surrogates and NUL bytes alike."""
    import hashlib
    import json

    from refinery.store import content_hash

    texts = ["", "plain", 'quote " and \\ backslash', "tab\tnew\nline\r\x00\x1f\x7f", "café ☀️ 😀 \u2028",
             "\ud800 lone", "<weather>Sunny!</weather> 3 + 2"]
    for a in texts:
        for b in texts:
            assert content_hash(a, b) == hashlib.sha256(json.dumps([a, b]).encode()).hexdigest(), (a, b)
