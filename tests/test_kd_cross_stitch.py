"""KD-MTL (methods/kd_mtl.py) and Cross-Stitch (methods/cross_stitch.py).

Formula tests on hand-built tensors, teacher loading from a real `stl` run made
here on the smoke preset, and both methods end to end through the CLI.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api import BackboneFactory, Encoder, TrainContext, count_parameters
from mtlbench.errors import UserError
from mtlbench.registry import BACKBONES, METHODS
from mtlbench.tasks import Depth, Normal, SemSeg
from mtlbench.methods.cross_stitch import (CrossStitch, CrossStitchConfig, initial_stitch,
                                           resolve_groups)
from mtlbench.methods.kd_mtl import (KDMTL, KDMTLConfig, channel_normalize, distillation_loss,
                                     last_layer_feature)

H, W = 32, 48
SMOKE_SETS = ["train.device=cpu"]


def _tasks():
    return {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}


def _batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, H, W, generator=g),
            "semseg": torch.randint(-1, 13, (b, H, W), generator=g),
            "depth": torch.rand(b, 1, H, W, generator=g) + 0.1,
            "normal": F.normalize(torch.randn(b, 3, H, W, generator=g), dim=1)}


class ToyEncoder(Encoder):
    """State = image + offset (3 channels); layer i multiplies by a learnable scale (1 at start)."""

    def __init__(self, offset: float, n_layers: int = 2, stitchable: bool = True):
        super().__init__()
        self.offset = offset
        self.num_layers = n_layers
        self.layer_channels = [3] * n_layers
        self.out_channels = 3
        self.supports_stitching = stitchable
        self.scale = nn.Parameter(torch.ones(n_layers))

    def begin(self, x):
        return x + self.offset

    def layer(self, i, state):
        return state * self.scale[i]

    def layer_feature(self, state):
        return state

    def end(self, state):
        return state


class Passthrough(nn.Module):
    def forward(self, feat, size):
        return feat


class ConvHead(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)

    def forward(self, feat, size):
        return F.interpolate(self.conv(feat), size=tuple(size), mode="bilinear", align_corners=False)


class ToyFactory(BackboneFactory):
    """Cheap stand-in for a backbone: each new encoder gets the next offset (1, 2, 3, ...)."""

    def __init__(self, tasks, stitchable=True, n_layers=2, heads="conv"):
        super().__init__(None, tasks)
        self.stitchable, self.n_layers, self.heads, self.built = stitchable, n_layers, heads, 0

    def encoder(self, tasks):
        self.built += 1
        return ToyEncoder(float(self.built), self.n_layers, self.stitchable)

    def head(self, task):
        return Passthrough() if self.heads == "identity" else ConvHead(task.channels)


@pytest.fixture(scope="module")
def vit():
    cls = BACKBONES.get("vit_tiny")
    return cls(cls.Config(), _tasks())


def _smoke_cfg(method, extra=()):
    from mtlbench.config import resolve

    return resolve(preset="smoke", flags=[("method.name", method, "--method"),
                                          ("backbone.name", "vit_tiny", "--backbone")],
                   sets=[*SMOKE_SETS, *extra])


@pytest.fixture(scope="module")
def stl_out(tmp_path_factory):
    """A results dir holding a finished smoke `stl` run (the KD-MTL teachers)."""
    from mtlbench.trainer import TrainOptions, train

    out = tmp_path_factory.mktemp("kd-results")
    record = train(_smoke_cfg("stl"), TrainOptions(out=out, quiet=True))
    return out, record


# ---------------------------------------------------------------------------
# KD-MTL: the distillation loss
# ---------------------------------------------------------------------------

def test_channel_normalize_has_eps_inside_the_root():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert channel_normalize(x).flatten().tolist() == pytest.approx(
        [3 / math.sqrt(25 + 1e-6), 4 / math.sqrt(25 + 1e-6)], rel=1e-7)
    # a zero vector stays zero (no NaN), as with KD4MTL's eps
    assert torch.equal(channel_normalize(torch.zeros(1, 2, 1, 1)), torch.zeros(1, 2, 1, 1))


def test_distillation_loss_by_hand():
    # (B=1, C=2, h=1, w=2): two positions.
    s = torch.tensor([[[[3.0, 1.0]], [[4.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]]]])
    e = 1e-6
    # position 0: N(s) = (3,4)/sqrt(25+e), N(t) = (0,1)/sqrt(1+e)
    p0 = (3 / math.sqrt(25 + e) - 0) ** 2 + (4 / math.sqrt(25 + e) - 1 / math.sqrt(1 + e)) ** 2
    # position 1: N(s) = (1,0)/sqrt(1+e), N(t) = (2,0)/sqrt(4+e)
    p1 = (1 / math.sqrt(1 + e) - 2 / math.sqrt(4 + e)) ** 2
    expected = (p0 + p1) / 2  # summed over channels, averaged over batch and positions
    assert distillation_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert p0 == pytest.approx(0.4, rel=1e-5)  # 2 - 2 cos, cos = 0.8
    # identical directions give ~0, whatever the scale
    assert distillation_loss(5 * t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptors_and_total_loss(vit):
    m = KDMTL(KDMTLConfig(), _tasks(), vit)
    for t in m.task_names:
        conv = m.adaptors[t]
        assert isinstance(conv, nn.Conv2d) and conv.bias is None
        assert tuple(conv.weight.shape) == (192, 192, 1, 1)
    assert m.lambdas == {"semseg": 1.0, "depth": 1.0, "normal": 2.0}
    batch = _batch()
    m.train()
    out = m.training_step(batch)
    d = out.extra["distill"]
    expected = sum(out.losses.values()) + d["semseg"] + d["depth"] + 2 * d["normal"]
    torch.testing.assert_close(out.loss, expected)
    # D_t by hand from the features: the last block's tokens, adaptor = 1x1 conv = linear on tokens
    with torch.no_grad():
        f = m.model(batch["image"], return_features=True)[1].layers[-1]
        g = m.teachers["depth"](batch["image"], return_layers=True).layers[-1]
        torch.testing.assert_close(last_layer_feature(m.teachers["depth"], batch["image"]), g)
        a = torch.einsum("oc,bchw->bohw", m.adaptors["depth"].weight[:, :, 0, 0], f)
        na = a / torch.sqrt((a ** 2).sum(1, keepdim=True) + 1e-6)
        ng = g / torch.sqrt((g ** 2).sum(1, keepdim=True) + 1e-6)
        hand = ((na - ng) ** 2).sum(1).mean()
    torch.testing.assert_close(d["depth"].detach(), hand, rtol=1e-5, atol=1e-6)
    assert set(out.logs) == {"distill/semseg", "distill/depth", "distill/normal"}


def test_lambdas_absent_tasks_get_one_and_unknown_keys_fail():
    tasks = _tasks()
    m = KDMTL(KDMTLConfig(lambdas={"normal": 3.0}), tasks, ToyFactory(tasks))
    assert m.lambdas == {"semseg": 1.0, "depth": 1.0, "normal": 3.0}
    with pytest.raises(UserError, match="method.lambdas"):
        KDMTL(KDMTLConfig(lambdas={"semsge": 1.0}), tasks, ToyFactory(tasks))
    with pytest.raises(ValueError, match="teacher_mode"):
        KDMTLConfig(teacher_mode="frozen").validate()


# ---------------------------------------------------------------------------
# KD-MTL: frozen teachers, the adaptor optimiser, modes, state
# ---------------------------------------------------------------------------

def _trainer_step(m, opt, batch):
    """What the trainer does for one step."""
    out = m.training_step(batch)
    opt.zero_grad(set_to_none=True)
    m.backward(out)
    opt.step()
    m.after_step(0)
    return out


def test_teachers_frozen_and_adaptor_optimiser_steps():
    tasks = _tasks()
    m = KDMTL(KDMTLConfig(), tasks, ToyFactory(tasks))
    m.train()
    # teachers and adaptors stay out of the trainer's optimiser
    in_groups = {id(p) for g in m.param_groups() for p in g["params"]}
    assert in_groups == {id(p) for p in m.model.parameters()}
    assert all(not p.requires_grad for p in m.teachers.parameters())
    m.on_train_start(TrainContext(1, 1, torch.device("cpu"), run=None, start_epoch=1))  # resume path
    assert m.adaptor_opt is not None and m.adaptor_opt.defaults["lr"] == 0.1
    assert m.adaptor_opt.defaults["weight_decay"] == 5e-4
    teachers0 = {k: v.clone() for k, v in m.teachers.state_dict().items()}
    adaptors0 = {k: v.clone() for k, v in m.adaptors.state_dict().items()}
    opt = torch.optim.AdamW(m.param_groups(), lr=1e-3)
    _trainer_step(m, opt, _batch())
    assert all(p.grad is None for p in m.teachers.parameters())
    for k, v in m.teachers.state_dict().items():
        assert torch.equal(v, teachers0[k]), k
    for k, v in m.adaptors.state_dict().items():
        assert not torch.equal(v, adaptors0[k]), f"adaptor {k} did not move"
    assert len(m.adaptor_opt.state) == len(m.adaptors)
    # a second step: the adaptor gradients are those of this step only (zeroed in backward)
    torch.manual_seed(0)  # the same head-dropout masks in both passes
    out = m.training_step(_batch(seed=1))
    opt.zero_grad(set_to_none=True)
    m.backward(out)
    ref = {k: p.grad.clone() for k, p in m.adaptors.named_parameters()}
    for p in m.adaptors.parameters():
        p.grad = None
    torch.manual_seed(0)
    out = m.training_step(_batch(seed=1))
    out.loss.backward()
    for k, p in m.adaptors.named_parameters():
        torch.testing.assert_close(p.grad, ref[k])

    # the optimiser state round-trips through extra_state
    m2 = KDMTL(KDMTLConfig(), tasks, ToyFactory(tasks))
    m2.load_state_dict(m.state_dict())
    m2.load_extra_state(m.extra_state())
    s1, s2 = m.adaptor_opt.state_dict(), m2.adaptor_opt.state_dict()
    for i in s1["state"]:
        torch.testing.assert_close(s2["state"][i]["exp_avg"], s1["state"][i]["exp_avg"])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_teacher_mode_survives_train_and_eval(mode):
    tasks = _tasks()
    m = KDMTL(KDMTLConfig(teacher_mode=mode), tasks, ToyFactory(tasks))
    for call in (m.train, m.eval, m.train):
        call()
        assert all(mod.training == (mode == "train") for mod in m.teachers.modules())
    assert m.model.training


def test_teachers_load_from_stl_run(stl_out):
    from mtlbench.runs import RunContext
    from mtlbench.trainer import build

    out, stl_record = stl_out
    cfg = _smoke_cfg("kd_mtl")
    assert METHODS.get("kd_mtl").requires(cfg.method) == ["stl"]
    s = build(cfg, with_data=False)
    m = s.method
    m.on_train_start(TrainContext(1, 1, s.device, RunContext(cfg, out)))
    ckpt = torch.load(out / stl_record["checkpoint"], map_location="cpu", weights_only=False)["model"]
    for t in m.task_names:
        for k, v in m.teachers[t].state_dict().items():
            assert torch.equal(v, ckpt[f"model.nets.{t}.encoder.{k}"]), (t, k)
    assert m.teacher_source == stl_record["id"]
    # ... and through method.teacher_run=PATH (no stl run under --out), the same weights
    cfg2 = _smoke_cfg("kd_mtl", [f"method.teacher_run={stl_record['_path']}"])
    assert METHODS.get("kd_mtl").requires(cfg2.method) == []
    loaded = {k: v.clone() for k, v in m.teachers.state_dict().items()}
    with torch.no_grad():
        for p in m.teachers.parameters():
            p.zero_()
    m.cfg = cfg2.method
    m.on_train_start(TrainContext(1, 1, s.device, RunContext(cfg2, out / "elsewhere")))
    for k, v in m.teachers.state_dict().items():
        assert torch.equal(v, loaded[k]), k


def test_missing_teacher_error_names_the_stl_command(tmp_path):
    from mtlbench.runs import RunContext, command_for

    cfg = _smoke_cfg("kd_mtl")
    tasks = _tasks()
    m = KDMTL(cfg.method, tasks, ToyFactory(tasks))  # the check needs no real network
    with pytest.raises(UserError) as err:
        m.on_train_start(TrainContext(1, 1, torch.device("cpu"), RunContext(cfg, tmp_path)))
    cmd = command_for(cfg.data, "stl", out=tmp_path)
    assert cmd.startswith("mtlbench run --method stl --backbone vit_tiny")
    assert cmd in str(err.value)
    assert "method.teacher_run" in str(err.value)


def test_teacher_run_must_be_an_stl_run(stl_out, tmp_path):
    from mtlbench.runs import RunContext

    out, stl_record = stl_out
    fake = json.loads(Path(stl_record["_path"]).read_text())
    fake["method"] = "baseline"
    p = tmp_path / "not-stl.json"
    p.write_text(json.dumps(fake))
    cfg = _smoke_cfg("kd_mtl", [f"method.teacher_run={p}"])
    tasks = _tasks()
    m = KDMTL(cfg.method, tasks, ToyFactory(tasks))
    with pytest.raises(UserError, match="stl"):
        m.on_train_start(TrainContext(1, 1, torch.device("cpu"), RunContext(cfg, out)))


# ---------------------------------------------------------------------------
# Cross-Stitch
# ---------------------------------------------------------------------------

def test_initial_stitch_matrix():
    a = initial_stitch(3, 4)
    assert a.shape == (4, 3, 3)
    expected = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    for k in range(4):
        torch.testing.assert_close(a[k], expected)
    assert initial_stitch(1, 2).flatten().tolist() == [1.0, 1.0]


def test_cross_stitch_mixing_by_hand():
    tasks = _tasks()
    m = CrossStitch(CrossStitchConfig(groups=[1, 1]), tasks, ToyFactory(tasks, heads="identity"))
    x = torch.zeros(1, 3, 1, 1)
    with torch.no_grad():
        out = m.deployable()(x)
    # states start at 1, 2, 3; after stitch 1: (1.4, 2.2, 3.0); after stitch 2:
    # 0.9*1.4 + 0.1*(2.2+3.0) = 1.78, 0.9*2.2 + 0.1*(1.4+3.0) = 2.42, 0.9*3.0 + 0.1*(1.4+2.2) = 3.06
    got = [out[t][0, 0].item() for t in ("semseg", "depth", "normal")]
    assert got == pytest.approx([1.78, 2.42, 3.06], rel=1e-6)
    # any matrix: the mix is A2 @ A1 @ states, row = target task, column = source task
    a1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.0, 0.5]])
    a2 = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        m.model.stitch.copy_(torch.stack([a1, a2]))
        out = m.deployable()(x)
    expected = a2 @ a1 @ torch.tensor([1.0, 2.0, 3.0])
    assert [out[t][0, 0].item() for t in ("semseg", "depth", "normal")] == pytest.approx(expected.tolist())


def test_groups_default_and_validation():
    assert resolve_groups(None, 12) == [3, 3, 3, 3]
    assert resolve_groups(None, 5) == [1, 1, 1, 1, 1]
    assert resolve_groups(6, 12) == [2] * 6
    assert resolve_groups([2, 1, 1, 1], 5) == [2, 1, 1, 1]
    with pytest.raises(UserError, match="method.groups=5"):
        resolve_groups(5, 12)
    with pytest.raises(UserError, match="summing"):
        resolve_groups([3, 3], 12)
    tasks = _tasks()
    with pytest.raises(UserError, match="method.groups"):
        CrossStitch(CrossStitchConfig(groups=3), tasks, ToyFactory(tasks, n_layers=2))
    with pytest.raises(ValueError):
        CrossStitchConfig(groups=[0, 2]).validate()


def test_unsupported_encoder_is_refused():
    tasks = _tasks()
    with pytest.raises(UserError, match="unsupported"):
        CrossStitch(CrossStitchConfig(), tasks, ToyFactory(tasks, stitchable=False))
    if "deeplabv3_mtan" in BACKBONES:
        cls = BACKBONES.get("deeplabv3_mtan")
        with pytest.raises(UserError, match="unsupported"):
            CrossStitch(CrossStitchConfig(), tasks, cls(cls.Config(), tasks))


def test_cross_stitch_on_vit_gradients_and_groups(vit):
    m = CrossStitch(CrossStitchConfig(stitch_lr_mult=100.0), _tasks(), vit)
    assert m.model.group_sizes == [3, 3, 3, 3] and m.stitch_layers == [2, 5, 8, 11]
    m.train()
    out = m.training_step(_batch())
    out.loss.backward()
    g = m.model.stitch.grad
    assert g is not None and torch.isfinite(g).all()
    assert all(g[k].abs().sum() > 0 for k in range(4))
    assert (g != 0).all(), "every α (off-diagonal included) gets a gradient"
    # the deployable model is the whole stitched system
    assert count_parameters(m.deployable()) == count_parameters(m)
    assert count_parameters(m) == sum(count_parameters(n) for n in m.model.nets.values()) + 4 * 9
    # the stitch group gets its own peak lr = train.lr * stitch_lr_mult
    from mtlbench.runs import RunContext

    cfg = _smoke_cfg("cross_stitch")
    with pytest.raises(RuntimeError):
        m.param_groups()
    m.on_train_start(TrainContext(1, 1, torch.device("cpu"), RunContext(cfg, Path("."))))
    groups = m.param_groups()
    assert groups[1]["params"] == [m.model.stitch] and groups[1]["lr"] == pytest.approx(cfg.train.lr * 100)
    assert len(groups[0]["params"]) + 1 == len(list(m.parameters()))
    logs = m.on_epoch_end(0, {})
    assert logs["stitch/0"] == [[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]]


# ---------------------------------------------------------------------------
# end to end through the CLI (smoke preset)
# ---------------------------------------------------------------------------

def _record(out: Path, method: str) -> dict:
    recs = list((out / "runs").rglob(f"*/vit_tiny/{method}/*.json"))
    assert len(recs) == 1, recs
    return json.loads(recs[0].read_text())


def test_kd_mtl_end_to_end(stl_out):
    from mtlbench.cli import main

    out, stl_record = stl_out
    rc = main(["run", "--method", "kd_mtl", "--backbone", "vit_tiny", "--preset", "smoke",
               "--out", str(out), "--device", "cpu", "--quiet"])
    assert rc == 0
    rec = _record(out, "kd_mtl")
    assert rec["method_info"]["teacher_run"] == stl_record["id"]
    assert rec["params"]["deployable"] < rec["params"]["training_system"]
    assert any("distill/normal" in s for s in rec["history"]["steps"])


def test_cross_stitch_end_to_end(tmp_path):
    from mtlbench.cli import main

    rc = main(["run", "--method", "cross_stitch", "--backbone", "vit_tiny", "--preset", "smoke",
               "--out", str(tmp_path), "--device", "cpu", "--quiet",
               "--set", "method.stitch_lr_mult=10"])
    assert rc == 0
    rec = _record(tmp_path, "cross_stitch")
    assert rec["params"]["deployable"] == rec["params"]["training_system"]
    assert set(rec["history"]["epochs"][-1]["logs"]) == {"stitch/0", "stitch/1", "stitch/2", "stitch/3"}
    assert rec["method_info"]["tasks"] == list(rec["tasks"])
