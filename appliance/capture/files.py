"""File sources: a video file and a folder of images, both optionally looping and paced.

Both remember where they were, so a reopen after SourceLost (file or folder gone, a
network share dropped) resumes with the next frame rather than starting over.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np

from appliance.capture.source import FramePacer, SourceRead, to_bgr_u8
from appliance.errors import FrameUnreadable, SourceEnded, SourceLost
from models.imagefile import ImageFileError, decode_image

logger = logging.getLogger(__name__)

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders `img2.png` before `img10.png` (case-insensitive, then exact)."""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


class VideoFileSource:
    """Frames of a video file decoded by OpenCV (FFmpeg), no part ids, no capture times.

    At the end of the file it raises SourceEnded, or starts again with `loop`. A file that
    is missing or cannot be opened or decoded raises SourceLost.
    """

    def __init__(self, path: Path, *, loop: bool = False, max_fps: float | None = None) -> None:
        self.path = path
        self._loop = loop
        self._pacer = FramePacer(max_fps)
        self._cap: cv2.VideoCapture | None = None
        self._next_index = 0  # next frame to read, kept across reopen

    def _open_capture(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            raise SourceLost(f"video file {self.path} does not exist")
        try:
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        except cv2.error as e:
            raise SourceLost(f"cannot open video {self.path}: {e}") from e
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"cannot open video {self.path}")
        return cap

    def open(self) -> None:
        """Open the file and seek to where a previous open left off."""
        self.close()
        cap = self._open_capture()
        if self._next_index > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, float(self._next_index))
        self._cap = cap
        self._pacer.reset()

    def _grab(self) -> cv2.typing.MatLike | None:
        if self._cap is None:
            raise SourceLost(f"video {self.path} is not open")
        try:
            ok, image = self._cap.read()
        except cv2.error as e:
            raise SourceLost(f"decoding {self.path} failed: {e}") from e
        return image if ok and image is not None else None

    def read(self) -> SourceRead:
        """The next frame (H x W x 3 BGR uint8). Raises SourceEnded at the end of the
        file unless looping, SourceLost if the file vanished or yields no frame at all."""
        self._pacer.wait()
        image = self._grab()
        if image is None:
            if not self.path.is_file():
                raise SourceLost(f"video file {self.path} vanished")
            if not self._loop:
                raise SourceEnded(f"end of {self.path} after {self._next_index} frames")
            if self._next_index == 0:
                raise SourceLost(f"no frame could be decoded from {self.path}")
            # Rewind by reopening: seeking is not reliable in every container.
            self.close()
            self._next_index = 0
            self._cap = self._open_capture()
            image = self._grab()
            if image is None:
                raise SourceLost(f"no frame could be decoded from {self.path} after rewind")
        self._next_index += 1
        return to_bgr_u8(image, f"video {self.path}"), None, None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource:
    """Images of a folder in natural name order (`img2` before `img10`).

    `pattern` is one or more globs joined by `|`, matched case-insensitively against file
    names (not recursive). With `part_id_from_name` the file stem is the part id. At the
    end it raises SourceEnded, or, with `loop`, lists the folder again and starts over
    (picking up new files). Every listed file is a frame: one that cannot be read or
    decoded (empty, not an image, truncated, header and pixels disagree) raises
    FrameUnreadable (``unreadable`` or ``corrupt``) so that it is recorded, never skipped
    (`unusable` counts them). Files are decoded strictly (models.imagefile): a truncated
    JPEG is not half-decoded. A missing folder raises SourceLost.
    """

    def __init__(
        self,
        directory: Path,
        *,
        pattern: str = "*.png|*.jpg",
        loop: bool = False,
        max_fps: float | None = None,
        part_id_from_name: bool = False,
    ) -> None:
        self.directory = directory
        self._patterns = tuple(p.strip().lower() for p in pattern.split("|") if p.strip())
        if not self._patterns:
            raise ValueError(f"pattern {pattern!r} names no glob")
        self._loop = loop
        self._pacer = FramePacer(max_fps)
        self._part_id_from_name = part_id_from_name
        self._files: list[Path] | None = None
        self._pos = 0
        self._last_key: tuple[tuple[str | int, ...], str] | None = None
        self.unusable = 0
        """Files that were read as frames but could not be used (unreadable, corrupt)."""

    def _list(self) -> list[Path]:
        try:
            with os.scandir(self.directory) as it:
                names = [
                    e.name for e in it
                    if e.is_file() and any(fnmatch.fnmatchcase(e.name.lower(), p)
                                           for p in self._patterns)
                ]
        except OSError as e:
            raise SourceLost(f"cannot list folder {self.directory}: {e}") from e
        return [self.directory / n for n in sorted(names, key=natural_key)]

    def open(self) -> None:
        """List the folder and position after the last image delivered before."""
        files = self._list()
        if not files:
            raise SourceLost(
                f"no images matching {'|'.join(self._patterns)} in {self.directory}"
            )
        self._files = files
        self._pos = 0
        if self._last_key is not None:
            last = self._last_key
            self._pos = next(
                (i for i, f in enumerate(files) if natural_key(f.name) > last), len(files)
            )
        self._pacer.reset()

    def read(self) -> SourceRead:
        """The next readable image (H x W x 3 BGR uint8) and, with `part_id_from_name`,
        its stem. Raises SourceEnded at the end unless looping, SourceLost if the folder
        is gone or holds no readable image."""
        if self._files is None:
            raise SourceLost(f"folder {self.directory} is not open")
        self._pacer.wait()
        relisted = False
        while True:
            if self._pos >= len(self._files):
                if not self._loop:
                    raise SourceEnded(f"end of folder {self.directory}")
                if relisted:
                    raise SourceLost(f"no readable image in {self.directory}")
                relisted = True
                self._files = self._list()
                self._pos = 0
                if not self._files:
                    raise SourceLost(f"no images left in {self.directory}")
            path = self._files[self._pos]
            self._pos += 1
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if not self.directory.is_dir():
                    raise SourceLost(f"folder {self.directory} vanished") from None
                continue  # removed since it was listed: it was never a frame
            except OSError as e:
                if not self.directory.is_dir():
                    raise SourceLost(f"folder {self.directory} vanished") from e
                self._unusable(path)
                raise FrameUnreadable("unreadable", f"image {path}: cannot read: {e}",
                                      self._part_id(path)) from None
            try:
                image = decode_image(data, f"image {path}")
            except ImageFileError as e:
                self._unusable(path)
                raise FrameUnreadable(e.fault, str(e), self._part_id(path)) from None
            self._last_key = natural_key(path.name)
            bgr = np.asarray(image, dtype=np.uint8)  # IMREAD_COLOR: (H, W, 3) uint8
            return to_bgr_u8(bgr, f"image {path}"), self._part_id(path), None

    def _part_id(self, path: Path) -> str | None:
        return path.stem if self._part_id_from_name else None

    def _unusable(self, path: Path) -> None:
        self.unusable += 1
        self._last_key = natural_key(path.name)  # a reopen resumes after it

    def close(self) -> None:
        self._files = None
