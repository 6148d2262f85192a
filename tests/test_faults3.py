"""Hostile inputs and faults, round 3 (issue 27): each class of fault is a clear error or a note.

1. malformed records and outputs: one reader validates a record's shape before anything uses
   it; table, plot and the Δ of ``run`` skip a bad record with a note naming the file, a record
   of a newer schema is skipped with a note to upgrade; unwritable ``--save`` paths are errors;
2. unbounded work and hangs: ``--seeds`` is bounded; ``data check`` never opens a FIFO and
   calls an empty array fatal;
3. broken plugins: every failure is reported, every time, ``sys.exit()`` in a plugin included,
   and a lookup of a name a failed plugin provides says so;
4. silent acceptance in config resolution: ``--set preset=``, leading-zero integers and
   ``--resume --force`` are refused;
5. unbounded messages: errors are capped, and YAML whose aliases expand hugely is refused.

CLI cases run ``mtlbench.cli.main`` in-process (an exception escaping it is what a user sees as
a traceback); one case runs ``python -m mtlbench`` with a real installed entry point.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtlbench.trainer
from mtlbench import records as R
from mtlbench.cli import main
from mtlbench.errors import UserError
from mtlbench.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
RESULTS = FIXTURES / "tables" / "results"
BASELINE = RESULTS / "runs" / "synthetic" / "vit_tiny" / "baseline" / "seed0-b000000000.json"
TABLE = ["table", "--table", "1", "--preset", "smoke", "--format", "md"]


def run_cli(argv, capsys):
    """``(exit code, stdout + stderr)`` of ``mtlbench ARGV`` in-process; fails on an escaped exception."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # main returns its code; an exit is a plugin or a bug talking
        out, err = capsys.readouterr()
        pytest.fail(f"SystemExit({exc.code!r}) escaped mtlbench.cli.main:\n{out}{err}")
    except Exception as exc:  # noqa: BLE001 - what the user would see as a traceback
        import traceback

        out, err = capsys.readouterr()
        pytest.fail(f"an exception escaped (a traceback for the user):\n{''.join(traceback.format_exception(exc))}")
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text
    return rc, text


@pytest.fixture
def results(tmp_path) -> Path:
    """A copy of the table fixtures' results directory."""
    shutil.copytree(RESULTS, tmp_path / "results")
    return tmp_path / "results"


def _base_record() -> dict:
    return json.loads(BASELINE.read_text())


def _with(rec: dict, dotted: str, value) -> dict:
    rec = copy.deepcopy(rec)
    *parents, last = dotted.split(".")
    d = rec
    for k in parents:
        d = d[k]
    d[last] = value
    return rec


# =============================================================================================
# 1. malformed records and outputs
# =============================================================================================

# (what is set, the value, a word the note must have)
MALFORMED = [
    ("config", [1, 2], "config"),
    ("config", "x", "config"),
    ("config.train", [1], "config.train"),
    ("config.dataset", "nyuv2", "config.dataset"),
    ("config.method.name", 3, "config.method.name"),
    ("config.seed", "zero", "config.seed"),
    ("metrics", "oops", "metrics"),
    ("metrics", [1], "metrics"),
    ("metrics.semseg", "x", "metrics.semseg"),
    ("metrics.semseg.miou", "x", "metrics.semseg.miou"),
    ("seed", "zero", "seed"),
    ("seed", [0], "seed"),
    ("method", ["baseline"], "method"),
    ("tasks", [1], "tasks"),
    ("device", "cpu", "device"),
    ("history", [1], "history"),
    ("history.epochs", {"0": 1}, "history.epochs"),
    ("extra_metrics", {"stl": [1]}, "extra_metrics.stl"),
    ("schema", "2", "schema"),
]


