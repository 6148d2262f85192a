"""The DeepLabV3 and DeepLabV3-MTAN backbones (backbones/deeplab.py).

Shapes, the dilation pattern, MTAN's attention, parameter counts against the
the counts of LibMTL's and lorenmt/mtan's own model classes, pretrained loading, the layer-by-layer API that
Cross-Stitch uses, and one baseline training step per backbone.  Pretrained
weights of ``vit_tiny`` follow the same all-or-nothing rules and are tested
here too, with its heads' input width.  Shape tests
shrink the heads (``aspp_channels``); counts are taken on the meta device.
The shrunk backbones (each factory's ``test_overrides``, which the contract
tests and ``smoke_config`` use) are tested at the end: they build, train a
step and keep the structure (dilation, MTAN's attention, layer channels).
"""
from __future__ import annotations

import math
import re
import socket

import pytest
import torch
import torch.nn.functional as F

from mtlbench.api import Features, count_parameters
from mtlbench.config import build_dataclass
from mtlbench.errors import UserError
from mtlbench.registry import BACKBONES, METHODS
from mtlbench.tasks import Depth, Normal, SemSeg

BACKBONE_NAMES = ["deeplabv3", "deeplabv3_mtan"]
TASKS = {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}
LAYER_CHANNELS = [64, 256, 512, 1024, 2048]


def factory(name, tasks=TASKS, **cfg):
    cls = BACKBONES.get(name)
    return cls(cls.Config(**cfg), tasks)


def make_batch(b=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, h, w, generator=g),
            "semseg": torch.randint(-1, 13, (b, h, w), generator=g),
            "depth": torch.rand(b, 1, h, w, generator=g) + 0.1,
            "normal": F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)}


@pytest.fixture(scope="module")
def encoders():
    """One encoder per backbone (built once: a ResNet-50 takes seconds to initialise)."""
    torch.manual_seed(0)
    return {name: factory(name).encoder(list(TASKS)).eval() for name in BACKBONE_NAMES}


def test_registered_with_alias():
    assert BACKBONES.get("mtan") is BACKBONES.get("deeplabv3_mtan")
    assert BACKBONES.get("deeplabv3").size_multiple == 8


def assert_dilation_pattern(r):
    """Facts §11: in layer3/4 no stride; the formerly strided 3x3 conv has
    dilation d/2, every other 3x3 conv d (d = 2 in layer3, 4 in layer4)."""
    for layer, d in ((r.layer3, 2), (r.layer4, 4)):
        assert layer[0].downsample[0].stride == (1, 1)
        for j, block in enumerate(layer):
            want = d // 2 if j == 0 else d
            assert block.conv2.stride == (1, 1)
            assert block.conv2.dilation == (want, want)
            assert block.conv2.padding == (want, want)
    assert r.layer2[0].conv2.stride == (2, 2) and r.layer2[0].conv2.dilation == (1, 1)
    assert all(b.conv2.dilation == (1, 1) for b in [*r.layer1, *r.layer2])
    assert not hasattr(r, "fc") and not hasattr(r, "avgpool")


def test_dilation_pattern(encoders):
    assert_dilation_pattern(encoders["deeplabv3"].resnet)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_feature_shapes(name, encoders):
    enc = encoders[name]
    assert enc.num_layers == 5 and enc.layer_channels == LAYER_CHANNELS and enc.out_channels == 2048
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, 64, 64), return_layers=True)
    assert isinstance(feats, Features)
    sizes = [16, 16, 8, 8, 8]  # stem and layer1 at stride 4, then stride 8 (dilated)
    assert [tuple(f.shape) for f in feats.layers] == [(2, c, s, s) for c, s in zip(LAYER_CHANNELS, sizes)]
    finals = feats.final if isinstance(feats.final, dict) else {"": feats.final}
    if name == "deeplabv3_mtan":
        assert set(finals) == set(TASKS), "MTAN: one final feature per task"
    for f in finals.values():
        assert tuple(f.shape) == (2, 2048, 8, 8)
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 32, 48)).layers == []  # not asked for


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_head_output_at_input_size(name):
    f = factory(name, aspp_channels=16)
    x = torch.randn(2, 2048, 4, 6)
    for task in TASKS.values():
        head = f.head(task).eval()
        with torch.no_grad():
            out = head(x, (32, 48))
        assert tuple(out.shape) == (2, task.channels, 32, 48)
        # ASPP: 1x1 + one 3x3 per rate + image pooling, each conv without bias.
        assert len(head.aspp.branches) == 5
        assert head.aspp.branches[1][0].dilation == (12, 12)
        assert head.classifier.bias is not None


