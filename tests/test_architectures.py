"""The two axes: every weighting x architecture pair (mtlbench/architectures, README "Two axes").

* the contract matrix: every weighting (every registered method that is not a pair alias)
  on every architecture, one step early and one late through the trainer's own step
  (:func:`test_contract.check_contract`), on the shrunk backbones: in the default run each
  pair on one backbone it is defined on (vit_tiny; MTAN on deeplabv3), the whole
  weighting x architecture x backbone product behind ``slow``;
* the undefined pairs (:data:`UNDEFINED`, :data:`UNDEFINED_ON_BACKBONE`) refuse to build,
  saying "unsupported", and the CLI exits 2;
* run identities: every existing method config keeps its hash (pinned values), the pair
  aliases ``stl`` and ``cross_stitch`` are what EW on those architectures resolves to;
* records of one weighting on two architectures never serve each other's rows;
* ``mtlbench run --method uw --set method.architecture=cross_stitch`` trains (smoke preset).
"""
from __future__ import annotations

import json

import pytest
import torch

import test_contract as contract
from conftest import shrink_argv
from mtlbench.api import MultiTaskNet, TaskNetworks
from mtlbench.config import resolve
from mtlbench.errors import UserError
from mtlbench.methods._gradient import GradientMethod
from mtlbench.records import options_match
from mtlbench.registry import ARCHITECTURES, BACKBONES, METHODS
from mtlbench.trainer import build

pytestmark = pytest.mark.usefixtures("one_thread")

#: the weightings: every method that is not a pair alias (stl, cross_stitch fix their architecture)
WEIGHTINGS = [m for m in METHODS.names() if METHODS.get(m).fixed_architecture is None]
GRADIENT = [m for m in WEIGHTINGS if issubclass(METHODS.get(m), GradientMethod)]
#: pair aliases and what they stand for: (weighting, architecture)
ALIASES = {"stl": ("baseline", "single_task"), "cross_stitch": ("baseline", "cross_stitch")}

#: (weighting, architecture) pairs undefined on every backbone, and why (README, "Two axes")
UNDEFINED = {
    **{(m, "single_task"): "nothing is shared: no per-task gradients on shared parameters to aggregate"
       for m in GRADIENT},
    ("gradnorm", "single_task"): "no shared layer whose gradient norms GradNorm could balance",
    ("kd_mtl", "single_task"): "no multi-task student encoder to distil the teachers into",
    ("okd", "single_task"): "no multi-task network whose layer features AFD distils into",
    ("kd_mtl", "cross_stitch"): "KD-MTL distils into one student encoder's last feature; "
                                "Cross-Stitch has one per task (a per-task variant is not implemented)",
    ("okd", "cross_stitch"): "AFD (Eq. 2) distils into one shared feature per layer; Cross-Stitch has one per task",
    # their papers take gradients at the shared features (grad_on: features), and each
    # Cross-Stitch head reads its own network's features; grad_on=params works
    ("graddrop", "cross_stitch"): "no single shared representation for grad_on=features",
    ("imtl_g", "cross_stitch"): "no single shared representation for grad_on=features",
    ("graddrop", "mtan"): "no single shared representation for grad_on=features",
    ("imtl_g", "mtan"): "no single shared representation for grad_on=features",
}
#: (architecture, backbone) pairs undefined for every weighting, and why
UNDEFINED_ON_BACKBONE = {
    ("cross_stitch", "deeplabv3_mtan"): "MTAN encoders have task-specific paths: stitching is undefined",
    ("mtan", "vit_tiny"): "the backbone has no MTAN variant (BackboneFactory.mtan_encoder)",
}
#: the backbone each architecture is checked on in the default run (the shrunk sizes)
DEFAULT_BACKBONE = {"hard": "vit_tiny", "single_task": "vit_tiny", "cross_stitch": "vit_tiny", "mtan": "deeplabv3"}
#: hard sharing is tests/test_contract.py's matrix already (every method x backbone)
ARCHS = [a for a in ARCHITECTURES.names() if a != "hard"]

