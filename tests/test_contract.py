"""The plugin contract, parametrised over every registered method x backbone.

A newly registered method or backbone is tested here automatically: one
training step on smoke data gives finite losses, every trainable parameter gets
a gradient, the state dict round-trips, predictions have the right shapes.
"""
from __future__ import annotations

import math

import pytest
import torch

from mtlbench.api import TrainContext
from mtlbench.config import resolve
from mtlbench.registry import BACKBONES, METHODS
from mtlbench.runs import RunContext
from mtlbench.trainer import RunExists, TrainOptions, build, train

COMBOS = [(m, b) for m in METHODS.names() for b in BACKBONES.names()]
# Smoke-sized images: 32x48 is divisible by every backbone's size multiple (16, 8).
SMOKE = ["train.epochs=1", "train.batch_size=2", "train.max_steps_per_epoch=1"]


def _cfg(method, backbone, extra=()):
    shrink = [f"backbone.{k}={v}" for k, v in BACKBONES.get(backbone).test_overrides.items()]
    return resolve(preset="smoke", flags=[("method.name", method, "--method"),
                                          ("backbone.name", backbone, "--backbone"),
                                          ("train.device", "cpu", "--device")],
                   sets=[*SMOKE, *shrink, *extra])


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("contract-results")


def _ensure_requirements(cfg, out):
    for dep in METHODS.get(cfg.name("method")).requires(cfg.method):
        dcfg = _cfg(dep, cfg.name("backbone"))
        try:
            train(dcfg, TrainOptions(out=out, quiet=True))
        except RunExists:
            pass


def _batch(setup, n=2):
    items = [setup.train_set[i] for i in range(n)]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


@pytest.mark.parametrize("method,backbone", COMBOS, ids=[f"{m}-{b}" for m, b in COMBOS])
def test_contract(method, backbone, results_dir):
    from mtlbench.errors import UserError

    cfg = _cfg(method, backbone)
    _ensure_requirements(cfg, results_dir)
    try:
        s = build(cfg)
    except UserError as exc:
        # A combination a method declares unsupported must say so clearly, not fail obscurely.
        assert "unsupported" in str(exc).lower() or "not supported" in str(exc).lower(), str(exc)
        return
    m = s.method
    epochs = 100
    m.on_train_start(TrainContext(epochs, 1, s.device, RunContext(cfg, results_dir)))
    opt = torch.optim.AdamW(m.param_groups(), lr=1e-4)
    batch = _batch(s)
    got_grad: set[int] = set()
    for epoch in (0, epochs - 1):
        m.train()
        m.on_epoch_start(epoch)
        opt.zero_grad(set_to_none=True)  # the trainer's order: zero, step, backward
        out = m.training_step(batch)
        assert set(out.losses) == set(s.tasks), "one loss per task"
        for t, v in out.losses.items():
            assert math.isfinite(float(v.detach())), f"{t} loss not finite at epoch {epoch}"
        m.backward(out)
        for p in m.parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all()
                got_grad.add(id(p))
        opt.step()
        m.after_step(epoch)
        m.on_epoch_end(epoch, {t: float(v.detach()) for t, v in out.losses.items()})
    trainable = {id(p): n for n, p in m.named_parameters() if p.requires_grad}
    missing = [n for i, n in trainable.items() if i not in got_grad]
    assert not missing, f"no gradient for {len(missing)} parameters, e.g. {missing[:5]}"

    # train.grad_clip's sets cover the optimiser's parameters, each exactly once
    in_opt = [id(p) for grp in m.param_groups() for p in grp["params"]]
    in_clip = [id(p) for params in m.clip_groups() for p in params]
    assert sorted(in_clip) == sorted(in_opt), "clip_groups must partition the optimiser's parameters"

    # predictions of the deployable model: every task, the right shape
    dep = m.deployable()
    dep.eval()
    with torch.no_grad():
        preds = dep(batch["image"])
    assert set(preds) == set(s.tasks)
    h, w = batch["image"].shape[-2:]
    for t, p in preds.items():
        assert p.shape == (2, s.tasks[t].channels, h, w), t

    # state round-trips into a freshly built method (parameters, buffers, extra state)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    extra = m.extra_state()
    s2 = build(cfg, with_data=False)
    s2.method.load_state_dict(state)
    s2.method.load_extra_state(extra)
    for k, v in s2.method.state_dict().items():
        assert torch.equal(v, state[k]), k
    d2 = s2.method.deployable()
    d2.eval()
    with torch.no_grad():
        preds2 = d2(batch["image"])
    for t in preds:
        torch.testing.assert_close(preds2[t], preds[t])
