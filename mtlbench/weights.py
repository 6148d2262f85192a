"""Loading pretrained weights into a backbone: read a checkpoint file, load it all or nothing.

Shared by every backbone plugin: a file that is not a checkpoint, or whose
weights do not all fit, is a :class:`~mtlbench.errors.UserError` naming the file
and counting the missing, unexpected and misshapen keys (a few of each), so a
run never trains from mostly random weights while its record names the file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import UserError


def short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_state_dict(path: Path, what: str, hint: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (weights only).

    Unwraps training checkpoints (``{"model": ...}``, ``{"state_dict": ...}``) and
    DataParallel's ``module.`` prefix.  Anything else is a UserError naming ``what``.
    """
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist"
                        + (" (it is a directory)" if path.is_dir() else ""), hint=hint)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, safetensors and weights_only errors come in many types
        raise UserError(f"{what} {str(path)!r} is not a readable checkpoint ({short_error(exc)})",
                        hint=hint) from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise UserError(f"{what} {str(path)!r} holds "
                        + ("an empty mapping" if isinstance(sd, dict) else f"a {type(sd).__name__}")
                        + ", not a state dict of weights", hint=hint)
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{what} {str(path)!r} is not a state dict: {len(bad)} entr"
                        f"{'y is' if len(bad) == 1 else 'ies are'} not named tensors (e.g. {bad[0]!r})",
                        hint=hint)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_weights_strictly(module: nn.Module, sd: dict[str, torch.Tensor], what: str, hint: str,
                          model: str = "the backbone", optional: tuple[str, ...] = ()) -> None:
    """Load ``sd`` into ``module``; every missing, unexpected or misshapen key is a UserError.

    A partial load would train mostly random weights while the record names the
    file, so nothing short of a full match is accepted.  ``model`` names the
    network in messages; keys ending in one of ``optional`` may be absent
    (e.g. BatchNorm's ``num_batches_tracked`` in legacy files).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(optional or ("\0",))]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {model}'s {len(own)} weights missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) != 1 else ''} "
                         f"({_few(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} of other shape (file vs {model}: {_few(shapes, 2)})")
        raise UserError(f"{what} does not fit {model}: " + "; ".join(parts), hint=hint)
    module.load_state_dict(sd, strict=False)  # checked above
