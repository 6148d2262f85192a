"""Why OKD-MTL wins or loses on a setting: per record, what its step and epoch logs show.

For every OKD-MTL record of a preset (default ``quick``) on the synthetic data
with ViT-tiny, grouped by profile and ablation options, one row per seed:

* Δ of the deployable network against the ``baseline`` record of the same
  seed and setting (the paper's Eq. 4, %);
* Δ of OKD-MTL's own single-task networks (``extra_metrics.stl``: evaluated
  at the end, after they stopped training) against the same baseline, and their
  depth error beside the deployable network's: how good the teachers were;
* OTW: the share of the joint steps on which a task's λ was below 0.05 (a task
  switched off), and the share on which every λ was 1 (OTW inert);
* L_AFD against the task losses: its value on the first joint step and its
  mean over the last epoch, each against the sum of the deployable network's
  task losses at the same steps.

Reads ``results/runs/synthetic/vit_tiny/okd/*.json`` and the ``.steps.jsonl``
and ``.epochs.jsonl`` files beside them (schema 2 records; older ones are
skipped).  The numbers in docs/RESULTS.md come from:

    .venv/bin/python docs/scripts/okd_diagnostics.py --seeds 0-4
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from mtlbench.delta import delta, directions_of
from mtlbench.records import RecordStore, read_record

OFF = 0.05


def seeds_arg(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def label(info: dict) -> str:
    o = info.get("options", {})
    parts = [f"profile={o.get('profile')}"]
    if o.get("afd") != "ours":
        parts.append(f"afd={o.get('afd')}")
    if not o.get("otw", True):
        parts.append("otw=false")
    if o.get("teachers") != "online":
        parts.append(f"teachers={o.get('teachers')}")
    if o.get("T") != 0.1:
        parts.append(f"T={o.get('T')}")
    return " ".join(parts)


def diagnose(rec: dict, path: Path, out: Path) -> dict | None:
    steps_p = Path(str(path)[:-len(".json")] + ".steps.jsonl")
    if not steps_p.exists() or rec.get("schema", 1) < 2:
        return None
    base = RecordStore.scan_method(out, "baseline", rec["config"]).find("baseline", rec["config"])
    if not base:
        return None
    b = base[0]
    dirs = directions_of(rec, b)
    row = {"seed": rec["seed"], "delta": delta(rec["metrics"], b["metrics"], dirs),
           "depth_abs": rec["metrics"]["depth"]["abs_err"], "base_depth_abs": b["metrics"]["depth"]["abs_err"]}
    stl = (rec.get("extra_metrics") or {}).get("stl")
    if stl:
        row["stl_delta"] = delta(stl, b["metrics"], dirs)
        row["stl_depth_abs"] = stl["depth"]["abs_err"]
    rows = [json.loads(line) for line in steps_p.read_text().splitlines() if line.strip()]
    joint = [r for r in rows if "afd" in r or any(k.startswith("lambda/") for k in r)]
    tasks = sorted(k.split("/", 1)[1] for k in rows[0] if k.startswith("loss/")) if rows else []
    lam = [r for r in joint if any(f"lambda/{t}" in r for t in tasks)]
    if lam:
        row["off"] = {t: sum(r.get(f"lambda/{t}", 1.0) < OFF for r in lam) / len(lam) for t in tasks}
        row["inert"] = sum(all(r.get(f"lambda/{t}") == 1.0 for t in tasks) for r in lam) / len(lam)
    afd = [r for r in joint if "afd" in r]
    if afd:
        def task_sum(r):
            return sum(r.get(f"mtl/{t}", r.get(f"loss/{t}", 0.0)) for t in tasks)
        last_epoch = max(r["epoch"] for r in afd)
        last = [r for r in afd if r["epoch"] == last_epoch]
        row["afd_first"], row["task_first"] = afd[0]["afd"], task_sum(afd[0])
        row["afd_last"] = statistics.fmean(r["afd"] for r in last)
        row["task_last"] = statistics.fmean(task_sum(r) for r in last)
    return row


def fmt(x, spec="+.2f") -> str:
    return "–" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", default="0-4")
    args = p.parse_args(argv)
    want = seeds_arg(args.seeds)
    out = Path(args.out)
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted((out / "runs" / "synthetic" / "vit_tiny" / "okd").glob("*.json")):
        rec = read_record(path)
        info = rec.get("method_info") or {}
        if rec.get("preset") != args.preset or rec.get("seed") not in want or "profile" not in info:
            continue
        row = diagnose(rec, path, out)
        if row is not None:
            groups[label(info)].append(row)
    for name, rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["seed"])
        print(f"\n== okd {name}: {len(rows)} seed(s)")
        print(f"{'seed':>4} {'Δ':>8} {'STL nets Δ':>10} {'depth abs':>9} {'STL depth':>9} {'base depth':>10} "
              f"{'λ<0.05 (share of steps)':>34} {'all λ=1':>7} {'L_AFD first/tasks':>18} {'L_AFD last/tasks':>17}")
        for r in rows:
            off = " ".join(f"{t}:{v:.2f}" for t, v in r.get("off", {}).items()) or "–"
            first = (f"{r['afd_first']:.2f}/{r['task_first']:.2f}" if "afd_first" in r else "–")
            last = (f"{r['afd_last']:.2f}/{r['task_last']:.2f}" if "afd_last" in r else "–")
            print(f"{r['seed']:>4} {r['delta']:>+8.2f} {fmt(r.get('stl_delta')):>10} {r['depth_abs']:>9.4f} "
                  f"{fmt(r.get('stl_depth_abs'), '.4f'):>9} {r['base_depth_abs']:>10.4f} {off:>34} "
                  f"{fmt(r.get('inert'), '.2f'):>7} {first:>18} {last:>17}")
    if not groups:
        raise SystemExit(f"no schema-2 okd records of preset {args.preset} with seeds {args.seeds} under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
