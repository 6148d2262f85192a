"""Procedural multi-task scenes, ray-cast, written in the MTAN layout.

The generator renders small scenes whose four targets come from one geometry:
every pixel's ray is intersected with the scene's primitives (axis-aligned
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

Everything is vectorised numpy per image; each image comes from its own seed
``(seed, variant, split, index)``, so datasets are reproducible, and a pixel
rectangle per primitive (its projected bounding box) keeps the cost at a few
milliseconds per 96x128 image.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..registry import DATASETS
from .base import CheckReport, DataConfig, DatasetPlugin, ProgressFn, cache_dir
from .mtan import (CITYSCAPES, NYUV2, MTANDataset, MTANSpec, check_directory, check_split_name, reject_options,
                   validate_values)

#: bump when the rendering changes, so cached datasets are regenerated
GENERATOR_VERSION = 1
VARIANTS = ("nyuv2", "cityscapes")
MANIFEST = "synthetic.json"

NYUV2_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
                 "picture", "sofa", "table", "tv", "wall", "window")
CITYSCAPES_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")

#: horizontal field of view: a Kinect's ~60 deg; Cityscapes' f = 2262 px at 2048 px width
_HFOV_DEG = {"nyuv2": 60.0, "cityscapes": 2 * math.degrees(math.atan(1024 / 2262))}
#: Cityscapes disparity in the MTAN files is ~ f B / (256 Z) = 2262 * 0.209 / 256 / Z
DISPARITY_SCALE = 1.85
_MAX_DEPTH = {"nyuv2": 10.0, "cityscapes": 150.0}  # metres; beyond is invalid (sensor range)
_EPS = 1e-4
_SPLIT_CODE = {"train": 0, "val": 1}


def _spec(variant: str) -> MTANSpec:
    return NYUV2 if variant == "nyuv2" else CITYSCAPES


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


# -- scenes ----------------------------------------------------------------------------

def _u(rng, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _nyu_scene(rng, height: int, width: int):
    """Sample an indoor room and cast it; returns the canvas and the light."""
    L = (_u(rng, 3.0, 6.5), _u(rng, 2.4, 3.0), _u(rng, 3.0, 7.0))
    Lx, Ly, Lz = L
    # Camera near one wall, looking into the room, slightly down.
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
    cv = _Canvas("nyuv2", height, width, R, cam, rooms=True)
    cv.room(L, (_NYU["wall"], _NYU["floor"], _NYU["ceiling"]))

    def wall_spot(width_: float, depth: float):
        """Centre (x, z) and yaw of a box against a random wall; local +z points into the wall."""
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

    def free_spot(radius: float):
        if 2 * radius + 0.1 > min(Lx, Lz):
            return None
        return (_u(rng, radius + 0.05, Lx - radius - 0.05), _u(rng, radius + 0.05, Lz - radius - 0.05)), \
            _u(rng, 0, 2 * math.pi)

    def clear_of_camera(xz, radius: float) -> bool:
        return math.hypot(xz[0] - cam[0], xz[1] - cam[2]) > radius + 0.35

    def local(xz, yaw, ax: float, az: float):
        cs, sn = math.cos(yaw), math.sin(yaw)
        return xz[0] + ax * cs - az * sn, xz[1] + ax * sn + az * cs

    def place(spot_fn, *args, radius: float):
        for _ in range(6):
            spot = spot_fn(*args)
            if spot is None:
                return None
            if clear_of_camera(spot[0], radius):
                return spot
        return None

    supports = []  # (centre xz, yaw, half w, half d, top y) of surfaces to put things on

    def put_item(xz, base_y: float, yaw: float):
        kind = int(rng.integers(3))
        if kind == 0:  # a stack of books
            cv.box((xz[0], base_y + 0.06, xz[1]), (_u(rng, 0.08, 0.15), _u(rng, 0.03, 0.1), _u(rng, 0.07, 0.12)),
                   yaw + _u(rng, -0.4, 0.4), _NYU["books"])
        elif kind == 1:
            r = _u(rng, 0.05, 0.13)
            cv.sphere((xz[0], base_y + r, xz[1]), r, _NYU["objects"])
        else:
            cv.cylinder(xz[0], xz[1], base_y, base_y + _u(rng, 0.1, 0.35), _u(rng, 0.04, 0.1), _NYU["objects"])

    kinds = ("bed", "chair", "furniture", "sofa", "table", "objects", "tv", "books")
    weights = np.array([1.0, 2.0, 2.0, 1.2, 1.6, 2.0, 0.8, 0.6])
    for _ in range(int(rng.integers(3, 9))):
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        if kind == "bed":
            w, d, h = _u(rng, 1.4, 2.0), _u(rng, 1.9, 2.2), _u(rng, 0.45, 0.6)
            spot = place(wall_spot, w, d, radius=math.hypot(w, d) / 2)
            if spot:
                xz, yaw = spot
                cv.box((xz[0], h / 2, xz[1]), (w / 2, h / 2, d / 2), yaw, _NYU["bed"])
                hb = local(xz, yaw, 0.0, d / 2 - 0.04)
                hh = h + _u(rng, 0.3, 0.6)
                cv.box((hb[0], hh / 2, hb[1]), (w / 2, hh / 2, 0.04), yaw, _NYU["bed"])
        elif kind == "chair":
            s = _u(rng, 0.4, 0.5)
            spot = place(free_spot, s * 0.75, radius=s * 0.75)
            if spot:
                xz, yaw = spot
                seat = _u(rng, 0.42, 0.48)
                cv.box((xz[0], seat / 2, xz[1]), (s / 2, seat / 2, s / 2), yaw, _NYU["chair"])
                bk = local(xz, yaw, 0.0, s / 2 - 0.04)
                top = seat + _u(rng, 0.4, 0.55)
                cv.box((bk[0], (seat + top) / 2, bk[1]), (s / 2, (top - seat) / 2, 0.04), yaw, _NYU["chair"])
        elif kind == "furniture":
            w, d, h = _u(rng, 0.6, 1.8), _u(rng, 0.35, 0.6), _u(rng, 0.7, 2.1)
            spot = place(wall_spot, w, d, radius=math.hypot(w, d) / 2)
            if spot:
                xz, yaw = spot
                cv.box((xz[0], h / 2, xz[1]), (w / 2, h / 2, d / 2), yaw, _NYU["furniture"])
                if h < 1.3:
                    supports.append((xz, yaw, w / 2, d / 2, h))
        elif kind == "sofa":
            w, d = _u(rng, 1.5, 2.3), _u(rng, 0.8, 0.95)
            spot = place(wall_spot, w, d, radius=math.hypot(w, d) / 2)
            if spot:
                xz, yaw = spot
                seat, back = _u(rng, 0.38, 0.45), _u(rng, 0.75, 0.9)
                cv.box((xz[0], seat / 2, xz[1]), (w / 2, seat / 2, d / 2), yaw, _NYU["sofa"])
                bk = local(xz, yaw, 0.0, d / 2 - 0.1)
                cv.box((bk[0], back / 2, bk[1]), (w / 2, back / 2, 0.1), yaw, _NYU["sofa"])
                for sgn in (-1, 1):
                    arm = local(xz, yaw, sgn * (w / 2 - 0.09), 0.0)
                    cv.box((arm[0], 0.31, arm[1]), (0.09, 0.31, d / 2), yaw, _NYU["sofa"])
        elif kind == "table":
            w, d = _u(rng, 0.8, 1.6), _u(rng, 0.6, 1.0)
            spot = place(free_spot, math.hypot(w, d) / 2, radius=math.hypot(w, d) / 2)
            if spot:
                xz, yaw = spot
                top = _u(rng, 0.7, 0.78)
                cv.box((xz[0], top - 0.02, xz[1]), (w / 2, 0.02, d / 2), yaw, _NYU["table"])
                for sx in (-1, 1):
                    for sz in (-1, 1):
                        leg = local(xz, yaw, sx * (w / 2 - 0.06), sz * (d / 2 - 0.06))
                        cv.cylinder(leg[0], leg[1], 0.0, top - 0.04, 0.03, _NYU["table"])
                supports.append((xz, yaw, w / 2, d / 2, top))
        elif kind == "objects":
            spot = place(free_spot, 0.35, radius=0.35)
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
        elif kind == "tv":
            w, h = _u(rng, 0.8, 1.3), _u(rng, 0.5, 0.75)
            spot = place(wall_spot, w, 0.06, radius=w / 2)
            if spot:
                xz, yaw = spot
                cy_ = _u(rng, 1.1, 1.6)
                cv.box((xz[0], cy_, xz[1]), (w / 2, h / 2, 0.03), yaw, _NYU["tv"])
        else:  # books on the floor by a wall
            w = _u(rng, 0.3, 0.8)
            spot = place(wall_spot, w, 0.25, radius=w / 2)
            if spot:
                xz, yaw = spot
                h = _u(rng, 0.15, 0.3)
                cv.box((xz[0], h / 2, xz[1]), (w / 2, h / 2, 0.11), yaw, _NYU["books"])
    for xz, yaw, hw, hd, top in supports:
        for _ in range(int(rng.integers(0, 3))):
            put_item(local(xz, yaw, _u(rng, -0.7, 0.7) * hw, _u(rng, -0.6, 0.6) * hd), top, yaw)

    # Windows and pictures: relabelled rectangles of the walls (same geometry).
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

    light = {"point": (Lx * _u(rng, 0.25, 0.75), Ly - 0.05, Lz * _u(rng, 0.25, 0.75))}
    return cv, light


def _city_scene(rng, height: int, width: int):
    """Sample a street and cast it; returns the canvas and the light."""
    rh, sw, hc = _u(rng, 3.5, 7.0), _u(rng, 2.0, 4.0), 0.15  # road half width, sidewalk, curb
    xf = rh + sw  # building facades at x = +-xf
    cam = (_u(rng, -rh + 1.5, rh - 1.5), _u(rng, 1.2, 1.6), 0.0)
    R = _rotation(_u(rng, -0.14, 0.14), math.radians(_u(rng, -7, -1)), math.radians(_u(rng, -1.5, 1.5)))
    cv = _Canvas("cityscapes", height, width, R, cam, rooms=False)
    cv.MAT.fill(_SKY)

    cv.plane(1, 0.0, 1.0, _ROAD, lambda x, y, z: np.abs(x) < rh, needs="x")
    cv.plane(1, hc, 1.0, _SIDEWALK, lambda x, y, z: np.abs(x) >= rh, needs="x")
    for sgn in (-1.0, 1.0):  # curb faces, facing the road
        cv.plane(0, sgn * rh, -sgn, _SIDEWALK, lambda x, y, z: (y >= 0) & (y <= hc), needs="y")
    for sgn in (-1.0, 1.0):  # a row of buildings per side, with alleys, along -z
        gap = rng.random(40) < 0.12  # alleys between buildings
        gap[0] = False
        lengths = np.where(gap, rng.uniform(3, 8, 40), rng.uniform(6, 25, 40))
        edges_a = (-20.0 + np.concatenate([[0.0], np.cumsum(lengths)])).astype(np.float32)
        hts = np.concatenate([[0.0], np.where(gap, 0.0, rng.uniform(5, 25, 40)), [0.0]]).astype(np.float32)

        def on_facade(x, y, z, edges_a=edges_a, hts=hts):
            return (y >= 0) & (y < hts[np.searchsorted(edges_a, -z, side="right")])

        cv.plane(0, sgn * xf, -sgn, _BUILDING, on_facade, needs="yz")

    def spot(lo: float, hi: float, zmin: float = 6.0, zmax: float = 80.0):
        side = 1.0 if rng.random() < 0.5 else -1.0
        return side * _u(rng, lo, hi), -_u(rng, zmin, zmax)

    for _ in range(int(rng.integers(1, 7))):  # vehicles: body (+ cabin), half sizes w, h, ln
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
    for _ in range(int(rng.integers(2, 7))):  # poles, some with a sign
        x, z = spot(rh + 0.3, rh + 0.7, zmax=90.0)
        top = _u(rng, 3.5, 8.0)
        cv.cylinder(x, z, 0.0, top, _u(rng, 0.08, 0.13), _POLE)
        if rng.random() < 0.5:
            cv.box((x, top - 0.4, z), (0.35, 0.35, 0.03), 0.0, _SIGN)
    for _ in range(int(rng.integers(0, 7))):  # trees: trunk + crown
        x, z = spot(rh + 0.8, max(rh + 0.9, xf - 0.5), zmax=110.0)
        trunk, r = _u(rng, 2.0, 3.5), _u(rng, 1.2, 2.5)
        cv.cylinder(x, z, 0.0, trunk, _u(rng, 0.15, 0.25), _TRUNK)
        cv.sphere((x, trunk + 0.7 * r, z), r, _FOLIAGE)
    if rng.random() < 0.5:  # a hedge along a facade
        x, z = spot(xf - 0.5, xf - 0.45, zmax=60.0)
        cv.box((x, 0.5, z), (0.45, _u(rng, 0.35, 0.6), _u(rng, 2, 6)), 0.0, _FOLIAGE)
    for _ in range(int(rng.integers(0, 6))):  # people: body + head
        if rng.random() < 0.75:
            x, z = spot(rh + 0.5, max(rh + 0.6, xf - 0.4), zmax=50.0)
        else:
            x, z = _u(rng, -rh + 0.5, rh - 0.5), -_u(rng, 8, 40)
        base = hc if abs(x) >= rh else 0.0
        top = base + _u(rng, 1.45, 1.65)
        cv.cylinder(x, z, base, top, _u(rng, 0.2, 0.27), _HUMAN)
        hr = _u(rng, 0.11, 0.13)
        cv.sphere((x, top + hr, z), hr, _HUMAN)

    az, el = _u(rng, 0, 2 * math.pi), _u(rng, 0.4, 1.2)
    light = {"sun": (math.cos(el) * math.cos(az), math.sin(el), math.cos(el) * math.sin(az)), "road_half": rh}
    return cv, light


# -- rendering --------------------------------------------------------------------------

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


def render(variant: str, rng: np.random.Generator | int, height: int, width: int) -> dict[str, np.ndarray]:
    """Render one scene; returns its arrays in the MTAN formats (float32).

    ``{"image": (H, W, 3) in [0, 1], "label": (H, W) in {-1, 0..C-1},
    "depth": (H, W, 1) >= 0 (metres, or disparity for cityscapes), 0 = invalid,
    "normal": (H, W, 3) unit or (0, 0, 0)}`` (no ``"normal"`` for cityscapes).
    """
    _check_variant(variant)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if variant == "nyuv2":
        cv, light = _nyu_scene(rng, height, width)
    else:
        cv, light = _city_scene(rng, height, width)
    tab = _TABLES[variant]
    o = cv.o
    hit = np.isfinite(cv.T)
    Z = np.where(hit, cv.T, 0).astype(np.float32)
    PX, PY, PZ = o[0] + Z * cv.DX, o[1] + Z * cv.DY, o[2] + Z * cv.DZ
    mat = cv.MAT
    NX, NY, NZ = cv.NX, cv.NY, cv.NZ
    inv_len = 1.0 / np.sqrt(cv.A2)
    ndotv = -(NX * cv.DX + NY * cv.DY + NZ * cv.DZ) * inv_len  # cos(angle to the viewer)

    # Albedo: two colours per material mixed by a solid texture of the world position.
    m = mat.astype(np.intp)
    n_mat = len(tab.cls)
    jitter = rng.uniform(0.85, 1.15, (n_mat, 1)) + rng.uniform(-0.04, 0.04, (n_mat, 3))
    cols = np.clip(np.stack([tab.col1, tab.col2], 1) * jitter[:, None], 0, 1).astype(np.float32)
    pat = tab.pattern.take(m)
    phase = PX * tab.axis[:, 0].take(m) + PY * tab.axis[:, 1].take(m) + PZ * tab.axis[:, 2].take(m)
    s = (pat == 1) & (np.sin(np.float32(2 * math.pi) * phase) > 0)
    f = tab.freq.take(m)
    s |= (pat == 2) & ((np.floor(PX * f) + np.floor(PY * f) + np.floor(PZ * f)) % 2 == 1)
    if variant == "cityscapes":
        rh = light["road_half"]
        lane = (np.abs(PX) < 0.08) & (np.mod(PZ, 6.0) < 3.0)  # dashed centre line
        lane |= np.abs(np.abs(PX) - (rh - 0.3)) < 0.08  # solid edge lines
        s |= (pat == 3) & lane
    albedo = cols.reshape(-1, 3).take(2 * m + s, axis=0)  # row 2k: colour 1, 2k+1: colour 2

    # Lambertian shading.
    if "point" in light:
        lp = light["point"]
        lx, ly, lz = lp[0] - PX, lp[1] - PY, lp[2] - PZ
        dist2 = lx * lx + ly * ly + lz * lz
        ndotl = np.maximum(NX * lx + NY * ly + NZ * lz, 0) / np.sqrt(dist2)
        diffuse = _u(rng, 0.55, 0.85) * ndotl * (12.0 / (6.0 + dist2))
    else:
        d = light["sun"]
        diffuse = _u(rng, 0.5, 0.8) * np.maximum(NX * d[0] + NY * d[1] + NZ * d[2], 0)
    shade = _u(rng, 0.25, 0.4) + diffuse + _u(rng, 0.1, 0.25) * np.maximum(ndotv, 0)
    image = albedo * shade[..., None]
    if variant == "cityscapes":  # sky: a gradient from the horizon to the zenith, unshaded
        elev = np.clip(cv.DY * inv_len * 2.5, 0, 1)[..., None]
        sky = cols[_SKY, 0] + (cols[_SKY, 1] - cols[_SKY, 0]) * elev
        image = np.where(hit[..., None], image, sky)
    image += _noise(rng, image.size).reshape(image.shape) * np.float32(_u(rng, 0.01, 0.03))
    np.clip(image, 0, 1, out=image)

    # Labels, with some ignore (-1) at class boundaries and in blobs.
    label = tab.cls_f.take(m)
    edge = np.zeros(label.shape, bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    ignore = edge & (_noise(rng, label.size, uniform=True).reshape(label.shape) < _u(rng, 0.2, 0.7))
    if rng.random() < 0.3:
        ignore |= _ellipses(rng, height, width, 1, 0.03, 0.1)
    label[ignore] = -1

    # Invalid depth/normals: out of range, grazing angles, blobs (and the sky).
    invalid = ~hit | (Z > _MAX_DEPTH[variant])
    invalid |= _ellipses(rng, height, width, int(rng.integers(0, 4)), 0.02, 0.12)
    if variant == "nyuv2":
        invalid |= ndotv < 0.08
    else:  # stereo: no disparity in a band at the left border
        invalid[:, : int(_u(rng, 0, 0.06) * width)] = True
    valid = ~invalid
    out = {"image": image.astype(np.float32, copy=False), "label": label}
    if variant == "nyuv2":
        Z[invalid] = 0
        out["depth"] = Z[..., None]
        r = cv.R.tolist()  # world -> camera: n_cam = R^T n_world (python floats keep float32)
        n = np.empty((height, width, 3), np.float32)
        for k in range(3):
            np.multiply(r[0][k] * NX + r[1][k] * NY + r[2][k] * NZ, valid, out=n[..., k])
        out["normal"] = n
    else:
        disp = np.zeros_like(Z)
        np.divide(np.float32(DISPARITY_SCALE), Z, out=disp, where=valid)
        out["depth"] = disp[..., None]
    return out


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


def image_rng(seed: int, variant: str, split: str, index: int) -> np.random.Generator:
    """The random generator of one image: independent per (seed, variant, split, index)."""
    return np.random.default_rng([int(seed), VARIANTS.index(variant), _SPLIT_CODE[split], int(index)])


# -- datasets on disk -------------------------------------------------------------------------

def _check_params(variant: str, n_train: int, n_val: int, height: int, width: int) -> None:
    _check_variant(variant)
    for name, v, lo in (("n_train", n_train, 1), ("n_val", n_val, 1), ("height", height, 8), ("width", width, 8)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise UserError(f"synthetic {name} must be an integer >= {lo}, got {v!r}")


def generate(variant: str, out: str | os.PathLike, n_train: int, n_val: int, height: int, width: int,
             seed: int, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a synthetic dataset in the MTAN layout to ``out``; returns its manifest.

    ``progress(done, total)`` is called after every image.  The manifest
    (``synthetic.json``, written last) records the parameters, the classes and
    the camera, and marks the dataset complete.
    """
    _check_params(variant, n_train, n_val, height, width)
    spec = _spec(variant)
    label_dir = spec.label_dirs[0]
    out = os.fspath(out)
    folders = {"image": "image", "label": label_dir, "depth": "depth"}
    if variant == "nyuv2":
        folders["normal"] = "normal"
    for split in ("train", "val"):
        for f in folders.values():
            os.makedirs(os.path.join(out, split, f), exist_ok=True)
    total, done = n_train + n_val, 0
    t0 = time.perf_counter()
    for split, n in (("train", n_train), ("val", n_val)):
        dirs = {k: os.path.join(out, split, f) for k, f in folders.items()}
        for i in range(n):
            arrays = render(variant, image_rng(seed, variant, split, i), height, width)
            for key, d in dirs.items():
                np.save(os.path.join(d, f"{i}.npy"), arrays[key])
            done += 1
            if progress is not None:
                progress(done, total)
    fx, fy, cx, cy = camera_intrinsics(variant, height, width)
    manifest = {
        "generator": "mtlbench.data.synthetic", "version": GENERATOR_VERSION, "complete": True,
        "variant": variant, "n_train": n_train, "n_val": n_val, "height": height, "width": width,
        "seed": seed, "layout": "mtan", "label_dir": label_dir,
        "classes": list(NYUV2_CLASSES if variant == "nyuv2" else CITYSCAPES_CLASSES),
        "intrinsics": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
        "depth": "z-depth in metres" if variant == "nyuv2" else f"disparity {DISPARITY_SCALE} / Z (Z in metres)",
        "normal_frame": "camera: x right, y up, z towards the viewer" if variant == "nyuv2" else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    from ..runs import atomic_write_json

    atomic_write_json(Path(out) / MANIFEST, manifest)  # written last: it marks the dataset complete
    return manifest


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a complete generated dataset at ``path``, else None."""
    try:
        with open(os.path.join(os.fspath(path), MANIFEST)) as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("complete") else None


def cache_key(variant: str, n_train: int, n_val: int, height: int, width: int, seed: int) -> str:
    """Directory name of a generated dataset: readable prefix + hash of every generation input."""
    params = {"variant": variant, "n_train": n_train, "n_val": n_val, "height": height,
              "width": width, "seed": seed, "version": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"{variant}-{height}x{width}-{n_train}+{n_val}-seed{seed}-{digest}"


def cache_base(root: str | os.PathLike | None = None) -> Path:
    """Where generated datasets live: ``root``, else ``$MTLBENCH_CACHE/synthetic``, else
    ``~/.cache/mtlbench/synthetic``."""
    if root:
        return Path(root).expanduser()
    return cache_dir() / "synthetic"


def ensure_generated(variant: str, n_train: int, n_val: int, height: int, width: int, seed: int,
                     root: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The directory of this dataset, generating it first if no complete copy exists.

    Generation writes into a temporary sibling directory and renames it into
    place after the manifest is written, so an interrupted run never leaves a
    directory that looks complete; a concurrent generator of the same dataset
    simply loses the race and its copy is discarded.
    """
    _check_params(variant, n_train, n_val, height, width)
    base = cache_base(root)
    final = base / cache_key(variant, n_train, n_val, height, width, seed)
    if read_manifest(final):
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=base))
    except OSError as exc:
        raise UserError(f"cannot create the synthetic data cache at {base}: {exc}",
                        hint="set MTLBENCH_CACHE (or dataset.root / --data-root) to a writable directory") from exc
    if log is not None:
        log(f"generating synthetic {variant} data ({n_train} train + {n_val} val, {height}x{width}, "
            f"seed {seed}) into {final}")
    try:
        generate(variant, tmp, n_train, n_val, height, width, seed)
        if final.exists() and not read_manifest(final):
            shutil.rmtree(final, ignore_errors=True)  # a stale incomplete copy
        try:
            os.rename(tmp, final)
        except OSError:
            if not read_manifest(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _log_stderr(msg: str) -> None:
    print(f"mtlbench: {msg}", file=sys.stderr, flush=True)


@DATASETS.register("synthetic")
class Synthetic(DatasetPlugin):
    """Procedural ray-cast scenes in the MTAN layout (nyuv2 or cityscapes variant); no download needed."""

    summary = ("Procedural ray-cast scenes in the MTAN layout (variant nyuv2: 13 classes, depth, normals; "
               "cityscapes: 7 classes, disparity); generated on first use")
    needs_root = False
    root_use = "where generated datasets are cached (instead of $MTLBENCH_CACHE/synthetic)"
    family_options = {v: {"variant": v} for v in VARIANTS}
    synth_options = {
        "variant": f"which real dataset the scenes imitate: {' or '.join(VARIANTS)} (default nyuv2)",
        "n_train": "training images (default 256)",
        "n_val": "validation images (default 64)",
        "height": "image height (default 96)",
        "width": "image width (default 128)",
        "seed": "generation seed (default 0)",
    }

    @dataclass
    class Config(DataConfig):
        variant: str = "nyuv2"  # "nyuv2" (semseg 13, depth, normal) or "cityscapes" (semseg 7, disparity)
        n_train: int = 256  # training images
        n_val: int = 64  # validation images
        height: int = 96  # generated size (image_size resizes after loading)
        width: int = 128
        seed: int = 0  # generation seed (independent of the training seed)

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        _check_params(cfg.variant, cfg.n_train, cfg.n_val, cfg.height, cfg.width)
        self._dir: Path | None = None

    @property
    def family(self) -> str:  # the real dataset this variant stands in for
        return self.cfg.variant

    def tasks(self):
        from ..tasks import Depth, Normal, SemSeg

        if self.cfg.variant == "nyuv2":
            return {"semseg": SemSeg(len(NYUV2_CLASSES)), "depth": Depth(), "normal": Normal()}
        return {"semseg": SemSeg(len(CITYSCAPES_CLASSES)), "depth": Depth()}

    def data_dir(self) -> Path:
        """The generated dataset's directory (generated on the first call)."""
        if self._dir is None:
            c = self.cfg
            self._dir = ensure_generated(c.variant, c.n_train, c.n_val, c.height, c.width, c.seed,
                                         root=c.root, log=_log_stderr)
        return self._dir

    def split(self, name: str):
        check_split_name(name)
        return MTANDataset(self.data_dir(), name, _spec(self.cfg.variant), image_size=self.cfg.image_size,
                           augment=bool(self.cfg.augment) and name == "train")

    def validate_for_training(self, log: Callable[[str], None] | None = None) -> None:
        """The generated directory's values, checked once (a damaged cache is caught before training)."""
        validate_values(self.data_dir(), _spec(self.cfg.variant), log=log)

    @classmethod
    def check(cls, root, *, full: bool = True, progress: ProgressFn | None = None,
              options: dict | None = None) -> CheckReport:
        """Check a directory written by ``mtlbench data synth`` against its variant's MTAN layout.

        The variant comes from the directory's manifest, else from ``options["variant"]``.
        """
        options = dict(options or {})
        wanted = options.pop("variant", None)
        reject_options(cls, options, "check (beyond variant)")
        if root is None or not str(root).strip():
            raise UserError("data check needs the directory to check: pass --data-root DIR",
                            hint="for synthetic data, a directory written by `mtlbench data synth --data-root DIR`")
        path = Path(root).expanduser()
        if not path.is_dir():
            raise UserError(f"--data-root {root} is not an existing directory",
                            hint="pass a directory written by `mtlbench data synth --data-root DIR`")
        variant = (read_manifest(path) or {}).get("variant")
        if variant is not None and wanted is not None and wanted != variant:
            raise UserError(f"--set variant={wanted}, but {path / MANIFEST} says the data is {variant!r}",
                            hint="drop the variant option: the manifest knows it")
        variant = variant or wanted
        if variant is None:
            raise UserError(f"{path} has no complete {MANIFEST} (written last by `mtlbench data synth`), "
                            "so its variant is unknown",
                            hint=f"pass --variant {'|'.join(VARIANTS)}, or generate the data again")
        _check_variant(variant)
        return check_directory(path, _spec(variant), full=full, progress=progress,
                               remedy="generate the data again with `mtlbench data synth`")

    @classmethod
    def synth(cls, out: Path, options: dict, progress: ProgressFn | None = None) -> str:
        """Render a dataset into ``out`` (:func:`generate`); options are ``synth_options`` keys."""
        from ..config import build_dataclass

        unknown = sorted(set(options) - set(cls.synth_options))
        if unknown:
            raise UserError(f"synthetic data generation takes no option {', '.join(unknown)}",
                            hint=f"its options: {', '.join(cls.synth_options)}")
        cfg = build_dataclass(cls.Config, options, "dataset", {f"dataset.{k}": "the command line" for k in options})
        _check_params(cfg.variant, cfg.n_train, cfg.n_val, cfg.height, cfg.width)
        t0 = time.perf_counter()
        cb = None if progress is None else (lambda done, total: progress(done, total, ""))
        generate(cfg.variant, out, cfg.n_train, cfg.n_val, cfg.height, cfg.width, cfg.seed, progress=cb)
        dt = max(time.perf_counter() - t0, 1e-9)
        total = cfg.n_train + cfg.n_val
        return (f"wrote {total} images ({cfg.n_train} train + {cfg.n_val} val, {cfg.variant}, "
                f"{cfg.height}x{cfg.width}) to {out} in {dt:.1f} s: {total / dt:.0f} images/s")