@pytest.mark.parametrize("key,value,word", MALFORMED, ids=[f"{k}={json.dumps(v)}" for k, v, _ in MALFORMED])
def test_table_skips_a_malformed_record_with_a_note(results, capsys, key, value, word):
    bad = results / "runs" / "synthetic" / "vit_tiny" / "baseline" / "seed0-b000000000.json"
    bad.write_text(json.dumps(_with(_base_record(), key, value)))
    rc, text = run_cli([*TABLE, "--out", results], capsys)
    assert rc == 0, text
    note = next((ln for ln in text.splitlines() if str(bad) in ln), None)
    assert note is not None, f"no note names {bad}:\n{text}"
    said = note.replace(str(bad), "")  # what it says, apart from the path
    assert word in said and ("malformed" in said or "not an mtlbench run record" in said), note


def _bad_files(runs: Path) -> dict[str, Path]:
    d = runs / "synthetic" / "vit_tiny" / "baseline"
    files = {"binary": d / "seed7-binary0000.json", "dir": d / "seed8-directory0.json"}
    files["binary"].write_bytes(b"\xff\xfe{\x00\x81")
    files["dir"].mkdir()
    return files


def test_plot_names_a_non_utf8_file_and_a_directory_named_json(results, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    files = _bad_files(results / "runs")
    rc, text = run_cli(["plot", "--out", results, "--save", tmp_path / "fig"], capsys)
    assert rc == 0, text
    warnings = [ln for ln in text.splitlines() if "warning" in ln]
    for what, path in files.items():
        line = next((ln for ln in warnings if str(path) in ln), None)
        assert line is not None, f"no warning names the {what} {path}:\n{text}"
    assert any("not UTF-8" in ln for ln in warnings) and any("is a directory" in ln for ln in warnings)
    # named directly, each is an error naming it
    for path in files.values():
        rc, text = run_cli(["plot", "--runs", path, "--save", tmp_path / "fig"], capsys)
        assert rc == 2 and str(path) in text, text


def test_plot_runs_names_a_malformed_record(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(_base_record(), "metrics", [1, 2])))
    rc, text = run_cli(["plot", "--runs", bad, "--save", tmp_path / "fig"], capsys)
    assert rc == 2 and str(bad) in text and "metrics" in text, text


def test_the_delta_after_a_run_reads_past_bad_records(results):
    """What ``mtlbench run`` does after training: Δ against the baseline run of the setting,
    read from a folder that also holds broken files."""
    from mtlbench.delta import reference_delta

    runs = results / "runs"
    _bad_files(runs)
    d = runs / "synthetic" / "vit_tiny" / "baseline"
    (d / "seed0-cfglist000.json").write_text(json.dumps(_with(_base_record(), "config", [1])))
    (d / "seed0-metricstr.json").write_text(json.dumps(_with(_base_record(), "metrics", "x")))
    mine = _with(_base_record(), "method", "dwa")
    delta, ref = reference_delta(mine, results, "baseline")
    assert delta == pytest.approx(0.0) and ref == str(d / "seed0-b000000000.json")


def test_a_record_of_a_newer_schema_is_skipped_with_a_note_to_upgrade(results, tmp_path, capsys):
    runs = results / "runs"
    newer = runs / "synthetic" / "vit_tiny" / "baseline" / "seed5-f000000000.json"
    newer.write_text(json.dumps(_with(_with(_base_record(), "schema", R.SCHEMA_VERSION + 1), "seed", 5)))
    store = R.RecordStore.scan(results)
    assert all(r["_path"] != str(newer) for r in store)
    (bad,) = [p for p in store.problems if p.path == newer]
    assert bad.newer and "upgrade mtlbench" in bad.problem
    with pytest.raises(UserError, match="upgrade mtlbench"):
        R.read_record(newer)
    rc, text = run_cli([*TABLE, "--out", results], capsys)
    assert rc == 0
    note = next(ln for ln in text.splitlines() if str(newer) in ln)
    assert "upgrade mtlbench" in note and "corrupt" not in note, note


