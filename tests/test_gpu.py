"""CUDA checks (marker ``gpu``, deselected by default; ``benchmarks/gpu_check.sh`` runs them).

On a CUDA machine: one bf16 (+ channels_last where the backbone chooses it) training step per
backbone, shrunk, on the GPU, against the same step in fp32 on the CPU; a compiled step; a
short run end to end on ``--device cuda`` writing a record that names the GPU.
"""
from __future__ import annotations

import json

import pytest
import torch

from mtlbench.cli import main

from conftest import shrink_argv, shrink_sets

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BACKBONES = ["vit_tiny", "deeplabv3", "deeplabv3_mtan"]


def _first_loss(backbone: str, device: str, amp: str, compile_: bool = False) -> float:
    from mtlbench.config import resolve
    from mtlbench.trainer import autocast_ctx, build, to_device

    cfg = resolve(preset="smoke", flags=[("backbone.name", backbone, "--backbone"),
                                         ("train.device", device, "--device")],
                  sets=[*shrink_sets(backbone), f"train.amp={amp}", f"train.compile={str(compile_).lower()}"])
    s = build(cfg)
    batch = next(iter(torch.utils.data.DataLoader(s.train_set, batch_size=4)))
    batch = to_device(batch, s.device, s.channels_last)
    s.method.eval()  # no dropout, BatchNorm on its running statistics: the same function on both devices
    with torch.no_grad(), autocast_ctx(s.device, s.amp):
        out = s.method.training_step(batch)
    return float(sum(v.float() for v in out.losses.values()))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_bf16_step_on_the_gpu_matches_fp32_on_the_cpu(backbone):
    cpu = _first_loss(backbone, "cpu", "fp32")
    gpu = _first_loss(backbone, "cuda", "bf16")
    # the same initialisation and batch; bf16 rounds to about 3 significant digits
    assert gpu == pytest.approx(cpu, rel=0.05)


def test_a_compiled_step_runs_and_agrees():
    eager = _first_loss("vit_tiny", "cuda", "fp32")
    compiled = _first_loss("vit_tiny", "cuda", "fp32", compile_=True)
    assert compiled == pytest.approx(eager, rel=1e-3)


def test_a_run_on_cuda_writes_a_record_naming_the_gpu(tmp_path):
    assert main(["run", "--method", "baseline", "--preset", "smoke", "--device", "cuda", "--quiet",
                 *shrink_argv("vit_tiny"), "--out", str(tmp_path)]) == 0
    rec = json.loads(next((tmp_path / "runs").rglob("seed0-*.json")).read_text())
    assert rec["device"]["type"] == "cuda" and rec["device"]["name"] == torch.cuda.get_device_name(0)
    assert rec["device"]["amp"] == "bf16"
