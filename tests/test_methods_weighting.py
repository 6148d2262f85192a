"""Loss-weighting methods: DWA, GradNorm, Uncertainty Weighting and RLW.

Formula tests against hand computations, behaviour on tiny problems built from
a fake backbone (a 1x1-conv encoder and 1x1-conv heads), and state round-trips.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mtlbench.config import build_dataclass
from mtlbench.errors import UserError
from mtlbench.registry import METHODS
from mtlbench.tasks import Depth, Normal, SemSeg


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------
# the backbone: tests/conftest.py's convolutional toy (shared 1x1 convs, 1x1-conv heads)
# ---------------------------------------------------------------------------

from conftest import ConvEncoder as TinyEncoder  # noqa: E402
from conftest import ConvToyBackbone, ConvToyConfig  # noqa: E402


def make(method: str, tasks: dict, seed: int = 0, per_task: bool = False, **cfg):
    torch.manual_seed(seed)
    cls = METHODS.get(method)
    return cls(build_dataclass(cls.Config, cfg, "method", {}), tasks,
               ConvToyBackbone(ConvToyConfig(per_task=per_task), tasks))


def nyu_tasks():
    return {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}


def nyu_batch(b=2, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randint(-1, 13, (b, h, w), generator=g)
    depth = torch.rand(b, 1, h, w, generator=g) + 0.1
    depth[:, :, 0, 0] = 0  # an invalid pixel
    normal = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return {"image": torch.rand(b, 3, h, w, generator=g), "semseg": seg, "depth": depth,
            "normal": normal}


def f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def network_grads(m) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------------
# DWA
# ---------------------------------------------------------------------------

def test_dwa_weights_match_hand_computation():
    from mtlbench.methods.dwa import dwa_weights

    prev2 = {"a": 2.0, "b": 1.0, "c": 4.0}
    prev = {"a": 1.0, "b": 0.9, "c": 4.0}
    got = dwa_weights(prev, prev2, T=2.0)
    # w = (0.5, 0.9, 1.0); λ_k = 3 e^{w_k/2} / Σ e^{w_i/2}
    e = [math.exp(0.25), math.exp(0.45), math.exp(0.5)]
    for t, ek in zip("abc", e):
        assert got[t] == pytest.approx(3 * ek / sum(e), rel=1e-12)
    assert sum(got.values()) == pytest.approx(3.0)
    assert got["c"] > got["b"] > got["a"]  # the task whose loss fell least gets the most weight


def test_dwa_epoch_schedule_and_resume():
    tasks = nyu_tasks()
    m = make("dwa", tasks)
    history = [{"semseg": 2.5, "depth": 0.8, "normal": 0.6},
               {"semseg": 2.0, "depth": 0.7, "normal": 0.59},
               {"semseg": 1.9, "depth": 0.5, "normal": 0.5}]
    batch = nyu_batch()
    for epoch, losses in enumerate(history):
        m.on_epoch_start(epoch)
        if epoch < 2:
            assert m.weights == {t: 1.0 for t in tasks}, f"epoch {epoch} must use weight 1"
        out = m.training_step(batch)
        total = sum(m.weights[t] * out.losses[t] for t in tasks)
        assert f(out.loss) == pytest.approx(f(total))
        logs = m.on_epoch_end(epoch, losses)
        assert set(logs) == {f"weight/{t}" for t in tasks}
    # epoch 2 was weighted by epochs 1 / 0, by hand:
    w = {t: history[1][t] / history[0][t] for t in tasks}
    z = sum(math.exp(v / 2) for v in w.values())
    assert logs == pytest.approx({f"weight/{t}": 3 * math.exp(w[t] / 2) / z for t in tasks})

    m.on_epoch_start(3)
    expected = dict(m.weights)
    assert expected != {t: 1.0 for t in tasks}
    # resume: a fresh method with the extra state gives the same next weights
    m2 = make("dwa", tasks, seed=1)
    m2.load_extra_state(m.extra_state())
    m2.on_epoch_start(3)
    assert m2.weights == expected
    # a fresh method without history falls back to 1 (e.g. hooks out of order)
    m3 = make("dwa", tasks)
    m3.on_epoch_start(7)
    assert m3.weights == {t: 1.0 for t in tasks}


def test_dwa_config_validation():
    with pytest.raises(UserError, match="T must be a positive"):
        build_dataclass(METHODS.get("dwa").Config, {"T": 0}, "method", {})


# ---------------------------------------------------------------------------
# GradNorm
# ---------------------------------------------------------------------------

def two_task_batch(g: torch.Generator, b=4, h=4, w=4):
    """Task a: a smooth, learnable function of the image. Task b: pure noise."""
    x = torch.rand(b, 3, h, w, generator=g)
    a = 3.0 * (x[:, :1] - x[:, 1:2]) + 2.0
    noise = torch.randn(b, 1, h, w, generator=g)
    return {"image": x, "a": a, "b": noise}


def _optim(m, lr=0.02, steps=100):
    """The trainer's optimisers for ``m`` (its own for the task weights included), constant lr."""
    from mtlbench.config import TrainConfig
    from mtlbench.trainer import Optimisation

    return Optimisation(m, TrainConfig(optimizer="adam", lr=lr, weight_decay=0.0, scheduler="constant"), steps)


