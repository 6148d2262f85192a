"""Encoder pretraining on a generated corpus: a reproducible, cached step with its own record.

The paper's encoder starts from ImageNet weights, which cannot be downloaded here. The stand-in
is an encoder pretrained once on generated scenes that no benchmark split contains (their own
generation seed), with an objective that is none of the benchmark's tasks (the backbone's own
choice; ViT-tiny: masked-patch reconstruction, SimMIM: Xie et al., CVPR 2022).

A *recipe* (``mtlbench/pretraining/<name>.yaml``) says everything that makes the encoder: the
backbone and its options, the corpus (a synthetic dataset's options), the objective's options,
the schedule, the seed and the CPU thread count. Its *key* hashes all of that with
:data:`PRETRAIN_VERSION`, so a changed option is a new artefact. ``mtlbench pretrain --recipe
NAME`` builds ``<cache>/pretrained/<name>-<key>/`` (``encoder.pth``: the encoder's weights in
the backbone's ``pretrained_file`` format; ``record.json``: the recipe, the loss per epoch, the
time, the versions and the weights' sha256), written into a temporary directory and renamed into
place, and copies the record to ``<out>/pretrained/`` (committed with the runs). A run names a
recipe with ``backbone.pretraining: NAME``; its record carries the artefact's identity
(``encoder_init``).

The backbone plugin supplies the objective (:meth:`BackboneFactory.pretraining_model`); the
core never asks which backbone it is.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

#: bump when the pretraining loop changes what it computes (every cached artefact is then rebuilt)
PRETRAIN_VERSION = 1
RECIPE_DIR = Path(__file__).parent / "pretraining"
ENCODER_FILE = "encoder.pth"
RECORD_FILE = "record.json"

_TOP_KEYS = {"backbone", "corpus", "objective", "train", "seed", "threads"}
_CORPUS_KEYS = {"variant", "generator", "n_images", "height", "width", "seed"}
_TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name: str) -> dict:
    """The recipe ``name``, checked: every key known, every value of the right kind."""
    from .config import load_yaml

    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise UserError(f"pretraining recipe {name!r} is not a recipe name",
                        hint=f"use one of: {', '.join(recipe_names()) or '(none)'}")
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown pretraining recipe {name!r}",
                        hint=f"use one of: {', '.join(recipe_names()) or '(none)'} (files in {RECIPE_DIR})")
    return check_recipe(load_yaml(path, "pretraining recipe"), str(path))


def check_recipe(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise UserError(f"{where}: a pretraining recipe is a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}", hint=f"known: {', '.join(sorted(_TOP_KEYS))}")
    r = copy.deepcopy(data)
    bb = r.get("backbone")
    if not isinstance(bb, dict) or not isinstance(bb.get("name"), str):
        raise UserError(f"{where}: backbone must be a mapping with a name, e.g. {{name: vit_tiny}}")
    corpus = r.get("corpus")
    if not isinstance(corpus, dict) or set(corpus) != _CORPUS_KEYS:
        raise UserError(f"{where}: corpus must give exactly {', '.join(sorted(_CORPUS_KEYS))}")
    for k in ("generator", "n_images", "height", "width", "seed"):
        if isinstance(corpus[k], bool) or not isinstance(corpus[k], int) or corpus[k] < 0:
            raise UserError(f"{where}: corpus.{k} must be a non-negative integer, got {corpus[k]!r}")
    r.setdefault("objective", {})
    if not isinstance(r["objective"], dict):
        raise UserError(f"{where}: objective must be a mapping of the backbone's pretraining options")
    train = {**_TRAIN_DEFAULTS, **(r.get("train") or {})}
    if set(train) != set(_TRAIN_DEFAULTS):
        extra = sorted(set(train) - set(_TRAIN_DEFAULTS))
        raise UserError(f"{where}: unknown train key(s) {', '.join(extra)}",
                        hint=f"known: {', '.join(_TRAIN_DEFAULTS)}")
    for k in ("epochs", "batch_size"):
        if isinstance(train[k], bool) or not isinstance(train[k], int) or train[k] < 1:
            raise UserError(f"{where}: train.{k} must be an integer >= 1, got {train[k]!r}")
    for k in ("lr", "weight_decay"):
        if isinstance(train[k], bool) or not isinstance(train[k], (int, float)) or not 0 <= train[k] < 10:
            raise UserError(f"{where}: train.{k} must be a number in [0, 10), got {train[k]!r}")
    if isinstance(train["warmup_epochs"], bool) or not isinstance(train["warmup_epochs"], int) \
            or not 0 <= train["warmup_epochs"] < train["epochs"]:
        raise UserError(f"{where}: train.warmup_epochs must be an integer from 0 to epochs - 1")
    r["train"] = train
    r.setdefault("seed", 0)
    r.setdefault("threads", 1)
    for k in ("seed", "threads"):
        if isinstance(r[k], bool) or not isinstance(r[k], int) or r[k] < (0 if k == "seed" else 1):
            raise UserError(f"{where}: {k} must be an integer >= {0 if k == 'seed' else 1}, got {r[k]!r}")
    return r


def recipe_key(recipe: dict) -> str:
    """12 hex digits over everything that makes the artefact."""
    blob = json.dumps({"recipe": recipe, "version": PRETRAIN_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def artefact_dir(name: str, recipe: dict | None = None) -> Path:
    from .data.base import cache_dir

    recipe = load_recipe(name) if recipe is None else recipe
    return cache_dir() / "pretrained" / f"{name}-{recipe_key(recipe)}"


def read_artefact(name: str) -> tuple[Path, dict] | None:
    """``(encoder file, record)`` of a complete artefact of recipe ``name``, else None."""
    d = artefact_dir(name)
    try:
        record = json.loads((d / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    enc = d / ENCODER_FILE
    return (enc, record) if enc.is_file() and isinstance(record, dict) else None


def encoder_file(name: str) -> tuple[Path, dict]:
    """The encoder weights of recipe ``name`` and their identity, or a UserError saying how to build them."""
    found = read_artefact(name)
    if found is None:
        raise UserError(f"backbone.pretraining {name!r}: the pretrained encoder has not been built on this "
                        f"machine (looked in {artefact_dir(name)})",
                        hint=f"build it once with `mtlbench pretrain --recipe {name}` (cached afterwards)")
    path, record = found
    return path, {"recipe": name, "key": record["key"], "sha256": record["sha256"],
                  "version": record["version"]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up, then a cosine to 0 (per step)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return lr * 0.5 * (1 + math.cos(math.pi * t))


def build(name: str, *, out: str | os.PathLike | None = "results", force: bool = False,
          log: Callable[[str], None] | None = None, recipe: dict | None = None) -> tuple[Path, dict]:
    """Build recipe ``name``'s artefact (unless a complete one exists and not ``force``);
    returns ``(encoder file, record)``. ``recipe`` overrides the file (tests)."""
    import torch

    from .config import plugin_config_class, build_dataclass
    from .data.synthetic import ensure_generated
    from .data.mtan import MTANDataset, NYUV2, CITYSCAPES
    from .provenance import cpu_capability, processor_model, source_commit
    from .registry import BACKBONES
    from .runs import atomic_write_json
    from . import __version__

    recipe = load_recipe(name) if recipe is None else check_recipe(recipe, f"recipe {name}")
    key = recipe_key(recipe)
    final = artefact_dir(name, recipe)
    say = log or (lambda msg: None)
    if not force and (final / RECORD_FILE).is_file() and (final / ENCODER_FILE).is_file():
        record = json.loads((final / RECORD_FILE).read_text())
        say(f"pretrained encoder {name} ({key}) already built: {final}")
        _copy_record(record, out, name)
        return final / ENCODER_FILE, record
    bb = recipe["backbone"]
    cls = BACKBONES.get(bb["name"])
    bcfg = build_dataclass(plugin_config_class("backbone", bb["name"]), {k: v for k, v in bb.items() if k != "name"},
                           "backbone", {})
    c = recipe["corpus"]
    data_dir = ensure_generated(c["variant"], c["n_images"], 1, c["height"], c["width"], c["seed"],
                                log=say, version=c["generator"])
    images = MTANDataset(data_dir, "train", NYUV2 if c["variant"] == "nyuv2" else CITYSCAPES)
    x_all = torch.stack([images[i]["image"] for i in range(len(images))])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        torch.manual_seed(recipe["seed"])
        factory = cls(bcfg, {})
        model = factory.pretraining_model(dict(recipe["objective"]))
        tr = recipe["train"]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
        other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": tr["weight_decay"]},
                                 {"params": other, "weight_decay": 0.0}], lr=tr["lr"])
        n, bs = x_all.shape[0], tr["batch_size"]
        per_epoch = math.ceil(n / bs)
        total, warmup = per_epoch * tr["epochs"], per_epoch * tr["warmup_epochs"]
        g = torch.Generator().manual_seed(recipe["seed"] * 7919 + 17)
        step, losses, t0 = 0, [], time.perf_counter()
        commit = source_commit()  # the code that builds it: now, not when the build ends
        model.train()
        for epoch in range(tr["epochs"]):
            order = torch.randperm(n, generator=g)
            total_loss = 0.0
            for b in range(per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, total, warmup, tr["lr"])
                loss = model(x_all[idx], g)
                if not torch.isfinite(loss):
                    raise UserError(f"pretraining {name} diverged at epoch {epoch + 1}, step {b + 1} "
                                    f"(loss {float(loss)}); nothing was written",
                                    hint="lower train.lr in the recipe (a new recipe name)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += float(loss.detach())
                step += 1
            losses.append(round(total_loss / per_epoch, 6))
            say(f"pretrain {name}: epoch {epoch + 1}/{tr['epochs']} loss {losses[-1]:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
        seconds = time.perf_counter() - t0
        state = model.encoder_state_dict()
    finally:
        torch.set_num_threads(threads_before)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        torch.save(state, tmp / ENCODER_FILE)
        record = {"schema": 1, "recipe": name, "key": key, "version": PRETRAIN_VERSION,
                  "spec": recipe, "sha256": _sha256(tmp / ENCODER_FILE),
                  "loss_per_epoch": losses, "seconds": round(seconds, 1),
                  "images_per_s": round(n * tr["epochs"] / max(seconds, 1e-9), 2),
                  "corpus_dir": data_dir.name,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "versions": {"mtlbench": __version__, "torch": torch.__version__},
                  "git_commit": commit,
                  "device": {"processor": processor_model(), "cpu_capability": cpu_capability(),
                             "threads": recipe["threads"]}}
        atomic_write_json(tmp / RECORD_FILE, record)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"pretrained encoder {name} ({key}) written to {final} in {seconds:.0f} s")
    _copy_record(record, out, name)
    return final / ENCODER_FILE, record


def _copy_record(record: dict, out, name: str) -> None:
    if out is None:
        return
    from .runs import atomic_write_json

    path = Path(out) / "pretrained" / f"{name}-{record['key']}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    except OSError as exc:
        raise UserError(f"cannot write the pretraining record {path}: {exc}",
                        hint="pass --out DIR with a writable directory") from exc


def _log_stderr(msg: str) -> None:
    print(f"mtlbench: {msg}", file=sys.stderr, flush=True)
