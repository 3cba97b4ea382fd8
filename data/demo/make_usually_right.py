"""Generate the "usually right" scenario: the weather-tags task drawn from one natural distribution in which the
hard cases are rare, so that a model trained on a broad seed set is usually right and its failures have causes.

    python data/demo/make_usually_right.py    # writes seed, eval, test, corner and slices .jsonl to usually-right/

Every input is drawn the same way (bench/README.md, "The usually-right scenario", states it too):

| draw                      | how                                                              | of tagged | of all |
|---------------------------|------------------------------------------------------------------|-----------|--------|
| weather tag               | present                                                          |           | 0.80   |
| condition                 | common (sunny, cloudy, rain, snow), uniform                      | 0.90      | 0.72   |
| phrase                    | uniform over the condition's EVERYDAY phrases, as listed         | 0.90      | 0.72   |
| cue                       | none or "use thinking.", 50/50                                   |           | 0.92   |
| hard slice punctuation    | the weather word touches a mark: a non-empty PUNCTUATION entry   | 0.10      | 0.08   |
| hard slice unseen_phrase  | the phrase is uniform over the condition's UNCOMMON phrases      | 0.10      | 0.08   |
| hard slice rare_condition | the condition is fog, wind or storm, uniform                     | 0.10      | 0.08   |
| hard slice tag_after      | the tag comes after the question                                 | 0.10      | 0.08   |
| hard slice capitals       | the phrase is in upper case                                      | 0.10      | 0.08   |
| hard slice cue_variant    | the cue is one of the other five CUES, uniform                   |           | 0.08   |

Each hard slice is drawn independently of the others, so a row can carry several; the expected share of rows with
none is 0.92 x (0.20 + 0.80 x 0.90^5) = 0.619. Sets (each its own random stream, "{seed}-{set}"): seed (300 by
default, calibrated once so the seed-only model passes 70-85 %), eval (600, the analysis split), test (500), and
make_demo's corner set (14). Rows have exactly the demo's fields; the slice labels are derived from a row by
`slices(row)` and written to slices.jsonl, which the bench reads for per-slice pass rates and never ingests.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

# data/demo is not a package: put it on the path so this file imports make_demo both as a script and when
# loaded by path from bench/ or tests/.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from make_demo import CONDITIONS, CUES, PUNCTUATION, corner_set, example, write_jsonl  # noqa: E402

TAGGED = 0.80  # share of inputs with a <weather> tag
# Each hard slice's probability: of tagged inputs for the first five (they need a tag), of all inputs for the cue.
HARD_OF_TAGGED = {"punctuation": 0.10, "unseen_phrase": 0.10, "rare_condition": 0.10, "tag_after": 0.10,
                  "capitals": 0.10}
CUE_VARIANT = 0.08
SLICES = (*HARD_OF_TAGGED, "cue_variant")
COMMON = ("sunny", "cloudy", "rain", "snow")
RARE = ("fog", "wind", "storm")
STANDARD_CUE = "use thinking."
VARIANT_CUES = [cue for cue in CUES if cue != STANDARD_CUE]
MARKS = [mark for mark in PUNCTUATION if mark]
# The phrasings an API uses every day; every other phrase of make_demo's CONDITIONS is uncommon.
EVERYDAY = {"sunny": ["Sunny", "sunny"], "cloudy": ["Cloudy", "cloudy"], "rain": ["Rainy", "rain", "Rain"],
            "snow": ["Snow", "snowy", "Snowing"], "fog": ["Fog", "foggy"], "wind": ["Windy", "windy"],
            "storm": ["Storm", "stormy"]}
UNCOMMON = {c: [p for p in phrases if p not in EVERYDAY[c]] for c, (_, phrases) in CONDITIONS.items()}
UNCOMMON_KEYS = {p.casefold() for phrases in UNCOMMON.values() for p in phrases}
SIZES = {"seed": 300, "eval": 600, "test": 500}  # bench/README.md states these
SEED = 11


def of_all_inputs() -> dict[str, float]:
    """Each hard slice's probability among all inputs, the figure the issue caps at 0.10."""
    return {**{name: TAGGED * p for name, p in HARD_OF_TAGGED.items()}, "cue_variant": CUE_VARIANT}


