"""Approximate top-K: Apache DataSketches frequent-items sketches of per-key weights, their merge,
and the ranked answer with per-item bounds.

A sketch summarises one bucket (or one folded set of exact partials): one update per key, whose
weight is the key's count (by=count) or its sum quantised to SUM_QUANTUM (by=sum; the sketch
takes unsigned integer weights). Merging adds the sketches; `parts` counts the updates a key may
have received, which bounds the quantisation error of a sum (each update rounds by at most half
a quantum).

Bounds (the DataSketches guarantee): a key held by the sketch has its true value in
[lower_bound, upper_bound]; a key not held has a true value of at most `max_error`.
No I/O here (sketch bytes come and go through the caller).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from datasketches import frequent_items_error_type, frequent_strings_sketch

ErrorType = Literal["no_false_negatives", "no_false_positives"]
ERROR_TYPES: tuple[str, ...] = ("no_false_negatives", "no_false_positives")

#: by=sum weights are integer multiples of this (a power of two: scaling is exact in floats)
SUM_QUANTUM = 2.0 ** -20
#: largest weight of one update; the sketch's uint64 total must not overflow across merges
MAX_WEIGHT = 2 ** 56


class NotSketchable(ValueError):
    """Weights the sketch cannot take: a negative sum (by=sum) or one too large to quantise."""


@dataclass
class KeySketch:
    """A frequent-items sketch plus how many updates (bucket or edge folds) any key may have had."""

    sketch: frequent_strings_sketch
    parts: int = 0

    @classmethod
    def empty(cls, lg_k: int) -> "KeySketch":
        return cls(frequent_strings_sketch(lg_k), 0)

    def merge(self, other: "KeySketch") -> "KeySketch":
        """Fold `other` into this sketch (in place); returns self."""
        if not other.sketch.is_empty():
            self.sketch.merge(other.sketch)
        self.parts += other.parts
        return self


def weights(t: pa.Table, by: str) -> tuple[list[str], list[int]]:
    """(keys, integer weights) of a per-key partial table (rollups.partials); zero weights dropped.

    Raises NotSketchable for by=sum when a key's sum is negative or above MAX_WEIGHT quanta.
    """
    if by == "count":
        w = pc.cast(t["count"], pa.int64())
    elif by == "sum":
        if t.num_rows and pc.min(t["sum"]).as_py() < 0:
            raise NotSketchable("by=sum needs non-negative sums; this range holds negative values")
        w = pc.round(pc.divide(t["sum"], SUM_QUANTUM))
        if t.num_rows and pc.max(w).as_py() > MAX_WEIGHT:
            raise NotSketchable(f"a sum above {MAX_WEIGHT * SUM_QUANTUM:g} cannot be sketched")
        w = pc.cast(w, pa.int64())
    else:
        raise ValueError(f"approx ranks by count or sum, not {by!r}")
    keep = pc.greater(w, 0)
    return t["key"].filter(keep).to_pylist(), w.filter(keep).to_pylist()


def build(t: pa.Table, by: str, lg_k: int) -> KeySketch:
    """The sketch of one per-key partial table (one update per key, counted as one part)."""
    s = frequent_strings_sketch(lg_k)
    deque(map(s.update, *weights(t, by)), maxlen=0)  # the updates in C's loop: 40 % less than a for loop
    return KeySketch(s, 1)


def serialize(ks: KeySketch) -> bytes:
    return ks.sketch.serialize()


def deserialize(blob: bytes) -> KeySketch:
    """A stored bucket sketch (one part)."""
    return KeySketch(frequent_strings_sketch.deserialize(blob), 1)


@dataclass(frozen=True)
class ApproxItem:
    rank: int
    key: str
    value: float          # DataSketches' estimate
    lower_bound: float
    upper_bound: float

    @property
    def error_bound(self) -> float:
        return self.upper_bound - self.lower_bound


@dataclass(frozen=True)
class ApproxAnswer:
    items: list[ApproxItem]
    #: no key outside the sketch has a true value above this
    max_error: float
    #: no_false_negatives: no key left out has a true value above this (max of max_error and the
    #: k-th item's lower bound); no_false_positives: every item's lower bound exceeds max_error
    threshold: float
    error_type: str


def answer(ks: KeySketch, k: int, by: str, error_type: str) -> ApproxAnswer:
    """The ranked approximate top-k of a merged sketch.

    Items are ordered by estimate descending, then key ascending (the API's ordering).
    no_false_negatives: the k best by estimate, then every further key whose upper bound exceeds
    the k-th item's lower bound (and max_error): no key whose true value beats
    max(k-th lower bound, max_error) is left out, so the list may run past rank k.
    no_false_positives: at most k items, each with a lower bound above max_error (a key certainly
    heavier than every key the sketch does not hold).
    """
    scale = 1.0 if by == "count" else SUM_QUANTUM
    slack = 0.0 if by == "count" else ks.parts * SUM_QUANTUM / 2
    s = ks.sketch
    max_error = float(_max_error(s)) * scale + slack
    if error_type not in ERROR_TYPES:
        raise ValueError(f"unknown error type {error_type!r}")
    # every held item (each has a positive lower bound, so its upper bound exceeds the offset)
    held = s.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES, 0)
    if error_type == "no_false_positives":
        held = [r for r in held if r[2] * scale - slack > max_error]
    ranked = sorted(held, key=lambda r: (-r[1], r[0].encode()))

    def item(i: int, r) -> ApproxItem:
        return ApproxItem(i + 1, r[0], r[1] * scale, max(0.0, r[2] * scale - slack), r[3] * scale + slack)

    if error_type == "no_false_positives":
        items = [item(i, r) for i, r in enumerate(ranked[:k])]
        return ApproxAnswer(items, max_error, max_error, error_type)
    head = ranked[:k]
    threshold = max_error if len(head) < k else max(max_error, head[-1][2] * scale - slack)
    tail = [r for r in ranked[k:] if r[3] * scale + slack > threshold]
    items = [item(i, r) for i, r in enumerate(head + tail)]
    return ApproxAnswer(items, max_error, threshold, error_type)


def _max_error(s: frequent_strings_sketch) -> int:
    """The sketch's offset: the most any key not held may weigh (upper bound of an absent key)."""
    return s.get_upper_bound(_NEVER_A_KEY)


#: longer than any key (1..256 bytes): never held by a sketch
_NEVER_A_KEY = "\x00" * 300
