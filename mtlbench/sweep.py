"""Sweeps: run every missing run of a table, on one machine or on a Ray cluster.

The plan comes from the table's spec (:func:`mtlbench.tables.plan_runs`):
every (row, backbone, seed) and the Δ reference, each run once, ordered so that
a run comes after the runs it loads (``stl`` before ``kd_mtl`` and okd with
``teachers: pretrained``; ``Method.requires``).  Each :class:`~mtlbench.tables.Job`
carries its resolved config (what is trained) and its ``mtlbench run`` command
(what is shown, and what subprocesses run).  Runs with a matching record are
skipped; interrupted runs resume from their last checkpoint
(``TrainOptions(resume=True)``); a run recorded meanwhile by someone else is
skipped (:class:`~mtlbench.trainer.RunExists`).  A record file of a planned run
that cannot be read (broken JSON, not a record) is moved aside to
``<name>.corrupt-<time>`` (never deleted) and the run is trained again; other
unreadable files under ``runs/`` are reported and left alone.

Executors:

* ``local`` (default): one run after another in this process
  (:func:`mtlbench.trainer.train` on the job's config), or ``--jobs K``
  ``mtlbench run`` subprocesses at once (each with its log under
  ``<out>/logs/sweep/``, and ``OMP_NUM_THREADS`` = cores / K);
* ``ray`` (``pip install -e ".[ray]"``): each run a Ray task with its CPU/GPU
  request, given the config as a dict (rebuilt with
  :func:`mtlbench.config.from_dict`), on an existing cluster (``--address``)
  or on a local Ray instance; a task's dependencies are passed to it as object
  refs, so Ray starts it only after they finished.  On a cluster, ``--out``
  must be a directory every node sees (a shared filesystem) and mtlbench must
  be installed on every node.
* ``slurm`` (``pip install -e ".[slurm]"``): the runs as submitit job arrays
  (:mod:`mtlbench.slurm`), one array per wave of runs whose dependencies are
  done (``stl`` before ``kd_mtl``: two waves), each array task one run given its
  config dict, with the partition, time limit, GPUs and CPUs of
  :class:`mtlbench.slurm.SlurmOptions`; a preempted or timed-out job requeues and
  resumes from the run's checkpoint.  The sweep waits for the jobs, saying when
  each is queued, running, done or failed.  ``--out`` must be on a filesystem the
  nodes share.

Two workers never train the same run: records are written atomically at a
path unique to the run's identity, and :func:`mtlbench.trainer.train` holds
the run's lock (:class:`mtlbench.runs.RunLock`, an ``flock`` on
``<out>/checkpoints/<dataset>/<backbone>/<method>/seed<S>-<hash>.lock``) while
it trains, whoever started it: a sweep, a Ray task or ``mtlbench run`` by hand.
The kernel drops the lock when its holder dies, so a killed sweep leaves no
stale lock behind.
"""
from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import UserError
from .records import BadRecord, RunPaths, checkpoint_of
from .tables.datasets import needs_root
from .tables.plan import Job, RecordIndex, Setting, plan_runs
from .tables.spec import TableSpec

EXECUTORS = ("local", "ray", "slurm")


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------

def job_argv(job: Job, *, device: str | None = None, quiet: bool = False) -> list[str]:
    """The ``mtlbench`` arguments of a job: its exact ``run`` command, resuming."""
    argv = shlex.split(job.command)[1:] + ["--resume"]
    if quiet:
        argv.append("--quiet")
    if device:
        argv += ["--device", device]
    return argv


def job_config(job: Job, *, device: str | None = None, data_root: str | Path | None = None):
    """The job's resolved config, with ``train.device`` / ``dataset.root`` set when given
    (runtime keys: the run's identity does not change)."""
    from .config import from_dict

    if job.config is None:
        raise UserError(f"{job.describe()}: its config cannot be resolved here: {job.config_error}")
    if device is None and data_root is None:
        return job.config
    data = copy.deepcopy(job.config.data)
    if device is not None:
        data["train"]["device"] = device
    if data_root is not None:
        data["dataset"]["root"] = str(data_root)
    return from_dict(data)


