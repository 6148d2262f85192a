"""The record store (mtlbench.records): reading, matching, commands, writing; on the committed records too."""
from __future__ import annotations

import ast
import copy
import json
import pickle
import shlex
from pathlib import Path

import pytest

from mtlbench import records as R
from mtlbench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _write(out: Path, rec: dict) -> Path:
    rec = {k: v for k, v in rec.items() if k != "_path"}
    p = out / "runs" / rec["dataset"] / rec["backbone"] / rec["method"] / f"seed{rec['seed']}-{rec['config_hash']}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec))
    return p


@pytest.fixture(scope="module")
def committed() -> R.RecordStore:
    return R.RecordStore.scan(RESULTS)


@pytest.fixture
def baseline(committed) -> dict:
    """A committed quick-preset baseline record (fp32, the preset's settings)."""
    recs = [r for r in committed if r["method"] == "baseline" and r["preset"] == "quick"
            and r["config"]["train"]["amp"] in ("fp32", "auto")]
    return copy.deepcopy(sorted(recs, key=lambda r: r["_path"])[0])


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------

def test_the_committed_records_all_read(committed):
    n = len(list((RESULTS / "runs").rglob("*.json")))
    assert n >= 163 and len(committed) == n and committed.problems == []


def test_every_committed_record_serves_its_own_setting(committed):
    for rec in committed:
        found = committed.find(rec["method"], rec["config"])
        assert any(r["_path"] == rec["_path"] for r in found), rec["_path"]
        assert all(r["method"] == rec["method"] and r["seed"] == rec["seed"] for r in found)


def test_scan_method_reads_one_folder_and_matches_as_the_whole_store(committed, baseline):
    like = baseline["config"]
    part = R.RecordStore.scan_method(RESULTS, "baseline", like)
    assert {r["method"] for r in part} == {"baseline"}
    assert [r["_path"] for r in part.find("baseline", like)] == [r["_path"] for r in committed.find("baseline", like)]


def test_unreadable_files_are_problems_with_the_message_alone(tmp_path, baseline):
    bad = _write(tmp_path, baseline).parent / "seed9-broken.json"
    bad.write_text("{not json")
    (bad.parent / "seed8-other.json").write_text(json.dumps({"hello": 1}))
    store = R.RecordStore.scan(tmp_path)
    assert len(store) == 1
    problems = {p.path.name: p.problem for p in store.problems}
    assert set(problems) == {"seed9-broken.json", "seed8-other.json"}
    assert "not valid JSON" in problems["seed9-broken.json"] and "hint" not in problems["seed9-broken.json"]
    assert "not an mtlbench run record" in problems["seed8-other.json"]


# ---------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------

def test_a_record_of_other_settings_does_not_serve_and_explain_says_which(tmp_path, baseline):
    _write(tmp_path, baseline)
    other = copy.deepcopy(baseline)
    other["config"]["train"]["epochs"] += 1
    other["config_hash"] = "0000000000"
    _write(tmp_path, other)
    store = R.RecordStore.scan(tmp_path)
    found = store.find("baseline", baseline["config"])
    assert [r["config_hash"] for r in found] == [baseline["config_hash"]]
    rec = next(r for r in store if r["config_hash"] == "0000000000")
    why = store.explain(rec, baseline["config"], method="baseline")
    assert why.what == "settings" and any(d.startswith("train.epochs=") for d in why.details)
    # 1 and 1.0 are one number; a runtime key (train.device) is not a setting
    like = copy.deepcopy(baseline["config"])
    like["train"]["lr"] = float(like["train"]["lr"])
    like["train"]["device"] = "cuda:3"
    assert store.explain(next(r for r in store if r["config_hash"] == baseline["config_hash"]), like,
                         method="baseline") is None
    # another seed or preset is another identity
    for key, value in (("seed", baseline["seed"] + 1), ("preset", "smoke")):
        like = {**baseline["config"], key: value}
        assert store.find("baseline", like) == []