PAIRS = [(m, a) for m in WEIGHTINGS for a in ARCHS]
FULL = [(m, a, b) for m, a in PAIRS for b in BACKBONES.names() if b != DEFAULT_BACKBONE.get(a, "vit_tiny")]


def _undefined(method, arch, backbone):
    return UNDEFINED.get((method, arch)) or UNDEFINED_ON_BACKBONE.get((arch, backbone))


def _check(method, arch, backbone, results_dir):
    cfg = contract._cfg(method, backbone, extra=[f"method.architecture={arch}"])
    alias = next((a for a, pair in ALIASES.items() if pair == (method, arch)), None)
    assert cfg.name("method") == (alias or method)  # EW on cross_stitch is the pair alias cross_stitch
    assert alias is not None or cfg.method.architecture == arch
    contract._ensure_requirements(cfg, results_dir)
    if _undefined(method, arch, backbone):
        with pytest.raises(UserError) as err:
            build(cfg)
        assert "unsupported" in err.value.message.lower(), err.value.message
        return
    contract.check_contract(cfg, results_dir)


@pytest.mark.parametrize("method,arch", PAIRS, ids=[f"{m}-{a}" for m, a in PAIRS])
def test_every_weighting_on_every_architecture(method, arch, results_dir):
    _check(method, arch, DEFAULT_BACKBONE.get(arch, "vit_tiny"), results_dir)


@pytest.mark.slow
@pytest.mark.parametrize("method,arch,backbone", FULL, ids=[f"{m}-{a}-{b}" for m, a, b in FULL])
def test_every_weighting_on_every_architecture_and_backbone(method, arch, backbone, results_dir):
    _check(method, arch, backbone, results_dir)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("axes-results")


def test_the_undefined_lists_name_real_plugins():
    for (m, a), why in UNDEFINED.items():
        assert m in WEIGHTINGS and a in ARCHITECTURES, (m, a)
        assert why
    for (a, b), why in UNDEFINED_ON_BACKBONE.items():
        assert a in ARCHITECTURES and b in BACKBONES and why
    assert set(ALIASES) == {m for m in METHODS.names() if m not in WEIGHTINGS}
    assert {"hard", "single_task", "cross_stitch", "mtan"} <= set(ARCHITECTURES.names())


# ---------------------------------------------------------------------------
# what the gradient methods see as shared
# ---------------------------------------------------------------------------

def _method(method, arch, backbone="vit_tiny", extra=()):
    return build(contract._cfg(method, backbone, extra=[f"method.architecture={arch}", *extra]),
                 with_data=False).method


def test_shared_parameters_per_architecture():
    heads = lambda model: {id(p) for h in model.heads.values() for p in h.parameters()}  # noqa: E731
    hard = _method("baseline", "hard").model
    assert isinstance(hard, MultiTaskNet) and hard.shared_representation
    assert [id(p) for p in hard.shared_parameters()] == [id(p) for p in hard.encoder.parameters()]
    stl = build(contract._cfg("stl", "vit_tiny"), with_data=False).method.model
    assert isinstance(stl, TaskNetworks) and stl.shared_parameters() == []
    assert len(stl.independent_parts()) == 3 and not stl.shared_representation
    cs = _method("uw", "cross_stitch").model
    shared = cs.shared_parameters()
    assert shared[0] is cs.stitch and not cs.shared_representation
    want = {id(p) for p in cs.parameters()} - heads(cs)
    assert {id(p) for p in shared} == want and cs.task_specific_parameters() == []
    # GradNorm's W: every network's own last shared layer
    assert [id(p) for p in cs.last_shared_parameters()] == [
        id(p) for net in cs.nets.values() for p in net.encoder.last_shared_parameters()]
    mtan = _method("pcgrad", "mtan", "deeplabv3").model
    attention = {id(p) for p in mtan.encoder.attention.parameters()}
    assert {id(p) for p in mtan.task_specific_parameters()} == attention
    assert not ({id(p) for p in mtan.shared_parameters()} & attention)


