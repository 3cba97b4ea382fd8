"""Generate the demo's production log for `refinery drift`: inputs as the released model meets them.

    python data/demo/make_production.py    # writes production.jsonl beside this file (2,000 rows)

Deterministic (seeded). Most rows come from the evaluation sets' distribution (make_demo.eval_set, a stream of its
own); a share of them (10 % by default) drifted in two ways the training and analysis data never show: a weather
condition (hail, in several phrasings) and a new way of asking for reasoning ("show your reasoning."). Every row has
its expected output (the demo's rules, with hail shown as 🧊), the demo's fields (answer, condition, cue, ...; what
`refinery drift --add` stores with an input, as ingest would), and a timestamp over 30 days, the drift starting on
day 15. `production_set` also marks the planted rows (`drifted`), for tests; the file leaves that out.

- production.jsonl (2,000): input, expected, the demo's fields, timestamp.
"""

from __future__ import annotations

import argparse
import random
from datetime import datetime, timedelta
from pathlib import Path

from make_demo import CONDITIONS, PUNCTUATION, eval_set, example, write_jsonl

HAIL = ("🧊", ["Hail", "hail", "Hailstorm", "hailstones"])
NEW_CUE = "show your reasoning."
START = datetime(2026, 3, 1)


def drifted_example(rng: random.Random) -> dict:
    """A row with hail, the new cue, or both: the two planted drifts."""
    kind = rng.choice(["hail", "cue", "both"])
    cue = NEW_CUE if kind != "hail" else None
    if kind == "cue":
        condition = rng.choice(sorted(CONDITIONS))
        return example(rng, condition=condition, phrase=rng.choice(CONDITIONS[condition][1]), cue=cue,
                       punct=rng.choice(PUNCTUATION))
    row = example(rng, condition="sunny", phrase=rng.choice(HAIL[1]), cue=cue, punct=rng.choice(PUNCTUATION))
    row["output"] = row["output"].replace(CONDITIONS["sunny"][0], HAIL[0])  # written as sunny, shown as hail
    return {**row, "condition": "hail", "emoji": HAIL[0]}


def production_set(*, size: int = 2000, drift: float = 0.1, seed: int = 11, days: int = 30,
                   drift_from: int = 15) -> list[dict]:
    """`size` production rows, `drift` of them drifted, all after day `drift_from`; in time order."""
    rng = random.Random(seed)
    planted = set(rng.sample(range(size), round(size * drift))) if drift else set()
    normal = iter(eval_set(random.Random(f"{seed}-production"), size))
    rows = []
    for i in range(size):
        row = drifted_example(rng) if i in planted else next(normal)
        late = i in planted
        day = rng.uniform(drift_from, days) if late else rng.uniform(0, days)
        fields = {k: v for k, v in row.items() if k not in ("input", "output")}
        rows.append({"input": row["input"], "expected": row["output"], **fields, "drifted": late,
                     "timestamp": (START + timedelta(days=day)).isoformat(timespec="seconds")})
    return sorted(rows, key=lambda r: r["timestamp"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "production.jsonl")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--drift", type=float, default=0.1, help="share of drifted rows (0 for none)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rows = production_set(size=args.size, drift=args.drift, seed=args.seed)
    write_jsonl(args.out, [{k: v for k, v in r.items() if k != "drifted"} for r in rows])  # the label is the tests'

    print(f"{args.out.name}: {len(rows)} rows, {sum(r['drifted'] for r in rows)} drifted")


if __name__ == "__main__":
    main()
