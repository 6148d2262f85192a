"""Data-parallel training (mtlbench.distributed): 2 gloo processes on the CPU against 1 process.

The equality tests train the same run (the smoke preset, the backbone shrunk, dropout off) in
one process with the global batch B and in two processes with B/2 each, and compare the final
weights.  The data make the shards unequal on purpose: 7 training samples in batches of 4, so
the last batch of each epoch splits 2 + 1, and the valid-pixel counts differ between shards.

Tolerance: ``atol 5e-5, rtol 1e-4`` on every floating-point tensor of the state dict, after a
handful of steps.  The two runs add the same numbers in a different order (each process sums
its shard, then the shards are averaged; the Jacobian rows and BatchNorm statistics likewise),
so each gradient differs in its last float32 bits (~1e-7 relative).  The optimisers run with
eps 1e-3 instead of 1e-8 in these tests: a gradient that is zero in exact arithmetic (the key
bias of attention: softmax ignores a constant added to every key) is float noise of ~1e-10 in
both runs, and Adam with eps 1e-8 divides that noise by its own size, turning it into steps of
the full learning rate in unrelated directions (7e-4 apart after 2 steps, measured); eps 1e-3
leaves real gradients' steps almost unchanged and noise's negligible.  What remains is the
last-bit difference grown over a few steps; the measured maxima (in the final report and
docs/BENCHMARKS.md, 1e-7 to 6e-6) are 10-400x below the tolerance, while any real mistake (a loss averaged
per shard instead of over the batch, a gradient summed instead of averaged, a Jacobian
aggregated before averaging, one shard's samples missed) moves weights by 1e-4 to 1e-2.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtlbench.registry import METHODS

HERE = Path(__file__).parent
ROOT = HERE.parent
WORKER = HERE / "_ddp_worker.py"
ATOL, RTOL = 5e-5, 1e-4
#: 7 samples in batches of 4: the last batch splits 2 + 1 over two processes
EQUAL = ["dataset.n_train=7", "train.batch_size=4", "train.max_steps_per_epoch=null",
         "backbone.head_dropout=0.0"]

#: the methods whose 2-process run must equal the 1-process run (the issue's four), with the
#: options that make a few steps exercise them: DWA's weights move from epoch 2 on, OKD-MTL's
#: warm-up takes its first epoch, then it distils with the single-task networks still training
EQUALITY = {
    "baseline": ["train.epochs=2"],
    "dwa": ["train.epochs=3"],
    "pcgrad": ["train.epochs=2"],
    # random weights from the global stream, which rank 0's evaluation advances: the processes'
    # streams must stay one
    "rlw": ["train.epochs=2"],
    "okd": ["train.epochs=3", "method.warmup_max_fraction=0.34"],
}
#: more methods checked the same way in the slow part
EQUALITY_SLOW = {
    "uw": ["train.epochs=2"],
    "imtl_l": ["train.epochs=2"],
    "mgda": ["train.epochs=2", "method.grad_on=features"],
    "imtl_g": ["train.epochs=2"],  # grad_on=features by default: the summed Gramian
    "gradnorm": ["train.epochs=2"],
    "famo": ["train.epochs=2"],
    "cross_stitch": ["train.epochs=2"],
    "stl": ["train.epochs=2"],
    "okd-text": ["train.epochs=2", "method.profile=text"],
}
#: method -> options for the one-step contract matrix (every registered method)
MATRIX_SETS = {"graddrop": ["method.grad_on=params"]}  # features: refused (test below)
#: every run of the default tests uses one dataset (generating one costs seconds)
DATA = ["dataset.n_train=7"]


def _env(rank: int, world: int, port: int) -> dict:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(tmp: Path, jobs: list[dict], world: int = 2, timeout: float = 600) -> dict:
    """Run ``jobs`` in ``world`` worker processes; returns ``{job name: [rank results]}``."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / f"spec-{time.monotonic_ns()}.json"
    results = tmp / "results"
    spec.write_text(json.dumps({"results": str(results), "jobs": jobs}))
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(spec)], env=_env(r, world, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out = {}
    for job in jobs:
        out[job["name"]] = []
        for r in range(world):
            f = results / f"rank{r}-{job['name']}.json"
            out[job["name"]].append(json.loads(f.read_text()) if f.exists() else None)
    out["_rc"] = [p.returncode for p in procs]
    out["_log"] = "\n".join(outs)
    return out


def single(tmp: Path, method: str, sets: list[str], backbone: str = "vit_tiny") -> dict:
    """The same job in this process (no process group): the reference."""
    sys.path.insert(0, str(HERE))
    import _ddp_worker as w
    from mtlbench import trainer

    saved = dict(trainer.OPTIMIZERS)
    w.stable_adam()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = w.config(method, backbone, sets)
        return trainer.train(cfg, trainer.TrainOptions(out=tmp, quiet=True))
    finally:
        trainer.OPTIMIZERS.clear()
        trainer.OPTIMIZERS.update(saved)
        torch.set_num_threads(n)


def final_state(out: Path) -> dict:
    (path,) = list(out.glob("checkpoints/**/final.pt"))
    return torch.load(path, weights_only=False)["model"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], atol=ATOL, rtol=RTOL, msg=lambda m: f"{k}: {m}")
            worst = max(worst, float((a[k] - b[k]).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k
    return worst


def _split(name: str) -> tuple[str, list[str]]:
    method = name.split("-")[0]
    return method, [*EQUAL, *(EQUALITY.get(name) or EQUALITY_SLOW[name])]


def _equality_jobs(tmp: Path, names) -> list[dict]:
    return [{"name": n, "method": _split(n)[0], "sets": _split(n)[1], "out": str(tmp / "ddp" / n)}
            for n in names]


def _check_equal(tmp: Path, res: dict, name: str) -> float:
    assert res[name] == [{"ok": True}, {"ok": True}], (res[name], res["_log"][-3000:])
    method, sets = _split(name)
    rec1 = single(tmp / "one" / name, method, sets)
    a = final_state(tmp / "one" / name)
    b = final_state(tmp / "ddp" / name)
    worst = max_diff(a, b)
    # the record of the 2-process run: the same metrics (to the same tolerance), its processes
    (rec2_path,) = list((tmp / "ddp" / name).glob("runs/**/*.json"))
    rec2 = json.loads(rec2_path.read_text())
    assert rec2["device"]["processes"] == 2 and rec2["device"]["backend"] == "gloo"
    assert "processes" not in rec1["device"]
    for t, ms in rec1["metrics"].items():
        for k, v in ms.items():
            assert math.isclose(rec2["metrics"][t][k], v, rel_tol=1e-3, abs_tol=1e-4), (t, k)
    assert rec2["timing"]["train_images_per_s"] > 0
    print(f"DDP equality {name}: max |Δparam| = {worst:.2e}")
    return worst


# ---------------------------------------------------------------------------
# two pairs of worker processes for the default tests: the equality runs of baseline, DWA,
# PCGrad, RLW and OKD-MTL with the refusals inside the processes, and the one-step matrix of
# every method (it is starting processes that costs; two pairs run beside each other under xdist)
# ---------------------------------------------------------------------------

def _matrix_methods() -> list[str]:
    # stl first: kd_mtl's teachers are that stl run (same setting, same results directory)
    names = [m for m in METHODS.names() if m not in EQUALITY]
    return sorted(names, key=lambda m: m != "stl")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    jobs = _equality_jobs(tmp, EQUALITY)
    jobs += [
        {"name": "refuse-batch", "method": "baseline", "out": str(tmp / "refuse"),
         "sets": [*DATA, "train.batch_size=3"]},
        # 7 samples in batches of 6: the last batch holds 1 sample
        {"name": "refuse-last-batch", "method": "baseline", "out": str(tmp / "refuse"),
         "sets": [*DATA, "train.batch_size=6", "train.max_steps_per_epoch=null"]},
        {"name": "refuse-graddrop-features", "method": "graddrop", "out": str(tmp / "refuse"), "sets": DATA},
    ]
    t0 = time.perf_counter()
    res = run_workers(tmp, jobs)
    res["_time"] = time.perf_counter() - t0
    return tmp, res


@pytest.mark.parametrize("name", list(EQUALITY))
def test_two_processes_train_the_single_process_run(pair, name):
    tmp, res = pair
    _check_equal(tmp, res, name)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Every registered method, one step over two processes (its own pair of processes, so that
    xdist can run it beside the equality pair)."""
    tmp = tmp_path_factory.mktemp("ddp-matrix")
    jobs = [{"name": f"matrix-{m}", "method": m, "out": str(tmp / "matrix"),
             "sets": [*DATA, "train.max_steps_per_epoch=1", *MATRIX_SETS.get(m, [])]}
            for m in _matrix_methods()]
    return tmp, run_workers(tmp, jobs)


@pytest.mark.parametrize("method", _matrix_methods())
def test_every_method_trains_a_step_over_two_processes(matrix, method):
    tmp, res = matrix
    assert res[f"matrix-{method}"] == [{"ok": True}, {"ok": True}], (res[f"matrix-{method}"], res["_log"][-3000:])
    recs = [json.loads(p.read_text()) for p in (tmp / "matrix").glob(f"runs/**/{method}/*.json")]
    assert len(recs) == 1, "one record, written once"
    rec = recs[0]
    assert rec["device"]["processes"] == 2
    values = [v for ms in rec["metrics"].values() for v in ms.values()]
    assert values and all(math.isfinite(v) for v in values)


def test_rank0_alone_writes_and_nothing_is_left_over(pair):
    """Every file of the 2-process runs is there once: one record, one step log with one row per
    step (not one per process), one epoch log, final weights, no checkpoint or lock left."""
    tmp, res = pair
    out = tmp / "ddp" / "dwa"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    (record,) = [f for f in files if f.endswith(".json")]
    stem = record[:-len(".json")]
    assert files == sorted([f"{stem}.json", f"{stem}.epochs.jsonl", f"{stem}.steps.jsonl",
                            *[f for f in files if f.endswith("/final.pt")]]), files
    assert len([f for f in files if f.endswith("/final.pt")]) == 1, files
    steps = [json.loads(line) for line in next(out.glob("runs/**/*.steps.jsonl")).read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(6)), "3 epochs of 2 steps, each row once"
    epochs = next(out.glob("runs/**/*.epochs.jsonl")).read_text().splitlines()
    assert len(epochs) == 3
    rec = json.loads(next(out.glob("runs/**/*[0-9a-f].json")).read_text())
    assert rec["timing"]["train_images_per_s"] > 0
    # the images counted are the global batches: 7 per epoch, 3 epochs
    assert round(rec["timing"]["train_images_per_s"] * rec["timing"]["train_s"]) == 21


def test_refusals_inside_the_processes(pair):
    tmp, res = pair
    for name, words in [("refuse-batch", ["batch_size 3", "does not split evenly over 2"]),
                        ("refuse-last-batch", ["last batch", "holds 1 sample", "fewer than the 2 processes"]),
                        ("refuse-graddrop-features", ["graddrop", "grad_on=features", "2 processes",
                                                      "method.grad_on=params"])]:
        got = res[name]
        assert got[0] == got[1] and got[0] and "error" in got[0], (name, got)
        for w in words:
            assert w in got[0]["error"], (name, w, got[0]["error"])
    assert not list((tmp / "refuse").glob("runs/**/*.json")), "a refused run writes no record"


@pytest.mark.slow  # two more pairs of processes: ~20 s on 2 shared cores
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """A 2-epoch run whose processes are killed (SIGKILL) once epoch 1's checkpoint is written
    resumes with --resume and ends with the uninterrupted run's weights and metrics."""
    tmp = tmp_path
    sets = [*DATA, "train.epochs=2", "backbone.head_dropout=0.0"]
    res = run_workers(tmp / "killed", [{"name": "killed", "method": "uw", "out": str(tmp / "resume"),
                                        "kill_after_epoch": 0, "sets": sets}])
    assert res["killed"] == [None, None], "both processes were killed after epoch 1's checkpoint"
    assert res["_rc"] == [-9, -9], res["_log"][-3000:]
    assert list((tmp / "resume").glob("checkpoints/**/last.pt"))
    assert not list((tmp / "resume").glob("runs/**/*.json"))
    again = run_workers(tmp / "resumed", [{"name": "resumed", "method": "uw", "out": str(tmp / "resume"),
                                           "resume": True, "sets": sets}])
    assert again["resumed"] == [{"ok": True}, {"ok": True}], again["_log"][-3000:]
    single(tmp / "uninterrupted", "uw", sets)
    worst = max_diff(final_state(tmp / "uninterrupted"), final_state(tmp / "resume"))
    rec = json.loads(next((tmp / "resume").glob("runs/**/*[0-9a-f].json")).read_text())
    ref = json.loads(next((tmp / "uninterrupted").glob("runs/**/*[0-9a-f].json")).read_text())
    for t, ms in ref["metrics"].items():
        for k, v in ms.items():
            assert math.isclose(rec["metrics"][t][k], v, rel_tol=1e-3, abs_tol=1e-4), (t, k)
    steps = next((tmp / "resume").glob("runs/**/*.steps.jsonl")).read_text().splitlines()
    assert [json.loads(s)["step"] for s in steps] == [0, 1, 2, 3], "each step logged once across the kill"
    print(f"DDP resume uw: max |Δparam| = {worst:.2e}")


# ---------------------------------------------------------------------------
# refusals before any process starts, and the world's consistency
# ---------------------------------------------------------------------------

def _cli(capsys, *argv, env=None, monkeypatch=None):
    """``mtlbench ARGV`` in this process (the refusals come before any process starts)."""
    from mtlbench.cli import main

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_nproc_refuses_an_uneven_batch_with_exit_2(tmp_path, capsys):
    rc, err = _cli(capsys, "run", "--preset", "smoke", "--method", "baseline", "--device", "cpu",
                   "--batch-size", "3", "--nproc", "2", "--out", str(tmp_path))
    assert rc == 2, err
    assert "train.batch_size 3 (the global batch) does not split evenly over 2 processes" in err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.json"))


def test_nproc_below_one_and_nproc_inside_torchrun_are_refused(tmp_path, capsys, monkeypatch):
    rc, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--nproc", "0", "--out", str(tmp_path))
    assert rc == 2 and "--nproc 0" in err and "Traceback" not in err
    rc, err = _cli(capsys, "run", "--preset", "smoke", "--device", "cpu", "--nproc", "2", "--out", str(tmp_path),
                   env={"WORLD_SIZE": "2", "RANK": "0"}, monkeypatch=monkeypatch)
    assert rc == 2 and "either torchrun or --nproc" in err


def test_a_method_not_verified_for_data_parallel_is_refused(monkeypatch, smoke_config):
    """The trainer asks the method (Method.data_parallel / data_parallel_problem), never its name."""
    from mtlbench import distributed
    from mtlbench.errors import UserError
    from mtlbench.trainer import check_data_parallel

    cls = METHODS.get("baseline")
    cfg = smoke_config("baseline")
    check_data_parallel(cfg, 8, size=2)  # verified: accepted
    monkeypatch.setattr(cls, "data_parallel", False)
    with pytest.raises(UserError) as err:
        check_data_parallel(cfg, 8, size=2)
    assert "method baseline cannot train over 2 processes" in str(err.value)
    assert "not been verified" in str(err.value)
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(0, 1))
    check_data_parallel(cfg, 8)  # one process: anything goes


@pytest.mark.parametrize("env,words", [
    ({"RANK": "0"}, "sets RANK but not WORLD_SIZE"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ({"RANK": "1", "WORLD_SIZE": "2"}, "needs MASTER_ADDR and MASTER_PORT"),
])
def test_an_inconsistent_world_is_a_clear_error(monkeypatch, env, words):
    from mtlbench import distributed
    from mtlbench.errors import UserError

    for k in distributed.ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError) as err:
        distributed.env_world()
    assert words in str(err.value)


def test_no_world_in_the_environment_is_one_process(monkeypatch):
    from mtlbench import distributed

    for k in distributed.ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    assert distributed.env_world() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.env_world() is None
    assert distributed.init("cpu") == distributed.World()


def test_global_means_are_identity_in_one_process():
    from mtlbench import distributed

    v = torch.tensor(2.5, requires_grad=True)
    (out,) = distributed.global_means([v], [3])
    assert out is v


def test_shards_concatenate_to_the_global_batch():
    from mtlbench.distributed import ShardedBatchSampler

    batches = [[5, 2, 7, 1], [0, 3, 6]]
    shards = [list(ShardedBatchSampler(batches, r, 2)) for r in range(2)]
    assert shards[0] == [[5, 7], [0, 6]] and shards[1] == [[2, 1], [3]]
    for i, b in enumerate(batches):
        assert sorted(shards[0][i] + shards[1][i]) == sorted(b)


# ---------------------------------------------------------------------------
# slow: more methods' equality, SyncBatchNorm, the CLI under torchrun
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_more_methods_train_the_single_process_run(tmp_path):
    res = run_workers(tmp_path, _equality_jobs(tmp_path, EQUALITY_SLOW))
    for name in EQUALITY_SLOW:
        _check_equal(tmp_path, res, name)


@pytest.mark.slow
def test_sync_batchnorm_makes_a_batchnorm_backbone_equal(tmp_path):
    """deeplabv3 (BatchNorm): with SyncBatchNorm (the default) 2 processes equal 1; without it
    each shard normalises with its own statistics, a different computation."""
    # fp32: on CPUs with native bf16 the backbone's default is bf16 autocast, whose rounding
    # differs with the shapes of the sums (a bf16 run is not a float32-rounding comparison)
    sets = [*EQUAL, "train.epochs=2", "train.amp=fp32", "train.channels_last=false"]
    jobs = [{"name": "sync", "method": "baseline", "backbone": "deeplabv3", "sets": sets,
             "out": str(tmp_path / "sync")},
            {"name": "local", "method": "baseline", "backbone": "deeplabv3",
             "sets": [*sets, "train.sync_batchnorm=false"], "out": str(tmp_path / "local")}]
    res = run_workers(tmp_path, jobs)
    assert res["sync"] == [{"ok": True}] * 2 and res["local"] == [{"ok": True}] * 2, res["_log"][-3000:]
    single(tmp_path / "one", "baseline", sets, backbone="deeplabv3")
    ref = final_state(tmp_path / "one")
    worst = max_diff(ref, final_state(tmp_path / "sync"))
    print(f"DDP equality deeplabv3 baseline with SyncBatchNorm: max |Δparam| = {worst:.2e}")
    local = final_state(tmp_path / "local")
    assert max(float((ref[k].float() - local[k].float()).abs().max()) for k in ref
               if ref[k].is_floating_point()) > 10 * ATOL


@pytest.mark.slow
def test_torchrun_cli_writes_one_record_and_resumes(tmp_path):
    """``torchrun --nproc-per-node 2 -m mtlbench run``: one record, one step log, the summary
    printed once; killed after its first checkpoint, ``--resume`` finishes it."""
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["run", "--preset", "smoke", "--method", "baseline", "--device", "cpu",
            "--set", "train.epochs=2", "--set", "backbone.head_dropout=0.0", "--out", str(tmp_path / "r")]
    from conftest import shrink_argv

    args += shrink_argv("vit_tiny")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "mtlbench", *args],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("record:") == 1, r.stdout
    recs = list((tmp_path / "r").rglob("runs/**/*[0-9a-f].json"))
    assert len(recs) == 1
    steps = next((tmp_path / "r").rglob("*.steps.jsonl")).read_text().splitlines()
    assert len(steps) == 4
    # the same run with --nproc, killed once its first checkpoint exists, then resumed
    out2 = tmp_path / "k"
    args2 = [a if a != str(tmp_path / "r") else str(out2) for a in args]
    p = subprocess.Popen([sys.executable, "-m", "mtlbench", *args2, "--nproc", "2",
                          "--set", "train.epochs=3"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out2.rglob("last.pt")) and p.poll() is None:
        time.sleep(0.02)
    os.killpg(p.pid, 9)
    p.wait()
    if list(out2.rglob("runs/**/*[0-9a-f].json")):
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    assert list(out2.rglob("last.pt"))
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "mtlbench", *args2,
                        "--set", "train.epochs=3", "--resume"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = list(out2.rglob("runs/**/*[0-9a-f].json"))
    assert len(recs) == 1
    steps = [json.loads(s)["step"] for s in next(out2.rglob("*.steps.jsonl")).read_text().splitlines()]
    assert steps == list(range(6))