def test_method_options_match_with_defaults_filled_in(tmp_path, committed):
    okd = [r for r in committed if r["method"] == "okd" and not R.stale_options(r["config"]["method"], "okd")]
    rec = copy.deepcopy(okd[0])
    opts = {k: v for k, v in rec["config"]["method"].items() if k != "name"}
    defaults = R.method_defaults("okd")
    changed = {k: v for k, v in opts.items() if defaults.get(k) != v}
    _write(tmp_path, rec)
    store = R.RecordStore.scan(tmp_path)
    like = rec["config"]
    assert len(store.find("okd", like)) == 1  # options=None: any options
    assert len(store.find("okd", like, options=changed)) == 1
    key = next(k for k, v in defaults.items() if isinstance(v, bool))
    flipped = {**changed, key: not opts.get(key, defaults[key])}
    assert store.find("okd", like, options=flipped) == []
    assert store.explain(store.records[0], like, method="okd", options=flipped).what == "options"


def test_must_settings_count_a_missing_key_as_the_plugins_default(tmp_path, baseline):
    rec = copy.deepcopy(baseline)
    del rec["config"]["dataset"]["variant"]  # as a record written before the option existed
    _write(tmp_path, rec)
    store = R.RecordStore.scan(tmp_path)
    assert len(store.find("baseline", baseline["config"], must={"dataset": {"variant": "nyuv2"}})) == 1
    assert store.find("baseline", baseline["config"], must={"dataset": {"variant": "cityscapes"}}) == []
    # without must, a key only one side has is not compared
    like = copy.deepcopy(baseline["config"])
    like["dataset"]["variant"] = "cityscapes"
    assert len(store.find("baseline", like)) == 1


def test_newest_record_first(tmp_path, baseline):
    a, b = copy.deepcopy(baseline), copy.deepcopy(baseline)
    a["created"], b["created"] = "2026-01-01T00:00:00+00:00", "2026-06-01T00:00:00+00:00"
    b["config_hash"] = "1111111111"
    _write(tmp_path, a)
    _write(tmp_path, b)
    found = R.RecordStore.scan(tmp_path).find("baseline", baseline["config"])
    assert [r["config_hash"] for r in found] == ["1111111111", a["config_hash"]]


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------

def test_command_for_resolves_back_to_the_same_run(baseline):
    from mtlbench.cli.run import parse_run_argv

    like = copy.deepcopy(baseline["config"])
    like["train"]["epochs"] = 3
    cmd = R.command_for(like, "baseline", out="elsewhere")
    assert "--set train.epochs=3" in cmd and cmd.endswith("--out elsewhere")
    _, cfg = parse_run_argv(shlex.split(cmd)[1:])
    assert cfg.data["train"]["epochs"] == 3 and cfg.seed == like["seed"] and cfg.preset == like["preset"]
    assert R.setting_differences(cfg.data, like) == []


def test_command_for_falls_back_to_the_configured_default_preset(baseline, monkeypatch):
    from mtlbench import config

    like = copy.deepcopy(baseline["config"])
    like["preset"] = None
    monkeypatch.setitem(config.DEFAULTS, "preset", "smoke")
    assert " --preset smoke " in R.command_for(like, "baseline")


def test_run_command_quotes_and_orders_its_flags():
    cmd = R.run_command("okd", "vit_tiny", "nyuv2", "paper", 2, data_root="/my data",
                        sets=["dataset.variant=nyuv2"], method_overrides={"otw": False, "T": [1, 2]})
    assert cmd == ("mtlbench run --method okd --backbone vit_tiny --dataset nyuv2 --preset paper --seed 2 "
                   "--data-root '/my data' --set dataset.variant=nyuv2 --set method.otw=false "
                   "--set 'method.T=[1,2]'")


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------

