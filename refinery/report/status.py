"""What the store holds: examples by split, kind and source, and the last rounds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from refinery.store import Store, process_alive


@dataclass
class Status:
    store: str
    examples: int
    rejected: int
    pending: int
    counts: pl.DataFrame  # split, kind, source, examples (active examples only)
    rounds: list[dict[str, Any]]
    sweep: dict[str, Any] | None = None  # the latest finished sweep (recipe or mix): its number, set and verdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "examples": self.examples,
            "rejected": self.rejected,
            "pending": self.pending,
            "by_split": self.totals("split"),
            "by_kind": self.totals("kind"),
            "by_source": self.totals("source"),
            "counts": self.counts.to_dicts(),
            "rounds": self.rounds,
            "sweep": self.sweep,
        }

    @property
    def last_iterate(self) -> str | None:
        """How the last `iterate` ended, from its last training round: stopped (and why), failed or running."""
        last = next((r for r in reversed(self.rounds) if r["kind"] == "round"), None)
        if last is None:
            return None
        if last["status"] == "running":
            return f"round {last['number']} is running (process {last['pid']})"
        if last["status"] == "died":
            return (f"round {last['number']} died: its process ({last['pid']}) ended before the round finished "
                    f"(killed, or out of memory?); the next `refinery iterate` restarts it")
        if last["status"] != "done":
            reason = (last["error"] or "").split(": ", 1)[-1] or "no reason recorded"
            return (f"round {last['number']} did not finish ({reason}); the next `refinery iterate` restarts "
                    f"it")
        return f"stopped: {last['stop_reason']}" if last["stop_reason"] else None

    def totals(self, column: str) -> dict[str, int]:
        grouped = self.counts.group_by(column).agg(pl.col("examples").sum()).sort(column)
        return {key: int(value) for key, value in grouped.iter_rows()}


def project_status(store: Store, *, last_rounds: int = 5) -> Status:
    """Counts of active examples and the most recent rounds, newest last."""
    counts = store.frame("""
        SELECT split, kind, source, count(*)::INTEGER AS examples FROM examples WHERE status = 'active'
        GROUP BY ALL ORDER BY split, kind, source""")
    rounds = store.frame("""
        SELECT number, kind, status, pid, metrics, stop_reason, error, started_at, finished_at,
               CASE WHEN kind = 'round' THEN date_diff('millisecond', started_at, finished_at) / 1000.0
                    ELSE (SELECT sum(s.seconds) FROM round_stages s WHERE s.round = number) END AS seconds
        FROM rounds ORDER BY number DESC LIMIT ?""", [last_rounds]).reverse()
    return Status(
        store=str(store.path),
        examples=int(counts["examples"].sum()),
        rejected=store.scalar("SELECT count(*) FROM examples WHERE status = 'rejected'"),
        pending=store.scalar("SELECT count(*) FROM examples WHERE status = 'pending'"),
        counts=counts,
        rounds=[_round_row(row) for row in rounds.iter_rows(named=True)],
        sweep=_sweep_line(store),
    )


def _sweep_line(store: Store) -> dict[str, Any] | None:
    """The latest finished sweep, recipe or mix: its number, set, grid, arms and verdict."""
    found = store.one("SELECT document FROM sweeps WHERE document IS NOT NULL ORDER BY id DESC LIMIT 1")
    if found is None:
        return None
    latest = json.loads(found[0])
    return {k: latest[k] for k in ("sweep", "round", "grid", "train_examples", "best", "verdict")} | {
        "arms": len(latest["rows"])}


def _round_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": row["number"],
        "kind": row["kind"],
        "status": round_state(row["status"], row["pid"]),
        "pid": row["pid"],
        "stop_reason": row["stop_reason"],
        "error": row["error"],
        "metrics": json.loads(row["metrics"]) if row["metrics"] else None,
        "started_at": row["started_at"].isoformat(timespec="seconds"),
        "finished_at": row["finished_at"].isoformat(timespec="seconds") if row["finished_at"] else None,
        "seconds": row["seconds"],
    }


def round_state(status: str, pid: int | None) -> str:
    """A round's status as a person should read it: 'running' only while its process lives, else 'died' (killed,
    or out of memory, with no chance to record why); other statuses as stored."""
    if status == "running" and pid and not process_alive(pid):
        return "died"
    return status


def latest_sweeps(store: Store) -> dict[str, dict[str, Any] | None]:
    """The newest finished mix sweep (`refinery mix --sweep`: reasoning_share alone) and the newest other sweep
    (`refinery sweep`), as stored, or None."""
    found: dict[str, dict[str, Any] | None] = {"mix": None, "recipe": None}
    for text in store.frame("SELECT document FROM sweeps WHERE document IS NOT NULL ORDER BY id DESC")["document"]:
        document = json.loads(text)
        kind = "mix" if list(document["grid"]) == ["reasoning_share"] else "recipe"
        found[kind] = found[kind] or document
        if all(found.values()):  # the newest of each: older documents are not read
            break
    return found
