"""IMTL-L (methods/imtl_l.py): learned loss scales, total loss Σ_i (e^(s_i) L_i − s_i).

* the total loss, the gradient with respect to s and the weights on the losses equal a hand
  computation for fixed losses (the method's own ``training_step`` on patched losses);
* k plain-SGD steps on s alone with fixed losses give the hand-iterated s, pinned for k = 1, 2;
* with constant losses, every scaled loss e^(s_i) L_i converges to 1 (s_i → −ln L_i);
* on a real network: the network's gradient is Σ e^(s_i) ∇L_i, and the loss is exactly twice
  ``uw``'s ½ form at u = −s (the identity the module's docstring states);
* the parameter groups (s without weight decay, ``s_lr``) and the options' checks;
* a smoke run through ``mtlbench run`` (the CLI's normal path) writes a finite record.

The cross-check against LibMTL's ``IMTL`` (IMTL-L's scales with IMTL-G) is in
tests/test_crosscheck_libmtl.py; every weighting x architecture pair, data-parallel
included, is in the contract matrices (tests/test_contract.py, test_architectures.py,
test_ddp.py), which pick the method up from the registry.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import ConvToyBackbone, ConvToyConfig, shrink_argv
from mtlbench.config import build_dataclass
from mtlbench.errors import UserError
from mtlbench.registry import METHODS
from mtlbench.tasks import Depth, Normal, SemSeg

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(tasks=None, seed: int = 0, method: str = "imtl_l", **cfg):
    tasks = tasks or nyu_tasks()
    torch.manual_seed(seed)
    cls = METHODS.get(method)
    return cls(build_dataclass(cls.Config, cfg, "method", {}), tasks, ConvToyBackbone(ConvToyConfig(), tasks))


def nyu_tasks():
    return {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}


def nyu_batch(b=2, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(b, 1, h, w, generator=g) + 0.1
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return {"image": torch.rand(b, 3, h, w, generator=g), "semseg": torch.randint(0, 13, (b, h, w), generator=g),
            "depth": depth, "normal": normal}


def with_fixed_losses(m, values):
    """Make ``m.task_losses`` return the leaf tensors ``values`` (one per task, requiring grad)."""
    leaves = {t: torch.tensor(float(v), requires_grad=True) for t, v in zip(m.task_names, values)}
    m.task_losses = lambda preds, batch: dict(leaves)
    return leaves


def set_s(m, values):
    with torch.no_grad():
        m.log_scales.copy_(torch.tensor(values, dtype=torch.float32))


LOSSES = [2.5, 0.04, 1.0]  # three magnitudes: above 1, far below 1, exactly 1
S = [0.3, -1.2, 0.7]


# ---------------------------------------------------------------------------
# (a) the loss and its gradients, by hand
# ---------------------------------------------------------------------------

def test_registered_with_its_defaults():
    assert "imtl_l" in METHODS
    cls = METHODS.get("imtl_l")
    assert cls.data_parallel and cls.fixed_architecture is None
    assert "IMTL-L" in cls.summary
    m = make()
    assert m.log_scales.shape == (3,) and torch.equal(m.log_scales.detach(), torch.zeros(3))
    assert m.effective_weights() == {"semseg": 1.0, "depth": 1.0, "normal": 1.0}


def test_total_loss_and_gradients_match_hand_computation():
    m = make()
    set_s(m, S)
    leaves = with_fixed_losses(m, LOSSES)
    out = m.training_step(nyu_batch())
    s32 = [float(torch.tensor(v, dtype=torch.float32)) for v in S]  # s is stored in float32
    want = sum(math.exp(s) * L - s for s, L in zip(s32, LOSSES))
    # (e^0.3·2.5 − 0.3) + (e^-1.2·0.04 + 1.2) + (e^0.7·1 − 0.7) ≈ 3.07465 + 1.21205 + 1.31375
    assert want == pytest.approx(5.60045, abs=1e-4)
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-6)
    m.backward(out)
    # ∂L/∂s_i = e^(s_i) L_i − 1
    want_gs = [math.exp(s) * L - 1 for s, L in zip(s32, LOSSES)]
    assert m.log_scales.grad.tolist() == pytest.approx(want_gs, rel=1e-6)
    # ∂L/∂L_i = e^(s_i): the weight each loss gets (and what the step logs)
    for (t, leaf), s in zip(leaves.items(), s32):
        assert float(leaf.grad) == pytest.approx(math.exp(s), rel=1e-6)
        assert out.logs[f"weight/{t}"] == pytest.approx(math.exp(s), rel=1e-6)
        assert out.logs[f"log_scale/{t}"] == pytest.approx(s, rel=1e-6)
    assert out.losses == leaves  # the unweighted losses are reported as they are


def test_at_init_the_loss_is_the_plain_sum_and_the_s_gradient_is_L_minus_1():
    m = make()
    with_fixed_losses(m, LOSSES)
    out = m.training_step(nyu_batch())
    assert float(out.loss.detach()) == pytest.approx(sum(LOSSES), rel=1e-6)
    m.backward(out)
    assert m.log_scales.grad.tolist() == pytest.approx([L - 1 for L in LOSSES], rel=1e-6, abs=1e-7)


# ---------------------------------------------------------------------------
# (b) k SGD steps on s alone, and (c) the fixed point
# ---------------------------------------------------------------------------

def _sgd_on_s(m, losses, lr, steps):
    s_group = m.param_groups()[-1]
    assert s_group["params"] == [m.log_scales]
    opt = torch.optim.SGD([m.log_scales], lr=lr)  # plain SGD: no momentum, no decay
    with_fixed_losses(m, losses)
    batch = nyu_batch()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        m.backward(m.training_step(batch))
        opt.step()
    return m.log_scales.detach().double()


def hand_iterate(s0, L, lr, steps):
    """s ← s − lr (e^s L − 1), in float64."""
    s = s0
    for _ in range(steps):
        s = s - lr * (math.exp(s) * L - 1)
    return s


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_k_sgd_steps_on_s_match_the_hand_iteration(k):
    lr = 0.1
    m = make()
    got = _sgd_on_s(m, LOSSES, lr, k)
    want = [hand_iterate(0.0, L, lr, k) for L in LOSSES]
    assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
    if k == 1:  # s_1 = −lr (L − 1)
        assert got.tolist() == pytest.approx([-0.15, 0.096, 0.0], abs=1e-7)
    if k == 2:  # L = 2.5: s_2 = −0.15 − 0.1 (2.5 e^−0.15 − 1) = −0.15 − 0.1 · 1.151776...
        assert got[0].item() == pytest.approx(-0.15 - 0.1 * (2.5 * math.exp(-0.15) - 1), rel=1e-6)
        assert got[0].item() == pytest.approx(-0.265177, abs=1e-6)
    # the task whose loss is exactly 1 is already at its optimum: s stays 0
    assert got[2].item() == 0.0


def test_scaled_losses_converge_to_one():
    m = make()
    s = _sgd_on_s(m, LOSSES, lr=0.5, steps=300)
    for si, L in zip(s.tolist(), LOSSES):
        assert si == pytest.approx(-math.log(L), abs=1e-5)  # e^s = 1 / L
        assert math.exp(si) * L == pytest.approx(1.0, abs=1e-5)
    # at the fixed point the s-gradient vanishes and each term of the loss is 1 + ln L_i
    out = m.training_step(nyu_batch())
    assert float(out.loss.detach()) == pytest.approx(sum(1 + math.log(L) for L in LOSSES), abs=1e-4)
    m.zero_grad(set_to_none=True)
    m.backward(out)
    assert m.log_scales.grad.abs().max().item() < 1e-5


def test_adam_also_balances_the_scaled_losses():
    """The run's optimiser is adaptive (AdamW): its fixed point is the same, e^(s_i) L_i = 1."""
    m = make()
    with_fixed_losses(m, LOSSES)
    opt = torch.optim.Adam([m.log_scales], lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995)  # settle instead of oscillating
    batch = nyu_batch()
    for _ in range(1500):
        opt.zero_grad(set_to_none=True)
        m.backward(m.training_step(batch))
        opt.step()
        sched.step()
    scaled = [w * L for w, L in zip(m.effective_weights().values(), LOSSES)]
    assert scaled == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)


