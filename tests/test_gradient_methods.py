"""Gradient-based methods (TorchJD aggregators, ``grad_on``) and FAMO.

Aggregators against hand computations on two-task toy Jacobians, the
``params`` / ``features`` machinery against manual autograd on a tiny linear
encoder, FAMO's maths as pure functions and through its hooks, state
round-trips, and one smoke run of every method through the CLI and trainer.
"""
from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.config import build_dataclass
from mtlbench.errors import UserError
from mtlbench.registry import METHODS
from mtlbench.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
GRADIENT_METHODS = ["pcgrad", "mgda", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad",
                    "dualproj", "graddrop"]
#: optional modules each method's aggregator needs (the "solvers" extra)
SOLVERS = {"cagrad": ("cvxpy", "clarabel"), "nash_mtl": ("cvxpy", "ecos"),
           "upgrad": ("quadprog", "qpsolvers"), "dualproj": ("quadprog", "qpsolvers")}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def need_solvers(method: str) -> None:
    for mod in SOLVERS.get(method, ()):
        pytest.importorskip(mod, reason=f"{method} needs {mod}: pip install -e \".[solvers]\"")


# ---------------------------------------------------------------------------
# a toy backbone: a linear encoder (1x1 convs), 1x1-conv heads, squared-error tasks
# ---------------------------------------------------------------------------

class ToyTask(Task):
    """Mean squared error against a dense target."""

    def __init__(self, name: str, channels: int = 1):
        self.name = name
        self.channels = channels

    def loss(self, pred, target):
        return ((pred.float() - target.float()) ** 2).mean()


# the backbone: tests/conftest.py's convolutional toy, linear (z = W2 (W1 x); with per-task
# gates, Features.final is a dict as in MTAN), so every gradient is a hand-checkable product
from conftest import ConvToyBackbone, ConvToyConfig  # noqa: E402


def toy_tasks():
    return {"a": ToyTask("a"), "b": ToyTask("b", 2)}


def make(method: str, seed: int = 0, per_task: bool = False, tasks=None, **cfg):
    torch.manual_seed(seed)
    cls = METHODS.get(method)
    tasks = tasks or toy_tasks()
    return cls(build_dataclass(cls.Config, cfg, "method", {}), tasks,
               ConvToyBackbone(ConvToyConfig(channels=4, per_task=per_task, linear=True), tasks))


def toy_batch(b=2, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, h, w, generator=g), "a": torch.randn(b, 1, h, w, generator=g),
            "b": torch.randn(b, 2, h, w, generator=g)}


def aggregate(method: str, J, split: int | None = None, seed: int = 0, **cfg):
    """Run a method's aggregation on a hand-made Jacobian (optionally as two column blocks)."""
    m = make(method, seed=seed, **cfg)  # seeds torch's RNG (PCGrad's order, GradDrop's draws)
    J = torch.tensor(J, dtype=torch.float32)
    blocks = [J] if split is None else [J[:, :split], J[:, split:]]
    grads, weights, gram = m.aggregate(blocks)
    return torch.cat(grads), weights, gram


