"""What the node checks before and while it decodes a frame, so that oversized, malformed and
hostile images cost a log line, not memory, time or a flood of stderr.

- `declared_size`: the (height, width) a message says it holds, without decoding: an Image's
  fields, or the PNG IHDR / JPEG SOF header of a CompressedImage (its first bytes).
- `check_input_size`: refuses frames above `max_input_pixels`. A 420 KB PNG can declare
  12000 x 12000 pixels: decoding it took the node from 0.84 to 9.66 GB and 30 s per frame.
- `DecoderOutput`: libpng and libjpeg print corrupt-data messages ("libpng error: IHDR: CRC
  error", "Corrupt JPEG data: 9 extraneous bytes before marker 0xc4") straight to the
  process's stderr, past the node's throttled log; while a frame is decoded, stderr goes to a
  file and those lines become the frame's error instead. `silence_opencv` does the same for
  OpenCV's own logger ("[ERROR:0@...] ... IHDR chunk shall be first").
- `convert_checked`: the three in order; a refused frame raises ImageConversionError (a
  ValueError), which the caller counts and reports like any other bad frame.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..io.bridge import ImageConversionError
from ..io.native_stderr import CapturedStderr

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field: TEM and the restart markers.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}

# What the image decoders write to stderr: libpng's and libjpeg(-turbo)'s messages and
# OpenCV's log format. Anything else written meanwhile (another thread's log) is passed on.
_DECODER_LINE = re.compile(
    r"(libpng (error|warning)|Corrupt JPEG data|Premature end of JPEG file|"
    r"Invalid SOS parameters|Inconsistent progression sequence|Unknown Adobe color transform|"
    r"Warning: unknown JFIF revision|Application transferred too many scanlines|"
    r"\[ ?(ERROR|WARN|INFO|DEBUG|VERBOSE|FATAL):\d+@)"
)


def is_compressed(msg: Any) -> bool:
    """A sensor_msgs/CompressedImage (told from an Image by its fields)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def _head(data: Any, size: int) -> bytes:
    """The first `size` bytes of a message's `data` (array.array, bytes, numpy, list)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1)[:size].astype(np.uint8).tobytes()
    if isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, "typecode"):
        return bytes(memoryview(data).cast("B")[:size])
    return bytes(data[:size])


def png_size(head: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, which must come first and pass its CRC."""
    if len(head) < 33:
        raise ImageConversionError(f"truncated PNG: {len(head)} bytes, no complete IHDR chunk")
    length, kind = struct.unpack(">I4s", head[8:16])
    if length != 13 or kind != b"IHDR":
        raise ImageConversionError("malformed PNG: the IHDR chunk is not first")
    (crc,) = struct.unpack(">I", head[29:33])
    if zlib.crc32(head[12:29]) != crc:
        raise ImageConversionError("malformed PNG: IHDR CRC error")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame segment, walking the segments before it
    (each by its length field, never decoding)."""
    position = 2
    while True:
        if position < len(data) and data[position] != 0xFF:
            raise ImageConversionError(f"malformed JPEG: no marker at byte {position}")
        while position + 1 < len(data) and data[position + 1] == 0xFF:
            position += 1  # fill bytes before a marker
        if position + 4 > len(data):
            raise ImageConversionError("truncated JPEG: no frame header (SOF)")
        marker = data[position + 1]
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan
            raise ImageConversionError("malformed JPEG: no frame header (SOF) before the scan")
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            raise ImageConversionError(f"malformed JPEG: segment length {length}")
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                raise ImageConversionError("truncated JPEG frame header")
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            if height == 0:  # the height would come in a DNL segment after the first scan
                raise ImageConversionError("JPEG without a height in its frame header (DNL)")
            return height, width
        position += 2 + length


def declared_size(msg: Any) -> tuple[int, int]:
    """(height, width) `msg` declares. CompressedImage: PNG or JPEG only (image_transport's
    formats), read from its header; raises ImageConversionError for anything else."""
    if not is_compressed(msg):
        return int(msg.height), int(msg.width)
    head = _head(msg.data, 64)
    if head.startswith(PNG_SIGNATURE):
        return png_size(head)
    if head.startswith(JPEG_SOI):
        # The frame header follows the APPn/DQT/DHT segments (EXIF can be 64 KB): read on
        # only as far as the segment lengths say.
        return jpeg_size(_head(msg.data, 1 << 20))
    if not head:
        raise ImageConversionError("empty CompressedImage")
    raise ImageConversionError(
        f"CompressedImage is neither PNG nor JPEG (format {str(msg.format)[:40]!r}, first "
        f"bytes {head[:8].hex()})"
    )


def check_input_size(msg: Any, max_pixels: int) -> None:
    """Raise ImageConversionError when `msg` declares more than `max_pixels` pixels."""
    height, width = declared_size(msg)
    if height * width > max_pixels:
        raise ImageConversionError(
            f"frame of {width}x{height} pixels ({height * width / 1e6:.1f} MP) exceeds "
            f"max_input_pixels {max_pixels}; refused before decoding"
        )


class DecoderOutput(CapturedStderr):
    """While the block runs, the decoders' stderr is captured (`CapturedStderr`). Afterwards
    `messages` holds the decoders' lines; other lines (another thread's log) are written to
    the real stderr, late by the decode time."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def __enter__(self) -> DecoderOutput:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        others = []
        for line in self.text.splitlines(keepends=True):
            if _DECODER_LINE.search(line):
                self.messages.append(line.strip())
            else:
                others.append(line)
        if others:
            os.write(2, "".join(others).encode("utf-8", "replace"))


def silence_opencv() -> None:
    """Switch OpenCV's own logger off: the node reports bad frames through its ROS log."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def convert_checked(msg: Any, convert: Callable[[Any], np.ndarray],
                    max_pixels: int) -> np.ndarray:
    """`convert(msg)` -> (H, W, 3) uint8 RGB, after `check_input_size`; a compressed frame is
    decoded inside `DecoderOutput`, and a frame the decoder complained about is refused (its
    data is corrupt even when the decoder recovered an image)."""
    check_input_size(msg, max_pixels)
    if not is_compressed(msg):
        return convert(msg)
    failure: ValueError | None = None
    with DecoderOutput() as output:
        try:
            rgb = convert(msg)
        except ValueError as error:
            failure = error
    if output.messages:
        said = "; ".join(dict.fromkeys(output.messages))  # once each, in order
        raise ImageConversionError(f"{failure or 'corrupt image data'} (decoder: {said})")
    if failure is not None:
        raise failure
    return rgb
