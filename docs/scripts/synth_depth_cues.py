"""What the synthetic renderer's images tell a network about depth and normals (issue 23 probe).

Two probes on the ``quick`` preset's data (synthetic nyuv2, 320 train + 64 val
images at 96x128, generation seed 0), each without touching the committed data:

``stats``: per image, from the renderer's own intermediate buffers (so it
reads what the pixels are made of, not an estimate): the share of surface
pixels with an untextured material; the share whose solid texture is
resolved (< 0.5 cycles per pixel) or aliased; how much of the shading the
camera-frame normal explains (R^2 of a quadratic in n); the variance of log
albedo against log shading; correlations of shading and of luminance with
depth.

``cnn``: a small convolutional network (5 stride-2 blocks, features merged at
1/4 size, 0.2 M parameters, pixel coordinates as two extra input channels,
added to the training set's per-pixel mean depth map) trained on depth alone
with an L1 loss for ``--epochs`` epochs, one CPU thread; prints the val abs
error per epoch beside the per-pixel mean and median maps.  ``--blind`` feeds
it zeros instead of the image (position only: it should end at the mean map);
``--ablate noshade`` renders the same scenes with constant shading (albedo x
0.75), ``--ablate notex`` with every material's first colour only (no
texture); every random draw is kept, so the geometry is the same.

    .venv/bin/python docs/scripts/synth_depth_cues.py stats [--variant cityscapes]
    .venv/bin/python docs/scripts/synth_depth_cues.py cnn [--blind] [--ablate noshade|notex] [--epochs 40]

It reads the renderer's private helpers (``synth_render._Surface`` and
friends), so it is a diagnostic of GENERATOR_VERSION 1, not an API.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mtlbench.data import synth_render as R
from mtlbench.data import synthetic as S

N_TRAIN, N_VAL, H, W, SEED = 320, 64, 96, 128, 0


def stats(variant: str, n: int) -> None:
    tab = R._TABLES[variant]
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(float(value))

    for i in range(n):
        rng = S.image_rng(SEED, variant, "train", i)
        cv, light = (R._nyu_scene if variant == "nyuv2" else R._city_scene)(rng, H, W)
        g = R._Surface(cv)
        m = cv.MAT.astype(np.intp)
        albedo = R._albedo(variant, tab, R._material_colours(rng, tab), m, g, light)
        shade = R._shading(rng, g, light)
        lum = (albedo * shade[..., None]).mean(-1)  # noise-free luminance
        ok = g.hit & (g.Z < R._MAX_DEPTH[variant])
        Z = g.Z
        pat = tab.pattern.take(m)
        add("sky (no surface)", 1 - ok.mean())
        add("untextured", ((pat == 0) & ok).sum() / ok.sum())
        # texture frequency along u in cycles (stripes) or cells (checker) per pixel, from the solid texture's phase
        f = tab.freq.take(m)
        stripe = g.PX * tab.axis[:, 0].take(m) + g.PY * tab.axis[:, 1].take(m) + g.PZ * tab.axis[:, 2].take(m)
        checker = np.stack([g.PX * f, g.PY * f, g.PZ * f])
        fr = np.where(pat[:, 1:] == 1, np.abs(np.diff(stripe, axis=1)), np.abs(np.diff(checker, axis=2)).max(0))
        tex = (m[:, 1:] == m[:, :-1]) & ok[:, 1:] & ok[:, :-1] & ((pat[:, 1:] == 1) | (pat[:, 1:] == 2))
        add("textured, resolved", (tex & (fr < 0.5)).sum() / ok.sum())
        add("textured, aliased", (tex & (fr >= 0.5)).sum() / ok.sum())
        n_cam = np.stack([g.NX, g.NY, g.NZ], -1) @ cv.R  # world -> camera frame
        X = np.concatenate([np.ones((ok.sum(), 1)), n_cam[ok], n_cam[ok] ** 2], 1)
        y = shade[ok]
        add("R2 shading ~ normal", 1 - (y - X @ np.linalg.lstsq(X, y, rcond=None)[0]).var() / y.var())
        add("var log albedo", np.log(np.maximum(albedo.mean(-1), 1e-3))[ok].var())
        add("var log shading", np.log(shade[ok]).var())
        add("r(shading, depth)", np.corrcoef(shade[ok], Z[ok])[0, 1])
        add("r(luminance, depth)", np.corrcoef(lum[ok], Z[ok])[0, 1])
        if "point" in light:
            lp = light["point"]
            d2 = (lp[0] - g.PX) ** 2 + (lp[1] - g.PY) ** 2 + (lp[2] - g.PZ) ** 2
            add("r(light falloff, depth)", np.corrcoef((12.0 / (6.0 + d2))[ok], Z[ok])[0, 1])
    print(f"{variant}: {n} train images of seed {SEED} at {H}x{W}; per image, then mean and median over images")
    for key, v in rows.items():
        print(f"  {key:26s} mean {np.nanmean(v):+.3f}  median {np.nanmedian(v):+.3f}")


def _ablated_data(what: str | None, out: Path) -> Path:
    if what is None:
        return S.ensure_generated("nyuv2", N_TRAIN, N_VAL, H, W, SEED, root=out)
    real_shading, real_albedo = R._shading, R._albedo
    if what == "noshade":
        def shading(rng, g, light):
            return np.full_like(real_shading(rng, g, light), 0.75)  # the draws are kept
        R._shading = shading
    else:
        def albedo(variant, tab, cols, m, g, light):
            return cols.reshape(-1, 3).take(2 * m, axis=0)
        R._albedo = albedo
    try:
        S.generate("nyuv2", out / what, N_TRAIN, N_VAL, H, W, seed=SEED)
    finally:
        R._shading, R._albedo = real_shading, real_albedo
    return out / what


def cnn(epochs: int, blind: bool, ablate: str | None) -> None:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="synth-cues-") as tmp:
        d = _ablated_data(ablate, Path(tmp))

        def load(split: str, n: int):
            im = np.stack([np.load(d / split / "image" / f"{i}.npy") for i in range(n)])
            z = np.stack([np.load(d / split / "depth" / f"{i}.npy") for i in range(n)])
            return torch.from_numpy(im).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(z).permute(0, 3, 1, 2)

        xtr, ztr = load("train", N_TRAIN)
        xva, zva = load("val", N_VAL)
    if blind:
        xtr, xva = torch.zeros_like(xtr), torch.zeros_like(xva)
    vtr, vva = ztr > 0, zva > 0
    mean_map = (ztr * vtr).sum(0) / vtr.sum(0).clamp(min=1)
    med = ztr.clone()
    med[~vtr] = float("nan")
    median_map = torch.nanmedian(med, 0).values.nan_to_num(0)

    def abs_err(p, z, v) -> float:
        return (p - z).abs()[v].mean().item()

    print(f"val abs err: per-pixel mean map {abs_err(mean_map.expand_as(zva), zva, vva):.4f}, "
          f"median map {abs_err(median_map.expand_as(zva), zva, vva):.4f}", flush=True)
    coords = torch.stack(torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij"))[None]

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList([block(5, 24), block(24, 32), block(32, 48), block(48, 64), block(64, 64)])
            self.head = nn.Sequential(nn.Conv2d(32 + 48 + 64 + 64, 64, 1), nn.ReLU(), nn.Conv2d(64, 1, 1))

        def forward(self, x):
            x = torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], 1)
            feats = []
            for k, b in enumerate(self.enc):
                x = b(x)
                if k:
                    feats.append(F.interpolate(x, (H // 4, W // 4), mode="bilinear", align_corners=False))
            out = F.interpolate(self.head(torch.cat(feats, 1)), (H, W), mode="bilinear", align_corners=False)
            return out + mean_map

    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    batch = 16
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (N_TRAIN // batch))
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(N_TRAIN)
        for b in range(0, N_TRAIN, batch):
            idx = perm[b:b + batch]
            loss = (net(xtr[idx]) - ztr[idx]).abs()[vtr[idx]].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            val, train = net(xva), net(xtr[:N_VAL])
        print(f"epoch {ep + 1}: train abs {abs_err(train, ztr[:N_VAL], vtr[:N_VAL]):.4f}  "
              f"val abs {abs_err(val, zva, vva):.4f}  ({time.time() - t0:.0f} s)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="what the pixels are made of")
    s.add_argument("--variant", choices=R.VARIANTS, default="nyuv2")
    s.add_argument("--n", type=int, default=150, help="images")
    c = sub.add_parser("cnn", help="train a small depth CNN on the quick data")
    c.add_argument("--epochs", type=int, default=40)
    c.add_argument("--blind", action="store_true", help="zeros instead of the image: position only")
    c.add_argument("--ablate", choices=("noshade", "notex"), default=None)
    args = p.parse_args()
    if args.cmd == "stats":
        stats(args.variant, args.n)
    else:
        cnn(args.epochs, args.blind, args.ablate)


if __name__ == "__main__":
    main()
