"""Whether two run records of one config hold the same numbers: every metric and every step-log row.

    python docs/scripts/compare_records.py RECORD_A.json RECORD_B.json

Used by docs/scripts/standard_study.sh to retrain the first record of the standard study with the
current code and check that the code changes made during the study left the run's numbers as they
were (the records of one row span many commits). Prints each difference (metric, step-log column,
largest absolute difference) or "identical"; exit code 0 when identical, 1 when not, 2 on bad input.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _flat(prefix: str, tree, out: dict) -> dict:
    if isinstance(tree, dict):
        for k, v in tree.items():
            _flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = tree
    return out


def _rows(record_path: Path, record: dict) -> list[dict]:
    name = (record.get("history") or {}).get("steps_file")
    path = record_path.with_name(name) if name else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(a_path: Path, b_path: Path) -> list[str]:
    a, b = (json.loads(p.read_text()) for p in (a_path, b_path))
    diffs = []
    if a.get("config_hash") != b.get("config_hash"):
        diffs.append(f"config_hash {a.get('config_hash')} vs {b.get('config_hash')}: not the same run")
    for name in ("metrics", "extra_metrics"):
        fa, fb = _flat("", a.get(name) or {}, {}), _flat("", b.get(name) or {}, {})
        for k in sorted(set(fa) | set(fb)):
            if fa.get(k) != fb.get(k):
                diffs.append(f"{name}/{k}: {fa.get(k)!r} vs {fb.get(k)!r}")
    ra, rb = _rows(a_path, a), _rows(b_path, b)
    if len(ra) != len(rb):
        diffs.append(f"step log: {len(ra)} rows vs {len(rb)}")
    worst: dict[str, float] = {}
    for x, y in zip(ra, rb):
        for k in set(x) | set(y):
            u, v = x.get(k), y.get(k)
            if u == v:
                continue
            d = abs(u - v) if isinstance(u, (int, float)) and isinstance(v, (int, float)) else math.inf
            worst[k] = max(worst.get(k, 0.0), d)
    diffs += [f"step log {k}: largest difference {d:.3g}" for k, d in sorted(worst.items())]
    return diffs


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    paths = [Path(p) for p in argv]
    for p in paths:
        if not p.is_file():
            print(f"compare_records: {p}: no such record file", file=sys.stderr)
            return 2
    diffs = compare(*paths)
    print("\n".join(diffs) if diffs else f"identical: {paths[0]} and {paths[1]} (every metric, every step-log row)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
