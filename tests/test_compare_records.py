"""docs/scripts/compare_records.py: the check that the code changed during a study left a run's numbers alone."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "scripts" / "compare_records.py"


def _module():
    spec = importlib.util.spec_from_file_location("compare_records", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(d: Path, name: str, metrics: dict, steps: list[dict], h: str = "abc") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    p = d / f"{name}.json"
    p.write_text(json.dumps({"config_hash": h, "metrics": metrics,
                             "history": {"steps_file": f"{name}.steps.jsonl"}}))
    return p


def test_identical_records_and_each_kind_of_difference(tmp_path, capsys):
    cr = _module()
    m = {"semseg": {"miou": 50.0}, "depth": {"abs_err": 0.4}}
    steps = [{"step": 0, "loss/depth": 1.0}, {"step": 1, "loss/depth": 0.5}]
    a = _write(tmp_path / "a", "seed0-abc", m, steps)
    b = _write(tmp_path / "b", "seed0-abc", m, steps)
    assert cr.main([str(a), str(b)]) == 0 and "identical" in capsys.readouterr().out
    c = _write(tmp_path / "c", "seed0-abc", {"semseg": {"miou": 50.0}, "depth": {"abs_err": 0.4000001}},
               [{"step": 0, "loss/depth": 1.0}, {"step": 1, "loss/depth": 0.5003}])
    assert cr.compare(a, c) == ["metrics/depth/abs_err: 0.4 vs 0.4000001", "step log loss/depth: largest difference 0.0003"]
    assert cr.main([str(a), str(c)]) == 1
    d = _write(tmp_path / "d", "seed0-abc", m, steps[:1], h="other")
    assert cr.compare(a, d) == ["config_hash abc vs other: not the same run", "step log: 2 rows vs 1"]
    assert cr.main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "no such record file" in capsys.readouterr().err
