"""The built-in ``synthetic`` dataset: procedural scenes written in the MTAN layout.

The scenes and their pixels come from :mod:`mtlbench.data.synth_render`
(:func:`render`: one image's RGB, labels, depth and normals from one ray-cast
geometry; the variants ``nyuv2`` and ``cityscapes``, the camera conventions).
This module is the dataset around it: each image's random generator from
``(seed, variant, split, index)`` (:func:`image_rng`), so datasets are
reproducible; writing a dataset in the MTAN layout with its manifest
(:func:`generate`); the cache of generated datasets, keyed by every generation
input and the renderer's version (:func:`ensure_generated`); and the dataset
plugin (:class:`Synthetic`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import option
from ..errors import UserError
from ..registry import DATASETS
from .base import CheckReport, DataConfig, DatasetPlugin, ProgressFn, cache_dir, not_a_regular_file
from .mtan import (CITYSCAPES, NYUV2, MTANDataset, MTANSpec, check_directory, check_split_name, reject_options,
                   validate_values)
from .synth_render import (CITYSCAPES_CLASSES, DISPARITY_SCALE, GENERATOR_VERSION, GENERATOR_VERSIONS, NYUV2_CLASSES,
                           VARIANTS, _check_variant, camera_intrinsics, check_version, render)

__all__ = ["CITYSCAPES_CLASSES", "DISPARITY_SCALE", "GENERATOR_VERSION", "GENERATOR_VERSIONS", "MANIFEST", "NYUV2_CLASSES", "VARIANTS",
           "Synthetic", "cache_base", "cache_key", "camera_intrinsics", "ensure_generated", "generate", "image_rng",
           "read_manifest", "render"]

MANIFEST = "synthetic.json"
_SPLIT_CODE = {"train": 0, "val": 1}


def _spec(variant: str) -> MTANSpec:
    return NYUV2 if variant == "nyuv2" else CITYSCAPES


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
             seed: int, progress: Callable[[int, int], None] | None = None,
             version: int = GENERATOR_VERSION) -> dict:
    """Write a synthetic dataset in the MTAN layout to ``out``; returns its manifest.

    ``progress(done, total)`` is called after every image.  The manifest
    (``synthetic.json``, written last) records the parameters, the classes and
    the camera, and marks the dataset complete.
    """
    _check_params(variant, n_train, n_val, height, width)
    check_version(version)
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
            arrays = render(variant, image_rng(seed, variant, split, i), height, width, version)
            for key, d in dirs.items():
                np.save(os.path.join(d, f"{i}.npy"), arrays[key])
            done += 1
            if progress is not None:
                progress(done, total)
    fx, fy, cx, cy = camera_intrinsics(variant, height, width)
    manifest = {
        "generator": "mtlbench.data.synthetic", "version": version, "complete": True,
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
    """The manifest of a complete generated dataset at ``path``, else None.  A manifest that is
    not a regular file (a FIFO would block the open for ever) is a UserError naming it."""
    file = os.path.join(os.fspath(path), MANIFEST)
    kind = not_a_regular_file(file)
    if kind:
        raise UserError(f"{file} is not a regular file ({kind}); the manifest of a generated dataset "
                        "is a JSON file, and it is not opened",
                        hint=f"remove it and generate the data again (`mtlbench data synth`), or pass "
                             f"another directory")
    try:
        with open(file) as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("complete") else None


def cache_key(variant: str, n_train: int, n_val: int, height: int, width: int, seed: int,
              version: int = GENERATOR_VERSION) -> str:
    """Directory name of a generated dataset: readable prefix + hash of every generation input
    (the renderer's version included; version 1's names are what they were before there were two)."""
    params = {"variant": variant, "n_train": n_train, "n_val": n_val, "height": height,
              "width": width, "seed": seed, "version": version}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    tag = "" if version == 1 else f"-v{version}"
    return f"{variant}{tag}-{height}x{width}-{n_train}+{n_val}-seed{seed}-{digest}"


def cache_base(root: str | os.PathLike | None = None) -> Path:
    """Where generated datasets live: ``root``, else ``$MTLBENCH_CACHE/synthetic``, else
    ``~/.cache/mtlbench/synthetic``."""
    if root:
        return Path(root).expanduser()
    return cache_dir() / "synthetic"


def ensure_generated(variant: str, n_train: int, n_val: int, height: int, width: int, seed: int,
                     root: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                     version: int = GENERATOR_VERSION) -> Path:
    """The directory of this dataset, generating it first if no complete copy exists.

    Generation writes into a temporary sibling directory and renames it into
    place after the manifest is written, so an interrupted run never leaves a
    directory that looks complete; a concurrent generator of the same dataset
    simply loses the race and its copy is discarded.
    """
    _check_params(variant, n_train, n_val, height, width)
    check_version(version)
    base = cache_base(root)
    final = base / cache_key(variant, n_train, n_val, height, width, seed, version)
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
            f"seed {seed}, generator {version}) into {final}")
    try:
        generate(variant, tmp, n_train, n_val, height, width, seed, version=version)
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
        "generator": f"renderer version: {' or '.join(map(str, GENERATOR_VERSIONS))} (default {GENERATOR_VERSION}; "
                     "2 adds aerial perspective, a per-pixel cue to distance)",
    }

    @dataclass
    class Config(DataConfig):
        variant: str = "nyuv2"  # "nyuv2" (semseg 13, depth, normal) or "cityscapes" (semseg 7, disparity)
        n_train: int = 256  # training images
        n_val: int = 64  # validation images
        height: int = 96  # generated size (image_size resizes after loading)
        width: int = 128
        seed: int = option(0, ge=0, le=2**32 - 1)  # generation seed (independent of the training seed)
        # The renderer's version (synth_render.GENERATOR_VERSIONS): a new version is new data, so it is in
        # the cache key and the run identity; version 1 (every record before there were two) stays out of
        # the config hash, so those records keep their identity.
        generator: int = option(GENERATOR_VERSION, ge=1, le=max(GENERATOR_VERSIONS), hash_default=False)

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        _check_params(cfg.variant, cfg.n_train, cfg.n_val, cfg.height, cfg.width)
        check_version(cfg.generator)
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
                                         root=c.root, log=_log_stderr, version=c.generator)
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
        generate(cfg.variant, out, cfg.n_train, cfg.n_val, cfg.height, cfg.width, cfg.seed, progress=cb,
                 version=cfg.generator)
        dt = max(time.perf_counter() - t0, 1e-9)
        total = cfg.n_train + cfg.n_val
        return (f"wrote {total} images ({cfg.n_train} train + {cfg.n_val} val, {cfg.variant}, "
                f"{cfg.height}x{cfg.width}) to {out} in {dt:.1f} s: {total / dt:.0f} images/s")
