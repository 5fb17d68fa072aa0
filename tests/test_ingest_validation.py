"""POST /v1/events validation (router/ingest.py) without services: the vectorised fast path
accepts exactly the batches the per-event loop accepts, with the same table, and refuses the
others (the loop then names every problem)."""
from __future__ import annotations

import random

import pytest

from rollups.errors import ValidationFailed
from rollups.timeutil import now_ms
from router.ingest import _checked_table, _valid_table, validate_events

NOW = now_ms()


def event(i: int, **fields) -> dict:
    e = {"stream": "s.a", "key": f"k{i % 7}", "ts": NOW - 1000 * i}
    e.update(fields)
    return e


def batches():
    rng = random.Random(7)
    yield "every field", [event(i, value=i % 3 + 0.5, id=f"id-{i}") for i in range(50)]
    yield "no optional field", [event(i) for i in range(50)]
    yield "some values, some ids", [event(i, **({"value": 2} if i % 2 else {}), **({"id": f"x{i}"} if i % 3 else {}))
                                    for i in range(50)]
    yield "null ids", [event(i, id=None if i % 2 else f"x{i}") for i in range(20)]
    yield "RFC 3339 times", [{**event(i, value=1), "ts": "2026-01-02T03:04:05.5Z"} for i in range(10)]
    mixed = [event(i, value=rng.choice([0.5, 1, 2, 5]), id=f"r{i}") for i in range(200)]
    for e in rng.sample(mixed, 30):
        del e[rng.choice(["value", "id"])]
    yield "random optional fields", mixed


@pytest.mark.parametrize("name,events", list(batches()))
def test_fast_path_accepts_a_valid_batch_with_the_loops_table(name, events):
    fast = _valid_table(events, NOW)
    assert fast is not None, name
    assert fast.equals(_checked_table(events, NOW)), name


@pytest.mark.parametrize("where", [0, 17, 49])
@pytest.mark.parametrize("extra", [{"bogus": 1}, {"value": 1, "bogus": 1}, {"id": "z", "Value": 2}])
def test_an_unknown_field_anywhere_is_refused_and_named(where, extra):
    events = [event(i, **({"value": 1.5} if i % 2 else {})) for i in range(50)]
    for f in ("value", "id"):
        events[where].pop(f, None)
    events[where].update(extra)
    assert _valid_table(events, NOW) is None
    with pytest.raises(ValidationFailed) as info:
        validate_events(events, NOW)
    unknown = [d for d in info.value.details if d["problem"] == "unknown field"]
    assert [(d["index"], d["field"]) for d in unknown] == [(where, f) for f in extra if f not in ("value", "id")]


@pytest.mark.parametrize("bad,field", [({"value": None}, "value"), ({"id": 5}, "id"), ({"value": "1"}, "value")])
def test_a_bad_optional_field_is_refused_and_named(bad, field):
    events = [event(i, value=1, id=f"i{i}") for i in range(10)]
    events[4].update(bad)
    assert _valid_table(events, NOW) is None
    with pytest.raises(ValidationFailed) as info:
        validate_events(events, NOW)
    assert [(d["index"], d["field"]) for d in info.value.details] == [(4, field)]


@pytest.mark.parametrize("missing", ["stream", "key", "ts"])
def test_a_missing_required_field_is_refused_and_named(missing):
    events = [event(i, value=1) for i in range(10)]
    del events[3][missing]
    events[3]["other"] = 1  # the field count would add up without the required one
    assert _valid_table(events, NOW) is None
    with pytest.raises(ValidationFailed) as info:
        validate_events(events, NOW)
    assert {(d["index"], d["field"]) for d in info.value.details} >= {(3, missing), (3, "other")}
