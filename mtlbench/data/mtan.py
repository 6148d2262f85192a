"""The MTAN data format: validator, reader and the base of the real-dataset plugins.

MTAN (Liu et al., CVPR 2019) released NYUv2 and Cityscapes as one ``.npy``
file per image and target, and the methods mtlbench compares against all read
that layout::

    root/{train,val}/image/{i}.npy    (H, W, 3) float in [0, 1], channels-last
    root/{train,val}/label/{i}.npy    (H, W) float or int, 0..C-1, -1 = ignore
                                      (Cityscapes: label_7/, or label/)
    root/{train,val}/depth/{i}.npy    (H, W, 1) float >= 0, 0 = invalid
                                      (Cityscapes: disparity, not metres)
    root/{train,val}/normal/{i}.npy   (H, W, 3) float unit vectors, (0, 0, 0) = invalid
                                      (NYUv2 only)

with indices contiguous from 0.  :func:`validate` checks a directory against
that layout (cheaply, from the ``.npy`` headers, or fully, loading every
array); :class:`MTANDataset` reads it, resizes to the configured size and
optionally applies MTAN's augmentation.  Loaders validate the structure up
front, and before training :func:`validate_values` checks every value once per
directory state (a NaN, a label out of range), so a broken directory is one
:class:`~mtlbench.errors.UserError` naming every bad file instead of a crash in
the middle of an epoch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import CheckReport, DatasetPlugin, Problem, ProgressFn, not_a_regular_file, validated_once

SPLITS = ("train", "val")
#: MTAN's RandomScaleCrop scales
AUG_SCALES = (1.0, 1.2, 1.5)
_MTAN_README = "https://github.com/lorenmt/mtan#datasets"


@dataclass(frozen=True)
class MTANSpec:
    """What one MTAN-format dataset holds."""

    key: str  # registry name, e.g. "nyuv2"
    name: str  # printed name, e.g. "NYUv2"
    num_classes: int
    tasks: tuple[str, ...]  # of "semseg", "depth", "normal"
    label_dirs: tuple[str, ...] = ("label",)  # accepted label folder names, preferred first
    depth_desc: str = "depth in metres"
    source: str = ""  # where to get the data

    def folders(self) -> dict[str, tuple[str, ...]]:
        """Accepted folder names per key (``image`` and each task)."""
        names = {"image": ("image",), "semseg": self.label_dirs, "depth": ("depth",), "normal": ("normal",)}
        return {k: names[k] for k in ("image", *self.tasks)}


NYUV2 = MTANSpec(
    "nyuv2", "NYUv2", 13, ("semseg", "depth", "normal"), ("label",), "depth in metres",
    source=(f"the MTAN repository's README ({_MTAN_README}): the preprocessed NYUv2, 288x384, "
            "795 train / 654 val images"))
CITYSCAPES = MTANSpec(
    "cityscapes", "Cityscapes", 7, ("semseg", "depth"), ("label_7", "label"), "disparity",
    source=(f"the MTAN repository's README ({_MTAN_README}): the preprocessed Cityscapes, 128x256 "
            "(or 256x512), 2975 train / 500 val images; 7-class labels in label_7/"))


def check_split_name(name: str) -> None:
    if name not in SPLITS:
        raise UserError(f"unknown split {name!r}", hint=f"use one of: {', '.join(SPLITS)}")


# -- validation ---------------------------------------------------------------------

def read_npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` file, reading only its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        return tuple(shape), dtype, fh.tell()


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _check_header(key: str, shape: tuple, dtype: np.dtype) -> list[str]:
    """Messages for a wrong shape or dtype of one file of ``key``."""
    msgs = []
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        return [f"dtype {dtype} is not numeric"]
    s = _fmt_shape(shape)
    if 0 in shape:  # passes every shape check below, then crashes the loader or the model
        return [f"shape {s} is empty (an axis of length 0): the array holds no values"]
    if key in ("image", "normal"):
        if len(shape) == 3 and shape[0] == 3 and shape[2] != 3:
            msgs.append(f"shape {s} is channels-first; expected channels-last (H, W, 3) "
                        "(fix: np.save(f, a.transpose(1, 2, 0)))")
        elif len(shape) != 3 or shape[2] != 3:
            msgs.append(f"shape {s}; expected (H, W, 3)")
    if key == "image":
        if dtype.kind != "f":
            msgs.append(f"dtype {dtype}; expected float in [0, 1]"
                        + (" (fix: np.save(f, (a / 255).astype(np.float32)))" if dtype == np.uint8 else ""))
    elif key == "semseg":
        if len(shape) == 3 and shape[2] == 1:
            msgs.append(f"shape {s} has a trailing axis; expected (H, W) (fix: np.save(f, a[..., 0]))")
        elif len(shape) != 2:
            msgs.append(f"shape {s}; expected (H, W)")
        if dtype.kind == "b":
            msgs.append(f"dtype {dtype}; expected float or integer class ids")
    elif key == "depth":
        if len(shape) == 2:
            msgs.append(f"depth without its trailing axis: shape {s}; expected (H, W, 1) "
                        "(MTAN loaders move the last axis to the front, so (H, W) would be read "
                        "transposed; fix: np.save(f, d[..., None]))")
        elif len(shape) != 3 or shape[2] != 1:
            msgs.append(f"shape {s}; expected (H, W, 1)")
        if dtype.kind != "f":
            msgs.append(f"dtype {dtype}; expected float (fix: save d.astype(np.float32))")
    elif key == "normal":
        if dtype.kind != "f":
            msgs.append(f"dtype {dtype}; expected float unit vectors")
    return msgs


def _check_values(key: str, a: np.ndarray, num_classes: int) -> list[tuple[str, bool]]:
    """``(message, fatal)`` for out-of-range values (the ``full`` check).

    Fatal: what crashes or poisons training (NaN/inf anywhere, a label outside
    {-1, 0..C-1}); the rest (image range, negative depth, normals off unit
    length, non-integer labels that round into range) is reported but tolerated.
    """
    msgs: list[tuple[str, bool]] = []
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        n_bad = int(a.size - np.count_nonzero(finite))
        if n_bad:
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            msgs.append((f"{n_bad} NaN/inf value(s) (first at index {first}); expected finite numbers", True))
            a = np.where(finite, a, 0)
    if a.size == 0:
        return msgs
    if key == "image":
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            msgs.append((f"values in [{lo:.4g}, {hi:.4g}]; expected [0, 1]"
                         + (" (looks like 0..255: divide by 255)" if hi > 2 else ""), False))
    elif key == "semseg":
        if a.dtype.kind == "f" and (a != np.round(a)).any():
            frac = a[a != np.round(a)]
            msgs.append((f"{frac.size} non-integer label value(s) (e.g. {float(frac[0]):.4g}); "
                         "expected integer class ids (labels must be resized with nearest neighbour)", False))
            a = np.round(a)  # what the loader does
        bad = (a < -1) | (a > num_classes - 1)
        if bad.any():
            values = np.unique(a[bad])
            shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if values.size > 8 else "")
            msgs.append((f"label value(s) {shown} outside {{-1, 0..{num_classes - 1}}}"
                         + (" (255 is 'ignore' in some tools: map it to -1)" if 255 in values else ""), True))
    elif key == "depth":
        if (a < 0).any():
            msgs.append((f"{int((a < 0).sum())} negative value(s) (min {float(a.min()):.4g}); "
                         "expected >= 0 with 0 = invalid", False))
    elif key == "normal":
        if (np.abs(a) > 1 + 1e-3).any():
            msgs.append((f"values in [{float(a.min()):.4g}, {float(a.max()):.4g}]; expected [-1, 1]", False))
        v = a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(-1, 1)
        nonzero = (v != 0).any(axis=1)
        if nonzero.any():
            norms = np.sqrt((v[nonzero].astype(np.float64) ** 2).sum(axis=1))
            off = np.abs(norms - 1) >= 0.05
            if off.any():
                msgs.append((f"{int(off.sum())} of {norms.size} non-zero normals are not unit length "
                             f"(norms {norms[off].min():.3g}..{norms[off].max():.3g}); expected unit "
                             "vectors, or (0, 0, 0) = invalid", False))
    return msgs


def _list_indices(folder: str, problems: list[Problem]) -> set[int]:
    idx: set[int] = set()
    for name in os.listdir(folder):
        if not name.endswith(".npy"):
            continue  # e.g. .DS_Store; the loaders only look at {i}.npy
        stem = name[:-4]
        if stem.isdigit() and (stem == "0" or not stem.startswith("0")):
            idx.add(int(stem))
        else:
            problems.append(Problem(os.path.join(folder, name),
                                    "unexpected file name: files are named by their index (0.npy, 1.npy, ...)"))
    return idx


def _names(indices, limit: int = 5) -> str:
    indices = sorted(indices)
    text = ", ".join(f"{i}.npy" for i in indices[:limit])
    return text + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _validate_split(root: str, split: str, spec: MTANSpec, full: bool,
                    progress: Callable[[int, int], None] | None) -> list[Problem]:
    problems: list[Problem] = []
    sdir = os.path.join(root, split)
    if not os.path.isdir(sdir):
        msg = f"missing split folder {split}/"
        nested = [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d, split))]
        if nested:
            msg += f" (found {os.path.join(root, nested[0], split)}: pass --data-root {os.path.join(root, nested[0])})"
        return [Problem(sdir, msg)]
    folders: dict[str, str] = {}
    for key, names in spec.folders().items():
        found = next((n for n in names if os.path.isdir(os.path.join(sdir, n))), None)
        if found is None:
            alt = f" (or {'/, '.join(names[1:])}/)" if len(names) > 1 else ""
            problems.append(Problem(os.path.join(sdir, names[0]), f"missing folder {names[0]}/{alt} for {key}"))
        else:
            folders[key] = os.path.join(sdir, found)

    indices: dict[str, set[int]] = {}
    for key, folder in folders.items():
        idx = _list_indices(folder, problems)
        if not idx:
            problems.append(Problem(folder, "no .npy files"))
            continue
        missing = sorted(set(range(max(idx) + 1)) - idx)
        for i in missing[:20]:
            problems.append(Problem(os.path.join(folder, f"{i}.npy"),
                                    f"missing: indices must run from 0 without gaps ({len(idx)} files, "
                                    f"highest index {max(idx)})"))
        if len(missing) > 20:
            problems.append(Problem(folder, f"{len(missing) - 20} more missing indices"))
        indices[key] = idx

    if not indices:
        return problems
    ref_key = "image" if "image" in indices else next(iter(indices))
    ref = indices[ref_key]
    for key, idx in indices.items():
        if key == ref_key or idx == ref:
            continue
        parts = []
        if ref - idx:
            parts.append(f"absent here: {_names(ref - idx)}")
        if idx - ref:
            parts.append(f"not in {os.path.basename(folders[ref_key])}/: {_names(idx - ref)}")
        problems.append(Problem(folders[key], f"{len(idx)} files but {os.path.basename(folders[ref_key])}/ "
                                              f"has {len(ref)} ({'; '.join(parts)})"))

    common = sorted(set.intersection(*indices.values()))
    for n_done, i in enumerate(common, 1):
        image_hw = None
        for key, folder in folders.items():
            if key not in indices:
                continue
            path = os.path.join(folder, f"{i}.npy")
            kind = not_a_regular_file(path)
            if kind:  # opening a FIFO would block for ever, a device read for ever
                problems.append(Problem(path, f"not a regular file ({kind}); expected a .npy file"))
                continue
            try:
                shape, dtype, offset = read_npy_header(path)
            except (OSError, ValueError, SyntaxError) as exc:
                problems.append(Problem(path, f"not a readable .npy file ({exc})"))
                continue
            msgs = _check_header(key, shape, dtype)
            if not msgs:
                size = os.path.getsize(path)
                expected = offset + math.prod(shape) * dtype.itemsize
                if size < expected:
                    msgs.append(f"truncated: {size} bytes, the header promises {expected} "
                                "(copy or download the file again)")
            if not msgs and len(shape) >= 2:
                if key == "image":
                    image_hw = shape[:2]
                elif image_hw is not None and shape[:2] != image_hw:
                    msgs.append(f"size {shape[0]}x{shape[1]} differs from the image's "
                                f"{image_hw[0]}x{image_hw[1]} ({os.path.basename(folders['image'])}/{i}.npy)")
            problems += [Problem(path, m) for m in msgs]
            if full and not msgs:
                try:
                    a = np.load(path, allow_pickle=False)
                except (OSError, ValueError) as exc:
                    problems.append(Problem(path, f"cannot be loaded ({exc})"))
                else:
                    problems += [Problem(path, m, fatal) for m, fatal in _check_values(key, a, spec.num_classes)]
        if progress is not None:
            progress(n_done, len(common))
    return problems


def validate(root: str | os.PathLike, spec: MTANSpec, *, splits: tuple[str, ...] = SPLITS,
             full: bool = False, progress: Callable[[str, int, int], None] | None = None) -> list[Problem]:
    """Every problem of the MTAN-format directory ``root``; an empty list when it is fine.

    The default checks are structural and read only the ``.npy`` headers:
    missing split or folder, no files, gaps in the indices, folders with
    different indices, wrong shapes (a depth map without its trailing axis, a
    size differing from the image's), non-float dtypes where floats are needed,
    truncated files.  ``full=True`` also loads every array and checks values:
    image in [0, 1], labels integer in {-1, 0..C-1}, depth >= 0, normals in
    [-1, 1] and unit length or zero, no NaN/inf.  ``progress(split, done,
    total)`` is called after every index.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        return [Problem(root, "not a directory" if os.path.exists(root) else "does not exist")]
    problems: list[Problem] = []
    for split in splits:
        cb = None if progress is None else (lambda d, t, s=split: progress(s, d, t))
        problems += _validate_split(root, split, spec, full, cb)
    return problems


def problems_error(problems: list[Problem], root: str | os.PathLike, spec: MTANSpec, limit: int = 50) -> UserError:
    """A :class:`UserError` listing ``problems`` (the first ``limit``) and how to fix them."""
    n = len(problems)
    lines = [f"the {spec.name} data at {root} does not follow the MTAN layout "
             f"({n} problem{'s' if n != 1 else ''}):"]
    lines += [f"  {p}" for p in problems[:limit]]
    if n > limit:
        lines.append(f"  ... and {n - limit} more; `mtlbench data check --dataset {spec.key} "
                     f"--data-root {root}` lists them all")
    dirs = ", ".join(names[0] for names in spec.folders().values())
    hint = (f"expected {root}/{{train,val}}/{{{dirs}}}/{{0..N-1}}.npy as written by the MTAN preprocessing "
            f"(image (H, W, 3) float in [0, 1]; label (H, W) with -1 = ignore; depth (H, W, 1) "
            f"{spec.depth_desc}, 0 = invalid"
            + ("; normal (H, W, 3) unit vectors" if "normal" in spec.tasks else "")
            + f"); fix the files listed, or get the data again from {spec.source}")
    return UserError("\n".join(lines), hint=hint)


def require_root(root: str | os.PathLike | None, spec: MTANSpec) -> Path:
    """``root`` as a Path, or a UserError saying how to pass and where to get the data."""
    get = (f"download the MTAN-preprocessed {spec.name} from {spec.source}, unpack it so that "
           f"DIR/train/image/0.npy exists and pass --data-root DIR; or use --dataset synthetic, "
           f"which needs no download")
    if root is None or not str(root).strip():
        raise UserError(f"dataset {spec.key!r} needs its data directory: pass --data-root DIR "
                        "(or set dataset.root in a config file)", hint=get)
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"the {spec.name} data directory {root} (--data-root) does not exist", hint=get)
    if not path.is_dir():
        raise UserError(f"the {spec.name} data directory {root} (--data-root) is not a directory", hint=get)
    return path


