"""DeepLabV3 on a dilated ResNet-50, and MTAN on the same network.

The CNN backbones of the OKD-MTL paper's Table 3 (Jacob et al., WACV 2023,
§4.2: "DeepLabV3 [64]" and "DeepLabV3-MTAN [20]"), built as in LibMTL and
lorenmt/mtan's ``resnet_mtan.py`` (layer sizes, dilation and attention read from
those repositories and the MTAN paper, Liu et al., CVPR 2019); our own code.

Encoder (``deeplabv3``)
    torchvision's ResNet-50 (He et al., CVPR 2016) with avgpool and fc
    removed and ``replace_stride_with_dilation=[False, True, True]``, which
    gives output stride 8 (2048 x 36 x 48 for a 288 x 384 input).  That is the
    references' "ResnetDilated(dilate_scale=8)" exactly: in layer3 and layer4
    every stride-2 conv (the 3x3 and the 1x1 downsample) runs at stride 1, the
    formerly strided 3x3 conv (first bottleneck) gets dilation d/2 and every
    other 3x3 conv dilation d, with d = 2 in layer3 and d = 4 in layer4;
    padding equals dilation throughout (``test_dilation_pattern`` checks it).
    Per-layer features (AFD's 5 layers, the paper's Fig. 4): the stem
    (conv1-bn-relu-maxpool, 64 ch, stride 4), layer1 (256, 4), layer2 (512, 8),
    layer3 (1024, 8), layer4 (2048, 8); the final features are layer4's output.

    Size options (defaults: ResNet-50): ``blocks_per_stage`` (bottlenecks in
    layer1..4, [3, 4, 6, 3]) and ``width`` (the stem's channels, 64; stage i
    has ``width * 2**(i-1)`` inner and 4x as many output channels).  Any
    values keep the dilation pattern above (output stride 8) and, in MTAN, one
    attention module per task and stage; at width 64 torchvision's own ResNet
    class builds the network, at other widths :class:`NarrowResNet` builds the
    same structure narrower.  Pretrained weights need the defaults.

    Pretrained weights: the references load torchvision's ImageNet V1 weights
    (the legacy ``resnet50-19c8e357`` file; torchvision's ``IMAGENET1K_V1``
    is the same recipe); ``pretrained: true`` downloads ``IMAGENET1K_V1``,
    ``pretrained_file`` loads a local ResNet-50 state dict (fc keys ignored).
    The references feed images in [0, 1] without ImageNet normalisation, so
    ``normalize`` defaults to False.

Head (per task; DeepLabV3, Chen et al., arXiv:1706.05587)
    ASPP(2048 -> 256): a 1x1 branch, three 3x3 branches at rates 12/24/36 and
    an image-pooling branch (global average pool -> 1x1 -> upsample), each conv
    without bias + BN + ReLU; concat (1280) -> 1x1 to 256 + BN + ReLU +
    Dropout(0.5); 3x3 conv 256 + BN + ReLU; 1x1 conv (with bias) to the task's
    channels; the prediction is upsampled bilinearly (align_corners=True) to
    the input size.  LibMTL calls this "DeepLabV3+", but it has no low-level
    decoder.  Default PyTorch init for the head, as the references.

MTAN (``deeplabv3_mtan``; Liu et al., CVPR 2019)
    The same shared ResNet-50.  Each stage i = 1..4 is split into all-but-last
    bottleneck (u_b) and the last bottleneck (u_t).  Per task and stage, a
    soft-attention module (1x1 conv -> BN -> ReLU -> 1x1 conv -> BN ->
    sigmoid) computes a mask a_i from u_b (stage 1: 256 -> 64 -> 256) or from
    [u_b, p_{i-1}] (stages 2-4: 2c -> c/4 -> c); the attended feature is
    p_i = a_i * u_t (so every stage needs at least two bottlenecks).  For i < 4,
    p_i passes a Bottleneck shared across tasks
    (c_i -> c_{i+1}, stride 1, no dilation, as in the reference), after stage 1
    followed by a 2x max-pool (stride 4 -> 8).  Each task's p_4 (2048 ch,
    stride 8) feeds its own head.  The attention convs keep their bias, as in
    the reference (the parameter count 92,347,921 at NYUv2 head sizes needs
    them); their init (Kaiming fan-out, BN 1/0, zero bias) is ours.

Precision: bf16 autocast + channels_last by default on CUDA and on CPUs with
native bf16 kernels (``_cpu_has_bf16``; why: docs/BENCHMARKS.md, "DeepLabV3
step"), fp32 otherwise; ``train.amp`` / ``train.channels_last`` override it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api import BackboneFactory, Encoder
from mtlbench.config import option
from mtlbench.errors import UserError
from mtlbench.weights import load_weights_strictly, read_state_dict
from mtlbench.registry import BACKBONES
from mtlbench.tasks import Task

PRETRAINED_SUFFIXES = (".pth", ".pt", ".bin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ResNet-50's bottlenecks per stage (layer1..4) and stem width: the size options' defaults
RESNET50_BLOCKS = [3, 4, 6, 3]
RESNET50_WIDTH = 64


def resnet_channels(width: int = RESNET50_WIDTH) -> list[int]:
    """Channels of the per-layer features (stem, layer1..4) of a ResNet of stem width ``width``."""
    return [width] + [4 * width * 2 ** i for i in range(4)]


#: channels of the per-layer features of ResNet-50: stem, layer1..4
RESNET50_CHANNELS = resnet_channels()


@dataclass
class DeepLabV3Config:
    """Options of ``deeplabv3`` (defaults: the references' network)."""

    pretrained: bool = False  # download torchvision's ImageNet ResNet-50 (IMAGENET1K_V1; needs internet)
    pretrained_file: str | None = None  # a local ResNet-50 ImageNet state dict (.pth; wins over pretrained)
    normalize: bool = False  # map [0, 1] images with ImageNet mean/std (the references do not)
    aspp_channels: int = option(256, ge=1)  # width of the ASPP branches and of the head's 3x3 conv
    aspp_rates: list[int] = option([12, 24, 36], ge=1, min_items=1)  # dilation of ASPP's 3x3 branches
    head_dropout: float = option(0.5, ge=0, lt=1)  # dropout after ASPP's projection (Auto-Lambda's copy: 0)
    # The ResNet's size (defaults: ResNet-50). Added after records existed: at their
    # defaults they stay out of the config hash.
    blocks_per_stage: list[int] = option(RESNET50_BLOCKS, ge=1, min_items=4, hash_default=False)  # layer1..4
    width: int = option(RESNET50_WIDTH, ge=1, hash_default=False)  # stem channels; stage i: width*2**(i-1)*4 out

    def validate(self) -> None:
        if self.pretrained_file is not None and not str(self.pretrained_file).endswith(PRETRAINED_SUFFIXES):
            raise ValueError(f"pretrained_file {self.pretrained_file!r} must end in one of "
                             f"{', '.join(PRETRAINED_SUFFIXES)}")
        if len(self.blocks_per_stage) != 4:
            raise ValueError(f"blocks_per_stage holds the bottlenecks of the 4 stages (layer1..4), "
                             f"got {self.blocks_per_stage}")
        if (self.pretrained or self.pretrained_file) and self.is_resized():
            raise ValueError(f"pretrained weights are ResNet-50's: blocks_per_stage {RESNET50_BLOCKS} "
                             f"and width {RESNET50_WIDTH}, got {self.blocks_per_stage} and {self.width}")

    def is_resized(self) -> bool:
        return list(self.blocks_per_stage) != RESNET50_BLOCKS or self.width != RESNET50_WIDTH


@dataclass
class DeepLabV3MTANConfig(DeepLabV3Config):
    """Options of ``deeplabv3_mtan``: those of ``deeplabv3`` (the attention has none)."""

    def validate(self) -> None:
        super().validate()
        if any(n < 2 for n in self.blocks_per_stage):
            raise ValueError(f"deeplabv3_mtan needs at least 2 bottlenecks per stage (its attention reads "
                             f"the stage's all-but-last ones), got blocks_per_stage {self.blocks_per_stage}")


# ---------------------------------------------------------------------------
# the dilated ResNet-50
# ---------------------------------------------------------------------------

_RESNET_HINT = ("point it at a torchvision ResNet-50 ImageNet state dict, "
                "e.g. resnet50-0676ba61.pth or resnet50-19c8e357.pth")


def _download_state_dict() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


class NarrowResNet(nn.Module):
    """A dilated bottleneck ResNet of any stem width, at output stride 8 (no avgpool/fc).

    The structure of torchvision's ``ResNet(Bottleneck, blocks, replace_stride_with_dilation=
    [False, True, True])`` with 64 replaced by ``width``: the same module names (``conv1``,
    ``bn1``, ``relu``, ``maxpool``, ``layer1..4`` of torchvision ``Bottleneck`` blocks), strides,
    dilations and initialisation (Kaiming fan-out convolutions, BatchNorm 1/0).  layer3 and
    layer4 trade their stride 2 for dilation: the first block of each keeps the previous
    dilation, the others get twice it (layer3: 1 then 2; layer4: 2 then 4).
    """

    def __init__(self, blocks: Sequence[int], width: int):
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, dilation = width, 1
        for i, (n, dilate) in enumerate(zip(blocks, (False, False, True, True)), start=1):
            planes = width * 2 ** (i - 1)
            stride = 1 if i == 1 else 2
            first_dilation = dilation
            if dilate:
                dilation, stride = dilation * stride, 1
            cout = planes * Bottleneck.expansion
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
            stage = [Bottleneck(cin, planes, stride, down, dilation=first_dilation)]
            stage += [Bottleneck(cout, planes, dilation=dilation) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            cin = cout
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def build_dilated_resnet(cfg: DeepLabV3Config) -> nn.Module:
    """The dilated ResNet (output stride 8, no avgpool/fc) of ``cfg``'s size, weights as configured.

    At width 64 torchvision's ``ResNet`` class builds it (the defaults: its ResNet-50, drawn
    from the random stream exactly as ``resnet50(weights=None)``); otherwise :class:`NarrowResNet`.
    """
    from torchvision.models.resnet import Bottleneck, ResNet

    blocks = [int(n) for n in cfg.blocks_per_stage]
    if cfg.width == RESNET50_WIDTH:
        net = ResNet(Bottleneck, blocks, replace_stride_with_dilation=[False, True, True])
        del net.avgpool, net.fc
    else:
        net = NarrowResNet(blocks, cfg.width)
    sd = None
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file).expanduser()
        sd, source = read_state_dict(path, "backbone.pretrained_file", _RESNET_HINT), \
            f"backbone.pretrained_file {str(path)!r}"
    elif cfg.pretrained:
        try:
            sd = _download_state_dict()
        except Exception as exc:  # offline: URLError, socket and SSL errors of many kinds
            raise UserError(
                "could not download torchvision's ImageNet ResNet-50 weights "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                hint="offline, fetch https://download.pytorch.org/models/resnet50-0676ba61.pth "
                     "elsewhere and pass --set backbone.pretrained_file=PATH") from exc
        source = "torchvision IMAGENET1K_V1"
    if sd is not None:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}  # the ImageNet classifier
        # legacy files (resnet50-19c8e357) predate BatchNorm's counter; load_state_dict fills it
        load_weights_strictly(net, sd, source, "use torchvision's resnet50 ImageNet weights "
                              "(keys conv1.weight, layer1.0.conv1.weight, ...)", model="ResNet-50",
                              optional=(".num_batches_tracked",))
    return net