def test_a_sweep_leaves_a_newer_record_of_a_planned_run_where_it_is(tmp_path, monkeypatch):
    from mtlbench import sweep as sw
    from mtlbench.tables import choose_setting, load_spec

    spec = load_spec(FIXTURES / "sweep" / "deps.yaml")

    def plan():
        return sw.plan_sweep(spec, choose_setting(spec, preset="smoke", out=tmp_path), [0])

    stl = plan().todo[0]
    path = stl.record_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": R.SCHEMA_VERSION + 5, "config": {}, "metrics": {}}))
    p = plan()
    text = sw.dry_run_text(p)
    line = next(ln for ln in text.splitlines() if str(path) in ln)
    assert "upgrade mtlbench" in line and "moves it aside" not in line, line
    monkeypatch.setattr(sw, "execute", lambda cfg, out, quiet=False: {"status": "done", "record": "x"})
    sw.run_sweep(p, echo=lambda s: None)
    assert path.exists() and not list(path.parent.glob(path.name + ".corrupt-*"))


@pytest.fixture
def outputs(tmp_path) -> dict[str, Path]:
    afile = tmp_path / "a-file.txt"
    afile.write_text("x")
    readonly = Path("/sys/mtlbench-faults3")  # root writes anywhere but read-only filesystems
    if os.geteuid() != 0:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o500)
    return {"afile": afile, "dir": tmp_path, "readonly": readonly}


@pytest.mark.parametrize("which,target", [("dir", "{dir}"), ("under-file", "{afile}/t.md"),
                                          ("read-only", "{readonly}/t.md")])
def test_table_save_to_an_unwritable_path_is_an_error_naming_it(results, outputs, capsys, which, target):
    path = target.format(**outputs)
    rc, text = run_cli([*TABLE, "--out", results, "--save", path], capsys)
    assert rc == 2, text
    assert "--save" in text and path in text, text
    assert "| Method" not in text  # refused before the table is built


@pytest.mark.parametrize("flag,which,target", [("--save", "file", "{afile}"), ("--save", "under-file", "{afile}/f"),
                                               ("--out-dir", "file", "{afile}"),
                                               ("--save", "read-only", "{readonly}/figs")])
def test_plot_save_to_an_unwritable_path_is_an_error_naming_it(results, outputs, capsys, flag, which, target):
    pytest.importorskip("matplotlib")
    path = target.format(**outputs)
    rc, text = run_cli(["plot", "--out", results, flag, path], capsys)
    assert rc == 2, text
    assert path in text and "--save" in text, text


# --- the record reader: properties -----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)
numbers = st.none() | st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False)
names = st.text(min_size=1, max_size=8)
metric_table = st.dictionaries(names, st.dictionaries(names, numbers, max_size=3), max_size=3)
well_formed = st.fixed_dictionaries(
    {"config": st.fixed_dictionaries({}, optional={
        "seed": st.integers(0, 2**32 - 1), "preset": st.none() | names,
        **{s: st.dictionaries(names, json_values, max_size=3) for s in ("train", "backbone")},
        **{s: st.fixed_dictionaries({"name": names}) for s in ("method", "dataset")}}),
     "metrics": metric_table},
    optional={"schema": st.integers(1, R.SCHEMA_VERSION), "seed": st.integers(0, 1000),
              "method": names, "backbone": names, "dataset": names, "preset": st.none() | names,
              "created": st.text(max_size=10), "git_commit": st.none() | names,
              "extra_metrics": st.dictionaries(names, metric_table, max_size=2),
              "tasks": st.dictionaries(names, st.fixed_dictionaries(
                  {}, optional={"metrics": st.dictionaries(names, st.sampled_from(["higher", "lower"]))})),
              "device": st.dictionaries(names, json_values, max_size=3),
              "timing": st.dictionaries(names, numbers, max_size=3),
              "history": st.fixed_dictionaries({}, optional={
                  "epochs": st.lists(st.fixed_dictionaries({"epoch": st.integers(0, 100)}), max_size=3),
                  "epochs_file": names})})


