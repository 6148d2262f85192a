"""Sweeps: the plan's order, dry runs, the local executors and (marker ray) the Ray executor."""
from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mtlbench import children
from mtlbench import sweep as sw
from mtlbench.cli import main as cli_main
from mtlbench.cli.run import parse_run_argv
from mtlbench.errors import UserError
from mtlbench.tables import choose_setting, load_spec

FIXTURES = Path(__file__).parent / "fixtures"
DEPS = FIXTURES / "sweep" / "deps.yaml"


def _plan(spec_ref, out, seeds=(0,), **kw):
    spec = load_spec(spec_ref)
    return sw.plan_sweep(spec, choose_setting(spec, preset="smoke", out=out, **kw), list(seeds))


def test_plan_orders_stl_before_the_runs_that_load_it(tmp_path):
    plan = _plan(DEPS, tmp_path, seeds=(0, 1))
    order = [(j.method, j.seed) for j in plan.todo]
    assert order == [("stl", 0), ("stl", 1), ("baseline", 0), ("baseline", 1),
                     ("kd_mtl", 0), ("kd_mtl", 1), ("okd", 0), ("okd", 1)]
    stl0 = plan.todo[0]
    assert stl0.labels == ["needed by KD-MTL", "needed by Pretrained AFD"]  # one stl run serves both
    kd0 = plan.todo[4]
    assert kd0.deps == [stl0.key]
    assert plan.todo[6].overrides == {"teachers": "pretrained"} and plan.todo[6].deps == [stl0.key]


def test_plan_skips_recorded_runs():
    plan = _plan(4, FIXTURES / "tables" / "results", seeds=(0,))
    recorded = {tuple(j.labels) for j in plan.jobs if j.recorded}
    assert recorded == {("STL", "needed by MTL-pretrained-AFD"), ("Baseline (MTL)",), ("OKD-MTL-AFD",),
                        ("OKD-MTL-AFD-OTW",)}
    assert [j.labels for j in plan.todo] == [["OKD-MTL-OTW"], ["MTL-pretrained-AFD"]]
    # its stl run is recorded: nothing to wait for in this sweep
    assert plan.header().endswith("6 runs, 4 recorded (skipped), 2 to run")