def execute(cfg, out: str | Path, quiet: bool = False) -> dict:
    """Train the run of resolved config ``cfg`` here (``train`` takes its lock), resuming.

    Returns ``{"status": "done" | "exists", "record": path}``.
    """
    from .trainer import RunExists, TrainOptions, train

    try:
        rec = train(cfg, TrainOptions(out=Path(out), resume=True, quiet=quiet))
    except RunExists as exc:
        return {"status": "exists", "record": str(exc.path)}
    return {"status": "done", "record": rec.get("_path")}


# ---------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------

@dataclass
class Outcome:
    job: Job
    status: str  # done | exists | failed | skipped; slurm, when the sweep stopped waiting: queued | running
    detail: str = ""
    seconds: float = 0.0
    ref: str = ""  # the cluster's job id (slurm)


@dataclass
class SweepResult:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False  # slurm: the sweep stopped waiting; queued and running jobs go on

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("failed", "skipped")]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        order = ["done", "exists", "running", "queued", "failed", "skipped"]
        names = {"done": "trained", "exists": "already recorded", "failed": "failed",
                 "skipped": "skipped (a dependency failed)", "running": "running", "queued": "queued"}
        return ", ".join(f"{counts[k]} {names[k]}" for k in order if counts.get(k)) or "nothing to run"


def _blocked(job: Job, status: dict[tuple, str]) -> bool:
    return any(status.get(d) in ("failed", "skipped") for d in job.deps)


def run_local(jobs: list[Job], out: str | Path, echo: Callable[[str], None], *, device: str | None = None,
              quiet: bool = False) -> SweepResult:
    """One run after another, in this process, each trained from the job's config."""
    res = SweepResult()
    status: dict[tuple, str] = {}
    for i, job in enumerate(jobs, 1):
        head = f"[{i}/{len(jobs)}] {job.describe()}"
        if _blocked(job, status):
            status[job.key] = "skipped"
            res.outcomes.append(Outcome(job, "skipped", "a run it needs failed"))
            echo(f"{head}: skipped, a run it needs failed")
            continue
        echo(f"{head}: running")
        t0 = time.perf_counter()
        try:
            out_ = execute(job_config(job, device=device), out, quiet=quiet)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failed run must not stop the others
            status[job.key] = "failed"
            res.outcomes.append(Outcome(job, "failed", f"{type(exc).__name__}: {exc}"))
            echo(f"{head}: FAILED: {exc}")
            continue
        dt = time.perf_counter() - t0
        status[job.key] = out_["status"]
        res.outcomes.append(Outcome(job, out_["status"], out_.get("record") or "", dt))
        echo(f"{head}: {'done' if out_['status'] == 'done' else 'already recorded'} "
             f"in {dt:.0f}s -> {out_.get('record')}")
    return res