def _oracle(rec) -> bool:
    """Well formed, written out plainly (the schema of results/README.md, as the reader checks it)."""
    def is_int(v):
        return type(v) is int

    def num_or_null(v):
        return v is None or type(v) in (int, float)

    def table(v, depth):
        if type(v) is not dict:
            return False
        return all(table(x, depth - 1) if depth > 1 else num_or_null(x) for x in v.values())

    if type(rec) is not dict or "config" not in rec or "metrics" not in rec:
        return False
    if "schema" in rec and not (is_int(rec["schema"]) and 1 <= rec["schema"] <= R.SCHEMA_VERSION):
        return False
    cfg = rec["config"]
    if type(cfg) is not dict:
        return False
    for s in ("method", "backbone", "dataset", "train"):
        if s in cfg and (type(cfg[s]) is not dict or ("name" in cfg[s] and type(cfg[s]["name"]) is not str)):
            return False
    if "seed" in cfg and not is_int(cfg["seed"]):
        return False
    if "preset" in cfg and cfg["preset"] is not None and type(cfg["preset"]) is not str:
        return False
    if not table(rec["metrics"], 2) or ("seed" in rec and not is_int(rec["seed"])):
        return False
    strings = ("id", "created", "method", "backbone", "dataset", "dataset_family", "config_hash", "checkpoint")
    if any(k in rec and type(rec[k]) is not str for k in strings):
        return False
    if any(k in rec and rec[k] is not None and type(rec[k]) is not str for k in ("preset", "git_commit")):
        return False
    objects = ("tasks", "extra_metrics", "report", "schedule", "history", "params", "timing", "memory",
               "device", "versions", "method_info")
    if any(k in rec and type(rec[k]) is not dict for k in objects):
        return False
    if "extra_metrics" in rec and not table(rec["extra_metrics"], 3):
        return False
    for info in rec.get("tasks", {}).values():
        if type(info) is not dict or ("metrics" in info and type(info["metrics"]) is not dict):
            return False
    hist = rec.get("history", {})
    for key in ("epochs", "steps"):
        if key in hist:
            if type(hist[key]) is not list or any(type(r) is not dict for r in hist[key]):
                return False
            if key == "epochs" and any(not is_int(r.get("epoch")) for r in hist[key]):
                return False
    return not any(k in hist and type(hist[k]) is not str for k in ("epochs_file", "steps_file"))


def _read(tmp_path: Path, value) -> dict | UserError:
    """What the reader makes of a record file holding ``value``: the record, or its UserError."""
    p = tmp_path / "seed0-x.json"
    p.write_text(json.dumps(value))
    try:
        return R.read_record(p)
    except UserError as exc:
        return exc


def _use(rec: dict) -> None:
    """What readers do with an accepted record: group it, match it, take its directions, its seed."""
    from mtlbench.delta import directions_of

    store = R.RecordStore([rec])
    like = json.loads(BASELINE.read_text())["config"]
    store.explain(rec, like)
    store.explain(rec, None, method="baseline", options={}, must={"train": {"epochs": 1}})
    directions_of(rec)
    int(rec.get("seed", rec["config"].get("seed", 0)))


_PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
near_records = st.fixed_dictionaries({"config": json_values, "metrics": json_values},
                                     optional={k: json_values for k in ("schema", "seed", "method", "tasks",
                                                                        "history", "device", "extra_metrics")})


@_PROPS
@given(value=json_values | near_records)
def test_property_any_json_is_read_or_refused_never_a_crash(tmp_path, value):
    got = _read(tmp_path, value)
    if isinstance(got, UserError):
        assert str(tmp_path) in got.message
    else:
        _use(got)  # an accepted record is one the readers can use


@_PROPS
@given(value=json_values | near_records | well_formed)
def test_property_the_reader_accepts_exactly_the_well_formed(tmp_path, value):
    got = _read(tmp_path, value)
    assert (not isinstance(got, UserError)) == _oracle(value), got
    if not isinstance(got, UserError):  # read whole, and usable
        assert {k: v for k, v in got.items() if k != "_path"} == value
        _use(got)


# =============================================================================================
# 2. unbounded work and hangs
# =============================================================================================

