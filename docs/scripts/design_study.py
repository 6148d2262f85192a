"""The standard preset's design study (issue 23): train and summarise candidate settings.

A candidate is a config file of deltas, ``docs/design/<name>.yaml``. The study looks only at
the reference method (``baseline``), single-task learning (``stl``), A/A pairs of the
baseline (``train.nuisance_seed`` 1 and 2) and the input-blind references: never at any other
method while choosing.

    # train what is missing (niced, one thread per run, two at once), records in results/design
    .venv/bin/python docs/scripts/design_study.py run q_v2 p_q_v2 --methods baseline,stl --seeds 0-2
    .venv/bin/python docs/scripts/design_study.py run p_q_v2 --aa --seeds 0-2
    # the design table
    .venv/bin/python docs/scripts/design_study.py report q_v1 q_v2 p_q_v2

``q_v1`` is the quick preset itself (its committed records under ``results/runs``).

Per candidate and method the report prints, over the seeds found: each task's primary
metric (mean and sample sd), its ratio to the input-blind reference's (depth abs err and
normal mean angle: run / reference, lower is better; mIoU: run / reference, higher is
better), the share of run-tasks that are degenerate (the record's ``learned`` block), the
A/A noise floor (sd of the pairs' Δ), and the cost: mean wall time per run and its split
(data wait and evaluation, from the records' ``timing``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design"
OUT = ROOT / "results" / "design"
PRIMARY = {"semseg": "miou", "depth": "abs_err", "normal": "mean"}


def seeds_of(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def _command(cand: str, method: str, seed: int, nuisance: int | None) -> list[str]:
    cmd = [str(ROOT / ".venv" / "bin" / "mtlbench"), "run", "--config", str(DESIGN / f"{cand}.yaml"),
           "--method", method, "--seed", str(seed), "--set", "train.threads=1", "--out", str(OUT), "--quiet", "--resume"]
    if nuisance is not None:
        cmd += ["--set", f"train.nuisance_seed={nuisance}"]
    return cmd


def run(args) -> int:
    jobs = []
    for cand in args.candidates:
        for seed in seeds_of(args.seeds):
            if args.aa:
                jobs += [(cand, "baseline", seed, k) for k in (1, 2)]
            else:
                jobs += [(cand, m, seed, None) for m in args.methods.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def one(job):
        cand, method, seed, k = job
        cmd = ["nice", "-n", "10", *_command(cand, method, seed, k)]
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        tail = (r.stderr.strip().splitlines() or [""])[-1]
        print(f"{cand} {method} seed {seed}{'' if k is None else f' nuisance {k}'}: rc {r.returncode} {tail}",
              flush=True)
        return r.returncode

    with ThreadPoolExecutor(args.jobs) as pool:
        rcs = list(pool.map(one, jobs))
    return 0 if all(rc == 0 for rc in rcs) else 1


def _records(cand: str) -> list[dict]:
    """The candidate's records: those whose config equals the candidate's resolved config
    (any seed, method, nuisance seed)."""
    sys.path.insert(0, str(ROOT))
    from mtlbench.config import identity_data, resolve

    base = ROOT / "results" if cand == "q_v1" else OUT
    out = []
    for p in sorted((base / "runs" / "synthetic" / "vit_tiny").glob("*/seed*.json")):
        rec = json.loads(p.read_text())
        cfg = rec.get("config", {})
        method, seed = cfg.get("method", {}).get("name"), rec.get("seed")
        sets = [f"train.nuisance_seed={cfg['train']['nuisance_seed']}"] \
            if cfg.get("train", {}).get("nuisance_seed") is not None else []
        want = resolve(preset="quick", config_file=None if cand == "q_v1" else str(DESIGN / f"{cand}.yaml"),
                       flags=[("method.name", method, "--method"), ("seed", seed, "--seed")], sets=sets)
        a, b = identity_data(want.data), identity_data(cfg)
        for d in (a, b):
            d.get("train", {}).pop("threads", None)
        if a == b:
            rec["_path"] = str(p)
            out.append(rec)
    return out


def _ms(xs):
    if not xs:
        return "–"
    m = statistics.fmean(xs)
    return f"{m:.4g} ± {statistics.stdev(xs):.2g}" if len(xs) > 1 else f"{m:.4g}"


def report(args) -> int:
    sys.path.insert(0, str(ROOT))
    from mtlbench.delta import delta, directions_of

    from mtlbench.config import resolve
    from mtlbench.reference import learned_block
    from mtlbench.registry import DATASETS

    rows = []
    for cand in args.candidates:
        recs = _records(cand)
        cfg = resolve(preset="quick", config_file=None if cand == "q_v1" else str(DESIGN / f"{cand}.yaml"))
        dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
        for r in recs:  # against this candidate's reference (records before the `learned` block included)
            r["learned"] = learned_block(dataset, r["metrics"])
        for method in ("baseline", "stl"):
            rs = [r for r in recs if r["config"]["method"]["name"] == method
                  and r["config"]["train"].get("nuisance_seed") is None]
            if not rs:
                continue
            cells = {}
            for task, metric in PRIMARY.items():
                vals = [r["metrics"][task][metric] for r in rs if task in r["metrics"]]
                refs = [r["learned"][task]["reference"] for r in rs if "learned" in r and task in r["learned"]]
                ratio = [v / refs[0] for v in vals] if refs else []
                cells[task] = (vals, ratio)
            degenerate = sum(v.get("degenerate", False) for r in rs for v in r.get("learned", {}).values())
            n_tasks = sum(len(r.get("learned", {})) for r in rs)
            wall = [r["timing"]["wall_s"] for r in rs]
            data = [r["timing"].get("data_s") for r in rs if r["timing"].get("data_s") is not None]
            ev = [r["timing"].get("eval_s") for r in rs if r["timing"].get("eval_s") is not None]
            rows.append((cand, method, sorted(r["seed"] for r in rs), cells, degenerate, n_tasks, wall, data, ev))
        aa = {}
        for r in recs:
            k = r["config"]["train"].get("nuisance_seed")
            if k is not None and r["config"]["method"]["name"] == "baseline":
                aa.setdefault(r["seed"], {})[k] = r
        deltas = []
        for seed, pair in sorted(aa.items()):
            if 1 in pair and 2 in pair:
                deltas.append(delta(pair[2]["metrics"], pair[1]["metrics"], directions_of(pair[1])))
        floor = (f"sd {statistics.stdev(deltas):.2f} over {len(deltas)} pairs ({', '.join(f'{d:+.2f}' for d in deltas)})"
                 if len(deltas) >= 2 else f"{len(deltas)} pair(s)")
        rows.append((cand, "A/A", floor))
    print("| candidate | method | seeds | mIoU (x ref) | depth abs (x ref) | normal mean (x ref) | degenerate | "
          "wall s/run (data, eval) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if row[1] == "A/A":
            print(f"| {row[0]} | A/A noise floor | {row[2]} | | | | | |")
            continue
        cand, method, seeds, cells, deg, n_tasks, wall, data, ev = row
        parts = []
        for task in PRIMARY:
            vals, ratio = cells[task]
            parts.append(f"{_ms(vals)} ({_ms(ratio)})" if vals else "–")
        cost = f"{statistics.fmean(wall):.0f}" + (f" ({statistics.fmean(data):.0f}, {statistics.fmean(ev):.0f})"
                                                  if data and ev else "")
        print(f"| {cand} | {method} | {','.join(map(str, seeds))} | {' | '.join(parts)} | {deg}/{n_tasks} | {cost} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("candidates", nargs="+")
    r.add_argument("--methods", default="baseline,stl")
    r.add_argument("--seeds", default="0-2")
    r.add_argument("--aa", action="store_true", help="the baseline's A/A pairs (nuisance seeds 1 and 2)")
    r.add_argument("--jobs", type=int, default=2)
    r.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("candidates", nargs="+")
    p.set_defaults(func=report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