# ---------------------------------------------------------------------------
# on a real network
# ---------------------------------------------------------------------------

def test_network_gradient_is_the_exp_s_weighted_sum():
    batch = nyu_batch()
    m = make()
    set_s(m, S)
    out = m.training_step(batch)
    m.backward(out)
    got = {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    losses = m.task_losses(m.model(batch["image"]), batch)
    w = m.effective_weights()
    sum(w[t] * losses[t] for t in losses).backward()  # the weights as constants
    want = {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and got
    for n in got:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)


def test_twice_uw_half_form_at_minus_s():
    """Σ e^s L − s = 2 · Σ (½ e^(−u) L + ½ u) at u = −s: loss, s-gradient (−2x), network gradient (2x)."""
    batch = nyu_batch(seed=1)
    ours, uw = make(seed=3), make(seed=3, method="uw", form="libmtl")
    for n, p in ours.model.state_dict().items():
        assert torch.equal(p, uw.model.state_dict()[n])
    set_s(ours, S)
    with torch.no_grad():
        uw.log_vars.copy_(-ours.log_scales)
    a, b = ours.training_step(batch), uw.training_step(batch)
    assert float(a.loss.detach()) == pytest.approx(2 * float(b.loss.detach()), rel=1e-6)
    ours.backward(a)
    uw.backward(b)
    torch.testing.assert_close(ours.log_scales.grad, -2 * uw.log_vars.grad, rtol=1e-5, atol=1e-7)
    for (n, p), (_, q) in zip(ours.model.named_parameters(), uw.model.named_parameters()):
        torch.testing.assert_close(p.grad, 2 * q.grad, rtol=1e-5, atol=1e-7, msg=n)


def test_param_groups_options_and_summary():
    m = make(s_lr=0.05, init_scale=-0.25)
    assert m.log_scales.tolist() == [-0.25] * 3
    net, s_group = m.param_groups()
    assert s_group == {"params": [m.log_scales], "weight_decay": 0.0, "lr": 0.05}
    assert all(p is not m.log_scales for p in net["params"])
    assert len(net["params"]) + 1 == len([p for p in m.parameters() if p.requires_grad])
    assert "lr" not in make().param_groups()[-1]  # s_lr None: the run's lr
    info = json.loads(json.dumps(m.summary_info(), allow_nan=False))
    assert info["final_log_scales"] == {t: -0.25 for t in m.task_names}
    assert info["final_weights"]["depth"] == pytest.approx(math.exp(-0.25))
    with pytest.raises(UserError, match="s_lr"):
        make(s_lr=-1.0)
    with pytest.raises(UserError, match="init_scale"):
        make(init_scale=math.inf)


def test_state_round_trip():
    m = make()
    set_s(m, S)
    m2 = make(seed=9)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.log_scales, m.log_scales)
    assert m2.effective_weights() == m.effective_weights()


