"""Procedural synthetic driving video with dense CamVid labels and exact optical flow.

The world is made only of planes, so every pixel's 3-D surface point is known exactly:

- a pinhole camera (X right, Y up, Z forward, no rotation) driving forward along Z in the
  right lane, with a little lateral sway and vertical bounce;
- the ground plane Y = 0: road with lane marks and zebra crossings, kerbs, sidewalks, grass;
- vertical facade planes X = const on both sides: a front row (buildings, fences, hedges,
  gaps) and a back row (tree lines, tall buildings); heights vary per block along Z;
- fronto-parallel billboards Z = const: cars and buses, pedestrians, bicyclists (moving, with
  animated legs), street lights and sign posts with signs, trees;
- sky at infinity.

Rendering casts one ray per pixel against every surface and keeps the nearest hit (z-buffer),
which gives labels and occlusion. Textures are procedural functions of each surface's own 2-D
coordinates, so they stick to the world from frame to frame. Because the hit point is known in
3-D, projecting it with the camera (and the object's position) of frame t-1 gives the exact
backward flow; casting a ray through that previous position at t-1 tells whether the point was
visible there (same surface, same depth) or occluded.

Flow convention (as in `accel_ros.model.warp`): `flow` is (H, W, 2) float32, channel 0 = x,
channel 1 = y, backward from frame t to frame t-1: the content at pixel p of frame t was at
p + flow[p] in frame t-1. Pixel centres sit at integer coordinates. flow of frame 0 is zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from .transforms import IGNORE_INDEX, image_to_tensor, labels_to_tensor

# CamVid class ids (SegNet layout), see accel_ros.palette.CAMVID_CLASSES.
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
VOID = 11

# Surface materials (shading only; labels are stored separately).
(
    M_SKY, M_ROAD, M_PAVEMENT, M_GRASS, M_BUILDING, M_FENCE, M_HEDGE, M_TREELINE, M_BODY,
    M_GLASS, M_TYRE, M_LIGHT, M_PLATE, M_SKIN, M_SHIRT, M_PANTS, M_FRAME, M_POLE, M_SIGN,
    M_TRUNK, M_CANOPY,
) = range(21)

# Billboard kinds.
K_CAR, K_BUS, K_PEDESTRIAN, K_BICYCLIST, K_LIGHT_POLE, K_SIGN_POST, K_SIGN, K_TREE = range(8)
_KIND_LABEL = {
    K_CAR: CAR, K_BUS: CAR, K_PEDESTRIAN: PEDESTRIAN, K_BICYCLIST: BICYCLIST,
    K_LIGHT_POLE: POLE, K_SIGN_POST: POLE, K_SIGN: SIGN, K_TREE: TREE,
}

_NEAR = 0.3  # m: nearer surfaces are clipped (the camera would be inside them)
_FAR = 3000.0  # m: ground/facade hits beyond this count as sky (they are sub-pixel anyway)
_FOG_DISTANCE = 220.0  # m: atmospheric haze scale; also hides texture aliasing near the horizon

# Surface ids: 0 sky, 1 ground, 2..5 facade planes, then billboards.
_SID_SKY, _SID_GROUND = 0, 1
_SID_MOVING = 1_000
_SID_STATIC = 1_000_000


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of one synthetic drive. All lengths in metres, speeds in m/s."""

    height: int = 256
    width: int = 512
    fps: float = 30.0
    speed_mps: float = 10.0
    num_cars: int = 4
    num_pedestrians: int = 3
    num_bicyclists: int = 1
    seed: int = 0
    fov_deg: float = 75.0  # horizontal field of view
    camera_height: float = 1.5
    horizon: float = 0.45  # image row of the horizon, as a fraction of the height
    lane_width: float = 3.5  # two lanes, the camera drives in the right one
    parking_width: float = 2.3  # parking strip (road) between each lane and its kerb
    sidewalk_width: float = 3.0
    sway_m: float = 0.15  # lateral sway amplitude
    bounce_m: float = 0.012  # vertical bounce amplitude (suspension)
    lighting: float = 0.12  # amplitude of the slow global brightness change
    noise_sigma: float = 1.5  # sensor noise, in uint8 levels
    blur_sigma: float = 0.6  # optics blur, in pixels (0 disables)

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"image size must be >= 8x8, got {self.height}x{self.width}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 10.0 <= self.fov_deg <= 150.0:
            raise ValueError(f"fov_deg must be in [10, 150], got {self.fov_deg}")
        if not 0.05 <= self.horizon <= 0.95:
            raise ValueError(f"horizon must be in [0.05, 0.95], got {self.horizon}")
        if min(self.num_cars, self.num_pedestrians, self.num_bicyclists) < 0:
            raise ValueError("object counts must be >= 0")
        if self.speed_mps < 0 or self.camera_height <= 0:
            raise ValueError("speed_mps must be >= 0 and camera_height > 0")

    @property
    def road_half_width(self) -> float:
        """Distance from the centre line to the kerb."""
        return self.lane_width + self.parking_width

    @property
    def focal(self) -> float:
        """Focal length in pixels."""
        return 0.5 * self.width / math.tan(math.radians(self.fov_deg) / 2.0)


@dataclass
class SyntheticFrame:
    """One rendered frame.

    image: (H, W, 3) uint8 RGB. labels: (H, W) uint8 CamVid ids (0..10, 11 = void).
    flow: (H, W, 2) float32 backward flow to the previous frame, in pixels (x, y).
    occluded: (H, W) bool, True where the pixel's surface point was not visible in the previous
    frame (hidden, outside the image, or t = 0). depth: (H, W) float32 camera Z in metres,
    inf for sky. index: frame number t.
    """

    image: np.ndarray
    labels: np.ndarray
    flow: np.ndarray
    occluded: np.ndarray
    depth: np.ndarray
    index: int


# --------------------------------------------------------------------------- procedural noise

_M32 = np.uint64(0xFFFFFFFF)


def _mix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x7FEB352D)) & _M32
    h = h ^ (h >> np.uint64(15))
    h = (h * np.uint64(0x846CA68B)) & _M32
    return h ^ (h >> np.uint64(16))


def _hash01(*keys: Any) -> np.ndarray:
    """Deterministic hash of integer keys (arrays broadcast) to floats in [0, 1)."""
    arrays = np.broadcast_arrays(*[np.atleast_1d(np.asarray(k, dtype=np.int64)) for k in keys])
    h = np.full(arrays[0].shape, 0x2545F491, dtype=np.uint64)
    for key in arrays:
        h = _mix32((h + (key.astype(np.uint64) & _M32) * np.uint64(0x9E3779B1)) & _M32)
    return h.astype(np.float64) / 4294967296.0