# -- transforms -------------------------------------------------------------------------

def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resize the maps of a sample (channels-first tensors) to ``size`` = (H, W).

    Image: bilinear (antialiased when shrinking). Normals: bilinear, then
    re-normalised, with vectors shorter than 0.5 (mostly invalid neighbours)
    set to (0, 0, 0) = invalid.  Labels and depth: nearest, so no label or
    depth value is invented (0 = invalid stays 0).
    """
    size = (int(size[0]), int(size[1]))
    out = dict(sample)
    img = sample["image"]
    if tuple(img.shape[-2:]) == size:
        return out
    shrink = img.shape[-2] > size[0] or img.shape[-1] > size[1]
    out["image"] = F.interpolate(img[None], size, mode="bilinear", align_corners=False,
                                 antialias=shrink)[0].clamp_(0, 1)
    if "normal" in sample:
        n = F.interpolate(sample["normal"][None], size, mode="bilinear", align_corners=False)[0]
        norm = n.norm(dim=0, keepdim=True)
        out["normal"] = torch.where(norm > 0.5, n / norm.clamp_min(1e-6), torch.zeros_like(n))
    if "semseg" in sample:
        out["semseg"] = F.interpolate(sample["semseg"][None, None].float(), size, mode="nearest-exact")[0, 0]
    if "depth" in sample:
        out["depth"] = F.interpolate(sample["depth"][None], size, mode="nearest-exact")[0]
    return out


def scale_crop_flip(sample: dict[str, torch.Tensor], scale: float, top: int, left: int,
                    flip: bool) -> dict[str, torch.Tensor]:
    """MTAN's augmentation with given parameters (see :func:`random_scale_crop_flip`)."""
    out = dict(sample)
    H, W = sample["image"].shape[-2:]
    h, w = int(H / scale), int(W / scale)
    for key in ("image", "semseg", "depth", "normal"):
        if key not in sample:
            continue
        x = sample[key]
        if (h, w) != (H, W):
            x = x[..., top:top + h, left:left + w]
            if key in ("image", "normal"):
                # Normals are not re-normalised after this, as in MTAN.
                x = F.interpolate(x[None], (H, W), mode="bilinear", align_corners=True)[0]
            elif key == "semseg":
                x = F.interpolate(x[None, None].float(), (H, W), mode="nearest")[0, 0]
            else:
                # Zooming in by `scale` makes the scene look `scale` times closer.  Applied to
                # Cityscapes disparity too, as CAGrad and Nash-MTL do (physically it should be
                # multiplied there).
                x = F.interpolate(x[None], (H, W), mode="nearest")[0] / scale
        if flip:
            x = x.flip(-1)
            if key == "normal":
                x = torch.cat([-x[:1], x[1:]], 0)  # mirroring negates the x component
        out[key] = x
    return out


