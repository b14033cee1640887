"""What the node does with oversized, malformed and hostile frames before and while it decodes
them (accel_ros/ros/input_guard.py), without ROS: sizes read from PNG/JPEG headers, the
max_input_pixels cap, and decoder messages kept off stderr."""

from __future__ import annotations

import array
import os
import struct
import types
import zlib

import cv2
import numpy as np
import pytest

from accel_ros.io.bridge import ImageConversionError, message_to_rgb8
from accel_ros.ros.input_guard import (
    DecoderOutput,
    check_input_size,
    convert_checked,
    declared_size,
    silence_opencv,
)
from accel_ros.ros.parameters import NodeOptions, parse_parameters
from accel_ros.ros.processing import BatchProcessor
from accel_ros.ros.slots import ReadyFrame

DEFAULT_CAP = NodeOptions().max_input_pixels


def compressed(data: bytes, fmt: str = "png") -> types.SimpleNamespace:
    """A CompressedImage-like message as rclpy delivers it (data an array.array)."""
    header = types.SimpleNamespace(stamp=types.SimpleNamespace(sec=1, nanosec=0), frame_id="c")
    return types.SimpleNamespace(header=header, format=fmt, data=array.array("B", data))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(height: int = 12000, width: int = 12000) -> bytes:
    """A valid RGB PNG of zeros: about 420 KB that decode to height x width x 3 bytes (the
    issue's 12000 x 12000: 432 MB, and 9 GB of resident memory in the node)."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (60, 80, 3), np.uint8), (0, 0), 2)
    return {"png": cv2.imencode(".png", image)[1].tobytes(),
            "jpeg": cv2.imencode(".jpg", image)[1].tobytes()}


def test_sizes_come_from_the_headers_without_decoding(encoded):
    assert declared_size(compressed(encoded["png"])) == (60, 80)
    assert declared_size(compressed(encoded["jpeg"], "jpeg")) == (60, 80)
    progressive = cv2.imencode(".jpg", np.zeros((33, 47, 3), np.uint8),
                               [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert declared_size(compressed(progressive, "jpeg")) == (33, 47)
    raw = types.SimpleNamespace(height=5000, width=4000, encoding="rgb8", data=b"")
    assert declared_size(raw) == (5000, 4000)
    for data, message in [
        (b"", "empty CompressedImage"),
        (b"GIF89a" + bytes(40), "neither PNG nor JPEG"),
        (encoded["png"][:20], "truncated PNG"),
        (encoded["png"][:8] + _chunk(b"tEXt", b"x" * 13) + encoded["png"][33:],
         "IHDR chunk is not first"),
        (encoded["png"][:29] + b"\0\0\0\0" + encoded["png"][33:], "IHDR CRC error"),
        (encoded["jpeg"][:30], "truncated JPEG"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(20), "no frame header"),
        (b"\xff\xd8garbage" + bytes(20), "malformed JPEG"),
    ]:
        with pytest.raises(ImageConversionError, match=message):
            declared_size(compressed(data))


class ReadRecorder:
    """A message's `data` that records how far it was read (a plain sequence: no buffer
    protocol, so every read goes through `__getitem__`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.read_up_to = 0

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index):
        stop = index.stop if isinstance(index, slice) else index + 1
        self.read_up_to = max(self.read_up_to, min(stop or len(self._data), len(self._data)))
        return self._data[index]


def test_a_decompression_bomb_is_refused_before_decoding():
    bomb = compressed(png_bomb())
    assert len(bomb.data) < 600_000 and declared_size(bomb) == (12000, 12000)
    bomb.data = ReadRecorder(bytes(bomb.data))
    calls = []
    with pytest.raises(ImageConversionError, match=r"12000x12000 pixels \(144\.0 MP\) "
                                                   r"exceeds max_input_pixels 16777216"):
        convert_checked(bomb, lambda msg: calls.append(msg), DEFAULT_CAP)
    # Refused from the PNG signature and IHDR chunk (33 bytes): the decoder never ran and
    # the compressed stream behind them was never read.
    assert calls == [] and 0 < bomb.data.read_up_to <= 64
    # Raw images too: the declared size is checked before the data is touched.
    huge = types.SimpleNamespace(height=100_000, width=100_000, encoding="rgb8", step=300_000,
                                 data=b"\0" * 10)
    with pytest.raises(ImageConversionError, match="exceeds max_input_pixels"):
        check_input_size(huge, DEFAULT_CAP)
    assert DEFAULT_CAP == 4096 * 4096
    check_input_size(types.SimpleNamespace(height=4096, width=4096), DEFAULT_CAP)
    with pytest.raises(ValueError, match=r"max_input_pixels must be in \[1, "):
        parse_parameters({"max_input_pixels": 0})