def _hash1(*keys: int) -> float:
    return float(_hash01(*keys)[0])


class _Noise:
    """2-D value noise from a seeded 256x256 lattice (periodic, cheap gathers)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0x5EED])
        self._table = rng.random(256 * 256).astype(np.float32)

    def value(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Smooth noise in [0, 1] at float coordinates (any shape), lattice spacing 1."""
        xf, yf = np.floor(x), np.floor(y)
        fx, fy = x - xf, y - yf
        xi = xf.astype(np.int64) & 255
        yi = yf.astype(np.int64) & 255
        xj, yj = (xi + 1) & 255, (yi + 1) & 255
        table = self._table
        c00, c10 = table[yi * 256 + xi], table[yi * 256 + xj]
        c01, c11 = table[yj * 256 + xi], table[yj * 256 + xj]
        sx = fx * fx * (3.0 - 2.0 * fx)
        sy = fy * fy * (3.0 - 2.0 * fy)
        top = c00 + (c10 - c00) * sx
        bottom = c01 + (c11 - c01) * sx
        return top + (bottom - top) * sy

    def fbm(
        self,
        x: np.ndarray,
        y: np.ndarray,
        octaves: int = 3,
        salt: float = 0.0,
        footprint: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        """Fractal sum of `octaves` noise layers, normalised to [0, 1].

        `footprint` is the pixel size in lattice units: octaves finer than a pixel fade to
        their mean, as a camera integrating over the pixel would see them (no shimmering).
        """
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        footprint = np.broadcast_to(np.asarray(footprint, dtype=np.float64), x.shape)
        total = np.zeros(x.shape, dtype=np.float64)
        amplitude, norm, scale = 1.0, 0.0, 1.0
        for octave in range(octaves):
            offset = 37.17 * (octave + 1) + 101.3 * salt
            detail = np.clip(1.5 - 1.5 * footprint * scale, 0.0, 1.0)
            total += 0.5 * amplitude
            # Only where the octave is still visible: far surfaces skip the fine octaves.
            live = np.nonzero(detail > 0.0)
            if live[0].size:
                layer = self.value(x[live] * scale + offset, y[live] * scale - offset)
                total[live] += amplitude * detail[live] * (layer - 0.5)
            norm += amplitude
            amplitude *= 0.5
            scale *= 2.03
        return total / norm


def _pulse_integral(x: np.ndarray, period: Any, width: Any) -> np.ndarray:
    """Integral from 0 to x of the pulse train [mod(x, period) < width]."""
    return np.floor(x / period) * width + np.minimum(np.mod(x, period), width)


def _stripes(
    x: np.ndarray, footprint: np.ndarray, period: Any, width: Any, start: Any = 0.0
) -> np.ndarray:
    """Coverage in [0, 1] of stripes [start + k period, start + k period + width) within the
    pixel footprint centred at x: an exact box filter, so thin marks fade with distance
    instead of flickering."""
    half = np.maximum(footprint, 1e-6) / 2.0
    rel = x - start
    return (_pulse_integral(rel + half, period, width)
            - _pulse_integral(rel - half, period, width)) / (2.0 * half)


def _band(x: np.ndarray, footprint: np.ndarray, low: Any, high: Any) -> np.ndarray:
    """Box-filtered coverage of the single interval [low, high)."""
    return _stripes(x, footprint, 1e9, np.asarray(high) - np.asarray(low), low)


# ------------------------------------------------------------------------------ scene pieces


@dataclass(frozen=True)
class _Camera:
    x: float
    y: float
    z: float
    f: float
    cx: float
    cy: float

    def project(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points -> pixel (u, v) and camera depth."""
        depth = z - self.z
        safe = np.where(depth > _NEAR, depth, _NEAR)
        return (
            self.cx + self.f * (x - self.x) / safe,
            self.cy - self.f * (y - self.y) / safe,
            depth,
        )


@dataclass(frozen=True)
class _Billboard:
    """A fronto-parallel cut-out standing at world (x, z), `base` metres above the ground."""

    ident: int
    kind: int
    x: float
    z: float
    dx: float  # displacement since the previous frame (continuous motion), metres
    dz: float
    width: float
    height: float
    base: float
    style: float  # in [0, 1): colours and shape variants
    phase: float  # walking / pedalling phase, radians
    facing: float  # +1 / -1: which way a street light's arm points


@dataclass(frozen=True)
class _Mover:
    """Motion of one moving object.

    With `wrap`, the object moves at world speed `vz` and its distance ahead of the camera is
    recycled through the `wrap` window (it reappears far ahead / behind the camera, where
    the jump is invisible or marked occluded). Without `wrap`, it follows the camera at
    z0 + sway_amp * sin(2 pi step_hz s + phase0) (a car ahead in the same lane). For people,
    step_hz is the leg cycle rate.
    """

    kind: int
    x: float
    z0: float  # initial distance ahead of the camera
    vz: float  # world speed along Z (negative: oncoming)
    wrap: tuple[float, float] | None  # relative-Z window the object recycles through
    sway_amp: float  # for `follow` objects: distance oscillation amplitude
    width: float
    height: float
    style: float
    phase0: float
    step_hz: float


def _select(value: Any, keep: np.ndarray) -> Any:
    """Scalars broadcast; per-candidate arrays are filtered like the candidates."""
    return value if np.isscalar(value) else np.asarray(value)[keep]


class _Hits:
    """Nearest-surface buffers for N rays; all arrays (N,)."""

    def __init__(self, n: int) -> None:
        self.depth = np.full(n, np.inf)
        self.sid = np.zeros(n, dtype=np.int64)
        self.label = np.full(n, SKY, dtype=np.uint8)
        self.material = np.full(n, M_SKY, dtype=np.int16)
        self.s1 = np.zeros(n)  # surface coordinates for texturing
        self.s2 = np.zeros(n)
        self.style = np.zeros(n)
        self.dx = np.zeros(n)
        self.dz = np.zeros(n)
        self.fp1 = np.zeros(n)  # pixel footprint along s1 / s2, metres (texture filtering)
        self.fp2 = np.zeros(n)

    def write(
        self,
        idx: np.ndarray,
        depth: np.ndarray,
        sid: int,
        label: int | np.ndarray,
        material: int | np.ndarray,
        s1: np.ndarray,
        s2: np.ndarray,
        style: float | np.ndarray = 0.0,
        dx: float = 0.0,
        dz: float = 0.0,
        fp1: float | np.ndarray = 0.0,
        fp2: float | np.ndarray = 0.0,
    ) -> None:
        """Keep the candidates at `idx` that are nearer than what the buffer holds."""
        closer = depth < self.depth[idx]
        if not closer.any():
            return
        idx = idx[closer]
        self.depth[idx] = depth[closer]
        self.sid[idx] = sid
        self.label[idx] = _select(label, closer)
        self.material[idx] = _select(material, closer)
        self.s1[idx] = s1[closer]
        self.s2[idx] = s2[closer]
        self.style[idx] = _select(style, closer)
        self.dx[idx] = dx
        self.dz[idx] = dz
        self.fp1[idx] = _select(fp1, closer)
        self.fp2[idx] = _select(fp2, closer)


# ------------------------------------------------------------------------------------ scene


class SyntheticDrivingScene:
    """A deterministic procedural drive; `render(t)` is a pure function of (config, t)."""

    def __init__(self, config: SceneConfig | None = None, num_frames: int = 300) -> None:
        self.config = config if config is not None else SceneConfig()
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        cfg = self.config
        self._seed = int(cfg.seed) & 0x7FFFFFFF
        self._noise = _Noise(self._seed)
        rng = np.random.default_rng([self._seed, 1])
        # Start somewhere along an endless street so different seeds see different blocks.
        self._z_start = float(rng.uniform(0.0, 20000.0))
        self._sway_phase = float(rng.uniform(0, 2 * math.pi))
        self._light_phase = float(rng.uniform(0, 2 * math.pi))
        self._movers = self._make_movers(rng)
        kerb, sw = cfg.road_half_width, cfg.sidewalk_width
        self._front_x = kerb + sw  # front facade row: buildings line the sidewalk
        self._back_x = kerb + sw + 9.0
        self._v = np.arange(cfg.height, dtype=np.float64)
        self._u = np.arange(cfg.width, dtype=np.float64)

    # ----------------------------------------------------------------- world definition

    def _make_movers(self, rng: np.random.Generator) -> list[_Mover]:
        cfg = self.config
        lw, sw, kerb = cfg.lane_width, cfg.sidewalk_width, cfg.road_half_width
        movers: list[_Mover] = []
        roles = ("oncoming", "parked_right", "ahead", "parked_left")
        ahead_count = 0
        for i in range(cfg.num_cars):
            role = roles[i % len(roles)]
            style = float(rng.random())
            bus = style > 0.88 and role != "ahead"
            width = 2.5 if bus else float(rng.uniform(1.7, 1.9))
            height = 3.0 if bus else float(rng.uniform(1.4, 1.6))
            kind = K_BUS if bus else K_CAR
            if role == "oncoming":
                movers.append(_Mover(kind, -lw / 2 + float(rng.uniform(-0.3, 0.3)),
                                     float(rng.uniform(15, 90)), -float(rng.uniform(7, 13)),
                                     (-15.0, 110.0), 0.0, width, height, style, 0.0, 0.0))
            elif role == "ahead":
                movers.append(_Mover(kind, lw / 2 + float(rng.uniform(-0.2, 0.2)),
                                     14.0 + 22.0 * ahead_count + float(rng.uniform(0, 6)), 0.0,
                                     None, 2.5, width, height, style,
                                     float(rng.uniform(0, 2 * math.pi)), 0.08))
                ahead_count += 1
            else:
                side = 1.0 if role == "parked_right" else -1.0
                movers.append(_Mover(kind, side * (kerb - 0.25 - width / 2),
                                     float(rng.uniform(8, 80)), 0.0, (-10.0, 100.0), 0.0,
                                     width, height, style, 0.0, 0.0))
        for i in range(cfg.num_pedestrians):
            side = 1.0 if i % 2 == 0 else -1.0
            x = side * (kerb + 0.6 + float(rng.uniform(0, max(sw - 1.2, 0.1))))
            vz = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(1.0, 1.6))
            movers.append(_Mover(K_PEDESTRIAN, x, float(rng.uniform(5, 35)), vz, (-3.0, 50.0),
                                 0.0, 0.6, float(rng.uniform(1.6, 1.85)), float(rng.random()),
                                 float(rng.uniform(0, 2 * math.pi)), 0.9 * abs(vz)))
        for _ in range(cfg.num_bicyclists):
            vz = float(rng.uniform(4.0, 6.5))
            movers.append(_Mover(K_BICYCLIST, lw + 0.7, float(rng.uniform(8, 30)), vz,
                                 (-5.0, 60.0), 0.0, 0.7, 1.75, float(rng.random()),
                                 float(rng.uniform(0, 2 * math.pi)), vz / 2.1))
        return movers

    def camera(self, t: int) -> _Camera:
        """Camera of frame t (world units, pixels)."""
        cfg = self.config
        s = t / cfg.fps
        return _Camera(
            x=cfg.lane_width / 2 + cfg.sway_m * math.sin(2 * math.pi * 0.21 * s + self._sway_phase),
            y=cfg.camera_height + cfg.bounce_m * math.sin(2 * math.pi * 1.7 * s),
            z=self._z_start + cfg.speed_mps * s,
            f=cfg.focal,
            cx=(cfg.width - 1) / 2.0,
            # Keep the horizon between pixel rows so no ray is exactly parallel to the ground.
            cy=math.floor(cfg.horizon * cfg.height) + 0.5,
        )

    def _mover_position(self, mover: _Mover, s: float) -> tuple[float, float]:
        """(world z without wrapping, world z as shown) at time s."""
        cam_z = self._z_start + self.config.speed_mps * s
        if mover.wrap is None:
            rel = mover.z0 + mover.sway_amp * math.sin(2 * math.pi * mover.step_hz * s
                                                        + mover.phase0)
            return cam_z + rel, cam_z + rel
        rel = mover.z0 + (mover.vz - self.config.speed_mps) * s
        low, high = mover.wrap
        shown = low + (rel - low) % (high - low)
        return cam_z + rel, cam_z + shown

    def billboards(self, t: int) -> list[_Billboard]:
        """All billboard objects that may be visible in frame t."""
        cfg = self.config
        s, dt = t / cfg.fps, 1.0 / cfg.fps
        out: list[_Billboard] = []
        for i, mover in enumerate(self._movers):
            z_true, z_shown = self._mover_position(mover, s)
            z_prev, _ = self._mover_position(mover, s - dt)
            phase = mover.phase0 + 2 * math.pi * mover.step_hz * s
            out.append(_Billboard(_SID_MOVING + i, mover.kind, mover.x, z_shown, 0.0,
                                  z_true - z_prev, mover.width, mover.height, 0.0,
                                  mover.style, phase, 1.0))
        out.extend(self._static_billboards(self.camera(t).z))
        return out

    def _static_billboards(self, cam_z: float) -> list[_Billboard]:
        """Street lights, sign posts and trees on slots along both kerbs (hashed per slot)."""
        cfg = self.config
        kerb, sw = cfg.road_half_width, cfg.sidewalk_width
        spacing = 11.0
        first = math.floor((cam_z - 5.0) / spacing)
        last = math.ceil((cam_z + 160.0) / spacing)
        out: list[_Billboard] = []
        for side_index, side in enumerate((-1.0, 1.0)):
            for slot in range(first, last + 1):
                h = _hash01(self._seed, 11 + side_index, slot, np.arange(5))
                z = (slot + 0.15 + 0.7 * h[1]) * spacing
                ident = _SID_STATIC + (side_index * 2**28 + (slot % 2**27)) * 2
                if h[0] < 0.28:
                    out.append(_Billboard(ident, K_LIGHT_POLE, side * (kerb + 0.5), z, 0, 0, 2.8,
                                          7.0 + 1.5 * h[2], 0.0, h[3], 0.0, -side))
                elif h[0] < 0.45:
                    x = side * (kerb + 0.45)
                    out.append(_Billboard(ident, K_SIGN_POST, x, z, 0, 0, 0.16, 2.75, 0.0, h[3],
                                          0.0, -side))
                    # The sign hangs on the post, a hair nearer so it wins the z-test.
                    out.append(_Billboard(ident + 1, K_SIGN, x, z - 0.06, 0, 0, 0.76, 0.74,
                                          2.0, h[4], 0.0, -side))
                elif h[0] < 0.72:
                    radius = 1.4 + 1.2 * h[2]
                    x = side * (kerb + sw - 0.9 - 0.5 * h[4])
                    out.append(_Billboard(ident, K_TREE, x, z, 0, 0, 2.5 * radius,
                                          2.2 + 0.8 * h[3] + 2.1 * radius, 0.0, h[3], 0.0,
                                          1.0))
        return out

    def _front_blocks(self, side: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
        """Front row block kind (0 gap, 1 building, 2 fence, 3 hedge), top height, style."""
        district = np.floor_divide(k, 6)
        urban = _hash01(self._seed, 21 + side, district) < 0.6
        h = [_hash01(self._seed, 23 + side, k, j) for j in range(3)]
        p_building = np.where(urban, 0.78, 0.3)
        kind = np.where(h[0] < p_building, 1,
                        np.where(h[0] < p_building + 0.12, 2,
                                 np.where(h[0] < p_building + 0.24, 3, 0)))
        top = np.select(
            [kind == 1, kind == 2, kind == 3],
            [6.0 + 12.0 * h[1], 1.1 + 0.6 * h[1], 1.4 + 1.4 * h[1]],
            0.0,
        )
        return kind, top, h[2]

    def _back_blocks(self, side: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]:
        """Back row block kind (1 building, 4 tree line), top height, style."""
        h = [_hash01(self._seed, 31 + side, k, j) for j in range(3)]
        kind = np.where(h[0] < 0.45, 1, 4)
        top = np.where(kind == 1, 12.0 + 16.0 * h[1], 6.0 + 6.0 * h[1])
        return kind, top, h[2]

    # ---------------------------------------------------------------------- ray casting

    def _cast(self, u: np.ndarray, v: np.ndarray, t: int) -> _Hits:
        """Nearest surface along the ray through pixel (u, v) of frame t; u, v (N,) floats."""
        cam = self.camera(t)
        hits = _Hits(u.size)
        du = (u - cam.cx) / cam.f  # ray direction per metre of depth
        dv = (cam.cy - v) / cam.f
        self._cast_ground(hits, cam, du, dv)
        for side in (-1, 1):
            self._cast_facade(hits, cam, du, dv, side, back=False)
            self._cast_facade(hits, cam, du, dv, side, back=True)
        for board in self.billboards(t):
            self._cast_billboard(hits, cam, u, v, board)
        return hits

    def _cast_ground(self, hits: _Hits, cam: _Camera, du: np.ndarray, dv: np.ndarray) -> None:
        idx = np.nonzero(dv < -1e-9)[0]
        depth = cam.y / -dv[idx]
        keep = depth < _FAR
        idx, depth = idx[keep], depth[keep]
        x = cam.x + du[idx] * depth
        z = cam.z + depth
        ax = np.abs(x)
        kerb, sw = self.config.road_half_width, self.config.sidewalk_width
        label = np.where(ax < kerb, ROAD, np.where(ax < kerb + sw, PAVEMENT, TREE))
        material = np.where(ax < kerb, M_ROAD, np.where(ax < kerb + sw, M_PAVEMENT, M_GRASS))
        # One pixel spans depth / f across the road and, foreshortened, depth^2 / (f h) along it.
        across = depth / cam.f
        hits.write(idx, depth, _SID_GROUND, label.astype(np.uint8), material.astype(np.int16),
                   x, z, fp1=across, fp2=across * depth / cam.y)

    def _cast_facade(
        self, hits: _Hits, cam: _Camera, du: np.ndarray, dv: np.ndarray, side: int, back: bool
    ) -> None:
        plane_x = side * (self._back_x if back else self._front_x)
        idx = np.nonzero(du * side > 1e-9)[0]
        depth = (plane_x - cam.x) / du[idx]
        y = cam.y + dv[idx] * depth
        z = cam.z + depth
        keep = (depth > _NEAR) & (depth < _FAR) & (y >= 0.0)
        idx, depth, y, z = idx[keep], depth[keep], y[keep], z[keep]
        if idx.size == 0:
            return
        block_len = 16.0 if back else 10.0
        k = np.floor(z / block_len).astype(np.int64)
        k0 = int(k.min())
        table_k = np.arange(k0, int(k.max()) + 1)
        kinds, tops, styles = (self._back_blocks if back else self._front_blocks)(side, table_k)
        kind, top, style = kinds[k - k0], tops[k - k0], styles[k - k0]
        # Vegetation gets a ragged top edge; it is a function of world z, so it stays put.
        ragged = np.nonzero((kind == 3) | (kind == 4))[0]
        if ragged.size:
            amplitude = np.where(kind[ragged] == 4, 3.0, 0.5)
            bumps = self._noise.fbm(z[ragged] * 0.35, top[ragged], 2, salt=side) - 0.5
            top = top.copy()
            top[ragged] += amplitude * bumps
        inside = (kind != 0) & (y < top)
        idx, depth, y, z = idx[inside], depth[inside], y[inside], z[inside]
        kind, style = kind[inside], style[inside]
        label = np.choose(kind, [VOID, BUILDING, FENCE, TREE, TREE]).astype(np.uint8)
        material = np.choose(kind, [M_SKY, M_BUILDING, M_FENCE, M_HEDGE, M_TREELINE])
        sid = 2 + (side > 0) + 2 * back
        # Styles carry the side so shading can light the two sides differently.
        across = depth / cam.f
        hits.write(idx, depth, sid, label, material.astype(np.int16), z, y, style + (side > 0),
                   fp1=across * depth / abs(plane_x - cam.x), fp2=across)

    def _cast_billboard(
        self, hits: _Hits, cam: _Camera, u: np.ndarray, v: np.ndarray, board: _Billboard
    ) -> None:
        depth = board.z - cam.z
        if depth <= _NEAR:
            return
        scale = cam.f / depth
        u0 = cam.cx + (board.x - board.width / 2 - cam.x) * scale
        u1 = cam.cx + (board.x + board.width / 2 - cam.x) * scale
        v0 = cam.cy - (board.base + board.height - cam.y) * scale
        v1 = cam.cy - (board.base - cam.y) * scale
        if u1 < u.min() or u0 > u.max() or v1 < v.min() or v0 > v.max():
            return
        idx = np.nonzero((u >= u0) & (u <= u1) & (v >= v0) & (v <= v1))[0]
        if idx.size == 0:
            return
        a = cam.x + (u[idx] - cam.cx) / scale - board.x
        b = cam.y - (v[idx] - cam.cy) / scale - board.base
        material = self._silhouette(board, a, b)
        inside = material >= 0
        if not inside.any():
            return
        idx, a, b, material = idx[inside], a[inside], b[inside], material[inside]
        hits.write(idx, np.full(idx.size, depth), board.ident, _KIND_LABEL[board.kind],
                   material, a, b, board.style, board.dx, board.dz, fp1=1.0 / scale,
                   fp2=1.0 / scale)

    # ---------------------------------------------------------------------- silhouettes

    def _silhouette(self, board: _Billboard, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Material per local point (a across, b up, metres); -1 where the cut-out is empty."""
        m = np.full(a.shape, -1, dtype=np.int16)
        aa = np.abs(a)
        w, h = board.width, board.height
        hw = w / 2
        kind = board.kind
        if kind in (K_CAR, K_BUS):
            body_top = (0.62 if kind == K_BUS else 0.55) * h
            chamfer = np.maximum(0.0, b - (body_top - 0.1))
            body = (b >= 0.28) & (b < body_top) & (aa <= hw - 0.02 - chamfer)
            taper = (b - body_top) / max(h - body_top, 1e-6) * hw * (0.05 if kind == K_BUS
                                                                      else 0.25)
            cabin = (b >= body_top) & (b < h) & (aa <= hw * 0.9 - taper)
            m[body | cabin] = M_BODY
            if kind == K_BUS:
                glass = (b > 0.42 * h) & (b < 0.88 * h) & (aa < hw - 0.14)
            else:
                glass = cabin & (b > body_top + 0.07) & (b < h - 0.07) & (aa <= hw * 0.9 - taper
                                                                          - 0.08)
            m[glass] = M_GLASS
            m[(b < 0.45) & (aa >= hw - 0.45) & (aa <= hw - 0.06)] = M_TYRE
            m[body & (b < 0.38)] = M_TYRE  # bumper
            lights = body & (b > 0.42) & (b < 0.56) & (aa > hw - 0.3) & (aa < hw - 0.06)
            m[lights] = M_LIGHT
            m[body & (aa < 0.25) & (b > 0.42) & (b < 0.53)] = M_PLATE
        elif kind in (K_PEDESTRIAN, K_BICYCLIST):
            self._person(board, a, b, m)
        elif kind == K_LIGHT_POLE:
            reach = a * board.facing
            m[(aa < 0.08) & (b < h)] = M_POLE
            m[(b > h - 0.12) & (b <= h) & (reach >= 0) & (reach < 1.3)] = M_POLE
            m[(b > h - 0.28) & (b <= h) & (reach >= 0.9) & (reach < 1.35)] = M_POLE
        elif kind == K_SIGN_POST:
            m[(aa < 0.06) & (b < h)] = M_POLE
        elif kind == K_SIGN:
            shape = board.style
            if shape < 0.45:
                m[a * a + (b - 0.36) ** 2 < 0.36**2] = M_SIGN
            elif shape < 0.7:
                m[(b >= 0.05) & (aa < 0.38 * (0.7 - b) / 0.65)] = M_SIGN
            else:
                m[(aa < 0.34) & (b >= 0.1) & (b < 0.62)] = M_SIGN
        elif kind == K_TREE:
            radius = w / 2.5
            trunk_top = h - 2.1 * radius
            m[(aa < 0.14 + 0.06 * (b < 0.3)) & (b < trunk_top + 0.5)] = M_TRUNK
            centre = trunk_top + 1.05 * radius
            ragged = self._noise.value(a * 1.6 + 91.0 * board.style, b * 1.6) - 0.5
            canopy = (a / radius) ** 2 + ((b - centre) / (1.05 * radius)) ** 2 < 1.0 + 0.5 * ragged
            m[canopy] = M_CANOPY
        return m

    def _person(self, board: _Billboard, a: np.ndarray, b: np.ndarray, m: np.ndarray) -> None:
        """Pedestrian or bicyclist seen from behind; the legs move with `phase`."""
        aa = np.abs(a)
        h = board.height
        head_r = 0.11 * h / 1.75
        if board.kind == K_PEDESTRIAN:
            hip = 0.5 * h
            shoulder = h - 2.3 * head_r
            legs = np.zeros(a.shape, dtype=bool)
            shoes = np.zeros(a.shape, dtype=bool)
            for sign in (-1.0, 1.0):
                swing = sign * math.sin(board.phase)
                lift = 0.06 * max(0.0, swing)
                centre = sign * 0.085 + 0.05 * swing * (1.0 - b / hip)
                leg = (b < hip) & (b >= lift) & (np.abs(a - centre) < 0.07)
                legs |= leg
                shoes |= leg & (b < lift + 0.07)
            m[legs] = M_PANTS
            m[shoes] = M_TYRE
            torso = (b >= hip - 0.05) & (b < shoulder) & (aa < 0.17 + 0.03 * (b - hip) / (
                shoulder - hip))
            arms = (b >= hip - 0.08) & (b < shoulder - 0.03) & (aa >= 0.17) & (aa < 0.245)
            m[torso | arms] = M_SHIRT
        else:
            m[(aa < 0.035) & (b < 0.68)] = M_TYRE  # rear wheel, edge-on
            m[(aa < 0.05) & (b >= 0.6) & (b < 0.95)] = M_FRAME
            m[(aa < 0.3) & (b > 1.0) & (b < 1.05)] = M_FRAME  # handlebar
            for sign in (-1.0, 1.0):
                pedal = 0.42 + 0.14 * math.sin(board.phase + (sign > 0) * math.pi)
                m[(np.abs(a - sign * 0.1) < 0.06) & (b >= pedal) & (b < 0.98)] = M_PANTS
            m[(b >= 0.95) & (b < h - 2.2 * head_r) & (aa < 0.19)] = M_SHIRT
        head = a * a + (b - (h - head_r)) ** 2 <= head_r**2
        m[head] = M_SKIN

    # ------------------------------------------------------------------------- shading

    def _shade(self, hits: _Hits, u: np.ndarray, v: np.ndarray, t: int) -> np.ndarray:
        """(N, 3) float64 RGB in 0..255 before haze, lighting, blur and noise."""
        cam = self.camera(t)
        noise = self._noise
        rgb = np.zeros((u.size, 3), dtype=np.float64)
        lw, kerb = self.config.lane_width, self.config.road_half_width
        paint = np.array([215.0, 215.0, 205.0])
        for material in np.unique(hits.material):
            sel = np.nonzero(hits.material == material)[0]
            s1, s2, style = hits.s1[sel], hits.s2[sel], hits.style[sel]
            f1, f2 = hits.fp1[sel], hits.fp2[sel]
            fp = np.maximum(f1, f2)  # isotropic bound for noise
            if material == M_SKY:
                du, dv = (u[sel] - cam.cx) / cam.f, (cam.cy - v[sel]) / cam.f
                up = np.clip(dv * 1.6, 0.0, 1.0)[:, None]
                col = (1 - up) * np.array([205.0, 218.0, 232.0]) + up * np.array(
                    [92.0, 142.0, 205.0])
                cloud = np.clip((noise.fbm(du * 3.0, dv * 9.0, 4, salt=7) - 0.5) * 3.0, 0, 1)
                col = col + cloud[:, None] * (np.array([245.0, 245.0, 248.0]) - col)
            elif material == M_ROAD:
                x, z = s1, s2
                grain = noise.fbm(x * 6.0, z * 6.0, 2, footprint=fp * 6.0) - 0.5
                patch = noise.fbm(x * 0.25, z * 0.25, 2, salt=3, footprint=fp * 0.25) - 0.5
                col = np.outer(88.0 + 30.0 * grain + 30.0 * patch, [1.0, 1.0, 1.04])
                centre = _band(x, f1, -0.08, 0.08) * _stripes(z, f2, 9.0, 3.0)
                edge = _band(np.abs(x), f1, lw - 0.07, lw + 0.07)
                zebra = _hash01(self._seed, 41, np.floor(z / 120.0)) < 0.5
                crossing = zebra * _stripes(z, f2, 120.0, 3.5) * _stripes(x, f1, 1.0, 0.5)
                marks = np.clip(centre + edge + crossing, 0.0, 1.0)[:, None]
                col = col + marks * (paint - col)
            elif material == M_PAVEMENT:
                x, z = np.abs(s1), s2
                gx, gz = _stripes(x, f1, 0.6, 0.04), _stripes(z, f2, 0.6, 0.04)
                joints = gx + gz - gx * gz
                kerbstone = _band(x, f1, kerb, kerb + 0.2)
                base = 150.0 + 18.0 * (noise.fbm(x * 3.0, z * 3.0, 2, salt=5,
                                                 footprint=fp * 3.0) - 0.5)
                col = np.outer(base - 25.0 * joints + 25.0 * kerbstone, [1.0, 0.97, 0.92])
            elif material == M_GRASS:
                g = noise.fbm(s1 * 2.0, s2 * 2.0, 3, salt=9, footprint=fp * 2.0)
                col = np.outer(0.6 + 0.5 * g, [70.0, 112.0, 48.0])
            elif material == M_BUILDING:
                col = self._shade_building(s1, s2, style, f1, f2)
            elif material == M_FENCE:
                wood = np.maximum(_stripes(s1, f1, 0.22, 0.16), _band(s2, f2, 0.85, 0.95))
                col = np.outer(1.0 - wood, [70.0, 55.0, 40.0]) + np.outer(
                    wood, [150.0, 120.0, 85.0])
            elif material in (M_HEDGE, M_TREELINE, M_CANOPY):
                leaves = noise.fbm(s1 * 2.5, s2 * 2.5, 3, salt=material, footprint=fp * 2.5)
                base = [48.0, 92.0, 36.0] if material != M_HEDGE else [40.0, 80.0, 40.0]
                col = np.outer(0.5 + 0.9 * leaves, base)
            else:
                col = self._shade_object(int(material), s1, s2, style, fp)
            # Sunlight from the left: right-hand surfaces (style >= 1) face it.
            if material in (M_BUILDING, M_FENCE, M_HEDGE, M_TREELINE):
                col = col * np.where(style >= 1.0, 1.0, 0.78)[:, None]
            if material in (M_ROAD, M_PAVEMENT, M_GRASS):
                # Static tree shadows on the ground near the kerbs (part of the world texture).
                shade = noise.fbm(s1 * 0.45, s2 * 0.45, 2, salt=13)
                near_kerb = np.abs(s1) > kerb - 1.5
                col = col * np.where(near_kerb & (shade > 0.62), 0.62, 1.0)[:, None]
            rgb[sel] = col
        return rgb

    def _shade_building(self, z: np.ndarray, y: np.ndarray, style: np.ndarray,
                        fz: np.ndarray, fy: np.ndarray) -> np.ndarray:
        """Facade: wall colour per block, a window grid per floor, shop fronts at street level."""
        walls = np.array([[150.0, 80.0, 60.0], [200.0, 185.0, 160.0], [130.0, 130.0, 135.0],
                          [225.0, 220.0, 210.0], [170.0, 120.0, 90.0], [110.0, 100.0, 95.0]])
        key = np.mod(style, 1.0)
        wall = walls[(key * len(walls)).astype(int) % len(walls)]
        spacing = 2.2 + 1.6 * np.mod(key * 7.0, 1.0)
        floor_h = 3.1 + 0.5 * np.mod(key * 13.0, 1.0)
        upper = _band(y, fy, floor_h, 1e4)
        window = (upper * _stripes(z, fz, spacing, 0.5 * spacing, 0.25 * spacing)
                  * _stripes(y, fy, floor_h, 0.52 * floor_h, 0.3 * floor_h))
        shop = _band(y, fy, 0.4, floor_h - 0.6) * _stripes(z, fz, 6.0, 4.8, 1.2)
        glass_cover = np.clip(window + shop, 0.0, 1.0)[:, None]
        grime = self._noise.fbm(z * 1.5, y * 1.5, 2, salt=17,
                                footprint=np.maximum(fz, fy) * 1.5)[:, None]
        col = wall * (0.82 + 0.3 * grime)
        glass = np.array([60.0, 75.0, 95.0]) + 60.0 * np.clip(y / 25.0, 0.0, 1.0)[:, None]
        return col + glass_cover * (glass - col)

    def _shade_object(self, material: int, a: np.ndarray, b: np.ndarray,
                      style: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        paints = np.array([[170.0, 30.0, 30.0], [40.0, 70.0, 150.0], [225.0, 225.0, 225.0],
                           [160.0, 165.0, 170.0], [30.0, 30.0, 32.0], [40.0, 90.0, 60.0],
                           [215.0, 180.0, 40.0], [110.0, 60.0, 120.0]])
        shirts = np.array([[200.0, 50.0, 50.0], [50.0, 90.0, 170.0], [230.0, 230.0, 230.0],
                           [40.0, 40.0, 45.0], [220.0, 170.0, 40.0], [60.0, 140.0, 80.0]])
        pants = np.array([[40.0, 45.0, 80.0], [30.0, 30.0, 30.0], [110.0, 95.0, 70.0],
                          [90.0, 90.0, 95.0]])
        skins = np.array([[225.0, 185.0, 155.0], [160.0, 115.0, 80.0], [100.0, 70.0, 50.0]])
        def pick(table: np.ndarray, salt: float) -> np.ndarray:
            # Decorrelated choices (paint, shirt, ...) from one style number per object.
            return table[(np.mod(style * salt, 1.0) * len(table)).astype(int) % len(table)]

        n = a.size
        if material == M_BODY:
            col = pick(paints, 1.0) * (0.8 + 0.25 * np.clip(b / 1.5, 0, 1))[:, None]
        elif material == M_GLASS:
            col = np.tile([35.0, 45.0, 60.0], (n, 1)) + 25.0 * np.clip(b - 1.0, 0, 1)[:, None]
        elif material == M_TYRE:
            col = np.tile([28.0, 28.0, 30.0], (n, 1))
        elif material == M_LIGHT:
            col = np.tile([200.0, 30.0, 25.0], (n, 1))
        elif material == M_PLATE:
            col = np.tile([230.0, 225.0, 200.0], (n, 1))
        elif material == M_SKIN:
            col = pick(skins, 3.0)
        elif material == M_SHIRT:
            col = pick(shirts, 5.0)
        elif material == M_PANTS:
            col = pick(pants, 7.0)
        elif material == M_FRAME:
            col = np.tile([60.0, 60.0, 70.0], (n, 1))
        elif material == M_POLE:
            col = np.tile([125.0, 128.0, 130.0], (n, 1)) * (0.8 + 0.2 * (np.abs(a) < 0.03))[
                :, None]
        elif material == M_SIGN:
            col = self._shade_sign(a, b, style)
        elif material == M_TRUNK:
            bark = self._noise.fbm(a * 8.0, b * 2.0, 1, footprint=footprint * 8.0)
            col = np.outer(0.8 + 0.4 * bark, [95.0, 70.0, 45.0])
        else:
            raise ValueError(f"no shading for material {material}")
        return col

    def _shade_sign(self, a: np.ndarray, b: np.ndarray, style: np.ndarray) -> np.ndarray:
        """Round: red ring, white face. Triangle: red border, white. Square: blue, white bar."""
        col = np.tile([235.0, 235.0, 235.0], (a.size, 1))
        red, blue = np.array([200.0, 25.0, 30.0]), np.array([30.0, 70.0, 170.0])
        circle = style < 0.45
        triangle = (style >= 0.45) & (style < 0.7)
        square = style >= 0.7
        ring = circle & (a * a + (b - 0.36) ** 2 > 0.27**2)
        border = triangle & ((np.abs(a) > 0.38 * (0.7 - b) / 0.65 - 0.09) | (b < 0.13))
        col[ring | border] = red
        col[square] = blue
        col[square & (np.abs(b - 0.36) < 0.05) & (np.abs(a) < 0.24)] = [235.0, 235.0, 235.0]
        return col

    # -------------------------------------------------------------------------- render

    def render(self, t: int) -> SyntheticFrame:
        """Frame t: image, labels, exact backward flow to t-1, occlusion, depth."""
        if int(t) != t or t < 0:
            raise ValueError(f"frame index must be a non-negative integer, got {t}")
        t = int(t)
        cfg = self.config
        height, width = cfg.height, cfg.width
        vv, uu = np.meshgrid(self._v, self._u, indexing="ij")
        u, v = uu.ravel(), vv.ravel()
        hits = self._cast(u, v, t)
        flow, occluded = self._flow(hits, u, v, t)

        rgb = self._shade(hits, u, v, t)
        depth = hits.depth
        fog = 1.0 - np.exp(-np.minimum(depth, 1e6) / _FOG_DISTANCE)
        haze = np.array([200.0, 210.0, 222.0])
        rgb = rgb + np.where(np.isfinite(depth), fog, 0.0)[:, None] * (haze - rgb)
        s = t / cfg.fps
        light = 1.0 + cfg.lighting * math.sin(2 * math.pi * s / 6.0 + self._light_phase)
        image = (rgb * light).reshape(height, width, 3).astype(np.float32)
        if cfg.blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), cfg.blur_sigma)
        if cfg.noise_sigma > 0:
            rng = np.random.default_rng([self._seed, 2, t])
            image = image + rng.normal(0.0, cfg.noise_sigma, image.shape).astype(np.float32)
        return SyntheticFrame(
            image=np.clip(image + 0.5, 0, 255).astype(np.uint8),
            labels=hits.label.reshape(height, width).copy(),
            flow=flow.reshape(height, width, 2),
            occluded=occluded.reshape(height, width),
            depth=depth.reshape(height, width).astype(np.float32),
            index=t,
        )

    def _flow(self, hits: _Hits, u: np.ndarray, v: np.ndarray, t: int) -> tuple[
        np.ndarray, np.ndarray
    ]:
        """Backward flow (N, 2) float32 and occlusion (N,) bool for the hits of frame t."""
        n = u.size
        if t == 0:
            return np.zeros((n, 2), dtype=np.float32), np.ones(n, dtype=bool)
        cam, prev = self.camera(t), self.camera(t - 1)
        finite = np.isfinite(hits.depth)
        d = np.where(finite, hits.depth, 1.0)
        # Surface point now, moved back along its own motion, seen by the previous camera.
        x = cam.x + (u - cam.cx) / cam.f * d - hits.dx
        y = cam.y + (cam.cy - v) / cam.f * d
        z = cam.z + d - hits.dz
        u_prev, v_prev, d_prev = prev.project(x, y, z)
        # Sky is at infinity: pure translation does not move it.
        u_prev = np.where(finite, u_prev, u)
        v_prev = np.where(finite, v_prev, v)
        behind = finite & (d_prev <= _NEAR)
        u_prev = np.where(behind, u, u_prev)
        v_prev = np.where(behind, v, v_prev)
        flow = np.stack([u_prev - u, v_prev - v], axis=1).astype(np.float32)

        w, h = self.config.width, self.config.height
        in_frame = (u_prev >= 0) & (u_prev <= w - 1) & (v_prev >= 0) & (v_prev <= h - 1)
        check = np.nonzero(in_frame & ~behind)[0]
        before = self._cast(u_prev[check], v_prev[check], t - 1)
        same = before.sid == hits.sid[check]
        expected = d_prev[check]
        same &= np.where(finite[check],
                         np.abs(before.depth - expected) <= 1e-6 * np.maximum(expected, 1.0)
                         + 1e-6, True)
        occluded = np.ones(n, dtype=bool)
        occluded[check[same]] = False
        return flow, occluded

    # ---------------------------------------------------------------------- iteration

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, t: int) -> SyntheticFrame:
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} out of range for a clip of {self.num_frames} frames")
        return self.render(t)

    def __iter__(self) -> Iterator[SyntheticFrame]:
        return self.frames(self.num_frames)

    def frames(self, n: int | None = None, start: int = 0) -> Iterator[SyntheticFrame]:
        """Render frames start .. start + n - 1 (n defaults to the clip length)."""
        count = self.num_frames if n is None else int(n)
        for t in range(start, start + count):
            yield self.render(t)