def random_scale_crop_flip(sample: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """MTAN's training augmentation: a scale ``sc`` from {1, 1.2, 1.5}, a random crop of
    ``(int(H/sc), int(W/sc))`` resized back (bilinear, align_corners=True, for image and
    normals; nearest for labels and depth), depth divided by ``sc``; then a horizontal
    flip with p = 0.5 that negates the normals' x component."""
    H, W = sample["image"].shape[-2:]
    scale = AUG_SCALES[int(torch.randint(len(AUG_SCALES), (1,), generator=generator))]
    h, w = int(H / scale), int(W / scale)
    top = int(torch.randint(H - h + 1, (1,), generator=generator))
    left = int(torch.randint(W - w + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    return scale_crop_flip(sample, scale, top, left, flip)


# -- the dataset ------------------------------------------------------------------------------

def _image_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise UserError(f"image_size must be two integers [H, W], got {size!r}") from None
    if h < 1 or w < 1:
        raise UserError(f"image_size must be positive, got {size!r}")
    return h, w


#: the environment variable that caps the memory (MiB) one split's in-memory copy may take (default 2048)
MEMORY_BUDGET_ENV = "MTLBENCH_DATA_MEMORY_MB"


def memory_budget_mib() -> float:
    raw = os.environ.get(MEMORY_BUDGET_ENV, "2048")
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{MEMORY_BUDGET_ENV}={raw!r} is not a number",
                        hint="set it to the MiB one split may keep in memory (0 reads every item from disk)") from None
    if not value >= 0:
        raise UserError(f"{MEMORY_BUDGET_ENV}={raw!r} must be >= 0", hint="0 reads every item from disk")
    return value


class MTANDataset(torch.utils.data.Dataset):
    """One split of an MTAN-format directory, as dicts of channels-first tensors.

    Yields ``{"image": (3, H, W) float32, "semseg": (H, W) int64, "depth": (1, H, W)
    float32, "normal": (3, H, W) float32, "index": int}`` with only the spec's tasks.
    The directory is validated (headers only) when the dataset is built.
    Augmentation draws a per-item seed from torch's default generator (in a
    DataLoader worker: the worker's), so it is deterministic given that seed.
    """

    def __init__(self, root: str | os.PathLike, split: str, spec: MTANSpec, *,
                 image_size=None, augment: bool = False, check: bool = True):
        check_split_name(split)
        self.root, self.split, self.spec = Path(root), split, spec
        self.image_size = _image_size(image_size)
        self.augment = bool(augment)
        if check:
            problems = validate(self.root, spec, splits=(split,))
            if problems:
                raise problems_error(problems, self.root, spec)
        sdir = self.root / split
        self.dirs: dict[str, str] = {}
        for key, names in spec.folders().items():
            found = next((n for n in names if (sdir / n).is_dir()), names[0])
            self.dirs[key] = str(sdir / found)
        self._len = sum(1 for n in os.listdir(self.dirs["image"]) if n.endswith(".npy"))
        self._cache: dict[int, dict] = {}
        self._fits: bool | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.spec.tasks

    def __len__(self) -> int:
        return self._len

    def _load(self, key: str, index: int) -> np.ndarray:
        return np.load(os.path.join(self.dirs[key], f"{index}.npy"), allow_pickle=False)

    def _read(self, index: int) -> dict:
        """Item ``index`` from disk, channels first and resized (before any augmentation)."""
        sample: dict[str, torch.Tensor] = {
            "image": torch.from_numpy(np.asarray(self._load("image", index), np.float32)).permute(2, 0, 1)}
        if "semseg" in self.dirs:
            sample["semseg"] = torch.from_numpy(np.asarray(self._load("semseg", index), np.float32))
        if "depth" in self.dirs:
            sample["depth"] = torch.from_numpy(np.asarray(self._load("depth", index), np.float32)).permute(2, 0, 1)
        if "normal" in self.dirs:
            sample["normal"] = torch.from_numpy(np.asarray(self._load("normal", index), np.float32)).permute(2, 0, 1)
        if self.image_size is not None:
            sample = resize_sample(sample, self.image_size)
        return sample

    @staticmethod
    def _finish(sample: dict) -> dict:
        out = {k: v.contiguous() for k, v in sample.items()}
        if "semseg" in out:
            out["semseg"] = out["semseg"].round().long()
        return out

    def _cacheable(self, item: dict) -> bool:
        """Whether the whole split fits the memory budget (:data:`MEMORY_BUDGET_ENV`, MiB per split)."""
        if self._fits is None:
            per_item = sum(v.element_size() * v.nelement() for v in item.values() if torch.is_tensor(v))
            budget = memory_budget_mib() * 2 ** 20
            self._fits = per_item * self._len <= budget
        return self._fits

    def __getitem__(self, index: int) -> dict:
        """Item ``index``.  Each item is read and resized once and kept in memory in the layout
        the model takes (channels first, contiguous, labels as int64) while the split fits the
        memory budget; only augmentation runs per access.  The values are the same either way."""
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} images")
        base = self._cache.get(index)
        if base is None:
            base = self._read(index)
            if not self.augment:
                base = self._finish(base)
            if self._cacheable(base):
                self._cache[index] = base
        if self.augment:
            out = self._finish(random_scale_crop_flip(dict(base), self.item_generator(index)))
        else:
            out = dict(base)
        out["index"] = index
        return out

    @staticmethod
    def item_generator(index: int) -> torch.Generator:
        """The augmentation generator of one item: its seed mixes a draw from torch's
        default generator (so epochs differ and ``torch.manual_seed`` reproduces them)
        with the index."""
        base = int(torch.randint(0, 2 ** 62, (1,)).item())
        return torch.Generator().manual_seed((base + index * 0x9E3779B97F4A7C15) % 2 ** 63)


# -- plugins -------------------------------------------------------------------------------------

def data_files(root: str | os.PathLike, spec: MTANSpec) -> list[str]:
    """Every ``.npy`` file of the spec's folders in both splits (what a verdict depends on)."""
    files = []
    for split in SPLITS:
        for names in spec.folders().values():
            for name in names:
                folder = os.path.join(os.fspath(root), split, name)
                if os.path.isdir(folder):
                    files += [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".npy")]
    return files