class _ResNetEncoderBase(Encoder):
    """Shared parts: the dilated ResNet, optional input normalisation, stage runner."""

    def __init__(self, resnet: nn.Module, normalize: bool):
        super().__init__()
        self.resnet = resnet
        self.num_layers = 5
        self.layer_channels = [resnet.conv1.out_channels] + [
            getattr(resnet, f"layer{i}")[-1].conv3.out_channels for i in range(1, 5)]
        self.out_channels = self.layer_channels[-1]
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        return r.maxpool(r.relu(r.bn1(r.conv1(x))))

    def _stage(self, i: int) -> nn.Sequential:
        """ResNet stage ``layer{i}`` (i = 1..4)."""
        return getattr(self.resnet, f"layer{i}")

    def compile_units(self):
        return [block for i in range(1, 5) for block in self._stage(i)]

    def last_shared_parameters(self):
        # layer4's last conv: the last weight every task's path goes through
        # (in MTAN too, the masks multiply its output), GradNorm's W.
        return [self.resnet.layer4[-1].conv3.weight]


class DilatedResNetEncoder(_ResNetEncoderBase):
    """Layers: stem, layer1..4; states are feature maps, so Cross-Stitch can mix them."""

    def begin(self, x):
        return self._input(x)

    def layer(self, i, state):
        return self._stem(state) if i == 0 else self._stage(i)(state)

    def layer_feature(self, state):
        return state

    def end(self, state):
        return state


