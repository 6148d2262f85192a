"""Throughput options: bf16 against fp32 predictions, ``train.compile``, and the throughput benchmark's smoke mode."""
from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import shrink_sets  # noqa: E402
from mtlbench.config import resolve
from mtlbench.trainer import autocast_ctx, build, evaluate, train, TrainOptions

ROOT = Path(__file__).resolve().parents[1]


def _smoke(backbone: str = "vit_tiny", *sets: str, full: bool = False):
    """The smoke preset's baseline on CPU, the backbone shrunk (its ``test_overrides``) unless ``full``."""
    shrink = [] if full else shrink_sets(backbone)
    return resolve(preset="smoke", flags=[("method.name", "baseline", "--method"),
                                          ("backbone.name", backbone, "--backbone"),
                                          ("train.device", "cpu", "--device")], sets=[*shrink, *sets])


def _fixed_batch(s, n: int = 4) -> dict:
    return next(iter(DataLoader(s.val_set, batch_size=n, shuffle=False)))


def _fp32_and_bf16(s, net, batch) -> tuple[dict, dict]:
    with torch.no_grad():
        ref = net(batch["image"])
        with autocast_ctx(s.device, "bf16"):
            low = net(batch["image"])
    assert set(ref) == set(low) == {"semseg", "depth", "normal"}
    return ref, low


def _relative_errors(ref: dict, low: dict) -> dict[str, float]:
    """Relative L2 error of each task's bf16 output against the fp32 one."""
    rel = {}
    for task in ref:
        a, b = ref[task], low[task].float()
        assert a.dtype == torch.float32 and a.shape == b.shape
        rel[task] = float((a - b).norm() / a.norm())
    return rel


# Only what does not depend on which bf16 kernels the processor has (AMX, AVX512-BF16 or none:
# every one rounds the operands to bf16 and accumulates in fp32): the size of the raw outputs'
# error, not the argmax of an untrained network, whose near-equal logits any rounding can swap
# (its mIoU differed by 0.07 points between the precisions on one CPU, not on another).
@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["shrunk", "full"])
def test_bf16_and_fp32_raw_outputs_agree_within_tolerance(full, one_thread):
    torch.manual_seed(0)
    s = build(_smoke("vit_tiny", "train.amp=fp32", full=full))
    net = s.method.deployable().eval()
    ref, low = _fp32_and_bf16(s, net, _fixed_batch(s))
    for task, rel in _relative_errors(ref, low).items():
        # measured: at most 0.02 (shrunk) and 0.035 (full ViT-tiny); a broken bf16 path gives ~1
        assert rel < 0.06, f"{task}: bf16 differs from fp32 by {rel:.3f} (relative L2)"


def test_bf16_keeps_a_trained_networks_predictions_and_metrics(one_thread):
    """On a network fitted to the batch (decisive logits), bf16 keeps the labels and the
    metrics a table would show."""
    torch.manual_seed(0)
    s = build(_smoke("vit_tiny", "train.amp=fp32", "backbone.head_dropout=0.0"))
    batch = _fixed_batch(s)
    opt = torch.optim.AdamW(s.method.parameters(), lr=3e-3)
    s.method.train()
    for _ in range(25):
        opt.zero_grad()
        out = s.method.training_step(batch)
        out.loss.backward()
        opt.step()
    net = s.method.deployable().eval()
    ref, low = _fp32_and_bf16(s, net, batch)
    top2 = ref["semseg"].topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).median()) > 0.5, "not fitted: the labels are still a coin toss"
    for task, rel in _relative_errors(ref, low).items():
        assert rel < 0.03, f"{task}: bf16 differs from fp32 by {rel:.3f} (relative L2)"  # measured <= 0.005
    agree = float((ref["semseg"].argmax(1) == low["semseg"].argmax(1)).float().mean())
    assert agree >= 0.99, f"bf16 changes {100 * (1 - agree):.1f}% of the segmentation labels"
    m32 = evaluate(net, s.tasks, [batch], s.device, "fp32")
    m16 = evaluate(net, s.tasks, [batch], s.device, "bf16")
    assert m16["semseg"]["miou"] == pytest.approx(m32["semseg"]["miou"], abs=1.0)  # percent
    assert m16["semseg"]["pacc"] == pytest.approx(m32["semseg"]["pacc"], abs=1.0)
    assert m16["depth"]["abs_err"] == pytest.approx(m32["depth"]["abs_err"], rel=0.02)
    assert m16["normal"]["mean"] == pytest.approx(m32["normal"]["mean"], abs=0.5)  # degrees