def layout_line(spec: MTANSpec) -> str:
    """One line describing the expected layout, for check summaries."""
    return (f"{spec.name} layout: {{train,val}}/{{{', '.join(d[0] for d in spec.folders().values())}}}"
            f"/{{0..N-1}}.npy")


def check_directory(root: str | os.PathLike, spec: MTANSpec, *, full: bool, progress: ProgressFn | None,
                    remedy: str) -> CheckReport:
    """:func:`validate` as a :class:`~mtlbench.data.base.CheckReport` (the ``check`` hook's answer)."""
    cb = None if progress is None else (lambda split, done, total: progress(done, total, split))
    problems = validate(root, spec, full=full, progress=cb)
    counts = {}
    if not problems:
        counts = {split: sum(1 for f in os.listdir(os.path.join(os.fspath(root), split, "image"))
                             if f.endswith(".npy")) for split in SPLITS}
    return CheckReport(Path(root), problems, layout_line(spec), remedy, counts)


def values_error(problems: list[Problem], root: str | os.PathLike, spec: MTANSpec, limit: int = 20) -> UserError:
    """A :class:`UserError` naming the files whose values would break training."""
    n = len(problems)
    lines = [f"the {spec.name} data at {root} has {n} problem{'s' if n != 1 else ''} that would break "
             f"training (found before the first step):"]
    lines += [f"  {p}" for p in problems[:limit]]
    if n > limit:
        lines.append(f"  ... and {n - limit} more")
    return UserError("\n".join(lines),
                     hint=f"fix the files listed (labels in {{-1, 0..{spec.num_classes - 1}}}, finite values "
                          f"only); `mtlbench data check --dataset {spec.key} --data-root {root}` checks "
                          "the whole directory")


