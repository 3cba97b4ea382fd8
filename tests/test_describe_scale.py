"""Describing at scale gives today's answers: the vectorised feature tests (`hypotheses.Incidence`, one bincount
for every feature) against the counting they replaced, and `analyze` on the planted-truth cases and on demo-like
failures against what the engine described before the change (tests/data/describe-golden.json, written by
`python tests/test_describe_scale.py` at 86b7139, the commit before it)."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import REPO

from refinery.stages import hypotheses
from refinery.stages.hypotheses import benjamini_hochberg, find_causes, score_features

GOLDEN = Path(__file__).parent / "data" / "describe-golden.json"


def counted_features(features: list[set[str]], failed: list[bool], *, min_count: int = 3) -> dict[str, tuple]:
    """The feature tests as the engine counted them before (Counter over each trial's set, the carrier sets as
    tuples of trial positions): {feature: (with_failed, with_total, p, q)}."""
    from scipy.stats import hypergeom

    total, fails = len(failed), int(sum(failed))
    seen, seen_failing, carriers = Counter(), Counter(), {}
    for row, (feats, bad) in enumerate(zip(features, failed, strict=True)):
        seen.update(feats)
        for f in feats:
            carriers.setdefault(f, []).append(row)
        if bad:
            seen_failing.update(feats)
    names = [f for f, n in seen.items() if min_count <= n < total]
    n_with, a = np.array([seen[f] for f in names]), np.array([seen_failing[f] for f in names])
    p = hypergeom.sf(a - 1, total, fails, n_with)
    keys = [tuple(carriers[f]) for f in names]
    group = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    index = np.array([group[k] for k in keys])
    first = np.full(len(group), -1)
    first[index[::-1]] = np.arange(len(keys))[::-1]
    q = benjamini_hochberg(p[first])[index]
    return {f: (int(a[i]), int(n_with[i]), float(p[i]), float(q[i])) for i, f in enumerate(names)}


def named_features(text: str, fields: dict | None = None, *, cues=(), known_words: set[str] | None = None) -> set[str]:
    """input_features as it was before FeatureIndex (every name formatted per input), the reference."""
    from refinery.stages.hypotheses import PUNCT, UNSEEN, WORD, _band, unseen_inside, unseen_words

    def tag_positions(text: str) -> set[str]:
        out = set()
        for m in re.finditer(r"<(\w+)>(?:.*?</\1>)?", text, re.DOTALL):
            before, after = text[:m.start()].strip(), text[m.end():].strip()
            out.add(f"the <{m.group(1)}> tag " + ("at the start" if not before else "at the end" if not after
                                                  else "in the middle"))
        return out

    plain = re.sub(r"<[^>]*>", " ", text)
    words = WORD.findall(plain)
    lower = [w.lower() for w in words]
    out = {f"the word '{w}'" for w in lower}
    out |= {f"'{a} {b}'" for a, b in zip(lower, lower[1:])}
    for token in re.findall(r"\S+", plain.lower()):
        out |= {f"the characters '{token[i:i + 3]}'" for i in range(len(token) - 2)}
    out |= {f"'{m.lower()}' touches punctuation" for m in re.findall(rf"([A-Za-z]+)[{re.escape(PUNCT)}]", text)}
    if re.search(rf"[{re.escape(PUNCT)}]\s*</\w+>", text):
        out.add("punctuation just before a closing tag")
    caps = [w for w in words if len(w) > 1 and w.isupper()]
    out |= {f"'{w}' in capitals" for w in caps}
    if caps:
        out.add("a word in capitals")
    tags = set(re.findall(r"<(\w+)>", text))
    out |= {f"a <{t}> tag" for t in tags} | tag_positions(text)
    if not tags:
        out.add("no tag at all")
    if known_words is not None:
        out |= {f for f in [UNSEEN, *(unseen_inside(t) for t in sorted(tags))] if unseen_words(text, known_words, f)}
    out |= {f"the cue of {name}" if pattern.search(text) else f"no cue of {name}" for name, pattern in cues}
    out.add(f"{_band(len(words))} words")
    for key, value in (fields or {}).items():
        if isinstance(value, (str, bool, int)) and not isinstance(value, float) and len(str(value)) <= 30:
            out.add(f"{key} = {value}")
    return out


HOSTILE = ("", "   ", "<weather>SUNNY!!</weather> Sunny, sunny. SUNNY", "<a><b>x</b></a> it's",
           "Ünïcode wörds: café! <weather>neige</weather>", "a" * 300, "<x>" * 5,
           # whitespace Python splits on and Rust's \s does not; case rules that differ
           "rain\x1cSUNNY\x1dsnow\x1e<w>x</w>\x1fend", "tab\tnew\nline\r\x0b\x0c\x85end",
           "İSTANBUL ΣΑΣ straße ǅ \u1c89x \ua7cbY", "sunny!\u2028CLOUDY?\u3000fog.", "<w>\n</w>",
           " \t<w>x</w>", "a <w>x</w>\u3000\x1c", "\x85<w>x</w>\x85 b", "<w>x</w> <v>y</v>")
# What the features of a fixed set of inputs hash to, per hypotheses.FEATURES_VERSION (see the test below).
FEATURES_DIGEST = {1: "9ee75944b3c88faf"}


def test_a_change_to_the_features_read_raises_their_version() -> None:
    """Stores keep each input's features under FEATURES_VERSION (`analyze.describe_inputs`): if what is read
    changes and the version does not, every store serves the old features. A change must raise the version."""
    import hashlib

    from bench.scale import synthetic_analysis
    from refinery.rules import load_rules

    cues = [(c.name, re.compile(c.when)) for c in load_rules(REPO / "rules").checks if c.when]
    failures, passing, _ = synthetic_analysis(300)
    rows = [(r["input"], json.loads(r["fields"])) for r in pl.concat([failures, passing]).iter_rows(named=True)]
    rows += [(t, {}) for t in HOSTILE]
    read = hypotheses.read_features([t for t, _ in rows], [f for _, f in rows], cues=cues)
    digest = hashlib.sha256(json.dumps([sorted(f) for f in read]).encode()).hexdigest()[:16]
    assert FEATURES_DIGEST.get(hypotheses.FEATURES_VERSION) == digest, (
        f"the features read changed (digest {digest}): raise hypotheses.FEATURES_VERSION and add "
        f"{{version: '{digest}'}} to FEATURES_DIGEST in this file")


def test_one_index_over_many_inputs_names_each_inputs_features_as_before() -> None:
    """The index remembers words, pairs and tokens across inputs; each input still gets exactly its own features."""
    from test_causes import planted_cases

    from bench.scale import synthetic_analysis
    from refinery.rules import load_rules

    cues = [(c.name, re.compile(c.when)) for c in load_rules(REPO / "rules").checks if c.when]
    planted, known = planted_cases()
    failures, passing, _ = synthetic_analysis(600)
    rows = [(r["input"], json.loads(r["fields"]) if r["fields"] else {})
            for frame in (planted, failures, passing) for r in frame.iter_rows(named=True)]
    rows += [(t, {}) for t in HOSTILE]
    index = hypotheses.FeatureIndex(cues=cues, known_words=known)
    for half in (rows[::2], rows[1::2]):  # two calls: the second reuses the tokens and pairs the first named
        found, ids = index.entries([t for t, _ in half], [f for _, f in half])
        for n, (text, fields) in enumerate(half):
            assert {index.names[i] for i in ids[found == n]} == named_features(
                text, fields, cues=cues, known_words=known), text


def demo_like(n: int = 1000) -> tuple[list[set[str]], dict[str, list[bool]]]:
    """Features of n demo-like inputs and, per check, which failed (bench.scale's planted failures)."""
    from bench.scale import synthetic_analysis
    from refinery.rules import load_rules
    from refinery.stages.hypotheses import read_features

    failures, passing, _ = synthetic_analysis(n)
    rows = pl.concat([failures, passing])
    cues = [(c.name, re.compile(c.when)) for c in load_rules(REPO / "rules").checks if c.when]
    features = read_features(rows["input"].to_list(), [json.loads(f) for f in rows["fields"]], cues=cues)
    checks = sorted({c for names in rows["failing"] for c in names})
    return features, {c: [c in names for names in rows["failing"]] for c in checks}


def test_every_feature_test_equals_the_counting_it_replaced() -> None:
    features, failing = demo_like()
    for check, failed in failing.items():
        counted = counted_features(features, failed)
        tests = score_features(features, failed)
        assert tests["feature"].to_list() == sorted(counted, key=lambda f: (counted[f][2], f)), check
        for row in tests.iter_rows(named=True):
            a, n, p, q = counted[row["feature"]]
            assert (row["with_failed"], row["with_total"]) == (a, n), row["feature"]
            # p from hypergeom_tail, the reference's from scipy: equal to 1e-9 (see the next test)
            assert row["p"] == pytest.approx(p, rel=1e-9, abs=1e-300), row["feature"]
            assert row["q"] == pytest.approx(q, rel=1e-9, abs=0), row["feature"]


@pytest.mark.parametrize("total", [1, 7, 60, 1_000, 125_000, 2_000_000])
def test_the_hypergeometric_tail_equals_scipys(total: int) -> None:
    """Fisher's one-sided p for every (a, drawn) at once equals scipy's hypergeom.sf, across the support and past
    both ends, from a handful of trials to two million."""
    from scipy.stats import hypergeom

    rng = np.random.default_rng(total)
    for marked in sorted({0, total, int(rng.integers(0, total + 1)), total // 2}):
        drawn = rng.integers(0, total + 1, 3000)
        a = rng.integers(-1, np.minimum(drawn, marked) + 3)
        ours, scipys = hypotheses.hypergeom_tail(a, total, marked, drawn), hypergeom.sf(a - 1, total, marked, drawn)
        assert ours == pytest.approx(scipys, rel=1e-8 if total > 1e6 else 1e-9, abs=1e-290)


def test_a_subset_of_trials_is_tested_as_the_trials_alone() -> None:
    """find_causes tests the trials no earlier cause explains: counting among them equals counting them alone."""
    features, failing = demo_like(600)
    failed = failing["emoji_correct"]
    among = np.random.default_rng(3).random(len(features)) < 0.6
    alone = score_features([f for f, keep in zip(features, among, strict=True) if keep],
                           [f for f, keep in zip(failed, among, strict=True) if keep])
    assert score_features(hypotheses.Incidence.of(features), failed, among=among).equals(alone)
    index = np.flatnonzero(among)
    assert score_features(hypotheses.Incidence.of(features).take(index), np.asarray(failed)[index]).equals(alone)


def test_causes_equal_the_engines_before_the_change() -> None:
    """find_causes on the demo-like trials, and analyze on the planted-truth cases and the demo-like failures:
    the same patterns, statements, members and figures (to 6 significant digits) as the golden file."""
    golden = json.loads(GOLDEN.read_text())
    assert described() == golden


def test_features_kept_in_the_store_describe_as_read_now(tmp_path: Path) -> None:
    """`describe_inputs` reads each input's features once and keeps them in the store: analysing the planted cases
    with them (read cold, read back, or covering only half the inputs) gives the same patterns as reading every
    feature now, cues and the unseen-word features (read each time) included. Other cues are another context."""
    from test_causes import SEVERITIES, planted_cases

    from refinery.stages.analyze import analyze, describe_inputs
    from refinery.store import Store

    planted, known = planted_cases(400)
    cues = [("think_present", re.compile(r"(?i)\bthink")), ("shout", re.compile(r"[A-Z]{4}"))]
    failures = planted.filter(pl.col("failing").list.len() > 0).drop("truth")
    passing = planted.filter(pl.col("failing").list.len() == 0).drop("truth")
    vectors = np.random.default_rng(0).normal(size=(failures.height, 16)).astype(np.float32)
    inputs = pl.concat([failures, passing]).select("input", "fields")
    distinct = inputs.unique().height

    def patterns(described=None) -> list:
        found = analyze(failures, passing, embeddings=vectors, severities=SEVERITIES, known_words=known, cues=cues,
                        described=described)
        return [_plain({k: v for k, v in vars(p).items() if k != "distances"}) for p in found]

    def kept(store: Store) -> list:
        return store.one("SELECT count(DISTINCT context), count(*), sum(len(ids)) FROM input_features")

    expected = patterns()
    assert any(p["kind"] == "cause" and p["hypothesis"]["feature"].startswith(hypotheses.UNSEEN) for p in expected)
    with Store(tmp_path / "store.duckdb") as store:
        half = describe_inputs(store, inputs.head(inputs.height // 2), cues=cues)
        assert patterns(half) == expected  # the inputs it does not hold are read now
        full = describe_inputs(store, inputs, cues=cues)
        contexts, stored, entries = kept(store)
        assert (contexts, stored) == (1, distinct) and entries == len(full.ids)
        assert patterns(full) == expected
    with Store(tmp_path / "store.duckdb") as store:
        again = describe_inputs(store, inputs, cues=cues)
        assert kept(store) == (contexts, stored, entries)  # all read back: nothing read or stored twice
        assert patterns(again) == expected
        texts, fields = again.inputs["input"].to_list(), [json.loads(f) for f in again.inputs["fields"]]
        start = np.searchsorted(again.rows, np.arange(len(texts) + 1))
        assert [{again.index.names[i] for i in again.ids[start[n]:start[n + 1]]} for n in range(len(texts))] == \
            hypotheses.read_features(texts, fields, cues=cues)
        other = describe_inputs(store, inputs, cues=cues[:1])
        assert kept(store)[:2] == (2, 2 * distinct)
        assert {other.index.names[i] for i in other.ids} == set().union(*hypotheses.read_features(
            texts, fields, cues=cues[:1]))


def described() -> dict:
    from test_causes import SEVERITIES, planted_cases

    from bench.scale import synthetic_analysis
    from refinery.stages.analyze import analyze

    features, failing = demo_like()
    causes = {check: [_plain({"feature": c.feature, "members": c.members, "test": c.test,
                              "evidence": c.evidence}) for c in find_causes(features, failed)]
              for check, failed in failing.items()}
    planted, known = planted_cases()
    failures = planted.filter(pl.col("failing").list.len() > 0)
    passing = planted.filter(pl.col("failing").list.len() == 0)
    vectors = np.random.default_rng(0).normal(size=(failures.height, 16)).astype(np.float32)
    patterns = {"planted": analyze(failures.drop("truth"), passing.drop("truth"), embeddings=vectors,
                                   severities=SEVERITIES, known_words=known)}
    failures, passing, vectors = synthetic_analysis(1000)
    patterns["demo-like"] = analyze(failures, passing, embeddings=vectors, severities=SEVERITIES)
    return {"causes": causes, **{name: [_plain({k: v for k, v in vars(p).items() if k != "distances"})
                                        for p in found] for name, found in patterns.items()}}


def _plain(value):
    """Numbers to 6 significant digits, containers as lists and dicts, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(f"{float(value):.6g}")


if __name__ == "__main__":  # write the golden file from the engine as it is now
    sys.path[:0] = [str(Path(__file__).parent), str(REPO)]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(described(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
