"""KD-MTL (methods/kd_mtl.py) and Cross-Stitch (methods/cross_stitch.py).

Formula tests on hand-built tensors, teacher loading from a real `stl` run made
here on the smoke preset, and both methods end to end through the CLI.  The toy
backbone, smoke configs, task sets and batches are the shared fixtures of
``tests/conftest.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import shrink_argv

from mtlbench.api import TrainContext, count_parameters
from mtlbench.config import build_dataclass
from mtlbench.errors import UserError
from mtlbench.plots import epoch_rows, step_rows
from mtlbench.registry import BACKBONES, METHODS
from mtlbench.methods.cross_stitch import (CrossStitch, CrossStitchConfig, initial_stitch,
                                           resolve_groups)
from mtlbench.methods.kd_mtl import (KDMTL, KDMTLConfig, channel_normalize, distillation_loss,
                                     last_layer_feature)


@pytest.fixture(scope="module")
def vit(nyu_tasks):
    cls = BACKBONES.get("vit_tiny")
    return cls(cls.Config(), nyu_tasks())


@pytest.fixture(scope="module")
def stl_out(tmp_path_factory, smoke_config):
    """A results dir holding a finished smoke `stl` run (the KD-MTL teachers)."""
    from mtlbench.trainer import TrainOptions, train

    out = tmp_path_factory.mktemp("kd-results")
    record = train(smoke_config("stl"), TrainOptions(out=out, quiet=True))
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


def test_adaptors_and_total_loss(vit, nyu_tasks, tiny_batch):
    m = KDMTL(KDMTLConfig(), nyu_tasks(), vit)
    for t in m.task_names:
        conv = m.adaptors[t]
        assert isinstance(conv, nn.Conv2d) and conv.bias is None
        assert tuple(conv.weight.shape) == (192, 192, 1, 1)
    assert m.lambdas == {"semseg": 1.0, "depth": 1.0, "normal": 2.0}
    batch = tiny_batch()
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


def test_lambdas_absent_tasks_get_one_and_unknown_keys_fail(nyu_tasks, toy_factory):
    tasks = nyu_tasks()
    m = KDMTL(KDMTLConfig(lambdas={"normal": 3.0}), tasks, toy_factory(tasks))
    assert m.lambdas == {"semseg": 1.0, "depth": 1.0, "normal": 3.0}
    with pytest.raises(UserError, match="method.lambdas"):
        KDMTL(KDMTLConfig(lambdas={"semsge": 1.0}), tasks, toy_factory(tasks))
    with pytest.raises(UserError, match=r"method\.teacher_mode must be one of: eval, train; got frozen"):
        build_dataclass(KDMTLConfig, {"teacher_mode": "frozen"}, "method", {})
    with pytest.raises(UserError) as e:
        build_dataclass(KDMTLConfig, {"lambdas": {"semseg": 1, "depth": -1}}, "method", {})
    assert "method.lambdas entry depth (-1.0) must be a non-negative number (>= 0)" in str(e.value)
    assert "e.g. --set method.lambdas={semseg: 1.0, depth: 1.0, normal: 2.0}" in str(e.value)
    with pytest.raises(UserError, match=r"method\.lambdas must be of type dict\[str, float\]"):
        build_dataclass(KDMTLConfig, {"lambdas": {"semseg": "high"}}, "method", {})


# ---------------------------------------------------------------------------
# KD-MTL: frozen teachers, the adaptor optimiser, modes, state
# ---------------------------------------------------------------------------

def test_teachers_frozen_and_adaptor_optimiser_steps(nyu_tasks, tiny_batch, toy_factory, smoke_config):
    from mtlbench.trainer import Optimisation, optimizer_step

    tasks = nyu_tasks()
    m = KDMTL(KDMTLConfig(), tasks, toy_factory(tasks))
    m.train()
    # teachers and adaptors stay out of the network's optimiser
    in_groups = {id(p) for g in m.param_groups() for p in g["params"]}
    assert in_groups == {id(p) for p in m.model.parameters()}
    assert all(not p.requires_grad for p in m.teachers.parameters())
    # the adaptors' own optimiser, as the official code: Adam, lr 0.1, weight decay 5e-4, no schedule
    specs = {s.name: s for s in m.optimizers()}
    assert list(specs) == ["model", "adaptors"]
    ad = specs["adaptors"]
    assert (ad.kind, ad.lr, ad.weight_decay, ad.scheduled) == ("adam", 0.1, 5e-4, False)
    assert [id(p) for p in ad.parameters()] == [id(p) for p in m.adaptors.parameters()]
    tcfg = smoke_config("kd_mtl").train
    optim = Optimisation(m, tcfg, schedule_steps=4)
    adam = optim.optimizers["adaptors"]
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 0.1 and adam.defaults["weight_decay"] == 5e-4
    assert "adaptors" not in optim.schedulers

    m.on_train_start(TrainContext(1, 1, torch.device("cpu"), run=None, start_epoch=1))  # resume: no loading
    teachers0 = {k: v.clone() for k, v in m.teachers.state_dict().items()}
    adaptors0 = {k: v.clone() for k, v in m.adaptors.state_dict().items()}
    optimizer_step(m, optim, tiny_batch(), torch.device("cpu"), "fp32")
    optim.schedule()
    assert all(p.grad is None for p in m.teachers.parameters())
    for k, v in m.teachers.state_dict().items():
        assert torch.equal(v, teachers0[k]), k
    for k, v in m.adaptors.state_dict().items():
        assert not torch.equal(v, adaptors0[k]), f"adaptor {k} did not move"
    assert len(adam.state) == len(m.adaptors)
    assert adam.param_groups[0]["lr"] == 0.1  # not scheduled
    # the next step starts from zero adaptor gradients: the trainer zeroes every optimiser
    assert all(p.grad is not None for p in m.adaptors.parameters())
    optim.zero_grad()
    assert all(p.grad is None for p in m.adaptors.parameters())

    # the adaptor optimiser is checkpointed by the trainer, no longer by the method
    assert m.extra_state() == {"teacher_source": None}
    m2 = KDMTL(KDMTLConfig(), tasks, toy_factory(tasks))
    m2.load_state_dict(m.state_dict())
    optim2 = Optimisation(m2, tcfg, schedule_steps=4)
    optim2.load_state_dict(optim.state_dict())
    s1, s2 = adam.state_dict(), optim2.optimizers["adaptors"].state_dict()
    assert s1["state"] and s1["state"].keys() == s2["state"].keys()
    for i in s1["state"]:
        torch.testing.assert_close(s2["state"][i]["exp_avg"], s1["state"][i]["exp_avg"])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_teacher_mode_survives_train_and_eval(mode, nyu_tasks, toy_factory):
    tasks = nyu_tasks()
    m = KDMTL(KDMTLConfig(teacher_mode=mode), tasks, toy_factory(tasks))
    for call in (m.train, m.eval, m.train):
        call()
        assert all(mod.training == (mode == "train") for mod in m.teachers.modules())
    assert m.model.training


def test_teachers_load_from_stl_run(stl_out, smoke_config):
    from mtlbench.runs import RunContext
    from mtlbench.trainer import build

    out, stl_record = stl_out
    cfg = smoke_config("kd_mtl")
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
    cfg2 = smoke_config("kd_mtl", "vit_tiny", f"method.teacher_run={stl_record['_path']}")
    assert METHODS.get("kd_mtl").requires(cfg2.method) == []
    loaded = {k: v.clone() for k, v in m.teachers.state_dict().items()}
    with torch.no_grad():
        for p in m.teachers.parameters():
            p.zero_()
    m.cfg = cfg2.method
    m.on_train_start(TrainContext(1, 1, s.device, RunContext(cfg2, out / "elsewhere")))
    for k, v in m.teachers.state_dict().items():
        assert torch.equal(v, loaded[k]), k


def test_missing_teacher_error_names_the_stl_command(tmp_path, nyu_tasks, toy_factory, smoke_config):
    from mtlbench.runs import RunContext, command_for

    cfg = smoke_config("kd_mtl")
    tasks = nyu_tasks()
    m = KDMTL(cfg.method, tasks, toy_factory(tasks))  # the check needs no real network
    with pytest.raises(UserError) as err:
        m.on_train_start(TrainContext(1, 1, torch.device("cpu"), RunContext(cfg, tmp_path)))
    cmd = command_for(cfg.data, "stl", out=tmp_path)
    assert cmd.startswith("mtlbench run --method stl --backbone vit_tiny")
    assert cmd in str(err.value)
    assert "method.teacher_run" in str(err.value)


def test_teacher_run_must_be_an_stl_run(stl_out, tmp_path, nyu_tasks, toy_factory, smoke_config):
    from mtlbench.runs import RunContext

    out, stl_record = stl_out
    fake = json.loads(Path(stl_record["_path"]).read_text())
    fake["method"] = "baseline"
    p = tmp_path / "not-stl.json"
    p.write_text(json.dumps(fake))
    cfg = smoke_config("kd_mtl", "vit_tiny", f"method.teacher_run={p}")
    tasks = nyu_tasks()
    m = KDMTL(cfg.method, tasks, toy_factory(tasks))
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


def test_cross_stitch_mixing_by_hand(nyu_tasks, toy_factory):
    tasks = nyu_tasks()
    m = CrossStitch(CrossStitchConfig(groups=[1, 1]), tasks, toy_factory(tasks, heads="identity"))
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


def test_groups_default_and_validation(nyu_tasks, toy_factory):
    assert resolve_groups(None, 12) == [3, 3, 3, 3]
    assert resolve_groups(None, 5) == [1, 1, 1, 1, 1]
    assert resolve_groups(6, 12) == [2] * 6
    assert resolve_groups([2, 1, 1, 1], 5) == [2, 1, 1, 1]
    with pytest.raises(UserError, match="method.groups=5"):
        resolve_groups(5, 12)
    with pytest.raises(UserError, match="summing"):
        resolve_groups([3, 3], 12)
    tasks = nyu_tasks()
    with pytest.raises(UserError, match="method.groups"):
        CrossStitch(CrossStitchConfig(groups=3), tasks, toy_factory(tasks, n_layers=2))
    with pytest.raises(UserError, match=r"method\.groups element 0 \(0\) must be >= 1"):
        build_dataclass(CrossStitchConfig, {"groups": [0, 2]}, "method", {})
    with pytest.raises(UserError, match=r"method\.groups must be >= 1, or null; got 0"):
        build_dataclass(CrossStitchConfig, {"groups": 0}, "method", {})
    with pytest.raises(UserError, match=r"method\.groups must hold at least 1 element"):
        build_dataclass(CrossStitchConfig, {"groups": []}, "method", {})
    with pytest.raises(UserError, match=r"method\.stitch_lr_mult must be a positive number"):
        build_dataclass(CrossStitchConfig, {"stitch_lr_mult": 0}, "method", {})


def test_unsupported_encoder_is_refused(nyu_tasks, toy_factory):
    tasks = nyu_tasks()
    with pytest.raises(UserError, match="unsupported"):
        CrossStitch(CrossStitchConfig(), tasks, toy_factory(tasks, stitchable=False))
    if "deeplabv3_mtan" in BACKBONES:
        cls = BACKBONES.get("deeplabv3_mtan")
        with pytest.raises(UserError, match="unsupported"):
            CrossStitch(CrossStitchConfig(), tasks, cls(cls.Config(), tasks))


def test_cross_stitch_on_vit_gradients_and_groups(vit, nyu_tasks, tiny_batch, smoke_config):
    m = CrossStitch(CrossStitchConfig(stitch_lr_mult=100.0), nyu_tasks(), vit)
    assert m.model.group_sizes == [3, 3, 3, 3] and m.stitch_layers == [2, 5, 8, 11]
    m.train()
    out = m.training_step(tiny_batch())
    out.loss.backward()
    g = m.model.stitch.grad
    assert g is not None and torch.isfinite(g).all()
    assert all(g[k].abs().sum() > 0 for k in range(4))
    assert (g != 0).all(), "every α (off-diagonal included) gets a gradient"
    # the deployable model is the whole stitched system
    assert count_parameters(m.deployable()) == count_parameters(m)
    assert count_parameters(m) == sum(count_parameters(n) for n in m.model.nets.values()) + 4 * 9
    # the stitch group gets its own learning rate: train.lr * stitch_lr_mult (the peak under OneCycleLR)
    from mtlbench.trainer import Optimisation

    groups = m.param_groups()
    assert groups[1] == {"params": [m.model.stitch], "lr_mult": 100.0}
    assert len(groups[0]["params"]) + 1 == len(list(m.parameters()))
    tcfg = smoke_config("cross_stitch").train
    opt = Optimisation(m, tcfg, schedule_steps=4).optimizers["model"]
    assert opt.param_groups[1]["lr"] == pytest.approx(100 * opt.param_groups[0]["lr"])
    if tcfg.scheduler == "onecycle":
        assert opt.param_groups[1]["max_lr"] == pytest.approx(100 * tcfg.lr)
    logs = m.on_epoch_end(0, {})
    assert logs["stitch/0"] == [[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]]


# ---------------------------------------------------------------------------
# end to end through the CLI (smoke preset)
# ---------------------------------------------------------------------------

def _record(out: Path, method: str) -> dict:
    from mtlbench.runs import read_record

    recs = list((out / "runs").rglob(f"*/vit_tiny/{method}/*.json"))
    assert len(recs) == 1, recs
    return read_record(recs[0])


def test_kd_mtl_end_to_end(stl_out):
    from mtlbench.cli import main

    out, stl_record = stl_out
    rc = main(["run", "--method", "kd_mtl", "--backbone", "vit_tiny", "--preset", "smoke",
               "--out", str(out), "--device", "cpu", "--quiet", *shrink_argv("vit_tiny")])
    assert rc == 0
    rec = _record(out, "kd_mtl")
    assert rec["method_info"]["teacher_run"] == stl_record["id"]
    assert rec["params"]["deployable"] < rec["params"]["training_system"]
    assert any("distill/normal" in s for s in step_rows(rec))


def test_cross_stitch_end_to_end(tmp_path):
    from mtlbench.cli import main

    rc = main(["run", "--method", "cross_stitch", "--backbone", "vit_tiny", "--preset", "smoke",
               "--out", str(tmp_path), "--device", "cpu", "--quiet",
               "--set", "method.stitch_lr_mult=10", *shrink_argv("vit_tiny"),
               "--set", "backbone.depth=4"])  # four blocks: four feature layers to stitch
    assert rc == 0
    rec = _record(tmp_path, "cross_stitch")
    assert rec["params"]["deployable"] == rec["params"]["training_system"]
    assert set(epoch_rows(rec)[-1]["logs"]) == {"stitch/0", "stitch/1", "stitch/2", "stitch/3"}
    assert rec["method_info"]["tasks"] == list(rec["tasks"])


def test_cross_stitch_trains_on_the_registered_toy_backbone(toy_backbone, tmp_path):
    from mtlbench.cli import main
    from mtlbench.runs import read_record

    rc = main(["run", "--method", "cross_stitch", "--backbone", toy_backbone, "--preset", "smoke",
               "--out", str(tmp_path), "--device", "cpu", "--quiet", "--set", "backbone.n_layers=3"])
    assert rc == 0
    rec = read_record(next((tmp_path / "runs").rglob(f"*/{toy_backbone}/cross_stitch/*.json")))
    assert rec["config"]["backbone"] == {"name": toy_backbone, "n_layers": 3, "stitchable": True, "heads": "conv"}
    # 3 toy networks (3 scales + a 1x1 conv head each: 3*1 + 13*3+13, 1*3+1, 3*3+3) + 3 layers of 3x3 α
    assert rec["params"]["training_system"] == 3 * 3 + (13 * 3 + 13) + (3 + 1) + (9 + 3) + 3 * 9
    assert set(epoch_rows(rec)[-1]["logs"]) == {"stitch/0", "stitch/1", "stitch/2"}