def validate_values(root: str | os.PathLike, spec: MTANSpec, *,
                    log: Callable[[str], None] | None = None) -> None:
    """Full validation of ``root`` before training, once per directory state.

    Raises :func:`values_error` on fatal problems (NaN/inf, labels out of range,
    a broken layout); a clean verdict is remembered (``validated_once``), keyed
    by the files' sizes and modification times, so later runs only stat them.
    Non-fatal problems are reported through ``log``.
    """
    def run() -> list[Problem]:
        if log is not None:
            log(f"checking the data values of {root} once (the verdict is cached until a file changes)")
        return validate(root, spec, full=True)

    problems, _ = validated_once(root, data_files(root, spec),
                                 {"spec": spec.key, "classes": spec.num_classes, "tasks": spec.tasks}, run)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        layout = validate(root, spec)  # headers only: a broken layout gets the layout message
        raise problems_error(layout, root, spec) if layout else values_error(fatal, root, spec)
    if problems and log is not None:
        n = len(problems)
        log(f"note: {n} tolerated problem{'s' if n != 1 else ''} in the data at {root} (first: {problems[0]}); "
            f"`mtlbench data check --dataset {spec.key} --data-root {root}` lists them")


def reject_options(cls: type, options: dict | None, hook: str) -> None:
    """A :class:`UserError` when a hook that takes no options was given some."""
    if options:
        given = ", ".join(f"--set {k}={v}" for k, v in options.items())
        raise UserError(f"dataset {getattr(cls, 'registry_name', cls.__name__)!r}: {hook} takes no options, got {given}",
                        hint="drop them")