def _step(m, optim, batch, step=0):
    """One step exactly as the trainer takes it: zero, forward, backward, step all, after_step."""
    from mtlbench.trainer import optimizer_step

    out = optimizer_step(m, optim, batch, torch.device("cpu"), "fp32")
    optim.schedule()
    m.after_step(step, batch)
    return out


def test_gradnorm_weights_move_to_the_slower_task_and_sum_to_k():
    tasks = {"a": Depth(), "b": Depth()}
    m = make("gradnorm", tasks, weight_lr=0.05)
    optim = _optim(m)
    w_opt = optim.optimizers["task_weights"]  # GradNorm's own Adam, built by the trainer
    assert type(w_opt) is torch.optim.Adam and w_opt.param_groups[0]["lr"] == 0.05
    assert "task_weights" not in optim.schedulers
    g = torch.Generator().manual_seed(0)
    first = last = None
    for step in range(80):
        out = _step(m, optim, two_task_batch(g), step)
        assert out.logs["weight/a"] + out.logs["weight/b"] == pytest.approx(2.0, abs=1e-5)
        assert f(m.task_weights.sum()) == pytest.approx(2.0, abs=1e-5)
        assert bool((m.task_weights > 0).all())
        losses = {t: f(v) for t, v in out.losses.items()}
        first = first or losses
        last = losses
    # task a trains fast, task b (noise) cannot: b is the slower task and gains weight
    assert last["a"] / first["a"] < last["b"] / first["b"]
    w = m.current_weights()
    assert w["b"] > 1.2 and w["a"] < 0.8, w
    assert m.summary_info()["final_weights"] == w


def _reference_l_grad_grad(m, batch):
    """∇_w L_grad with per-task grads through create_graph=True (the textbook way)."""
    w = m.task_weights
    preds = m.model(batch["image"])
    losses = m.task_losses(preds, batch)
    W = m.shared_layer()
    G = []
    for i, t in enumerate(m.task_names):
        gs = torch.autograd.grad(w[i] * losses[t], W, retain_graph=True, create_graph=True)
        G.append(torch.cat([g.flatten() for g in gs]).norm())
    G = torch.stack(G)
    L = torch.stack([losses[t].detach() for t in m.task_names])
    ratio = L / m.initial_losses
    r = ratio / ratio.mean()
    target = (G.mean() * r ** m.cfg.alpha).detach()
    return torch.autograd.grad((G - target).abs().sum(), w)[0]


