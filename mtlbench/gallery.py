"""Prediction galleries: what runs predict on a few fixed validation images, kept small, drawn as PNGs.

``mtlbench report`` shows, per table, the first validation images of the dataset
(:data:`GALLERY_INDICES`, the same for every run of a dataset): the input, the ground
truth, the input-blind reference's prediction (:func:`mtlbench.reference.fit_references`)
and each run's prediction per task, with a per-pixel error image under each.

Where predictions come from (:func:`run_predictions`):

1. the run's cached predictions, ``<results>/predictions/<run id>.npz`` (``<run id>`` is the
   record's ``id``: ``<dataset>/<backbone>/<method>/seed<S>-<hash>``), when they hold the
   asked images and the record's config hash;
2. else the run's final checkpoint (``checkpoints/<run id>/final.pt`` under the record's
   results directory, or under a further directory given with ``mtlbench report
   --checkpoints DIR``): the method is rebuilt from the record's config
   (:func:`mtlbench.models.assemble`), its weights loaded, its deployable model run on
   the images (fp32, CPU), and the predictions cached as in 1 so a later report needs no
   checkpoint;
3. else none: the report lists the run as "predictions not available".

The cache keeps exactly what is drawn, compressed (``numpy.savez_compressed``): per
task and image, class labels as ``uint8`` (``int16`` above 255 classes), a scalar map
(depth) as ``float16``, a vector map (normals) as ``uint8`` RGB ``round((n + 1) / 2 *
255)``.  Four 96x128 images of the three NYUv2-like tasks take about 60 KB (the maps of
an untrained or input-blind run, nearly constant, compress to a few KB).

How a task is drawn follows from the task, never from its name (:func:`view_of`):

* ``labels`` (``kind == "classification"``): a fixed palette per dataset (the dataset
  plugin's ``palette``, a list of RGB triples, if it has one; else :data:`PALETTE`), class
  ``c`` in colour ``c``; the error image marks wrong pixels red, right ones white;
* ``scalar`` (one channel, e.g. depth): :data:`SCALAR_CMAP` over one colour scale per
  image, the valid range ``[min, max]`` of that image's ground truth, shared by the
  ground truth, the reference and every run (values outside it are clipped); the error
  image is ``|prediction - truth|`` over ``[0, max - min]`` in :data:`ERROR_CMAP`;
* ``vector`` (three channels, e.g. normals): RGB ``(n + 1) / 2``; the error image is the
  angle to the truth over ``[0°, 90°]`` in :data:`ERROR_CMAP`.

Pixels without a valid truth (label -1, depth 0, normal (0, 0, 0)) are :data:`INVALID`
grey in the ground truth and every error image.  Palette images are written as 8-bit
indexed PNGs (a 96x128 map is 1-3 KB), the input and normals as RGB PNGs.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import UserError

#: the validation images of every gallery (those a split has)
GALLERY_INDICES = (0, 1, 2, 3)
#: bump when what the cache holds changes (older files are then recomputed, never misread)
CACHE_VERSION = 1
#: the colour of pixels without a valid ground truth
INVALID = (128, 128, 128)
#: colour maps (matplotlib names) of scalar maps and of error images
SCALAR_CMAP = "viridis"
ERROR_CMAP = "inferno"
#: palette levels of a scalar or error map: indices 0..LEVELS-1; index 255 is INVALID
LEVELS = 254
INVALID_INDEX = 255
#: the angle (degrees) at which a vector error image saturates
MAX_ANGLE = 90.0
#: label error images: right, wrong
RIGHT, WRONG = (245, 245, 245), (215, 38, 45)
#: the default class palette (class c: PALETTE[c % len]); none of them is INVALID grey
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210),
           (219, 219, 141), (158, 218, 229), (57, 59, 121), (99, 121, 57)]


def view_of(task) -> str | None:
    """How a task's maps are drawn: ``labels``, ``scalar`` or ``vector`` (None: not drawn)."""
    if getattr(task, "kind", "") == "classification":
        return "labels"
    channels = int(getattr(task, "channels", 0))
    return {1: "scalar", 3: "vector"}.get(channels)


# ---------------------------------------------------------------------------
# predictions: compute, cache, load
# ---------------------------------------------------------------------------

