"""The concrete sources against real things: linesim, a real MJPG video written with
cv2.VideoWriter, real image folders (removed and re-created to make them fail), V4L2."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.capture import (
    CameraSource,
    Frame,
    ImageFolderSource,
    ReplaySource,
    ResilientSource,
    SimulatedLineSource,
    SourceEnded,
    SourceLost,
    SourceState,
    VideoFileSource,
)
from appliance.capture.files import natural_key
from linesim import LineConfig, render
from protocol.backoff import BackoffConfig

S = SourceState


def _collect(rs: ResilientSource, limit: int = 200) -> list[Frame]:
    out: list[Frame] = []
    for f in rs.frames_until(threading.Event()):
        out.append(f)
        if len(out) > limit:
            pytest.fail("runaway source")
    return out


# -- simulated line -------------------------------------------------------------------

SMALL_LINE = LineConfig(width_px=128, height_px=96, seed=7)


def test_sim_source_is_deterministic_with_part_ids() -> None:
    src = SimulatedLineSource(SMALL_LINE, realtime=False)
    src.open()
    reads = [src.read() for _ in range(3)]
    for k, (image, part_id, captured_at) in enumerate(reads):
        assert part_id == str(k)
        assert captured_at is None  # not realtime: stamped by the caller
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, render(SMALL_LINE, k).image_bgr)
    # A reopen continues with the next part instead of repeating ids.
    src.close()
    src.open()
    assert src.read()[1] == "3"
    src.close()
    with pytest.raises(SourceLost):
        src.read()


def test_sim_source_realtime_stamps_passing_times() -> None:
    t = [5000.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        t[0] += s

    cfg = LineConfig(width_px=64, height_px=64, parts_per_minute=120.0)  # 0.5 s apart
    src = SimulatedLineSource(cfg, realtime=True, clock=lambda: t[0], sleep=sleep)
    rs = ResilientSource("sim", src, clock=lambda: t[0])
    stop = threading.Event()
    frames: list[Frame] = []
    for f in rs.frames_until(stop):
        frames.append(f)
        if len(frames) == 3:
            stop.set()
    assert [f.captured_at for f in frames] == [5000.0, 5000.5, 5001.0]
    assert [f.part_id for f in frames] == ["0", "1", "2"]
    assert [f.frame_id for f in frames] == ["sim:0", "sim:1", "sim:2"]
    assert slept == pytest.approx([0.5, 0.5])


def test_replay_source_loops_and_ends() -> None:
    imgs = [np.full((8, 8, 3), v, np.uint8) for v in (1, 2, 3)]
    src = ReplaySource(imgs, loop=True, part_ids=["a", "b", "c"])
    src.open()
    got = [src.read() for _ in range(5)]
    assert [int(g[0][0, 0, 0]) for g in got] == [1, 2, 3, 1, 2]
    assert [g[1] for g in got] == ["a", "b", "c", "a", "b"]
    once = ReplaySource(imgs, loop=False)
    rs = ResilientSource("bench", once)
    assert len(_collect(rs)) == 3 and rs.state == S.ENDED
    with pytest.raises(ValueError, match="uint8"):
        ReplaySource([np.zeros((8, 8), np.uint8)])


# -- video file -----------------------------------------------------------------------

N_VIDEO = 12


def _write_video(path: Path, n: int = N_VIDEO) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()


def _level(image: np.ndarray) -> int:
    """The frame number encoded in a test frame's grey level (JPEG is lossy)."""
    return round(float(image.mean()) / 20)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "line.avi"
    _write_video(path)
    return path


def test_video_reads_all_frames_then_ends(video: Path) -> None:
    rs = ResilientSource("v", VideoFileSource(video))
    frames = _collect(rs)
    assert [_level(f.image_bgr) for f in frames] == list(range(N_VIDEO))
    assert all(f.part_id is None and f.image_bgr.shape == (48, 64, 3) for f in frames)
    assert rs.state == S.ENDED and rs.reconnects == 0


def test_video_loops(video: Path) -> None:
    src = VideoFileSource(video, loop=True)
    src.open()
    levels = [_level(src.read()[0]) for _ in range(N_VIDEO + 3)]
    src.close()
    assert levels == [*range(N_VIDEO), 0, 1, 2]


def test_video_reopen_resumes(video: Path) -> None:
    src = VideoFileSource(video)
    src.open()
    assert [_level(src.read()[0]) for _ in range(5)] == [0, 1, 2, 3, 4]
    src.close()
    src.open()
    assert _level(src.read()[0]) == 5
    src.close()


def test_video_missing_then_appearing_is_retried(tmp_path: Path) -> None:
    """A file source made to fail: the video is not there at first (a share not yet
    mounted); the source backs off and streams once it appears."""
    path = tmp_path / "late.avi"
    sleeps: list[float] = []

    def sleep(seconds: float, stop: threading.Event) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            _write_video(path, n=3)

    events: list[tuple[S, S]] = []
    rs = ResilientSource("v", VideoFileSource(path), reconnect=BackoffConfig(initial_s=0.5),
                         sleep=sleep, on_state=lambda _s, o, n, _d: events.append((o, n)))
    frames = _collect(rs)
    assert sleeps == [0.5, 1.0]
    assert len(frames) == 3
    assert events[:2] == [(S.CONNECTING, S.LOST), (S.LOST, S.CONNECTING)]
    assert events[-2:] == [(S.CONNECTING, S.STREAMING), (S.STREAMING, S.ENDED)]


