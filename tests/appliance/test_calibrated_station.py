"""A calibrated station: defect sizes in mm and the minimum-size rule in the judge, the
ROI in mm, and the engine refusing a bundle made for another camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.config import config_from_dict
from appliance.errors import ConfigError
from appliance.pipeline.engine import Engine, StationOptics
from appliance.pipeline.judge import Judge
from calibration.camera_model import CameraCalibration
from calibration.scale import Scale
from calibration.station import DefectSizing
from models.bundle import Bundle, load_bundle
from models.errors import ModelError
from models.postprocess import Detections
from models.undistort import CalibrationMismatch

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"
CAMERA = CameraCalibration(fx=700.0, fy=700.0, cx=320.0, cy=240.0,
                           dist=(-0.25, 0.08, 0.001, -0.0008, 0.0), image_size=(640, 480),
                           rms_px=0.1)
OTHER = CAMERA.model_copy(update={"fy": 702.0})


def _detections(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32),
                      np.array(classes, np.int64))


def test_judge_sizes_defects_and_applies_the_minimum_size() -> None:
    judge = Judge(("scratch", "pit"), np.array([0.25, 0.25], np.float32))
    found = _detections([[0, 0, 8, 4], [10, 10, 22, 14], [50, 50, 52, 52], [0, 0, 100, 100]],
                        [0.9, 0.8, 0.7, 0.1], [0, 0, 1, 0])
    sizing = DefectSizing(Scale(mm_per_px_x=0.5, mm_per_px_y=0.25), {"scratch": 5.0})
    verdict, defects = judge.verdict(found, (100.0, 0.0), sizing)
    assert verdict == "fail"
    # the 4 mm scratch is under its class's 5 mm; the pit has no minimum; the
    # low-score box stays below its threshold whatever its size
    assert [(d.class_name, d.size_mm_wh) for d in defects] == [("scratch", (6.0, 1.0)),
                                                              ("pit", (1.0, 0.5))]
    assert defects[0].box_xyxy == (110.0, 10.0, 122.0, 14.0)
    only_small = _detections([[0, 0, 8, 4]], [0.9], [0])
    assert judge.verdict(only_small, (0.0, 0.0), sizing) == ("pass", ())
    # an uncalibrated station: no sizes, no size rule
    _, plain = judge.verdict(only_small)
    assert plain[0].size_mm_wh is None


def _station(**calibration: object) -> dict[str, object]:
    return {"stations": [{"name": "cam-1", "calibration": calibration}]}


def test_station_roi_in_mm_becomes_pixels() -> None:
    cfg = config_from_dict(_station(mm_per_px_xy=[0.5, 0.25], roi_mm_xywh=[10, 10, 100, 50],
                                    min_defect_mm={"scratch": 2.0}))
    assert cfg.stations[0].roi_px == (20, 40, 200, 200)


@pytest.mark.parametrize(("station", "message"), [
    (_station(roi_mm_xywh=[0, 0, 10, 10]), "roi_mm_xywh need mm_per_px_xy"),
    (_station(min_defect_mm={"scratch": 1.0}), "min_defect_mm need mm_per_px_xy"),
    (_station(mm_per_px_xy=[0, 1]), "greater than 0"),
    ({"stations": [{"name": "cam-1", "roi_xywh": [0, 0, 10, 10], "calibration": {
        "mm_per_px_xy": [1, 1], "roi_mm_xywh": [0, 0, 5, 5]}}]}, "give the ROI once"),
])
def test_bad_station_calibration_is_a_config_error(station: dict[str, object],
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(station)


def _undistorting_demo() -> Bundle:
    demo = load_bundle(DEMO, verify_files=False)
    spec = demo.manifest.preprocess.model_copy(
        update={"undistort_calibration": CAMERA.content_hash()})
    return Bundle(demo.root, demo.manifest.model_copy(update={"preprocess": spec}))


@pytest.mark.parametrize(("optics", "error", "message"), [
    ({"cam-1": StationOptics(OTHER)}, CalibrationMismatch,
     "on station cam-1 needs camera calibration .*, but this station's camera calibration is"),
    ({"cam-1": StationOptics(CAMERA), "cam-2": StationOptics(None)}, CalibrationMismatch,
     "on station cam-2 .* this station has no camera calibration"),
    ({"cam-1": StationOptics(CAMERA, crops=True)}, ModelError, "station cam-1 crops them first"),
])
def test_engine_refuses_a_bundle_for_another_camera(
    optics: dict[str, StationOptics], error: type[Exception], message: str
) -> None:
    engine = Engine(config_from_dict({}).engine, max_batch=1, stations=optics)
    with pytest.raises(error, match=message):
        engine.check_stations(_undistorting_demo())


def test_engine_accepts_the_matching_camera_and_bundles_that_do_not_undistort() -> None:
    engine = Engine(config_from_dict({}).engine, max_batch=1,
                    stations={"cam-1": StationOptics(CAMERA)})
    engine.check_stations(_undistorting_demo())
    engine.check_stations(load_bundle(DEMO, verify_files=False))
    bare = Engine(config_from_dict({}).engine, max_batch=1)
    bare.check_stations(load_bundle(DEMO, verify_files=False))
    with pytest.raises(CalibrationMismatch, match="has no camera calibration"):
        bare.check_stations(_undistorting_demo())


def test_unreadable_station_camera_is_a_config_error(tmp_path: Path) -> None:
    from appliance.app import station_optics

    cfg = config_from_dict(_station(camera_json=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match=r"stations\[cam-1\]\.calibration\.camera_json: cannot "
                       "read camera calibration"):
        station_optics(cfg.stations)