@dataclass
class Predictions:
    """A run's predictions on validation images ``indices``: ``maps[task]`` stacked over them
    (labels ``(N, H, W)`` integers, scalar ``(N, H, W)`` float16, vector ``(N, H, W, 3)`` uint8
    encoded as ``(n + 1) / 2 * 255``); ``source``: where they came from (for the page)."""

    indices: list[int]
    maps: dict[str, np.ndarray]
    source: str = ""

    def get(self, task: str, index: int) -> np.ndarray | None:
        if task not in self.maps or index not in self.indices:
            return None
        return self.maps[task][self.indices.index(index)]


def encode(task, pred) -> np.ndarray:
    """A task's prediction (``task.predict`` of the raw output, ``(N, ...)`` tensor or array) in
    the cached form of its view."""
    a = pred.detach().cpu().float().numpy() if hasattr(pred, "detach") else np.asarray(pred)
    view = view_of(task)
    if view == "labels":
        dtype = np.uint8 if int(task.channels) <= 256 else np.int16
        return a.astype(dtype)
    if view == "scalar":
        return a.reshape(a.shape[0], *a.shape[-2:]).astype(np.float16)
    if view == "vector":
        v = np.moveaxis(a, 1, -1)  # (N, H, W, 3)
        return np.clip(np.rint((v + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"task {getattr(task, 'name', task)!r} has no gallery view")


def decode_vector(encoded: np.ndarray) -> np.ndarray:
    """Unit vectors ``(..., 3)`` float32 from the cached ``uint8`` encoding."""
    v = encoded.astype(np.float32) / 255.0 * 2.0 - 1.0
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-6)


def run_slug(record: dict) -> str:
    """The record's id as one path: ``<dataset>/<backbone>/<method>/seed<S>-<hash>``."""
    rid = record.get("id")
    if not rid:
        cfg = record.get("config") or {}
        rid = (f"{record.get('dataset')}/{record.get('backbone')}/{record.get('method')}/"
               f"seed{record.get('seed')}-{record.get('config_hash') or _config_hash(cfg)}")
    return str(rid).strip("/")


def _config_hash(cfg: dict) -> str:
    from .config import config_hash

    try:
        return config_hash(cfg)
    except Exception:  # noqa: BLE001 - a record this install cannot read: hash the raw dict
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cache_path(out: str | Path, record: dict) -> Path:
    """Where a run's predictions are cached: ``<out>/predictions/<run id>.npz``."""
    return Path(out) / "predictions" / f"{run_slug(record)}.npz"


def save_predictions(path: str | Path, preds: Predictions, record: dict) -> Path:
    """Write ``preds`` of ``record``'s run to ``path`` (compressed, atomically)."""
    from .records import atomic_write_bytes

    meta = {"version": CACHE_VERSION, "run": run_slug(record), "config_hash": _config_hash(record.get("config") or {}),
            "indices": [int(i) for i in preds.indices], "tasks": list(preds.maps), "source": preds.source}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **{f"task_{t}": m for t, m in preds.maps.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_predictions(path: str | Path, record: dict, indices: Sequence[int]) -> Predictions | None:
    """The cached predictions at ``path`` if they are ``record``'s (same config hash, this cache
    version) and hold every image of ``indices``; else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            maps = {k[len("task_"):]: z[k] for k in z.files if k.startswith("task_")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("config_hash") != _config_hash(record.get("config") or {}):
        return None
    have = [int(i) for i in meta.get("indices", [])]
    if not set(indices) <= set(have):
        return None
    keep = [have.index(i) for i in indices]
    return Predictions(list(indices), {t: m[keep] for t, m in maps.items()}, f"cached in {path}")


def find_checkpoint(record: dict, search: Iterable[str | Path] = ()) -> Path | None:
    """The run's final checkpoint: the record's own (under its results directory), else
    ``<dir>/checkpoints/<run id>/final.pt`` (or ``<dir>/<run id>/final.pt``) of a ``search``
    directory; None when there is none."""
    from .records import checkpoint_of

    own = checkpoint_of(record) if "_path" in record or record.get("checkpoint") else None
    if own is not None and own.is_file():
        return own
    rel = Path(run_slug(record)) / "final.pt"
    for d in search:
        for p in (Path(d) / "checkpoints" / rel, Path(d) / rel):
            if p.is_file():
                return p
    return None


def validation_items(dataset, indices: Sequence[int]) -> tuple[list[int], list[dict]]:
    """The val split's samples at ``indices`` (those it has): ``(indices kept, samples)``."""
    val = dataset.split("val")
    keep = [int(i) for i in indices if 0 <= int(i) < len(val)]
    return keep, [val[i] for i in keep]


def predict_from_checkpoint(record: dict, checkpoint: str | Path, indices: Sequence[int]) -> Predictions:
    """Rebuild the run's method from its record, load ``checkpoint`` and predict the val images."""
    import torch

    from .config import config_hash, from_dict
    from .models import assemble

    where = f"the checkpoint {checkpoint} of run {run_slug(record)}"
    try:
        cfg = from_dict(record["config"])
        dataset, tasks, _, method = assemble(cfg)
    except (UserError, KeyError, TypeError, ValueError) as exc:
        msg = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"run {run_slug(record)}: its config cannot be rebuilt here ({msg})") from None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"{where} cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("config"), dict) \
            and config_hash(state["config"]) != config_hash(record["config"]):
        raise UserError(f"{where} belongs to another config (hash {config_hash(state['config'])}, the "
                        f"record's {config_hash(record['config'])})",
                        hint="it was overwritten by another run; run this one again with --force")
    try:
        method.load_state_dict(state["model"])
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{where} does not fit the method ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    keep, items = validation_items(dataset, indices)
    if not items:
        raise UserError(f"run {run_slug(record)}: the val split has none of the images {list(indices)}")
    model = method.deployable()
    model.eval()
    with torch.no_grad():
        out = model(torch.stack([it["image"] for it in items]).float())
    maps = {}
    for name, task in tasks.items():
        if name in out and view_of(task) is not None:
            maps[name] = encode(task, task.predict(out[name].float()))
    return Predictions(keep, maps, f"final checkpoint {checkpoint}")


def run_predictions(record: dict, out: str | Path, indices: Sequence[int], search: Iterable[str | Path] = (),
                    log: Callable[[str], None] | None = None) -> tuple[Predictions | None, str]:
    """The run's predictions on ``indices`` (cached, else from its final checkpoint and then
    cached) and ``""``; or ``(None, why they are not available)``."""
    path = cache_path(out, record)
    cached = load_predictions(path, record, indices)
    if cached is not None:
        return cached, ""
    ckpt = find_checkpoint(record, search)
    if ckpt is None:
        return None, "no final checkpoint and no cached predictions"
    try:
        preds = predict_from_checkpoint(record, ckpt, indices)
    except UserError as exc:
        return None, exc.message
    try:
        save_predictions(path, preds, record)
        if log is not None:
            log(f"predicted {len(preds.indices)} val images of {run_slug(record)} from {ckpt}; cached in {path}")
    except OSError as exc:
        if log is not None:
            log(f"could not cache the predictions of {run_slug(record)} in {path} ({exc}); they are used "
                "for this report only")
    return preds, ""


def reference_maps(tasks: Mapping[str, Any], train_set, variants: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The input-blind reference's maps (one per task, the variant ``variants[task]``, e.g. the
    table's), fitted on ``train_set`` (:func:`mtlbench.reference.fit_references`), in the cached
    form of one image (no batch axis)."""
    from .reference import fit_references

    fitted = fit_references(dict(tasks), train_set)
    out = {}
    for name, by_variant in fitted.items():
        task = tasks[name]
        variant = variants.get(name) or next(iter(by_variant))
        if view_of(task) is None or variant not in by_variant:
            continue
        out[name] = encode(task, by_variant[variant].unsqueeze(0))[0]
    return out


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------

def cmap_palette(name: str, levels: int = LEVELS) -> list[tuple[int, int, int]]:
    """``levels`` RGB colours of matplotlib's colour map ``name``, evenly over [0, 1]."""
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0.0, 1.0, levels))
    return [tuple(int(round(c * 255)) for c in row[:3]) for row in rgba]