@pytest.mark.parametrize("size", [(12, 16), (36, 48), (5, 40), (3, 3)])
@pytest.mark.parametrize("dilation", [2, 6, 12, 24, 36])
def test_same_dilated_conv_skips_only_taps_that_read_padding(size, dilation):
    """ASPP's dilated conv drops the taps that can only meet zero padding: the same output and
    weight gradient as the full convolution (zero for the dropped taps), the same parameters."""
    from mtlbench.backbones.deeplab import SameDilatedConv2d, _dead_taps

    torch.manual_seed(0)
    conv = SameDilatedConv2d(6, 5, 3, dilation)
    full = torch.nn.Conv2d(6, 5, 3, padding=dilation, dilation=dilation, bias=False)
    full.load_state_dict(conv.state_dict())
    assert list(conv.state_dict()) == ["weight"]
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    conv, full = conv.double(), full.double()
    y, y_full = conv(x), full(x)
    assert y.shape == y_full.shape == (2, 5, *size)
    torch.testing.assert_close(y, y_full, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_full * g).sum().backward()
    torch.testing.assert_close(conv.weight.grad, full.weight.grad, rtol=1e-12, atol=1e-12)
    th, tw = _dead_taps(3, dilation, size[0]), _dead_taps(3, dilation, size[1])
    assert (th, tw) == (int(dilation >= size[0]), int(dilation >= size[1]))
    if th:  # a dropped row of taps: its gradient is exactly zero in both
        assert conv.weight.grad[:, :, 0].abs().max() == 0 and full.weight.grad[:, :, 0].abs().max() < 1e-12