def test_a_gradient_method_on_cross_stitch_aggregates_the_per_task_jacobian():
    """UPGrad's weights come from the Gramian of the per-task gradients on the shared parameters
    (stitch matrices + every encoder): with one task's loss zeroed, the others' gradients give
    the update; here: the aggregated gradient is the weights times the Jacobian rows, computed
    by hand with autograd, one task at a time."""
    if "upgrad" not in METHODS:
        pytest.skip("upgrad not registered")
    s = build(contract._cfg("upgrad", "vit_tiny", extra=["method.architecture=cross_stitch"]))
    m = s.method
    m.eval()  # deterministic forwards (no dropout): the hand computation sees the same function
    batch = contract._batch(s)
    shared = m._shared_parameters()
    # by hand: each task's gradient on the shared parameters
    preds = m.model(batch["image"])
    losses = m.task_losses(preds, batch)
    rows = []
    for t in m.task_names:
        g = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1) for gi, p in zip(g, shared)]))
    J = torch.stack(rows).float()
    assert (J[:, :m.model.stitch.numel()] != 0).any(dim=1).all(), "every task reaches the stitch matrices"
    m.zero_grad(set_to_none=True)
    out = m.training_step(batch)
    m.backward(out)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    w = torch.tensor([out.logs[f"weight/{t}"] for t in m.task_names])
    torch.testing.assert_close(got, w @ J, rtol=1e-4, atol=1e-6)
    # the heads get their task's plain gradient (UPGrad's head rule)
    head = list(m.model.heads["depth"].parameters())[0]
    plain = torch.autograd.grad(m.task_losses(m.model(batch["image"]), batch)["depth"], head)[0]
    torch.testing.assert_close(head.grad, plain, rtol=1e-4, atol=1e-6)


def test_loss_weights_on_single_task_networks_scale_each_network_alone():
    """DWA on single-task networks: network t gets λ_t ∇L_t, nothing from the other tasks."""
    s = build(contract._cfg("dwa", "vit_tiny", extra=["method.architecture=single_task"]))
    m = s.method
    m.eval()  # deterministic forwards (no dropout)
    m.history = {0: {"semseg": 1.0, "depth": 1.0, "normal": 1.0}, 1: {"semseg": 0.5, "depth": 1.0, "normal": 2.0}}
    m.on_epoch_start(2)
    lam = dict(m.weights)
    assert lam["normal"] > lam["depth"] > lam["semseg"]
    batch = contract._batch(s)
    m.zero_grad(set_to_none=True)
    m.backward(m.training_step(batch))
    for t, net in m.model.nets.items():
        p = next(net.encoder.parameters())
        want = torch.autograd.grad(m.task_losses(net(batch["image"]), batch)[t], p)[0]
        torch.testing.assert_close(p.grad, lam[t] * want, rtol=1e-4, atol=1e-7)
    # train.grad_clip bounds each network on its own
    assert len(m.clip_groups()) == 3


def test_the_stitch_group_survives_under_any_weighting():
    m = _method("uw", "cross_stitch", extra=["method.stitch_lr_mult=10"])
    groups = m.param_groups()
    assert groups[1] == {"params": [m.model.stitch], "lr_mult": 10.0}
    assert groups[2]["params"] == [m.log_vars] and groups[2]["weight_decay"] == 0.0
    g = _method("gradnorm", "cross_stitch", extra=["method.stitch_lr_mult=10"]).param_groups()
    assert len(g) == 2 and g[1]["lr_mult"] == 10.0


# ---------------------------------------------------------------------------
# identities and records
# ---------------------------------------------------------------------------

def _hash(preset, method, backbone="vit_tiny", sets=()):
    return resolve(preset=preset, flags=[("method.name", method, "--method"), ("backbone.name", backbone, "--backbone")],
                   sets=list(sets)).hash