def level(values: np.ndarray, lo: float, hi: float, levels: int = LEVELS) -> np.ndarray:
    """Palette indices of ``values`` on the scale ``[lo, hi]`` (clipped): ``round((v - lo) /
    (hi - lo) * (levels - 1))``."""
    span = hi - lo if hi > lo else 1.0
    x = (np.asarray(values, dtype=np.float64) - lo) / span
    return np.clip(np.rint(x * (levels - 1)), 0, levels - 1).astype(np.uint8)


def _png_indexed(indices: np.ndarray, colours: Sequence[tuple[int, int, int]]) -> bytes:
    from PIL import Image

    pal = [INVALID] * 256
    for i, c in enumerate(colours[:256]):
        pal[i] = tuple(c)
    pal[INVALID_INDEX] = INVALID
    img = Image.fromarray(np.ascontiguousarray(indices, dtype=np.uint8), mode="P")
    img.putpalette([v for c in pal for v in c])
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _png_rgb(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def label_palette(dataset, classes: int) -> list[tuple[int, int, int]]:
    """The dataset's class colours: its plugin's ``palette`` when it has one, else :data:`PALETTE`
    (class ``c`` gets ``PALETTE[c % 20]``); at most 255 classes are drawn apart."""
    own = getattr(dataset, "palette", None)
    base = [tuple(int(v) for v in c[:3]) for c in own] if own else PALETTE
    return [base[c % len(base)] for c in range(min(int(classes), 255))]


@dataclass
class ImageTruth:
    """One validation image: its input, per task its ground truth and validity, and the scale of
    each scalar task (``scales[task] = (lo, hi)``)."""

    index: int
    image: np.ndarray  # (H, W, 3) uint8
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    scales: dict[str, tuple[float, float]] = field(default_factory=dict)


def truth_of(sample: Mapping[str, Any], tasks: Mapping[str, Any], index: int) -> ImageTruth:
    """The ground truth of one val sample in drawing form (labels, scalar float32, vectors float32
    ``(H, W, 3)``), its valid pixels and each scalar task's scale (the valid range)."""
    img = sample["image"].detach().cpu().float().numpy()
    image = np.clip(np.rint(np.moveaxis(img, 0, -1) * 255.0), 0, 255).astype(np.uint8)
    it = ImageTruth(index, image)
    for name, task in tasks.items():
        view = view_of(task)
        if view is None or name not in sample:
            continue
        t = sample[name].detach().cpu().numpy()
        if view == "labels":
            it.truth[name] = t.astype(np.int64)
            it.valid[name] = (t >= 0) & (t < int(task.channels))
        elif view == "scalar":
            t = t.reshape(t.shape[-2:]).astype(np.float32)
            it.truth[name], it.valid[name] = t, t != 0
            v = t[t != 0]
            lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
            it.scales[name] = (lo, hi if hi > lo else lo + 1.0)
        else:
            t = np.moveaxis(t, 0, -1).astype(np.float32)
            it.truth[name], it.valid[name] = t, t.sum(-1) != 0  # MTAN's validity rule
    return it


class GalleryWriter:
    """Draws a dataset's gallery images under ``root`` (a folder of the site), returning paths
    relative to ``base`` (the site root, where the pages are).

    ``truths``: the :class:`ImageTruth` of the gallery's images; ``tasks``: the dataset's tasks;
    ``palette``: its class colours (:func:`label_palette`)."""

    def __init__(self, root: Path, base: Path, tasks: Mapping[str, Any], truths: Sequence[ImageTruth],
                 palette: Sequence[tuple[int, int, int]]):
        self.root, self.base = Path(root), Path(base)
        self.tasks = {n: t for n, t in tasks.items() if view_of(t) is not None}
        self.truths = list(truths)
        self.palette = list(palette)
        self.scalar = cmap_palette(SCALAR_CMAP)
        self.error = cmap_palette(ERROR_CMAP)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.base).as_posix()

    # -- one map ---------------------------------------------------------------
    def map_png(self, task: str, value: np.ndarray, truth: ImageTruth, mask_invalid: bool = False) -> bytes:
        """A prediction (or, with ``mask_invalid``, the ground truth) of ``task`` on image ``truth``."""
        view = view_of(self.tasks[task])
        valid = truth.valid.get(task) if mask_invalid else None
        if view == "labels":
            idx = np.asarray(value).astype(np.int64)
            out = np.where((idx >= 0) & (idx < len(self.palette)), idx, INVALID_INDEX)
            if valid is not None:
                out = np.where(valid, out, INVALID_INDEX)
            return _png_indexed(out, self.palette)
        if view == "scalar":
            lo, hi = truth.scales[task]
            out = level(np.asarray(value, dtype=np.float32), lo, hi)
            if valid is not None:
                out = np.where(valid, out, INVALID_INDEX)
            return _png_indexed(out, self.scalar)
        v = np.asarray(value)
        rgb = v if v.dtype == np.uint8 else np.clip(np.rint((v + 1.0) / 2.0 * 255.0), 0, 255).astype(np.uint8)
        if valid is not None:
            rgb = np.where(valid[..., None], rgb, np.array(INVALID, np.uint8))
        return _png_rgb(rgb)

    def error_png(self, task: str, pred: np.ndarray, truth: ImageTruth) -> bytes:
        """The per-pixel error of a prediction against the truth (INVALID where no valid truth)."""
        view = view_of(self.tasks[task])
        t, valid = truth.truth[task], truth.valid[task]
        if view == "labels":
            wrong = np.asarray(pred).astype(np.int64) != t
            return _png_indexed(np.where(valid, wrong.astype(np.uint8), INVALID_INDEX), [RIGHT, WRONG])
        if view == "scalar":
            lo, hi = truth.scales[task]
            err = np.abs(np.asarray(pred, dtype=np.float32) - t)
            return _png_indexed(np.where(valid, level(err, 0.0, hi - lo), INVALID_INDEX), self.error)
        p = decode_vector(np.asarray(pred)) if np.asarray(pred).dtype == np.uint8 else np.asarray(pred)
        tn = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-6)
        ang = np.degrees(np.arccos(np.clip((p * tn).sum(-1), -1.0, 1.0)))
        return _png_indexed(np.where(valid, level(ang, 0.0, MAX_ANGLE), INVALID_INDEX), self.error)

    # -- whole sets ------------------------------------------------------------
    def truth_images(self) -> dict[int, dict[str, str]]:
        """``{index: {"input": path, task: path}}``: the inputs and ground truths."""
        out = {}
        for tr in self.truths:
            paths = {}
            p = self.root / f"input-{tr.index}.png"
            _write(p, _png_rgb(tr.image))
            paths["input"] = self._rel(p)
            for task in self.tasks:
                if task in tr.truth:
                    p = self.root / f"truth-{task}-{tr.index}.png"
                    _write(p, self.map_png(task, tr.truth[task], tr, mask_invalid=True))
                    paths[task] = self._rel(p)
            out[tr.index] = paths
        return out

    def prediction_images(self, name: str, value_of: Callable[[str, int], np.ndarray | None]) -> dict[int, dict[str, tuple[str, str]]]:
        """``{index: {task: (prediction path, error path)}}`` of one predictor under ``root/name``;
        ``value_of(task, index)``: its map (None: not predicted)."""
        out: dict[int, dict[str, tuple[str, str]]] = {}
        for tr in self.truths:
            for task in self.tasks:
                v = value_of(task, tr.index)
                if v is None or task not in tr.truth:
                    continue
                if tuple(np.asarray(v).shape[:2]) != tuple(tr.truth[task].shape[:2]):
                    continue  # another image size: nothing to compare pixel by pixel
                pp = self.root / name / f"{task}-{tr.index}.png"
                pe = self.root / name / f"{task}-error-{tr.index}.png"
                _write(pp, self.map_png(task, v, tr))
                _write(pe, self.error_png(task, v, tr))
                out.setdefault(tr.index, {})[task] = (self._rel(pp), self._rel(pe))
        return out


def colorbar_png(name: str, width: int = 128, height: int = 10) -> bytes:
    """A horizontal bar of colour map ``name`` (low on the left), for the page's legend."""
    pal = cmap_palette(name)
    row = level(np.linspace(0.0, 1.0, width), 0.0, 1.0)
    return _png_indexed(np.repeat(row[None, :], height, axis=0), pal)


def dataset_key(cfg_data: Mapping[str, Any]) -> str:
    """A folder name for a dataset's gallery: its name, variant and a digest of its options."""
    ds = dict(cfg_data.get("dataset") or {})
    for k in ("root", "num_workers"):
        ds.pop(k, None)
    digest = hashlib.sha256(json.dumps(ds, sort_keys=True, default=str).encode()).hexdigest()[:8]
    parts = [str(ds.get("name", "data"))] + ([str(ds["variant"])] if ds.get("variant") else [])
    return "-".join(p.replace("/", "_") for p in parts) + f"-{digest}"


def safe_name(text: str) -> str:
    """``text`` as one folder name (letters, digits, ``-``, ``_``, ``.``)."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return out.strip("-") or "x"
