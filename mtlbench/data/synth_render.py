"""The renderer of the synthetic datasets: procedural scenes, ray-cast per pixel.

Every pixel's ray is intersected with the scene's primitives (axis-aligned
room or street planes, boxes with a yaw, spheres, vertical cylinders); the
nearest hit gives the depth, the surface normal and the material, and the
material gives the class label and a colour and solid texture.  The image is
the textured albedo under Lambertian shading plus sensor noise, so shading and
perspective carry the geometry while colour and texture identify the class.
Holes of invalid depth (0) and normal ((0, 0, 0)) and some ignore labels (-1)
exercise the masking code.

Two variants follow the real datasets' conventions (see ``mtan.py``):

* ``nyuv2``: indoor rooms (floor, walls, ceiling, windows and pictures on the
  walls, beds, chairs, sofas, tables, furniture, TVs, books and objects) with
  the 13 NYUv2 classes; depth is z-depth in metres, normals are written.
* ``cityscapes``: streets (road with lane markings, raised sidewalks, building
  facades, poles and signs, trees, people, vehicles, sky at infinity) with the
  7 Cityscapes categories (flat, construction, object, nature, sky, human,
  vehicle); the depth map is a disparity ``1.85 / Z`` (the scale of the
  MTAN-preprocessed files, ~0..0.5), 0 = invalid (sky, beyond 150 m, holes).

Camera conventions (also in each dataset's ``synthetic.json``): a pinhole with
``fx = fy``, ``cx = W/2``, ``cy = H/2`` (:func:`camera_intrinsics`) and pixel
``(v, u)`` looking through ``(u + 0.5, v + 0.5)``.  The normal frame is the
camera frame with x right, y up and z towards the viewer; a pixel of depth
``Z`` back-projects to ``p = (Z (u + 0.5 - cx) / fx, -Z (v + 0.5 - cy) / fy, -Z)``
and its normal faces the camera (``n . p < 0``).

Everything is vectorised numpy per image and every random draw comes from the
image's own generator, in a fixed order: reordering draws (or adding one)
changes the data, so it needs a new :data:`GENERATOR_VERSION`.  A pixel
rectangle per primitive (its projected bounding box) keeps the cost at a few
milliseconds per 96x128 image.

The dataset plugin around this (seeds per image, files on disk, the cache)
is :mod:`mtlbench.data.synthetic`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import UserError

#: the renderer's versions: each one's arrays are fixed for good (any new draw, formula or constant is a
#: new version, so a dataset and the runs on it always say which renderer made them)
#:
#: * 1: the scenes as first written (the ``quick`` preset's data);
#: * 2: version 1's scenes, labels, depth and normals, draw for draw, with aerial perspective added to
#:   the image (:func:`_aerial_perspective`), so each surface pixel's colour also says how far it is.
GENERATOR_VERSIONS = (1, 2)
#: the version a dataset gets when its options do not name one (what every record before version 2 used)
GENERATOR_VERSION = 1
VARIANTS = ("nyuv2", "cityscapes")

NYUV2_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
                 "picture", "sofa", "table", "tv", "wall", "window")
CITYSCAPES_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")

#: horizontal field of view: a Kinect's ~60 deg; Cityscapes' f = 2262 px at 2048 px width
_HFOV_DEG = {"nyuv2": 60.0, "cityscapes": 2 * math.degrees(math.atan(1024 / 2262))}
#: Cityscapes disparity in the MTAN files is ~ f B / (256 Z) = 2262 * 0.209 / 256 / Z
DISPARITY_SCALE = 1.85
_MAX_DEPTH = {"nyuv2": 10.0, "cityscapes": 150.0}  # metres; beyond is invalid (sensor range)
_EPS = 1e-4


def camera_intrinsics(variant: str, height: int, width: int) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` in pixels of the variant's pinhole camera at this size."""
    _check_variant(variant)
    f = (width / 2) / math.tan(math.radians(_HFOV_DEG[variant]) / 2)
    return f, f, width / 2, height / 2


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UserError(f"unknown synthetic variant {variant!r}",
                        hint=f"use one of: {', '.join(VARIANTS)}")


# -- materials ------------------------------------------------------------------
# pattern: 0 flat, 1 binary stripes along `axis`, 2 solid 3-D checker, 3 road lane markings.
# freq in cycles (or cells) per metre.

@dataclass(frozen=True)
class _Mat:
    cls: int
    col1: tuple[float, float, float]
    col2: tuple[float, float, float]
    pattern: int = 0
    freq: float = 1.0
    axis: tuple[float, float, float] = (1.0, 0.0, 0.0)


_D = (0.7071, 0.0, 0.7071)
_NYU_MATS = [  # index = class id
    _Mat(0, (0.80, 0.82, 0.93), (0.52, 0.58, 0.86), 1, 3.0, _D),      # bed: blue sheets
    _Mat(1, (0.78, 0.14, 0.12), (0.96, 0.82, 0.18), 1, 14.0, _D),     # books: red/yellow spines
    _Mat(2, (0.94, 0.94, 0.91), (0.94, 0.94, 0.91)),                  # ceiling: white
    _Mat(3, (0.52, 0.22, 0.10), (0.30, 0.11, 0.05), 2, 7.0),          # chair: brown check
    _Mat(4, (0.64, 0.45, 0.26), (0.47, 0.31, 0.16), 1, 4.0, (1.0, 0.0, 0.0)),  # floor: planks
    _Mat(5, (0.38, 0.24, 0.13), (0.26, 0.16, 0.08), 1, 2.5, (0.0, 1.0, 0.0)),  # furniture
    _Mat(6, (0.96, 0.56, 0.10), (0.80, 0.20, 0.05), 2, 10.0),         # objects: orange check
    _Mat(7, (0.18, 0.45, 0.32), (0.88, 0.72, 0.30), 2, 8.0),          # picture
    _Mat(8, (0.20, 0.48, 0.24), (0.12, 0.32, 0.15), 1, 6.0, (0.0, 1.0, 0.0)),  # sofa: green
    _Mat(9, (0.84, 0.68, 0.46), (0.70, 0.53, 0.33), 1, 6.0, (0.0, 0.0, 1.0)),  # table
    _Mat(10, (0.05, 0.05, 0.07), (0.16, 0.17, 0.24), 1, 1.5, (0.0, 1.0, 0.0)),  # tv: black
    _Mat(11, (0.86, 0.80, 0.67), (0.86, 0.80, 0.67)),                 # wall: beige
    _Mat(12, (0.60, 0.80, 0.97), (0.97, 0.97, 0.97), 2, 2.5),         # window: panes
]
_CITY_MATS = [
    _Mat(0, (0.30, 0.30, 0.33), (0.93, 0.93, 0.88), 3),               # 0 road + lane markings
    _Mat(0, (0.64, 0.61, 0.57), (0.52, 0.50, 0.47), 2, 2.0),          # 1 sidewalk tiles
    _Mat(1, (0.74, 0.62, 0.49), (0.20, 0.32, 0.48), 2, 0.35),         # 2 building + windows (glass)
    _Mat(2, (0.46, 0.48, 0.52), (0.46, 0.48, 0.52)),                  # 3 pole: grey metal
    _Mat(2, (0.96, 0.80, 0.10), (0.86, 0.14, 0.10), 1, 4.0, (0.0, 1.0, 0.0)),  # 4 sign
    _Mat(3, (0.36, 0.25, 0.14), (0.28, 0.19, 0.10), 1, 6.0, (0.0, 1.0, 0.0)),  # 5 trunk
    _Mat(3, (0.22, 0.52, 0.15), (0.11, 0.33, 0.07), 2, 4.0),          # 6 foliage
    _Mat(5, (0.82, 0.32, 0.36), (0.22, 0.20, 0.42), 1, 5.0, (0.0, 1.0, 0.0)),  # 7 human
    _Mat(6, (0.14, 0.24, 0.62), (0.08, 0.10, 0.18), 1, 2.0, (0.0, 1.0, 0.0)),  # 8 vehicle
    _Mat(4, (0.72, 0.83, 0.95), (0.40, 0.60, 0.90)),                  # 9 sky (horizon, zenith)
]
_ROAD, _SIDEWALK, _BUILDING, _POLE, _SIGN, _TRUNK, _FOLIAGE, _HUMAN, _VEHICLE, _SKY = range(10)
_NYU = {name: i for i, name in enumerate(NYUV2_CLASSES)}


