"""The plugin contract, parametrised over every registered method x backbone.

A newly registered method or backbone is tested here automatically, through the
trainer's own step function (:func:`mtlbench.trainer.optimizer_step`) and the
optimisers it builds from ``Method.optimizers()``: one step early in the run
and one late (so methods with phases show each), finite losses, every trainable
parameter in exactly one optimiser and given a gradient, ``clip_groups``
partitioning the optimised parameters, logs and extra state surviving a JSON /
checkpoint round trip, predictions of the right shapes, and the state
restoring a freshly built method exactly.  Combinations a method cannot run
are listed in :data:`UNSUPPORTED` with the reason; any other error fails.
"""
from __future__ import annotations

import io
import json
import math

import pytest
import torch

from conftest import shrink_sets  # noqa: E402
from mtlbench.api import TrainContext
from mtlbench.config import resolve
from mtlbench.errors import UserError
from mtlbench.registry import BACKBONES, METHODS
from mtlbench.runs import RunContext
from mtlbench.trainer import Optimisation, RunExists, TrainOptions, autocast_ctx, build, optimizer_step, train

#: (method, backbone) pairs that must refuse to build, and why (the error must say "unsupported")
UNSUPPORTED = {
    ("cross_stitch", "deeplabv3_mtan"): "MTAN encoders have task-specific paths: stitching is undefined",
    # their papers take gradients at the shared features (grad_on: features by default), and
    # MTAN's final features are one tensor per task; grad_on=params works there
    ("graddrop", "deeplabv3_mtan"): "no single shared representation for grad_on=features",
    ("imtl_g", "deeplabv3_mtan"): "no single shared representation for grad_on=features",
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: intra-op threads only add waiting

COMBOS = [(m, b) for m in METHODS.names() for b in BACKBONES.names()]
# Smoke-sized images: 32x48 is divisible by every backbone's size multiple (16, 8).
SMOKE = ["train.epochs=1", "train.batch_size=2", "train.max_steps_per_epoch=1"]


def _cfg(method, backbone, extra=()):
    shrink = shrink_sets(backbone)  # the backbone's test_overrides: its architecture, shrunk
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


def _json_roundtrip(obj):
    """Logs must be strict JSON (records and logs are): no NaN, only JSON types."""
    return json.loads(json.dumps(obj, allow_nan=False))


def _start(m, cfg, s, results_dir, epochs):
    lead = m.leading_epochs(epochs)
    m.on_train_start(TrainContext(epochs, 1, s.device, RunContext(cfg, results_dir), leading_epochs=lead,
                                  autocast=lambda: autocast_ctx(s.device, s.amp), train_cfg=cfg.train))
    return lead


@pytest.mark.parametrize("method,backbone", COMBOS, ids=[f"{m}-{b}" for m, b in COMBOS])
def test_contract(method, backbone, results_dir):
    cfg = _cfg(method, backbone)
    _ensure_requirements(cfg, results_dir)
    if (method, backbone) in UNSUPPORTED:
        with pytest.raises(UserError) as err:
            build(cfg)
        assert "unsupported" in str(err.value).lower(), str(err.value)
        return
    check_contract(cfg, results_dir)


def check_contract(cfg, results_dir):
    """The whole contract for one resolved config (also run per weighting x architecture by
    tests/test_architectures.py)."""
    s = build(cfg)
    m = s.method
    epochs = 100
    lead = _start(m, cfg, s, results_dir, epochs)
    optim = Optimisation(m, cfg.train, epochs, lead)

    # every trainable parameter in exactly one optimiser, and nothing else in them
    in_opt = [id(p) for p in optim.parameters()]
    assert len(in_opt) == len(set(in_opt)), "a parameter is in two optimisers"
    trainable = {id(p): n for n, p in m.named_parameters() if p.requires_grad}
    orphans = [n for i, n in trainable.items() if i not in set(in_opt)]
    assert not orphans, f"trainable parameters in no optimiser: {orphans[:5]}"
    assert set(in_opt) <= set(trainable), "an optimiser holds a frozen or foreign parameter"

    # train.grad_clip's sets cover the optimisers' parameters, each exactly once
    in_clip = [id(p) for params in m.clip_groups() for p in params]
    assert sorted(in_clip) == sorted(in_opt), "clip_groups must partition the optimisers' parameters"

    batch = _batch(s)
    got_grad: set[int] = set()
    logs = []
    step = 0
    for epoch in (0, lead + epochs - 1):
        m.train()
        m.on_epoch_start(epoch)
        seen = {}

        def snapshot():  # the gradients the trainer steps with (its step zeroes them first)
            seen.update({id(p): p.grad is not None for p in optim.parameters()})

        orig_step = optim.step

        def step_and_look():
            snapshot()
            for p in optim.parameters():
                if p.grad is not None:
                    assert torch.isfinite(p.grad).all()
            orig_step()

        optim.step = step_and_look
        out = optimizer_step(m, optim, batch, s.device, s.amp)
        optim.step = orig_step
        optim.schedule(leading=epoch < lead)
        got_grad |= {i for i, g in seen.items() if g}
        assert set(out.losses) == set(s.tasks), "one loss per task"
        for t, v in out.losses.items():
            assert math.isfinite(float(v.detach())), f"{t} loss not finite at epoch {epoch}"
        logs.append(_json_roundtrip({k: v for k, v in out.logs.items()}))
        logs.append(_json_roundtrip(m.after_step(step, batch) or {}))
        # optimisers stepped after the update (FAMO's logits) got their gradients in after_step
        late = [p for spec in m.optimizers() if spec.after_update for p in spec.parameters()]
        got_grad |= {id(p) for p in late if p.grad is not None}
        optim.step_after_update()
        logs.append(_json_roundtrip(m.on_epoch_end(epoch, {t: float(v.detach()) for t, v in out.losses.items()})
                                    or {}))
        step += 1
    missing = [n for i, n in trainable.items() if i not in got_grad]
    assert not missing, f"no gradient for {len(missing)} parameters, e.g. {missing[:5]}"
    _json_roundtrip(m.summary_info())

    # predictions of the deployable model: every task, the right shape
    dep = m.deployable()
    dep.eval()
    with torch.no_grad():
        preds = dep(batch["image"])
    assert set(preds) == set(s.tasks)
    h, w = batch["image"].shape[-2:]
    for t, p in preds.items():
        assert p.shape == (2, s.tasks[t].channels, h, w), t

    # a checkpoint (parameters, buffers, extra state, every optimiser) restores a fresh method exactly
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "extra": m.extra_state(), **optim.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    s2 = build(cfg, with_data=False)
    m2 = s2.method
    m2.load_state_dict(ckpt["model"])
    _start(m2, cfg, s2, results_dir, epochs)
    m2.load_extra_state(ckpt["extra"])
    optim2 = Optimisation(m2, cfg.train, epochs, lead)
    optim2.load_state_dict(ckpt)
    want = m.state_dict()  # once: a state dict walks every module (OKD-MTL: four networks)
    got = m2.state_dict()
    assert got.keys() == want.keys()
    for k, v in got.items():
        assert torch.equal(v, want[k]), k
    assert _json_roundtrip(m2.summary_info()) == _json_roundtrip(m.summary_info())
    for name, opt in optim.optimizers.items():
        a, b = opt.state_dict()["state"], optim2.optimizers[name].state_dict()["state"]
        assert a.keys() == b.keys(), name
        for k in a:
            for field, v in a[k].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b[k][field])), (name, k, field)
    d2 = m2.deployable()
    d2.eval()
    with torch.no_grad():
        preds2 = d2(batch["image"])
    for t in preds:
        torch.testing.assert_close(preds2[t], preds[t])


