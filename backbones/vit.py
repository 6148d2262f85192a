"""ViT-tiny (timm) with the OKD-MTL paper's mask-transformer task heads.

Backbone: timm's ``VisionTransformer`` in the ViT-tiny configuration (embedding
192, 12 blocks, 3 heads, patch 16; Dosovitskiy et al., ICLR 2021), with dynamic
image size so any input divisible by 16 works (position embeddings are
interpolated).  Per-layer features are every block's patch tokens, as
``(B, 192, H/16, W/16)`` maps; the final features are the normed patch tokens.
``depth``, ``embed_dim`` and ``num_heads`` (timm's own arguments) shrink the
same architecture, e.g. for fast tests (``ViTTiny.test_overrides``); pretrained
weights need their ViT-tiny values.

Heads (Jacob et al., WACV 2023, §3.1 and Fig. 2), after Segmenter's mask
transformer (Strudel et al., ICCV 2021):

* classification: N_cls learnable class queries join the patch tokens through
  two pre-norm transformer layers; the scalar product of the L2-normalised
  patch and class embeddings gives N_patch x N_cls masks (LayerNorm over the
  classes, as Segmenter's code does), upsampled bilinearly to the image size;
* regression: N_reg = 128 queries, the same two layers and scalar product,
  then an MLP of linear layers to the task's channels (1 for depth, 3 for
  normals) per patch, upsampled bilinearly.  The paper gives no more detail:
  the MLP's hidden width (``reg_hidden``) and the LayerNorm on the masks are
  our choices.

Sizes (default options): with NYUv2's three heads the multi-task model has 8.61M
parameters and a single-task network 6.55M (the encoder 5.52M, a head about 1M).
The paper reports 33M and 26M; its heads must be much wider than its
description implies, and we found no reading of §3.1 that reaches those counts.
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
from mtlbench.weights import load_weights_strictly, read_state_dict, short_error
from mtlbench.registry import BACKBONES
from mtlbench.tasks import Task

TIMM_NAME = "vit_tiny_patch16_224"
PRETRAINED_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: ViT-tiny's architecture (timm's arguments): the defaults, and what pretrained weights need
VIT_TINY_ARCH = {"depth": 12, "embed_dim": 192, "num_heads": 3}
#: the heads' transformer layers get one attention head per this many channels (at least one)
HEAD_DIM = 64


def head_attention_heads(width: int) -> int:
    """Attention heads of a mask-transformer head of ``width`` channels (3 at ViT-tiny's 192)."""
    return max(1, width // HEAD_DIM)


@dataclass
class ViTTinyConfig:
    """Options of ``vit_tiny``."""

    pretrained: bool = False  # download ImageNet weights through timm's hub (needs internet)
    pretrained_file: str | None = None  # a local timm checkpoint (.safetensors, .pth, .bin)
    normalize: bool = True  # map [0, 1] images with the checkpoint's mean/std (0.5, 0.5)
    drop_path: float = option(0.0, ge=0, lt=1)  # stochastic depth in the backbone
    head_layers: int = option(2, ge=1)  # transformer layers in each head (the paper: 2)
    head_dropout: float = option(0.1, ge=0, lt=1)  # dropout in the head's transformer layers (Segmenter: 0.1)
    n_reg_queries: int = option(128, ge=1)  # N_reg of the regression head (the paper: 128)
    reg_hidden: int = option(128, ge=1)  # hidden width of the regression head's MLP
    # The encoder's size (timm's VisionTransformer arguments; the heads take its width).
    # Added after records existed: at their defaults (ViT-tiny) they stay out of the config hash.
    depth: int = option(12, ge=1, hash_default=False)  # transformer blocks (= per-layer features)
    embed_dim: int = option(192, ge=1, hash_default=False)  # token width of the encoder and the heads
    num_heads: int = option(3, ge=1, hash_default=False)  # attention heads of each encoder block
    # A pretraining recipe (`mtlbench pretrain --recipe NAME`): the encoder starts from its artefact.
    pretraining: str | None = option(None, hash_default=False)

    def validate(self) -> None:
        if self.pretrained_file is not None and not str(self.pretrained_file).endswith(PRETRAINED_SUFFIXES):
            raise ValueError(f"pretrained_file {self.pretrained_file!r} must end in one of "
                             f"{', '.join(PRETRAINED_SUFFIXES)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        k = head_attention_heads(self.embed_dim)
        if self.embed_dim % k:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by the heads' {k} attention "
                             f"heads (one per {HEAD_DIM} channels), e.g. {HEAD_DIM * k}")
        if self.pretraining is not None and (self.pretrained or self.pretrained_file):
            raise ValueError("pretraining names the encoder's starting weights, and so do pretrained and "
                             "pretrained_file: set only one")
        arch = self.arch()
        if (self.pretrained or self.pretrained_file) and arch != VIT_TINY_ARCH:
            changed = ", ".join(f"{k}={v} (ViT-tiny: {VIT_TINY_ARCH[k]})" for k, v in arch.items()
                                if v != VIT_TINY_ARCH[k])
            raise ValueError(f"pretrained weights are ViT-tiny's; {changed} cannot load them")

    def arch(self) -> dict[str, int]:
        """The encoder's timm arguments ``depth``, ``embed_dim``, ``num_heads``."""
        return {"depth": self.depth, "embed_dim": self.embed_dim, "num_heads": self.num_heads}


class ViTEncoder(Encoder):
    """timm ViT run block by block; states are token tensors ``(B, 1 + N, E)``."""

    def __init__(self, vit: nn.Module, normalize: bool):
        super().__init__()
        self.vit = vit
        self.num_layers = len(vit.blocks)
        self.out_channels = vit.embed_dim
        self.layer_channels = [vit.embed_dim] * self.num_layers
        self.prefix = vit.num_prefix_tokens
        mean = torch.tensor(vit.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        std = torch.tensor(vit.pretrained_cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        self.normalize = normalize
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self._grid: tuple[int, int] = (0, 0)

    def begin(self, x):
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        tokens = self.vit.patch_embed(x)  # (B, h, w, E) with dynamic image size
        self._grid = (tokens.shape[1], tokens.shape[2])
        tokens = self.vit._pos_embed(tokens)
        tokens = self.vit.patch_drop(tokens)
        return self.vit.norm_pre(tokens)

    def layer(self, i, state):
        return self.vit.blocks[i](state)

    def _to_map(self, tokens):
        h, w = self._grid
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)

    def layer_feature(self, state):
        return self._to_map(state)

    def end(self, state):
        return self._to_map(self.vit.norm(state))

    def compile_units(self):
        return [self.vit.patch_embed, *self.vit.blocks]

    def last_shared_parameters(self):
        # The last block's MLP output projection: the last shared weight matrix
        # before the final LayerNorm (GradNorm's W).
        return [self.vit.blocks[-1].mlp.fc2.weight]


class MaskedPatchModel(nn.Module):
    """SimMIM (Xie et al., CVPR 2022) on a timm ViT: a random ``mask_ratio`` of the patches is
    replaced by a learned mask token before the blocks; a linear decoder predicts each patch's
    pixels (as the encoder sees them, normalised) from its final token; the loss is the L1 error
    on the masked patches. ``forward(images, generator) -> loss``."""

    def __init__(self, vit: nn.Module, normalize: bool, mask_ratio: float):
        super().__init__()
        self.vit = vit
        self.normalize = normalize
        self.mask_ratio = mask_ratio
        self.patch = int(vit.patch_embed.patch_size[0])
        self.prefix = vit.num_prefix_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, vit.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(vit.embed_dim, self.patch * self.patch * 3)
        mean = torch.tensor(vit.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        std = torch.tensor(vit.pretrained_cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        tokens = self.vit.patch_embed(x)  # (B, h, w, E)
        b, h, w, _ = tokens.shape
        n_mask = max(1, round(self.mask_ratio * h * w))
        order = torch.rand(b, h * w, generator=generator).argsort(dim=1)
        mask = torch.zeros(b, h * w, dtype=torch.bool).scatter_(1, order[:, :n_mask], True)
        tokens = torch.where(mask.view(b, h, w, 1), self.mask_token.to(tokens.dtype), tokens)
        tokens = self.vit.norm_pre(self.vit.patch_drop(self.vit._pos_embed(tokens)))
        for blk in self.vit.blocks:
            tokens = blk(tokens)
        pred = self.decoder(self.vit.norm(tokens)[:, self.prefix:])  # (B, h w, p p 3)
        target = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # (B, h w, 3 p p)
        return (pred - target).abs().mean(-1)[mask].mean()

    def encoder_state_dict(self) -> dict:
        """The timm ViT's weights (what ``backbone.pretraining`` loads)."""
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}


def _attention_kernel_for_precision(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of timm's ``Attention``: under bf16 autocast on a CPU, the explicit
    products (``q @ k^T``, softmax, ``@ v``) instead of the fused SDPA kernel.

    The fused kernel's bf16 backward was the slower path on the CPUs we timed (figures and the
    command in docs/BENCHMARKS.md, "Where a step goes, and the bf16 attention fix").  fp32 and
    CUDA keep the fused kernel (and timm's own choice, ``fused_attn``, stays the default).
    """
    x = args[0]
    slow_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    module.fused_attn = module.mtlbench_fused_default and not slow_bf16


def precision_aware_attention(model: nn.Module) -> nn.Module:
    """Install :func:`_attention_kernel_for_precision` on every timm ``Attention`` of ``model``."""
    from timm.layers import Attention

    for m in model.modules():
        if isinstance(m, Attention) and not hasattr(m, "mtlbench_fused_default"):
            m.mtlbench_fused_default = bool(m.fused_attn)
            m.register_forward_pre_hook(_attention_kernel_for_precision)
    return model


class MaskTransformerHead(nn.Module):
    """The paper's task head: queries + patch tokens through transformer layers.

    ``classify=True``: one query per class, the masks are the output.
    ``classify=False``: ``n_queries`` queries, an MLP maps masks to ``out_channels``.
    """

    def __init__(self, in_dim: int, out_channels: int, *, classify: bool, n_queries: int,
                 n_layers: int = 2, dropout: float = 0.1, hidden: int = 128):
        super().__init__()
        from timm.models.vision_transformer import Block

        d = in_dim
        self.classify = classify
        self.proj_in = nn.Linear(in_dim, d)
        self.queries = nn.Parameter(torch.empty(1, n_queries, d))
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.blocks = nn.ModuleList(
            [Block(d, num_heads=head_attention_heads(d), mlp_ratio=4.0, qkv_bias=True,
                   proj_drop=dropout) for _ in range(n_layers)])
        precision_aware_attention(self.blocks)
        self.norm = nn.LayerNorm(d)
        self.proj_patch = nn.Parameter(d ** -0.5 * torch.randn(d, d))
        self.proj_query = nn.Parameter(d ** -0.5 * torch.randn(d, d))
        self.mask_norm = nn.LayerNorm(n_queries)
        if classify:
            self.mlp = None
        else:
            self.mlp = nn.Sequential(nn.Linear(n_queries, hidden), nn.GELU(),
                                     nn.Linear(hidden, out_channels))

    def forward(self, feat: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
        b, c, h, w = feat.shape
        x = self.proj_in(feat.flatten(2).transpose(1, 2))  # (B, N, d)
        n = x.shape[1]
        x = torch.cat([x, self.queries.expand(b, -1, -1)], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        patches = F.normalize(x[:, :n] @ self.proj_patch, dim=-1)
        queries = F.normalize(x[:, n:] @ self.proj_query, dim=-1)
        masks = self.mask_norm(patches @ queries.transpose(1, 2))  # (B, N, K)
        if self.mlp is not None:
            masks = self.mlp(masks)  # (B, N, out_channels)
        out = masks.transpose(1, 2).reshape(b, -1, h, w)
        return F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)


def _create_vit(cfg: ViTTinyConfig) -> nn.Module:
    import timm

    kwargs = dict(num_classes=0, dynamic_img_size=True, drop_path_rate=cfg.drop_path, **cfg.arch())
    if cfg.pretraining is not None:
        from mtlbench.pretrain import encoder_file

        path, ident = encoder_file(cfg.pretraining)
        what = f"backbone.pretraining {cfg.pretraining!r} ({path})"
        hint = f"build it again with `mtlbench pretrain --recipe {cfg.pretraining} --force`"
        sd = read_state_dict(path, "backbone.pretraining", hint)
        model = timm.create_model(TIMM_NAME, pretrained=False, **kwargs)
        load_weights_strictly(model, sd, what, hint)
        return model
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file).expanduser()
        hint = "point it at a timm ViT-tiny checkpoint (patch 16, dim 192; .safetensors, .pth or .bin)"
        what = f"backbone.pretrained_file {str(path)!r}"
        sd = read_state_dict(path, "backbone.pretrained_file", hint)
        model = timm.create_model(TIMM_NAME, pretrained=False, **kwargs)
        from timm.models.vision_transformer import checkpoint_filter_fn

        try:  # timm's own conversions: other checkpoint layouts, position embeddings of another size
            sd = checkpoint_filter_fn(sd, model)
        except Exception as exc:  # noqa: BLE001 - whatever the conversion trips on, the file is the cause
            raise UserError(f"{what} is not a {TIMM_NAME} checkpoint ({short_error(exc)})", hint=hint) from exc
        # The ImageNet classifier is not part of the encoder (num_classes=0), as in timm's own loading.
        classifier = model.pretrained_cfg.get("classifier", "head")
        sd = {k: v for k, v in sd.items() if not k.startswith(classifier + ".")}
        load_weights_strictly(model, sd, what, hint)
        return model
    if cfg.pretrained:
        try:
            return timm.create_model(TIMM_NAME, pretrained=True, **kwargs)
        except Exception as exc:  # offline: huggingface_hub / urllib errors of many kinds
            raise UserError(
                f"could not download the pretrained {TIMM_NAME} weights through timm's hub "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                hint="offline, download the checkpoint elsewhere and pass "
                     "--set backbone.pretrained_file=PATH (.safetensors, .pth or .bin)") from exc
    return timm.create_model(TIMM_NAME, pretrained=False, **kwargs)


@BACKBONES.register("vit_tiny")
class ViTTiny(BackboneFactory):
    """ViT-tiny (timm, patch 16, dim 192, 12 blocks) with the paper's mask-transformer heads."""

    Config = ViTTinyConfig
    summary = "ViT-tiny (timm) + the paper's mask-transformer heads; features: every block's tokens"
    size_multiple = 16
    # The same architecture, shrunk for fast tests: 2 blocks of width 64 (2 attention heads;
    # the heads' two layers then have 1), 16 regression queries, a 16-wide regression MLP.
    test_overrides = {"depth": 2, "embed_dim": 64, "num_heads": 2, "n_reg_queries": 16, "reg_hidden": 16}

    def pretraining_model(self, objective: dict) -> nn.Module:
        """Masked-patch reconstruction (SimMIM) of this config's encoder from scratch."""
        unknown = sorted(set(objective) - {"mask_ratio"})
        if unknown:
            raise UserError(f"vit_tiny's pretraining objective takes mask_ratio only, not {', '.join(unknown)}")
        ratio = objective.get("mask_ratio", 0.6)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
            raise UserError(f"objective.mask_ratio must lie in (0, 1), got {ratio!r}")
        import dataclasses

        cfg = dataclasses.replace(self.cfg, pretrained=False, pretrained_file=None, pretraining=None)
        return MaskedPatchModel(_create_vit(cfg), self.cfg.normalize, float(ratio))

    def provenance(self) -> dict:
        if self.cfg.pretraining is None:
            return {}
        from mtlbench.pretrain import encoder_file

        return {"pretraining": encoder_file(self.cfg.pretraining)[1]}

    def encoder(self, tasks):
        enc = ViTEncoder(precision_aware_attention(_create_vit(self.cfg)), self.cfg.normalize)
        self._embed_dim = enc.out_channels
        return enc

    @property
    def embed_dim(self) -> int:
        """The encoder's token width (192 for ViT-tiny): the heads' input width."""
        dim = getattr(self, "_embed_dim", None)
        if dim is None:
            import timm

            # Heads built before any encoder: read the width off a weightless model.
            with torch.device("meta"):
                dim = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, **self.cfg.arch()).embed_dim
            self._embed_dim = dim
        return dim

    def head(self, task: Task) -> nn.Module:
        classify = task.kind == "classification"
        return MaskTransformerHead(
            self.embed_dim, task.channels, classify=classify,
            n_queries=task.channels if classify else self.cfg.n_reg_queries,
            n_layers=self.cfg.head_layers, dropout=self.cfg.head_dropout,
            hidden=self.cfg.reg_hidden)