class _MatTable:
    def __init__(self, mats: list[_Mat]):
        self.cls = np.array([m.cls for m in mats], np.int16)
        self.cls_f = self.cls.astype(np.float32)
        self.col1 = np.array([m.col1 for m in mats], np.float32)
        self.col2 = np.array([m.col2 for m in mats], np.float32)
        self.pattern = np.array([m.pattern for m in mats], np.int8)
        self.freq = np.array([m.freq for m in mats], np.float32)
        axis = np.array([m.axis for m in mats], np.float32)
        self.axis = axis * self.freq[:, None]  # stripe phase per metre along each world axis


_TABLES = {"nyuv2": _MatTable(_NYU_MATS), "cityscapes": _MatTable(_CITY_MATS)}


# -- camera and rays ------------------------------------------------------------------

def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation; the camera looks along its -z, yaw about world y."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def _yaw_towards(hx: float, hz: float) -> float:
    """Yaw that turns the camera's forward (-z) to the world heading (hx, hz)."""
    return math.atan2(-hx, -hz)


@lru_cache(maxsize=8)
def _ray_grid(height: int, width: int, fx: float, fy: float, cx: float, cy: float):
    xs = ((np.arange(width, dtype=np.float32) + 0.5 - cx) / fx)[None, :]
    ys = (-(np.arange(height, dtype=np.float32) + 0.5 - cy) / fy)[:, None]
    norm2 = (xs * xs + ys * ys + 1.0).astype(np.float32)
    return xs, ys, norm2