def _attention(cin: int, mid: int, cout: int) -> nn.Sequential:
    """MTAN's soft-attention module: 1x1 -> BN -> ReLU -> 1x1 -> BN -> sigmoid."""
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout), nn.Sigmoid())


def _transfer(cin: int, cout: int) -> nn.Module:
    """The shared bottleneck that carries an attended feature to the next stage's width."""
    from torchvision.models.resnet import Bottleneck

    down = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
    return Bottleneck(cin, cout // Bottleneck.expansion, downsample=down)


class MTANState:
    """A state of the MTAN encoder: the shared feature map and each task's attended feature."""

    __slots__ = ("shared", "task")

    def __init__(self, shared: torch.Tensor, task: dict[str, torch.Tensor] | None):
        self.shared = shared
        self.task = task


class MTANEncoder(_ResNetEncoderBase):
    """MTAN on the dilated ResNet-50: task attention on every stage's last bottleneck.

    Layers (per-layer features) are the shared network's stem and layer1..4;
    ``end`` returns ``{task: p_4}``.  States carry task-specific paths, so
    Cross-Stitch cannot mix them (``supports_stitching = False``).
    """

    supports_stitching = False

    def __init__(self, resnet: nn.Module, normalize: bool, tasks: Sequence[str]):
        super().__init__(resnet, normalize)
        if not tasks:
            raise ValueError("MTANEncoder needs at least one task")
        c = self.layer_channels[1:]  # ResNet-50: 256, 512, 1024, 2048
        self.attention = nn.ModuleDict({
            t: nn.ModuleList([_attention(c[0], c[0] // 4, c[0])]
                             + [_attention(2 * c[i], c[i] // 4, c[i]) for i in range(1, 4)])
            for t in tasks})
        # Shared across tasks, like the trunk; the first also goes with a 2x pool
        # since layer2 halves the resolution and layers 3-4 are dilated (stride 8).
        self.transfer = nn.ModuleList([_transfer(c[i], c[i + 1]) for i in range(3)])
        self.pool = nn.MaxPool2d(2, 2)
        for m in [*self.attention.modules(), *self.transfer.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def task_names(self) -> list[str]:
        return list(self.attention)

    def compile_units(self):
        return [*super().compile_units(), *self.transfer, *(a for atts in self.attention.values() for a in atts)]

    def shared_parameters(self):
        # The attention modules are task-specific; everything else is shared.
        own = {id(p) for p in self.attention.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in own]

    def begin(self, x):
        return MTANState(self._input(x), None)

    def _run_stage(self, i: int, state: MTANState, masks: dict[str, list] | None = None) -> MTANState:
        stage = self._stage(i)
        u_b = stage[:-1](state.shared)
        u_t = stage[-1](u_b)
        out = {}
        for t, atts in self.attention.items():
            inp = u_b if i == 1 else torch.cat([u_b, state.task[t]], 1)
            a = atts[i - 1](inp)
            if masks is not None:
                masks[t].append(a)
            p = a * u_t
            if i < 4:
                p = self.transfer[i - 1](p)
                if i == 1:
                    p = self.pool(p)
            out[t] = p
        return MTANState(u_t, out)

    def layer(self, i, state):
        if i == 0:
            return MTANState(self._stem(state.shared), None)
        return self._run_stage(i, state)

    def layer_feature(self, state):
        return state.shared

    def end(self, state):
        return dict(state.task)

    def mix_states(self, states, weights):
        raise UserError("Cross-Stitch is unsupported on deeplabv3_mtan: its states hold "
                        "task-specific attention paths",
                        hint="use --backbone deeplabv3 for cross_stitch")

    @torch.no_grad()
    def attention_masks(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Each task's attention masks a_1..a_4 for input ``x`` (for analysis and tests)."""
        masks: dict[str, list] = {t: [] for t in self.attention}
        state = self.layer(0, self.begin(x))
        for i in range(1, 5):
            state = self._run_stage(i, state, masks)
        return masks


# ---------------------------------------------------------------------------
# the DeepLabV3 head
# ---------------------------------------------------------------------------

def _dead_taps(k: int, dilation: int, size: int) -> int:
    """How many kernel taps at each end of one axis only ever read zero padding.

    In a stride-1 "same" convolution (padding ``dilation * (k // 2)``) the tap
    ``m`` places from the centre reads input row ``i ± dilation * m`` for output
    row ``i`` in ``[0, size)``: it meets the input only if ``dilation * m < size``.
    """
    return max(0, k // 2 - (size - 1) // dilation)


class SameDilatedConv2d(nn.Conv2d):
    """A stride-1 "same" dilated convolution that skips the kernel taps reading only padding.

    ASPP's rates (12, 24, 36) can exceed the feature map: on the quick preset's
    96x128 images it is 12x16, so rate 12 keeps only the kernel's middle row and
    rates 24 and 36 only its centre; at 288x384 (36x48) rate 36 keeps the middle
    row.  The skipped taps multiply zeros, so the output is the same sum (up to
    floating-point summation order) and their gradient is zero, as the full
    convolution computes it.  The parameters and the state dict are an
    ``nn.Conv2d``'s (pretrained and saved weights load unchanged); FLOP counters
    see the smaller convolution.  Measured in docs/BENCHMARKS.md.
    """

    def __init__(self, cin: int, cout: int, k: int, dilation: int, bias: bool = False):
        if k % 2 != 1:
            raise ValueError(f"SameDilatedConv2d needs an odd kernel size, got {k}")
        super().__init__(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        th, tw = _dead_taps(kh, dh, x.shape[-2]), _dead_taps(kw, dw, x.shape[-1])
        if th == 0 and tw == 0:
            return super().forward(x)
        weight = self.weight[:, :, th:kh - th, tw:kw - tw]
        padding = (self.padding[0] - dh * th, self.padding[1] - dw * tw)
        return F.conv2d(x, weight, self.bias, 1, padding, self.dilation, self.groups)


def _conv_bn_relu(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Sequential:
    conv = (SameDilatedConv2d(cin, cout, k, dilation) if dilation > 1 else
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool -> 1x1 conv + BN + ReLU -> broadcast."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1))
        if self.training and y.shape[0] == 1 and not getattr(self.bn, "synchronised", False):
            # One value per channel: batch statistics are undefined (BatchNorm
            # raises), so a batch of one (a last partial batch) uses the running ones.
            # (A BatchNorm synchronised over processes sees the global batch: at least 2.)
            y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                             self.bn.bias, training=False, eps=self.bn.eps)
        else:
            y = self.bn(y)
        # Upsampling a 1x1 map bilinearly is a broadcast; expand says so directly.
        return F.relu(y).expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, 3x3 at each rate, image pooling; concat; 1x1 projection."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], dropout: float):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
            + [ImagePooling(cin, cout)])
        self.project = nn.Sequential(_conv_bn_relu(cout * len(self.branches), cout, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], 1)
        if x.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous(
                memory_format=torch.channels_last):
            # the pooling branch's broadcast (a zero-stride view) makes cat return NCHW, and
            # the projection's convolution then ran on NCHW in a channels_last model
            y = y.contiguous(memory_format=torch.channels_last)
        return self.project(y)


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv + BN + ReLU -> 1x1 conv to the task's channels -> upsample to the input size."""

    def __init__(self, cin: int, out_channels: int, *, channels: int = 256,
                 rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5):
        super().__init__()
        self.aspp = ASPP(cin, channels, rates, dropout)
        self.conv = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, feat: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        out = self.classifier(self.conv(self.aspp(feat)))
        return F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------
# the plugins
# ---------------------------------------------------------------------------

class _DeepLabFactoryBase(BackboneFactory):
    size_multiple = 8
    # The same architecture, shrunk for fast tests: two bottlenecks per stage (the fewest that
    # keep the whole dilation pattern and MTAN's u_b/u_t split), stem width 8 (stage outputs
    # 32..256 channels), ASPP heads 16 wide.
    test_overrides = {"blocks_per_stage": [2, 2, 2, 2], "width": 8, "aspp_channels": 16}

    def head(self, task: Task) -> nn.Module:
        return DeepLabV3Head(resnet_channels(self.cfg.width)[-1], task.channels, channels=self.cfg.aspp_channels,
                             rates=self.cfg.aspp_rates, dropout=self.cfg.head_dropout)

    def mtan_encoder(self, tasks):
        # the ``mtan`` architecture: MTAN's attention over this family's dilated ResNet
        if any(n < 2 for n in self.cfg.blocks_per_stage):
            raise UserError(f"architecture mtan is unsupported with backbone.blocks_per_stage "
                            f"{list(self.cfg.blocks_per_stage)}: its attention reads each stage's "
                            "all-but-last bottlenecks, so every stage needs at least 2",
                            hint="e.g. --set backbone.blocks_per_stage=[2,2,2,2]")
        return MTANEncoder(build_dilated_resnet(self.cfg), self.cfg.normalize, list(tasks))

    def default_amp(self, device_type: str) -> str:
        return "bf16" if device_type == "cuda" or (device_type == "cpu" and _cpu_has_bf16()) else "fp32"

    def default_channels_last(self, device_type: str) -> bool:
        # On CPU channels_last only pays with bf16 (alone, it slowed fp32 down).
        return self.default_amp(device_type) == "bf16"


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX).

    With them, bf16 autocast + channels_last made a CNN training step faster than
    fp32, channels_last alone did not (docs/BENCHMARKS.md, "DeepLabV3 step",
    with the command); without them the conversions cost more than they save,
    so fp32 stays the default there.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@BACKBONES.register("deeplabv3")
class DeepLabV3(_DeepLabFactoryBase):
    """DeepLabV3: dilated ResNet-50 (output stride 8; ``blocks_per_stage``/``width`` resize it)
    + one ASPP head per task."""

    Config = DeepLabV3Config
    summary = "DeepLabV3: dilated ResNet-50 (OS 8) + ASPP heads; features: stem, layer1-4"

    def encoder(self, tasks):
        return DilatedResNetEncoder(build_dilated_resnet(self.cfg), self.cfg.normalize)


@BACKBONES.register("deeplabv3_mtan", aliases=("mtan",))
class DeepLabV3MTAN(_DeepLabFactoryBase):
    """MTAN on the dilated ResNet-50: per-task attention on every stage, one ASPP head per task."""

    Config = DeepLabV3MTANConfig
    summary = "MTAN on DeepLabV3's dilated ResNet-50: per-task stage attention + ASPP heads"

    def encoder(self, tasks):
        return MTANEncoder(build_dilated_resnet(self.cfg), self.cfg.normalize, list(tasks))
