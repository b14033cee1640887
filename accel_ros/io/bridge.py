"""Pure-numpy conversion between sensor_msgs/Image (and CompressedImage) and numpy arrays.

Duck-typed on purpose: anything with the sensor_msgs/Image attributes (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``) works, so rclpy messages, rosbags dataclasses
and plain namespaces are all accepted, and no ROS installation is needed. ``data`` may be a numpy
array, ``bytes``, ``bytearray``, ``memoryview``, ``array.array('B')`` (what rclpy uses) or a list.

Conventions:
- ``image_to_array`` returns the message's own layout and dtype: (H, W) for one channel,
  (H, W, C) otherwise, yuv422 as raw (H, W, 2) uint8 byte pairs, bayer as the raw (H, W) mosaic.
- ``to_rgb8`` turns any supported encoding into (H, W, 3) uint8 RGB, what the network eats.
- ``from_array`` / ``from_rgb8`` return a dict of message fields, ready for ``Image(**fields)``.
  Generic 3/4-channel encodings (8UC3, 8UC4, ...) are taken as BGR(A): that is what
  ``cv_bridge.cv2_to_imgmsg`` produces for OpenCV images published with "passthrough".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """An image message cannot be converted (unknown encoding, empty, inconsistent sizes)."""


@dataclass(frozen=True)
class EncodingInfo:
    """Memory layout of one sensor_msgs/image_encodings value."""

    dtype: np.dtype
    channels: int
    # "color" (order names the channels), "mono", "generic" (nC1..nC4), "yuv422", "bayer".
    kind: str
    order: str = ""


def _build_encodings() -> dict[str, EncodingInfo]:
    table: dict[str, EncodingInfo] = {}
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        for order in ("rgb", "bgr", "rgba", "bgra"):
            table[f"{order}{bits}"] = EncodingInfo(np.dtype(dtype), len(order), "color", order)
        table[f"mono{bits}"] = EncodingInfo(np.dtype(dtype), 1, "mono")
        for pattern in ("rggb", "bggr", "gbrg", "grbg"):
            table[f"bayer_{pattern}{bits}"] = EncodingInfo(np.dtype(dtype), 1, "bayer", pattern)
    generic = {
        "8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
        "32S": np.int32, "32F": np.float32, "64F": np.float64,
    }
    for prefix, dtype in generic.items():
        for channels in (1, 2, 3, 4):
            order = {3: "bgr", 4: "bgra"}.get(channels, "")
            table[f"{prefix}C{channels}"] = EncodingInfo(
                np.dtype(dtype), channels, "generic", order
            )
    # Each pixel pair shares one U and one V sample: yuv422 is U Y0 V Y1, yuy2 is Y0 U Y1 V.
    table["yuv422"] = EncodingInfo(np.dtype(np.uint8), 2, "yuv422", "uyvy")
    table["uyvy"] = table["yuv422"]
    table["yuv422_yuy2"] = EncodingInfo(np.dtype(np.uint8), 2, "yuv422", "yuyv")
    table["yuyv"] = table["yuv422_yuy2"]
    return table


ENCODINGS: dict[str, EncodingInfo] = _build_encodings()

# OpenCV >= 5 names Bayer codes by the pattern's first row; older versions use the second-row
# pair ("BG" == RGGB). Both resolve to the same demosaic; prefer the unambiguous name.
_BAYER_TO_RGB = {
    pattern: getattr(cv2, f"COLOR_Bayer{pattern.upper()}2RGB", None)
    or getattr(cv2, f"COLOR_Bayer{legacy}2RGB")
    for pattern, legacy in (("rggb", "BG"), ("bggr", "RG"), ("gbrg", "GR"), ("grbg", "GB"))
}
_YUV_TO_RGB = {"uyvy": cv2.COLOR_YUV2RGB_UYVY, "yuyv": cv2.COLOR_YUV2RGB_YUY2}


def encoding_info(encoding: str) -> EncodingInfo:
    """Layout of `encoding`; raises ImageConversionError for an unsupported one."""
    info = ENCODINGS.get(encoding)
    if info is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}"
        )
    return info


def _data_bytes(data: Any) -> np.ndarray:
    """Message `data` of any container type -> flat (N,) uint8 view (no copy when possible)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, "typecode"):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image-like -> array in the message's layout, native byte order.

    Returns (H, W) for one channel, (H, W, C) otherwise, with the encoding's dtype; yuv422
    encodings give raw (H, W, 2) uint8 byte pairs. Row padding (`step` larger than a row) is
    removed. The result may be a read-only view of `msg.data`; copy it before writing.
    """
    height, width = int(msg.height), int(msg.width)
    encoding = str(msg.encoding)
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"empty image: height={height}, width={width} (encoding {encoding!r})"
        )
    info = encoding_info(encoding)
    if info.kind == "yuv422" and width % 2:
        raise ImageConversionError(f"{encoding} needs an even width (pixel pairs), got {width}")
    row_bytes = width * info.channels * info.dtype.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row of {width} x {encoding} pixels "
            f"({row_bytes} bytes)"
        )
    raw = _data_bytes(msg.data)
    if raw.size != step * height:
        raise ImageConversionError(
            f"data has {raw.size} bytes but step * height = {step} * {height} = "
            f"{step * height} ({encoding} {width}x{height})"
        )
    rows = raw.reshape(height, step)
    if step != row_bytes:
        rows = np.ascontiguousarray(rows[:, :row_bytes])
    wire = info.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = rows.reshape(-1).view(wire)
    if info.dtype.itemsize > 1 and wire != info.dtype:
        pixels = pixels.astype(info.dtype)  # swap to native order
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    return pixels.reshape(shape)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or [0, 1] float array to uint8 (16-bit: full range maps to full range)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if array.dtype.kind == "f":
        return (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ImageConversionError(
        f"cannot display {array.dtype} pixels as rgb8 (signed or 32-bit integer data)"
    )


def to_rgb8(msg: Any) -> np.ndarray:
    """sensor_msgs/Image-like of any supported encoding -> (H, W, 3) uint8 RGB, C-contiguous.

    16-bit data is scaled to 8 bits, float data is taken as [0, 1] intensities, mono and
    one-channel generic images are replicated to grey RGB, bayer is demosaiced, yuv422 is
    decoded with BT.601. The result is writable; for rgb8 it may share memory with msg.data.
    """
    array = image_to_array(msg)
    info = ENCODINGS[str(msg.encoding)]
    try:
        if info.kind == "yuv422":
            rgb = cv2.cvtColor(np.ascontiguousarray(array), _YUV_TO_RGB[info.order])
        elif info.kind == "bayer":
            rgb = _to_uint8(cv2.cvtColor(np.ascontiguousarray(array), _BAYER_TO_RGB[info.order]))
        elif info.channels == 1:
            rgb = np.repeat(_to_uint8(array)[:, :, None], 3, axis=2)
        elif info.channels == 2:
            raise ImageConversionError(f"two-channel {msg.encoding} has no colour meaning")
        else:
            rgb = _to_uint8(array[:, :, [2, 1, 0]] if info.order.startswith("bgr") else array)
            rgb = rgb[:, :, :3]
    except cv2.error as error:
        raise ImageConversionError(
            f"OpenCV could not convert {msg.encoding} {msg.width}x{msg.height}: {error}"
        ) from error
    rgb = np.ascontiguousarray(rgb)
    # rgb8 data arriving as bytes gives a read-only view; torch.from_numpy warns on those.
    return rgb if rgb.flags.writeable else rgb.copy()


def from_array(
    array: np.ndarray,
    encoding: str,
    header: Any = None,
    *,
    step: int | None = None,
    bigendian: bool = False,
) -> dict[str, Any]:
    """Array in `encoding`'s layout -> dict of sensor_msgs/Image fields.

    `array` must match the encoding exactly: (H, W) or (H, W, 1) for one channel, (H, W, C)
    otherwise, with the encoding's dtype (no silent casts). `step` pads rows to that many
    bytes; `bigendian` writes multi-byte pixels big-endian. ``data`` is a flat uint8 numpy
    array; the "header" key is present only when `header` is given.
    """
    info = encoding_info(encoding)
    array = np.asarray(array)
    if array.ndim == 3 and info.channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    expected_ndim = 2 if info.channels == 1 else 3
    if array.ndim != expected_ndim or (expected_ndim == 3 and array.shape[2] != info.channels):
        want = "(H, W)" if info.channels == 1 else f"(H, W, {info.channels})"
        raise ImageConversionError(f"{encoding} needs a {want} array, got shape {array.shape}")
    if array.dtype != info.dtype:
        raise ImageConversionError(
            f"{encoding} needs {info.dtype} pixels, got {array.dtype} (convert explicitly)"
        )
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image: shape {array.shape}")
    if info.kind == "yuv422" and width % 2:
        raise ImageConversionError(f"{encoding} needs an even width (pixel pairs), got {width}")
    row_bytes = width * info.channels * info.dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than one row ({row_bytes} bytes)")
    wire = info.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(array, dtype=wire).reshape(height, -1).view(np.uint8)
    if step > row_bytes:
        padded = np.zeros((height, step), dtype=np.uint8)
        padded[:, :row_bytes] = rows
        rows = padded
    fields: dict[str, Any] = {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": int(bool(bigendian)),
        "step": int(step),
        "data": rows.reshape(-1),
    }
    if header is not None:
        fields["header"] = header
    return fields


def array_to_image(
    array: np.ndarray,
    encoding: str,
    msg_factory: Callable[..., Any] | None = None,
    header: Any = None,
    **options: Any,
) -> Any:
    """`from_array`, then ``msg_factory(**fields)`` when a factory (message class) is given."""
    fields = from_array(array, encoding, header, **options)
    return fields if msg_factory is None else msg_factory(**fields)


def _rgb_to_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 2) uint8 packed 4:2:2, BT.601 limited range (the inverse
    of OpenCV's YUV2RGB_UYVY/YUY2)."""
    r, g, b = (rgb[:, :, i].astype(np.float32) for i in range(3))
    y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b
    # One chroma sample per horizontal pixel pair: average the pair.
    u_pair = 0.5 * (u[:, 0::2] + u[:, 1::2])
    v_pair = 0.5 * (v[:, 0::2] + v[:, 1::2])
    chroma = np.empty_like(y)
    chroma[:, 0::2], chroma[:, 1::2] = u_pair, v_pair
    packed = np.stack([chroma, y] if order == "uyvy" else [y, chroma], axis=2)
    return np.clip(packed + 0.5, 0, 255).astype(np.uint8)


