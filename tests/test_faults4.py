"""Hostile inputs and faults, round 3 (issue 27), the leftovers: each is an exit-2 error naming
the file, key or flag and how to fix it, never a hang, a traceback or a silent reading.

* hangs: a FIFO named ``synthetic.json`` (the generated dataset's manifest), a FIFO claims file
  and a FIFO where ``data check`` remembers its verdict are refused without being opened;
* malformed inputs: table specs and claims files that are not UTF-8, claims files of the wrong
  shape, and teacher (``stl``) records without the setting a teacher is rebuilt from;
* unbounded messages: a claims file whose aliases expand hugely is refused as table specs are;
* silent acceptance: YAML 1.1's sexagesimal numbers (``1:30`` read as 90) are refused like its
  octal ones (``010``), in ``--set``, config files and table specs alike.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from mtlbench.cli import main
from mtlbench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = FIXTURES / "tables" / "results"
SPECS = ROOT / "mtlbench" / "tables"


def run_cli(argv, capsys):
    """``(exit code, stdout + stderr)`` of ``mtlbench ARGV`` in-process; fails on an escaped exception."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        out, err = capsys.readouterr()
        pytest.fail(f"SystemExit({exc.code!r}) escaped mtlbench.cli.main:\n{out}{err}")
    except Exception as exc:  # noqa: BLE001 - what the user would see as a traceback
        import traceback

        capsys.readouterr()
        pytest.fail(f"an exception escaped (a traceback for the user):\n{''.join(traceback.format_exception(exc))}")
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text
    return rc, text


def in_a_thread(fn, fifo: Path, seconds: float = 60.0) -> dict:
    """``fn()`` in a thread; if it still runs after ``seconds``, a writer opens ``fifo`` to release
    it (so the test ends) and the result says it hung.  ``{"rc" | "exc", "hung"?}``."""
    result: dict = {}

    def target():
        try:
            result["rc"] = fn()
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive():
        result["hung"] = True
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        th.join(30)
    return result


def cli_in_a_thread(argv, fifo: Path, capsys) -> tuple[dict, str]:
    result = in_a_thread(lambda: main([str(a) for a in argv]), fifo)
    out, err = capsys.readouterr()
    assert not result.get("hung"), f"mtlbench {' '.join(map(str, argv))} blocked on the FIFO {fifo}"
    assert "exc" not in result, result
    return result, out + err


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults4-data") / "synth"
    assert main(["data", "synth", "--dataset", "synthetic", "--data-root", str(root), "--n-train", "2",
                 "--n-val", "1", "--height", "16", "--width", "24"]) == 0
    return root


# =============================================================================================
# hangs
# =============================================================================================

@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_data_check_refuses_a_fifo_manifest_without_opening_it(synthetic_dir, tmp_path, capsys, quick):
    root = tmp_path / "synth"
    shutil.copytree(synthetic_dir, root)
    fifo = root / "synthetic.json"
    fifo.unlink()
    os.mkfifo(fifo)
    argv = ["data", "check", "--dataset", "synthetic", "--data-root", root] + (["--quick"] if quick else [])
    result, text = cli_in_a_thread(argv, fifo, capsys)
    assert result["rc"] == 2, text
    assert str(fifo) in text and "not a regular file" in text and "FIFO" in text, text
    assert "generate the data again" in text, text


def test_data_check_refuses_a_fifo_among_the_synthetic_data_files(synthetic_dir, tmp_path, capsys):
    root = tmp_path / "synth"
    shutil.copytree(synthetic_dir, root)
    fifo = root / "val" / "image" / "0.npy"
    fifo.unlink()
    os.mkfifo(fifo)
    result, text = cli_in_a_thread(["data", "check", "--dataset", "synthetic", "--data-root", root], fifo, capsys)
    assert result["rc"] == 2, text
    line = next((ln for ln in text.splitlines() if str(fifo) in ln), "")
    assert "not a regular file" in line and "FIFO" in line, text


def test_the_synthetic_loader_refuses_a_fifo_manifest_in_its_cache(tmp_path):
    """A run's dataset (``ensure_generated``) finds the cached copy by its manifest: a FIFO there
    is a UserError naming it, not an open that blocks for ever."""
    from mtlbench.data.synthetic import cache_key, ensure_generated

    final = tmp_path / cache_key("nyuv2", 2, 1, 16, 24, 0)
    final.mkdir()
    fifo = final / "synthetic.json"
    os.mkfifo(fifo)
    result = in_a_thread(lambda: ensure_generated("nyuv2", 2, 1, 16, 24, 0, root=tmp_path), fifo)
    assert not result.get("hung"), "ensure_generated blocked on the FIFO manifest"
    exc = result.get("exc")
    assert isinstance(exc, UserError), result
    assert str(fifo) in exc.message and "FIFO" in exc.message, exc.message


