"""Generate the weather-tags demo data: a narrow seed set and broad evaluation and corner sets.

    python data/demo/make_demo.py    # writes seed.jsonl, eval.jsonl, test.jsonl, corner.jsonl beside this file

Deterministic (seeded). The seed set is narrow on purpose (two conditions, one spelling, one cue), the way a real
project starts; the evaluation sets are broad (punctuation and case variants, synonyms, conditions the seed never
shows, cues on and off), so the first rounds fail in patterns the engine has to find on its own.

- seed.jsonl (20): the training split's start.
- eval.jsonl (600): the analysis split, whose failures the engine mines.
- test.jsonl (500): the test split, drawn from the same distribution as eval.jsonl by a stream of its own, so it
  is a random sample never mined; 500 examples make one example 0.2 points, so arms 5 points apart separate.
- corner.jsonl (14): hand-picked hard cases, reported apart.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# Each condition: the emoji the output must show, and the ways an API might phrase it.
CONDITIONS = {
    "sunny": ("☀️", ["Sunny", "sunny", "Clear", "clear skies", "Bright sunshine", "sunshine"]),
    "cloudy": ("☁️", ["Cloudy", "cloudy", "Overcast", "overcast", "grey skies"]),
    "rain": ("🌧️", ["Rainy", "rain", "Rain", "Drizzle", "light drizzle", "showers"]),
    "snow": ("❄️", ["Snow", "snowy", "Snowing", "flurries", "light snow"]),
    "fog": ("🌫️", ["Fog", "foggy", "Mist", "misty"]),
    "wind": ("💨", ["Windy", "windy", "Gusty winds", "breezy"]),
    "storm": ("⛈️", ["Thunderstorm", "thunderstorms", "Storm", "stormy"]),
}
SEED_CONDITIONS = {"sunny": ["Sunny"], "rain": ["Rainy"]}
PUNCTUATION = ["", "!", ".", "!!", ",", "?", "...", " :)"]
CUES = ["use thinking.", "Use thinking.", "use thinking!", "please use thinking.", "USE THINKING.", "think it through."]
SEED_CUES = ["use thinking."]
SIZES = {"seed": 20, "eval": 600, "test": 500, "corner": 14}  # README.md states these
NAMES = ["Alice", "Bob", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena"]
OBJECTS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "stamps", "shells", "cards"]


def problem(rng: random.Random) -> tuple[str, str, int]:
    """A word problem, its worked arithmetic, and its answer."""
    name, thing = rng.choice(NAMES), rng.choice(OBJECTS)
    a, b = rng.randint(2, 20), rng.randint(1, 9)
    if rng.random() < 0.5:
        verb = rng.choice(["buys", "finds", "gets", "is given"])
        return f"{name} has {a} {thing} and {verb} {b} more. How many {thing} now?", f"{a} + {b} = {a + b}", a + b
    b = min(b, a - 1)
    verb = rng.choice(["gives away", "loses", "eats" if thing == "cookies" else "sells", "uses"])
    return f"{name} has {a} {thing} and {verb} {b}. How many {thing} are left?", f"{a} - {b} = {a - b}", a - b


def example(rng: random.Random, *, condition: str | None, phrase: str | None, cue: str | None,
            punct: str = "", tag_at_end: bool = False) -> dict:
    text, work, answer = problem(rng)
    parts = [text]
    if cue:
        parts.insert(0, cue)
    weather = None
    if condition:
        weather = f"{phrase}{punct}"
        tag = f"<weather>{weather}</weather>"
        parts = parts + [tag] if tag_at_end else [tag] + parts
    output = (f"<think>{work}</think>" if cue else "") + f"Answer: {answer}"
    if condition:
        output += f"<display_weather>{CONDITIONS[condition][0]}</display_weather>"
    emoji = CONDITIONS[condition][0] if condition else None
    return {"input": " ".join(parts), "output": output, "weather": weather, "condition": condition,
            "emoji": emoji, "think": bool(cue), "cue": cue, "answer": answer, "problem": text, "work": work}


def seed_set(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        condition = None if i % 5 == 4 else rng.choice(sorted(SEED_CONDITIONS))
        phrase = rng.choice(SEED_CONDITIONS[condition]) if condition else None
        cue = SEED_CUES[0] if i % 2 == 0 else None
        rows.append(example(rng, condition=condition, phrase=phrase, cue=cue))
    return rows


def eval_set(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        condition = None if rng.random() < 0.2 else rng.choice(sorted(CONDITIONS))
        phrase = rng.choice(CONDITIONS[condition][1]) if condition else None
        punct = rng.choice(PUNCTUATION) if condition else ""
        if phrase and rng.random() < 0.15:
            phrase = phrase.upper()
        cue = rng.choice(CUES) if rng.random() < 0.5 else None
        rows.append(example(rng, condition=condition, phrase=phrase, cue=cue, punct=punct))
    return rows


def corner_set(rng: random.Random) -> list[dict]:
    """Hand-picked hard cases: tag after the question, odd punctuation, unusual phrasing."""
    rows = [example(rng, condition="sunny", phrase="sunny", cue=None, punct="!!!", tag_at_end=True),
            example(rng, condition="rain", phrase="RAIN", cue="USE THINKING.", punct="?!"),
            example(rng, condition="snow", phrase="flurries", cue=None, punct=" :)", tag_at_end=True),
            example(rng, condition="fog", phrase="Mist", cue="think it through.", punct="..."),
            example(rng, condition="storm", phrase="thunderstorms", cue=None, punct=","),
            example(rng, condition=None, phrase=None, cue="please use thinking."),
            example(rng, condition=None, phrase=None, cue=None)]
    for condition, (_, phrases) in CONDITIONS.items():
        rows.append(example(rng, condition=condition, phrase=phrases[-1], cue=rng.choice(CUES + [None]),
                            punct=rng.choice(PUNCTUATION), tag_at_end=True))
    return rows


def make_sets(*, seed: int = 7, eval_size: int = 600, test_size: int = 500) -> dict[str, list[dict]]:
    """Every set of the demo; the test set has a random stream of its own, so its size leaves the others as
    they are."""
    rng = random.Random(seed)
    sets = {"seed": seed_set(rng, SIZES["seed"]), "eval": eval_set(rng, eval_size), "corner": corner_set(rng)}
    sets["test"] = eval_set(random.Random(f"{seed}-test"), test_size)
    return sets


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--eval-size", type=int, default=SIZES["eval"])
    parser.add_argument("--test-size", type=int, default=SIZES["test"])
    args = parser.parse_args()
    for name, rows in make_sets(seed=args.seed, eval_size=args.eval_size, test_size=args.test_size).items():
        write_jsonl(args.out / f"{name}.jsonl", rows)
        print(f"{name}.jsonl: {len(rows)} examples")


if __name__ == "__main__":
    main()