def test_aspp_drops_dead_taps_on_the_quick_feature_map():
    """On a 12x16 feature map (the quick preset's 96x128 input) rates 24 and 36 reduce to the
    kernel's centre and rate 12 to its middle row: the convolutions actually run say so."""
    head = factory("deeplabv3", aspp_channels=8).head(TASKS["depth"]).eval()
    shapes = []
    real = torch.nn.functional.conv2d

    def spy(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if dilation not in (1, (1, 1)):
            shapes.append(tuple(w.shape[-2:]))
        return real(x, w, bias, stride, padding, dilation, groups)

    import mtlbench.backbones.deeplab as dl
    orig = dl.F.conv2d
    dl.F.conv2d = spy
    try:
        with torch.no_grad():
            head(torch.randn(1, 2048, 12, 16), (96, 128))
    finally:
        dl.F.conv2d = orig
    assert shapes == [(1, 3), (1, 1), (1, 1)]


def test_aspp_projection_stays_channels_last():
    """The pooling branch's broadcast made torch.cat return NCHW: the projection then ran on NCHW
    inside a channels_last model (slower in bf16 on CPU)."""
    head = factory("deeplabv3", aspp_channels=8).head(TASKS["depth"]).eval().to(memory_format=torch.channels_last)
    seen = []
    head.aspp.project[0][0].register_forward_pre_hook(
        lambda mod, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)
                                     and not inp[0].is_contiguous()))
    x = torch.randn(2, 2048, 12, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = head(x, (96, 128))
        ref = head(x.contiguous(), (96, 128))  # NCHW in: no conversion, the same values
    assert seen == [True, False]
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_head_trains_on_a_batch_of_one():
    # The image-pooling branch sees one value per channel; BatchNorm alone would raise.
    head = factory("deeplabv3", aspp_channels=8).head(TASKS["depth"]).train()
    out = head(torch.randn(1, 2048, 4, 4), (32, 32))
    out.sum().backward()
    assert torch.isfinite(out).all()


def test_mtan_attention(encoders):
    enc = encoders["deeplabv3_mtan"]
    assert enc.supports_stitching is False
    # Training mode, as the masks are used: BN then normalises the logits (in eval
    # mode an untrained network's running statistics let sigmoid saturate).
    enc.train()
    try:
        masks = enc.attention_masks(torch.rand(2, 3, 64, 64))
    finally:
        enc.eval()
    assert set(masks) == set(TASKS)
    channels = LAYER_CHANNELS[1:]
    for t, ms in masks.items():
        assert [m.shape[1] for m in ms] == channels
        for m in ms:
            assert bool((m > 0).all() and (m < 1).all()), f"{t}: sigmoid masks must lie in (0, 1)"
    for i in range(4):
        assert not torch.allclose(masks["semseg"][i], masks["depth"][i]), "masks differ per task"
    # Attention modules are task-specific, so not among the shared parameters.
    shared = {id(p) for p in enc.shared_parameters()}
    assert not any(id(p) in shared for p in enc.attention.parameters())
    assert all(id(p) in shared for p in enc.resnet.parameters())
    assert all(id(p) in shared for p in enc.transfer.parameters())


def test_mtan_single_task_encoder():
    f = factory("deeplabv3_mtan", aspp_channels=8)
    with torch.device("meta"):
        enc = f.encoder(["depth"])
    assert list(enc.attention) == ["depth"]


def _counts(name):
    f = factory(name)
    with torch.device("meta"):  # shapes only: no init cost, no memory
        mtl = METHODS.get("baseline")(METHODS.get("baseline").Config(), TASKS, f)
        stl = METHODS.get("stl")(METHODS.get("stl").Config(), TASKS, f)
    return (count_parameters(mtl.deployable()), count_parameters(mtl.model.encoder),
            {t: count_parameters(n) for t, n in stl.nets.items()})


@pytest.mark.parametrize("name,total,encoder", [
    ("deeplabv3", 71_888_721, 23_508_032),   # LibMTL's HPS DeepLabV3, NYUv2 heads
    ("deeplabv3_mtan", 92_347_921, 43_967_232),  # LibMTL's / lorenmt's ResNet-50 MTAN
])
def test_parameter_counts(name, total, encoder):
    got_total, got_encoder, stl = _counts(name)
    assert got_total == pytest.approx(total, rel=0.01)
    assert got_encoder == pytest.approx(encoder, rel=0.01)
    if name == "deeplabv3":
        for n in stl.values():  # one STL DeepLab: 23.51 M encoder + ≈16.13 M head
            assert n == pytest.approx(39.6e6, rel=0.01)


def test_last_shared_parameters(encoders):
    for enc in encoders.values():
        (w,) = enc.last_shared_parameters()
        assert w is enc.resnet.layer4[-1].conv3.weight


def test_pretrained_file_loads(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(123)
    ref = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    want = ref.state_dict()
    torch.save({f"module.{k}": v for k, v in want.items()}, path)  # DataParallel prefix too
    for name in BACKBONE_NAMES:
        enc = factory(name, pretrained_file=str(path)).encoder(["semseg"])
        got = enc.resnet.state_dict()
        for k, v in got.items():
            assert torch.equal(v, want[k]), k
        assert "fc.weight" not in got


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        factory("deeplabv3", pretrained_file=str(tmp_path / "missing.pth")).encoder(["semseg"])
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(2)}, bad)
    with pytest.raises(UserError) as e:
        factory("deeplabv3", pretrained_file=str(bad)).encoder(["semseg"])
    msg = str(e.value)
    assert "does not fit ResNet-50" in msg and "1 unexpected key (head.weight)" in msg
    # every weight but conv1.weight is missing; BatchNorm's counters may be absent (legacy files)
    assert "weights missing (bn1.weight, bn1.bias, bn1.running_mean, ...)" in msg
    text = tmp_path / "notes.pth"
    text.write_text("a text file renamed .pth\n")
    with pytest.raises(UserError, match=r"(?s)notes\.pth.*not a readable checkpoint"):
        factory("deeplabv3", pretrained_file=str(text)).encoder(["semseg"])
    shaped = tmp_path / "shaped.pth"
    from torchvision.models import resnet50

    sd = resnet50(weights=None).state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, shaped)
    with pytest.raises(UserError, match=r"1 of other shape .*conv1.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)"):
        factory("deeplabv3", pretrained_file=str(shaped)).encoder(["semseg"])
    cls = BACKBONES.get("deeplabv3")
    with pytest.raises(UserError, match="must end in"):
        build_dataclass(cls.Config, {"pretrained_file": "weights.safetensors"}, "backbone", {})


