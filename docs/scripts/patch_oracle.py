"""The ViT head's resolution limit on the quick val set (docs/BENCHMARK_DESIGN.md, issue 23).

A prediction exact per 16 x 16 patch (the ground truth's per-patch mean over valid pixels;
normals averaged and renormalised) and bilinearly upsampled, as the mask-transformer heads
upsample their per-patch outputs; scored like the runs (depth abs err over valid pixels,
normal angles in degrees).

    .venv/bin/python docs/scripts/patch_oracle.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mtlbench.data import synthetic as S
from mtlbench.data.mtan import NYUV2, MTANDataset

PATCH = 16


def main() -> None:
    ds = MTANDataset(S.ensure_generated("nyuv2", 320, 64, 96, 128, 0), "val", NYUV2)
    err, count, angles = 0.0, 0, []
    for i in range(len(ds)):
        item = ds[i]
        z = item["depth"][None]
        v = (z > 0).float()
        mean = F.avg_pool2d(z * v, PATCH) / F.avg_pool2d(v, PATCH).clamp_min(1e-6)
        up = F.interpolate(mean, size=z.shape[-2:], mode="bilinear", align_corners=False)
        m = v.bool()
        err += float((up - z).abs()[m].sum())
        count += int(m.sum())
        n = item["normal"][None]
        nv = n.abs().sum(1, keepdim=True) > 0
        un = F.normalize(F.interpolate(F.avg_pool2d(n, PATCH), size=n.shape[-2:], mode="bilinear",
                                       align_corners=False), dim=1)
        angles.append(torch.rad2deg(torch.acos((un * n).sum(1, keepdim=True).clamp(-1, 1)))[nv])
    a = torch.cat(angles)
    print(f"patch oracle on quick val ({len(ds)} images): depth abs err {err / count:.4f}; normals mean "
          f"{float(a.mean()):.2f} deg, median {float(a.median()):.2f}, <11.25 deg {float((a < 11.25).float().mean()) * 100:.1f}%")


if __name__ == "__main__":
    main()
