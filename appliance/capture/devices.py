"""Live sources through OpenCV: a V4L2 camera index and an RTSP/HTTP(S) stream.

Both are one device with no retry logic: a failed open or read raises SourceLost and
`ResilientSource` reconnects. A live source never ends.

HTTP MJPEG (multipart/x-mixed-replace, as IP cameras and `mjpg-streamer` serve it) and
RTSP both go through OpenCV's FFmpeg backend, which this opencv-python build has; open and
read timeouts bound every blocking call, so a stalled stream becomes SourceLost instead of
a hung capture thread.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import cv2

from appliance.capture.source import SourceRead, to_bgr_u8
from appliance.errors import SourceLost

logger = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """`url` with any user:password replaced by `***`, for logs and error messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _read_live(cap: cv2.VideoCapture | None, what: str) -> SourceRead:
    if cap is None:
        raise SourceLost(f"{what} is not open")
    try:
        ok, image = cap.read()
    except cv2.error as e:
        raise SourceLost(f"{what}: read failed: {e}") from e
    if not ok or image is None:
        raise SourceLost(f"{what}: no frame (device or stream lost, or read timed out)")
    return to_bgr_u8(image, what), None, None


class CameraSource:
    """A USB/V4L2 camera by index (`/dev/video{index}`).

    `width_px`, `height_px` and `fps` are requests to the driver (None: its default); the
    frames read carry whatever size the camera actually delivers.
    """

    def __init__(
        self,
        index: int,
        *,
        width_px: int | None = None,
        height_px: int | None = None,
        fps: float | None = None,
    ) -> None:
        self.index = index
        self._width_px = width_px
        self._height_px = height_px
        self._fps = fps
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        """Open the camera. Raises SourceLost if there is no such device or it is busy."""
        self.close()
        try:
            cap = cv2.VideoCapture(self.index, cv2.CAP_V4L2)
        except cv2.error as e:
            raise SourceLost(f"camera {self.index}: cannot open: {e}") from e
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"camera {self.index}: cannot open /dev/video{self.index}")
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, self._width_px),
            (cv2.CAP_PROP_FRAME_HEIGHT, self._height_px),
            (cv2.CAP_PROP_FPS, self._fps),
        ):
            if value is not None and not cap.set(prop, float(value)):
                logger.warning("camera %d: driver refused property %d=%s",
                               self.index, prop, value)
        self._cap = cap

    def read(self) -> SourceRead:
        """The next frame (H x W x 3 BGR uint8). Raises SourceLost if the camera fails."""
        return _read_live(self._cap, f"camera {self.index}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class StreamSource:
    """An RTSP or HTTP(S) stream (MJPEG over HTTP, H.264/H.265 over RTSP) via FFmpeg.

    `open_timeout_ms` bounds connecting, `read_timeout_ms` bounds waiting for a frame
    (OpenCV's FFmpeg interrupt callback). Measured with opencv-python 5.0 against a
    frozen server (tests/appliance/test_capture_rtsp.py): HTTP MJPEG fails a read after
    1 x `read_timeout_ms`, RTSP/H.264 after about 3 x; a refused connection fails at once.
    """

    def __init__(self, url: str, *, open_timeout_ms: int = 5000,
                 read_timeout_ms: int = 5000) -> None:
        self.url = url
        self._shown = redact_url(url)
        self._open_timeout_ms = open_timeout_ms
        self._read_timeout_ms = read_timeout_ms
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        """Connect. Raises SourceLost if the stream cannot be opened in time."""
        self.close()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._read_timeout_ms,
        ]
        try:
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        except cv2.error as e:
            raise SourceLost(f"stream {self._shown}: cannot open: {e}") from e
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"stream {self._shown}: cannot open")
        self._cap = cap

    def read(self) -> SourceRead:
        """The next frame (H x W x 3 BGR uint8). Raises SourceLost if the stream drops or
        no frame arrives within `read_timeout_ms`."""
        return _read_live(self._cap, f"stream {self._shown}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