def test_existing_method_configs_keep_their_identity():
    # the hashes of every method x backbone on the quick and standard presets, computed with the
    # code before the two axes (the committed records under results/ carry them)
    with open(__file__.replace("test_architectures.py", "fixtures/axes_identities.json")) as f:
        pinned = json.load(f)
    assert len(pinned) >= 100
    for key, want in pinned.items():
        preset, method, backbone = key.split("/")
        assert _hash(preset, method, backbone) == want, key
    # hard sharing, named or not, is the same run
    assert _hash("quick", "dwa", sets=["method.architecture=hard"]) == _hash("quick", "dwa")
    assert _hash("quick", "dwa", sets=["method.architecture=shared"]) == _hash("quick", "dwa")
    assert _hash("quick", "dwa", sets=["method.architecture=cross_stitch"]) != _hash("quick", "dwa")


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_equal_weights_on_an_aliased_architecture_is_the_alias(alias):
    weighting, arch = ALIASES[alias]
    for spelt in (weighting, "ew"):
        cfg = resolve(preset="quick", flags=[("method.name", spelt, "--method")],
                      sets=[f"method.architecture={arch}"])
        assert cfg.name("method") == alias and "architecture" not in cfg.data["method"]
        assert cfg.hash == _hash("quick", alias)
    if alias == "cross_stitch":
        cfg = resolve(preset="quick", flags=[("method.name", "baseline", "--method")],
                      sets=["method.architecture=cross_stitch", "method.groups=2"])
        assert cfg.hash == _hash("quick", "cross_stitch", sets=["method.groups=2"])


def test_old_records_load_and_match_only_hard_sharing():
    # an old record of uw has no method.architecture: it is hard sharing
    old = {"name": "uw", "form": "paper", "init_log_var": -0.5, "s_lr": None}
    assert options_match(old, "uw", {})
    assert options_match(old, "uw", {"architecture": "hard"})
    assert not options_match(old, "uw", {"architecture": "cross_stitch"})
    cs = resolve(preset="quick", flags=[("method.name", "uw", "--method")],
                 sets=["method.architecture=cross_stitch"]).data["method"]
    assert cs["architecture"] == "cross_stitch" and cs["groups"] is None
    assert options_match(cs, "uw", {"architecture": "cross_stitch"})
    assert not options_match(cs, "uw", {})
    assert not options_match({**cs, "groups": 2}, "uw", {"architecture": "cross_stitch"})
    assert options_match({**cs, "groups": 2}, "uw", {"architecture": "cross_stitch", "groups": 2})
    # a record's config round-trips through the resolver with its architecture
    from mtlbench.config import from_dict

    data = resolve(preset="quick", flags=[("method.name", "uw", "--method")],
                   sets=["method.architecture=cross_stitch", "method.groups=[3,1]", "backbone.depth=4"]).data
    again = from_dict(json.loads(json.dumps(data)))
    assert again.hash == resolve(preset="quick", flags=[("method.name", "uw", "--method")],
                                 sets=["method.architecture=cross_stitch", "method.groups=[3,1]",
                                       "backbone.depth=4"]).hash


def test_bad_architecture_input_is_a_clear_error():
    with pytest.raises(UserError, match=r"method\.architecture \(from --set method\.architecture=cross_stich\)"
                                        r".*unknown architecture 'cross_stich'; did you mean 'cross_stitch'"):
        resolve(preset="quick", flags=[("method.name", "uw", "--method")], sets=["method.architecture=cross_stich"])
    with pytest.raises(UserError, match=r"unknown config key method\.groups"):
        resolve(preset="quick", flags=[("method.name", "uw", "--method")], sets=["method.groups=2"])
    with pytest.raises(UserError, match=r"method\.architecture \(from --set method\.architecture=3\) must be an architecture name"):
        resolve(preset="quick", flags=[("method.name", "uw", "--method")], sets=["method.architecture=3"])
    with pytest.raises(UserError, match=r"unknown config key method\.architecture"):  # a pair alias fixes it
        resolve(preset="quick", flags=[("method.name", "stl", "--method")], sets=["method.architecture=hard"])