def _corrupt(encoded: dict[str, bytes]) -> dict[str, bytes]:
    """Frames that make libpng / libjpeg / OpenCV write to stderr when decoded."""
    png, jpeg = encoded["png"], encoded["jpeg"]
    return {
        "png data": png[:100] + bytes([png[100] ^ 0xFF]) + png[101:],  # libpng error
        "png chunk": png[:8] + _chunk(b"tEXt", b"x") + png[8:],  # OpenCV: IHDR shall be first
        "jpeg data": jpeg[:300] + b"\xff\xd9garbage" + jpeg[300:],  # Corrupt JPEG data
    }


def test_decoder_messages_never_reach_stderr(encoded, capfd):
    """libpng and libjpeg print straight to file descriptor 2 (34 raw lines for 62 bad frames
    in the issue's soak); each bad frame is refused with the decoder's words instead."""
    silence_opencv()
    reasons = {}
    for name, data in _corrupt(encoded).items():
        with pytest.raises(ImageConversionError) as error:
            convert_checked(compressed(data), message_to_rgb8, DEFAULT_CAP)
        reasons[name] = str(error.value)
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert "libpng error" in reasons["png data"]
    assert "IHDR chunk is not first" in reasons["png chunk"]  # refused before the decoder
    # libjpeg recovered an image, but its data is corrupt: refused, with libjpeg's reason.
    assert "Corrupt JPEG data: 9 extraneous bytes" in reasons["jpeg data"]
    good = convert_checked(compressed(encoded["jpeg"]), message_to_rgb8, DEFAULT_CAP)
    assert good.shape == (60, 80, 3) and capfd.readouterr().err == ""


def test_other_output_during_a_decode_is_passed_on(capfd):
    """Another thread's log line written while a frame decodes still reaches stderr."""
    with DecoderOutput() as output:
        os.write(2, b"[INFO] [1.0] [node]: from another thread\n")
        os.write(2, b"libpng warning: iCCP: known incorrect sRGB profile\n")
    assert output.messages == ["libpng warning: iCCP: known incorrect sRGB profile"]
    assert capfd.readouterr().err == "[INFO] [1.0] [node]: from another thread\n"


class _NeverCalled:
    """A segmenter that must not be reached."""

    def check_frame(self, frame):
        raise AssertionError("an oversized frame reached the segmenter")

    def reset(self, reason=None, stream="default"):
        pass


class _Logger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def warning(self, message: str) -> None:
        self.records.append(("warning", message))

    def info(self, message: str) -> None:
        self.records.append(("info", message))


def test_oversized_frames_are_counted_and_reported_like_other_bad_frames(encoded):
    logger = _Logger()
    processor = BatchProcessor(_NeverCalled(), ["default"], NodeOptions(), logger=logger,
                               label_streams=False)
    bomb = compressed(png_bomb(5000, 5000))
    for _ in range(3):
        (outcome,) = processor.process([ReadyFrame("default", bomb)])
        assert outcome.outputs is None
    errors = processor.errors("default")
    assert errors.conversion == 3 and errors.recent_failures == 3
    assert "exceeds max_input_pixels" in errors.last
    (warning,) = logger.records  # once, then throttled
    assert warning[0] == "warning" and "5000x5000 pixels (25.0 MP)" in warning[1]
    # The cap is live: a lower one refuses a small frame too.
    processor.options = NodeOptions(max_input_pixels=1000)
    (outcome,) = processor.process([ReadyFrame("default", compressed(encoded["png"]))])
    assert outcome.outputs is None and "80x60 pixels" in processor.errors("default").last
