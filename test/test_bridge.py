"""The numpy image bridge against real ROS 2 message classes (rosbags, no ROS install needed).

Every conversion goes through CDR serialisation and back, as a message would on the wire.
"""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from accel_ros.io.bridge import (
    ENCODINGS,
    ImageConversionError,
    array_to_image,
    compressed_to_rgb8,
    from_array,
    from_rgb8,
    image_to_array,
    message_to_rgb8,
    rgb8_to_compressed,
    to_rgb8,
)

H, W = 12, 16


@pytest.fixture(scope="module")
def store():
    return get_typestore(Stores.ROS2_HUMBLE)


def _header(store, frame_id: str = "camera"):
    time = store.types["builtin_interfaces/msg/Time"](sec=12, nanosec=500)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def wire(store, fields: dict, typename: str = "sensor_msgs/msg/Image"):
    """Build a message from bridge fields, CDR-serialise and deserialise it."""
    msg = store.types[typename](**{"header": _header(store), **fields})
    return store.deserialize_cdr(store.serialize_cdr(msg, typename), typename)


def smooth_rgb(height: int = H, width: int = W) -> np.ndarray:
    """(H, W, 3) uint8 with gentle gradients in every channel (demosaic/chroma friendly)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([40 + 6 * x, 200 - 5 * y, 90 + 2 * x + 3 * y], axis=2)
    return rgb.round().astype(np.uint8)


def random_rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


LOSSLESS = ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "8UC4", "rgb16", "bgr16", "rgba16",
            "bgra16"]


@pytest.mark.parametrize("encoding", LOSSLESS)
def test_colour_encodings_round_trip_exactly(store, encoding):
    rgb = random_rgb()
    msg = wire(store, from_rgb8(rgb, encoding))
    assert msg.encoding == encoding
    assert msg.step == W * ENCODINGS[encoding].channels * ENCODINGS[encoding].dtype.itemsize
    out = to_rgb8(msg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_bgr_bytes_are_stored_blue_first(store):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 10, 30  # red 10, blue 30
    msg = wire(store, from_rgb8(rgb, "bgr8"))
    assert list(msg.data[:3]) == [30, 0, 10]
    assert list(wire(store, from_rgb8(rgb, "rgba8")).data[:4]) == [10, 0, 30, 255]


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1", "32FC1", "64FC1"])
def test_single_channel_encodings_give_grey_rgb(store, encoding):
    rgb = random_rgb(1)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = to_rgb8(wire(store, from_rgb8(rgb, encoding)))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_encoding_keeps_raw_pixels_through_cdr(store, encoding):
    info = ENCODINGS[encoding]
    shape = (H, W) if info.channels == 1 else (H, W, info.channels)
    rng = np.random.default_rng(7)
    if info.dtype.kind == "f":
        pixels = rng.normal(size=shape).astype(info.dtype)
    else:
        limits = np.iinfo(info.dtype)
        pixels = rng.integers(limits.min, limits.max, shape, dtype=info.dtype, endpoint=True)
    msg = wire(store, from_array(pixels, encoding))
    assert (msg.height, msg.width, msg.is_bigendian) == (H, W, 0)
    out = image_to_array(msg)
    assert out.dtype == info.dtype and out.shape == shape
    np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2", "uyvy", "yuyv"])
def test_yuv422_round_trip_within_chroma_subsampling_tolerance(store, encoding):
    rgb = smooth_rgb()
    msg = wire(store, from_rgb8(rgb, encoding))
    assert msg.step == 2 * W and len(msg.data) == 2 * W * H
    out = to_rgb8(msg).astype(int)
    error = np.abs(out - rgb.astype(int))
    # Chroma is shared by pixel pairs: a smooth image loses only a few levels.
    assert error.max() <= 6 and error.mean() <= 2.0


def test_yuv422_byte_orders_are_uyvy_and_yuyv(store):
    grey = np.full((2, 4, 3), 128, np.uint8)
    uyvy = np.asarray(wire(store, from_rgb8(grey, "yuv422")).data).reshape(2, 4, 2)
    yuyv = np.asarray(wire(store, from_rgb8(grey, "yuv422_yuy2")).data).reshape(2, 4, 2)
    # Grey has neutral chroma (128); luma of 128 grey in BT.601 limited range is 126.
    np.testing.assert_array_equal(uyvy[..., 0], 128)
    np.testing.assert_array_equal(uyvy[..., 1], 126)
    np.testing.assert_array_equal(yuyv[..., 0], 126)
    np.testing.assert_array_equal(yuyv[..., 1], 128)
    # A saturated red pixel pair: V (red difference) is high, U low.
    red = np.zeros((1, 2, 3), np.uint8)
    red[..., 0] = 255
    u, y0, v, y1 = np.asarray(wire(store, from_rgb8(red, "yuv422")).data)
    assert v > 200 and u < 110 and y0 == y1


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_demosaic_recovers_flat_and_smooth_images(store, pattern, bits):
    encoding = f"bayer_{pattern}{bits}"
    flat = np.empty((H, W, 3), np.uint8)
    flat[...] = (200, 100, 50)
    out = to_rgb8(wire(store, from_rgb8(flat, encoding)))
    # Borders are extrapolated by the demosaic; the interior of a flat image is exact.
    np.testing.assert_array_equal(out[2:-2, 2:-2], flat[2:-2, 2:-2])

    smooth = smooth_rgb()
    out = to_rgb8(wire(store, from_rgb8(smooth, encoding))).astype(int)
    error = np.abs(out[2:-2, 2:-2] - smooth[2:-2, 2:-2].astype(int))
    assert error.max() <= 8 and error.mean() <= 3.0


def test_bayer_mosaic_layout_matches_pattern_name(store):
    flat = np.empty((2, 2, 3), np.uint8)
    flat[...] = (200, 100, 50)
    msg = wire(store, from_rgb8(flat, "bayer_grbg8"))
    assert list(msg.data) == [100, 200, 50, 100]  # G R / B G


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "bgra8", "32FC1", "yuv422"])
def test_padded_step_is_honoured(store, encoding):
    info = ENCODINGS[encoding]
    row = W * info.channels * info.dtype.itemsize
    rgb = smooth_rgb()
    # An odd padding also breaks 2/4-byte alignment of rows.
    msg = wire(store, from_rgb8(rgb, encoding, step=row + 5))
    assert msg.step == row + 5 and len(msg.data) == (row + 5) * H
    reference = wire(store, from_rgb8(rgb, encoding))
    np.testing.assert_array_equal(image_to_array(msg), image_to_array(reference))
    np.testing.assert_array_equal(to_rgb8(msg), to_rgb8(reference))


def test_padding_bytes_are_ignored(store):
    pixels = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    fields = from_array(pixels, "mono8", step=W + 3)
    data = fields["data"].reshape(H, W + 3)
    data[:, W:] = 255  # garbage in the padding must not leak into the image
    np.testing.assert_array_equal(image_to_array(wire(store, fields)), pixels)


def test_big_endian_mono16(store):
    pixels = np.array([[0x0102, 0xA0B0], [0xFFFF, 0x0000]], dtype=np.uint16)
    msg = wire(store, from_array(pixels, "mono16", bigendian=True))
    assert msg.is_bigendian == 1
    assert list(msg.data[:4]) == [0x01, 0x02, 0xA0, 0xB0]  # most significant byte first
    out = image_to_array(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, pixels)
    little = wire(store, from_array(pixels, "mono16"))
    assert list(little.data[:2]) == [0x02, 0x01]
    np.testing.assert_array_equal(to_rgb8(msg), to_rgb8(little))
    # Full 16-bit range maps onto full 8-bit range.
    assert to_rgb8(msg)[1, 0, 0] == 255 and to_rgb8(msg)[1, 1, 0] == 0


def test_big_endian_padded_float(store):
    pixels = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    msg = wire(store, from_array(pixels, "32FC1", bigendian=True, step=4 * W + 2))
    np.testing.assert_array_equal(image_to_array(msg), pixels)


def test_duck_typed_messages_with_any_data_container():
    pixels = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    raw = pixels.tobytes()
    for data in (raw, bytearray(raw), memoryview(raw), array.array("B", raw), list(raw)):
        msg = SimpleNamespace(height=2, width=4, encoding="rgb8", is_bigendian=0, step=12,
                              data=data)
        np.testing.assert_array_equal(to_rgb8(msg), pixels)


def test_array_to_image_with_message_factory(store):
    image_cls = store.types["sensor_msgs/msg/Image"]
    labels = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 11
    msg = array_to_image(labels, "mono8", image_cls, header=_header(store, "cam"))
    assert isinstance(msg, image_cls) and msg.header.frame_id == "cam"
    again = store.deserialize_cdr(store.serialize_cdr(msg, image_cls.__msgtype__),
                                  image_cls.__msgtype__)
    np.testing.assert_array_equal(image_to_array(again), labels)
    assert "header" not in array_to_image(labels, "mono8")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoding": "rgb9"}, "unsupported image encoding 'rgb9'"),
        ({"encoding": ""}, "unsupported image encoding ''"),
        ({"height": 0, "step": 0, "data": b""}, "empty image"),
        ({"width": 0, "step": 0, "data": b""}, "empty image"),
        ({"data": bytes(4 * 3 * 2 - 1)}, "data has 23 bytes but step * height"),
        ({"data": bytes(4 * 3 * 2 + 3)}, "data has 27 bytes"),
        ({"step": 11, "data": bytes(22)}, "step 11 is smaller than one row"),
        ({"encoding": "yuv422", "width": 3, "step": 6, "data": bytes(12)}, "even width"),
        ({"encoding": "8UC2", "step": 8, "data": bytes(16)}, "no colour meaning"),
        ({"encoding": "32SC1", "step": 16, "data": bytes(32)}, "cannot display int32"),
    ],
)
def test_bad_images_are_refused_with_clear_errors(fields, message):
    base = {"height": 2, "width": 4, "encoding": "rgb8", "is_bigendian": 0, "step": 12,
            "data": bytes(24)}
    msg = SimpleNamespace(**{**base, **fields})
    with pytest.raises(ImageConversionError, match=message.replace("*", r"\*")):
        to_rgb8(msg)
    assert issubclass(ImageConversionError, ValueError)


def test_from_array_refuses_mismatched_arrays():
    with pytest.raises(ImageConversionError, match=r"rgb8 needs uint8 pixels, got float64"):
        from_array(np.zeros((2, 2, 3)), "rgb8")
    with pytest.raises(ImageConversionError, match=r"needs a \(H, W, 3\) array"):
        from_array(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="empty image"):
        from_array(np.zeros((0, 2), np.uint8), "mono8")
    with pytest.raises(ImageConversionError, match="step 3 is smaller"):
        from_array(np.zeros((2, 2), np.uint16), "mono16", step=3)
    with pytest.raises(ImageConversionError, match="unsupported image encoding"):
        from_array(np.zeros((2, 2), np.uint8), "grey")
    # (H, W, 1) is accepted for single-channel encodings.
    assert from_array(np.zeros((2, 3, 1), np.uint8), "mono8")["step"] == 3


def test_png_compressed_round_trip_is_exact(store):
    rgb = random_rgb(3)
    typename = "sensor_msgs/msg/CompressedImage"
    msg = wire(store, rgb8_to_compressed(rgb, "png"), typename)
    assert msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb8(msg), rgb)
    np.testing.assert_array_equal(message_to_rgb8(msg), rgb)


def test_jpeg_compressed_round_trip_is_close(store):
    rgb = smooth_rgb(32, 48)
    msg = wire(store, rgb8_to_compressed(rgb, "jpeg", quality=95),
               "sensor_msgs/msg/CompressedImage")
    out = compressed_to_rgb8(msg)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3.0


def test_bad_compressed_images_are_refused(store):
    image_cls = store.types["sensor_msgs/msg/CompressedImage"]
    header = _header(store)
    garbage = image_cls(header=header, format="jpeg", data=np.arange(50, dtype=np.uint8))
    with pytest.raises(ImageConversionError, match="could not decode CompressedImage"):
        compressed_to_rgb8(garbage)
    empty = image_cls(header=header, format="png", data=np.zeros(0, np.uint8))
    with pytest.raises(ImageConversionError, match="empty CompressedImage"):
        compressed_to_rgb8(empty)
    depth = image_cls(header=header, format="16UC1; compressedDepth png", data=np.ones(9, np.uint8))
    with pytest.raises(ImageConversionError, match="compressedDepth"):
        compressed_to_rgb8(depth)
    with pytest.raises(ImageConversionError, match="neither a sensor_msgs/Image"):
        message_to_rgb8(SimpleNamespace(data=b""))


@pytest.mark.skipif(not hasattr(cv2, "COLOR_RGB2YUV_UYVY"), reason="OpenCV has no YUV422 encoder")
def test_yuv422_encoder_agrees_with_opencv():
    rgb = smooth_rgb()
    ours = from_rgb8(rgb, "yuv422")["data"].reshape(H, W, 2).astype(int)
    np.testing.assert_allclose(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY), atol=1)
    ours = from_rgb8(rgb, "yuv422_yuy2")["data"].reshape(H, W, 2).astype(int)
    np.testing.assert_allclose(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2), atol=1)


def test_to_rgb8_returns_a_writable_contiguous_array():
    raw = bytes(range(24))
    msg = SimpleNamespace(height=2, width=4, encoding="rgb8", is_bigendian=0, step=12, data=raw)
    out = to_rgb8(msg)
    assert out.flags.writeable and out.flags.c_contiguous
    out[0, 0, 0] = 99  # must not fail (torch.from_numpy wants writable arrays)
    assert raw[0] == 0
