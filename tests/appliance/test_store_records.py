"""Validation of the records the pipeline hands to the store."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from appliance.records import DefectRecord, EventRecord, InspectionRecord, UninspectedReason

GOOD: dict[str, Any] = {
    "frame_id": "s1:1", "station": "s1", "part_id": None, "captured_at": 1.0,
    "judged_at": 1.5, "verdict": "pass", "reason": None, "model_version": "1",
    "preprocess_hash": "h", "latency_ms": {"total": 3.0},
}


def test_good_records_build() -> None:
    InspectionRecord(**GOOD)
    InspectionRecord(**{**GOOD, "verdict": "uninspected", "reason": UninspectedReason.DEADLINE})
    DefectRecord(0, "pit", 1.0, (0.0, 0.0, 0.0, 0.0))
    EventRecord(1.0, "alarm", "alarm", "engine", "down", {"a": 1, "b": None, "c": 0.5})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"frame_id": ""}, "frame_id"),
        ({"verdict": "maybe"}, "verdict"),
        ({"verdict": "uninspected"}, "reason"),
        ({"reason": "dropped"}, "reason"),
        ({"latency_ms": {"inference": 1.0}}, "unknown latency stage"),
        ({"latency_ms": {"total": math.nan}}, "finite"),
        ({"judged_at": math.inf}, "finite"),
        ({"image_bgr": np.zeros((4, 4, 3), np.float32)}, "uint8"),
    ],
)
def test_bad_inspection_records_are_refused(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InspectionRecord(**{**GOOD, **change})


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, "pit", 0.5, (0.0, 0.0, 1.0, 1.0)), "class_id"),
        ((0, "pit", 1.5, (0.0, 0.0, 1.0, 1.0)), "score"),
        ((0, "pit", math.nan, (0.0, 0.0, 1.0, 1.0)), "score"),
        ((0, "pit", 0.5, (2.0, 0.0, 1.0, 1.0)), "x1 <= x2"),
        ((0, "pit", 0.5, (0.0, 0.0, 1.0, math.inf)), "finite"),
    ],
)
def test_bad_defects_are_refused(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DefectRecord(*args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"severity": "fatal"}, "severity"),
        ({"kind": ""}, "kind"),
        ({"data": {"x": math.nan}}, "finite"),
        ({"data": {"x": [1, 2]}}, "scalar"),
    ],
)
def test_bad_events_are_refused(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"at": 1.0, "kind": "alarm", "severity": "info", "source": "s",
                            "message": "m"}
    with pytest.raises(ValueError, match=match):
        EventRecord(**{**base, **kwargs})


def test_image_is_not_part_of_equality_or_repr() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    a = InspectionRecord(**GOOD, image_bgr=image)
    assert a == InspectionRecord(**GOOD)
    assert "image_bgr" not in repr(a)