@pytest.mark.parametrize("argv,words", [
    ("table --table 1 --seeds 0-1000000", ["--seeds", "1000"]),
    ("sweep --table 1 --seeds 0-1000000 --dry-run", ["--seeds", "1000"]),
    ("table --table 1 --seeds 0-500,600-1200", ["--seeds", "1000"]),
    ("table --table 1 --seeds 4294967296", ["--seeds", "4294967295"]),
    ("sweep --table 1 --seeds 7,99999999999 --dry-run", ["--seeds", "4294967295"]),
    ("table --table 1 --seeds 0-99999999999999999999999999", ["--seeds"]),
])
def test_seed_lists_are_bounded_at_parsing(results, capsys, argv, words):
    t0 = time.monotonic()
    rc, text = run_cli([*argv.split(), "--preset", "smoke", "--out", results], capsys)
    assert rc == 2, text[-2000:]
    assert all(w in text for w in words), text[-2000:]
    assert time.monotonic() - t0 < 30


def _synth(root: Path) -> Path:
    assert main(["data", "synth", "--data-root", str(root), "--n-train", "2", "--n-val", "1",
                 "--height", "16", "--width", "24"]) == 0
    return root


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory.mktemp("faults3-data") / "nyu")


def _check_in_a_thread(argv, fifo: Path | None, seconds: float = 60.0):
    """``mtlbench data check`` in a thread; if it is still running after ``seconds``, a writer
    opens ``fifo`` to release it (so the test ends) and the result says it hung."""
    result: dict = {}

    def target():
        try:
            result["rc"] = main(argv)
        except BaseException as exc:  # noqa: BLE001
            result["exc"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    if th.is_alive() and fifo is not None:
        result["hung"] = True
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        th.join(30)
    return result


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_data_check_reports_a_fifo_instead_of_blocking_on_it(clean_data, tmp_path, capsys, quick):
    root = tmp_path / "nyu"
    shutil.copytree(clean_data, root)
    fifo = root / "train" / "depth" / "1.npy"
    fifo.unlink()
    os.mkfifo(fifo)
    argv = ["data", "check", "--dataset", "nyuv2", "--data-root", str(root)] + (["--quick"] if quick else [])
    result = _check_in_a_thread(argv, fifo)
    out, err = capsys.readouterr()
    assert not result.get("hung"), "data check blocked on the FIFO"
    assert "exc" not in result, result
    assert result["rc"] == 2, out + err
    line = next((ln for ln in out.splitlines() if str(fifo) in ln), "").replace(str(fifo), "")
    assert "not a regular file" in line and "FIFO" in line, out


@pytest.mark.parametrize("folder,shape,quick", [
    ("image", (0, 24, 3), False), ("image", (0, 24, 3), True), ("label", (16, 0), False),
    ("normal", (16, 24, 0), False)], ids=["image-full", "image-quick", "label", "normal"])
def test_data_check_calls_an_empty_array_fatal(clean_data, tmp_path, capsys, folder, shape, quick):
    root = tmp_path / "nyu"
    shutil.copytree(clean_data, root)
    f = root / "train" / folder / "0.npy"
    np.save(f, np.zeros(shape, np.float32))
    rc, text = run_cli(["data", "check", "--dataset", "nyuv2", "--data-root", root] + (["--quick"] if quick else []),
                       capsys)
    assert rc == 2, text
    line = next((ln for ln in text.splitlines() if str(f) in ln), "").replace(str(f), "")
    assert "is empty (an axis of length 0)" in line and "tolerated" not in line, text


# =============================================================================================
# 3. broken plugins
# =============================================================================================

def _modules(tmp_path: Path, monkeypatch, **sources: str) -> None:
    """Plugin modules ``name.py`` in ``tmp_path``, importable (removed from sys.modules after)."""
    for name, text in sources.items():
        (tmp_path / f"{name}.py").write_text(text)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))


def _entry_points(monkeypatch, group_map: dict[str, list[tuple[str, str]]]) -> None:
    """Installed entry points, as importlib.metadata reports them: ``{group: [(name, "module:attr")]}``."""
    eps = {g: [metadata.EntryPoint(n, v, g) for n, v in items] for g, items in group_map.items()}
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: eps.get(group, []))


GOOD = "class Plugin:\n    '''a plugin that loads'''\n"
BROKEN = {"plug_good": GOOD, "plug_boom": "raise RuntimeError('boom in plug_boom')\n",
          "plug_exit": "import sys\nsys.exit(3)\n", "plug_import": "import no_such_module_anywhere_3\n"}