def no_slice_share() -> float:
    """The expected share of inputs that carry no hard slice at all."""
    tagged_clean = 1.0
    for p in HARD_OF_TAGGED.values():
        tagged_clean *= 1 - p
    return (1 - CUE_VARIANT) * (1 - TAGGED + TAGGED * tagged_clean)


def draw_row(rng: random.Random) -> dict:
    """One row of the natural distribution. Every slice is drawn on every row, tagged or not, so the slices are
    independent of one another and of the tag, as the docs state."""
    tagged = rng.random() < TAGGED
    hard = {name: rng.random() < p for name, p in HARD_OF_TAGGED.items()}
    condition = rng.choice(RARE) if hard["rare_condition"] else rng.choice(COMMON)
    phrase = rng.choice((UNCOMMON if hard["unseen_phrase"] else EVERYDAY)[condition])
    mark = rng.choice(MARKS)
    variant, standard, which = rng.random() < CUE_VARIANT, rng.random() < 0.5, rng.choice(VARIANT_CUES)
    cue = which if variant else (STANDARD_CUE if standard else None)
    if not tagged:
        return example(rng, condition=None, phrase=None, cue=cue)
    return example(rng, condition=condition, phrase=phrase.upper() if hard["capitals"] else phrase, cue=cue,
                   punct=mark if hard["punctuation"] else "", tag_at_end=hard["tag_after"])


def draw_set(rng: random.Random, n: int) -> list[dict]:
    return [draw_row(rng) for _ in range(n)]


def slices(row: dict) -> list[str]:
    """The hard slices a row belongs to, read off its fields (the engine is never given these)."""
    out = []
    weather = row["weather"]
    if weather is not None:
        phrase = re.sub(r"\W+$", "", weather)  # every phrase ends in a letter, so what follows it is the mark
        checks = {"punctuation": phrase != weather, "unseen_phrase": phrase.casefold() in UNCOMMON_KEYS,
                  "rare_condition": row["condition"] in RARE, "tag_after": row["input"].endswith("</weather>"),
                  "capitals": phrase.isupper()}
        out += [name for name in HARD_OF_TAGGED if checks[name]]
    if row["cue"] is not None and row["cue"] != STANDARD_CUE:
        out.append("cue_variant")
    return out


def make_sets(*, seed: int = SEED, seed_size: int = SIZES["seed"], analysis_size: int = SIZES["eval"],
              test_size: int = SIZES["test"]) -> dict[str, list[dict]]:
    """The scenario's sets, each from a random stream of its own, so one set's size leaves the others as they
    are: "seed" (train), "eval" (analysis), "test", and make_demo's "corner" cases."""
    return {"seed": draw_set(random.Random(f"{seed}-seed"), seed_size),
            "eval": draw_set(random.Random(f"{seed}-eval"), analysis_size),
            "test": draw_set(random.Random(f"{seed}-test"), test_size),
            "corner": corner_set(random.Random(f"{seed}-corner"))}


def slice_rows(sets: dict[str, list[dict]]) -> list[dict]:
    """slices.jsonl: each row's set, input and slice names, for the bench's per-slice pass rates."""
    return [{"set": name, "input": row["input"], "slices": slices(row)} for name, rows in sets.items()
            for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "usually-right")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--seed-size", type=int, default=SIZES["seed"])
    parser.add_argument("--analysis-size", type=int, default=SIZES["eval"])
    parser.add_argument("--test-size", type=int, default=SIZES["test"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets = make_sets(seed=args.seed, seed_size=args.seed_size, analysis_size=args.analysis_size,
                     test_size=args.test_size)
    for name, rows in sets.items():
        write_jsonl(args.out / f"{name}.jsonl", rows)
        print(f"{name}.jsonl: {len(rows)} examples")
    write_jsonl(args.out / "slices.jsonl", slice_rows(sets))
    print(f"slices.jsonl: slice labels of all {sum(map(len, sets.values()))} rows (for the bench, never ingested)")


if __name__ == "__main__":
    main()