class MTANPlugin(DatasetPlugin):
    """Base of the plugins for real MTAN-format datasets; subclasses set ``spec``."""

    spec: MTANSpec

    def tasks(self):
        from ..tasks import Depth, Normal, SemSeg

        make = {"semseg": lambda: SemSeg(self.spec.num_classes), "depth": Depth, "normal": Normal}
        return {t: make[t]() for t in self.spec.tasks}

    def split(self, name: str) -> MTANDataset:
        check_split_name(name)
        root = require_root(self.cfg.root, self.spec)
        return MTANDataset(root, name, self.spec, image_size=self.cfg.image_size,
                           augment=bool(self.cfg.augment) and name == "train")

    @classmethod
    def check(cls, root, *, full: bool = True, progress: ProgressFn | None = None,
              options: dict | None = None) -> CheckReport:
        """Validate an MTAN-format directory (:func:`validate`)."""
        reject_options(cls, options, "check")
        path = require_root(root, cls.spec)
        return check_directory(path, cls.spec, full=full, progress=progress,
                               remedy=f"get the data again from {cls.spec.source}")

    def validate_for_training(self, log: Callable[[str], None] | None = None) -> None:
        """Every value checked once per directory state (:func:`validate_values`)."""
        validate_values(require_root(self.cfg.root, self.spec), self.spec, log=log)


def native_size(h: int, w: int):
    """A ``Config.image_size`` default of the dataset's own resolution."""
    return field(default_factory=lambda: [h, w])


__all__ = ["MTANSpec", "NYUV2", "CITYSCAPES", "Problem", "validate", "problems_error", "require_root",
           "data_files", "layout_line", "check_directory", "values_error", "validate_values", "reject_options",
           "read_npy_header", "resize_sample", "scale_crop_flip", "random_scale_crop_flip",
           "MTANDataset", "MTANPlugin", "native_size", "check_split_name", "AUG_SCALES", "SPLITS"]
