"""benchmarks/bench_libmtl.py: the side-by-side benchmark against LibMTL runs and prints a sane table.

LibMTL is in the ``dev`` extra (the cross-check oracle of tests/test_crosscheck_libmtl.py)
and otherwise an optional, benchmark-only requirement (benchmarks/requirements-libmtl.txt):
the tests that run the benchmark skip when it is not installed.  The side-by-side run
trains two full-size DeepLabV3 networks, so it is ``slow``.  The missing-LibMTL message
is tested either way.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_libmtl.py"
PARAMS = 71_888_721  # DeepLabV3 (dilated ResNet-50 + ASPP heads 13/1/3), both frameworks
ROW = re.compile(r"^(EW|GradNorm)\s+(LibMTL|mtlbench)\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x"
                 r"\s+([\d.]+)\s+([\d.]+)x\s+(\S+)\s+(\S+)\s*$")


def _need_libmtl() -> None:
    # Not pytest.importorskip("LibMTL"): LibMTL 1.1.5 does not import on a current torchvision
    # without the benchmark's workaround (it imports the removed torchvision.models.utils), so
    # importorskip would always skip.  Whether it is installed is what decides.
    if importlib.util.find_spec("LibMTL") is None:
        pytest.skip("LibMTL is a benchmark-only requirement: "
                    "pip install --no-deps -r benchmarks/requirements-libmtl.txt")


def _run(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _rows(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            g = m.groups()
            rows.append({"comparison": g[0], "side": g[1], "mode": g[2], "wall_min": float(g[3]),
                         "wall_med": float(g[4]), "ips": float(g[5]), "ratio": float(g[6]),
                         "cpu_med": float(g[7]), "cpu_ratio": float(g[8]), "held": g[9], "peak": g[10]})
    return rows


def _params(stdout: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for m in re.finditer(r"parameters \((\w+)\): LibMTL ([\d,]+) .*\| mtlbench ([\d,]+): (\w+)", stdout):
        out[m.group(1)] = (int(m.group(2).replace(",", "")), int(m.group(3).replace(",", "")), m.group(4))
    return out


def _check_rows(rows: list[dict], comparisons: list[str]) -> None:
    assert [r["comparison"] for r in rows] == [c for c in comparisons for _ in range(3)]
    for c in comparisons:
        libmtl, fp32, default = [r for r in rows if r["comparison"] == c]
        assert libmtl["side"] == "LibMTL" and libmtl["mode"] == "fp32"
        assert libmtl["ratio"] == 1.0 and libmtl["cpu_ratio"] == 1.0
        assert fp32["side"] == default["side"] == "mtlbench"
        assert fp32["mode"] == "fp32" and default["mode"].startswith("default (")
    for r in rows:
        for k in ("wall_min", "wall_med", "ips", "ratio", "cpu_med", "cpu_ratio"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["wall_min"] <= r["wall_med"]


def test_missing_libmtl_exits_2_with_the_install_hint():
    # Importing LibMTL fails (None in sys.modules) whether or not it is installed.
    code = ("import runpy, sys; sys.modules['LibMTL'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}, '--smoke']; runpy.run_path(sys.argv[0], run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "LibMTL is not installed" in proc.stderr
    assert "pip install --no-deps -r benchmarks/requirements-libmtl.txt" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # two full-size DeepLabV3 (72M parameters each): 25 s on 2 cores
def test_smoke_ew_table():
    _need_libmtl()
    proc = _run("--smoke", "--compare", "ew")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _params(proc.stdout) == {"EW": (PARAMS, PARAMS, "equal")}, proc.stdout
    rows = _rows(proc.stdout)
    _check_rows(rows, ["EW"])
    assert all(r["held"] == r["peak"] == "n/a" for r in rows)  # --smoke skips the memory subprocesses


@pytest.mark.slow
def test_smoke_both_comparisons_with_memory():
    _need_libmtl()
    proc = _run("--smoke", "--memory")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # GradNorm adds its three learnable task weights on both sides.
    assert _params(proc.stdout) == {"EW": (PARAMS, PARAMS, "equal"),
                                    "GradNorm": (PARAMS + 3, PARAMS + 3, "equal")}, proc.stdout
    rows = _rows(proc.stdout)
    _check_rows(rows, ["EW", "GradNorm"])
    for r in rows:
        assert float(r["held"]) > 0 and float(r["peak"]) > 0, r