def run_processes(jobs: list[Job], argvs: dict[tuple, list[str]], k: int, out: Path,
                  echo: Callable[[str], None], poll_s: float = 0.5) -> SweepResult:
    """Up to ``k`` ``mtlbench run`` subprocesses at once, dependencies first."""
    res = SweepResult()
    status: dict[tuple, str] = {}
    pending = list(jobs)
    running: dict[tuple, tuple] = {}
    threads = max(1, (os.cpu_count() or 1) // k)  # k processes share the cores
    todo_keys = {j.key for j in jobs}
    n = len(jobs)
    started = 0
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= k:
                    break
                if _blocked(job, status):
                    pending.remove(job)
                    status[job.key] = "skipped"
                    res.outcomes.append(Outcome(job, "skipped", "a run it needs failed"))
                    echo(f"{job.describe()}: skipped, a run it needs failed")
                    continue
                if not all(status.get(d) in ("done", "exists") for d in job.deps if d in todo_keys):
                    continue  # a run it needs is still to finish
                pending.remove(job)
                started += 1
                if job.config is None:
                    status[job.key] = "failed"
                    res.outcomes.append(Outcome(job, "failed", str(job.config_error)))
                    echo(f"[{started}/{n}] {job.describe()}: FAILED: {job.config_error}")
                    continue
                paths = RunPaths.for_config(job.config, out)
                log = out / "logs" / "sweep" / paths.rel.with_suffix(".log")
                log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(log, "ab")
                # every attempt appends to the run's log: a header tells them apart
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                fh.write(f"=== {stamp} sweep attempt: mtlbench {shlex.join(argvs[job.key])}\n".encode())
                fh.flush()
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                proc = subprocess.Popen([sys.executable, "-m", "mtlbench", *argvs[job.key]], stdout=fh,
                                        stderr=subprocess.STDOUT, env=env)
                running[job.key] = (job, proc, fh, time.perf_counter(), log)
                echo(f"[{started}/{n}] {job.describe()}: started (pid {proc.pid}, log {log})")
            for key, (job, proc, fh, t0, log) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()
                del running[key]
                dt = time.perf_counter() - t0
                if rc == 0:
                    status[key] = "done"
                    res.outcomes.append(Outcome(job, "done", str(log), dt))
                    echo(f"{job.describe()}: done in {dt:.0f}s")
                else:
                    status[key] = "failed"
                    res.outcomes.append(Outcome(job, "failed", f"exit code {rc}; see {log}", dt))
                    echo(f"{job.describe()}: FAILED (exit code {rc}); see {log}")
            if running:
                time.sleep(poll_s)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runs stop too, each resumable (no orphans)
        from .children import stop_children

        stop_children([proc for _, proc, _, _, _ in running.values()])
        for job, proc, fh, _, log in running.values():
            fh.close()
            echo(f"{job.describe()}: " + ("finished meanwhile" if proc.returncode == 0 else
                                          f"stopped (exit code {proc.returncode}); the next sweep resumes it"))
        raise
    return res


def _job_payload(job: Job, device: str | None) -> dict:
    """The config dict a Ray task or SLURM job trains: ``dataset.root`` absolute (workers do not share the
    driver's cwd), ``train.device`` as asked."""
    cfg = job_config(job, device=device)
    data = copy.deepcopy(cfg.data)
    root = data["dataset"].get("root")
    if root:
        data["dataset"]["root"] = str(Path(root).expanduser().resolve())
    return data


_ray_payload = _job_payload


def _ray_execute(cfg_data: dict, out: str, quiet: bool, *deps) -> dict:
    """The body of a Ray task: rebuild the config, train; ``deps`` are the results of the runs
    it needs (unused: they only order the tasks)."""
    from .config import from_dict

    try:
        return execute(from_dict(cfg_data), out, quiet=quiet)
    except UserError as exc:
        # re-raised as a plain error: it crosses process boundaries and fails the dependants
        raise RuntimeError(str(exc)) from None


def run_ray(jobs: list[Job], payloads: dict[tuple, dict], out: str | Path, echo: Callable[[str], None], *,
            address: str | None = None, cpus: float = 1.0, gpus: float | None = None,
            init_kwargs: dict | None = None) -> SweepResult:
    """Each run a Ray task given its config dict; a task receives its dependencies' refs so Ray
    orders them."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed",
                        hint='install the extra: pip install -e ".[ray]"  (or: pip install "ray[default]")') from None
    out_abs = str(Path(out).expanduser().resolve())
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(init_kwargs or {})
        if address:
            kwargs["address"] = address
        else:
            kwargs.setdefault("include_dashboard", False)
            env = {k: v for k, v in os.environ.items() if k.startswith("MTLBENCH_")}
            if env:
                kwargs.setdefault("runtime_env", {"env_vars": env})
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise UserError(f"--address {address}: could not connect to a Ray cluster: {exc}",
                            hint="start one with `ray start --head` and pass its address, "
                                 "or leave out --address for a local Ray instance") from None
        started_here = True
    try:
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        # A task whose worker died (OOM killer, lost node) is retried once and
        # resumes from the run's last checkpoint; the dead worker's flock died with it.
        # Errors raised by the run itself are not retried (Ray's default).
        task = ray.remote(_ray_execute).options(num_cpus=cpus, num_gpus=gpus, max_retries=1)
        refs: dict[tuple, object] = {}
        owner: dict[object, Job] = {}
        for job in jobs:
            deps = [refs[d] for d in job.deps if d in refs]
            ref = task.remote(payloads[job.key], out_abs, True, *deps)
            refs[job.key] = ref
            owner[ref] = job
        echo(f"submitted {len(jobs)} runs to Ray ({cpus:g} CPU, {gpus:g} GPU each)")
        res = SweepResult()
        status: dict[tuple, str] = {}
        t0 = time.perf_counter()
        waiting = list(owner)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            job = owner[ready[0]]
            try:
                out_ = ray.get(ready[0])
            except Exception as exc:  # RayTaskError, worker crashes
                blocked = _blocked(job, status) or any(d in status and status[d] == "failed"
                                                       for d in job.deps)
                st = "skipped" if blocked else "failed"
                status[job.key] = st
                detail = "a run it needs failed" if blocked else str(getattr(exc, "cause", None) or exc)
                res.outcomes.append(Outcome(job, st, detail))
                echo(f"{job.describe()}: {'skipped, a run it needs failed' if blocked else 'FAILED: ' + detail}")
                continue
            status[job.key] = out_["status"]
            res.outcomes.append(Outcome(job, out_["status"], out_.get("record") or "",
                                        time.perf_counter() - t0))
            echo(f"{job.describe()}: {'done' if out_['status'] == 'done' else 'already recorded'} "
                 f"-> {out_.get('record')}")
        return res
    finally:
        if started_here:
            ray.shutdown()


def _waves(jobs: list[Job]) -> list[list[Job]]:
    """The jobs by dependency depth within ``jobs`` (those needing nothing still to run first)."""
    depth: dict[tuple, int] = {}
    for job in jobs:  # in plan order: dependencies come first
        depth[job.key] = 1 + max((depth[d] for d in job.deps if d in depth), default=-1)
    waves: list[list[Job]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for job in jobs:
        waves[depth[job.key]].append(job)
    return waves


def submit_wave(executor, jobs: list[Job], payloads: dict[tuple, dict], out: Path) -> list:
    """Submit ``jobs`` as one submitit batch (a SLURM job array when more than one): one
    :class:`mtlbench.slurm.SlurmRun` each; returns the submitit jobs, in order."""
    from . import slurm

    try:
        with executor.batch():
            handles = [executor.submit(slurm.SlurmRun(payloads[j.key], str(out), j.describe())) for j in jobs]
    except Exception as exc:  # sbatch refused (a partition that does not exist, a bad option)
        raise UserError(f"--executor slurm: the job array could not be submitted: {slurm.error_line(exc)}",
                        hint="check --slurm-partition, --slurm-gpus, --slurm-cpus and --slurm-extra "
                             "against the cluster's sinfo") from None
    return handles


def run_slurm(jobs: list[Job], payloads: dict[tuple, dict], out: str | Path, echo: Callable[[str], None], *,
              options=None, cluster: str | None = None, poll_s: float | None = None) -> SweepResult:
    """Each wave of runs (:func:`_waves`) a submitit job array of :class:`mtlbench.slurm.SlurmRun`;
    waits for every job, reporting each as queued, running, done or failed; a run whose
    dependency failed is skipped. Ctrl-C while waiting stops the waiting only: the result lists
    the runs still queued or running (their jobs go on) and the ones not submitted as skipped."""
    from . import slurm

    slurm.require_submitit()
    opts = options or slurm.SlurmOptions()
    cluster = cluster or slurm.cluster()
    out_abs = Path(out).expanduser().resolve()
    folder = Path(opts.folder).expanduser().resolve() if opts.folder else out_abs / "logs" / "slurm"
    executor = slurm.make_executor(folder / "%j", opts, cluster)
    if poll_s is None:
        poll_s = 15.0 if cluster == "slurm" else 0.5
    res = SweepResult()
    status: dict[tuple, str] = {}
    waves = _waves(jobs)
    n, seen = len(jobs), 0
    live: dict[tuple, tuple] = {}  # submitted, not finished: key -> (job, submitit job, start)
    try:
        for w, wave in enumerate(waves, 1):
            todo = []
            for job in wave:
                if _blocked(job, status):
                    status[job.key] = "skipped"
                    res.outcomes.append(Outcome(job, "skipped", "a run it needs failed"))
                    echo(f"{job.describe()}: skipped, a run it needs failed")
                else:
                    todo.append(job)
            if not todo:
                continue
            handles = submit_wave(executor, todo, payloads, out_abs)
            ids = [str(h.job_id) for h in handles]
            array = ids[0].split("_")[0] if "_" in ids[0] else ", ".join(ids)
            wave_txt = f"wave {w}/{len(waves)}: " if len(waves) > 1 else ""
            echo(f"{wave_txt}submitted {len(todo)} run{'s' if len(todo) > 1 else ''} to {cluster} as "
                 f"{'job array ' + array if len(todo) > 1 and '_' in ids[0] else 'job ' + array} "
                 f"({opts.describe()}); logs under {folder}")
            live.update({j.key: (j, h, time.perf_counter()) for j, h in zip(todo, handles)})
            said: dict[tuple, str] = {}
            while live:
                for key, (job, h, t0) in list(live.items()):
                    ph = slurm.phase(h)
                    if ph != "finished":
                        if said.get(key) != ph:
                            again = " (requeued)" if said.get(key) == "running" and ph == "queued" else ""
                            said[key] = ph
                            echo(f"{job.describe()}: {ph}{again} (job {h.job_id})")
                        continue
                    del live[key]
                    seen += 1
                    dt = time.perf_counter() - t0
                    try:
                        out_ = h.result()
                    except Exception as exc:
                        status[key] = "failed"
                        detail = slurm.error_line(exc, h)
                        res.outcomes.append(Outcome(job, "failed", detail, dt, str(h.job_id)))
                        echo(f"[{seen}/{n}] {job.describe()}: FAILED (job {h.job_id}): {detail}")
                        continue
                    status[key] = out_["status"]
                    tries = out_.get("attempt", 1)
                    res.outcomes.append(Outcome(job, out_["status"], out_.get("record") or "", dt, str(h.job_id)))
                    echo(f"[{seen}/{n}] {job.describe()}: "
                         f"{'done' if out_['status'] == 'done' else 'already recorded'} (job {h.job_id}"
                         + (f", {tries} attempts" if tries > 1 else "") + f") -> {out_.get('record')}")
                if live:
                    time.sleep(poll_s)
    except KeyboardInterrupt:
        res.interrupted = True
        done_keys = {o.job.key for o in res.outcomes}
        going = []
        for key, (job, h, t0) in live.items():
            try:
                ph = slurm.phase(h)
            except Exception:  # the cluster cannot be asked now
                ph = "queued"
            if ph == "finished":  # finished meanwhile
                try:
                    out_ = h.result()
                    res.outcomes.append(Outcome(job, out_["status"], out_.get("record") or "", 0.0, str(h.job_id)))
                except Exception as exc:
                    res.outcomes.append(Outcome(job, "failed", slurm.error_line(exc, h), 0.0, str(h.job_id)))
                done_keys.add(key)
                continue
            res.outcomes.append(Outcome(job, ph, "its job goes on", 0.0, str(h.job_id)))
            done_keys.add(key)
            going.append(str(h.job_id))
        for job in jobs:
            if job.key not in done_keys:
                res.outcomes.append(Outcome(job, "skipped", "not submitted (the sweep was interrupted)"))
        echo("sweep interrupted: " + (f"the jobs {', '.join(going)} go on (scancel to stop them); "
                                      if going else "") + "run the sweep again to submit the rest")
    return res


# ---------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------

@dataclass
class SweepPlan:
    spec: TableSpec
    setting: Setting
    seeds: list[int]
    jobs: list[Job]  # all, in order
    problems: list[BadRecord] = field(default_factory=list)  # unreadable files under <out>/runs

    @property
    def todo(self) -> list[Job]:
        return [j for j in self.jobs if not j.recorded]

    def header(self) -> str:
        n, todo = len(self.jobs), len(self.todo)
        return (f"Table {self.spec.id} on {self.setting.describe()}, preset {self.setting.preset}, "
                f"seeds {', '.join(map(str, self.seeds))}: {n} runs, {n - todo} recorded (skipped), "
                f"{todo} to run")

    def lost_checkpoints(self) -> list[tuple[Job, Path, list[Job]]]:
        """Recorded runs that a run still to do loads (``Method.requires``) and whose final
        checkpoint is gone: ``(the recorded job, the missing checkpoint, the jobs that need it)``.
        Records say where their checkpoint was; checkpoints are not committed with them."""
        by_key = {j.key: j for j in self.jobs}
        needers: dict[tuple, list[Job]] = {}
        for j in self.todo:
            for d in j.deps:
                dep = by_key.get(d)
                if dep is not None and dep.recorded:
                    needers.setdefault(d, []).append(j)
        lost = []
        for key, js in needers.items():
            dep = by_key[key]
            ckpt = checkpoint_of(dep.records[0])
            if ckpt is None or not ckpt.is_file():
                lost.append((dep, ckpt if ckpt is not None else Path("(none named)"), js))
        return lost

    def corrupt_records(self) -> tuple[dict[tuple, BadRecord], list[BadRecord]]:
        """Unreadable files split into ``({job key: bad record of a planned run}, others)`` (a record of a
        newer schema is among the others: it is not corrupt, only unreadable here)."""
        at = {}
        for j in self.todo:
            p = j.record_path(self.setting.out)
            if p is not None:
                at[p.resolve()] = j.key
        mine, others = {}, []
        for bad in self.problems:
            key = at.get(bad.path.resolve())
            if key is None or bad.newer:  # a newer mtlbench's record is not corrupt: never moved
                others.append(bad)
            else:
                mine[key] = bad
        return mine, others


def plan_sweep(spec: TableSpec, setting: Setting, seeds: Sequence[int],
               delta_ref: str | None = None) -> SweepPlan:
    index = RecordIndex.from_dir(setting.out)
    return SweepPlan(spec, setting, list(seeds), plan_runs(spec, setting, seeds, index, delta_ref),
                     list(index.problems))


def move_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename ``path`` to ``<name>.<why>-<time>`` beside it (never deleting); return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    os.replace(path, target)
    return target


def estimates(plan: SweepPlan) -> dict[tuple, tuple[float, int, bool]]:
    """``{job key: (seconds, n, same_row)}`` for each run still to do: the median wall time
    (``timing.wall_s``, wherever they ran) of the ``n`` recorded runs of its row in the plan
    (``same_row``), else of the plan's recorded runs of its method on its backbone with other
    options.  A run with neither has no estimate."""
    import statistics

    by_row: dict[tuple, list[float]] = {}
    by_method: dict[tuple, list[float]] = {}
    for job in plan.jobs:
        w = _wall(job) if job.recorded else None
        if w is not None:
            by_row.setdefault(job.group, []).append(w)
            by_method.setdefault((job.method, job.backbone), []).append(w)
    out: dict[tuple, tuple[float, int, bool]] = {}
    for job in plan.todo:
        if job.group in by_row:
            out[job.key] = (statistics.median(by_row[job.group]), len(by_row[job.group]), True)
        elif (job.method, job.backbone) in by_method:
            w = by_method[(job.method, job.backbone)]
            out[job.key] = (statistics.median(w), len(w), False)
    return out


def _wall(job: Job) -> float | None:
    """The recorded wall time of a recorded run (its first record), or None."""
    w = (job.records[0].get("timing") or {}).get("wall_s") if job.records else None
    return float(w) if isinstance(w, (int, float)) and w > 0 else None


def _hours(s: float) -> str:
    return f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def dry_run_text(plan: SweepPlan, *, device: str | None = None, jobs: int = 1) -> str:
    """The ordered commands of the runs still to do, as a shell script, each with the time its
    row's recorded runs took (:func:`estimates`) and the total."""
    todo = plan.todo
    pos = {j.key: i for i, j in enumerate(todo, 1)}
    mine, others = plan.corrupt_records()
    est = estimates(plan)
    lines = [f"# {plan.header()}"]
    if todo:
        total = sum(t for t, _, _ in est.values())
        unknown = len(todo) - len(est)
        line = (f"# estimated: {_hours(total)} of run time for {len(est)} of the {len(todo)} runs (the median "
                f"wall time of the recorded runs of each one's row, or of its method)")
        if jobs > 1:
            line += f"; about {_hours(total / jobs)} of wall time when {jobs} train at once"
        if unknown:
            line += f"; {unknown} without an estimate (no recorded run of their method)"
        lines.append(line)
    lost = plan.lost_checkpoints()
    if lost:
        # --retrain-lost trains these again first: their own recorded wall time is the estimate
        again = [w for dep, _, _ in lost for w in [_wall(dep)] if w is not None]
        line = (f"# with --retrain-lost, {len(lost)} recorded run{'s' if len(lost) > 1 else ''} whose "
                f"checkpoint{'s are' if len(lost) > 1 else ' is'} missing train again first: about "
                f"{_hours(sum(again))} more run time ({len(again)} of {len(lost)} from their own records)")
        if jobs > 1 and todo:
            line += (f"; about {_hours((sum(t for t, _, _ in est.values()) + sum(again)) / jobs)} of wall "
                     f"time in all when {jobs} train at once")
        lines.append(line)
    for key, bad in mine.items():
        lines.append(f"# unreadable record {bad.describe()}: a sweep moves it aside to "
                     f"{bad.path.name}.corrupt-<time> and runs it again")
    for bad in others:
        lines.append(f"# record of a newer mtlbench (left alone) {bad.describe()}" if bad.newer else
                     f"# unreadable record (not a run of this table; left alone) {bad.describe()}")
    for dep, ckpt, needers in plan.lost_checkpoints():
        lines.append(f"# {dep.describe()} is recorded but its checkpoint {ckpt} is missing, and "
                     f"{', '.join(j.describe() for j in needers)} load{'s' if len(needers) == 1 else ''} it: "
                     f"a sweep stops before training unless given --retrain-lost")
    for i, job in enumerate(todo, 1):
        after = [str(pos[d]) for d in job.deps if d in pos]
        t = est.get(job.key)
        lines.append(f"# {i}. {job.describe()}" + (f" (after {', '.join(after)})" if after else "")
                     + (f"; about {_hours(t[0])} (median of {t[1]} recorded runs of "
                        f"{'this row' if t[2] else 'its method with other options'})" if t else ""))
        lines.append("mtlbench " + " ".join(shlex.quote(a) for a in job_argv(job, device=device)))
    return "\n".join(lines) + "\n"


def run_sweep(plan: SweepPlan, *, executor: str = "local", jobs: int = 1, address: str | None = None,
              device: str | None = None, cpus: float = 1.0, gpus: float | None = None,
              quiet: bool = False, echo: Callable[[str], None] = print,
              ray_init: dict | None = None, retrain_lost: bool = False, slurm=None) -> SweepResult:
    """Run the plan's missing runs with the chosen executor.

    Unreadable record files of planned runs are moved aside first (so the run
    trains again); other unreadable files under ``runs/`` are reported.  A
    recorded run whose checkpoint a run to do loads but that is gone
    (:meth:`SweepPlan.lost_checkpoints`) stops the sweep before anything trains,
    unless ``retrain_lost``: then its record is moved aside to
    ``<name>.replaced-<time>`` and it is trained again first.  ``slurm``: the
    :class:`mtlbench.slurm.SlurmOptions` of ``executor="slurm"``.
    """
    if executor not in EXECUTORS:
        raise UserError(f"--executor {executor!r} is not an executor", hint="use local, ray or slurm")
    if executor == "slurm":
        from .slurm import cluster, require_submitit

        require_submitit()  # before anything is moved or trained
        cluster()
    s = plan.setting
    lost = plan.lost_checkpoints()
    if lost and not retrain_lost:
        what = "\n".join(f"  {dep.describe()}: {ckpt} (needed by {', '.join(j.describe() for j in js)})"
                         for dep, ckpt, js in lost)
        raise UserError(f"{len(lost)} recorded run{'s' if len(lost) > 1 else ''} that runs of this sweep "
                        f"load {'have' if len(lost) > 1 else 'has'} no checkpoint any more:\n{what}",
                        hint="restore the checkpoints under <out>/checkpoints, or add --retrain-lost to "
                             "train those runs again first (their records are kept beside, renamed "
                             "<name>.replaced-<time>)")
    replaced = []  # said after the header, which counts these runs as to do
    for dep, ckpt, _ in lost:
        for rec in dep.records:
            path = Path(rec["_path"])
            paths = RunPaths.of_record(s.out, path)  # its logs
            for log in (paths.steps, paths.epochs):
                if log.exists():
                    move_aside(log, "replaced")
            moved = move_aside(path, "replaced")
            replaced.append(f"{dep.describe()}: checkpoint {ckpt} missing; record moved aside to {moved}, "
                            f"trained again")
        dep.records = []
    todo = plan.todo
    if todo and s.data_root is None and needs_root(s.dataset):
        raise UserError(f"the runs on {s.dataset} need its data directory",
                        hint="pass --data-root DIR (or a preset on a generated stand-in dataset, e.g. --preset quick)")
    echo(plan.header())
    for line in replaced:
        echo(line)
    mine, others = plan.corrupt_records()
    for bad in others:
        echo(f"record of a newer mtlbench (left alone): {bad.describe()}" if bad.newer else
             f"unreadable record (not a run of this table; left alone): {bad.describe()}")
    for bad in mine.values():
        moved = move_aside(bad.path)
        echo(f"unreadable record {bad.describe()}: moved aside to {moved}; its run is trained again")
    if not todo:
        return SweepResult()
    out = Path(s.out)
    # subprocess and Ray workers write logs, not progress bars
    if executor in ("ray", "slurm"):
        payloads = {}
        for j in todo:
            if j.config is None:
                raise UserError(f"{j.describe()}: its config cannot be resolved here: {j.config_error}")
            payloads[j.key] = _job_payload(j, device)
        if executor == "slurm":
            return run_slurm(todo, payloads, out, echo, options=slurm)
        return run_ray(todo, payloads, out, echo, address=address, cpus=cpus, gpus=gpus, init_kwargs=ray_init)
    if jobs > 1:
        argvs = {j.key: job_argv(j, device=device, quiet=True) for j in todo}
        return run_processes(todo, argvs, jobs, out, echo)
    return run_local(todo, out, echo, device=device, quiet=quiet)