def _rgb_to_bayer(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) mosaic; `pattern` names the top-left 2x2 block row by row."""
    mosaic = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    channel = {"r": 0, "g": 1, "b": 2}
    for index, colour in enumerate(pattern):
        dy, dx = divmod(index, 2)
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return mosaic


def from_rgb8(rgb: np.ndarray, encoding: str, header: Any = None, **options: Any) -> dict[str, Any]:
    """(H, W, 3) uint8 RGB -> Image fields in any supported encoding (what a camera driver
    would publish). Inverse of `to_rgb8` up to quantisation: mono is BT.601 luma, 16-bit is
    scaled by 257, float is scaled to [0, 1], yuv422 subsamples chroma, bayer mosaics."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(
            f"from_rgb8 needs an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}"
        )
    info = encoding_info(encoding)
    if info.kind == "yuv422":
        return from_array(_rgb_to_yuv422(rgb, info.order), encoding, header, **options)
    if info.kind == "bayer":
        pixels = _rgb_to_bayer(rgb, info.order)
    elif info.channels == 1:
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif info.channels == 2:
        raise ImageConversionError(f"two-channel {encoding} has no colour meaning")
    else:
        pixels = rgb[:, :, ::-1] if info.order.startswith("bgr") else rgb
        if info.channels == 4:
            alpha = np.full((*rgb.shape[:2], 1), 255, dtype=np.uint8)
            pixels = np.concatenate([pixels, alpha], axis=2)
    if info.dtype == np.uint16:
        pixels = pixels.astype(np.uint16) * 257
    elif info.dtype.kind == "f":
        pixels = pixels.astype(info.dtype) / 255.0
    elif info.dtype != np.uint8:
        raise ImageConversionError(f"from_rgb8 cannot write signed/32-bit encoding {encoding}")
    return from_array(np.ascontiguousarray(pixels), encoding, header, **options)