# ---------------------------------------------------------------------------
# aggregators against hand computations
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", [None, 1])
def test_pcgrad_projects_conflicting_gradients_onto_the_normal_plane(split):
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # g1·g2 = -1 < 0
    vec, weights, _ = aggregate("pcgrad", [g1.tolist(), g2.tolist()], split=split)
    # g1' = g1 - (g1·g2/|g2|²) g2 = [0.5, 0.5];  g2' = g2 - (g2·g1/|g1|²) g1 = [0, 1]
    torch.testing.assert_close(vec, torch.tensor([0.5, 1.5]))
    g1p, g2p = torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])
    assert float(g1p @ g2) == pytest.approx(0.0) and float(g2p @ g1) == pytest.approx(0.0)
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5]))  # (g1 + ½g2) + (g2 + g1)


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    vec, _, _ = aggregate("pcgrad", [[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(vec, torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize("g1,g2", [([1.0, 0.0], [0.0, 2.0]), ([3.0, 1.0], [-1.0, 2.0]),
                                   ([1.0, 0.0], [2.0, 0.0])])
def test_mgda_min_norm_point_of_two_gradients(g1, g2):
    a, b = torch.tensor(g1), torch.tensor(g2)
    # closed form: α1 = clip((b - a)·b / |a - b|², 0, 1)
    alpha = min(max(float((b - a) @ b) / float((a - b) @ (a - b)), 0.0), 1.0)
    vec, weights, _ = aggregate("mgda", [g1, g2])
    torch.testing.assert_close(weights, torch.tensor([alpha, 1 - alpha]), atol=1e-5, rtol=0)
    torch.testing.assert_close(vec, alpha * a + (1 - alpha) * b, atol=1e-5, rtol=0)


def test_mgda_hand_values():
    vec, weights, _ = aggregate("mgda", [[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(vec, torch.tensor([0.8, 0.4]))


@pytest.mark.parametrize("kind,n", [("l2", (1.0, 2.0)), ("loss", (2.0, 0.5)), ("loss+", (2.0, 1.0))])
def test_mgda_gradient_normalisations(kind, n):
    """g1 = (1, 0), g2 = (0, 2), losses (2, 0.5): α is the min-norm point of g_i / n_i (closed form
    for two orthogonal vectors: α1 = |b|² / (|a|² + |b|²)), the update Σ α_i g_i (unnormalised)."""
    m = make("mgda", normalization=kind)
    m.step_losses = torch.tensor([2.0, 0.5])
    a, b = torch.tensor([1.0, 0.0]) / n[0], torch.tensor([0.0, 2.0]) / n[1]
    a1 = float(b @ b) / float(a @ a + b @ b)
    vec, weights, _ = m.aggregate([torch.tensor([[1.0, 0.0], [0.0, 2.0]])])
    torch.testing.assert_close(weights, torch.tensor([a1, 1 - a1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(vec[0], torch.tensor([a1, 2 * (1 - a1)]), atol=1e-6, rtol=0)
    # none is MGDA itself
    plain, w0, _ = make("mgda").aggregate([torch.tensor([[1.0, 0.0], [0.0, 2.0]])])
    torch.testing.assert_close(w0, torch.tensor([0.8, 0.2]))


def test_mgda_loss_normalisation_reads_the_steps_losses():
    m = make("mgda", normalization="loss")
    batch = toy_batch()
    out = m.training_step(batch)
    m.backward(out)
    torch.testing.assert_close(m.step_losses, torch.stack([out.losses[t].detach() for t in m.task_names]))


def test_imtl_g_equal_projections_on_unit_gradients():
    vec, weights, _ = aggregate("imtl_g", [[1.0, 0.0], [1.0, 1.0]])
    # α2 = √2 − 1, α1 = 2 − √2 (g·u1 = g·u2 = 1)
    r2 = math.sqrt(2)
    torch.testing.assert_close(weights, torch.tensor([2 - r2, r2 - 1]))
    u1, u2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]) / r2
    assert float(vec @ u1) == pytest.approx(float(vec @ u2), abs=1e-6)


def test_aligned_mtl_aligns_orthogonal_gradients_to_the_smallest_scale():
    # G = diag(1, 4): B = diag(1, 1/2) with σ = λ_min = 1, so BJ has unit rows; mean preference.
    vec, weights, _ = aggregate("aligned_mtl", [[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(vec, torch.tensor([0.5, 0.5]))


def test_aligned_mtl_sum_preference_is_the_official_scale():
    """preference=sum (the official code, LibMTL: ones) is m times the default mean (1/m), same direction."""
    J = [[1.0, 0.5, -1.0], [0.0, 2.0, 1.0]]
    mean, w_mean, _ = aggregate("aligned_mtl", J)
    total, w_sum, _ = aggregate("aligned_mtl", J, preference="sum")
    torch.testing.assert_close(total, 2 * mean)
    torch.testing.assert_close(w_sum, 2 * w_mean)
    vec, _, _ = aggregate("aligned_mtl", [[1.0, 0.0], [0.0, 2.0]], preference="sum")
    torch.testing.assert_close(vec, torch.tensor([1.0, 1.0]))  # the hand case above, times m = 2


def test_graddrop_keeps_agreeing_signs_and_picks_one_sign_on_conflict():
    vec, weights, _ = aggregate("graddrop", [[1.0, 2.0], [3.0, 4.0]])
    assert weights is None
    torch.testing.assert_close(vec, torch.tensor([4.0, 6.0]))  # purity 1: everything passes
    seen = set()
    for seed in range(20):
        v, _, _ = aggregate("graddrop", [[1.0], [-1.0]], seed=seed)
        seen.add(float(v))
    assert seen == {1.0, -1.0}  # purity ½: one sign survives, either one
    v, _, _ = aggregate("graddrop", [[1.0], [-3.0]], leak=1.0)
    assert float(v) == pytest.approx(-2.0)  # full leak: the plain sum


def test_upgrad_never_opposes_a_task_gradient():
    need_solvers("upgrad")
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        J = torch.randn(3, 6, generator=g)
        J[1] = -0.8 * J[0] + 0.3 * J[1]  # a strong conflict
        vec, weights, _ = aggregate("upgrad", J.tolist(), split=2)
        assert (J @ vec >= -1e-4).all(), J @ vec
    vec, _, _ = aggregate("upgrad", [[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(vec, torch.tensor([1.0, 0.5]), atol=1e-3, rtol=0)  # no conflict: the mean


def test_dualproj_projects_the_mean_only_when_it_conflicts():
    need_solvers("dualproj")
    vec, _, _ = aggregate("dualproj", [[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(vec, torch.tensor([1.0, 0.5]), atol=1e-3, rtol=0)
    J = torch.tensor([[1.0, 0.0], [-2.0, 0.1]])  # mean [-0.5, 0.05] opposes g1
    vec, _, _ = aggregate("dualproj", J.tolist())
    # the projection onto {x1 >= 0, -2 x1 + 0.1 x2 >= 0} is [0, 0.05] (up to TorchJD's
    # regularisation of the Gramian, 1e-4)
    torch.testing.assert_close(vec, torch.tensor([0.0, 0.05]), atol=1e-3, rtol=0)
    assert (J @ vec >= -1e-3).all(), J @ vec


def test_cagrad_with_c_zero_is_the_mean_gradient():
    need_solvers("cagrad")
    vec, weights, _ = aggregate("cagrad", [[1.0, 0.0], [-1.0, 2.0]], c=0.0)
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)
    J = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])
    vec4, _, _ = aggregate("cagrad", J.tolist(), c=0.4)
    # the worst task's improvement is no lower than under the mean gradient
    assert float((J @ vec4).min() / vec4.norm()) >= float((J @ J.mean(0)).min() / J.mean(0).norm()) - 1e-6


def test_nash_mtl_orthogonal_gradients_get_weights_inverse_to_their_norms():
    need_solvers("nash_mtl")
    # Gα = 1/α with G = diag(1, 4): α ∝ (1, 1/2), so the update ∝ u1 + u2; max_norm 1 clips it.
    vec, weights, _ = aggregate("nash_mtl", [[1.0, 0.0], [0.0, 2.0]])
    assert float(weights[0] / weights[1]) == pytest.approx(2.0, rel=1e-2)
    torch.testing.assert_close(vec, torch.tensor([1.0, 1.0]) / math.sqrt(2), atol=1e-2, rtol=0)


def test_nash_mtl_warm_start_round_trips():
    need_solvers("nash_mtl")
    J = [torch.tensor([[1.0, 0.2], [-0.3, 2.0]])]
    m = make("nash_mtl")
    m.aggregate(J)
    state = json.loads(json.dumps(m.extra_state()))  # plain data
    m2 = make("nash_mtl")
    m2.load_extra_state(state)
    J2 = [torch.tensor([[0.9, 0.1], [-0.2, 1.5]])]
    _, w1, _ = m.aggregate(J2)
    _, w2, _ = m2.aggregate(J2)
    torch.testing.assert_close(w2, w1, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------
# where the gradient is taken: params / features, against manual autograd
# ---------------------------------------------------------------------------

def _manual(m, batch):
    """Per-task gradients computed by hand: w.r.t. the shared parameters, z, and each head."""
    enc = m.model.encoder
    x = batch["image"]
    z = enc(x).final
    losses = {t: m.tasks[t].loss(m.model.heads[t](z, x.shape[-2:]), batch[t]) for t in m.task_names}
    shared = enc.shared_parameters()
    rows, zrows, heads = [], [], {}
    for t in m.task_names:
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]))
        zrows.append(torch.autograd.grad(losses[t], z, retain_graph=True)[0])
        heads[t] = torch.autograd.grad(losses[t], list(m.model.heads[t].parameters()), retain_graph=True)
    return z, torch.stack(rows), torch.stack(zrows), heads


def _grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("method", ["mgda", "imtl_g", "aligned_mtl"])
def test_grad_on_params_sets_the_aggregated_jacobian(method):
    m = make(method, grad_on="params")
    batch = toy_batch()
    _, J, _, heads = _manual(m, batch)
    expected, _, _ = m.aggregate([J])
    out = m.training_step(batch)
    m.backward(out)
    torch.testing.assert_close(_grads(m.model.encoder.shared_parameters()), expected[0], atol=1e-5, rtol=1e-4)
    for t in m.task_names:  # heads: their own task's plain gradient
        for p, g in zip(m.model.heads[t].parameters(), heads[t]):
            torch.testing.assert_close(p.grad, g)
    assert set(out.logs) >= {"weight/a", "weight/b", "cos/a-b", "grad_norm/aggregated"}
    cos = float(J[0] @ J[1] / (J[0].norm() * J[1].norm()))
    assert out.logs["cos/a-b"] == pytest.approx(cos, abs=1e-5)
    assert out.logs["grad_norm/aggregated"] == pytest.approx(float(expected[0].norm()), rel=1e-5)


@pytest.mark.parametrize("method", ["mgda", "pcgrad"])
def test_grad_on_features_backpropagates_the_aggregated_feature_gradient(method):
    m = make(method, grad_on="features")
    batch = toy_batch()
    z, _, Jz, heads = _manual(m, batch)
    torch.manual_seed(1)  # PCGrad draws a random order: the same draws for both computations
    (gz,), _, _ = m.aggregate([Jz.flatten(1)])
    shared = m.model.encoder.shared_parameters()
    # the encoder's gradient is ∂⟨z, g_z⟩/∂θ, computed by hand on the linear encoder
    W1, b1, W2, b2 = [p.detach() for p in shared]
    x = batch["image"]
    G = gz.view_as(z)  # (B, c, h, w)
    h1 = F.conv2d(x, W1, b1)
    dW2 = torch.einsum("bchw,bdhw->cd", G, h1).reshape(W2.shape)
    db2 = G.sum((0, 2, 3))
    G1 = torch.einsum("bchw,cd->bdhw", G, W2[:, :, 0, 0])
    dW1 = torch.einsum("bchw,bdhw->cd", G1, x).reshape(W1.shape)
    db1 = G1.sum((0, 2, 3))
    out = m.training_step(batch)
    torch.manual_seed(1)
    m.backward(out)
    for p, g in zip(shared, [dW1, db1, dW2, db2]):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)
    for t in m.task_names:
        for p, g in zip(m.model.heads[t].parameters(), heads[t]):
            torch.testing.assert_close(p.grad, g)
    cos = float(Jz[0].flatten() @ Jz[1].flatten() / (Jz[0].norm() * Jz[1].norm()))
    assert out.logs["cos/a-b"] == pytest.approx(cos, abs=1e-5)


@pytest.mark.parametrize("per_task", [False, True])
def test_nash_mtl_heads_get_alpha_times_their_gradient(per_task):
    """As the official code's backward of Σ α_i L_i: head i (and, with per-task encoder parts,
    those too) gets α_i ∇L_i with the solver's α (before the norm clip), while the shared
    parameters get TorchJD's (clipped) aggregate."""
    need_solvers("nash_mtl")
    m = make("nash_mtl", per_task=per_task, max_norm=0.0)
    batch = toy_batch()
    batch["b"] = 5 * batch["b"]  # tasks of unlike gradient norms: unlike α
    enc = m.model.encoder
    x = batch["image"]
    feats = enc(x).final
    zs = feats if isinstance(feats, dict) else {t: feats for t in m.task_names}
    losses = {t: m.tasks[t].loss(m.model.heads[t](zs[t], x.shape[-2:]), batch[t]) for t in m.task_names}
    heads = {t: torch.autograd.grad(losses[t], list(m.model.heads[t].parameters()), retain_graph=True)
             for t in m.task_names}
    specific = [p for p in enc.parameters() if all(p is not q for q in enc.shared_parameters())]
    spec = {t: torch.autograd.grad(losses[t], specific, retain_graph=True, allow_unused=True) if specific else ()
            for t in m.task_names}
    for p in m.model.parameters():
        p.grad = None
    out = m.training_step(batch)
    m.backward(out)
    alpha = torch.as_tensor(m.aggregator.weighting.prvs_alpha, dtype=torch.float32)
    assert out.logs["weight/a"] == pytest.approx(float(alpha[0]), rel=1e-5)  # no clip: the same α
    assert float(alpha.min()) > 0 and abs(float(alpha[0]) - 1) > 1e-3  # a real weight, not 1
    for i, t in enumerate(m.task_names):
        for p, g in zip(m.model.heads[t].parameters(), heads[t]):
            torch.testing.assert_close(p.grad, alpha[i] * g, atol=1e-6, rtol=1e-5)
    for k, p in enumerate(specific):
        want = sum(alpha[i] * spec[t][k] for i, t in enumerate(m.task_names) if spec[t][k] is not None)
        torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-5)
    assert per_task == bool(specific)


def test_other_methods_keep_plain_head_gradients():
    m = make("imtl_g")
    assert m.head_weights(torch.tensor([0.3, 0.7])) is None
    need_solvers("nash_mtl")
    assert make("nash_mtl", heads="plain").head_weights(torch.tensor([0.3, 0.7])) is None


def test_mgda_ub_equals_backward_of_the_weighted_losses():
    # MGDA-UB: α from the feature gradients, then one backward of Σ α_i L_i.
    m = make("mgda", grad_on="features")
    batch = toy_batch()
    _, _, Jz, _ = _manual(m, batch)
    _, alpha, _ = m.aggregate([Jz.flatten(1)])
    ref = make("mgda", grad_on="features")
    out = ref.training_step(batch)
    sum(alpha[i] * out.losses[t] for i, t in enumerate(ref.task_names)).backward()
    expected = _grads(ref.model.encoder.shared_parameters())
    out = m.training_step(batch)
    m.backward(out)
    torch.testing.assert_close(_grads(m.model.encoder.shared_parameters()), expected, atol=1e-5, rtol=1e-4)


def test_task_specific_paths_params_supported_features_unsupported():
    with pytest.raises(UserError, match="unsupported") as exc:
        make("pcgrad", per_task=True, grad_on="features")
    assert "grad_on=params" in exc.value.hint
    m = make("mgda", per_task=True, grad_on="params")
    batch = toy_batch()
    enc = m.model.encoder
    x = batch["image"]
    feats = enc(x).final
    losses = {t: m.tasks[t].loss(m.model.heads[t](feats[t], x.shape[-2:]), batch[t]) for t in m.task_names}
    shared = enc.shared_parameters()
    J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
                     for t in m.task_names])
    gates = {t: torch.autograd.grad(losses[t], list(enc.gates[t].parameters()), retain_graph=True)
             for t in m.task_names}
    expected, _, _ = m.aggregate([J])
    out = m.training_step(batch)
    m.backward(out)
    torch.testing.assert_close(_grads(shared), expected[0], atol=1e-5, rtol=1e-4)
    for t in m.task_names:  # each task's gate: its own task's gradient
        for p, g in zip(enc.gates[t].parameters(), gates[t]):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_config_validation_and_missing_solver(monkeypatch):
    with pytest.raises(UserError, match=r"method\.grad_on must be one of: params, features; got weights"):
        make("pcgrad", grad_on="weights")
    with pytest.raises(UserError, match=r"method\.jac_chunk_size must be a non-negative number \(>= 0\); got -1"):
        make("pcgrad", jac_chunk_size=-1)
    # a subclass that redefines grad_on's default keeps its choices
    for name in ("graddrop", "imtl_g"):
        with pytest.raises(UserError, match=r"method\.grad_on must be one of: params, features"):
            make(name, grad_on="weights")
    with pytest.raises(UserError, match=r"method\.leak must be in \[0, 1\]; got 1\.5"):
        make("graddrop", leak=1.5)
    from mtlbench.methods import _gradient

    monkeypatch.setattr(_gradient, "find_spec", lambda name: None if name == "ecos" else object())
    with pytest.raises(UserError, match="ecos") as exc:
        make("nash_mtl")
    assert ".[solvers]" in exc.value.hint and "not supported" in str(exc.value)


# ---------------------------------------------------------------------------
# FAMO
# ---------------------------------------------------------------------------

from mtlbench.methods.famo import famo_delta, famo_logit_grad, famo_objective  # noqa: E402


def test_famo_objective_gradient_is_a_convex_combination():
    theta = torch.tensor([0.3, -1.2], requires_grad=True)
    losses = torch.stack([(theta ** 2).sum() + 0.5, (theta[0] - 2) ** 2 + 0.1])
    z = torch.tensor([0.7, 0.3])
    obj, w = famo_objective(losses, z, min_loss=0.05, eps=1e-8)
    d = losses.detach() - 0.05 + 1e-8
    c = 1 / (z / d).sum()
    torch.testing.assert_close(w, c * z / d)
    assert float(w.sum()) == pytest.approx(1.0)
    per_task = [torch.autograd.grad(losses[i], theta, retain_graph=True)[0] for i in range(2)]
    g = torch.autograd.grad(obj, theta)[0]
    torch.testing.assert_close(g, w[0] * per_task[0] + w[1] * per_task[1])


def test_famo_logit_grad_is_the_softmax_vjp():
    xi = torch.tensor([0.2, -0.5, 1.0], requires_grad=True)
    delta = torch.tensor([0.3, 0.1, -0.2])
    z = torch.softmax(xi, 0)
    expected = torch.autograd.grad(z, xi, grad_outputs=delta)[0]
    torch.testing.assert_close(famo_logit_grad(z.detach(), delta), expected)
    before, after = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.5])
    torch.testing.assert_close(famo_delta(before, after, eps=0.0), torch.log(torch.tensor([2.0, 2.0])))


def test_famo_weights_move_towards_the_slowest_task():
    # A step decreases task i's log-loss by rate_i * z_i: task 1 is five times slower.
    rate = torch.tensor([1.0, 0.2])
    xi = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3)
    history = []
    for _ in range(300):
        z = torch.softmax(xi.detach(), 0)
        delta = rate * z
        xi.grad = famo_logit_grad(z, delta)
        opt.step()
        history.append(torch.softmax(xi.detach(), 0))
    assert float(history[0][1]) > 0.5  # the first step already favours the slow task
    z = history[-1]
    assert float(z[1]) > 0.75  # balance (equal decrease) is at z ∝ 1/rate: z1 = 5/6
    assert float(z[1]) == pytest.approx(5 / 6, abs=0.06)


def _famo_loop(m, batches):
    """The trainer's step with the method's own optimiser specs: the model's step, then
    after_step (FAMO's extra forward), then the after-update step of the logits."""
    from mtlbench.config import TrainConfig
    from mtlbench.trainer import Optimisation, optimizer_step

    optim = Optimisation(m, TrainConfig(optimizer="adam", lr=0.05, weight_decay=0.0, scheduler="constant"), 100)
    records = []
    for step, batch in enumerate(batches):
        z = torch.softmax(m.logits.detach(), 0)
        out = optimizer_step(m, optim, batch, torch.device("cpu"), "fp32")
        at_model_step = None if m.logits.grad is None else m.logits.grad.clone()
        logits_after_model_step = m.logits.detach().clone()
        m.after_step(step, batch)
        records.append({"grad_at_model_step": at_model_step, "logit_grad": m.logits.grad.clone(),
                        "losses": out.losses, "z": z, "logits_after_model_step": logits_after_model_step})
        optim.step_after_update()
    return records


def test_famo_method_follows_the_step_rule_and_algorithm_1_timing():
    m = make("famo")
    specs = {s.name: s for s in m.optimizers()}
    assert specs["famo_logits"].kind == "adam" and not specs["famo_logits"].scheduled
    assert specs["famo_logits"].lr == 0.025 and specs["famo_logits"].weight_decay == 1e-3
    assert specs["famo_logits"].after_update and not specs["model"].after_update
    assert id(m.logits) not in {id(p) for p in specs["model"].parameters()}
    batch = toy_batch()
    recs = _famo_loop(m, [batch, batch])
    # the model's backward leaves ξ alone, and the model's step does not move it
    assert recs[0]["grad_at_model_step"] is None
    torch.testing.assert_close(recs[0]["logits_after_model_step"], torch.zeros(2))
    # ξ's gradient of step 0 is δ of step 0 (the losses before and after the model's step,
    # on the same batch), applied right away as in Algorithm 1 (no lag)
    before = torch.stack([recs[0]["losses"][t].detach() for t in m.task_names])
    after = torch.stack([recs[1]["losses"][t].detach() for t in m.task_names])
    expected = famo_logit_grad(recs[0]["z"], famo_delta(before, after))
    torch.testing.assert_close(recs[0]["logit_grad"], expected, atol=1e-6, rtol=1e-5)
    assert not torch.equal(recs[1]["z"], recs[0]["z"])  # step 1 already uses the updated weights


def test_famo_after_step_leaves_batchnorm_statistics_alone():
    m = make("famo")
    bn = nn.BatchNorm2d(4)
    m.model.encoder.shared = nn.Sequential(nn.Conv2d(4, 4, 1), bn)
    batch = toy_batch()
    out = m.training_step(batch)
    m.backward(out)
    stats = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    assert int(stats[2]) == 1
    deltas = m.after_step(0, batch)
    assert set(deltas) == {"famo/delta/a", "famo/delta/b"}
    for now, before in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats):
        assert torch.equal(now, before)


# ---------------------------------------------------------------------------
# end to end: one smoke run of every method through the CLI and the trainer
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", [*GRADIENT_METHODS, "famo"])
def test_smoke_run_through_the_trainer(method, tmp_path):
    from mtlbench.cli import main

    need_solvers(method)
    rc = main(["run", "--method", method, "--backbone", "vit_tiny", "--preset", "smoke",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    records = [p for p in tmp_path.rglob("*.json") if p.parent.name == method]
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["method"] == method and rec["metrics"]
    steps = [json.loads(line) for line in Path(str(records[0])[:-5] + ".steps.jsonl").read_text().splitlines()]
    assert steps, "per-step logs"
    keys = set(steps[0])
    if method == "famo":
        assert {"weight/semseg", "weight/depth", "weight/normal"} <= keys
        assert rec["method_info"]["final_weights"]["semseg"] != pytest.approx(1 / 3, abs=1e-9)
    else:
        assert {"cos/semseg-depth", "cos/depth-normal", "grad_norm/aggregated"} <= keys
        for v in steps[0].values():
            assert isinstance(v, (int, float))


def test_benchmark_smoke_mode_runs(capsys):
    mod = runpy.run_path(str(ROOT / "benchmarks" / "bench_gradient_step.py"))
    mod["main"](["--smoke", "--methods", "baseline,pcgrad,famo"])
    text = capsys.readouterr().out
    assert "pcgrad[params]" in text and "pcgrad[features]" in text and "famo" in text
    assert "ratio" in text and "GFLOP" in text


# -- MGDA's exact min-norm solve (issue 24) ------------------------------------------------------

def _brute_min_norm(G, n=400):
    """The min-norm point over a fine grid of the 3-simplex (for checking the exact solve)."""
    best, val = None, float("inf")
    for i in range(n + 1):
        for j in range(n + 1 - i):
            a = torch.tensor([i / n, j / n, (n - i - j) / n], dtype=torch.float64)
            v = float(a @ G @ a)
            if v < val:
                best, val = a, v
    return best, val


@pytest.mark.parametrize("J, exact", [
    # a face: g3 = g1 + g2 points away from the min-norm point of g1, g2 (exact weight 0)
    ([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.5, 0.5, 0.0]),
    # a vertex: g1 is the shortest and every other gradient projects beyond it
    ([[0.1, 0.0], [1.0, 0.0], [2.0, 1.0]], [1.0, 0.0, 0.0]),
    # interior in 3-D: the origin is in the convex hull of g1, g2, g3 (weights 1/3 each)
    ([[1.0, 0.0], [-0.5, 3 ** 0.5 / 2], [-0.5, -(3 ** 0.5) / 2]], [1 / 3, 1 / 3, 1 / 3]),
])
def test_mgda_exact_solve_hits_the_exact_points(J, exact):
    from mtlbench.methods.mgda import min_norm_weights

    J = torch.tensor(J, dtype=torch.float64)
    w = min_norm_weights(J @ J.T)
    assert w.tolist() == pytest.approx(exact, abs=1e-12)
    # and its norm is no larger than the best point of a fine grid of the simplex
    _, grid = _brute_min_norm(J @ J.T)
    assert float(w @ (J @ J.T) @ w) <= grid + 1e-12


def test_mgda_exact_solve_on_random_gramians_satisfies_kkt():
    """For random 2-6 task Gramians (some rank-deficient): α on the simplex and the KKT conditions
    of min αᵀGα there, (Gα)_i = λ on the support and >= λ off it (to 1e-9)."""
    from mtlbench.methods.mgda import min_norm_weights

    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        m = 2 + trial % 5
        n = 1 + trial % 4  # n < m: rank-deficient Gramians too
        J = torch.randn(m, n, generator=g, dtype=torch.float64)
        G = J @ J.T
        a = min_norm_weights(G)
        assert (a >= 0).all() and float(a.sum()) == pytest.approx(1.0, abs=1e-12)
        grad = G @ a
        lam = float(a @ grad)
        on = a > 1e-9
        assert torch.allclose(grad[on], torch.full_like(grad[on], lam), atol=1e-9)
        assert (grad[~on] >= lam - 1e-9).all()


def test_mgda_frank_wolfe_remains_an_option_and_falls_short():
    from mtlbench.config import build_dataclass
    from mtlbench.methods.mgda import MGDAConfig

    J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    for solver, short in (("exact", False), ("frank_wolfe", True)):
        vec, weights, _ = aggregate("mgda", J.tolist(), solver=solver)
        assert (abs(float(weights[2])) > 1e-4) is short, (solver, weights)
    assert build_dataclass(MGDAConfig, {}, "method", {}).solver == "exact"