def scene_config(**overrides: Any) -> SceneConfig:
    """SceneConfig with overrides, rejecting unknown names with a clear message."""
    known = {f.name for f in fields(SceneConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown SceneConfig fields: {sorted(unknown)}")
    return SceneConfig(**overrides)


def generate_clip(
    num_frames: int,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    **overrides: Any,
) -> list[SyntheticFrame]:
    """Render a clip of `num_frames` frames (30 fps unless `fps` is overridden)."""
    config = scene_config(height=height, width=width, seed=seed, **overrides)
    return list(SyntheticDrivingScene(config, num_frames=num_frames))


def write_clip_video(
    path: str | Path, frames: Sequence[SyntheticFrame | np.ndarray], fps: float = 30.0
) -> Path:
    """Write frames (SyntheticFrame or (H, W, 3) uint8 RGB) to an mp4 ('mp4v') file."""
    if not frames:
        raise ValueError("no frames to write")
    images = [f.image if isinstance(f, SyntheticFrame) else np.asarray(f) for f in frames]
    height, width = images[0].shape[:2]
    for i, image in enumerate(images):
        if image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"frame {i}: expected ({height}, {width}, 3) uint8 RGB, got {image.shape} "
                f"{image.dtype}"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps),
                             (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV could not open {path} for writing (mp4v codec)")
    try:
        for image in images:
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


class SyntheticPairs(Dataset):
    """(keyframe, current frame) pairs from procedural clips, like `CamVidPairs`.

    Clip c uses seed `seed + c`. For every current frame f >= offset and every offset, the
    item pairs frame f - offset (the keyframe) with frame f. Frames are rendered on demand.
    Items: {"key_image": (3, H, W) float [0, 1], "image": (3, H, W) float [0, 1],
    "labels": (H, W) int64 (void -> IGNORE_INDEX), "offset": int, "name": str,
    "key_name": str}, then passed through `transform` if given.
    """

    def __init__(
        self,
        num_clips: int,
        frames_per_clip: int,
        height: int = 128,
        width: int = 256,
        offsets: Sequence[int] = (1, 2, 3, 4),
        seed: int = 0,
        transform: Any = None,
        **scene_overrides: Any,
    ) -> None:
        if num_clips < 1 or frames_per_clip < 2:
            raise ValueError("need num_clips >= 1 and frames_per_clip >= 2")
        offsets = tuple(int(o) for o in offsets)
        if not offsets or min(offsets) < 1:
            raise ValueError(f"offsets must be positive integers, got {offsets}")
        self.transform = transform
        self.offsets = offsets
        self.scenes = [
            SyntheticDrivingScene(
                scene_config(height=height, width=width, seed=seed + c, **scene_overrides),
                num_frames=frames_per_clip,
            )
            for c in range(num_clips)
        ]
        self.index = [
            (c, frame - offset, frame, offset)
            for c in range(num_clips)
            for frame in range(frames_per_clip)
            for offset in offsets
            if frame - offset >= 0
        ]
        if not self.index:
            raise ValueError(
                f"frames_per_clip={frames_per_clip} is too short for offsets {offsets}"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        clip, key, frame, offset = self.index[i]
        scene = self.scenes[clip]
        key_frame, current = scene.render(key), scene.render(frame)
        sample = {
            "key_image": image_to_tensor(key_frame.image),
            "image": image_to_tensor(current.image),
            "labels": labels_to_tensor(current.labels, void=VOID),
            "offset": offset,
            "name": f"synthetic_c{clip:03d}_f{frame:05d}",
            "key_name": f"synthetic_c{clip:03d}_f{key:05d}",
        }
        return self.transform(sample) if self.transform is not None else sample


__all__ = [
    "IGNORE_INDEX",
    "SceneConfig",
    "SyntheticDrivingScene",
    "SyntheticFrame",
    "SyntheticPairs",
    "generate_clip",
    "scene_config",
    "write_clip_video",
]