def compressed_to_rgb8(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage-like (jpeg/png) -> (H, W, 3) uint8 RGB.

    image_transport always compresses a bgr8 (or mono) image, so OpenCV's BGR decode is the
    right order for every ``format`` string it writes ("rgb8; jpeg compressed bgr8", "png"...).
    """
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raise ImageConversionError(f"compressedDepth images are not colour images ({fmt!r})")
    buffer = _data_bytes(msg.data)
    if buffer.size == 0:
        raise ImageConversionError(f"empty CompressedImage (format {fmt!r})")
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            f"could not decode CompressedImage ({buffer.size} bytes, format {fmt!r}) as jpeg/png"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])


def rgb8_to_compressed(
    rgb: np.ndarray, fmt: str = "jpeg", header: Any = None, quality: int = 90
) -> dict[str, Any]:
    """(H, W, 3) uint8 RGB -> dict of sensor_msgs/CompressedImage fields (jpeg or png)."""
    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"compressed format must be 'jpeg' or 'png', got {fmt!r}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ImageConversionError(f"need a non-empty (H, W, 3) uint8 array, got {rgb.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", rgb[:, :, ::-1], params)
    if not ok:
        raise ImageConversionError(f"OpenCV failed to encode a {rgb.shape} image as {fmt}")
    fields: dict[str, Any] = {
        "format": f"rgb8; {fmt} compressed bgr8",
        "data": encoded.reshape(-1).astype(np.uint8),
    }
    if header is not None:
        fields["header"] = header
    return fields


def message_to_rgb8(msg: Any) -> np.ndarray:
    """Image or CompressedImage (told apart by their fields) -> (H, W, 3) uint8 RGB."""
    if hasattr(msg, "encoding"):
        return to_rgb8(msg)
    if hasattr(msg, "format"):
        return compressed_to_rgb8(msg)
    raise ImageConversionError(
        f"{type(msg).__name__} is neither a sensor_msgs/Image nor a CompressedImage"
    )
