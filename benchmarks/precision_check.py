"""Does a precision change move a method's metrics beyond seed noise?  Paired Δ over seeds, from run records.

Reads the records of one method (default ``baseline``) on one backbone and
preset under ``--out``, pairs the runs in precision ``--a`` (default ``bf16``,
i.e. ``device.amp`` of the record) with those in ``--b`` (default ``fp32``) of
the same seed and otherwise the same setting (every config key but
``train.amp``), and prints per seed the paper's Δ (Eq. 4, %) of ``a`` against
``b``, their mean with the 95% Student-t interval and the verdict of
:mod:`mtlbench.stats` (better / worse / no significant difference / too few
seeds).  For scale it also prints the seed-to-seed spread of ``b`` itself:
Δ of each ``b`` run against the ``b`` run of the next seed.

    .venv/bin/python benchmarks/precision_check.py                      # baseline, vit_tiny, quick
    .venv/bin/python benchmarks/precision_check.py --method okd --out results

Decides whether a backbone may default to bf16 (issue: throughput): only
if the verdict is "no significant difference" over at least three seeds.
"""
from __future__ import annotations

import argparse
import copy
import json

from mtlbench.config import identity_data
from mtlbench.delta import delta, directions_of
from mtlbench.records import RecordStore
from mtlbench.stats import summarize, t_interval


def setting_key(rec: dict) -> str:
    """The run's identity (:func:`mtlbench.config.identity_data`: runtime keys and later-added
    options at their default dropped) without the seed and ``train.amp``, as canonical JSON."""
    data = copy.deepcopy(rec["config"])
    data.pop("seed", None)
    data.get("train", {}).pop("amp", None)
    return json.dumps(identity_data(data), sort_keys=True, default=str)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="baseline")
    p.add_argument("--backbone", default="vit_tiny")
    p.add_argument("--preset", default="quick")
    p.add_argument("--a", default="bf16", help="precision under test (device.amp of the record)")
    p.add_argument("--b", default="fp32", help="reference precision")
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)

    groups: dict[str, dict[str, dict[int, dict]]] = {}
    for rec in RecordStore.scan(args.out):
        cfg = rec.get("config", {})
        if (cfg.get("method", {}).get("name") != args.method or cfg.get("backbone", {}).get("name") != args.backbone
                or cfg.get("preset") != args.preset or not rec.get("metrics")):
            continue
        amp = (rec.get("device") or {}).get("amp")
        groups.setdefault(setting_key(rec), {}).setdefault(amp, {})[int(cfg["seed"])] = rec
    pairs = [(k, g) for k, g in groups.items() if args.a in g and args.b in g]
    if not pairs:
        raise SystemExit(f"no setting of {args.method} on {args.backbone} ({args.preset}) has records in both "
                         f"{args.a} and {args.b} under {args.out}/runs")
    for _, g in pairs:
        a, b = g[args.a], g[args.b]
        dirs = directions_of(*a.values(), *b.values())
        per_seed = {s: delta(a[s]["metrics"], b[s]["metrics"], dirs) for s in sorted(set(a) & set(b))}
        summary = summarize(per_seed)
        print(f"{args.method} on {args.backbone}, preset {args.preset}: Δ of {args.a} against {args.b} "
              f"(paper's Eq. 4, %, paired by seed)")
        print("  per seed: " + ", ".join(f"{s}: {d:+.2f}" for s, d in per_seed.items()))
        iv = summary.interval
        ci = "" if iv.lo is None else f" (95% CI [{iv.lo:+.2f}, {iv.hi:+.2f}], {iv.n} seeds)"
        print(f"  mean {summary.text()}{ci} -> {summary.verdict}")
        seeds = sorted(b)
        noise = [delta(b[s]["metrics"], b[t]["metrics"], dirs) for s, t in zip(seeds, seeds[1:])]
        if noise:
            niv = t_interval(noise)
            print(f"  seed noise of {args.b} itself (Δ of seed s against seed s+1, seeds {seeds}): "
                  + ", ".join(f"{d:+.2f}" for d in noise)
                  + (f"; sd {niv.sd:.2f}" if niv.sd is not None else ""))
        metric_keys = [(t, m) for t, ms in a[seeds[0]]["metrics"].items() for m in ms] if seeds[0] in a else []
        for t, m in metric_keys:
            va = [a[s]["metrics"][t][m] for s in per_seed]
            vb = [b[s]["metrics"][t][m] for s in per_seed]
            print(f"    {t}/{m}: {args.a} " + " ".join(f"{v:.4g}" for v in va)
                  + f" | {args.b} " + " ".join(f"{v:.4g}" for v in vb))
        wall = {k: [g[k][s]["timing"]["train_s"] for s in per_seed] for k in (args.a, args.b)}
        print(f"  train_s per run: {args.a} " + ", ".join(f"{x:.0f}" for x in wall[args.a])
              + f" | {args.b} " + ", ".join(f"{x:.0f}" for x in wall[args.b])
              + " (records' own timing; the runs may have shared the machine differently)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