# ---------------------------------------------------------------------------
# (d) a smoke run through the CLI
# ---------------------------------------------------------------------------

def test_smoke_run_through_the_cli(tmp_path):
    from mtlbench.cli import main

    out = tmp_path / "res"
    argv = ["run", "--method", "imtl_l", "--preset", "smoke", "--device", "cpu", "--quiet",
            *shrink_argv("vit_tiny"), "--set", "train.epochs=2", "--out", str(out)]
    assert main(argv) == 0
    paths = list((out / "runs").rglob("imtl_l/seed0-*.json"))
    assert len(paths) == 1
    rec = json.loads(paths[0].read_text())
    assert rec["method"] == "imtl_l" and rec["config"]["method"]["init_scale"] == 0.0
    values = [v for ms in rec["metrics"].values() for v in ms.values() if v is not None]
    assert values and all(math.isfinite(v) for v in values)
    info = rec["method_info"]
    assert set(info["final_weights"]) == set(rec["tasks"]) == set(info["final_log_scales"])
    assert all(math.isfinite(w) and w > 0 for w in info["final_weights"].values())
    # s moved from 0: the scales trained with the network
    assert any(v != 0.0 for v in info["final_log_scales"].values())
    for t, s in info["final_log_scales"].items():
        assert info["final_weights"][t] == pytest.approx(math.exp(s))
