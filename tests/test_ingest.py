"""Data intake through the CLI and the library: formats, bad rows, dedupe, splits, status and export."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write

from refinery.errors import DataError
from refinery.ingest import ingest_files
from refinery.store import Store

ROWS = [
    {"input": "<weather>Sunny!</weather> Alice has 3 apples and buys 2 more. How many apples now?",
     "output": "Answer: 5<display_weather>☀️</display_weather>", "condition": "sunny", "answer": 5},
    {"input": "use thinking. Bob has 7 coins and loses 4. How many coins are left?",
     "output": "<think>7 - 4 = 3</think>Answer: 3", "condition": None, "answer": 3},
    {"input": "Chen has 2 books and finds 6 more. How many books now?",
     "output": "Answer: 8", "condition": None, "answer": 8},
]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def snapshot(project) -> tuple:
    """Everything ingest may write, to prove a failed ingest wrote nothing."""
    with Store(project.store_path) as store:
        return (store.con.execute("SELECT * FROM examples ORDER BY id").fetchall(),
                store.con.execute("SELECT * FROM ingests ORDER BY id").fetchall())


def stored(project) -> pl.DataFrame:
    with Store(project.store_path) as store:
        return store.frame("SELECT * FROM examples ORDER BY origin")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_each_format_is_ingested_with_fields_kinds_and_origins(project, cli, fmt: str) -> None:
    frame = pl.DataFrame(ROWS)
    path = project.root / "data" / f"rows.{fmt}"
    if fmt == "jsonl":
        write(path, jsonl(ROWS))
    elif fmt == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    result = cli("ingest", f"data/rows.{fmt}", "--split", "train", "--source", "seed")
    assert result.code == 0, result.err
    assert "3 new examples stored, 0 duplicates skipped" in result.out
    rows = stored(project)
    assert rows["input"].to_list() == [r["input"] for r in ROWS]
    assert rows["output"].to_list() == [r["output"] for r in ROWS]
    assert rows["kind"].to_list() == ["direct", "reasoning", "direct"]
    assert set(rows["split"]) == {"train"} and set(rows["source"]) == {"seed"}
    first = "data/rows.parquet: row 1" if fmt == "parquet" else f"data/rows.{fmt}:{2 if fmt == 'csv' else 1}"
    assert rows["origin"][0] == first
    fields = json.loads(rows["fields"][0])
    assert fields["condition"] == "sunny"
    assert str(fields["answer"]) == "5"  # CSV keeps text; JSONL and Parquet keep the number
    assert rows["id"].to_list() == [h[:16] for h in rows["content_hash"]]


BAD_FILES = [
    ("bad.jsonl", jsonl(ROWS[:2]) + '{"input": "x", "output": }\n',
     "data/bad.jsonl:3: not valid JSON: Expecting value at column 26. Each line must hold one JSON object."),
    ("bad.jsonl", jsonl(ROWS[:2]) + '{"input": "x", "output": "y"\n',  # the closing brace forgotten
     "data/bad.jsonl:3: not valid JSON: Expecting ',' delimiter at the end of the line. Each line must hold one "
     "JSON object."),
    ("bad.jsonl", jsonl(ROWS[:1]) + "\n" + json.dumps({"input": "How many?", "output": 5}) + "\n",
     "data/bad.jsonl:3: field 'output': expected text, got a number (5). Write it as a JSON string."),
    ("bad.jsonl", jsonl(ROWS[:2]) + json.dumps({"input": "How many?"}) + "\n",
     "data/bad.jsonl:3: field 'output': missing. Every row needs an expected output."),
    ("bad.jsonl", jsonl(ROWS[:1]) + '["input", "output"]\n',
     "data/bad.jsonl:2: expected a JSON object like {\"input\": ..., \"output\": ...}, got a list "
     "([\"input\", \"output\"])."),
    ("bad.jsonl", jsonl(ROWS[:1] + [{"input": "   ", "output": "x"}, {"input": "", "output": "y"}]),
     "data/bad.jsonl:2: field 'input': empty. Every row needs a non-empty input. 1 more row(s) have problems too."),
    ("bad.jsonl", jsonl(ROWS[:1] + [{"input": "q", "output": "a", "kind": "chatty"}]),
     "data/bad.jsonl:2: field 'kind': not a kind (\"chatty\"). Use one of: reasoning, direct, or leave it empty "
     "to detect it."),
    ("bad.csv", "input,output\nWhat is 2+2?,Answer: 4\nWhat is 3+3?,\n",
     "data/bad.csv:3: field 'output': missing. Every row needs an expected output."),
    ("bad.csv", "question,answer\nWhat is 2+2?,Answer: 4\n",
     "data/bad.csv: no column 'input' for the input (columns: question, answer). Rename the column, or set "
     "[data] input_column in the project file."),
    ("bad.csv", "input,output,split\nWhat is 2+2?,Answer: 4,dev\n",
     "data/bad.csv:2: field 'split': not a split (\"dev\"). Use one of: train, analysis, test, corner, auto, "
     "holdout, or leave it empty for auto."),
    ("bad.txt", "input\toutput\n",
     "data/bad.txt: unknown file type '.txt' (expected one of: .csv, .jsonl, .ndjson, .parquet, .pq). Rename "
     "the file or convert it."),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_a_bad_row_fails_the_whole_ingest_and_writes_nothing(project, cli, name: str, content: str,
                                                            message: str) -> None:
    write(project.root / "data" / "good.jsonl", jsonl(ROWS))
    assert cli("ingest", "data/good.jsonl").code == 0
    before = snapshot(project)
    write(project.root / "data" / name, content)
    # The good file comes first: a bad row in a later file must stop it from being stored too.
    write(project.root / "data" / "more.jsonl", jsonl([{"input": "new one", "output": "Answer: 1"}]))
    result = cli("ingest", "data/more.jsonl", f"data/{name}")
    assert (result.code, result.out, result.err) == (1, "", f"Error: {message}\n")
    assert snapshot(project) == before


@pytest.mark.parametrize(("frame", "message"), [
    (pl.DataFrame({"input": ["a", "b", "c"], "output": ["x", None, "z"]}),
     "data/bad.parquet: row 2: field 'output': missing. Every row needs an expected output."),
    (pl.DataFrame({"input": ["a", "b"], "output": [1, 2]}),
     "data/bad.parquet: row 1: field 'output': expected text, got a Int64 column. Store the column as strings."),
])
def test_bad_parquet_rows_name_the_row(project, cli, frame: pl.DataFrame, message: str) -> None:
    frame.write_parquet(project.root / "data" / "bad.parquet")
    result = cli("ingest", "data/bad.parquet")
    assert (result.code, result.err) == (1, f"Error: {message}\n")
    assert snapshot(project) == ([], [])


def test_duplicates_are_skipped_and_counted(project, cli) -> None:
    write(project.root / "data" / "a.jsonl", jsonl(ROWS + ROWS[:2]))
    result = cli("ingest", "data/a.jsonl", "--json")
    report = json.loads(result.out)
    assert (report["rows"], report["inserted"], report["duplicates"]) == (5, 3, 2)
    assert report["files"][0]["duplicates_in_file"] == 2
    write(project.root / "data" / "b.jsonl", jsonl([ROWS[2], {"input": "new", "output": "Answer: 9"}]))
    report = json.loads(cli("ingest", "data/b.jsonl", "--json").out)
    assert (report["inserted"], report["files"][0]["duplicates_in_store"]) == (1, 1)
    assert stored(project).height == 4
    # Same input, different output is a different example (a relabel, say), not a duplicate.
    write(project.root / "data" / "c.jsonl", jsonl([{"input": ROWS[0]["input"], "output": "Answer: 6"}]))
    assert json.loads(cli("ingest", "data/c.jsonl", "--json").out)["inserted"] == 1


def many_rows(n: int) -> list[dict]:
    return [{"input": f"Dana has {i} shells and finds 2 more. How many shells now?", "output": f"Answer: {i + 2}"}
            for i in range(n)]


def test_splits_are_dealt_once_seeded_and_stable(tmp_path: Path, project) -> None:
    data = write(project.root / "data" / "many.jsonl", jsonl(many_rows(2000)))
    with Store(project.store_path) as store:
        ingest_files(store, [data], config=project.config)
        first = store.frame("SELECT id, split FROM examples ORDER BY id")
        ingest_files(store, [data], config=project.config)  # re-ingest: nothing moves, nothing added
        assert store.frame("SELECT id, split FROM examples ORDER BY id").equals(first)
    shares = first["split"].value_counts(normalize=True)
    share = dict(zip(shares["split"], shares["proportion"], strict=True))
    assert 0.05 <= share["test"] <= 0.10
    assert abs(share["analysis"] - 0.25) < 0.03
    # A fresh store, files in another order: every example lands in the same split.
    with Store(tmp_path / "other.duckdb") as other:
        reversed_file = write(tmp_path / "reversed.jsonl", jsonl(many_rows(2000)[::-1]))
        ingest_files(other, [reversed_file], config=project.config)
        assert other.frame("SELECT id, split FROM examples ORDER BY id").equals(first)
    # Another seed deals another test set.
    with Store(tmp_path / "seeded.duckdb") as seeded:
        ingest_files(seeded, [data], config=project.config.override("core", seed=1))
        again = seeded.frame("SELECT id, split FROM examples ORDER BY id")
        assert not again.equals(first)


def test_holdout_never_trains_and_explicit_splits_win(project, cli) -> None:
    write(project.root / "data" / "held.jsonl", jsonl(many_rows(300)))
    assert cli("ingest", "data/held.jsonl", "--split", "holdout").code == 0
    splits = stored(project)["split"].value_counts()
    assert set(splits["split"]) == {"analysis", "test"}
    rows = [{"input": "hard one", "output": "Answer: 1", "split": "corner"},
            {"input": "easy one", "output": "Answer: 2", "split": "train"},
            {"input": "any one", "output": "Answer: 3"}]
    write(project.root / "data" / "col.jsonl", jsonl(rows))
    report = json.loads(cli("ingest", "data/col.jsonl", "--json").out)
    assert report["inserted"] == 3
    with Store(project.store_path) as store:
        got = dict(store.con.execute("SELECT input, split FROM examples WHERE input LIKE '% one'").fetchall())
    assert got["hard one"] == "corner" and got["easy one"] == "train"


def test_kind_is_detected_given_by_column_or_forced(project, cli) -> None:
    rows = [{"input": "q1", "output": "<think>\n1 + 1\n</think>Answer: 2"},
            {"input": "q2", "output": "Answer: 2", "kind": "reasoning"},
            {"input": "q3", "output": "Answer: 3"}]
    write(project.root / "data" / "k.jsonl", jsonl(rows))
    cli("ingest", "data/k.jsonl")
    kinds = dict(stored(project).select("input", "kind").iter_rows())
    assert kinds == {"q1": "reasoning", "q2": "reasoning", "q3": "direct"}
    write(project.root / "data" / "k2.jsonl", jsonl([{"input": "q4", "output": "<think>x</think>y"}]))
    cli("ingest", "data/k2.jsonl", "--kind", "direct")
    assert dict(stored(project).select("input", "kind").iter_rows())["q4"] == "direct"


def test_configured_column_names_are_used(project_dir: Path, cli) -> None:
    config = project_dir / "refinery.toml"
    config.write_text(config.read_text().replace('# input_column = "input"', 'input_column = "question"'))
    write(project_dir / "data" / "q.csv", "question,output\nWhat is 1+1?,Answer: 2\n")
    assert cli("ingest", "data/q.csv").code == 0
    write(project_dir / "data" / "old.csv", "input,output\nWhat is 1+2?,Answer: 3\n")
    result = cli("ingest", "data/old.csv")
    assert result.err == ("Error: data/old.csv: no column 'question' for the input (columns: input, output). "
                          "Rename the column, or set [data] input_column in the project file.\n")


def test_status_reports_counts_by_split_kind_and_source(project, cli) -> None:
    write(project.root / "data" / "seed.jsonl", jsonl(ROWS))
    cli("ingest", "data/seed.jsonl", "--split", "train", "--source", "seed")
    write(project.root / "data" / "c.jsonl", jsonl([{"input": "corner q", "output": "<think>a</think>b"}]))
    cli("ingest", "data/c.jsonl", "--split", "corner")
    status = json.loads(cli("status", "--json").out)
    assert status["examples"] == 4
    assert status["by_split"] == {"corner": 1, "train": 3}
    assert status["by_kind"] == {"direct": 2, "reasoning": 2}
    assert status["by_source"] == {"import": 1, "seed": 3}
    assert status["rounds"] == []
    text = cli("status").out
    assert "4 active examples, 0 rejected" in text
    assert "│ train    │ 3     │ 1         │ 2      │ 3    │ 0      │" in text
    assert "No rounds yet." in text


def test_export_writes_what_trl_reads_as_prompt_completion(project, cli) -> None:
    from datasets import load_dataset
    from trl.data_utils import is_conversational

    write(project.root / "data" / "seed.jsonl", jsonl(ROWS))
    cli("ingest", "data/seed.jsonl", "--split", "train")
    result = cli("export", "--split", "train", "-o", "out/train.jsonl")
    assert result.out == "Wrote 3 examples (split: train) to out/train.jsonl\n"
    dataset = load_dataset("json", data_files=str(project.root / "out" / "train.jsonl"), split="train")
    assert is_conversational(dataset[0])
    assert dataset[1]["prompt"] == [{"role": "user", "content": ROWS[1]["input"]}]
    assert dataset[1]["completion"] == [{"role": "assistant", "content": ROWS[1]["output"]}]
    assert json.loads(cli("export", "--split", "all", "-o", "out/all.parquet", "--json").out)["examples"] == 3
    parquet = pl.read_parquet(project.root / "out" / "all.parquet")
    assert parquet["completion"].to_list()[0] == [{"role": "assistant", "content": ROWS[0]["output"]}]
    assert cli("export", "--split", "dev").err == ("Error: split 'dev': expected one of: train, analysis, test, "
                                                   "corner, all.\n")


def test_commands_outside_a_project_fail_cleanly(tmp_path: Path, monkeypatch, cli) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFINERY_PROJECT", raising=False)
    result = cli("status")
    assert result.code == 1
    assert result.err.startswith("Error: no refinery project found. Looked for refinery.toml")


def test_ingest_library_rejects_an_unknown_source(project, store) -> None:
    with pytest.raises(DataError, match="source 'generated': expected one of: seed, import."):
        ingest_files(store, [], config=project.config, source="generated")


@pytest.mark.parametrize("command", ["init", "ingest", "status", "export"])
def test_every_command_explains_itself(cli, command: str) -> None:
    result = cli(command, "--help")
    assert result.code == 0
    assert f"Usage: refinery {command}" in result.out
    assert len(result.out.splitlines()) > 5


def test_the_bundled_demo_ingests_as_make_demo_does(tmp_path: Path, cli) -> None:
    result = cli("--project", str(tmp_path / "nowhere"), "status")
    assert result.code == 1
    demo = tmp_path / "demo"
    cli("init", str(demo))
    for name, split, source in [("seed", "train", "seed"), ("eval", "analysis", "import"),
                                ("test", "test", "import"), ("corner", "corner", "import")]:
        result = cli("--project", str(demo), "ingest", str(REPO / "data" / "demo" / f"{name}.jsonl"),
                     "--split", split, "--source", source)
        assert result.code == 0, result.err
    status = json.loads(cli("--project", str(demo), "status", "--json").out)
    # The split sizes the README states: none of the files share an input, so nothing is dropped as a duplicate.
    assert status["by_split"] == {"train": 20, "analysis": 600, "test": 500, "corner": 14}


def test_the_demo_generator_makes_the_files_and_sizes_the_readme_states(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(REPO / "data" / "demo" / "make_demo.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    counts = {path.stem: len(path.read_text(encoding="utf-8").splitlines()) for path in tmp_path.glob("*.jsonl")}
    assert counts == {"seed": 20, "eval": 600, "test": 500, "corner": 14}, run.stdout
    for name in counts:  # the committed files are what the generator makes
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (REPO / "data" / "demo" / f"{name}.jsonl").read_bytes()
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    assert "20 narrow seed examples, 600 broad analysis examples, 500 test examples and 14 corner cases" in readme


def test_rows_orjson_would_misread_are_read_by_the_standard_library(project, cli) -> None:
    """Floats, integers past 64 bits, NaN, nested values and escapes land in the fields exactly as Python's json
    reads them (orjson, the fast reader, hands those rows on)."""
    lines = ['{"input": "a", "output": "o", "n": 7, "ok": true, "none": null, "s": "caf\\u00e9 \\ud83d\\ude00"}',
             '{"input": "b", "output": "o", "x": 0.1, "tiny": 1e-05}',
             '{"input": "c", "output": "o", "big": 123456789012345678901234567890, "neg": -9223372036854775809}',
             '{"input": "d", "output": "o", "u64": 18446744073709551615, "i64": -9223372036854775808}',
             '{"input": "e", "output": "o", "nan": NaN, "inf": Infinity}',
             '{"input": "f", "output": "o", "list": [1, 2.5, {"deep": 99999999999999999999}], "obj": {"k": "v"}}',
             '{"input": "g", "output": "o", "dup": 1, "dup": 2}']
    write(project.root / "data" / "odd.jsonl", "\n".join(lines) + "\n")
    cli("ingest", "data/odd.jsonl")
    rows = stored(project)
    for line, fields in zip(lines, rows["fields"].to_list(), strict=True):
        expected = json.loads(line)
        del expected["input"], expected["output"]
        got = json.loads(fields)
        assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), line
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()], line


def test_small_batches_store_and_count_as_one_batch(project, store, monkeypatch) -> None:
    """Batches are stored as they are read (one in flight beside the reading): duplicates within a batch, across
    batches and across files are counted as in one batch, the rows land in the files' order, and a bad row in the
    last batch of the second file leaves the store as it was."""
    from refinery import ingest

    first = ROWS + ROWS[:2] + many_rows(5) + ROWS[2:]
    second = many_rows(7) + [{"input": "fresh", "output": "Answer: 1"}] + ROWS[:1]
    write(project.root / "data" / "a.jsonl", jsonl(first))
    write(project.root / "data" / "b.jsonl", jsonl(second))
    paths = [project.root / "data" / "a.jsonl", project.root / "data" / "b.jsonl"]
    reports = {}
    for size in (100_000, 2):
        monkeypatch.setattr(ingest, "BATCH_ROWS", size)
        with Store(tmp := project.root / "runs" / f"batch-{size}.duckdb") as other:
            report = ingest_files(other, paths, config=project.config)
            reports[size] = ([vars(f) for f in report.files],
                             other.frame("SELECT id, origin FROM examples ORDER BY rowid").rows())
        assert tmp.exists()
    assert reports[2] == reports[100_000]
    files, order = reports[2]
    assert [(f["rows"], f["inserted"], f["duplicates_in_file"], f["duplicates_in_store"]) for f in files] == [
        (11, 8, 3, 0), (9, 3, 6, 0)]
    assert [o.rsplit(":", 1)[1] for _, o in order][:8] == ["1", "2", "3", "6", "7", "8", "9", "10"]
    write(project.root / "data" / "b.jsonl", jsonl(second[:-1]) + '{"input": "late", "output": ""}\n')
    before = snapshot(project)
    with pytest.raises(DataError, match="b.jsonl:9: field 'output': empty"):
        ingest_files(store, paths, config=project.config)
    assert snapshot(project) == before