def test_write_record_writes_the_record_last(tmp_path, monkeypatch, baseline):
    paths = R.RunPaths(tmp_path, Path("synthetic/vit_tiny/baseline/seed0-abc"))
    paths.last.parent.mkdir(parents=True)
    paths.last.write_bytes(b"resume state")
    rec = {k: v for k, v in baseline.items() if k != "_path"}

    def fail(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(R, "atomic_write_bytes", fail)
    with pytest.raises(OSError):
        R.write_record(paths, rec, [{"epoch": 0}], {"model": {}})
    assert not paths.record.exists() and paths.last.exists()  # resumable, no half-finished record
    monkeypatch.undo()
    out = R.write_record(paths, rec, [{"epoch": 0, "x": float("nan")}], {"model": {}})
    assert out["_path"] == str(paths.record) and paths.final.is_file() and not paths.last.exists()
    assert R.read_record(paths.record)["id"] == rec["id"]
    assert json.loads(paths.epochs.read_text()) == {"epoch": 0, "x": None}  # strict JSON
    assert paths.steps.read_text() == ""


def test_report_epoch_never_picks_a_leading_or_unevaluated_epoch():
    rows = [{"epoch": 0, "leading": True, "metrics": {"": {}}, "train_loss": {"a": 0.0}},
            {"epoch": 1, "metrics": None, "train_loss": {"a": 0.1}},
            {"epoch": 2, "metrics": {"": {}}, "train_loss": {"a": 0.5}},
            {"epoch": 3, "metrics": {"": {}}, "train_loss": {"a": 0.9}}]
    assert R.report_epoch(rows, "last")["epoch"] == 3
    assert R.report_epoch(rows, "best_train_loss")["epoch"] == 2
    assert R.report_epoch(rows, "last", reportable=lambda e: e < 3)["epoch"] == 2
    assert R.report_epoch(rows, "last", reportable=lambda e: False)["epoch"] == 3
    with pytest.raises(UserError):
        R.report_epoch(rows, "best_val")


# ---------------------------------------------------------------------------
# debts: errors, checkpoints, imports
# ---------------------------------------------------------------------------

def test_user_error_keeps_message_and_hint_apart():
    exc = UserError("no such thing", hint="try another")
    assert (exc.message, exc.hint) == ("no such thing", "try another")
    assert str(exc) == "no such thing\n  hint: try another"
    again = pickle.loads(pickle.dumps(exc))
    assert (again.message, again.hint, str(again)) == (exc.message, exc.hint, str(exc))
    assert str(UserError("plain")) == "plain" and UserError("plain").hint is None


def test_the_cli_prints_message_and_hint(capsys):
    from mtlbench.cli import main

    assert main(["table", "--id", "1", "--out", "/nonexistent/dir"]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "\n  hint: " in err


def test_a_checkpoint_of_another_version_is_a_user_error(tmp_path):
    import torch

    from mtlbench.trainer import load_checkpoint

    p = tmp_path / "last.pt"
    torch.save({"epoch": 1, "model": {}, "optimizer": {}}, p)
    with pytest.raises(UserError, match="lacks optimizers") as exc:
        load_checkpoint(p)
    assert "--force" in exc.value.hint


def test_no_core_module_imports_the_cli():
    core = ROOT / "mtlbench"
    for path in core.rglob("*.py"):
        if core / "cli" in path.parents or path.name == "__main__.py":  # the CLI itself
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                assert not (mod.lstrip(".").startswith("cli") and node.level) \
                    and not mod.startswith("mtlbench.cli"), f"{path} imports {mod}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("mtlbench.cli") for a in node.names), path


@pytest.mark.parametrize("env, syncs", [(None, 2), ("1", 2), ("0", 0)])
def test_atomic_writes_fsync_unless_told_not_to(tmp_path, monkeypatch, env, syncs):
    """Records and step logs are forced to disk before they count (the default); the suite turns
    that off with MTLBENCH_FSYNC=0, which must still write the same files atomically."""
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    if env is None:
        monkeypatch.delenv("MTLBENCH_FSYNC", raising=False)
    else:
        monkeypatch.setenv("MTLBENCH_FSYNC", env)
    R.atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    log = R.StepLog(tmp_path / "steps.jsonl")
    log.write({"step": 0})
    size = log.sync()
    log.close()
    assert len(calls) == syncs
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"x": 1}
    assert size == len((tmp_path / "steps.jsonl").read_text()) > 0
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]  # no temporary file left
