"""Schema migrations of the store, in order. Append-only: a shipped migration is never edited, only followed.

Each function takes a DuckDB connection inside a transaction; `Store` records its name in `_migrations` once it
has run, so every store is upgraded exactly once per migration, whether new or years old.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = []


def migration(fn: Callable[[duckdb.DuckDBPyConnection], None]) -> Callable:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    # Examples are never deleted: a rejected or relabelled example keeps its row with status 'rejected', so
    # every prediction, rule result and cluster that mentions it can still be traced.
    con.execute("""
        CREATE TABLE examples (
            id            VARCHAR PRIMARY KEY,      -- stable: the first 16 hex digits of content_hash
            content_hash  VARCHAR NOT NULL UNIQUE,  -- sha256 of input and output
            input         VARCHAR NOT NULL,
            output        VARCHAR NOT NULL,
            fields        JSON,                     -- the other columns of the source row
            kind          VARCHAR NOT NULL CHECK (kind IN ('reasoning', 'direct')),
            split         VARCHAR NOT NULL CHECK (split IN ('train', 'analysis', 'test', 'corner')),
            source        VARCHAR NOT NULL CHECK (source IN ('seed', 'import', 'generated', 'relabel')),
            parent_id     VARCHAR,                  -- generated: the example it was made from; relabel: the old one
            template      VARCHAR,                  -- generated: the template that rendered it
            cluster_id    VARCHAR,                  -- generated: the failure pattern it targets
            round_added   INTEGER,                  -- generated/relabel: the round; ingested: NULL
            status        VARCHAR NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'rejected')),
            ingest_id     INTEGER,                  -- ingested: which ingest brought it
            origin        VARCHAR,                  -- ingested: file:line it came from
            created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("CREATE SEQUENCE ingest_ids START 1")
    con.execute("""
        CREATE TABLE ingests (
            id          INTEGER PRIMARY KEY DEFAULT nextval('ingest_ids'),
            path        VARCHAR NOT NULL,
            file_sha256 VARCHAR NOT NULL,
            rows        INTEGER NOT NULL,
            inserted    INTEGER NOT NULL,
            duplicates  INTEGER NOT NULL,
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("""
        CREATE TABLE rounds (
            number          INTEGER PRIMARY KEY,    -- 0 is the baseline
            status          VARCHAR NOT NULL CHECK (status IN ('running', 'done', 'failed')),
            config          JSON NOT NULL,          -- the resolved config snapshot
            versions        JSON,                   -- library versions
            train_set_hash  VARCHAR,
            adapter_path    VARCHAR,                -- weights on disk, path here
            metrics         JSON,                   -- per split and per check
            error           VARCHAR,
            pid             INTEGER,
            started_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
            finished_at     TIMESTAMP
        )""")
    con.execute("""
        CREATE TABLE round_stages (
            round        INTEGER NOT NULL,
            stage        VARCHAR NOT NULL,          -- train, infer, evaluate, analyze, generate, record
            status       VARCHAR NOT NULL CHECK (status IN ('running', 'done', 'failed')),
            detail       JSON,
            started_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
            finished_at  TIMESTAMP,
            seconds      DOUBLE,
            PRIMARY KEY (round, stage)
        )""")
    con.execute("""
        CREATE TABLE round_examples (               -- exactly what each round trained on
            round       INTEGER NOT NULL,
            example_id  VARCHAR NOT NULL,
            PRIMARY KEY (round, example_id)
        )""")
    con.execute("""
        CREATE TABLE predictions (
            round       INTEGER NOT NULL,
            example_id  VARCHAR NOT NULL,
            variant     VARCHAR NOT NULL DEFAULT '', -- '' as stored; e.g. 'cue-on'/'cue-off' for mix evals
            prompt      VARCHAR NOT NULL,
            output      VARCHAR NOT NULL,
            tokens      INTEGER NOT NULL,
            latency_ms  DOUBLE,
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (round, example_id, variant)
        )""")
    con.execute("""
        CREATE TABLE rule_results (
            round       INTEGER NOT NULL,
            example_id  VARCHAR NOT NULL,
            variant     VARCHAR NOT NULL DEFAULT '',
            rule_file   VARCHAR NOT NULL,
            check_name  VARCHAR NOT NULL,
            applies     BOOLEAN NOT NULL,           -- false when the check's `when` did not match the input
            passed      BOOLEAN,                    -- NULL when it does not apply
            severity    DOUBLE NOT NULL DEFAULT 1.0,
            detail      VARCHAR,
            PRIMARY KEY (round, example_id, variant, check_name)
        )""")
    con.execute("""
        CREATE TABLE embeddings (
            example_id  VARCHAR NOT NULL,
            model       VARCHAR NOT NULL,
            text_kind   VARCHAR NOT NULL,           -- what was embedded: 'input', 'failure', ...
            text_hash   VARCHAR NOT NULL,           -- recompute only when the text changed
            vector      FLOAT[] NOT NULL,
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (example_id, model, text_kind)
        )""")
    con.execute("""
        CREATE TABLE clusters (
            id            VARCHAR PRIMARY KEY,      -- 'r003-c02': round 3, cluster 2
            round         INTEGER NOT NULL,
            rank          INTEGER NOT NULL,         -- 1 is the worst
            label         VARCHAR,
            statement     VARCHAR,                  -- the hypothesis a person can check
            size          INTEGER NOT NULL,
            score         DOUBLE NOT NULL,
            score_parts   JSON,
            checks        JSON,                     -- failing checks and their counts
            evidence      JSON,                     -- features tested: rates inside/outside, lift, p, q
            status        VARCHAR NOT NULL DEFAULT 'proposed'
                          CHECK (status IN ('proposed', 'accepted', 'rejected', 'merged')),
            merged_into   VARCHAR,
            created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("""
        CREATE TABLE cluster_members (
            cluster_id      VARCHAR NOT NULL,
            example_id      VARCHAR NOT NULL,
            variant         VARCHAR NOT NULL DEFAULT '',
            distance        DOUBLE,
            representative  BOOLEAN NOT NULL DEFAULT false,
            PRIMARY KEY (cluster_id, example_id, variant)
        )""")
    # Every counterexample a template rendered, stored or not: a rejected candidate is reported with its reason.
    con.execute("CREATE SEQUENCE generation_ids START 1")
    con.execute("""
        CREATE TABLE generations (
            id           INTEGER PRIMARY KEY DEFAULT nextval('generation_ids'),
            round        INTEGER NOT NULL,
            cluster_id   VARCHAR,
            template     VARCHAR NOT NULL,
            parent_id    VARCHAR,
            input        VARCHAR NOT NULL,
            output       VARCHAR NOT NULL,
            targets      JSON,                      -- the checks it was made to pass
            outcome      VARCHAR NOT NULL CHECK (outcome IN ('stored', 'duplicate', 'leak', 'failed_checks')),
            example_id   VARCHAR,                   -- the stored (or already present) example
            detail       VARCHAR,
            created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")


@migration
def m002_cluster_hypothesis(con: duckdb.DuckDBPyConnection) -> None:
    # The feature a cluster's statement names, so later rounds can count the same check on the same feature.
    con.execute("ALTER TABLE clusters ADD COLUMN hypothesis JSON")


@migration
def m003_review_baselines(con: duckdb.DuckDBPyConnection) -> None:
    # Generated examples may wait for a person's review ('pending'), candidates cut by a budget are logged
    # ('over_cap'), and a round says what it is: a training round, the few-shot baseline (round 0) or the
    # production model a project compares with (round -1). DuckDB cannot alter a CHECK, so the two tables are
    # rebuilt with their rows.
    con.execute("ALTER TABLE rounds ADD COLUMN kind VARCHAR NOT NULL DEFAULT 'round'")
    con.execute("UPDATE rounds SET kind = 'baseline' WHERE number = 0")
    con.execute("ALTER TABLE rounds ADD COLUMN stop_reason VARCHAR")  # set on the last round of an iterate run
    con.execute("ALTER TABLE rounds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")  # an interrupted round restarts
    con.execute("ALTER TABLE examples RENAME TO examples_m002")
    con.execute("""
        CREATE TABLE examples (
            id            VARCHAR PRIMARY KEY,
            content_hash  VARCHAR NOT NULL UNIQUE,
            input         VARCHAR NOT NULL,
            output        VARCHAR NOT NULL,
            fields        JSON,
            kind          VARCHAR NOT NULL CHECK (kind IN ('reasoning', 'direct')),
            split         VARCHAR NOT NULL CHECK (split IN ('train', 'analysis', 'test', 'corner')),
            source        VARCHAR NOT NULL CHECK (source IN ('seed', 'import', 'generated', 'relabel')),
            parent_id     VARCHAR,
            template      VARCHAR,
            cluster_id    VARCHAR,
            round_added   INTEGER,
            status        VARCHAR NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'pending', 'rejected')),
            ingest_id     INTEGER,
            origin        VARCHAR,
            created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("INSERT INTO examples SELECT * FROM examples_m002")
    con.execute("DROP TABLE examples_m002")
    con.execute("ALTER TABLE generations RENAME TO generations_m002")
    con.execute("""
        CREATE TABLE generations (
            id           INTEGER PRIMARY KEY DEFAULT nextval('generation_ids'),
            round        INTEGER NOT NULL,
            cluster_id   VARCHAR,
            template     VARCHAR NOT NULL,
            parent_id    VARCHAR,
            input        VARCHAR NOT NULL,
            output       VARCHAR NOT NULL,
            targets      JSON,
            outcome      VARCHAR NOT NULL
                         CHECK (outcome IN ('stored', 'pending', 'duplicate', 'leak', 'failed_checks', 'over_cap')),
            example_id   VARCHAR,
            detail       VARCHAR,
            created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("INSERT INTO generations SELECT * FROM generations_m002")
    con.execute("DROP TABLE generations_m002")


@migration
def m004_patterns_per_cause(con: duckdb.DuckDBPyConnection) -> None:
    # A pattern is one cause: a check and the input feature under which it fails ('cause'), a check failing on every
    # input it applies to ('all'), or an embedding cluster of failures no feature explains ('cluster', with its own
    # test against the rest). A generated example records the feature it was rendered to carry, and whether its
    # input does carry it (NULL when it was not aimed at a feature).
    con.execute("ALTER TABLE clusters ADD COLUMN kind VARCHAR NOT NULL DEFAULT 'cluster'")
    con.execute("ALTER TABLE clusters ADD COLUMN feature VARCHAR")
    con.execute("ALTER TABLE clusters ADD COLUMN p DOUBLE")
    con.execute("ALTER TABLE clusters ADD COLUMN q DOUBLE")
    con.execute("ALTER TABLE clusters ADD COLUMN budget INTEGER")  # counterexamples this round's share gave it
    con.execute("ALTER TABLE generations ADD COLUMN feature VARCHAR")
    con.execute("ALTER TABLE generations ADD COLUMN carries BOOLEAN")
    con.execute("ALTER TABLE examples ADD COLUMN feature VARCHAR")


@migration
def m005_preference_pairs(con: duckdb.DuckDBPyConnection) -> None:
    # Preference pairs a round collected from its failures (`[train] objective = "sft+dpo"` trains on them): the
    # expected output chosen, the model's output rejected, with the example, pattern and checks they came from.
    # Skipped ones are kept with their reason ('leak': its prompt is, or nearly is, a test or corner input;
    # 'duplicate': the same prompt, chosen and rejected as a pair already kept).
    con.execute("CREATE SEQUENCE pair_ids START 1")
    con.execute("""
        CREATE TABLE pairs (
            id            INTEGER PRIMARY KEY DEFAULT nextval('pair_ids'),
            round         INTEGER NOT NULL,         -- the round whose model gave the rejected output
            example_id    VARCHAR NOT NULL,         -- the analysis example, or the counterexample's example id
            pattern       VARCHAR,                  -- the round's cluster it is a member of, if any
            checks        JSON,                     -- the failing checks of the rejected output
            source        VARCHAR NOT NULL CHECK (source IN ('analysis', 'counterexample')),
            prompt        VARCHAR NOT NULL,         -- the input, as stored (rendered at training time)
            chosen        VARCHAR NOT NULL,
            rejected      VARCHAR NOT NULL,
            pair_hash     VARCHAR NOT NULL,         -- sha256 of prompt, chosen and rejected
            status        VARCHAR NOT NULL CHECK (status IN ('active', 'leak', 'duplicate', 'rejected')),
            detail        VARCHAR,
            created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")


@migration
def m006_round_plan(con: duckdb.DuckDBPyConnection) -> None:
    # How a round shared its budget (targeting.Plan as JSON): budget, failing share of the analysis split, examples
    # from random parents (exploration), each pattern's share, and the sentence that says why.
    con.execute("ALTER TABLE rounds ADD COLUMN plan JSON")


@migration
def m007_unambiguous_content_hash(con: duckdb.DuckDBPyConnection) -> None:
    # content_hash was sha256 of input, a NUL byte and output, so ("p\0q", "r") and ("p", "q\0r") hashed alike and
    # ingest dropped the second as a duplicate of the first. Rehash every example from the JSON of the pair (the
    # encoding store.content_hash uses from now on, written out here so that this migration never changes). Ids stay
    # as they are: results, lineage and pairs point at them. Distinct rows had distinct old hashes, so they get
    # distinct new ones; a row holding a NUL byte may have hidden another at ingest, which is said on stderr.
    import hashlib
    import json
    import sys

    import polars as pl

    rows = con.sql("SELECT id, input, output FROM examples").pl()
    if rows.is_empty():
        return
    hashes = [hashlib.sha256(json.dumps([i, o]).encode()).hexdigest()
              for i, o in zip(rows["input"], rows["output"], strict=True)]
    con.register("rehashed", pl.DataFrame({"id": rows["id"], "content_hash": hashes}))
    con.execute("UPDATE examples SET content_hash = r.content_hash FROM rehashed r WHERE examples.id = r.id")
    con.unregister("rehashed")
    holding = rows.filter(pl.col("input").str.contains("\x00", literal=True)
                          | pl.col("output").str.contains("\x00", literal=True)).height
    if holding:
        print(f"refinery: the store's examples were rehashed (input and output are now hashed unambiguously). "
              f"Examples holding a NUL byte: {holding}. At ingest, each of them may have hidden a different row as "
              f"its duplicate: ingest their files again to store any row that was skipped.", file=sys.stderr)


@migration
def m008_judge_verdicts(con: duckdb.DuckDBPyConnection) -> None:
    # A judge model's answers to judge checks' prompts, keyed by sha256 of (judge, rubric, prompt): evaluating the
    # same output again (a rerun, a round's evaluation repeated) asks the judge nothing.
    con.execute("""
        CREATE TABLE judge_verdicts (
            key         VARCHAR PRIMARY KEY,
            judge       VARCHAR NOT NULL,           -- the judge model, as configured
            answer      VARCHAR NOT NULL,           -- its raw answer; refinery/judge.py parses the verdict
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")


@migration
def m009_judge_labels(con: duckdb.DuckDBPyConnection) -> None:
    # A person's verdicts on judge results (`refinery judge label`): one per round, example, variant and judge check,
    # the output the judge saw. `refinery judge calibrate` reads the judge's agreement with them.
    con.execute("""
        CREATE TABLE judge_labels (
            round       INTEGER NOT NULL,
            example_id  VARCHAR NOT NULL,
            variant     VARCHAR NOT NULL DEFAULT '',
            check_name  VARCHAR NOT NULL,
            passed      BOOLEAN NOT NULL,           -- the person's verdict on the output
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (round, example_id, variant, check_name)
        )""")


@migration
def m010_drift(con: duckdb.DuckDBPyConnection) -> None:
    # `refinery drift`: each run's figures, and the production inputs it sampled that wait for an expected output
    # (kept apart from the examples, so never scored); `refinery relabel ID --output TEXT` makes one an analysis
    # example. Sampled inputs that came with one are examples at once (source 'import', origin 'drift N: ...').
    con.execute("""
        CREATE TABLE drift_runs (
            id          INTEGER PRIMARY KEY,
            files       JSON NOT NULL,              -- the production files compared
            production  INTEGER NOT NULL,           -- their rows
            reference   INTEGER NOT NULL,           -- train and analysis inputs compared with
            drifted     BOOLEAN NOT NULL,           -- a feature or the embedding test stood out
            summary     JSON NOT NULL,              -- drift.DriftReport.to_json()
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("""
        CREATE TABLE drift_inputs (
            id          VARCHAR PRIMARY KEY,        -- 'd' and 15 hex digits of sha256 of the input
            run         INTEGER NOT NULL,           -- the drift run that sampled it
            input       VARCHAR NOT NULL,
            output      VARCHAR,                    -- what the model answered in production, if logged
            origin      VARCHAR NOT NULL,           -- file:line
            drift_group VARCHAR,                    -- the drifting feature or far group it was sampled from
            example_id  VARCHAR,                    -- once relabelled: the analysis example it became
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")


@migration
def m011_sweeps(con: duckdb.DuckDBPyConnection) -> None:
    # `refinery sweep`: each sweep (keyed by what it trains on and with: the round, the grid, the budget and the
    # settings the arms start from) and each finished arm, written as it finishes, so that a sweep run again after
    # an interruption trains only the arms it had not finished.
    con.execute("""
        CREATE TABLE sweeps (
            id          INTEGER PRIMARY KEY,
            key         VARCHAR NOT NULL UNIQUE,    -- sha256 of round, grid, budget and the base settings
            round       INTEGER,                    -- whose training set the arms train on (NULL: the train split)
            grid        JSON NOT NULL,
            document    JSON,                       -- the finished sweep's figures; NULL while arms remain
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""")
    con.execute("""
        CREATE TABLE sweep_arms (
            sweep       INTEGER NOT NULL,
            arm         INTEGER NOT NULL,
            row         JSON NOT NULL,              -- its figures (settings, pass rates, seconds, sizes)
            passed      JSON NOT NULL,              -- test example id -> passed, for the paired test
            PRIMARY KEY (sweep, arm)
        )""")


@migration
def m012_examples_without_hash_index(con: duckdb.DuckDBPyConnection) -> None:
    # The UNIQUE index on content_hash cost a million-row ingest half its time (about 4 s to insert and 4 s to
    # commit, measured) and half a gigabyte. Every path that stores an example looks its content hash up first
    # (ingest and drift by anti-join, generate and review by query), so the index only repeated that check; the
    # id stays the primary key. DuckDB cannot drop a constraint, so the table is rebuilt with its rows.
    con.execute("ALTER TABLE examples RENAME TO examples_m011")
    con.execute("""
        CREATE TABLE examples (
            id            VARCHAR PRIMARY KEY,
            content_hash  VARCHAR NOT NULL,
            input         VARCHAR NOT NULL,
            output        VARCHAR NOT NULL,
            fields        JSON,
            kind          VARCHAR NOT NULL CHECK (kind IN ('reasoning', 'direct')),
            split         VARCHAR NOT NULL CHECK (split IN ('train', 'analysis', 'test', 'corner')),
            source        VARCHAR NOT NULL CHECK (source IN ('seed', 'import', 'generated', 'relabel')),
            parent_id     VARCHAR,
            template      VARCHAR,
            cluster_id    VARCHAR,
            round_added   INTEGER,
            status        VARCHAR NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'pending', 'rejected')),
            ingest_id     INTEGER,
            origin        VARCHAR,
            created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
            feature       VARCHAR
        )""")
    con.execute("INSERT INTO examples SELECT * FROM examples_m011")
    con.execute("DROP TABLE examples_m011")


@migration
def m013_feature_cache(con: duckdb.DuckDBPyConnection) -> None:
    # Analysis reads every distinct input's features (words, pairs, 3-grams, tags, cues, fields) each round, seconds
    # at 100,000 failures for inputs that did not change; they are kept like embeddings. `context` is the version
    # of the feature code and the rules' cues they were read with (analyze.feature_context): another context never
    # reads them. An input's ids name features in feature_names of the same context.
    con.execute("""
        CREATE TABLE feature_names (
            context     VARCHAR NOT NULL,
            id          INTEGER NOT NULL,
            name        VARCHAR NOT NULL,
            PRIMARY KEY (context, id)
        )""")
    con.execute("""
        CREATE TABLE input_features (
            context     VARCHAR NOT NULL,
            input_key   VARCHAR NOT NULL,           -- sha256 of the input and its fields (JSON text), as JSON
            ids         INTEGER[] NOT NULL,
            PRIMARY KEY (context, input_key)
        )""")