def test_corrupt_video_is_lost_not_ended(tmp_path: Path) -> None:
    path = tmp_path / "bad.avi"
    path.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceLost):
        VideoFileSource(path).open()


# -- image folder ---------------------------------------------------------------------


def _write_images(folder: Path, names_levels: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, level in names_levels.items():
        assert cv2.imwrite(str(folder / name), np.full((16, 24, 3), level, np.uint8))


def test_natural_key_orders_numbers() -> None:
    names = ["img10.png", "img2.png", "IMG3.PNG", "img1.jpg", "img02.png"]
    assert sorted(names, key=natural_key) == [
        "img1.jpg", "img02.png", "img2.png", "IMG3.PNG", "img10.png",
    ]


def test_folder_order_pattern_and_part_ids(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _write_images(folder, {"p10.png": 100, "p2.png": 20, "p1.jpg": 10, "P3.PNG": 30,
                           "skip.bmp": 5})
    (folder / "notes.txt").write_text("not an image")
    (folder / "p5.png").write_bytes(b"truncated garbage")  # unreadable: still a frame
    src = ImageFolderSource(folder, part_id_from_name=True)
    rs = ResilientSource("f", src)
    frames = _collect(rs)
    assert [f.part_id for f in frames] == ["p1", "p2", "P3", "p5", "p10"]
    assert [f.fault for f in frames] == [None, None, None, "unreadable", None]
    good = [f for f in frames if f.fault is None]
    assert [int(f.image_bgr[0, 0, 0]) for f in good] == [10, 20, 30, 100]
    assert src.unusable == 1
    assert rs.state == S.ENDED


def test_folder_loop_and_pattern(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a1.png": 1, "a2.png": 2, "b.jpg": 3})
    src = ImageFolderSource(tmp_path, pattern="*.png", loop=True)
    src.open()
    got = [int(src.read()[0][0, 0, 0]) for _ in range(5)]
    assert got == [1, 2, 1, 2, 1]
    assert src.read()[1] is None  # part ids only with part_id_from_name


def test_folder_missing_or_empty_is_lost(tmp_path: Path) -> None:
    with pytest.raises(SourceLost, match="cannot list"):
        ImageFolderSource(tmp_path / "nope").open()
    with pytest.raises(SourceLost, match="no images"):
        ImageFolderSource(tmp_path).open()


def test_folder_removed_and_recreated_reconnects(tmp_path: Path) -> None:
    """A file source made to fail mid-stream: the folder vanishes (a share dropped) and
    comes back; the source resumes after the last image it delivered."""
    folder = tmp_path / "share"
    _write_images(folder, {"a1.png": 1, "a2.png": 2, "a3.png": 3})
    clock = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float, stop: threading.Event) -> None:
        sleeps.append(seconds)
        clock[0] += seconds
        if len(sleeps) == 2:  # back after the second backoff
            _write_images(folder, {"a1.png": 1, "a2.png": 2, "a3.png": 3, "a4.png": 4})

    events: list[tuple[S, S, str]] = []
    rs = ResilientSource(
        "f", ImageFolderSource(folder, part_id_from_name=True),
        reconnect=BackoffConfig(initial_s=0.5),
        clock=lambda: clock[0], sleep=sleep,
        on_state=lambda _s, o, n, d: events.append((o, n, d)),
    )
    frames: list[Frame] = []
    for f in rs.frames_until(threading.Event()):
        frames.append(f)
        if f.part_id == "a2":
            shutil.rmtree(folder)
        assert len(frames) < 20

    assert [f.part_id for f in frames] == ["a1", "a2", "a3", "a4"]
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert rs.reconnects == 1
    assert sleeps == [0.5, 1.0]
    assert rs.last_gap_s == pytest.approx(1.5)
    transitions = [(o, n) for o, n, _ in events]
    assert transitions == [
        (S.CONNECTING, S.STREAMING),
        (S.STREAMING, S.LOST),
        (S.LOST, S.CONNECTING),
        (S.CONNECTING, S.LOST),
        (S.LOST, S.CONNECTING),
        (S.CONNECTING, S.STREAMING),
        (S.STREAMING, S.ENDED),
    ]
    assert "vanished" in events[1][2]
    assert "1.50 s gap" in events[5][2]


# -- camera ---------------------------------------------------------------------------


def test_camera_without_device_is_lost() -> None:
    if Path("/dev/video63").exists():
        pytest.skip("a /dev/video63 exists here")
    cam = CameraSource(63, width_px=640, height_px=480, fps=30)
    with pytest.raises(SourceLost, match="camera 63"):
        cam.open()
    with pytest.raises(SourceLost, match="not open"):
        cam.read()
    cam.close()


def test_source_ended_is_a_capture_error() -> None:
    from appliance.errors import ApplianceError, CaptureError

    assert issubclass(SourceEnded, CaptureError) and issubclass(SourceLost, CaptureError)
    assert issubclass(CaptureError, ApplianceError)