class _Canvas:
    """Per-pixel nearest-hit buffers and the ray-primitive intersections."""

    def __init__(self, variant: str, height: int, width: int, R: np.ndarray, o, rooms: bool):
        self.H, self.W = height, width
        self.fx, self.fy, self.cx, self.cy = camera_intrinsics(variant, height, width)
        xs, ys, self.A2 = _ray_grid(height, width, self.fx, self.fy, self.cx, self.cy)
        self.R = R
        self.o = tuple(float(v) for v in o)
        self.Rl = r = R.tolist()
        # World ray directions (not normalised: the camera-frame z component is -1, so
        # the ray parameter t of a hit is its z-depth).
        self.DX = (r[0][0] * xs + r[0][1] * ys - r[0][2]).astype(np.float32)
        self.DY = (r[1][0] * xs + r[1][1] * ys - r[1][2]).astype(np.float32)
        self.DZ = (r[2][0] * xs + r[2][1] * ys - r[2][2]).astype(np.float32)
        shape = (height, width)
        self.T = np.full(shape, np.inf, np.float32)
        self.NX = np.zeros(shape, np.float32)
        self.NY = np.zeros(shape, np.float32)
        self.NZ = np.zeros(shape, np.float32)
        self.MAT = np.full(shape, -1, np.int16)
        self.FACE = np.full(shape, -1, np.int8) if rooms else None
        self.full = (slice(0, height), slice(0, width))

    # -- bookkeeping ---------------------------------------------------------------
    def rect(self, lo, hi):
        """Pixel slices covering the projection of the world box ``lo``..``hi`` (None: off screen)."""
        # Plain floats: for 8 points this is cheaper than numpy's per-call overhead.
        r, o = self.Rl, self.o
        pts = [tuple((lo[0] - o[0]) * r[0][k] + (lo[1] - o[1]) * r[1][k] + (lo[2] - o[2]) * r[2][k]
                     for k in range(3))]
        for j in range(3):  # camera-frame corners: base + any subset of the three edges
            ex, ey, ez = ((hi[j] - lo[j]) * r[j][k] for k in range(3))
            pts += [(x + ex, y + ey, z + ez) for x, y, z in pts]
        umin = vmin = math.inf
        umax = vmax = -math.inf
        for x, y, z in pts:
            if z > -0.05:  # reaches behind the camera: no cheap bound
                return self.full
            u, v = x / -z, y / -z
            umin, umax = min(umin, u), max(umax, u)
            vmin, vmax = min(vmin, v), max(vmax, v)
        u0 = max(int(math.floor(self.cx + self.fx * umin)) - 1, 0)
        u1 = min(int(math.ceil(self.cx + self.fx * umax)) + 1, self.W)
        v0 = max(int(math.floor(self.cy - self.fy * vmax)) - 1, 0)
        v1 = min(int(math.ceil(self.cy - self.fy * vmin)) + 1, self.H)
        if u0 >= u1 or v0 >= v1:
            return None
        return slice(v0, v1), slice(u0, u1)

    def commit(self, sl, t, nx, ny, nz, mat: int) -> None:
        T = self.T[sl]
        closer = t < T
        if not closer.any():
            return
        np.copyto(T, t, where=closer)
        np.copyto(self.NX[sl], nx, where=closer)
        np.copyto(self.NY[sl], ny, where=closer)
        np.copyto(self.NZ[sl], nz, where=closer)
        np.copyto(self.MAT[sl], mat, where=closer)
        if self.FACE is not None:
            np.copyto(self.FACE[sl], -1, where=closer)

    # -- primitives ------------------------------------------------------------------
    def box(self, c, h, yaw: float, mat: int) -> None:
        """A box with centre ``c``, half sizes ``h`` (local x, y, z), rotated by ``yaw`` about y."""
        cs, sn = math.cos(yaw), math.sin(yaw)
        # local x axis in world: (cs, 0, sn); local z axis: (-sn, 0, cs)
        hx, hy, hz = h
        ex, ez = abs(cs) * hx + abs(sn) * hz, abs(sn) * hx + abs(cs) * hz  # world bounding box
        sl = self.rect((c[0] - ex, c[1] - hy, c[2] - ez), (c[0] + ex, c[1] + hy, c[2] + ez))
        if sl is None:
            return
        dx, dy, dz = self.DX[sl], self.DY[sl], self.DZ[sl]
        ox, oy, oz = self.o[0] - c[0], self.o[1] - c[1], self.o[2] - c[2]
        olx, oly, olz = ox * cs + oz * sn, oy, -ox * sn + oz * cs
        dlx, dlz = dx * cs + dz * sn, -dx * sn + dz * cs
        with np.errstate(divide="ignore", invalid="ignore"):
            tn_all, tf_all = [], []
            for o_, d_, h_ in ((olx, dlx, hx), (oly, dy, hy), (olz, dlz, hz)):
                inv = 1.0 / d_
                ta = (-h_ - o_) * inv
                tb = (h_ - o_) * inv
                tn_all.append(np.minimum(ta, tb))
                tf_all.append(np.maximum(ta, tb))
            tn = np.maximum(np.maximum(tn_all[0], tn_all[1]), tn_all[2])
            tf = np.minimum(np.minimum(tf_all[0], tf_all[1]), tf_all[2])
            hit = (tn <= tf) & (tn > _EPS)
        t = np.where(hit, tn, np.float32(np.inf))
        on_x = tn == tn_all[0]
        on_y = ~on_x & (tn == tn_all[1])
        on_z = ~on_x & ~on_y
        nlx = np.where(on_x, -np.sign(dlx), 0).astype(np.float32)
        nly = np.where(on_y, -np.sign(dy), 0).astype(np.float32)
        nlz = np.where(on_z, -np.sign(dlz), 0).astype(np.float32)
        self.commit(sl, t, nlx * cs - nlz * sn, nly, nlx * sn + nlz * cs, mat)

    def sphere(self, c, r: float, mat: int) -> None:
        sl = self.rect((c[0] - r, c[1] - r, c[2] - r), (c[0] + r, c[1] + r, c[2] + r))
        if sl is None:
            return
        dx, dy, dz, a = self.DX[sl], self.DY[sl], self.DZ[sl], self.A2[sl]
        ox, oy, oz = self.o[0] - c[0], self.o[1] - c[1], self.o[2] - c[2]
        b = dx * ox + dy * oy + dz * oz
        cc = ox * ox + oy * oy + oz * oz - r * r
        disc = b * b - a * cc
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        hit = (disc > 0) & (t > _EPS)
        t = np.where(hit, t, np.float32(np.inf))
        tt = np.where(hit, t, 0)
        nx, ny, nz = ox + tt * dx, oy + tt * dy, oz + tt * dz
        inv = 1.0 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), np.float32(1e-6))  # exact unit length
        self.commit(sl, t, nx * inv, ny * inv, nz * inv, mat)

    def cylinder(self, cx: float, cz: float, y0: float, y1: float, r: float, mat: int) -> None:
        """A vertical cylinder (axis along world y) from height y0 to y1."""
        sl = self.rect((cx - r, y0, cz - r), (cx + r, y1, cz + r))
        if sl is None:
            return
        dx, dy, dz = self.DX[sl], self.DY[sl], self.DZ[sl]
        ox, oy, oz = self.o[0] - cx, self.o[1], self.o[2] - cz
        a = dx * dx + dz * dz
        b = dx * ox + dz * oz
        cc = ox * ox + oz * oz - r * r
        disc = b * b - a * cc
        with np.errstate(invalid="ignore", divide="ignore"):
            ts = (-b - np.sqrt(disc)) / a
            ys = oy + ts * dy
            side = (disc > 0) & (ts > _EPS) & (ys >= y0) & (ys <= y1)
            t = np.where(side, ts, np.float32(np.inf))
            cap_y = y1 if oy > y1 else (y0 if oy < y0 else None)
            if cap_y is not None:  # the cap facing the camera
                tc = (cap_y - oy) / dy
                px, pz = ox + tc * dx, oz + tc * dz
                cap = (tc > _EPS) & (px * px + pz * pz <= r * r) & (tc < t)
                t = np.where(cap, tc, t)
            else:
                cap = np.zeros_like(side)
        tt = np.where(np.isfinite(t), t, 0)
        nx, nz = ox + tt * dx, oz + tt * dz
        inv = 1.0 / np.maximum(np.sqrt(nx * nx + nz * nz), np.float32(1e-6))
        nx = np.where(cap, np.float32(0), nx * inv)
        nz = np.where(cap, np.float32(0), nz * inv)
        ny = np.where(cap, np.float32(1.0 if oy > y1 else -1.0), np.float32(0))
        self.commit(sl, t, nx, ny, nz, mat)

    def plane(self, axis: int, value: float, normal_sign: float, mat: int, valid=None,
              needs: str = "xyz") -> None:
        """Hit of the axis-aligned plane ``p[axis] = value``, kept where ``valid(p)`` holds;
        ``valid`` gets the hit point's coordinates named in ``needs`` (others are None)."""
        d = (self.DX, self.DY, self.DZ)[axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (value - self.o[axis]) / d
            ok = t > _EPS
            if valid is not None:
                tt = np.where(ok, t, np.float32(0))
                p = [self.o[k] + tt * dk if "xyz"[k] in needs else None
                     for k, dk in enumerate((self.DX, self.DY, self.DZ))]
                ok &= valid(*p)
        t = np.where(ok, t, np.float32(np.inf))
        n = [0.0, 0.0, 0.0]
        n[axis] = normal_sign
        self.commit(self.full, t, n[0], n[1], n[2], mat)

    def room(self, L, mats: tuple[int, int, int]) -> None:
        """The inside of the box [0, Lx] x [0, Ly] x [0, Lz]: walls, floor and ceiling.

        Faces: 0/1 walls x = 0 / Lx, 2 floor, 3 ceiling, 4/5 walls z = 0 / Lz.
        ``mats`` = (wall, floor, ceiling).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = []
            for k, d in enumerate((self.DX, self.DY, self.DZ)):
                tk = (np.where(d > 0, np.float32(L[k]), np.float32(0)) - self.o[k]) / d
                ts.append(np.where(tk > 0, tk, np.float32(np.inf)).astype(np.float32))
        t = np.minimum(np.minimum(ts[0], ts[1]), ts[2])
        on_x = t == ts[0]
        on_y = ~on_x & (t == ts[1])
        on_z = ~on_x & ~on_y
        pos_x, pos_y, pos_z = self.DX > 0, self.DY > 0, self.DZ > 0
        face = np.where(on_x, pos_x.astype(np.int8), np.where(on_y, 2 + pos_y, 4 + pos_z)).astype(np.int8)
        one, zero = np.float32(1), np.float32(0)
        nx = np.where(on_x, np.where(pos_x, -one, one), zero)
        ny = np.where(on_y, np.where(pos_y, -one, one), zero)
        nz = np.where(on_z, np.where(pos_z, -one, one), zero)
        wall, floor, ceiling = mats
        mat = np.where(on_y, np.where(pos_y, ceiling, floor), wall).astype(np.int16)
        self.T, self.NX, self.NY, self.NZ, self.MAT = t, nx, ny, nz, mat
        self.FACE = face

    def decal(self, face: int, a0: float, a1: float, b0: float, b1: float, mat: int, L) -> None:
        """Relabel a rectangle of a room wall: a = along the wall, b = height."""
        if face in (0, 1):
            x = 0.0 if face == 0 else L[0]
            sl = self.rect((x, b0, a0), (x, b1, a1))
        else:
            z = 0.0 if face == 4 else L[2]
            sl = self.rect((a0, b0, z), (a1, b1, z))
        if sl is None:
            return
        on = self.FACE[sl] == face
        if not on.any():
            return
        t = np.where(on, self.T[sl], 0)
        along = (self.o[2] + t * self.DZ[sl]) if face in (0, 1) else (self.o[0] + t * self.DX[sl])
        height = self.o[1] + t * self.DY[sl]
        inside = on & (along > a0) & (along < a1) & (height > b0) & (height < b1)
        np.copyto(self.MAT[sl], mat, where=inside)


# -- scenes: shared ------------------------------------------------------------------------

def _u(rng, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _local(xz, yaw: float, ax: float, az: float) -> tuple[float, float]:
    """World (x, z) of the offset ``(ax, az)`` in the frame of a thing at ``xz`` turned by ``yaw``."""
    cs, sn = math.cos(yaw), math.sin(yaw)
    return xz[0] + ax * cs - az * sn, xz[1] + ax * sn + az * cs


# -- scenes: nyuv2 (a furnished room) -----------------------------------------------------

def _nyu_scene(rng, height: int, width: int):
    """Sample an indoor room and cast it; returns the canvas and the light."""
    L, cam, R = _nyu_room_and_camera(rng)
    cv = _Canvas("nyuv2", height, width, R, cam, rooms=True)
    cv.room(L, (_NYU["wall"], _NYU["floor"], _NYU["ceiling"]))
    room = _Furnisher(rng, cv, L, cam)
    room.furnish()
    room.put_items_on_supports()
    _nyu_wall_decals(rng, cv, L)
    return cv, _nyu_light(rng, L)


def _nyu_room_and_camera(rng):
    """Room size ``L``; camera near one wall, looking into the room, slightly down."""
    L = (_u(rng, 3.0, 6.5), _u(rng, 2.4, 3.0), _u(rng, 3.0, 7.0))
    Lx, Ly, Lz = L
    side = int(rng.integers(4))
    off = _u(rng, 0.3, 1.0)
    if side < 2:
        cam_x = off if side == 0 else Lx - off
        cam_z = _u(rng, 0.6, Lz - 0.6)
    else:
        cam_z = off if side == 2 else Lz - off
        cam_x = _u(rng, 0.6, Lx - 0.6)
    cam = (cam_x, _u(rng, 1.0, 1.7), cam_z)
    target = (Lx * _u(rng, 0.3, 0.7), Lz * _u(rng, 0.3, 0.7))
    yaw = _yaw_towards(target[0] - cam[0], target[1] - cam[2]) + _u(rng, -0.25, 0.25)
    R = _rotation(yaw, math.radians(_u(rng, -30, -8)), math.radians(_u(rng, -4, 4)))
    return L, cam, R


#: the furniture kinds and how often each is drawn
_NYU_KINDS = ("bed", "chair", "furniture", "sofa", "table", "objects", "tv", "books")
_NYU_KIND_WEIGHTS = np.array([1.0, 2.0, 2.0, 1.2, 1.6, 2.0, 0.8, 0.6])


class _Furnisher:
    """Puts 3 to 8 pieces of furniture into a room (against a wall or free on the floor,
    clear of the camera), then small items on the low ones."""

    def __init__(self, rng, cv: _Canvas, L, cam):
        self.rng, self.cv, self.L, self.cam = rng, cv, L, cam
        self.supports = []  # (centre xz, yaw, half w, half d, top y) of surfaces to put things on

    # -- where things go -----------------------------------------------------------------
    def wall_spot(self, width_: float, depth: float):
        """Centre (x, z) and yaw of a box against a random wall; local +z points into the wall."""
        rng, (Lx, _, Lz) = self.rng, self.L
        face = int(rng.integers(4))
        along = Lz if face < 2 else Lx
        if width_ + 0.1 > along:
            return None
        a = _u(rng, width_ / 2 + 0.05, along - width_ / 2 - 0.05)
        gap = depth / 2 + 0.01
        if face == 0:
            return (gap, a), math.pi / 2
        if face == 1:
            return (Lx - gap, a), -math.pi / 2
        if face == 2:
            return (a, gap), math.pi
        return (a, Lz - gap), 0.0

    def free_spot(self, radius: float):
        """Centre (x, z) and a random yaw anywhere on the floor, ``radius`` from the walls."""
        rng, (Lx, _, Lz) = self.rng, self.L
        if 2 * radius + 0.1 > min(Lx, Lz):
            return None
        return (_u(rng, radius + 0.05, Lx - radius - 0.05), _u(rng, radius + 0.05, Lz - radius - 0.05)), \
            _u(rng, 0, 2 * math.pi)

    def clear_of_camera(self, xz, radius: float) -> bool:
        return math.hypot(xz[0] - self.cam[0], xz[1] - self.cam[2]) > radius + 0.35

    def place(self, spot_fn, *args, radius: float):
        """A spot from ``spot_fn(*args)`` clear of the camera (6 tries), else None."""
        for _ in range(6):
            spot = spot_fn(*args)
            if spot is None:
                return None
            if self.clear_of_camera(spot[0], radius):
                return spot
        return None

    # -- what goes there -------------------------------------------------------------------
    def furnish(self) -> None:
        rng = self.rng
        for _ in range(int(rng.integers(3, 9))):
            kind = _NYU_KINDS[int(rng.choice(len(_NYU_KINDS), p=_NYU_KIND_WEIGHTS / _NYU_KIND_WEIGHTS.sum()))]
            getattr(self, f"add_{kind}")()

    def add_bed(self) -> None:
        rng, cv = self.rng, self.cv
        w, d, h = _u(rng, 1.4, 2.0), _u(rng, 1.9, 2.2), _u(rng, 0.45, 0.6)
        spot = self.place(self.wall_spot, w, d, radius=math.hypot(w, d) / 2)
        if spot:
            xz, yaw = spot
            cv.box((xz[0], h / 2, xz[1]), (w / 2, h / 2, d / 2), yaw, _NYU["bed"])
            hb = _local(xz, yaw, 0.0, d / 2 - 0.04)  # headboard
            hh = h + _u(rng, 0.3, 0.6)
            cv.box((hb[0], hh / 2, hb[1]), (w / 2, hh / 2, 0.04), yaw, _NYU["bed"])

    def add_chair(self) -> None:
        rng, cv = self.rng, self.cv
        s = _u(rng, 0.4, 0.5)
        spot = self.place(self.free_spot, s * 0.75, radius=s * 0.75)
        if spot:
            xz, yaw = spot
            seat = _u(rng, 0.42, 0.48)
            cv.box((xz[0], seat / 2, xz[1]), (s / 2, seat / 2, s / 2), yaw, _NYU["chair"])
            bk = _local(xz, yaw, 0.0, s / 2 - 0.04)
            top = seat + _u(rng, 0.4, 0.55)
            cv.box((bk[0], (seat + top) / 2, bk[1]), (s / 2, (top - seat) / 2, 0.04), yaw, _NYU["chair"])

    def add_furniture(self) -> None:
        rng, cv = self.rng, self.cv
        w, d, h = _u(rng, 0.6, 1.8), _u(rng, 0.35, 0.6), _u(rng, 0.7, 2.1)
        spot = self.place(self.wall_spot, w, d, radius=math.hypot(w, d) / 2)
        if spot:
            xz, yaw = spot
            cv.box((xz[0], h / 2, xz[1]), (w / 2, h / 2, d / 2), yaw, _NYU["furniture"])
            if h < 1.3:
                self.supports.append((xz, yaw, w / 2, d / 2, h))

    def add_sofa(self) -> None:
        rng, cv = self.rng, self.cv
        w, d = _u(rng, 1.5, 2.3), _u(rng, 0.8, 0.95)
        spot = self.place(self.wall_spot, w, d, radius=math.hypot(w, d) / 2)
        if spot:
            xz, yaw = spot
            seat, back = _u(rng, 0.38, 0.45), _u(rng, 0.75, 0.9)
            cv.box((xz[0], seat / 2, xz[1]), (w / 2, seat / 2, d / 2), yaw, _NYU["sofa"])
            bk = _local(xz, yaw, 0.0, d / 2 - 0.1)
            cv.box((bk[0], back / 2, bk[1]), (w / 2, back / 2, 0.1), yaw, _NYU["sofa"])
            for sgn in (-1, 1):  # arms
                arm = _local(xz, yaw, sgn * (w / 2 - 0.09), 0.0)
                cv.box((arm[0], 0.31, arm[1]), (0.09, 0.31, d / 2), yaw, _NYU["sofa"])

    def add_table(self) -> None:
        rng, cv = self.rng, self.cv
        w, d = _u(rng, 0.8, 1.6), _u(rng, 0.6, 1.0)
        spot = self.place(self.free_spot, math.hypot(w, d) / 2, radius=math.hypot(w, d) / 2)
        if spot:
            xz, yaw = spot
            top = _u(rng, 0.7, 0.78)
            cv.box((xz[0], top - 0.02, xz[1]), (w / 2, 0.02, d / 2), yaw, _NYU["table"])
            for sx in (-1, 1):
                for sz in (-1, 1):
                    leg = _local(xz, yaw, sx * (w / 2 - 0.06), sz * (d / 2 - 0.06))
                    cv.cylinder(leg[0], leg[1], 0.0, top - 0.04, 0.03, _NYU["table"])
            self.supports.append((xz, yaw, w / 2, d / 2, top))

    def add_objects(self) -> None:
        """One big object on the floor: a ball, a drum or a crate."""
        rng, cv = self.rng, self.cv
        spot = self.place(self.free_spot, 0.35, radius=0.35)
        if spot:
            xz, yaw = spot
            shape = int(rng.integers(3))
            if shape == 0:
                r = _u(rng, 0.12, 0.3)
                cv.sphere((xz[0], r, xz[1]), r, _NYU["objects"])
            elif shape == 1:
                cv.cylinder(xz[0], xz[1], 0.0, _u(rng, 0.25, 0.7), _u(rng, 0.1, 0.22), _NYU["objects"])
            else:
                s = _u(rng, 0.2, 0.45)
                cv.box((xz[0], s / 2, xz[1]), (s / 2, s / 2, s / 2 * _u(rng, 0.7, 1.3)), yaw, _NYU["objects"])

    def add_tv(self) -> None:
        rng, cv = self.rng, self.cv
        w, h = _u(rng, 0.8, 1.3), _u(rng, 0.5, 0.75)
        spot = self.place(self.wall_spot, w, 0.06, radius=w / 2)
        if spot:
            xz, yaw = spot
            cy_ = _u(rng, 1.1, 1.6)
            cv.box((xz[0], cy_, xz[1]), (w / 2, h / 2, 0.03), yaw, _NYU["tv"])

    def add_books(self) -> None:
        """Books on the floor by a wall."""
        rng, cv = self.rng, self.cv
        w = _u(rng, 0.3, 0.8)
        spot = self.place(self.wall_spot, w, 0.25, radius=w / 2)
        if spot:
            xz, yaw = spot
            h = _u(rng, 0.15, 0.3)
            cv.box((xz[0], h / 2, xz[1]), (w / 2, h / 2, 0.11), yaw, _NYU["books"])

    # -- small items on the tables and low furniture ------------------------------------------
    def put_items_on_supports(self) -> None:
        rng = self.rng
        for xz, yaw, hw, hd, top in self.supports:
            for _ in range(int(rng.integers(0, 3))):
                self.put_item(_local(xz, yaw, _u(rng, -0.7, 0.7) * hw, _u(rng, -0.6, 0.6) * hd), top, yaw)

    def put_item(self, xz, base_y: float, yaw: float) -> None:
        rng, cv = self.rng, self.cv
        kind = int(rng.integers(3))
        if kind == 0:  # a stack of books
            cv.box((xz[0], base_y + 0.06, xz[1]), (_u(rng, 0.08, 0.15), _u(rng, 0.03, 0.1), _u(rng, 0.07, 0.12)),
                   yaw + _u(rng, -0.4, 0.4), _NYU["books"])
        elif kind == 1:
            r = _u(rng, 0.05, 0.13)
            cv.sphere((xz[0], base_y + r, xz[1]), r, _NYU["objects"])
        else:
            cv.cylinder(xz[0], xz[1], base_y, base_y + _u(rng, 0.1, 0.35), _u(rng, 0.04, 0.1), _NYU["objects"])


def _nyu_wall_decals(rng, cv: _Canvas, L) -> None:
    """Windows and pictures: relabelled rectangles of the walls (same geometry)."""
    Lx, Ly, Lz = L
    # (material, how many, width range, height range, bottom edge range) in metres
    decals = ((_NYU["window"], int(rng.integers(0, 3)), (0.8, 1.5), (1.0, 1.5), (0.8, 1.0)),
              (_NYU["picture"], int(rng.integers(0, 4)), (0.3, 1.0), (0.3, 0.8), (1.2, 1.7)))
    for mat, count, size_w, size_h, base in decals:
        for _ in range(count):
            face = int(rng.choice((0, 1, 4, 5)))
            along = Lz if face < 2 else Lx
            w, h = _u(rng, *size_w), _u(rng, *size_h)
            b0 = _u(rng, *base)
            if w + 0.2 > along or b0 + h > Ly - 0.1:
                continue
            a0 = _u(rng, 0.1, along - w - 0.1)
            cv.decal(face, a0, a0 + w, b0, b0 + h, mat, L)


def _nyu_light(rng, L) -> dict:
    """A point light just under the ceiling, over the middle half of the room."""
    Lx, Ly, Lz = L
    return {"point": (Lx * _u(rng, 0.25, 0.75), Ly - 0.05, Lz * _u(rng, 0.25, 0.75))}


# -- scenes: cityscapes (a street) --------------------------------------------------------------

def _city_scene(rng, height: int, width: int):
    """Sample a street and cast it; returns the canvas and the light."""
    rh, sw, hc = _u(rng, 3.5, 7.0), _u(rng, 2.0, 4.0), 0.15  # road half width, sidewalk, curb
    xf = rh + sw  # building facades at x = +-xf
    cam = (_u(rng, -rh + 1.5, rh - 1.5), _u(rng, 1.2, 1.6), 0.0)
    R = _rotation(_u(rng, -0.14, 0.14), math.radians(_u(rng, -7, -1)), math.radians(_u(rng, -1.5, 1.5)))
    cv = _Canvas("cityscapes", height, width, R, cam, rooms=False)
    cv.MAT.fill(_SKY)
    _city_ground(cv, rh, hc)
    _city_facades(rng, cv, xf)
    _city_vehicles(rng, cv, rh)
    _city_poles(rng, cv, rh)
    _city_trees(rng, cv, rh, xf)
    _city_hedge(rng, cv, xf)
    _city_people(rng, cv, rh, hc, xf)
    return cv, _city_light(rng, rh)


def _city_ground(cv: _Canvas, rh: float, hc: float) -> None:
    """The road, the raised sidewalks and the curb faces."""
    cv.plane(1, 0.0, 1.0, _ROAD, lambda x, y, z: np.abs(x) < rh, needs="x")
    cv.plane(1, hc, 1.0, _SIDEWALK, lambda x, y, z: np.abs(x) >= rh, needs="x")
    for sgn in (-1.0, 1.0):  # curb faces, facing the road
        cv.plane(0, sgn * rh, -sgn, _SIDEWALK, lambda x, y, z: (y >= 0) & (y <= hc), needs="y")


def _city_facades(rng, cv: _Canvas, xf: float) -> None:
    """A row of buildings per side along -z, with alleys."""
    for sgn in (-1.0, 1.0):
        gap = rng.random(40) < 0.12  # alleys between buildings
        gap[0] = False
        lengths = np.where(gap, rng.uniform(3, 8, 40), rng.uniform(6, 25, 40))
        edges_a = (-20.0 + np.concatenate([[0.0], np.cumsum(lengths)])).astype(np.float32)
        hts = np.concatenate([[0.0], np.where(gap, 0.0, rng.uniform(5, 25, 40)), [0.0]]).astype(np.float32)

        def on_facade(x, y, z, edges_a=edges_a, hts=hts):
            return (y >= 0) & (y < hts[np.searchsorted(edges_a, -z, side="right")])

        cv.plane(0, sgn * xf, -sgn, _BUILDING, on_facade, needs="yz")


def _street_spot(rng, lo: float, hi: float, zmin: float = 6.0, zmax: float = 80.0) -> tuple[float, float]:
    """(x, z) at ``lo..hi`` from the street's centre line, on a random side, ``zmin..zmax`` ahead."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    return side * _u(rng, lo, hi), -_u(rng, zmin, zmax)


def _city_vehicles(rng, cv: _Canvas, rh: float) -> None:
    """Cars (body + cabin) and the odd van or bus, parked by the curb or on the road."""
    for _ in range(int(rng.integers(1, 7))):  # half sizes w, h, ln
        big = rng.random() < 0.15  # a van or a bus
        w, h, ln = (1.25, _u(rng, 1.2, 1.5), _u(rng, 4, 9)) if big else (0.9, _u(rng, 0.45, 0.6), _u(rng, 2.0, 2.4))
        z = -(ln + _u(rng, 4, 65))  # wholly in front of the camera
        if rng.random() < 0.6:
            x = (1.0 if rng.random() < 0.5 else -1.0) * (rh - w - _u(rng, 0.1, 0.4))  # parked by the curb
        else:
            x = _u(rng, -rh + w + 0.3, rh - w - 0.3)
        yaw = _u(rng, -0.08, 0.08)
        cv.box((x, 0.3 + h, z), (w, h, ln), yaw, _VEHICLE)
        if not big:
            cv.box((x, 0.3 + 2 * h + 0.27, z + 0.3), (0.8, 0.27, ln * 0.5), yaw, _VEHICLE)


def _city_poles(rng, cv: _Canvas, rh: float) -> None:
    """Poles along the curbs, some with a sign."""
    for _ in range(int(rng.integers(2, 7))):
        x, z = _street_spot(rng, rh + 0.3, rh + 0.7, zmax=90.0)
        top = _u(rng, 3.5, 8.0)
        cv.cylinder(x, z, 0.0, top, _u(rng, 0.08, 0.13), _POLE)
        if rng.random() < 0.5:
            cv.box((x, top - 0.4, z), (0.35, 0.35, 0.03), 0.0, _SIGN)


def _city_trees(rng, cv: _Canvas, rh: float, xf: float) -> None:
    """Trees on the sidewalks: trunk + crown."""
    for _ in range(int(rng.integers(0, 7))):
        x, z = _street_spot(rng, rh + 0.8, max(rh + 0.9, xf - 0.5), zmax=110.0)
        trunk, r = _u(rng, 2.0, 3.5), _u(rng, 1.2, 2.5)
        cv.cylinder(x, z, 0.0, trunk, _u(rng, 0.15, 0.25), _TRUNK)
        cv.sphere((x, trunk + 0.7 * r, z), r, _FOLIAGE)


def _city_hedge(rng, cv: _Canvas, xf: float) -> None:
    """Half the time, a hedge along a facade."""
    if rng.random() < 0.5:
        x, z = _street_spot(rng, xf - 0.5, xf - 0.45, zmax=60.0)
        cv.box((x, 0.5, z), (0.45, _u(rng, 0.35, 0.6), _u(rng, 2, 6)), 0.0, _FOLIAGE)


def _city_people(rng, cv: _Canvas, rh: float, hc: float, xf: float) -> None:
    """People (body + head), mostly on the sidewalks."""
    for _ in range(int(rng.integers(0, 6))):
        if rng.random() < 0.75:
            x, z = _street_spot(rng, rh + 0.5, max(rh + 0.6, xf - 0.4), zmax=50.0)
        else:
            x, z = _u(rng, -rh + 0.5, rh - 0.5), -_u(rng, 8, 40)
        base = hc if abs(x) >= rh else 0.0
        top = base + _u(rng, 1.45, 1.65)
        cv.cylinder(x, z, base, top, _u(rng, 0.2, 0.27), _HUMAN)
        hr = _u(rng, 0.11, 0.13)
        cv.sphere((x, top + hr, z), hr, _HUMAN)


def _city_light(rng, rh: float) -> dict:
    """The sun at a random azimuth, 23 to 69 degrees up (and the road's half width, for the lane marks)."""
    az, el = _u(rng, 0, 2 * math.pi), _u(rng, 0.4, 1.2)
    return {"sun": (math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)), "road_half": rh}