def test_compile_is_a_runtime_option_outside_the_config_hash():
    a, b = _smoke(), _smoke("vit_tiny", "train.compile=true")
    assert b.train.compile is True and a.train.compile is False
    assert a.hash == b.hash


# shrunk backbones (test_overrides): ViT with 2 blocks, ResNet with 2 bottlenecks per stage
@pytest.mark.parametrize("backbone,units", [("vit_tiny", 1 + 2), ("deeplabv3", 2 + 2 + 2 + 2)])
def test_compile_wraps_the_encoder_blocks_and_the_heads_in_place(backbone, units):
    plain = build(_smoke(backbone))
    s = build(_smoke(backbone, "train.compile=true"))
    mods = s.method.compile_modules()
    assert len(mods) == units + len(s.tasks)  # the encoder's units and one head per task
    assert all(m._compiled_call_impl is not None for m in mods)
    assert all(m._compiled_call_impl is None for m in plain.method.compile_modules())
    # in place: the state dict (checkpoints, records) does not change
    assert list(s.method.state_dict()) == list(plain.method.state_dict())


def test_mtan_compiles_its_attention_and_transfer_modules_too():
    s = build(_smoke("deeplabv3_mtan"))
    n_tasks = len(s.tasks)
    # 8 bottlenecks (shrunk: 2 per stage), 3 transfer blocks, 4 attention modules per task, one head per task
    assert len(s.method.compile_modules()) == 8 + 3 + 4 * n_tasks + n_tasks


@pytest.mark.slow
def test_compile_trains_a_smoke_run_and_predicts_as_eager(tmp_path, one_thread):
    # Training: the compiled run finishes with finite metrics and says it was compiled.  Its metrics
    # are not compared with an eager run's: inductor draws dropout masks from its own generator.
    rec = train(_smoke("vit_tiny", "train.epochs=1", "train.compile=true"),
                TrainOptions(out=tmp_path, quiet=True))
    assert rec["device"]["compile"] is True
    assert all(v == v and abs(v) < float("inf") for m in rec["metrics"].values() for v in m.values())
    # Inference: the same weights give the same predictions compiled and eager.
    eager = build(_smoke("vit_tiny"))
    comp = build(_smoke("vit_tiny", "train.compile=true"))
    comp.method.load_state_dict(eager.method.state_dict())
    x = _fixed_batch(eager)["image"]
    with torch.no_grad():
        a = eager.method.deployable().eval()(x)
        b = comp.method.deployable().eval()(x)
    for task in a:
        torch.testing.assert_close(b[task], a[task], rtol=1e-4, atol=1e-4)


def test_throughput_benchmark_smoke_mode_prints_flops_and_ceilings(capsys, one_thread):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "bench_throughput.py"))
    shrink = [a for s in shrink_sets("vit_tiny") for a in ("--set", s)]  # what is printed does not need full size
    assert mod["main"](["--smoke", "--threads", "1", "--methods", "baseline,uw", "--modes", "fp32,bf16", *shrink]) == 0
    text = capsys.readouterr().out
    assert re.search(r"matmul ceilings .*fp32 \d+, bf16 \d+", text), text
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("baseline", "uw") and len(parts) == 14:
            rows[(parts[0], parts[1])] = parts
    assert set(rows) == {("baseline", "fp32"), ("baseline", "bf16"), ("uw", "fp32"), ("uw", "bf16")}
    for parts in rows.values():
        gflop, s_step, gflops = float(parts[2]), float(parts[3]), float(parts[4])
        assert gflop > 0 and s_step > 0
        # GFLOP/s = GFLOP / (s/step), up to the printed rounding (GFLOP and GFLOP/s to 0.1, s to 0.001)
        lo, hi = (gflop - 0.05) / (s_step + 0.0005), (gflop + 0.05) / max(s_step - 0.0005, 1e-9)
        assert lo - 0.05 <= gflops <= hi + 0.05, (parts, lo, hi)
    # the same step in either precision has nearly the same FLOPs (under CPU bf16 the ViT's attention
    # runs as explicit products, whose backward the counter counts as 4 products, not SDPA's 5)
    assert float(rows[("baseline", "bf16")][2]) == pytest.approx(float(rows[("baseline", "fp32")][2]), rel=0.05)
    # uw adds no matrix products
    assert float(rows[("uw", "fp32")][12]) == pytest.approx(1.0, abs=0.01)  # flop x against baseline
    assert "data" in text and "evaluation" in text