def test_a_fifo_where_the_data_verdict_is_kept_is_not_opened(synthetic_dir, tmp_path):
    """The remembered verdict of the check before training (in the cache) is only read when it
    is a regular file: a FIFO there is a verdict not remembered, and the data is checked again."""
    from mtlbench.data.base import _verdict_path
    from mtlbench.data.mtan import NYUV2, validate_values

    root = tmp_path / "synth"
    shutil.copytree(synthetic_dir, root)
    verdict = _verdict_path(root)
    verdict.parent.mkdir(parents=True, exist_ok=True)
    verdict.unlink(missing_ok=True)
    os.mkfifo(verdict)
    logged: list[str] = []
    try:
        result = in_a_thread(lambda: validate_values(root, NYUV2, log=logged.append), verdict)
        assert not result.get("hung"), "the data check before training blocked on the FIFO verdict"
        assert "exc" not in result, result
        assert any("checking the data values" in m for m in logged), logged
    finally:
        verdict.unlink(missing_ok=True)


def test_a_fifo_claims_file_is_refused_without_opening_it(tmp_path, capsys):
    fifo = tmp_path / "claims.yaml"
    os.mkfifo(fifo)
    result, text = cli_in_a_thread(["claims", "--claims", fifo, "--out", tmp_path], fifo, capsys)
    assert result["rc"] == 2, text
    assert str(fifo) in text and "not a regular file" in text and "FIFO" in text, text


# =============================================================================================
# malformed inputs
# =============================================================================================

NOT_UTF8 = b"dataset: nyuv2\ntitle: \xff\xfe caf\xe9\n"


def test_a_table_spec_that_is_not_utf8_names_the_file(tmp_path, capsys):
    f = tmp_path / "spec.yaml"
    f.write_bytes(NOT_UTF8)
    rc, text = run_cli(["table", "--table", f, "--preset", "smoke", "--out", tmp_path], capsys)
    assert rc == 2, text
    assert str(f) in text and "table spec" in text and "not UTF-8 at byte" in text, text


def test_a_claims_file_that_is_not_utf8_names_the_file(tmp_path, capsys):
    f = tmp_path / "claims.yaml"
    f.write_bytes(b"claims:\n  - {id: caf\xe9, table: 1, text: x, best: okd}\n")
    rc, text = run_cli(["claims", "--claims", f, "--out", tmp_path], capsys)
    assert rc == 2, text
    assert str(f) in text and "claims file" in text and "not UTF-8 at byte" in text, text


@pytest.mark.parametrize("body,word", [("- a\n- b\n", "list"), ("claims: 5\n", "int"),
                                       ("claims: {id: x}\n", "dict")], ids=["top-list", "int", "mapping"])
def test_a_claims_file_of_the_wrong_shape_is_an_error_naming_it(tmp_path, capsys, body, word):
    f = tmp_path / "claims.yaml"
    f.write_text(body)
    rc, text = run_cli(["claims", "--claims", f, "--out", tmp_path], capsys)
    assert rc == 2, text
    assert str(f) in text and "a list of claims" in text and word in text, text


def _teacher_record(tmp_path: Path, drop: str) -> Path:
    """An ``stl`` record of the right shape whose config lacks the section ``drop``."""
    config = {"seed": 0, "preset": "smoke", "method": {"name": "stl"}, "backbone": {"name": "vit_tiny"},
              "dataset": {"name": "synthetic"}, "train": {"epochs": 1}}
    del config[drop]
    (tmp_path / "final.pt").write_bytes(b"not a checkpoint")
    rec = {"schema": 2, "id": "stl-0", "method": "stl", "backbone": "vit_tiny", "config": config,
           "metrics": {"semseg": {"miou": 1.0}}, "checkpoint": str(tmp_path / "final.pt")}
    p = tmp_path / "stl.json"
    p.write_text(json.dumps(rec))
    return p


@pytest.mark.parametrize("drop", ["backbone", "dataset", "method"])
def test_a_teacher_record_without_its_setting_is_refused_by_name(tmp_path, smoke_config, drop):
    """A record of the right shape without ``config.backbone`` (a KeyError before) or another
    section (rebuilt on the defaults before) is refused naming the record and the key."""
    from mtlbench.runs import RunContext, load_task_networks

    p = _teacher_record(tmp_path, drop)
    cfg = smoke_config("kd_mtl", "vit_tiny", f"method.teacher_run={p}")
    with pytest.raises(UserError) as err:
        load_task_networks(RunContext(cfg, tmp_path / "out"), ["semseg"], "kd_mtl (its frozen teachers)",
                           method="stl", record_path=str(p), override_key="method.teacher_run")
    msg = str(err.value)
    assert f"config.{drop}.name" in msg and str(p) in msg and "method.teacher_run" in msg, msg