def test_dry_run_cli_prints_the_ordered_commands(capsys, tmp_path):
    assert cli_main(["sweep", "--table", str(DEPS), "--preset", "smoke", "--out", str(tmp_path),
                     "--dry-run", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cmds = [line for line in lines if not line.startswith("#")]
    assert lines[0].startswith("# Table deps on synthetic (variant nyuv2), preset smoke, seeds 0: 4 runs")
    assert [shlex.split(c)[3] for c in cmds] == ["stl", "baseline", "kd_mtl", "okd"]
    assert all(c.startswith("mtlbench run ") and c.endswith("--resume --device cpu") for c in cmds)
    assert f"--out {tmp_path}" in cmds[0]
    assert "# 3. kd_mtl · vit_tiny · seed 0 [KD-MTL] (after 1)" in lines


def test_jobs_carry_their_resolved_config(tmp_path):
    plan = _plan(DEPS, tmp_path, seeds=(0, 1))
    for job in plan.jobs:
        args, cfg = parse_run_argv(shlex.split(job.command)[1:])
        assert job.config.hash == cfg.hash and job.config.data == cfg.data, job.describe()
        assert job.record_path(tmp_path) == tmp_path / "runs" / "synthetic" / "vit_tiny" / job.method / \
            f"seed{job.seed}-{cfg.hash}.json"
    pretrained = next(j for j in plan.jobs if j.method == "okd")
    assert pretrained.config.data["method"]["teachers"] == "pretrained"
    # --device goes into the config as a runtime key: same identity
    on_cpu = sw.job_config(pretrained, device="cpu")
    assert on_cpu.data["train"]["device"] == "cpu" and on_cpu.hash == pretrained.config.hash


def test_sweep_flag_errors(capsys):
    assert cli_main(["sweep", "--table", "1", "--address", "ray://x:10001", "--dry-run"]) == 2
    assert "--executor ray" in capsys.readouterr().err
    assert cli_main(["sweep", "--table", "7", "--dry-run"]) == 2
    assert "--table 7: there is no table 7" in capsys.readouterr().err
    assert cli_main(["sweep", "--table", "1", "--seeds", "0,,1", "--dry-run"]) == 2
    assert "--seeds '0,,1' has an empty entry" in capsys.readouterr().err
    assert cli_main(["sweep", "--table", "1", "--executor", "ray", "--jobs", "2"]) == 2
    # real data needs its directory before anything starts
    assert cli_main(["sweep", "--table", "1", "--out", "/nonexistent-mtlbench"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_missing_ray_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    plan = _plan(DEPS, tmp_path)
    with pytest.raises(UserError, match=r'pip install -e "\.\[ray\]"'):
        sw.run_sweep(plan, executor="ray", echo=lambda s: None)


# ---------------------------------------------------------------------------
# local executors (runs faked: order and dependency handling only)
# ---------------------------------------------------------------------------

def test_run_local_skips_the_dependants_of_a_failed_run(monkeypatch, tmp_path):
    calls = []

    def fake_execute(cfg, out, quiet=False):
        assert Path(out) == tmp_path and cfg.data["train"]["device"] == "cpu"
        method = cfg.name("method")
        calls.append(method)
        if method == "stl":
            raise RuntimeError("boom")
        return {"status": "done", "record": f"{method}.json"}

    monkeypatch.setattr(sw, "execute", fake_execute)
    res = sw.run_sweep(_plan(DEPS, tmp_path), device="cpu", echo=lambda s: None)
    assert calls == ["stl", "baseline"]
    assert [(o.job.method, o.status) for o in res.outcomes] == [
        ("stl", "failed"), ("baseline", "done"), ("kd_mtl", "skipped"), ("okd", "skipped")]
    assert "1 trained, 1 failed, 2 skipped" in res.summary()


def test_run_processes_respects_dependencies(monkeypatch, tmp_path):
    started, real_popen = [], subprocess.Popen
    plan = _plan(DEPS, tmp_path)

    def fake_popen(cmd, **kw):
        started.append(cmd[cmd.index("--method") + 1])
        assert cmd[1:3] == ["-m", "mtlbench"] and "--resume" in cmd
        # stands in for `mtlbench run ...` (which takes the run's lock itself): a short sleep
        return real_popen([sys.executable, "-c", "import time; time.sleep(0.3)"], **kw)

    monkeypatch.setattr(sw.subprocess, "Popen", fake_popen)
    res = sw.run_sweep(plan, jobs=2, echo=lambda s: None)
    assert started[:2] == ["stl", "baseline"]  # two at once
    assert set(started[2:]) == {"kd_mtl", "okd"}  # after stl finished
    assert all(o.status == "done" for o in res.outcomes)
    assert all(Path(o.detail).parent.parent.parent.parent.name == "sweep" for o in res.outcomes)


def test_each_attempt_of_a_run_starts_its_log_with_a_header(monkeypatch, tmp_path):
    """A run's sweep log is appended to by every attempt (a session ends, the next sweep resumes):
    each attempt begins with a dated header naming its command, so a line is told to its attempt."""
    real_popen = subprocess.Popen
    plan = _plan(DEPS, tmp_path)

    def fake_popen(cmd, **kw):  # stands in for `mtlbench run`: prints one line into the log
        return real_popen([sys.executable, "-c", "print('child output')"], **kw)

    monkeypatch.setattr(sw.subprocess, "Popen", fake_popen)
    for _ in range(2):
        res = sw.run_sweep(plan, jobs=2, echo=lambda s: None)
    logs = {Path(o.detail) for o in res.outcomes}
    assert len(logs) == len(plan.jobs)
    for log in logs:
        lines = log.read_text().splitlines()
        assert len(lines) == 4, lines
        for header, child in (lines[0:2], lines[2:4]):
            assert header.startswith("=== 20") and "sweep attempt: mtlbench run " in header, header
            assert "--resume" in header and "--method" in header
            assert child == "child output"


#: stands in for `mtlbench run`: says it is ready, then trains "forever"; on SIGTERM it writes
#: down that it stopped cleanly and exits 143, as mtlbench's handler does
_CHILD = """
import pathlib, signal, sys, time
mark = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *a: (mark.with_suffix(".term").touch(), sys.exit(143)))
mark.with_suffix(".ready").touch()
time.sleep(120)
"""


def test_an_interrupted_sweep_stops_its_runs_instead_of_orphaning_them(monkeypatch, tmp_path):
    """SIGTERM reaches only the sweep's process: its running children get SIGTERM (their clean,
    resumable stop) and are reaped before the interruption goes on; none trains on as an orphan."""
    plan = _plan(DEPS, tmp_path)
    procs, real_popen, real_sleep = [], subprocess.Popen, sw.time.sleep

    def fake_popen(cmd, **kw):
        mark = tmp_path / cmd[cmd.index("--method") + 1]
        procs.append(real_popen([sys.executable, "-c", _CHILD, str(mark)], **kw))
        return procs[-1]

    interrupted = []

    def sleep(s):  # (time.sleep itself) the interruption arrives once both runs are under way
        if not interrupted and len(procs) == 2 and \
                all((tmp_path / f"{m}.ready").exists() for m in ("stl", "baseline")):
            interrupted.append(True)
            raise KeyboardInterrupt
        real_sleep(min(s, 0.05))

    monkeypatch.setattr(sw.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(sw.time, "sleep", sleep)
    monkeypatch.setattr(children, "GRACE_S", 0.2)
    lines = []
    try:
        with pytest.raises(KeyboardInterrupt):
            sw.run_sweep(plan, jobs=2, echo=lines.append)
    finally:
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            p.kill()
            p.wait()
    assert not alive, "children left running"
    assert len(procs) == 2 and all(p.returncode == 143 for p in procs)
    assert all((tmp_path / f"{m}.term").exists() for m in ("stl", "baseline"))
    assert sum("stopped (exit code 143); the next sweep resumes it" in line for line in lines) == 2


def test_a_recorded_dependency_without_its_checkpoint_stops_the_sweep_or_is_trained_again(monkeypatch, tmp_path):
    """MTL-pretrained-AFD loads the stl run's weights: a recorded stl run whose checkpoint is gone
    (checkpoints are not committed) must stop the sweep before hours of other runs, not fail at the end."""
    import shutil

    shutil.copytree(FIXTURES / "tables" / "results", tmp_path, dirs_exist_ok=True)
    plan = _plan(4, tmp_path, seeds=(0,))
    lost = plan.lost_checkpoints()
    assert [(dep.method, [j.labels for j in js]) for dep, _, js in lost] == [("stl", [["MTL-pretrained-AFD"]])]
    dep, ckpt, _ = lost[0]
    stl_record = Path(dep.records[0]["_path"])
    assert ckpt == tmp_path / dep.records[0]["checkpoint"] and not ckpt.exists()
    assert "its checkpoint" in sw.dry_run_text(plan) and "--retrain-lost" in sw.dry_run_text(plan)
    # the dry run's estimate counts the retraining: the lost run's own recorded wall time
    dep.records[0].setdefault("timing", {})["wall_s"] = 5400.0
    text = sw.dry_run_text(plan, jobs=2)
    assert ("# with --retrain-lost, 1 recorded run whose checkpoint is missing train again first: about "
            "1.5 h more run time (1 of 1 from their own records)") in text, text
    todo_s = sum(t for t, _, _ in sw.estimates(plan).values())
    assert todo_s > 0 and f"about {sw._hours((todo_s + 5400) / 2)} of wall time in all when 2 train at once" in text
    ran = []
    monkeypatch.setattr(sw, "execute", lambda cfg, out, quiet=False: ran.append(cfg.name("method")) or
                        {"status": "done", "record": "x"})
    with pytest.raises(UserError) as exc:
        sw.run_sweep(plan, echo=lambda s: None)
    assert "no checkpoint any more" in str(exc.value) and str(ckpt) in str(exc.value)
    assert "--retrain-lost" in exc.value.hint and ran == [] and stl_record.exists()
    # with the checkpoint back, nothing is lost
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    assert _plan(4, tmp_path, seeds=(0,)).lost_checkpoints() == []
    ckpt.unlink()
    # --retrain-lost: the old record and its logs are kept aside and the stl run trains before the run
    # that loads it
    from mtlbench.runs import RunPaths

    logs = RunPaths(tmp_path, stl_record.relative_to(tmp_path / "runs").with_suffix(""))
    for log in (logs.steps, logs.epochs):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text('{"step": 1}\n')
    lines = []
    res = sw.run_sweep(_plan(4, tmp_path, seeds=(0,)), echo=lines.append, retrain_lost=True)
    assert ran.index("stl") < len(ran) - 1 and sorted(ran) == ["okd", "okd", "stl"]
    assert [o.job.labels[0] for o in res.outcomes if o.job.method == "stl"] == ["STL"]
    aside = list(stl_record.parent.glob(stl_record.name + ".replaced-*"))
    assert len(aside) == 1 and not stl_record.exists()
    assert any("moved aside to" in ln and "trained again" in ln for ln in lines)
    assert "to run" in lines[0] and "moved aside to" in lines[1]  # the header first, then what was replaced
    for log in (logs.steps, logs.epochs):
        assert not log.exists() and len(list(log.parent.glob(log.name + ".replaced-*"))) == 1


def test_a_dry_run_estimates_each_run_from_its_rows_recorded_runs(tmp_path):
    """Each run to do gets the median wall time of its row's recorded runs (other seeds), else of
    its method's runs with other options; the total, and the wall time at --jobs K."""
    plan = _plan(DEPS, tmp_path, seeds=(0, 1, 2))
    by = {(j.method, j.seed, bool(j.overrides)): j for j in plan.jobs}
    # recorded: baseline seeds 0 and 1 (100 s, 300 s), kd_mtl seed 0 (1000 s); okd with its
    # pretrained-teacher option has none, but the plan has no other okd row either
    for (m, seed, w) in (("baseline", 0, 100.0), ("baseline", 1, 300.0), ("kd_mtl", 0, 1000.0)):
        by[(m, seed, False)].records = [{"timing": {"wall_s": w}}]
    est = sw.estimates(plan)
    assert est[by[("baseline", 2, False)].key] == (200.0, 2, True)  # median of 100 and 300
    assert est[by[("kd_mtl", 1, False)].key] == (1000.0, 1, True)
    assert by[("okd", 0, True)].key not in est
    # another okd row, recorded, gives the pretrained-teacher row a method-level estimate
    other = copy.copy(by[("okd", 0, True)])
    other.overrides, other.records = {}, [{"timing": {"wall_s": 600.0}}]
    plan.jobs.append(other)
    assert sw.estimates(plan)[by[("okd", 1, True)].key] == (600.0, 1, False)
    text = sw.dry_run_text(plan, jobs=2)
    todo = len(plan.todo)  # baseline 2, kd_mtl 1-2, stl 0-2, okd 0-2
    total = 200 + 2 * 1000 + 3 * 600
    assert f"# estimated: {total / 60:.0f} min of run time for {todo - 3} of the {todo} runs" in text, text
    assert f"about {total / 120:.0f} min of wall time when 2 train at once" in text
    assert "3 without an estimate" in text  # the stl runs: no recorded stl run
    assert "about 3 min (median of 2 recorded runs of this row)" in text
    assert "about 10 min (median of 1 recorded runs of its method with other options)" in text


def test_unreadable_records_are_moved_aside_and_run_again(monkeypatch, tmp_path, capsys):
    plan = _plan(DEPS, tmp_path)
    stl = plan.todo[0]
    bad = stl.record_path(tmp_path)
    bad.parent.mkdir(parents=True)
    bad.write_text('{"config": {')  # a crash mid-write by a tool that does not write atomically
    other = tmp_path / "runs" / "synthetic" / "vit_tiny" / "uw" / "seed9-0000000000.json"
    other.parent.mkdir(parents=True)
    other.write_text("not json")
    plan = _plan(DEPS, tmp_path)
    assert [p.path for p in plan.problems] == [bad, other]
    assert plan.todo[0].key == stl.key  # still to run
    text = sw.dry_run_text(plan)
    assert f"# unreadable record {bad}: run record" in text and "moves it aside" in text
    assert f"(not a run of this table; left alone) {other}" in text
    assert bad.exists()  # a dry run moves nothing
    ran = []
    monkeypatch.setattr(sw, "execute", lambda cfg, out, quiet=False: ran.append(cfg.hash) or
                        {"status": "done", "record": "x"})
    lines = []
    sw.run_sweep(plan, echo=lines.append)
    moved = list(bad.parent.glob(bad.name + ".corrupt-*"))
    assert len(moved) == 1 and moved[0].read_text() == '{"config": {' and not bad.exists()
    assert other.exists()
    assert ran[0] == stl.config.hash
    assert any(f"moved aside to {moved[0]}" in ln for ln in lines)
    assert any(ln.startswith("unreadable record (not a run of this table; left alone)") for ln in lines)
    # the table reports what is wrong, with the path
    assert cli_main(["table", "--id", str(DEPS), "--preset", "smoke", "--out", str(tmp_path), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert f"Unreadable record {other}: run record" in out and "is not valid JSON" in out


# ---------------------------------------------------------------------------
# end to end: real smoke runs
# ---------------------------------------------------------------------------

def test_local_sweep_trains_then_skips(tmp_path, capsys):
    spec = str(FIXTURES / "sweep" / "one.yaml")
    args = ["sweep", "--table", spec, "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu", "--quiet"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "1 trained" in out and "next: mtlbench table --table" in out
    recs = list((tmp_path / "runs").rglob("*.json"))
    assert len(recs) == 1 and json.loads(recs[0].read_text())["method"] == "baseline"
    # trained from the job's carried config: the record is at the job's path, with its hash
    job = _plan(spec, tmp_path).jobs[0]
    assert recs[0] == job.record_path(tmp_path)
    assert json.loads(recs[0].read_text())["config_hash"] == job.config.hash
    assert not list(tmp_path.rglob("*.lock"))
    assert cli_main(args) == 0
    assert "1 recorded (skipped), 0 to run" in capsys.readouterr().out


def test_ray_task_body_rebuilds_the_config_from_its_dict(monkeypatch, tmp_path):
    """What a Ray task receives is a plain dict; from_dict gives back the job's very config."""
    plan = _plan(DEPS, tmp_path)
    job = next(j for j in plan.jobs if j.method == "kd_mtl")
    payload = sw._ray_payload(job, "cpu")
    assert isinstance(payload, dict) and payload["train"]["device"] == "cpu"
    got = []
    monkeypatch.setattr(sw, "execute", lambda cfg, out, quiet=False: got.append((cfg, out, quiet)) or
                        {"status": "done", "record": "r"})
    assert sw._ray_execute(payload, str(tmp_path), True) == {"status": "done", "record": "r"}
    cfg, out, quiet = got[0]
    assert cfg.hash == job.config.hash and cfg.data["method"] == job.config.data["method"]
    assert (out, quiet) == (str(tmp_path), True)


@pytest.mark.ray
def test_ray_executor_runs_dependencies_first(tmp_path):
    import ray

    plan = _plan(FIXTURES / "sweep" / "stl_kd.yaml", tmp_path)
    assert [j.method for j in plan.todo] == ["stl", "kd_mtl"]
    lines = []
    res = sw.run_sweep(plan, executor="ray", device="cpu", cpus=1, echo=lines.append,
                       ray_init={"num_cpus": 2, "include_dashboard": False})
    assert not ray.is_initialized()  # the local instance it started is shut down
    assert [(o.job.method, o.status) for o in res.outcomes] == [("stl", "done"), ("kd_mtl", "done")], lines
    recs = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
            for p in (tmp_path / "runs").rglob("*.json")}
    assert set(recs) == {"stl", "kd_mtl"}
    assert recs["stl"]["created"] <= recs["kd_mtl"]["created"]
    assert not list(tmp_path.rglob("*.lock"))
    # a second sweep finds both recorded
    assert _plan(FIXTURES / "sweep" / "stl_kd.yaml", tmp_path).todo == []