# -- rendering --------------------------------------------------------------------------

def check_version(version) -> int:
    """``version`` if this renderer has it, else a :class:`UserError` naming the versions."""
    if isinstance(version, bool) or not isinstance(version, int) or version not in GENERATOR_VERSIONS:
        raise UserError(f"unknown synthetic generator version {version!r}",
                        hint=f"use one of: {', '.join(map(str, GENERATOR_VERSIONS))} (dataset.generator)")
    return version


def render(variant: str, rng: np.random.Generator | int, height: int, width: int,
           version: int = GENERATOR_VERSION) -> dict[str, np.ndarray]:
    """Render one scene with renderer ``version``; returns its arrays in the MTAN formats (float32).

    ``{"image": (H, W, 3) in [0, 1], "label": (H, W) in {-1, 0..C-1},
    "depth": (H, W, 1) >= 0 (metres, or disparity for cityscapes), 0 = invalid,
    "normal": (H, W, 3) unit or (0, 0, 0)}`` (no ``"normal"`` for cityscapes).
    """
    _check_variant(variant)
    check_version(version)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if variant == "nyuv2":
        cv, light = _nyu_scene(rng, height, width)
    else:
        cv, light = _city_scene(rng, height, width)
    g = _Surface(cv)
    image = _image(rng, variant, cv, g, light)
    label = _labels(rng, variant, cv.MAT, height, width)
    invalid = _invalid(rng, variant, g, height, width)
    if version >= 2:  # after every draw of version 1, so the scene and the targets stay version 1's
        image = _aerial_perspective(rng, variant, g, image)
    return _targets(variant, cv, g, image, label, invalid)