def _fresh(monkeypatch, kind: str) -> Registry:
    """A fresh registry of ``kind`` in place of mtlbench's (entry points only)."""
    attr = {"method": "METHODS", "backbone": "BACKBONES", "dataset": "DATASETS"}[kind]
    reg = Registry(kind, f"mtlbench.{kind}s")
    monkeypatch.setattr(f"mtlbench.registry.{attr}", reg)
    return reg


def test_list_names_every_broken_plugin_every_time(tmp_path, monkeypatch, capsys):
    _modules(tmp_path, monkeypatch, **BROKEN)
    _entry_points(monkeypatch, {"mtlbench.methods": [("good", "plug_good:Plugin"), ("boom", "plug_boom:Plugin"),
                                                     ("missing", "plug_import:Plugin")]})
    _fresh(monkeypatch, "method")
    for _ in range(2):  # not only the first time
        rc, text = run_cli(["list", "methods"], capsys)
        assert rc == 2, text
        lines = [ln for ln in text.splitlines() if "could not load method plugin" in ln]
        assert len(lines) == 2, text
        assert "'boom'" in lines[0] and "RuntimeError: boom in plug_boom" in lines[0]
        assert "'missing'" in lines[1] and "No module named 'no_such_module_anywhere_3'" in lines[1]


def test_a_plugin_calling_sys_exit_is_reported_not_obeyed(tmp_path, monkeypatch, capsys):
    _modules(tmp_path, monkeypatch, **BROKEN, plug_ctrl_c="raise KeyboardInterrupt\n")
    _entry_points(monkeypatch, {"mtlbench.backbones": [("exiting", "plug_exit:Plugin"), ("boom", "plug_boom:Plugin")]})
    _fresh(monkeypatch, "backbone")
    rc, text = run_cli(["list", "backbones"], capsys)
    assert rc == 2, text
    assert "'exiting'" in text and "sys.exit(3)" in text and "'boom'" in text, text
    # Ctrl-C while a plugin imports still interrupts
    _entry_points(monkeypatch, {"mtlbench.widgets": [("ctrl_c", "plug_ctrl_c:Plugin")]})
    with pytest.raises(KeyboardInterrupt):
        Registry("widget", "mtlbench.widgets").names()