def test_a_table_row_names_both_axes():
    from mtlbench.tables.spec import parse_spec

    spec = parse_spec({"id": "axes", "title": "t", "dataset": "nyuv2", "preset": "quick", "backbones": ["vit_tiny"],
                       "paper_reference": "uw",
                       "columns": ["semseg/miou"],
                       "sections": [{"rows": [
                           {"key": "uw", "label": "UW", "method": "uw"},
                           {"key": "uw_cs", "label": "UW (Cross-Stitch)", "method": "uw",
                            "overrides": {"architecture": "cross_stitch"}}]}]}, "test")
    from mtlbench.tables.options import options_key

    rows = {r.key: r for s in spec.sections for r in s.rows}
    assert options_key("uw", rows["uw"].overrides) != options_key("uw", rows["uw_cs"].overrides)
    assert json.loads(options_key("uw", rows["uw_cs"].overrides))["groups"] is None


# ---------------------------------------------------------------------------
# through the CLI
# ---------------------------------------------------------------------------

def test_cli_uw_on_cross_stitch_trains(tmp_path):
    from mtlbench.cli import main
    from mtlbench.plots import epoch_rows
    from mtlbench.runs import read_record

    rc = main(["run", "--method", "uw", "--set", "method.architecture=cross_stitch", "--preset", "smoke",
               "--out", str(tmp_path), "--device", "cpu", "--quiet", *shrink_argv("vit_tiny")])
    assert rc == 0
    (path,) = (tmp_path / "runs").rglob("*/vit_tiny/uw/*.json")
    rec = read_record(path)
    assert rec["config"]["method"]["architecture"] == "cross_stitch"
    assert set(rec["method_info"]["final_weights"]) == set(rec["tasks"])  # UW's
    assert rec["method_info"]["group_sizes"] and "stitch" in rec["method_info"]  # Cross-Stitch's
    assert any(k.startswith("stitch/") for k in epoch_rows(rec)[-1]["logs"])
    assert rec["params"]["deployable"] == rec["params"]["training_system"] - len(rec["tasks"])  # + UW's s


@pytest.mark.parametrize("argv,what", [
    (["--method", "pcgrad", "--set", "method.architecture=single_task"], "unsupported"),
    (["--method", "uw", "--set", "method.architecture=mtan"], "no MTAN variant"),
    (["--method", "uw", "--set", "method.architecture=nope"], "unknown architecture 'nope'"),
])
def test_cli_refuses_undefined_pairs_with_exit_2(argv, what, tmp_path, capsys):
    from mtlbench.cli import main

    rc = main(["run", *argv, "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu", "--quiet",
               *shrink_argv("vit_tiny")])
    assert rc == 2
    assert what in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.json"))


def test_sweeps_order_the_requirements_of_a_weighting_on_any_architecture():
    """Method.requires gets the joined config (method.architecture and the architecture's options):
    KD-MTL's teachers are planned before it on MTAN as on hard sharing."""
    from mtlbench.tables.plan import _requires

    assert _requires("kd_mtl", {}, []) == ["stl"]
    assert _requires("kd_mtl", {"architecture": "mtan"}, []) == ["stl"]
    assert _requires("okd", {"architecture": "mtan", "teachers": "pretrained"}, []) == ["stl"]
    assert _requires("uw", {"architecture": "cross_stitch", "groups": 2}, []) == []


@pytest.mark.parametrize("table", ["extended", "axes"])
def test_the_axes_tables_mark_exactly_the_undefined_pairs(table):
    """EW, UW and PCGrad on every architecture (the extended table's last section on ViT-tiny, the
    axes table on DeepLabV3), '-' exactly where the pair refuses to build."""
    from mtlbench.tables.spec import load_spec

    spec = load_spec(table)
    rows = [r for s in spec.sections if s.title.startswith("Architecture x weighting") for r in s.rows] \
        if table == "extended" else spec.rows()
    cells = {}
    for row in rows:
        pair = ALIASES.get(row.method, (row.method, row.overrides.get("architecture", "hard")))
        assert pair not in cells, f"{row.key} repeats {pair}"
        cells[pair] = row
    assert set(cells) == {(w, a) for w in ("baseline", "uw", "pcgrad") for a in ARCHITECTURES.names()}
    for (weighting, arch), row in cells.items():
        for backbone in spec.backbones:
            assert bool(row.unsupported.get(backbone)) == bool(_undefined(weighting, arch, backbone)), row.key
