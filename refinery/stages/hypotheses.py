"""Hypotheses a person can check: which input features make a check fail more often, with the statistics.

For one check, every analysis example it applies to is a trial (failed or passed). Each readable feature of the
input (words, word pairs, character 3-grams, a word touching punctuation, capitals, tags and where they stand, rule
cues, a word never seen in training, length bands, example fields) is tested: failure rate with and without it,
lift, and a one-sided Fisher exact p-value, adjusted for every feature tried with the Benjamini-Hochberg
false-discovery rate. `find_causes` repeats the test, setting aside each cause's carriers, so that one check can
have several causes.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl

PUNCT = "!?.,:;)"
FEATURES_VERSION = 1  # raise it whenever the features read from an input change: the store then reads them anew
UNSEEN = "a word never seen in training"
WORD = re.compile(r"[A-Za-z][A-Za-z']*")


TAG_TEXT = re.compile(r"<[^>]*>")
PY_SPACE = r"[\x1c-\x1f]"  # whitespace to Python's str.split, not to Rust's \s (found by trying every code point)
TOUCHING = re.compile(rf"([A-Za-z]+)[{re.escape(PUNCT)}]")
BEFORE_CLOSING = re.compile(rf"[{re.escape(PUNCT)}]\s*</\w+>")
OPENING = re.compile(r"<(\w+)>")
TAG_SPAN = re.compile(r"<(\w+)>(?:.*?</\1>)?", re.DOTALL)


def input_features(text: str, fields: dict[str, Any] | None = None, *,
                   cues: Iterable[tuple[str, re.Pattern]] = (), known_words: set[str] | None = None) -> set[str]:
    """The features of one input, each named so that a person can read it in a sentence: its words, word pairs
    and character 3-grams (punctuation kept: 'ny!' in 'sunny!'), a word touching punctuation, punctuation just
    before a closing tag, words in capitals, its tags and where they stand, the rules' cues, its length band and
    its short fields.

    `known_words` (lowercased words of the training inputs, see `collect_words`) adds one feature, `UNSEEN`, to an
    input with any word outside it; None adds nothing. To describe many inputs, `FeatureIndex.entries` gives
    the same features as ids, reading each distinct token and word pair once."""
    return read_features([text], [fields], cues=cues, known_words=known_words)[0]


def read_features(texts: list[str], fields: list[dict[str, Any] | None] | None = None, *,
                  cues: Iterable[tuple[str, re.Pattern]] = (), known_words: set[str] | None = None) -> list[set[str]]:
    """`input_features` of many inputs, read together (one `FeatureIndex`): what a loop over inputs should call."""
    index = FeatureIndex(cues=cues, known_words=known_words)
    rows, ids = index.entries(texts, fields)
    start = np.searchsorted(rows, np.arange(len(texts) + 1))
    return [{index.names[i] for i in ids[start[n]:start[n + 1]]} for n in range(len(texts))]


class FeatureIndex:
    """Input features as ids, for describing many inputs at once: `entries(texts, fields)` says which input carries
    which feature (the features `input_features` names), `names[id]` reads an id back.

    Most features belong to one whitespace token of the input with its tags blanked out (its words, their 3-grams,
    its words in capitals) or to a pair of neighbouring words. The inputs are split into tokens and the words
    paired in polars; each distinct token and pair is read and named once, in Python, and remembered across calls.
    Only what needs the whole input (tags and where they stand, the rules' cues, fields) is read input by input."""

    def __init__(self, *, cues: Iterable[tuple[str, re.Pattern]] = (), known_words: set[str] | None = None):
        self.cues, self.known_words = list(cues), known_words
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._tokens: dict[str, _Token] = {}
        self._words: dict[str, int] = {}  # lowercased word -> its number, for pairing
        self._word_list: list[str] = []
        self._pairs: dict[int, int] = {}  # first word's number * 2^32 + second's -> feature id
        self._touching: dict[str, int] = {}
        self._fields: dict[tuple[str, type, Any], int] = {}  # (key, type, value) -> id, -1 for a value too long
        self._cue_ids: dict[re.Pattern, list[tuple[int, int]]] = {}  # rules' cues sharing a pattern: one search
        for name, pattern in self.cues:
            self._cue_ids.setdefault(pattern, []).append((self.id(f"the cue of {name}"), self.id(f"no cue of {name}")))

    def id(self, name: str) -> int:
        found = self._index.get(name)
        if found is None:
            found = self._index[name] = len(self.names)
            self.names.append(name)
        return found

    def entries(self, texts: list[str], fields: list[dict[str, Any] | None] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, ids): input `rows[k]` carries feature `ids[k]`; each pair once, rows ascending."""
        frame = pl.DataFrame({"text": texts}, schema={"text": pl.String}).with_row_index("row")
        tokens = frame.select("row", pl.col("text").str.replace_all(TAG_TEXT.pattern, " ")
                              .str.replace_all(PY_SPACE, " ").str.extract_all(r"\S+").alias("token")
                              ).explode("token").drop_nulls("token")
        rows = tokens["row"].to_numpy().astype(np.int64)
        table = self._token_table(tokens["token"].unique().to_list())
        found = tokens.join(table, on="token", how="left", maintain_order="left")
        parts = [_flat(rows, found["ids"])]
        word_rows = _flat(rows, found["words"])[0]
        words = found["words"].explode().drop_nulls().to_numpy().astype(np.int64)
        parts.append(self._pair_entries(word_rows, words))
        parts.append(self._touching_entries(frame))
        parts.append(self._row_entries(len(texts), rows, word_rows, found))
        if self.known_words is not None:
            parts.append(self.unseen_entries(texts, self.known_words))
        with _collector_paused():  # a list per input, none in a cycle: the collector would only slow it (20 %)
            whole = [self._whole(text, row_fields) for text, row_fields in zip(texts, fields or [None] * len(texts),
                                                                               strict=True)]
        sizes = np.fromiter(map(len, whole), dtype=np.int64, count=len(whole))
        parts.append((np.repeat(np.arange(len(texts), dtype=np.int64), sizes),
                      np.fromiter((i for ids in whole for i in ids), dtype=np.int64, count=int(sizes.sum()))))
        keys = np.sort(np.concatenate([r * (1 << 32) + i for r, i in parts]))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
        return keys >> 32, keys & ((1 << 32) - 1)

    def unseen_entries(self, texts: list[str], known_words: set[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows, ids) of the unseen-word features alone: `UNSEEN`, and `unseen_inside(tag)` for each tag whose
        text holds a word outside `known_words`. Read apart from the rest because they change with the round's
        training words, while the rest of an input's features never change (and are cached in the store)."""
        frame = pl.DataFrame({"text": texts}, schema={"text": pl.String}).with_row_index("row")
        words = frame.select("row", pl.col("text").str.replace_all(TAG_TEXT.pattern, " ")
                             .str.extract_all(WORD.pattern).alias("word")).explode("word").drop_nulls("word")
        known = pl.Series(sorted(known_words), dtype=pl.String).implode()
        unseen = words.filter(~pl.col("word").str.to_lowercase().is_in(known))["row"].unique().sort()
        rows, ids = [unseen.to_numpy().astype(np.int64)], [np.full(len(unseen), self.id(UNSEEN), dtype=np.int64)]
        tagged = frame.filter(pl.col("text").str.contains("<", literal=True))
        inside = [(row, self.id(feature)) for row, text in zip(tagged["row"].to_list(), tagged["text"].to_list(),
                                                                strict=True)
                  for feature in map(unseen_inside, sorted(set(OPENING.findall(text))))
                  if unseen_words(text, known_words, feature)]
        rows.append(np.array([r for r, _ in inside], dtype=np.int64))
        ids.append(np.array([i for _, i in inside], dtype=np.int64))
        return np.concatenate(rows), np.concatenate(ids)

    def adopt(self, names: list[str]) -> np.ndarray:
        """The ids of `names` (features read before, by another index) in this one, naming the new ones."""
        return np.fromiter(map(self.id, names), dtype=np.int64, count=len(names))

    def _token_table(self, pieces: list[str]) -> pl.DataFrame:
        read = [self._tokens.get(p) or self._token(p) for p in pieces]
        return pl.DataFrame({"token": pieces, "ids": [t.ids for t in read], "words": [t.words for t in read],
                             "capitals": [t.capitals for t in read]},
                            schema={"token": pl.String, "ids": pl.List(pl.Int64), "words": pl.List(pl.Int64),
                                    "capitals": pl.Float64})

    def _token(self, piece: str) -> _Token:
        """What one whitespace token of a tag-free input contributes (the same in every input holding it)."""
        words = WORD.findall(piece)
        lower = [w.lower() for w in words]
        gram = piece.lower()
        names = {f"the word '{w}'" for w in lower} | {f"the characters '{gram[i:i + 3]}'" for i in range(len(gram) - 2)}
        names |= {f"'{w}' in capitals" for w in words if len(w) > 1 and w.isupper()}
        numbers = [self._words.get(w) or self._number(w) for w in lower]
        token = self._tokens[piece] = _Token([self.id(n) for n in sorted(names)], numbers,
                                             any(len(w) > 1 and w.isupper() for w in words))
        return token

    def _number(self, word: str) -> int:
        self._word_list.append(word)
        number = self._words[word] = len(self._word_list)  # from 1: 0 is falsy in `get(w) or ...`
        return number

    def _pair_entries(self, rows: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each pair of neighbouring words of one input (`words` in order, `rows` their inputs)."""
        same = rows[1:] == rows[:-1]
        keys = (words[:-1] << 32) + words[1:]
        distinct, inverse = np.unique(keys[same], return_inverse=True)
        word = self._word_list
        ids = np.array([self._pairs.get(k) if k in self._pairs else self._pairs.setdefault(
            k, self.id(f"'{word[(k >> 32) - 1]} {word[(k & 0xFFFFFFFF) - 1]}'")) for k in distinct.tolist()],
            dtype=np.int64)
        return rows[1:][same], ids[inverse.reshape(-1)]

    def _touching_entries(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """A word touching punctuation: the letters before one of PUNCT (ASCII only, so Rust's regex reads it as
        Python's does)."""
        found = frame.select("row", pl.col("text").str.extract_all(TOUCHING.pattern).alias("word")
                             ).explode("word").drop_nulls("word")
        words = found["word"].str.head(-1)
        touching = self._touching
        ids = {w: touching.get(w) if w in touching else touching.setdefault(w, self.id(f"'{w.lower()}' touches "
                                                                                        "punctuation"))
               for w in words.unique().to_list()}
        return (found["row"].to_numpy().astype(np.int64),
                words.replace_strict(ids, return_dtype=pl.Int64).to_numpy() if len(words) else np.empty(0, np.int64))

    def _row_entries(self, inputs: int, rows: np.ndarray, word_rows: np.ndarray, found: pl.DataFrame
                     ) -> tuple[np.ndarray, np.ndarray]:
        """What the tokens say of their input as a whole: its length band, a word in capitals."""
        counts = np.bincount(word_rows, minlength=inputs)
        bands, which = np.unique(counts, return_inverse=True)
        out = [(np.arange(inputs), np.array([self.id(f"{_band(int(n))} words") for n in bands])[which])]
        carrying = np.flatnonzero(np.bincount(rows, weights=found["capitals"].to_numpy(), minlength=inputs) > 0)
        out.append((carrying, np.full(len(carrying), self.id("a word in capitals"))))
        return np.concatenate([r for r, _ in out]), np.concatenate([i for _, i in out]).astype(np.int64)

    def _whole(self, text: str, fields: dict[str, Any] | None) -> list[int]:
        """The features read from the input as a whole: its tags and where they stand, cues, fields."""
        named = self.id
        out = [yes if found else no for pattern, ids in self._cue_ids.items()
               for found in [pattern.search(text)] for yes, no in ids]
        if BEFORE_CLOSING.search(text):
            out.append(named("punctuation just before a closing tag"))
        tags = set(OPENING.findall(text)) if "<" in text else set()
        if tags:
            out += [named(f"a <{t}> tag") for t in tags]
            out += [named(f) for f in tag_positions(text)]
        else:
            out.append(named("no tag at all"))
        for key, value in (fields or {}).items():
            if isinstance(value, (str, bool, int)):
                kind = (key, type(value), value)
                found = self._fields.get(kind)
                if found is None:
                    found = self._fields[kind] = named(f"{key} = {value}") if len(str(value)) <= 30 else -1
                if found >= 0:
                    out.append(found)
        return out


@contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Token:
    ids: list[int]  # its words, 3-grams and words in capitals
    words: list[int]  # its words, lowercased, as numbers (FeatureIndex._words), in order
    capitals: bool


def _flat(rows: np.ndarray, lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """One entry per element of each row's list: (the row, the element)."""
    sizes = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    values = lists.explode().drop_nulls().to_numpy().astype(np.int64)
    return np.repeat(rows, sizes), values


def tag_positions(text: str) -> set[str]:
    """Where each tag stands, judged by the text before and after it (whitespace ignored): `the <weather> tag at
    the start`, `in the middle`, `at the end`. A tag with nothing on either side stands at the start."""
    out = set()
    first, last = len(text) - len(text.lstrip()), len(text.rstrip())  # where the text without its whitespace lies
    for m in TAG_SPAN.finditer(text):
        where = "at the start" if m.start() <= first else "at the end" if m.end() >= last else "in the middle"
        out.add(f"the <{m.group(1)}> tag {where}")
    return out


def collect_words(texts: Iterable[str]) -> set[str]:
    """The lowercased words of some inputs (tags left out), as `input_features(known_words=...)` reads them."""
    return {w.lower() for text in texts for w in WORD.findall(TAG_TEXT.sub(" ", text))}


def unseen_inside(tag: str) -> str:
    """The unseen-word feature of one tag's text: new values of a field are a cause of their own ("a word never
    seen in training inside <weather>"), apart from new names or objects elsewhere in the input."""
    return f"{UNSEEN} inside <{tag}>"


def unseen_words(text: str, known_words: set[str], feature: str = UNSEEN) -> list[str]:
    """The input's lowercased words outside `known_words`, in order, repeats kept; for `unseen_inside(tag)`, only
    the words inside that tag."""
    inside = re.fullmatch(re.escape(UNSEEN) + r" inside <(\w+)>", feature)
    if inside:
        text = " ".join(re.findall(rf"<{inside[1]}>(.*?)</{inside[1]}>", text, re.DOTALL))
    return [w.lower() for w in WORD.findall(TAG_TEXT.sub(" ", text)) if w.lower() not in known_words]


@dataclass
class Incidence:
    """Which trial carries which feature, as flat arrays built once: entry k says trial `rows[k]` carries feature
    `ids[k]` (entries in trial order), `names[i]` is feature i. Counting every feature's trials is then one
    product with `by_feature`."""

    names: np.ndarray  # feature names, by id (object array of str)
    rows: np.ndarray  # int64, ascending
    ids: np.ndarray  # int64
    trials: int

    @classmethod
    def of(cls, features: list[set[str]] | list[np.ndarray], names: np.ndarray | None = None) -> Incidence:
        """From each trial's feature names, or (with `names`) each trial's feature ids."""
        if names is None:
            index: dict[str, int] = {}
            features = [np.fromiter((index.setdefault(f, len(index)) for f in feats), dtype=np.int64,
                                    count=len(feats)) for feats in features]
            names = np.array(list(index), dtype=object)
        sizes = np.fromiter((len(f) for f in features), dtype=np.int64, count=len(features))
        ids = np.concatenate(features) if len(features) else np.empty(0, dtype=np.int64)
        return cls(names, np.repeat(np.arange(len(features)), sizes), ids.astype(np.int64), len(features))

    def take(self, index: np.ndarray) -> Incidence:
        """The trials at `index` (ascending), renumbered 0..len(index)-1."""
        keep = np.zeros(self.trials, dtype=bool)
        keep[index] = True
        renumber = np.cumsum(keep) - 1
        chosen = keep[self.rows]
        return Incidence(self.names, renumber[self.rows[chosen]], self.ids[chosen], len(index))

    @cached_property
    def by_feature(self) -> Any:
        """The entries as a sparse matrix, a row per feature and a column per trial (a row's trials ascending, so a
        sum along it adds in trial order): counting every feature is one product with it."""
        from scipy.sparse import csr_matrix

        return csr_matrix((np.ones(len(self.ids)), (self.ids, self.rows)), shape=(len(self.names), self.trials))

    def carriers(self, feature: int) -> np.ndarray:
        """Whether each trial carries `feature`."""
        out = np.zeros(self.trials, dtype=bool)
        matrix = self.by_feature
        out[matrix.indices[matrix.indptr[feature]:matrix.indptr[feature + 1]]] = True
        return out


def score_features(features: list[set[str]] | Incidence, failed: list[bool] | np.ndarray, *, min_count: int = 3,
                   among: np.ndarray | None = None) -> pl.DataFrame:
    """One row per feature seen at least `min_count` times: counts, rates, lift, p and q (BH), by p. `among`: the
    trials to count (a boolean mask), default all.

    Features carried by exactly the same trials ('pencils', 'has pencils', 'the characters 'pen'') are one
    hypothesis: Benjamini-Hochberg counts them once, or a chance clump of failures would pass for each copy."""
    incidence = features if isinstance(features, Incidence) else Incidence.of(features)
    bad = np.asarray(failed, dtype=bool)
    among = np.ones(incidence.trials, dtype=bool) if among is None else among
    # Per feature, in one pass over the entries: its trials, its failing trials, and two sums of fixed random
    # weights of its trials, which with the count fingerprint the set of trials carrying it (`_q_per_carrier_set`).
    weights = np.random.default_rng(0).random((2, incidence.trials))
    sums = incidence.by_feature @ np.stack([among, bad & among, weights[0] * among, weights[1] * among], axis=1)
    seen, seen_failing = sums[:, 0].astype(np.int64), sums[:, 1].astype(np.int64)
    total, fails = int(among.sum()), int((bad & among).sum())
    tested = np.flatnonzero((seen >= min_count) & (seen < total))
    if not len(tested):
        return pl.DataFrame(schema={"feature": pl.String, "with_failed": pl.Int64, "with_total": pl.Int64,
                                    "without_failed": pl.Int64, "without_total": pl.Int64, "rate_with": pl.Float64,
                                    "rate_without": pl.Float64, "lift": pl.Float64, "p": pl.Float64,
                                    "q": pl.Float64})
    n_with, a = seen[tested], seen_failing[tested]
    # One-sided Fisher exact test: P(at least a failures among the n_with examples with the feature), computed once
    # per distinct (a, n_with): most features share their counts with many others.
    counts, index = np.unique(np.stack([a, n_with]), axis=1, return_inverse=True)
    p = hypergeom_tail(counts[0], total, fails, counts[1])[index.reshape(-1)]
    rate_with = a / n_with
    rate_without = (fails - a) / (total - n_with)
    lift = rate_with / np.maximum(rate_without, 1e-9)
    return pl.DataFrame({
        "feature": incidence.names[tested].tolist(), "with_failed": a, "with_total": n_with,
        "without_failed": fails - a, "without_total": total - n_with, "rate_with": rate_with,
        "rate_without": rate_without, "lift": lift, "p": p,
        "q": _q_per_carrier_set(p, sums[tested][:, [0, 2, 3]]),
    }).sort("p", "feature")


def _q_per_carrier_set(p: np.ndarray, carriers: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg over distinct carrier sets (`carriers`: each feature's count and two sums of fixed random
    weights of its trials, added in trial order, so one set always gives the same floats; two different sets share
    all three only by a chance of about 2^-100); every feature of a set gets the set's q (its features have the
    same counts, so the same p)."""
    _, first, index = np.unique(carriers, axis=0, return_index=True, return_inverse=True)
    return benjamini_hochberg(p[first])[index.reshape(-1)]


def hypergeom_tail(a: Any, total: Any, marked: Any, drawn: Any) -> np.ndarray:
    """P(X >= a) for X hypergeometric (`drawn` of `total`, `marked` of them marked), elementwise over arrays (or
    numbers, broadcast): Fisher's one-sided exact p. Sums the shorter tail's terms from `a` outwards, each from the
    last by their ratio, until they no longer change the sum. scipy's `hypergeom.sf` gives the same to about 1e-9
    (tests/test_describe_scale.py) but took 0.3 ms an element at 100,000 trials: most of an analysis's tests."""
    from scipy.special import gammaln

    a, total, marked, drawn = (np.array(v, dtype=np.int64) for v in np.broadcast_arrays(a, total, marked, drawn))
    low, high = np.maximum(0, drawn - (total - marked)), np.minimum(drawn, marked)
    upper = a > (drawn + 1) * (marked + 1) // (total + 2)  # above the mode: P(a..high), else 1 - P(low..a-1)
    k = np.where(upper, a, a - 1).clip(low, high)

    def log_choose(n, r):
        return gammaln(n + 1) - gammaln(r + 1) - gammaln(n - r + 1)

    term = np.exp(log_choose(marked, k) + log_choose(total - marked, drawn - k) - log_choose(total, drawn))
    tail = term.copy()
    active = np.flatnonzero((a > low) & (a <= high))
    while len(active):  # the ratio is 0 at either end of the support, so every term after it is 0 too
        at, up, n, m, rest = k[active], upper[active], drawn[active], marked[active], (total - marked)[active]
        term[active] *= np.where(up, (m - at) * (n - at) / ((at + 1.0) * (rest - n + at + 1)),
                                 at * (rest - n + at) / ((m - at + 1.0) * (n - at + 1)))
        k[active] = np.where(up, at + 1, at - 1)
        tail[active] += term[active]
        active = active[term[active] > tail[active] * 1e-17]
    return np.where(a <= low, 1.0, np.where(a > high, 0.0, np.clip(np.where(upper, tail, 1.0 - tail), 0.0, 1.0)))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """False-discovery-rate adjusted p-values (q), in the input order."""
    p = np.asarray(p, dtype=float)
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def best_hypothesis(tests: pl.DataFrame, members: list[set[str]], *, alpha: float = 0.05) -> dict[str, Any] | None:
    """The significant feature (q < alpha, failing more often with it) that covers most of a cluster's members."""
    significant = tests.filter((pl.col("q") < alpha) & (pl.col("rate_with") > pl.col("rate_without")))
    if significant.height == 0 or not members:
        return None
    coverage = {f: sum(f in m for m in members) / len(members) for f in significant["feature"]}
    ranked = significant.with_columns(pl.col("feature").replace_strict(coverage, return_dtype=pl.Float64)
                                      .alias("coverage"))
    ranked = ranked.with_columns((pl.col("coverage") * (pl.col("rate_with") - pl.col("rate_without")) * _readability())
                                 .alias("strength")).sort(["strength", "p", "feature"], descending=[True, False, False])
    return ranked.row(0, named=True)


@dataclass
class Cause:
    """One cause of a check's failures: the feature, its test row at the step it was found, its failing carriers."""

    feature: str
    test: dict[str, Any]  # the score_features row, from the trials left at this step
    members: list[int]  # positions (in the lists given to find_causes) of the failing trials carrying the feature
    set_aside: list[str] = field(default_factory=list)  # features of earlier causes, whose carriers were removed
    evidence: list[dict[str, Any]] = field(default_factory=list)  # the step's significant rows, strongest first


def find_causes(features: list[set[str]] | Incidence, failed: list[bool] | np.ndarray, *,
                among: np.ndarray | None = None, alpha: float = 0.05, max_causes: int = 8, min_count: int = 3,
                min_failures: int = 5) -> list[Cause]:
    """The causes of one check's failures, strongest first, found greedily.

    Test every feature on the trials (`features[i]`, `failed[i]`), keep the strongest significant one (q < alpha by
    Benjamini-Hochberg over the features tried at this step, failing more often with it, at least `min_failures`
    failures with it), set aside every trial carrying it, and test again on the rest; stop when nothing is
    significant, after `max_causes`, or when fewer than `min_failures` failures remain. Features seen fewer than
    `min_count` times are not tried. Later steps try fewer features on fewer trials, where a handful of chance
    failures sharing a word can pass the test: a cause must explain `min_failures`. Strength is the failures a
    feature explains times its rate difference; character 3-grams count for less, being the least readable."""
    incidence = features if isinstance(features, Incidence) else Incidence.of(features)
    left = np.ones(len(failed), dtype=bool) if among is None else among.copy()
    bad = np.asarray(failed, dtype=bool) & left
    causes: list[Cause] = []
    while len(causes) < max_causes and int((bad & left).sum()) >= min_failures:
        ranked = _strongest(score_features(incidence, bad, min_count=min_count, among=left), alpha=alpha,
                            min_failures=min_failures)
        if ranked.height == 0:
            break
        best = ranked.row(0, named=True)
        carriers = incidence.carriers(_feature_id(incidence, best["feature"])) & left
        members = [int(i) for i in np.flatnonzero(carriers & bad)]
        causes.append(Cause(best["feature"], best, members, [c.feature for c in causes],
                            ranked.head(8).drop("strength").to_dicts()))
        left[carriers] = False
    return causes


def _feature_id(incidence: Incidence, name: str) -> int:
    return int(np.flatnonzero(incidence.names == name)[0])


def _strongest(tests: pl.DataFrame, *, alpha: float, min_failures: int) -> pl.DataFrame:
    significant = tests.filter((pl.col("q") < alpha) & (pl.col("rate_with") > pl.col("rate_without"))
                               & (pl.col("with_failed") >= min_failures))
    strength = pl.col("with_failed") * (pl.col("rate_with") - pl.col("rate_without")) * _readability()
    return significant.with_columns(strength.alias("strength")).sort(["strength", "p", "feature"],
                                                                     descending=[True, False, False])


def _readability() -> pl.Expr:
    # Character n-grams are the least readable features: one must explain clearly more to be the statement.
    return pl.when(pl.col("feature").str.starts_with("the characters")).then(0.8).otherwise(1.0)


def score_groups(failed: list[int], total: list[int], population_failed: list[int],
                 population: list[int]) -> pl.DataFrame:
    """Each group's failure rate against the rest of its population: one row per group, in order, with a one-sided
    Fisher exact p (more failures in the group than elsewhere) and q (Benjamini-Hochberg over the groups)."""
    a, n = np.asarray(failed, dtype=int), np.asarray(total, dtype=int)
    fails, everyone = np.asarray(population_failed, dtype=int), np.asarray(population, dtype=int)
    p = hypergeom_tail(a, everyone, fails, n) if len(a) else np.empty(0)
    return pl.DataFrame({"failed": a, "total": n, "rate_with": a / np.maximum(n, 1),
                         "rate_without": (fails - a) / np.maximum(everyone - n, 1), "p": p,
                         "q": benjamini_hochberg(p)},
                        schema={"failed": pl.Int64, "total": pl.Int64, "rate_with": pl.Float64,
                                "rate_without": pl.Float64, "p": pl.Float64, "q": pl.Float64})


def statement(check: str, hypothesis: dict[str, Any] | None, *, failing: int, size: int,
              carrying: int | None = None, unseen: list[tuple[str, int]] | None = None) -> str:
    """`emoji_correct fails: 78% of inputs with 'sunny' touches punctuation (31/40) vs 6% elsewhere (p < 1e-6);
    31 of 31 members carry it`, naming the commonest unseen words for the unseen-word feature."""
    if hypothesis is None:
        return f"{check} fails in {failing}/{size}; no input feature tested stands out (q < 0.05)"
    h = hypothesis
    text = (f"{check} fails: {h['rate_with']:.0%} of inputs with {h['feature']} ({h['with_failed']}/"
            f"{h['with_total']}) vs {h['rate_without']:.0%} elsewhere ({format_p(h['p'])})")
    if carrying is not None:
        text += f"; {carrying} of {size} members carry it"
    if unseen:
        text += " (unseen: " + ", ".join(f"{w} {n}" for w, n in unseen) + ")"
    return text


def all_statement(check: str, count: int, scope: str = "inputs it applies to") -> str:
    """`display_weather_absent fails on all 133 inputs without '<weather>'`: no contrast to test."""
    return f"{check} fails on all {count} {scope}"


def cluster_statement(check: str, *, failing: int, size: int, test: dict[str, Any] | None) -> str:
    """An embedding cluster of failures no feature explains, with its failure rate against the rest when known;
    a cluster whose rate does not stand out (q >= 0.05) is marked not significant."""
    if test is None:
        return statement(check, None, failing=failing, size=size)
    text = (f"{check} fails in {failing}/{size} similar inputs no feature explains: {test['rate_with']:.0%} of the "
            f"inputs nearest them fail ({test['failed']}/{test['total']}) vs {test['rate_without']:.0%} of the "
            f"other inputs it applies to ({format_p(test['p'])}, q = {test['q']:.2g})")
    return text if test["q"] < 0.05 else text + "; not significant"


def format_p(p: float) -> str:
    if p < 1e-6:
        return "p < 1e-6"
    return f"p = {p:.2g}"


def _band(n: int) -> str:
    for upper in (10, 20, 30, 40):
        if n < upper:
            return f"{upper - 10}-{upper - 1}"
    return "40+"
