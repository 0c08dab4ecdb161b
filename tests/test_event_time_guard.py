"""The ``ts`` attribute guard: the Python twin (local read) answers every shared case as the
Pub/Sub UDF does on Dataflow (the Node test runs the UDF itself on the same file)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.message import ATTR_BAD_EVENT_TIME, event_time_ms, guard_event_time

CASES = json.loads((Path(__file__).parent / "fixtures" / "event_time_attribute_cases.json").read_text())


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda case: repr(case["attributes"].get("ts")))
def test_guard_matches_the_shared_cases(case: dict) -> None:
    attributes = case["attributes"]
    guarded = guard_event_time(attributes, CASES["publish_time_ms"])
    if case["expected"] is None:
        assert guarded is attributes
    else:
        assert dict(guarded) == case["expected"]
        assert event_time_ms(guarded["ts"]) == CASES["publish_time_ms"]


def test_a_publish_time_out_of_range_falls_back_to_now() -> None:
    guarded = guard_event_time({"ts": "x"}, publish_time_ms=-5)
    assert guarded[ATTR_BAD_EVENT_TIME] == "x"
    assert event_time_ms(guarded["ts"]) is not None