def test_unsupported_allow_list_names_real_plugins():
    for (m, b), why in UNSUPPORTED.items():
        assert m in METHODS and b in BACKBONES, (m, b)
        assert why


def test_a_parameter_without_an_optimiser_fails_the_contract():
    """The check above is not vacuous: a method that forgets a parameter is caught."""
    from mtlbench.api import OptimizerSpec

    cfg = _cfg("baseline", "vit_tiny")
    s = build(cfg)
    m = s.method
    head = list(m.model.heads.values())[0]
    forgotten = {id(p) for p in head.parameters()}
    m.optimizers = lambda: [OptimizerSpec("model", [{"params": [p for p in m.parameters()
                                                                if id(p) not in forgotten]}])]
    optim = Optimisation(m, cfg.train, 1)
    in_opt = {id(p) for p in optim.parameters()}
    orphans = [n for n, p in m.named_parameters() if p.requires_grad and id(p) not in in_opt]
    assert orphans and all(n.startswith("model.heads.") for n in orphans)


def test_step_rule_gradients_accumulated_inside_training_step_are_stepped():
    """The step rule: gradients a method accumulates in training_step (OKD-MTL's per-network
    backward) are kept, and stale gradients from before the step are zeroed first."""
    cfg = _cfg("okd", "vit_tiny")
    s = build(cfg)
    m = s.method
    lead = _start(m, cfg, s, None, 100)
    m.on_epoch_start(lead)  # distilling, single-task networks still training
    optim = Optimisation(m, cfg.train, 100, lead)
    stl_param = next(p for p in m.stl.parameters())
    stl_param.grad = torch.full_like(stl_param, 1e6)  # stale: must be zeroed by the step
    before = stl_param.detach().clone()
    grads = {}
    orig = optim.step

    def look():
        grads["g"] = stl_param.grad.clone()
        orig()

    optim.step = look
    optimizer_step(m, optim, _batch(s), s.device, s.amp)
    assert grads["g"].abs().max() < 1e5, "a stale gradient survived the trainer's zeroing"
    assert grads["g"].abs().sum() > 0, "the single-task gradient from training_step was lost"
    assert not torch.equal(stl_param.detach(), before)


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_okd_text_profile_trains_on_every_backbone(backbone, tmp_path):
    """The contract above trains okd in its default profile (script); the text profile is a
    second code path (raw features, shared optimiser for ω, per-step OTW): it must train too."""
    cfg = _cfg("okd", backbone, extra=["method.profile=text"])
    rec = train(cfg, TrainOptions(out=tmp_path, quiet=True))
    assert rec["method_info"]["profile"] == "text"
    assert rec["method_info"]["options"]["afd_features"] == "raw"
    values = [v for ms in rec["metrics"].values() for v in ms.values() if v is not None]
    assert values and all(math.isfinite(v) for v in values)
