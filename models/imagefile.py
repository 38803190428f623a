"""Image files decoded strictly: the size is read from the header before anything is
decoded, and a file the decoder would only partly read is an error, not a picture.

OpenCV's ``imdecode`` returns a half-grey image for a truncated JPEG (libjpeg only
warns) and allocates whatever a header claims. So, before decoding: an empty file or
one that is no known image format is ``unreadable``; a PNG without its closing
``IEND`` chunk or a JPEG without its ``EOI`` marker is ``corrupt`` (truncated); a header
that claims more than `max_pixels` is ``corrupt``; and after decoding, an image whose
size differs from its header is ``corrupt``. PNG, JPEG and BMP are checked this way;
other formats OpenCV reads are decoded and only their decoded size is checked.

Pure bytes in, array out; no IO.
"""

from __future__ import annotations

import struct
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import ModelError

__all__ = ["MAX_IMAGE_PIXELS", "ImageFault", "ImageFileError", "decode_image", "header_size_wh"]

MAX_IMAGE_PIXELS = 100_000_000
"""The most pixels an image file may claim (about 300 MB decoded as BGR)."""

ImageFault = Literal["unreadable", "corrupt"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageFileError(ModelError):
    """An image file that cannot be used; `fault` says whether it is no image at all
    (``unreadable``) or a damaged one (``corrupt``)."""

    def __init__(self, fault: ImageFault, message: str) -> None:
        super().__init__(message)
        self.fault: ImageFault = fault


def _jpeg_size_wh(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        if length < 2:
            return None
        pos += 2 + length
    return None


def header_size_wh(data: bytes) -> tuple[str, tuple[int, int] | None] | None:
    """(format, (width, height) from the header or None if the header is cut short) for
    PNG, JPEG and BMP; None for another or no format."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return "png", None
        width, height = struct.unpack(">II", data[16:24])
        return "png", (int(width), int(height))
    if data.startswith(_JPEG_SOI):
        return "jpeg", _jpeg_size_wh(data)
    if data.startswith(b"BM"):
        if len(data) < 26:
            return "bmp", None
        width, height = struct.unpack("<ii", data[18:26])
        return "bmp", (abs(int(width)), abs(int(height)))
    return None


def _complete(kind: str, data: bytes) -> bool:
    if kind == "png":
        return data.endswith(_PNG_IEND)
    if kind == "jpeg":
        # Some encoders pad after EOI; the marker must still be there.
        return data.rstrip(b"\x00").endswith(_JPEG_EOI)
    return True


def decode_image(
    data: bytes, name: str, *, max_pixels: int = MAX_IMAGE_PIXELS,
    flags: int = cv2.IMREAD_COLOR,
) -> npt.NDArray[np.generic]:
    """Decode an image file's bytes with OpenCV's `flags` (default: (H, W, 3) BGR uint8),
    strictly (see the module docstring). `name` is used in messages. Raises
    ImageFileError."""
    if not data:
        raise ImageFileError("unreadable", f"{name}: empty file (0 bytes)")
    header = header_size_wh(data)
    if header is not None:
        kind, size_wh = header
        if size_wh is None:
            raise ImageFileError("corrupt", f"{name}: {kind} header is cut short")
        width, height = size_wh
        if width <= 0 or height <= 0:
            raise ImageFileError("corrupt", f"{name}: {kind} header says {width}x{height}")
        if width * height > max_pixels:
            raise ImageFileError(
                "corrupt", f"{name}: {kind} header says {width}x{height} pixels, more than "
                f"the limit {max_pixels}")
        if not _complete(kind, data):
            raise ImageFileError("corrupt", f"{name}: truncated {kind} (no end marker)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as e:
        raise ImageFileError("corrupt", f"{name}: cannot be decoded ({e})") from None
    if image is None:
        fault: ImageFault = "corrupt" if header is not None else "unreadable"
        what = "cannot be decoded" if header is not None else "not an image OpenCV reads"
        raise ImageFileError(fault, f"{name}: {what}")
    decoded_wh = (int(image.shape[1]), int(image.shape[0]))
    if header is not None and header[1] is not None and decoded_wh != header[1]:
        raise ImageFileError(
            "corrupt", f"{name}: decoded {decoded_wh[0]}x{decoded_wh[1]}, header says "
            f"{header[1][0]}x{header[1][1]}")
    if decoded_wh[0] * decoded_wh[1] > max_pixels:
        raise ImageFileError("corrupt", f"{name}: {decoded_wh[0]}x{decoded_wh[1]} pixels, more "
                             f"than the limit {max_pixels}")
    return np.asarray(image)