def test_a_record_whose_config_cannot_be_rebuilt_names_the_record(tmp_path):
    from mtlbench.runs import load_trained_method

    p = _teacher_record(tmp_path, "train")
    rec = json.loads(p.read_text())
    rec["config"]["backbone"]["no_such_option"] = 1
    rec["_path"] = str(p)
    with pytest.raises(UserError) as err:
        load_trained_method(rec)
    assert str(p) in err.value.message and "backbone.no_such_option" in err.value.message, str(err.value)


# =============================================================================================
# unbounded messages
# =============================================================================================

def _laughs(levels: int, at: str) -> str:
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    names = "abcdefghijklmnop"
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    lines.append(f"{at}: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_claims_file_is_refused_in_a_short_message(tmp_path, capsys):
    f = tmp_path / "claims.yaml"
    f.write_text(_laughs(8, at="claims"))
    t0 = time.monotonic()
    rc, text = run_cli(["claims", "--claims", f, "--out", tmp_path], capsys)
    assert rc == 2 and len(text) < 5000 and str(f) in text and "aliases" in text, text[:3000]
    assert time.monotonic() - t0 < 30


def test_a_recursive_claims_file_is_refused(tmp_path, capsys):
    f = tmp_path / "claims.yaml"
    f.write_text("claims: &c [*c]\n")
    rc, text = run_cli(["claims", "--claims", f, "--out", tmp_path], capsys)
    assert rc == 2 and str(f) in text and "contains it" in text, text


# =============================================================================================
# silent acceptance: YAML 1.1 sexagesimal numbers
# =============================================================================================

@pytest.mark.parametrize("item,read_as", [("train.epochs=1:30", "90"), ("train.lr=1:30.5", "90.5"),
                                          ("seed=-1:30", "-90"), ("train.epochs=1:2:3", "3723")])
def test_sexagesimal_set_values_are_refused_not_read_in_base_60(capsys, item, read_as):
    rc, text = run_cli(["run", "--preset", "smoke", "--set", item, "--print-config"], capsys)
    assert rc == 2, text
    assert item in text and "sexagesimal" in text and read_as in text, text
    assert "quote it" in text, text


def test_a_sexagesimal_number_in_a_config_file_is_refused_naming_the_file(tmp_path, capsys):
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  epochs: 1:30\n")
    rc, text = run_cli(["run", "--preset", "smoke", "--config", f, "--print-config"], capsys)
    assert rc == 2 and str(f) in text and "sexagesimal" in text and "line 2" in text, text


def test_a_quoted_time_fails_type_validation_and_colons_elsewhere_still_read(capsys):
    from mtlbench.config import resolve

    rc, text = run_cli(["run", "--preset", "smoke", "--set", "train.epochs='1:30'", "--print-config"], capsys)
    assert rc == 2 and "train.epochs" in text and "int" in text and "'1:30'" in text, text
    assert resolve(preset="smoke", sets=["train.device=cuda:0"]).data["train"]["device"] == "cuda:0"
    assert resolve(preset="smoke", sets=["dataset.root=/data/1:30"]).data["dataset"]["root"] == "/data/1:30"
    assert resolve(preset="smoke", sets=["train.epochs=130"]).data["train"]["epochs"] == 130


@pytest.mark.parametrize("value,word", [("010", "leading zero"), ("1:30", "sexagesimal")])
def test_an_ambiguous_number_in_a_table_spec_is_refused(tmp_path, value, word):
    """Table specs are read with the config files' YAML rules: a row's override of ``010`` or
    ``1:30`` was silently 8 or 90."""
    from mtlbench.tables import load_spec

    text = (SPECS / "table1.yaml").read_text()
    assert "overrides: {profile: text}" in text
    f = tmp_path / "spec.yaml"
    f.write_text(text.replace("overrides: {profile: text}", f"overrides: {{profile: text, warmup_epochs: {value}}}"))
    with pytest.raises(UserError) as err:
        load_spec(str(f), flag="--table")
    assert str(f) in err.value.message and word in err.value.message, str(err.value)
    plain = tmp_path / "plain.yaml"
    plain.write_text(text.replace("overrides: {profile: text}", "overrides: {profile: text, warmup_epochs: 10}"))
    assert load_spec(str(plain), flag="--table").row("okd").overrides["warmup_epochs"] == 10