def test_legacy_state_dict_without_batchnorm_counters_loads(tmp_path):
    from torchvision.models import resnet50

    ref = resnet50(weights=None).state_dict()
    path = tmp_path / "resnet50-legacy.pth"
    torch.save({k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}, path)
    enc = factory("deeplabv3", pretrained_file=str(path)).encoder(["semseg"])
    assert torch.equal(enc.resnet.conv1.weight, ref["conv1.weight"])


# ---------------------------------------------------------------------------
# vit_tiny's pretrained weights follow the same rules: all or nothing
# ---------------------------------------------------------------------------

def _vit(**cfg):
    cls = BACKBONES.get("vit_tiny")
    return cls(cls.Config(**cfg), {"semseg": SemSeg(13)})


def test_vit_pretrained_file_loads_pth_and_safetensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)  # with its classifier
    torch.save({"model": ref.state_dict()}, tmp_path / "vit.pth")  # a wrapped training checkpoint
    save_file(ref.state_dict(), str(tmp_path / "vit.safetensors"))
    for name in ("vit.pth", "vit.safetensors"):
        enc = _vit(pretrained_file=str(tmp_path / name)).encoder(["semseg"])
        got, want = enc.vit.state_dict(), ref.state_dict()
        assert set(got) == {k for k in want if not k.startswith("head.")}
        for k, v in got.items():
            assert torch.equal(v, want[k]), (name, k)


def test_vit_pretrained_file_that_does_not_fit_is_an_error(tmp_path):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    sd = vit.state_dict()
    n = len(sd)
    renamed = tmp_path / "renamed.pth"
    torch.save({f"backbone.{k}": v for k, v in sd.items()}, renamed)  # keys under another prefix
    with pytest.raises(UserError) as e:
        _vit(pretrained_file=str(renamed)).encoder(["semseg"])
    msg = str(e.value)
    assert str(renamed) in msg and f"{n} of the backbone's {n} weights missing (cls_token, pos_embed" in msg
    assert f"{n} unexpected keys (backbone.cls_token" in msg
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.11.")}, partial)
    with pytest.raises(UserError, match=r"weights missing \(blocks\.11\."):
        _vit(pretrained_file=str(partial)).encoder(["semseg"])
    wide = tmp_path / "small.pth"
    torch.save(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).state_dict(), wide)
    with pytest.raises(UserError, match=r"of other shape .*cls_token \(1, 1, 384\) vs \(1, 1, 192\)"):
        _vit(pretrained_file=str(wide)).encoder(["semseg"])


@pytest.mark.parametrize("content,why", [(b"a text file renamed\n", "not a readable checkpoint"),
                                         (b"", "not a readable checkpoint")])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_vit_pretrained_file_that_is_not_a_checkpoint(tmp_path, content, why, suffix):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(content)
    with pytest.raises(UserError, match=why) as e:
        _vit(pretrained_file=str(path)).encoder(["semseg"])
    assert str(path) in str(e.value) and "backbone.pretrained_file" in str(e.value)