@pytest.mark.parametrize("shared,per_task", [("last", False), ("all", False), ("last", True), ("all", True)])
def test_gradnorm_gradients_equal_plain_backward_and_create_graph(shared, per_task):
    tasks = nyu_tasks()
    m = make("gradnorm", tasks, per_task=per_task, shared_params=shared, weight_lr=0.1)
    optim = _optim(m, lr=0.1)
    for step in range(4):  # move the weights away from 1 first
        _step(m, optim, nyu_batch(seed=step), step)
    w_before = m.task_weights.detach().clone()
    assert not torch.allclose(w_before, torch.ones(3))

    batch = nyu_batch(seed=10)
    ref_w_grad = _reference_l_grad_grad(m, batch)
    m.zero_grad(set_to_none=True)
    out = m.training_step(batch)
    m.backward(out)
    got = network_grads(m)
    torch.testing.assert_close(m.task_weights.grad, ref_w_grad, rtol=1e-4, atol=1e-6)

    # the network's gradient is that of Σ w_i L_i with the weights of this step
    m.zero_grad(set_to_none=True)
    losses = m.task_losses(m.model(batch["image"]), batch)
    sum(w_before[i] * losses[t] for i, t in enumerate(m.task_names)).backward()
    want = network_grads(m)
    assert set(got) == set(want) == {n for n, _ in m.model.named_parameters()}
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=n)


def test_gradnorm_shared_layer_choice_and_validation():
    tasks = nyu_tasks()
    last = make("gradnorm", tasks)
    assert last.shared_layer() == [last.model.encoder.shared.weight, last.model.encoder.shared.bias]
    every = make("gradnorm", tasks, shared_params="all", per_task=True)
    assert every.shared_layer() == every.model.encoder.shared_parameters() and len(every.shared_layer()) == 4
    # w is trained by GradNorm's optimiser only
    grouped = {id(p) for grp in last.param_groups() for p in grp["params"]}
    assert id(last.task_weights) not in grouped
    assert len(grouped) == len(list(last.parameters())) - 1
    with pytest.raises(UserError, match=r"method\.shared_params must be one of: last, all; got first"):
        make("gradnorm", tasks, shared_params="first")
    with pytest.raises(UserError, match=r"method\.alpha must be a non-negative number \(>= 0\); got -1\.0"):
        make("gradnorm", tasks, alpha=-1.0)
    with pytest.raises(UserError, match=r"method\.weight_lr must be a positive number \(> 0\); got 0"):
        make("gradnorm", tasks, weight_lr=0)


def test_gradnorm_unsupported_backbone_says_so(monkeypatch):
    def missing(self):
        raise NotImplementedError

    monkeypatch.setattr(TinyEncoder, "last_shared_parameters", missing)
    with pytest.raises(UserError, match="(?s)unsupported.*shared_params=all"):
        make("gradnorm", nyu_tasks())


def test_gradnorm_resume_gives_identical_next_weights():
    tasks = nyu_tasks()
    m = make("gradnorm", tasks)
    optim = _optim(m, lr=1e-2)
    for step in range(3):
        _step(m, optim, nyu_batch(seed=step), step)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    extra = m.extra_state()
    opt_state = copy.deepcopy(optim.state_dict())
    assert extra["initial_losses"] is not None and opt_state["optimizers"]["task_weights"]["state"]

    m2 = make("gradnorm", tasks, seed=5)
    m2.load_state_dict(state)
    m2.load_extra_state(extra)
    optim2 = _optim(m2, lr=1e-2)
    optim2.load_state_dict(opt_state)
    batch = nyu_batch(seed=3)
    _step(m, optim, batch, 3)
    _step(m2, optim2, batch, 3)
    torch.testing.assert_close(m2.task_weights, m.task_weights, rtol=0, atol=0)
    # without L(0) and the optimisers' state the next weights differ
    m3 = make("gradnorm", tasks, seed=5)
    m3.load_state_dict(state)
    _step(m3, _optim(m3, lr=1e-2), batch, 3)
    assert not torch.equal(m3.task_weights, m.task_weights)


# ---------------------------------------------------------------------------
# Uncertainty weighting
# ---------------------------------------------------------------------------