#: extinction coefficients (per metre of ray length) of the aerial perspective, drawn per image
_EXTINCTION = {"nyuv2": (0.15, 0.25), "cityscapes": (0.008, 0.016)}


def _aerial_perspective(rng, variant: str, g: _Surface, image: np.ndarray) -> np.ndarray:
    """Koschmieder's model of haze: ``I = J t + A (1 - t)``, ``t = exp(-beta d)``, ``d`` the length
    of the pixel's ray to its surface, with this image's extinction ``beta`` and airlight ``A`` (a
    light grey with a slight tint).  Contrast and saturation fall with distance, as in real
    photographs, so depth is readable from a pixel's neighbourhood and not only from the layout.
    Pixels that hit nothing (the sky) keep their colour."""
    lo, hi = _EXTINCTION[variant]
    beta = np.float32(_u(rng, lo, hi))
    air = (np.float32(_u(rng, 0.55, 0.8)) + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
    dist = g.Z / g.inv_len  # z-depth x |ray direction| (the direction's camera-z component is 1)
    # exp in float64, rounded once to float32: numpy's float32 exp differs in the last bit between its
    # AVX2 and AVX-512 kernels, and the data must be the same on every machine
    t = np.where(g.hit, np.exp(-np.float64(beta) * dist.astype(np.float64)), 1.0).astype(np.float32)[..., None]
    out = image * t + air * (1 - t)
    np.clip(out, 0, 1, out=out)
    return out.astype(np.float32, copy=False)


class _Surface:
    """What the nearest hits give per pixel: depth, world position, normal, facing the viewer."""

    def __init__(self, cv: _Canvas):
        o = cv.o
        self.hit = np.isfinite(cv.T)
        self.Z = Z = np.where(self.hit, cv.T, 0).astype(np.float32)  # z-depth (0 where nothing is hit)
        self.PX, self.PY, self.PZ = o[0] + Z * cv.DX, o[1] + Z * cv.DY, o[2] + Z * cv.DZ
        self.NX, self.NY, self.NZ = cv.NX, cv.NY, cv.NZ
        self.inv_len = 1.0 / np.sqrt(cv.A2)  # 1 / |ray direction|
        # cos(angle to the viewer)
        self.ndotv = -(self.NX * cv.DX + self.NY * cv.DY + self.NZ * cv.DZ) * self.inv_len


def _image(rng, variant: str, cv: _Canvas, g: _Surface, light: dict) -> np.ndarray:
    """The RGB image in [0, 1]: textured albedo x shading (+ the sky), plus sensor noise."""
    tab = _TABLES[variant]
    m = cv.MAT.astype(np.intp)
    cols = _material_colours(rng, tab)
    albedo = _albedo(variant, tab, cols, m, g, light)
    image = albedo * _shading(rng, g, light)[..., None]
    if variant == "cityscapes":  # sky: a gradient from the horizon to the zenith, unshaded
        elev = np.clip(cv.DY * g.inv_len * 2.5, 0, 1)[..., None]
        sky = cols[_SKY, 0] + (cols[_SKY, 1] - cols[_SKY, 0]) * elev
        image = np.where(g.hit[..., None], image, sky)
    image += _noise(rng, image.size).reshape(image.shape) * np.float32(_u(rng, 0.01, 0.03))
    np.clip(image, 0, 1, out=image)
    return image


def _material_colours(rng, tab: _MatTable) -> np.ndarray:
    """This image's two colours per material, ``(n_mat, 2, 3)``: the table's, jittered in
    brightness (x 0.85..1.15) and per channel (+-0.04)."""
    n_mat = len(tab.cls)
    jitter = rng.uniform(0.85, 1.15, (n_mat, 1)) + rng.uniform(-0.04, 0.04, (n_mat, 3))
    return np.clip(np.stack([tab.col1, tab.col2], 1) * jitter[:, None], 0, 1).astype(np.float32)


def _albedo(variant: str, tab: _MatTable, cols: np.ndarray, m: np.ndarray, g: _Surface, light: dict) -> np.ndarray:
    """Per pixel one of its material's two colours, chosen by a solid texture of the world position."""
    PX, PY, PZ = g.PX, g.PY, g.PZ
    pat = tab.pattern.take(m)
    phase = PX * tab.axis[:, 0].take(m) + PY * tab.axis[:, 1].take(m) + PZ * tab.axis[:, 2].take(m)
    s = (pat == 1) & (np.sin(np.float32(2 * math.pi) * phase) > 0)  # stripes
    f = tab.freq.take(m)
    s |= (pat == 2) & ((np.floor(PX * f) + np.floor(PY * f) + np.floor(PZ * f)) % 2 == 1)  # 3-D checker
    if variant == "cityscapes":
        rh = light["road_half"]
        lane = (np.abs(PX) < 0.08) & (np.mod(PZ, 6.0) < 3.0)  # dashed centre line
        lane |= np.abs(np.abs(PX) - (rh - 0.3)) < 0.08  # solid edge lines
        s |= (pat == 3) & lane
    return cols.reshape(-1, 3).take(2 * m + s, axis=0)  # row 2k: colour 1, 2k+1: colour 2


def _shading(rng, g: _Surface, light: dict) -> np.ndarray:
    """Lambertian shading: ambient + diffuse from the light (no shadows) + a term facing the viewer."""
    NX, NY, NZ = g.NX, g.NY, g.NZ
    if "point" in light:  # falls off with the distance to the light
        lp = light["point"]
        lx, ly, lz = lp[0] - g.PX, lp[1] - g.PY, lp[2] - g.PZ
        dist2 = lx * lx + ly * ly + lz * lz
        ndotl = np.maximum(NX * lx + NY * ly + NZ * lz, 0) / np.sqrt(dist2)
        diffuse = _u(rng, 0.55, 0.85) * ndotl * (12.0 / (6.0 + dist2))
    else:
        d = light["sun"]
        diffuse = _u(rng, 0.5, 0.8) * np.maximum(NX * d[0] + NY * d[1] + NZ * d[2], 0)
    return _u(rng, 0.25, 0.4) + diffuse + _u(rng, 0.1, 0.25) * np.maximum(g.ndotv, 0)


def _labels(rng, variant: str, mat: np.ndarray, height: int, width: int) -> np.ndarray:
    """The class of each pixel's material, with some ignore (-1) at class boundaries and in blobs."""
    label = _TABLES[variant].cls_f.take(mat.astype(np.intp))
    edge = np.zeros(label.shape, bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    ignore = edge & (_noise(rng, label.size, uniform=True).reshape(label.shape) < _u(rng, 0.2, 0.7))
    if rng.random() < 0.3:
        ignore |= _ellipses(rng, height, width, 1, 0.03, 0.1)
    label[ignore] = -1
    return label


def _invalid(rng, variant: str, g: _Surface, height: int, width: int) -> np.ndarray:
    """Pixels without depth and normal: out of range, grazing angles, blobs (and the sky)."""
    invalid = ~g.hit | (g.Z > _MAX_DEPTH[variant])
    invalid |= _ellipses(rng, height, width, int(rng.integers(0, 4)), 0.02, 0.12)
    if variant == "nyuv2":
        invalid |= g.ndotv < 0.08
    else:  # stereo: no disparity in a band at the left border
        invalid[:, : int(_u(rng, 0, 0.06) * width)] = True
    return invalid


def _targets(variant: str, cv: _Canvas, g: _Surface, image: np.ndarray, label: np.ndarray,
             invalid: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays in the MTAN formats: depth in metres and camera-frame normals (nyuv2), or disparity."""
    valid = ~invalid
    Z = g.Z
    out = {"image": image.astype(np.float32, copy=False), "label": label}
    if variant == "nyuv2":
        Z[invalid] = 0
        out["depth"] = Z[..., None]
        r = cv.R.tolist()  # world -> camera: n_cam = R^T n_world (python floats keep float32)
        n = np.empty(Z.shape + (3,), np.float32)
        for k in range(3):
            np.multiply(r[0][k] * g.NX + r[1][k] * g.NY + r[2][k] * g.NZ, valid, out=n[..., k])
        out["normal"] = n
    else:
        disp = np.zeros_like(Z)
        np.divide(np.float32(DISPARITY_SCALE), Z, out=disp, where=valid)
        out["depth"] = disp[..., None]
    return out


def _ellipses(rng, height: int, width: int, count: int, lo: float, hi: float) -> np.ndarray:
    """A union of ``count`` random filled ellipses (semi-axes ``lo..hi`` of the size)."""
    mask = np.zeros((height, width), bool)
    if count <= 0:
        return mask
    u = np.arange(width, dtype=np.float32)[None, :]
    v = np.arange(height, dtype=np.float32)[:, None]
    for _ in range(count):
        cu, cv_ = _u(rng, 0, width), _u(rng, 0, height)
        a, b = _u(rng, lo, hi) * width, _u(rng, lo, hi) * height
        mask |= ((u - cu) / a) ** 2 + ((v - cv_) / b) ** 2 < 1.0
    return mask



@lru_cache(maxsize=1)
def _noise_bank() -> tuple[np.ndarray, np.ndarray]:
    """Fixed banks of standard normal and uniform numbers (drawing fresh ones per image
    costs more than the rest of the rendering); images read them at random offsets."""
    g = np.random.default_rng(0x5EED)
    n = 1 << 20
    return g.standard_normal(n, dtype=np.float32), g.random(n, dtype=np.float32)


def _noise(rng: np.random.Generator, size: int, uniform: bool = False) -> np.ndarray:
    normal, unif = _noise_bank()
    bank = unif if uniform else normal
    if size > bank.size // 2:
        return rng.random(size, dtype=np.float32) if uniform else rng.standard_normal(size, dtype=np.float32)
    start = int(rng.integers(0, bank.size - size))
    return bank[start:start + size]