def test_vit_pretrained_file_holding_something_else(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        _vit(pretrained_file=str(path)).encoder(["semseg"])
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(UserError, match="not named tensors"):
        _vit(pretrained_file=str(path)).encoder(["semseg"])


def test_vit_heads_take_the_encoders_width():
    f = _vit()
    head = f.head(SemSeg(13))  # before any encoder: the width comes from a weightless model
    assert f.embed_dim == 192 and head.proj_in.in_features == 192
    f._embed_dim = 96  # an encoder of another width (as a larger ViT would set it)
    assert f.head(SemSeg(13)).proj_in.in_features == 96


def test_pretrained_offline_points_at_pretrained_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download

    def offline(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(socket.socket, "connect", offline)
    with pytest.raises(UserError, match="pretrained_file"):
        factory("deeplabv3", pretrained=True).encoder(["semseg"])


def test_config_defaults_are_the_papers():
    cfg = BACKBONES.get("deeplabv3").Config()
    assert (cfg.aspp_channels, cfg.aspp_rates, cfg.head_dropout) == (256, [12, 24, 36], 0.5)
    assert cfg.normalize is False and cfg.pretrained is False
    cls = BACKBONES.get("deeplabv3_mtan")
    assert build_dataclass(cls.Config, {"aspp_rates": [6, 12]}, "backbone", {}).aspp_rates == [6, 12]
    with pytest.raises(UserError):
        build_dataclass(cls.Config, {"aspp_rates": []}, "backbone", {})


def test_device_defaults():
    for name in BACKBONE_NAMES:
        f = factory(name)
        assert f.default_amp("cuda") == "bf16" and f.default_channels_last("cuda") is True
        assert f.default_amp("cpu") in ("bf16", "fp32")
        # channels_last only with bf16 on CPU (alone it was slower in the benchmark)
        assert f.default_channels_last("cpu") is (f.default_amp("cpu") == "bf16")


def test_layer_by_layer_and_stitching(encoders):
    enc = encoders["deeplabv3"]
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        whole = enc(x).final
        # Two copies of the same network mixed with rows summing to one: unchanged.
        states = [enc.begin(x), enc.begin(x)]
        w = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
        for i in range(enc.num_layers):
            states = enc.mix_states([enc.layer(i, s) for s in states], w)
            assert torch.equal(enc.layer_feature(states[0]), states[0])
        outs = [enc.end(s) for s in states]
    assert all(torch.allclose(o, whole, atol=1e-4, rtol=1e-4) for o in outs)

    mtan = encoders["deeplabv3_mtan"]
    with torch.no_grad():
        s = mtan.layer(0, mtan.begin(x))
        with pytest.raises(UserError, match="unsupported"):
            mtan.mix_states([s, s], w)


@pytest.mark.slow  # a full ResNet-50 step (30-60 s here); test_shrunk_backbone_trains_a_step is the fast one
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_baseline_training_step(name):
    torch.manual_seed(0)
    cls = METHODS.get("baseline")
    method = cls(cls.Config(), TASKS, factory(name, aspp_channels=32)).train()
    batch = make_batch()
    out = method.training_step(batch)
    assert set(out.losses) == set(TASKS)
    assert math.isfinite(float(out.loss.detach()))
    method.backward(out)
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    preds = method.deployable().eval()(batch["image"][:1])
    assert {t: tuple(p.shape) for t, p in preds.items()} == {
        t: (1, task.channels, 64, 64) for t, task in TASKS.items()}


# ---------------------------------------------------------------------------
# the shrunk backbones (test_overrides): the same architecture, small
# ---------------------------------------------------------------------------

SHRUNK_CHANNELS = [8, 32, 64, 128, 256]  # width 8: stem, then 4 * 8 * 2**i


def shrunk(name, tasks=TASKS):
    """A factory with ``name``'s test_overrides, validated as a user's --set would be."""
    cls = BACKBONES.get(name)
    return cls(build_dataclass(cls.Config, dict(cls.test_overrides), "backbone", {}), tasks)


#: the size options, added after records existed
SIZE_OPTIONS = {"vit_tiny": ("depth", "embed_dim", "num_heads"),
                "deeplabv3": ("blocks_per_stage", "width"), "deeplabv3_mtan": ("blocks_per_stage", "width")}


@pytest.mark.parametrize("name", list(SIZE_OPTIONS))
def test_size_options_default_to_the_full_networks_and_stay_out_of_the_hash(name):
    from mtlbench.config import config_hash, identity_data, resolve

    dl, vit = BACKBONES.get("deeplabv3").Config(), BACKBONES.get("vit_tiny").Config()
    assert (dl.blocks_per_stage, dl.width) == ([3, 4, 6, 3], 64)
    assert (vit.depth, vit.embed_dim, vit.num_heads) == (12, 192, 3)
    base = resolve(flags=[("backbone.name", name, "--backbone")])
    assert set(SIZE_OPTIONS[name]) <= set(base.data["backbone"])  # recorded in full ...
    assert not set(SIZE_OPTIONS[name]) & set(identity_data(base.data)["backbone"])  # ... hashed only off default
    # a record written before the options existed (no such keys) keeps its identity
    old = {**base.data, "backbone": {k: v for k, v in base.data["backbone"].items() if k not in SIZE_OPTIONS[name]}}
    assert config_hash(old) == base.hash
    overrides = BACKBONES.get(name).test_overrides
    assert set(SIZE_OPTIONS[name]) <= set(overrides)
    small = resolve(flags=[("backbone.name", name, "--backbone")],
                    sets=[f"backbone.{k}={v}" for k, v in overrides.items()])
    assert small.hash != base.hash  # a shrunk network is another setting
    assert set(SIZE_OPTIONS[name]) <= set(identity_data(small.data)["backbone"])


@pytest.mark.parametrize("name,sets,needle", [
    ("deeplabv3", {"blocks_per_stage": [2, 2, 2]}, "at least 4 elements"),
    ("deeplabv3", {"blocks_per_stage": [2, 2, 2, 2, 2]}, "the 4 stages"),
    ("deeplabv3", {"blocks_per_stage": [2, 0, 2, 2]}, "blocks_per_stage"),
    ("deeplabv3", {"width": 0}, "width"),
    ("deeplabv3", {"width": 8, "pretrained": True}, "pretrained weights are ResNet-50's"),
    ("deeplabv3_mtan", {"blocks_per_stage": [1, 1, 1, 1]}, "at least 2 bottlenecks per stage"),
    ("vit_tiny", {"embed_dim": 64, "num_heads": 3}, "divisible by num_heads"),
    ("vit_tiny", {"embed_dim": 129, "num_heads": 3}, "the heads' 2 attention heads"),
    ("vit_tiny", {"depth": 0}, "backbone.depth"),
    ("vit_tiny", {"depth": 2, "pretrained_file": "vit.pth"}, "depth=2 (ViT-tiny: 12)"),
])
def test_size_options_are_checked(name, sets, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        build_dataclass(BACKBONES.get(name).Config, sets, "backbone", {})


@pytest.mark.usefixtures("one_thread")
def test_narrow_resnet_is_torchvisions_structure_at_any_width():
    """At width 64 the narrow builder gives ResNet-50's exact module tree and weight shapes, so
    at other widths it is the same network, narrower."""
    from torchvision.models.resnet import Bottleneck, ResNet

    from mtlbench.backbones.deeplab import NarrowResNet

    with torch.device("meta"):
        ours = NarrowResNet([3, 4, 6, 3], 64)
        ref = ResNet(Bottleneck, [3, 4, 6, 3], replace_stride_with_dilation=[False, True, True])
    del ref.avgpool, ref.fc
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert_dilation_pattern(ours)
    for (n, a), (_, b) in zip(ours.named_modules(), ref.named_modules()):
        if isinstance(a, torch.nn.Conv2d):
            assert (a.stride, a.dilation, a.padding) == (b.stride, b.dilation, b.padding), n


@pytest.mark.parametrize("name", BACKBONE_NAMES)
@pytest.mark.usefixtures("one_thread")
def test_shrunk_resnet_keeps_the_structure(name):
    torch.manual_seed(0)
    enc = shrunk(name).encoder(list(TASKS)).eval()
    r = enc.resnet
    assert [len(getattr(r, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert_dilation_pattern(r)
    assert enc.layer_channels == SHRUNK_CHANNELS and enc.out_channels == 256
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, 64, 64), return_layers=True)
    sizes = [16, 16, 8, 8, 8]  # output stride 8, as the full network
    assert [tuple(f.shape) for f in feats.layers] == [(2, c, s, s) for c, s in zip(SHRUNK_CHANNELS, sizes)]
    finals = feats.final if isinstance(feats.final, dict) else {"": feats.final}
    assert all(tuple(f.shape) == (2, 256, 8, 8) for f in finals.values())
    if name == "deeplabv3_mtan":
        assert set(finals) == set(TASKS)
        assert set(enc.attention) == set(TASKS) and all(len(a) == 4 for a in enc.attention.values())
        enc.train()
        masks = enc.attention_masks(torch.rand(2, 3, 64, 64))
        for t in TASKS:
            assert [m.shape[1] for m in masks[t]] == SHRUNK_CHANNELS[1:]
            assert all(bool((m > 0).all() and (m < 1).all()) for m in masks[t])
        shared = {id(p) for p in enc.shared_parameters()}
        assert not any(id(p) in shared for p in enc.attention.parameters())


@pytest.mark.parametrize("name", [*BACKBONE_NAMES, "vit_tiny"])
@pytest.mark.usefixtures("one_thread")
def test_shrunk_backbone_trains_a_step_and_is_small(name):
    torch.manual_seed(0)
    cls = METHODS.get("baseline")
    method = cls(cls.Config(), TASKS, shrunk(name)).train()
    assert count_parameters(method.deployable()) < 1_000_000
    batch = make_batch()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    out = method.training_step(batch)
    assert set(out.losses) == set(TASKS) and math.isfinite(float(out.loss.detach()))
    method.backward(out)
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    before = [p.detach().clone() for p in method.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, method.parameters()) if p.grad is not None
               and p.grad.abs().sum() > 0)
    preds = method.deployable().eval()(batch["image"][:1])
    assert {t: tuple(p.shape) for t, p in preds.items()} == {
        t: (1, task.channels, 64, 64) for t, task in TASKS.items()}


@pytest.mark.usefixtures("one_thread")
def test_shrunk_vit_keeps_the_structure():
    from timm.layers import Attention

    f = shrunk("vit_tiny")
    enc = f.encoder(list(TASKS))
    assert len(enc.vit.blocks) == 2 and enc.num_layers == 2
    assert enc.layer_channels == [64, 64] and enc.out_channels == 64 and f.embed_dim == 64
    assert all(b.attn.num_heads == 2 for b in enc.vit.blocks)
    with torch.no_grad():
        feats = enc(torch.rand(2, 3, 32, 48), return_layers=True)
    assert [tuple(x.shape) for x in feats.layers] == [(2, 64, 2, 3)] * 2
    assert tuple(feats.final.shape) == (2, 64, 2, 3)
    head = f.head(Depth())  # the paper's mask-transformer head, at the encoder's width
    assert head.proj_in.in_features == 64 and len(head.blocks) == 2 and head.queries.shape == (1, 16, 64)
    assert head.mlp[0].out_features == 16
    assert all(m.num_heads == 1 for m in head.modules() if isinstance(m, Attention))
    # a factory whose heads come before any encoder reads the width off the config
    assert shrunk("vit_tiny").head(SemSeg(13)).proj_in.in_features == 64
