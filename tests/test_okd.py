"""OKD-MTL (methods/okd.py): Eq. 2 and 3 by hand (both profiles), the stop-gradient,
warm-up before the run's schedule, the script profile's per-epoch OTW, ω optimiser
and single-task freeze, every variant end to end on smoke data, resume in every
phase, frozen teachers from an `stl` run, and OKD-MTL without AFD and OTW training
its multi-task network exactly as the baseline.

Formula and gradient tests run on a tiny convolutional backbone built here
(milliseconds); end-to-end tests train a shrunk ``vit_tiny`` on the smoke preset.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtlbench.api import TrainContext
from mtlbench.cli import main
from mtlbench.config import resolve
from mtlbench.errors import UserError
from mtlbench.runs import RunContext
from mtlbench.tasks import Depth, Normal, SemSeg
from mtlbench.trainer import Optimisation, TrainOptions, build, optimizer_step, train

from mtlbench.methods.okd import (AFD_VARIANTS, OKD, OKDConfig, afd_loss, otw_epoch_weights,
                                  otw_weights)

TASKS = ("semseg", "depth", "normal")
# Smoke data, one step per epoch, a shrunk ViT (2 blocks of width 64) with small heads:
# end-to-end runs in seconds.
VIT_DEPTH = 2
SMALL = ["train.device=cpu", "train.batch_size=2", "train.max_steps_per_epoch=1",
         f"backbone.depth={VIT_DEPTH}", "backbone.embed_dim=64", "backbone.num_heads=2",
         "backbone.head_layers=1", "backbone.n_reg_queries=8", "backbone.reg_hidden=16"]


# ---------------------------------------------------------------------------
# the backbone of the formula and gradient tests: tests/conftest.py's convolutional
# toy with three layers (features AFD can distil), milliseconds per step
# ---------------------------------------------------------------------------

from conftest import ConvToyBackbone, ConvToyConfig  # noqa: E402


def _tasks():
    return {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}


def _okd(**kw) -> OKD:
    torch.manual_seed(0)
    tasks = _tasks()
    kw.setdefault("profile", "text")  # most formula tests are the text's; the script's have their own
    cfg = OKDConfig(**kw)
    cfg.validate()
    return OKD(cfg, tasks, ConvToyBackbone(ConvToyConfig(channels=4, n_layers=3, head_mode="bilinear"), tasks))


def _batch(b=2, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, h, w, generator=g),
            "semseg": torch.randint(-1, 13, (b, h, w), generator=g),
            "depth": torch.rand(b, 1, h, w, generator=g) + 0.1,
            "normal": F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)}


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------
# OTW (Eq. 3)
# ---------------------------------------------------------------------------

def test_otw_weights_match_hand_computation():
    mtl, stl = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 1.0, 1.0])
    lam = otw_weights(mtl, stl, T=0.1)
    m = [2.0, 2.0, 0.5]  # L_MTL / L_STL
    z = sum(math.exp(v / 0.1) for v in m)
    want = [3 * math.exp(v / 0.1) / z for v in m]
    assert lam.tolist() == pytest.approx(want, rel=1e-5)
    assert float(lam.sum()) == pytest.approx(3.0)


def test_otw_sums_to_n_tasks_larger_T_flattens_and_carries_no_gradient():
    mtl = torch.tensor([0.9, 1.5, 0.4, 2.0], requires_grad=True)
    stl = torch.tensor([1.0, 1.0, 0.5, 1.2], requires_grad=True)
    spreads = []
    for T in (0.01, 0.05, 0.1, 0.3, 1.0, 1e6):
        lam = otw_weights(mtl, stl, T)
        assert float(lam.sum()) == pytest.approx(4.0, rel=1e-5)
        assert not lam.requires_grad
        spreads.append(float(lam.max() - lam.min()))
    assert all(a > b for a, b in zip(spreads, spreads[1:])), spreads
    assert spreads[-1] < 1e-5  # T -> inf: every λ_i -> 1
    # a task whose single-task loss is 0 (no labelled pixel) does not give NaN
    lam = otw_weights(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]), 0.1)
    assert torch.isfinite(lam).all()


# ---------------------------------------------------------------------------
# AFD (Eq. 2)
# ---------------------------------------------------------------------------

def test_afd_loss_for_known_features_is_per_layer_mean_summed_over_layers():
    full = lambda v, shape=(2, 3, 4, 5): torch.full(shape, float(v))  # noqa: E731
    f_mtl = [full(2.0), full(1.0, (2, 3, 2, 2))]
    f_stl = [[full(1.0), full(3.0, (2, 3, 2, 2))],
             [full(2.0), full(-1.0, (2, 3, 2, 2))]]
    w = torch.tensor([[0.5, 1.0], [1.0, 2.0]])
    # layer 0: target 0.5*1 + 1*2 = 2.5, (2 - 2.5)^2 = 0.25; layer 1: 3 - 2 = 1, (1 - 1)^2 = 0
    assert float(afd_loss(f_mtl, f_stl, w)) == pytest.approx(0.25)
    # the mean does not grow with the number of elements
    big = [full(2.0, (8, 3, 16, 16))]
    assert float(afd_loss(big, [[full(1.0, (8, 3, 16, 16))], [full(2.0, (8, 3, 16, 16))]],
                          w[:, :1])) == pytest.approx(0.25)


def test_afd_weights_of_each_variant():
    omega = torch.tensor([[0.2, 0.9, 0.1], [0.5, 0.3, 0.1], [0.1, 0.2, 0.7]])
    soft = torch.softmax(omega, 0)
    for variant in AFD_VARIANTS:
        m = _okd(afd=variant)
        if m.omega is not None:
            with torch.no_grad():
                m.omega.copy_(omega[:, -m.omega.shape[1]:])
        w = m.afd_weights()
        if variant == "none":
            assert w is None and m.omega is None and m.afd_layers == []
            continue
        if variant == "ours":
            assert torch.equal(w, omega) and m.afd_layers == [0, 1, 2]
        elif variant == "equal":
            assert m.omega is None and torch.equal(w, torch.ones(3, 3))
        elif variant == "softmax":
            assert torch.allclose(w, soft) and torch.allclose(w.sum(0), torch.ones(3))
        elif variant == "select_skip":
            assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
            (w * torch.arange(9.0).view(3, 3)).sum().backward()  # straight-through: ω learns
            assert m.omega.grad is not None and m.omega.grad.abs().sum() > 0
        elif variant == "last_layer":
            assert m.afd_layers == [2] and torch.equal(w, omega[:, 2:])


@pytest.mark.parametrize("variant", [v for v in AFD_VARIANTS])
def test_logged_afd_matches_eq2_by_hand(variant):
    m = _okd(afd=variant, otw=False)
    m.train()
    batch = _batch()
    x = batch["image"]
    with torch.no_grad():
        f_stl = {t: m.stl_nets[t](x, return_features=True)[1].layers for t in TASKS}
        f_mtl = m.model(x, return_features=True)[1].layers
        w = m.afd_weights()
        w = None if w is None else w.detach()
    want = 0.0
    for j, l in enumerate(m.afd_layers):  # Eq. 2, ‖·‖² as the mean over elements
        target = sum(w[i, j] * f_stl[t][l] for i, t in enumerate(TASKS))
        want += float(((f_mtl[l] - target) ** 2).mean())
    out = m.training_step(batch)
    assert out.logs["afd"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    # otw off: λ = 1, the loss is L_AFD + Σ L_MTL
    assert all(out.logs[f"lambda/{t}"] == 1.0 for t in TASKS)
    assert float(out.loss.detach()) == pytest.approx(want + sum(float(out.losses[t].detach()) for t in TASKS), rel=1e-5)


def test_step_uses_otw_weights_and_logs_everything():
    m = _okd()
    out = m.training_step(_batch())
    mtl = torch.tensor([out.logs[f"mtl/{t}"] for t in TASKS])
    stl = torch.tensor([out.logs[f"stl/{t}"] for t in TASKS])
    lam = otw_weights(mtl, stl, 0.1)
    assert [out.logs[f"lambda/{t}"] for t in TASKS] == pytest.approx(lam.tolist(), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(out.logs["afd"] + float((lam * mtl).sum()), rel=1e-5)
    assert set(out.losses) == set(TASKS)


# ---------------------------------------------------------------------------
# the stop-gradient, warm-up
# ---------------------------------------------------------------------------

def test_single_task_gradients_are_exactly_their_own_task_loss():
    m = _okd()
    m.train()
    batch = _batch()
    ref = {t: copy.deepcopy(m.stl_nets[t]) for t in TASKS}
    m.zero_grad(set_to_none=True)  # what the trainer does before training_step
    out = m.training_step(batch)
    assert out.logs["afd"] > 0
    stl_params = list(m.stl.parameters())
    # L_AFD + Σ λ L_MTL does not depend on any single-task parameter at all
    grads = torch.autograd.grad(out.loss, stl_params, allow_unused=True, retain_graph=True)
    assert all(g is None for g in grads)
    m.backward(out)
    for t in TASKS:
        net = ref[t]
        loss = m.tasks[t].loss(net(batch["image"])[t], batch[t])
        loss.backward()
        for (name, p), q in zip(m.stl_nets[t].named_parameters(), net.parameters()):
            assert p.grad is not None and torch.equal(p.grad, q.grad), f"{t}: {name}"
    assert all(p.grad is not None for p in m.model.parameters())
    assert m.omega.grad is not None and m.omega.grad.abs().sum() > 0


def test_grad_clip_bounds_each_network_on_its_own():
    from mtlbench.trainer import clip_gradients  # what optimizer_step uses with train.grad_clip

    m = _okd()
    m.train()
    m.zero_grad(set_to_none=True)
    m.backward(m.training_step(_batch()))
    for p in m.model.parameters():  # a spike in the multi-task network
        p.grad.mul_(1000.0)
    groups = m.clip_groups()
    assert [len(g) for g in groups] == [len(_params(m.model)) + 1] + [len(_params(m.stl_nets[t])) for t in TASKS]
    norms = [float(torch.nn.utils.get_total_norm([p.grad for p in g])) for g in groups]
    limit = 2 * max(norms[1:])
    assert norms[0] > limit  # only the multi-task network is over the limit
    stl_before = [p.grad.clone() for g in groups[1:] for p in g]
    clip_gradients(groups, limit)
    assert float(torch.nn.utils.get_total_norm([p.grad for p in groups[0]])) == pytest.approx(limit, rel=1e-4)
    # the single-task networks' steps are untouched (one joint norm would have shrunk them)
    assert all(torch.equal(p.grad, q) for p, q in zip([p for g in groups[1:] for p in g], stl_before))


def test_step_under_bf16_autocast():
    # the trainer runs training_step under autocast (bf16 on CUDA); the in-step
    # single-task backward and the float32 AFD must cope
    m = _okd()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.training_step(_batch())
    m.backward(out)
    assert math.isfinite(out.logs["afd"]) and out.loss.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def _trainer_steps(m, epochs: int, seeds=None, tcfg=None):
    """Drive a method as the trainer does (leading epochs first), one step per epoch."""
    from mtlbench.config import TrainConfig

    tcfg = tcfg or TrainConfig(lr=1e-2, epochs=epochs)
    lead = m.leading_epochs(epochs)
    m.on_train_start(TrainContext(epochs=epochs, steps_per_epoch=1, device=torch.device("cpu"),
                                  leading_epochs=lead, train_cfg=tcfg))
    optim = Optimisation(m, tcfg, epochs, lead)
    m.train()
    for epoch in range(lead + epochs):
        m.on_epoch_start(epoch)
        out = optimizer_step(m, optim, _batch(seed=epoch if seeds is None else seeds[epoch]),
                             torch.device("cpu"), "fp32")
        optim.schedule(leading=epoch < lead)
        yield epoch, lead, out, m.on_epoch_end(epoch, {t: float(v.detach()) for t, v in out.losses.items()})


def test_warmup_trains_only_the_single_task_networks_before_the_runs_schedule():
    m = _okd(warmup_epochs=2, warmup_max_fraction=1.0)
    assert m.leading_epochs(4) == 2  # on top of the run's 4 epochs, not carved out of them
    mtl0, omega0, stl0 = _params(m.model), m.omega.detach().clone(), _params(m.stl)
    phases = []
    for epoch, lead, out, logs in _trainer_steps(m, 4):
        assert set(out.losses) == set(TASKS)
        phases.append(logs["phase"])
        if epoch < lead:
            assert out.loss is None and not any(k.startswith(("mtl/", "lambda/")) for k in out.logs)
            assert _same(_params(m.model), mtl0), "the multi-task network must not change in warm-up"
            assert torch.equal(m.omega.detach(), omega0)
            assert not _same(_params(m.stl), stl0)
    assert phases == ["warmup", "warmup", "distill", "distill", "distill", "distill"]
    assert not _same(_params(m.model), mtl0) and not torch.equal(m.omega.detach(), omega0)


@pytest.mark.parametrize("epochs,want", [(1, 0), (2, 0), (4, 1), (8, 2), (20, 5), (200, 5)])
def test_warmup_is_capped_to_a_share_of_the_run(epochs, want):
    assert _okd().effective_warmup(epochs) == want  # default: 5 epochs, at most 25% of the run
    assert _okd(warmup_max_fraction=1.0).effective_warmup(epochs) == min(5, epochs)
    assert _okd(teachers="pretrained").effective_warmup(epochs) == 0


# ---------------------------------------------------------------------------
# the script profile
# ---------------------------------------------------------------------------

def test_script_afd_normalises_per_token_sums_channels_and_averages_positions():
    # one layer, two tasks, a 1x2 map with 2 channels: every number by hand
    fm = torch.tensor([[[[3.0, 0.0]], [[4.0, 2.0]]]])          # positions (3,4) and (0,2)
    f1 = torch.tensor([[[[1.0, 0.0]], [[0.0, 5.0]]]])          # (1,0) and (0,5)
    f2 = torch.tensor([[[[0.0, 3.0]], [[2.0, 4.0]]]])          # (0,2) and (3,4)
    w = torch.tensor([[0.5], [0.25]])
    eps = 1e-6

    def n(v):
        v = torch.tensor(v)
        return v / math.sqrt(float((v ** 2).sum()) + eps)

    d0 = n([3.0, 4.0]) - (0.5 * n([1.0, 0.0]) + 0.25 * n([0.0, 2.0]))
    d1 = n([0.0, 2.0]) - (0.5 * n([0.0, 5.0]) + 0.25 * n([3.0, 4.0]))
    want = (float((d0 ** 2).sum()) + float((d1 ** 2).sum())) / 2  # sum over channels, mean over positions
    got = afd_loss([fm], [[f1], [f2]], w, normalize=True)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # summed over layers: the same layer twice doubles it; scaling features changes nothing
    assert float(afd_loss([fm, 10 * fm], [[f1, 3 * f1], [f2, 7 * f2]], torch.cat([w, w], 1),
                          normalize=True)) == pytest.approx(2 * want, rel=1e-5)
    # the text's AFD on the same tensors is the plain mean squared error
    raw = float(((fm - (0.5 * f1 + 0.25 * f2)) ** 2).mean())
    assert float(afd_loss([fm], [[f1], [f2]], w)) == pytest.approx(raw, rel=1e-6)


def test_otw_per_epoch_against_hand_values_caps_and_nan():
    T = 0.1
    assert otw_epoch_weights([1.0, 2.0], [1.0, 1.0], 0, T, 2) == [1.0, 1.0]  # epoch 0: all 1
    assert otw_epoch_weights(None, None, 3, T, 2) == [1.0, 1.0]  # no previous epoch
    # epoch 1: ratios capped at 1, so 0.02 and 5 -> 0.02 and 1: exp(0.2)=1.2214, exp(10) capped at 10
    lam = otw_epoch_weights([0.02, 5.0], [1.0, 1.0], 1, T, 2)
    t0 = math.exp(0.2)
    assert lam == pytest.approx([2 * t0 / (t0 + 10), 2 * 10 / (t0 + 10)])
    # epoch 2: no ratio cap; a NaN ratio (0/0) counts as the cap
    lam = otw_epoch_weights([0.01, 0.0, 3.0], [0.1, 0.0, 1.0], 2, T, 3)
    t0 = math.exp(1.0)  # 0.1 / 0.1
    assert lam == pytest.approx([3 * t0 / (t0 + 20), 3 * 10 / (t0 + 20), 3 * 10 / (t0 + 20)])
    # at T = 0.1 every ratio above 0.1 ln 10 ~ 0.23 hits the cap: equal weighting
    assert otw_epoch_weights([0.24, 0.7, 1.3], [1.0, 1.0, 1.0], 5, T, 3) == pytest.approx([1.0, 1.0, 1.0])
    assert otw_epoch_weights([0.2, 0.7, 1.3], [1.0, 1.0, 1.0], 5, T, 3)[0] < 1.0


def test_script_profile_uses_epoch_otw_from_the_previous_epochs_means():
    m = _okd(profile="script", warmup_epochs=0)
    rows = list(_trainer_steps(m, 3))
    for epoch, lead, out, logs in rows:
        lam = [out.logs[f"lambda/{t}"] for t in TASKS]
        if epoch == 0:
            assert lam == [1.0, 1.0, 1.0]
        else:  # from the previous epoch's logged mean losses (one step per epoch here)
            prev = rows[epoch - 1][2].logs
            want = otw_epoch_weights([prev[f"mtl/{t}"] for t in TASKS], [prev[f"stl/{t}"] for t in TASKS],
                                     epoch, 0.1, 3)
            assert lam == pytest.approx(want, rel=1e-6)
            assert logs["lambda"] == pytest.approx(dict(zip(TASKS, want)), rel=1e-6)


def test_script_profile_gives_omega_its_own_adam_and_the_text_shares_the_runs():
    from mtlbench.config import TrainConfig

    m = _okd(profile="script")
    specs = {s.name: s for s in m.optimizers()}
    assert set(specs) == {"model", "omega", "stl"}
    om = specs["omega"]
    assert (om.kind, om.lr, om.weight_decay, om.scheduled) == ("adam", 1e-3, 5e-4, False)
    optim = Optimisation(m, TrainConfig(lr=1e-4, weight_decay=1e-5), 10)
    o = optim.optimizers["omega"]
    assert type(o) is torch.optim.Adam and o.param_groups[0]["lr"] == 1e-3
    assert o.param_groups[0]["weight_decay"] == 5e-4 and "omega" not in optim.schedulers
    assert float(m.omega.detach().min()) >= 0 and 2 / 3 < float(m.omega.detach().max()) <= 1
    text = {s.name: s for s in _okd(profile="text").optimizers()}
    assert set(text) == {"model", "stl"} and text["model"].groups[1]["weight_decay"] == 0.0
    assert float(_okd(profile="text").omega.detach().max()) <= 2 / 3  # U(0, 2/N_t)


def test_single_task_networks_freeze_after_their_share_but_keep_feeding_afd():
    m = _okd(profile="script", warmup_epochs=0)  # 6 epochs, single-task networks train 2 (1/3)
    assert m.stl_epochs(6) == 2
    seen = []
    for epoch, lead, out, logs in _trainer_steps(m, 6):
        seen.append((logs["phase"], _params(m.stl), out.logs["afd"], out.logs["stl/semseg"]))
    phases = [p for p, *_ in seen]
    assert phases == ["distill"] * 2 + ["distill_frozen_stl"] * 4
    for (_, before, _, _), (_, after, afd, stl_loss) in zip(seen[1:], seen[2:]):
        assert _same(before, after), "a frozen single-task network changed"
        assert afd > 0 and math.isfinite(stl_loss)  # still distilled from, still evaluated
    assert not _same(seen[0][1], seen[1][1])  # but it trained before the freeze


def test_okd_without_afd_and_otw_trains_its_network_exactly_as_the_baseline(tmp_path):
    """Warm-up comes before the run's schedule: with AFD and OTW off, OKD-MTL's deployable
    network sees the baseline's batches, learning rates and gradients, so it ends identical
    (dropout off, so the single-task networks' forwards draw no random numbers)."""
    common = [*SMALL, "train.epochs=3", "train.max_steps_per_epoch=2", "backbone.head_dropout=0.0"]
    base = resolve(preset="smoke", flags=[("method.name", "baseline", "--method")], sets=common)
    okd = resolve(preset="smoke", flags=[("method.name", "okd", "--method")],
                  sets=[*common, "method.afd=none", "method.otw=false", "method.warmup_epochs=1",
                        "method.warmup_max_fraction=0.5"])
    rb = train(base, TrainOptions(out=tmp_path, quiet=True))
    ro = train(okd, TrainOptions(out=tmp_path, quiet=True))
    assert ro["schedule"]["leading_epochs"] == 1
    assert ro["metrics"] == rb["metrics"]
    sb = torch.load(tmp_path / rb["checkpoint"], weights_only=False)["model"]
    so = torch.load(tmp_path / ro["checkpoint"], weights_only=False)["model"]
    for k, v in sb.items():
        assert torch.equal(so[k], v), k


@pytest.mark.parametrize("sets,needle", [
    (["method.afd=bogus"], "method.afd"),
    (["method.T=0"], "method.T"),
    (["method.warmup_epochs=-1"], "method.warmup_epochs"),
    (["method.teacher_run=x.json"], "method.teachers=pretrained"),
])
def test_config_errors_name_the_key(sets, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        resolve(preset="smoke", flags=[("method.name", "okd", "--method")], sets=sets)


# ---------------------------------------------------------------------------
# end to end on smoke data (vit_tiny)
# ---------------------------------------------------------------------------

def _record(out: Path, method: str = "okd") -> dict:
    recs = list((out / "runs").rglob(f"{method}/*.json"))
    assert len(recs) == 1, recs
    rec = json.loads(recs[0].read_text())
    rec["_path"] = str(recs[0])
    return rec


def _log(rec: dict, key: str) -> list[dict]:
    path = Path(rec["_path"]).parent / rec["history"][key]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("sets", [
    [], ["method.profile=text"], ["method.afd=equal", "method.otw=false"], ["method.afd=softmax"],
    ["method.afd=select_skip"], ["method.afd=last_layer", "method.T=0.3", "method.profile=text"],
    ["method.afd=none"],
], ids=["script", "text", "equal-no_otw", "softmax", "select_skip", "last_layer-text", "none"])
def test_each_variant_trains_on_smoke_data(sets, tmp_path):
    argv = ["run", "--method", "okd", "--backbone", "vit_tiny", "--preset", "smoke", "--quiet",
            "--out", str(tmp_path)]
    for s in [*SMALL, *sets]:
        argv += ["--set", s]
    assert main(argv) == 0
    rec = _record(tmp_path)
    afd = dict(s.split("=") for s in sets).get("method.afd", "ours")
    assert rec["config"]["method"]["afd"] == afd
    step = _log(rec, "steps_file")[0]
    for t in TASKS:
        for k in (f"mtl/{t}", f"stl/{t}", f"lambda/{t}"):
            assert math.isfinite(step[k]), k
    assert sum(step[f"lambda/{t}"] for t in TASKS) == pytest.approx(3.0, rel=1e-5)
    if "method.otw=false" in sets:
        assert all(step[f"lambda/{t}"] == 1.0 for t in TASKS)
    assert (step["afd"] == 0.0) == (afd == "none")
    logs = _log(rec, "epochs_file")[0]["logs"]
    assert logs["phase"] == "distill"  # smoke has one epoch: the warm-up is capped to 0
    if afd in ("ours", "softmax", "select_skip", "last_layer"):
        n_layers = 1 if afd == "last_layer" else VIT_DEPTH
        assert set(logs["omega"]) == set(TASKS)
        assert all(len(v) == n_layers for v in logs["omega"].values())
    else:
        assert "omega" not in logs
    assert set(rec["metrics"]) == set(TASKS) and set(rec["extra_metrics"]["stl"]) == set(TASKS)
    # the multi-task network + one single-task network per task: the deployable network plus
    # two more encoders and its heads again, so more than twice it at any backbone size
    assert rec["params"]["training_system"] > 2 * rec["params"]["deployable"]
    assert rec["method_info"]["warmup_epochs"] == 0


def _resume_cfg(profile):
    return resolve(preset="smoke", flags=[("method.name", "okd", "--method"),
                                          ("backbone.name", "vit_tiny", "--backbone")],
                   sets=[*SMALL, "train.epochs=3", "train.eval_every=0", "method.warmup_epochs=2",
                         "method.warmup_max_fraction=1.0", f"method.profile={profile}"])


class _Kill(Exception):
    pass


def _final_state(out: Path) -> dict:
    ckpt = next((out / "checkpoints").rglob("okd/*/final.pt"))
    return torch.load(ckpt, map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("profile", ["script", "text"])
def test_resume_in_every_phase_gives_the_uninterrupted_result(profile, tmp_path):
    cfg = _resume_cfg(profile)  # 2 warm-up epochs, then 3: script freezes the stl nets after 1
    ref = train(cfg, TrainOptions(out=tmp_path / "straight", quiet=True))
    ref_state = _final_state(tmp_path / "straight")
    phases = [e["logs"]["phase"] for e in _log(ref, "epochs_file")]
    want = (["warmup", "warmup", "distill", "distill_frozen_stl", "distill_frozen_stl"] if profile == "script"
            else ["warmup", "warmup", "distill", "distill", "distill"])
    assert phases == want

    out = tmp_path / "killed"
    for kill_after in (0, 2, 3):  # in warm-up, after the first joint epoch, in the frozen phase

        def on_epoch(epoch, entry, kill_after=kill_after):
            if epoch == kill_after:
                raise _Kill

        with pytest.raises(_Kill):
            train(cfg, TrainOptions(out=out, quiet=True, resume=kill_after > 0, on_epoch=on_epoch))
    rec = train(cfg, TrainOptions(out=out, quiet=True, resume=True))

    assert rec["metrics"] == ref["metrics"] and rec["extra_metrics"] == ref["extra_metrics"]
    assert _log(rec, "epochs_file") == _log(ref, "epochs_file") or \
        [e["logs"] for e in _log(rec, "epochs_file")] == [e["logs"] for e in _log(ref, "epochs_file")]
    assert [e["train_loss"] for e in _log(rec, "epochs_file")] == \
        [e["train_loss"] for e in _log(ref, "epochs_file")]
    assert _log(rec, "steps_file") == _log(ref, "steps_file")
    state = _final_state(out)
    assert state.keys() == ref_state.keys()
    for k in state:
        assert torch.equal(state[k], ref_state[k]), k


# ---------------------------------------------------------------------------
# frozen teachers from an stl run (Table 4's MTL-pretrained-AFD)
# ---------------------------------------------------------------------------

def test_pretrained_teachers_without_an_stl_run_give_the_command(tmp_path):
    cfg = resolve(preset="smoke", flags=[("method.name", "okd", "--method"),
                                         ("backbone.name", "vit_tiny", "--backbone")],
                  sets=["method.teachers=pretrained"])
    assert OKD.requires(cfg.method) == ["stl"]
    m = _okd(teachers="pretrained")
    with pytest.raises(UserError) as e:
        m.on_train_start(TrainContext(1, 1, torch.device("cpu"), RunContext(cfg, tmp_path)))
    msg = str(e.value)
    assert "mtlbench run --method stl --backbone vit_tiny" in msg and "--preset smoke" in msg
    assert "method.teacher_run" in msg


def test_pretrained_teachers_load_an_stl_run_and_stay_frozen(tmp_path):
    out = tmp_path / "res"
    common = ["--backbone", "vit_tiny", "--preset", "smoke", "--quiet", "--out", str(out)]
    for s in SMALL:
        common += ["--set", s]
    assert main(["run", "--method", "stl", *common]) == 0
    stl_rec = _record(out, "stl")
    stl_state = torch.load(out / stl_rec["checkpoint"], map_location="cpu", weights_only=False)["model"]

    assert main(["run", "--method", "okd", *common, "--set", "method.teachers=pretrained",
                 "--set", "method.otw=false"]) == 0
    rec = _record(out)
    state = _final_state(out)
    for k, v in stl_state.items():  # stl's model.nets.<t>.* are okd's stl.nets.<t>.*
        assert torch.equal(state[k.replace("model.", "stl.", 1)], v), k
    # the frozen teachers are the stl run's networks: the same metrics (up to float summation
    # order: the same weights on the same images, evaluated inside another process layout)
    for t, ms in stl_rec["metrics"].items():
        assert rec["extra_metrics"]["stl"][t] == pytest.approx(ms, rel=1e-5, abs=1e-6), t
    assert rec["method_info"]["teacher_record"] == stl_rec["id"]
    step = _log(rec, "steps_file")[0]
    assert step["afd"] > 0 and all(step[f"lambda/{t}"] == 1.0 for t in TASKS)

    # the same, naming the record explicitly: no search in the results dir
    path = next((out / "runs").rglob("stl/*.json"))
    cfg = resolve(preset="smoke", flags=[("method.name", "okd", "--method"),
                                         ("backbone.name", "vit_tiny", "--backbone")],
                  sets=[*SMALL, "method.teachers=pretrained", f"method.teacher_run={path}"])
    assert OKD.requires(cfg.method) == []
    s = build(cfg, with_data=False)
    s.method.on_train_start(TrainContext(1, 1, torch.device("cpu"), RunContext(cfg, tmp_path / "empty")))
    assert not any(p.requires_grad for p in s.method.stl.parameters())
    s.method.train()
    assert not s.method.stl.training and s.method.model.training
    loaded = s.method.state_dict()
    for k, v in stl_state.items():
        assert torch.equal(loaded[k.replace("model.", "stl.", 1)], v), k