def test_a_builtin_plugin_module_calling_sys_exit_is_reported(tmp_path, monkeypatch):
    pkg = tmp_path / "exitingplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a_exits.py").write_text("import sys\nsys.exit(3)\n")
    (pkg / "b_raises.py").write_text("raise ValueError('bad b')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _entry_points(monkeypatch, {})
    reg = Registry("widget", "mtlbench.widgets", ("exitingplugins",))
    for _ in range(2):
        with pytest.raises(UserError) as e:
            reg.names()
        msg = e.value.message
        assert "exitingplugins.a_exits" in msg and "sys.exit(3)" in msg
        assert "exitingplugins.b_raises: ValueError: bad b" in msg


def test_a_lookup_of_a_failed_plugins_name_says_that_plugin_failed(tmp_path, monkeypatch, capsys):
    _modules(tmp_path, monkeypatch, **BROKEN)
    _entry_points(monkeypatch, {"mtlbench.datasets": [("boom", "plug_boom:Plugin"), ("mydata", "plug_import:Plugin"),
                                                      ("good", "plug_good:Plugin")]})
    _fresh(monkeypatch, "dataset")
    rc, text = run_cli(["data", "check", "--dataset", "mydata", "--data-root", tmp_path], capsys)
    assert rc == 2, text
    first = text.splitlines()[0]
    assert "'mydata'" in first and "failed to load" in first and "no_such_module_anywhere_3" in first, text
    assert "'boom'" in text  # and the other failure
    reg = Registry("method", "mtlbench.methods")
    _entry_points(monkeypatch, {"mtlbench.methods": [("boom", "plug_boom:Plugin"), ("mine", "plug_exit:Plugin")]})
    for lookup in (reg.get, reg.canonical, reg.__contains__):
        with pytest.raises(UserError) as e:
            lookup("mine")
        assert e.value.message.startswith("method 'mine' comes from a plugin that failed to load: "
                                          "could not load method plugin 'mine'"), e.value.message


def test_a_broken_dataset_plugin_is_named_by_table_not_taken_for_a_missing_dataset(results, tmp_path,
                                                                                 monkeypatch, capsys):
    _modules(tmp_path, monkeypatch, **BROKEN)
    _entry_points(monkeypatch, {"mtlbench.datasets": [("kitti", "plug_boom:Plugin")]})
    _fresh(monkeypatch, "dataset")
    rc, text = run_cli([*TABLE, "--out", results], capsys)
    assert rc == 2, text
    assert "'kitti'" in text and "boom in plug_boom" in text, text
    assert "is not registered" not in text and "malformed" not in text, text


def test_list_survives_a_real_installed_plugin_that_exits(tmp_path):
    """The real discovery: a distribution on the path declaring entry points (a .dist-info)."""
    site = tmp_path / "site"
    info = site / "faults3plug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faults3plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mtlbench.methods]\nexiter = f3_exit:Plugin\nboomer = f3_boom:Plugin\n")
    (site / "f3_exit.py").write_text("import sys\nsys.exit(3)\n")
    (site / "f3_boom.py").write_text("raise RuntimeError('f3 boom')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "mtlbench", "list", "methods"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "'exiter'" in proc.stderr and "sys.exit(3)" in proc.stderr, proc.stderr
    assert "'boomer'" in proc.stderr and "f3 boom" in proc.stderr and "faults3plug" in proc.stderr, proc.stderr


# =============================================================================================
# 4. silent acceptance in config resolution
# =============================================================================================

def test_set_preset_is_refused_with_a_pointer_to_the_flag(capsys):
    from mtlbench.config import resolve

    rc, text = run_cli(["run", "--set", "preset=paper", "--print-config"], capsys)
    assert rc == 2 and "--set" in text and "--preset paper" in text, text
    with pytest.raises(UserError, match="--preset"):
        resolve(preset="smoke", sets=["preset=smoke"])


@pytest.mark.parametrize("argv,words", [
    ("run --preset smoke --set seed=010 --print-config", ["seed=010", "leading zero", "10", "octal"]),
    ("run --preset smoke --set train.epochs=07 --print-config", ["train.epochs=07", "leading zero", "7"]),
    ("run --preset smoke --set backbone.drop_path=0.1 --set seed=-010 --print-config", ["seed=-010", "leading zero"]),
    ("run --preset smoke --set seed=09 --print-config", ["seed=09", "leading zero", "9"]),
])
def test_leading_zero_integers_are_refused_not_read_as_octal(capsys, argv, words):
    """Refused (not read as decimal): YAML 1.1 calls 010 eight and --seed calls it ten."""
    rc, text = run_cli(argv.split(), capsys)
    assert rc == 2, text
    assert all(w in text for w in words), text


def test_a_leading_zero_in_a_config_file_is_refused_and_plain_numbers_still_read(tmp_path, capsys):
    from mtlbench.config import resolve

    f = tmp_path / "exp.yaml"
    f.write_text("seed: 010\n")
    rc, text = run_cli(["run", "--preset", "smoke", "--config", f, "--print-config"], capsys)
    assert rc == 2 and str(f) in text and "leading zero" in text, text
    assert resolve(preset="smoke", flags=[("seed", int("010"), "--seed")]).seed == 10
    assert resolve(preset="smoke", sets=["seed=10"]).seed == 10
    assert resolve(preset="smoke", sets=["seed=0"]).seed == 0
    assert resolve(preset="smoke", sets=["seed=0x10"]).seed == 16  # an explicit base stays


def test_resume_with_force_is_refused_before_anything_trains(tmp_path, monkeypatch, capsys):
    def no_train(*a, **k):
        raise AssertionError("trainer.train ran")

    monkeypatch.setattr(mtlbench.trainer, "train", no_train)
    rc, text = run_cli(["run", "--preset", "smoke", "--quiet", "--out", tmp_path, "--resume", "--force"], capsys)
    assert rc == 2, text
    assert "--resume" in text and "--force" in text and "checkpoint" in text, text
    assert not (tmp_path / "runs").exists()


# =============================================================================================
# 5. unbounded messages
# =============================================================================================

def _laughs(levels: int, at: str | None = None) -> str:
    """A "billion laughs" document: each level a list of nine aliases of the one before."""
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"]
    names = "abcdefghijklmnop"
    for i in range(1, levels):
        prev, cur = names[i - 1], names[i]
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    if at is not None:
        lines.append(f"{at}: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def _nested_laughs(levels: int) -> str:
    """The same in one flow value (for --set and a value under a config key)."""
    parts = ["&a [x,x,x,x,x,x,x,x,x]"]
    names = "abcdefghijklmnop"
    for i in range(1, levels):
        parts.append(f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("doc", ["top-level", "under-seed", "under-train-lr"])
def test_a_billion_laughs_config_is_refused_in_a_short_message(tmp_path, capsys, doc):
    f = tmp_path / "lol.yaml"
    text = {"top-level": _laughs(9), "under-seed": f"seed: {_nested_laughs(7)}\n",
            "under-train-lr": f"train: {{lr: {_nested_laughs(7)}}}\n"}[doc]
    f.write_text(text)
    assert len(text.encode()) < 2000
    t0 = time.monotonic()
    rc, out = run_cli(["run", "--preset", "smoke", "--config", f, "--print-config"], capsys)
    assert rc == 2
    assert len(out) < 5000, f"{len(out)} characters of error"
    assert str(f) in out and "aliases" in out, out
    assert time.monotonic() - t0 < 30


def test_the_368_byte_file_of_the_report(tmp_path, capsys):
    names = "abcdefghi"
    lines = ["a: &a [x,x,x,x,x,x,x,x,x]"] + [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]"
                                           for p, c in zip(names, names[1:6])]
    lines.append("seed: *f")
    f = tmp_path / "lol.yaml"
    f.write_text("\n".join(lines) + "\n")
    rc, out = run_cli(["run", "--preset", "smoke", "--config", f, "--print-config"], capsys)
    assert rc == 2 and len(out) < 5000 and str(f) in out and "aliases" in out, out[:3000]


def test_a_billion_laughs_set_value_and_a_recursive_alias_are_refused(tmp_path, capsys):
    rc, out = run_cli(["run", "--preset", "smoke", "--set", f"seed={_nested_laughs(7)}", "--print-config"], capsys)
    assert rc == 2 and len(out) < 5000 and "--set" in out and "aliases" in out, out[:3000]
    f = tmp_path / "self.yaml"
    f.write_text("seed: &s [1, *s]\n")
    rc, out = run_cli(["run", "--preset", "smoke", "--config", f, "--print-config"], capsys)
    assert rc == 2 and str(f) in out and "contains it" in out, out


def test_a_billion_laughs_table_spec_is_refused(tmp_path, results, capsys):
    f = tmp_path / "spec.yaml"
    f.write_text("dataset: nyuv2\n" + _laughs(7, at="columns"))
    rc, out = run_cli(["table", "--table", f, "--preset", "smoke", "--out", results], capsys)
    assert rc == 2 and len(out) < 5000 and str(f) in out and "aliases" in out, out[:3000]


def test_a_huge_value_is_quoted_in_a_few_kilobytes(capsys):
    rc, out = run_cli(["run", "--preset", "smoke", "--set", "train.lr=" + "x" * 300_000, "--print-config"], capsys)
    assert rc == 2 and "train.lr" in out
    assert len(out) < 12_000 and "more characters" in out, len(out)


def test_every_user_error_is_capped():
    e = UserError("m" * 1_000_000, hint="h" * 1_000_000)
    assert len(e.message) < 20_000 and len(e.hint) < 20_000, (len(e.message), len(e.hint))
    kept = e.message.index(".")
    assert e.message.endswith(f"... ({1_000_000 - kept} more characters)")
    assert len(str(e)) < 40_000
    small = UserError("short", hint="fine")
    assert (small.message, small.hint) == ("short", "fine")
