"""Experiment trackers: mirror a run's scalars to TensorBoard and Weights & Biases.

``train.loggers`` (a runtime option: it changes nothing a run computes, so it is not in the
run identity) lists the trackers, e.g. ``--set train.loggers=[tensorboard,wandb]``. Each gets:
the resolved config as hyper-parameters at the start, every step-log row (``loss/<task>``,
the method's logs: weights, cosines, norms) at its step, every epoch's mean training losses,
learning rate and validation metrics (``train/``, ``val/<model>/<task>/<metric>``) at the
epoch's last step, and the record's final metrics at the end. The record and the JSON Lines
logs are written as without trackers: a tracker mirrors, it never replaces.

Files go to ``<out>/trackers/<dataset>/<backbone>/<method>/seed<S>-<hash>/``: TensorBoard
event files under ``tensorboard/``; W&B's run directory under ``wandb/`` (offline with
``WANDB_MODE=offline``, which tests use; online it needs ``wandb login``). A resumed run
appends to the same TensorBoard directory (``purge_step`` drops what the interrupted process
wrote after its last checkpoint) and resumes the same W&B run id (kept in the checkpoint); a run
trained again (``--force``) is a new W&B run (its id: ``<method>-seed<S>-<hash>-<random>``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError

TRACKERS = ("tensorboard", "wandb")


def _flat(prefix: str, tree: Any, out: dict[str, float]) -> dict[str, float]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        out[prefix] = float(tree)
    return out


def epoch_scalars(entry: dict) -> dict[str, float]:
    """An epoch row's scalars: ``train/loss/<task>``, ``train/lr``, ``val/<model>/<task>/<metric>``
    (the deployable model's key is empty: ``val/<task>/<metric>``)."""
    out: dict[str, float] = {}
    _flat("train/loss", entry.get("train_loss") or {}, out)
    if isinstance(entry.get("lr"), (int, float)):
        out["train/lr"] = float(entry["lr"])
    for model, metrics in (entry.get("metrics") or {}).items():
        _flat("val" + (f"/{model}" if model else ""), metrics, out)
    for key in ("time_s", "data_s", "eval_s", "images_per_s"):
        if isinstance(entry.get(key), (int, float)):
            out[f"time/{key}"] = float(entry[key])
    return out


class _TensorBoard:
    def __init__(self, root: Path, config: dict, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError("train.loggers names tensorboard, which is not installed",
                            hint="pip install tensorboard (or drop tensorboard from train.loggers)") from exc
        # purge_step: TensorBoard drops what earlier files of this directory hold from that step on,
        # so a resumed run's steps after its checkpoint, or a whole run trained again (--force,
        # step 0), are not shown twice
        self.w = SummaryWriter(log_dir=str(root / "tensorboard"), purge_step=start_step)
        if not start_step:
            import yaml

            self.w.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def final(self, metrics: dict[str, float], config: dict) -> None:
        hp: dict[str, Any] = {**_flat("", config, {}), **_hparam_strings(config)}
        self.w.add_hparams(hp, {f"final/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.w.close()


def _hparam_strings(config: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_hparam_strings(v, key))
        elif isinstance(v, (str, bool)) or v is None:
            out[key] = str(v)
    return out


class _Wandb:
    def __init__(self, root: Path, config: dict, run_id: str, name: str, resume: bool):
        try:
            import wandb
        except ImportError as exc:
            raise UserError("train.loggers names wandb, which is not installed",
                            hint="pip install wandb (or drop wandb from train.loggers)") from exc
        (root / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mtlbench"), id=run_id, name=name,
                              dir=str(root / "wandb"), config=config, resume="allow" if resume else None,
                              reinit="finish_previous")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def final(self, metrics: dict[str, float], config: dict) -> None:
        for k, v in metrics.items():
            self.run.summary[f"final/{k}"] = v

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers (none: every call is a no-op)."""

    def __init__(self, names: Iterable[str], root: Path, config: dict, run_id: str, name: str,
                 start_step: int = 0, resume: bool = False):
        self.items: list[Any] = []
        self.config = config
        names = list(names or [])
        if not names:
            return
        root.mkdir(parents=True, exist_ok=True)
        for n in names:  # names are TRACKERS' (train.loggers declares them as its choices)
            if n == "tensorboard":
                self.items.append(_TensorBoard(root, config, start_step))
            elif n == "wandb":
                self.items.append(_Wandb(root, config, run_id, name, resume))

    def step(self, step: int, row: dict) -> None:
        if self.items:
            values = {k: float(v) for k, v in row.items() if k not in ("step", "epoch")
                      and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            for t in self.items:
                t.scalars(step, values)

    def epoch(self, step: int, entry: dict) -> None:
        if self.items:
            values = epoch_scalars(entry)
            for t in self.items:
                t.scalars(step, values)

    def final(self, metrics: dict) -> None:
        flat = _flat("", metrics, {})
        for t in self.items:
            t.final(flat, self.config)

    def close(self) -> None:
        for t in self.items:
            t.close()
        self.items = []