def test_throughput_counts_attention_flops():
    mod = runpy.run_path(str(ROOT / "benchmarks" / "bench_throughput.py"))
    q = torch.randn(2, 3, 10, 8, requires_grad=True)

    def attend():
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    total, per_op = mod["count_flops"](attend)
    # forward: QK^T and PV, 2 products of 2*B*H*L*L*D; backward: QK^T again, dV, dP, dQ, dK
    product = 2 * 2 * 3 * 10 * 10 * 8
    assert per_op["_scaled_dot_product_flash_attention_for_cpu"] == 2 * product
    assert per_op["_scaled_dot_product_flash_attention_for_cpu_backward"] == 5 * product
    assert total == 7 * product


def test_matmul_shape_recorder_sees_the_products():
    mod = runpy.run_path(str(ROOT / "benchmarks" / "bench_throughput.py"))
    rec = mod["MatmulShapes"]()
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    with rec:
        torch.mm(a, b)
        torch.nn.functional.linear(a, torch.randn(4, 7), torch.randn(4))
    assert rec.flops[(5, 7, 3, "float32")] == 2 * 5 * 7 * 3
    assert rec.flops[(5, 7, 4, "float32")] == 2 * 5 * 7 * 4
    assert mod["classify"]("aten::to") == "cast" and mod["classify"]("aten::addmm") == "matmul"
    assert mod["classify"]("aten::native_layer_norm") == "norm"


def test_vit_attention_takes_the_explicit_path_only_under_cpu_bf16(one_thread):
    from timm.layers import Attention

    s = build(_smoke("vit_tiny", "train.amp=fp32"))
    net = s.method.deployable().eval()
    attns = [m for m in net.modules() if isinstance(m, Attention)]
    assert len(attns) == 2 + 2 * len(s.tasks)  # the (shrunk) encoder's 2 blocks and each head's two layers
    x = _fixed_batch(s)["image"]
    with torch.no_grad():
        net(x)
        assert all(a.fused_attn for a in attns)
        with autocast_ctx(s.device, "bf16"):
            net(x)
        assert not any(a.fused_attn for a in attns)
        net(x)
        assert all(a.fused_attn for a in attns)


def _precision_record(out: Path, seed: int, amp: str, miou: float) -> None:
    cfg = resolve(preset="quick", flags=[("method.name", "baseline", "--method"), ("seed", seed, "--seed")],
                  sets=[f"train.amp={amp}"])
    rec = {"config": cfg.data, "preset": "quick", "seed": seed,
           "tasks": {"semseg": {"metrics": {"miou": "higher", "pacc": "higher"}},
                     "depth": {"metrics": {"abs_err": "lower", "rel_err": "lower"}}},
           "metrics": {"semseg": {"miou": miou, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}},
           "device": {"amp": amp}, "timing": {"train_s": 100.0}}
    d = out / "runs" / "synthetic" / "vit_tiny" / "baseline"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed{seed}-{amp}.json").write_text(json.dumps(rec))


def test_precision_check_pairs_seeds_and_gives_the_interval(tmp_path, capsys):
    # bf16's mIoU is fp32's times (1 + x): Δ = 100 * x / (2 tasks * 2 metrics) = 0.5, 1.0, 1.5
    for seed, x in enumerate([0.02, 0.04, 0.06]):
        _precision_record(tmp_path, seed, "fp32", 30.0)
        _precision_record(tmp_path, seed, "bf16", 30.0 * (1 + x))
    mod = runpy.run_path(str(ROOT / "benchmarks" / "precision_check.py"))
    assert mod["main"](["--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "per seed: 0: +0.50, 1: +1.00, 2: +1.50" in text
    # mean 1.0, sd 0.5, half-width t(0.975, 2) * 0.5 / sqrt(3) = 4.3027 * 0.28868 = 1.2421
    assert "mean +1.00 ± 1.24 (95% CI [-0.24, +2.24], 3 seeds) -> no significant difference" in text
    with pytest.raises(SystemExit, match="no setting of baseline"):
        mod["main"](["--out", str(tmp_path), "--a", "fp16"])