def _train_uw(tasks, batch_fn, steps=400, **cfg):
    m = make("uw", tasks, **cfg)
    groups = m.param_groups()
    opt = torch.optim.Adam(groups, lr=0.03)
    g = torch.Generator().manual_seed(0)
    recent = {t: [] for t in tasks}
    for step in range(steps):
        out = m.training_step(batch_fn(g))
        opt.zero_grad(set_to_none=True)
        m.backward(out)
        opt.step()
        if step >= steps // 2:
            for t, v in out.losses.items():
                recent[t].append(f(v))
    return m, {t: sum(v) / len(v) for t, v in recent.items()}


def test_uw_variance_settles_at_the_loss_scale():
    # Regression with irreducible noise: the ½ form's optimum is e^s = L.
    def batch(g):
        x = torch.rand(4, 3, 4, 4, generator=g)
        return {"image": x, "depth": 2.0 + 0.5 * torch.randn(4, 1, 4, 4, generator=g)}

    m, mean_loss = _train_uw({"depth": Depth()}, batch)
    s = f(m.log_vars[0])
    assert math.exp(s) == pytest.approx(mean_loss["depth"], rel=0.15)
    assert m.effective_weights()["depth"] == pytest.approx(0.5 * math.exp(-s))


@pytest.mark.parametrize("form,factor", [("paper", 2.0), ("libmtl", 1.0)])
def test_uw_classification_form(form, factor):
    # Random labels: the loss stays near log C.  Paper form e^-s·L + s/2: e^s = 2L;
    # LibMTL's ½ form: e^s = L.
    def batch(g):
        return {"image": torch.rand(4, 3, 4, 4, generator=g),
                "semseg": torch.randint(0, 5, (4, 4, 4), generator=g)}

    m, mean_loss = _train_uw({"semseg": SemSeg(5)}, batch, form=form)
    assert math.exp(f(m.log_vars[0])) == pytest.approx(factor * mean_loss["semseg"], rel=0.15)


def test_uw_loss_form_logs_and_param_groups():
    tasks = nyu_tasks()
    m = make("uw", tasks, s_lr=0.05)
    out = m.training_step(nyu_batch())
    s = -0.5
    want = (math.exp(-s) * f(out.losses["semseg"]) + 0.5 * s
            + sum(0.5 * math.exp(-s) * f(out.losses[t]) + 0.5 * s for t in ("depth", "normal")))
    assert f(out.loss) == pytest.approx(want, rel=1e-6)
    assert out.logs["weight/semseg"] == pytest.approx(math.exp(0.5))
    assert out.logs["weight/depth"] == pytest.approx(0.5 * math.exp(0.5))
    assert out.logs["log_var/normal"] == pytest.approx(-0.5)
    net, s_group = m.param_groups()
    assert s_group["params"] == [m.log_vars] and s_group["lr"] == 0.05 and s_group["weight_decay"] == 0
    assert all(p is not m.log_vars for p in net["params"])
    m.backward(out)
    assert m.log_vars.grad is not None and bool((m.log_vars.grad != 0).all())
    with pytest.raises(UserError, match="form must be one of"):
        make("uw", tasks, form="kendall")


# ---------------------------------------------------------------------------
# RLW
# ---------------------------------------------------------------------------

def test_rlw_weights_positive_sum_one_and_vary():
    tasks = nyu_tasks()
    m = make("rlw", tasks)
    batch = nyu_batch()
    torch.manual_seed(123)
    seen = []
    for _ in range(5):
        out = m.training_step(batch)
        w = [out.logs[f"weight/{t}"] for t in tasks]
        assert all(v > 0 for v in w) and sum(w) == pytest.approx(1.0)
        assert f(out.loss) == pytest.approx(sum(wi * f(out.losses[t]) for wi, t in zip(w, tasks)))
        seen.append(tuple(w))
    assert len(set(seen)) == 5
    # the global RNG (seeded and checkpointed by the trainer) makes the sequence reproducible
    torch.manual_seed(123)
    again = []
    for _ in range(5):
        logs = m.training_step(batch).logs
        again.append(tuple(logs[f"weight/{t}"] for t in tasks))
    assert again == seen
