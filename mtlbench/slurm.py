"""The SLURM executor's pieces: its options, the submitit executor, and the job a run becomes.

``mtlbench sweep --executor slurm`` (:func:`mtlbench.sweep.run_slurm`) submits the
runs of a sweep as submitit job arrays (``pip install -e ".[slurm]"``).  Each
array task is one :class:`SlurmRun`: it rebuilds the run's resolved config from
its dict and trains it in the job's process, always resuming
(``TrainOptions(resume=True)``), so any start of the job, a first one or a
requeued one, continues from the run's last checkpoint.

Requeue: submitit asks SLURM for its preemption signal (``--signal=USR2@<s>``,
sent ``s`` seconds before the time limit, and on preemption where the cluster
sends it) and, on it, calls the job's ``checkpoint()`` and requeues the job with
what it returned.  :class:`SlurmRun` first turns the signal into a
``KeyboardInterrupt`` raised where training is, so the run unwinds as on Ctrl-C
or SIGTERM (its last checkpoint kept, its lock released), then hands over to
submitit's handler; :meth:`SlurmRun.checkpoint` returns the same run, next
attempt, to be resumed.

``MTLBENCH_SUBMITIT_CLUSTER=local`` (for testing only) runs the very same jobs
with submitit's local executor, as subprocesses of this machine.
"""
from __future__ import annotations

import copy
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

CLUSTER_ENV = "MTLBENCH_SUBMITIT_CLUSTER"
CLUSTERS = ("slurm", "local")
INSTALL_HINT = 'install the extra: pip install -e ".[slurm]"  (or: pip install submitit)'


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

@dataclass
class SlurmOptions:
    """What each job asks for. ``None``: the cluster's default."""
    partition: str | None = None
    time_min: int = 240
    gpus: int = 1
    cpus: int | None = None
    array_parallelism: int | None = None
    requeues: int = 3  # timeouts a run may requeue after (preemptions do not count)
    extra: dict[str, str] = field(default_factory=dict)  # other sbatch options (account, qos, ...)
    folder: Path | None = None  # submitit's job folder (default <out>/logs/slurm)

    def describe(self) -> str:
        parts = [f"partition {self.partition}" if self.partition else "default partition",
                 f"time {format_time(self.time_min)}", f"{self.gpus} GPU",
                 f"{self.cpus} CPU" if self.cpus else "default CPUs"]
        if self.array_parallelism:
            parts.append(f"at most {self.array_parallelism} at once")
        return ", ".join(parts)


_TIME_FORMS = "MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS"


def parse_time(text: str, flag: str = "--slurm-time") -> int:
    """A SLURM time limit (``sbatch --time`` forms) in whole minutes, seconds rounded up."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise UserError(f"{flag} {text!r} is not a time limit", hint=f"use one of {_TIME_FORMS}, e.g. 90 or 4:00:00")
    days, a, b, c = m.groups()
    a, b, c = int(a), int(b) if b else 0, int(c) if c else 0
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = ((int(days) * 24 + a) * 60 + b) * 60 + c
    elif m.group(4) is not None:  # H:M:S
        seconds = (a * 60 + b) * 60 + c
    elif m.group(3) is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    if b >= 60 or c >= 60:  # every field after the first is minutes or seconds
        raise UserError(f"{flag} {text!r}: minutes and seconds must be below 60", hint=f"use one of {_TIME_FORMS}")
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise UserError(f"{flag} {text!r} must be at least one minute")
    return minutes


def format_time(minutes: int) -> str:
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    return (f"{d}-" if d else "") + f"{h}:{m:02d}:00"


def parse_extra(items: list[str] | None) -> dict[str, str]:
    """``--slurm-extra KEY=VALUE`` (repeatable): more ``sbatch`` options, e.g. ``account=abc``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UserError(f"--slurm-extra {item!r} is not KEY=VALUE", hint="e.g. --slurm-extra account=myproject")
        out[key] = value
    return out


def cluster() -> str:
    """The submitit cluster jobs go to: ``slurm``, or ``local`` when ``MTLBENCH_SUBMITIT_CLUSTER=local``
    (for testing: the same jobs as local subprocesses)."""
    name = os.environ.get(CLUSTER_ENV, "").strip() or "slurm"
    if name not in CLUSTERS:
        raise UserError(f"{CLUSTER_ENV}={name!r} is not a submitit cluster mtlbench uses",
                        hint=f"unset it (SLURM), or set it to local to run the jobs here (for testing)")
    return name


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit, which is not installed", hint=INSTALL_HINT) from None
    return submitit


def executor_parameters(opts: SlurmOptions, *, name: str = "mtlbench") -> dict:
    """The ``AutoExecutor.update_parameters`` arguments of ``opts`` (generic names, and the
    ``slurm_``-prefixed ones the local executor ignores)."""
    params: dict = {"name": name, "timeout_min": int(opts.time_min), "gpus_per_node": int(opts.gpus),
                    "tasks_per_node": 1, "nodes": 1}
    if opts.cpus is not None:
        params["cpus_per_task"] = int(opts.cpus)
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.array_parallelism is not None:
        params["slurm_array_parallelism"] = int(opts.array_parallelism)
    if opts.extra:
        params["slurm_additional_parameters"] = dict(opts.extra)
    return params


def make_executor(folder: str | Path, opts: SlurmOptions, cluster_name: str | None = None):
    """A submitit ``AutoExecutor`` on ``cluster_name`` (default :func:`cluster`) with ``opts``."""
    submitit = require_submitit()
    cluster_name = cluster_name or cluster()
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster_name, slurm_max_num_timeout=opts.requeues)
    except RuntimeError as exc:  # SlurmExecutor: no srun on this machine
        if cluster_name == "slurm":
            raise UserError(f"--executor slurm: no SLURM here ({exc})",
                            hint="run the sweep on a machine that submits to the cluster (srun and sbatch on PATH)") from None
        raise
    if cluster_name == "local":
        ex._executor.max_num_timeout = opts.requeues  # the slurm_ prefix does not reach the local executor
    ex.update_parameters(**executor_parameters(opts))
    return ex


# ---------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------

def _preempt_signal():
    """The signal submitit checkpoints and requeues on (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


class Preempted(KeyboardInterrupt):
    """submitit's preemption/timeout signal, raised where the run is so it unwinds as on Ctrl-C."""

    def __init__(self, signum: int, frame=None):
        super().__init__(signum)
        self.signum, self.frame = signum, frame


class SlurmRun:
    """One run as a submitit job: ``__call__`` trains it (resuming); ``checkpoint()`` (submitit calls
    it on preemption or timeout) returns the same run, next attempt, to requeue."""

    def __init__(self, cfg_data: dict, out: str, label: str = "", attempt: int = 1):
        self.cfg_data = cfg_data
        self.out = str(out)
        self.label = label
        self.attempt = attempt

    def __call__(self) -> dict:
        from .config import from_dict
        from .records import RunPaths
        from .sweep import execute

        sig = _preempt_signal()
        handler = None  # submitit's own handler of that signal, called once the run has unwound
        if threading.current_thread() is threading.main_thread():
            handler = signal.getsignal(sig)

            def _raise(signum, frame):
                raise Preempted(signum, frame)

            signal.signal(sig, _raise)
        try:
            try:
                cfg = from_dict(self.cfg_data)
                last = RunPaths.for_config(cfg, self.out).last
                print(f"mtlbench: attempt {self.attempt} of {self.label or 'the run'}: "
                      + (f"resuming from its checkpoint {last}" if last.exists() else "starting"), flush=True)
                result = execute(cfg, self.out, quiet=True)
            except UserError as exc:
                # a plain error: it crosses the process boundary (the submitter reads its last line)
                raise RuntimeError(str(exc).replace("\n", " ")) from None
            result["attempt"] = self.attempt
            return result
        except Preempted as exc:
            print(f"mtlbench: {self.label or 'the run'} stopped by signal {exc.signum} (preemption or time "
                  "limit); its last checkpoint is kept", flush=True)
            if callable(handler):  # submitit: checkpoint() then requeue (it exits) or fail
                signal.signal(sig, handler)
                handler(exc.signum, exc.frame)
            raise  # no submitit handler (not in a submitit job): an interruption
        finally:
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)

    def checkpoint(self, *args, **kwargs):
        """What submitit requeues: this run again, its next attempt, resuming from its checkpoint."""
        from submitit.helpers import DelayedSubmission

        nxt = copy.copy(self)
        nxt.attempt = self.attempt + 1
        return DelayedSubmission(nxt, *args, **kwargs)

    def __repr__(self) -> str:
        return f"SlurmRun({self.label or self.cfg_data.get('method', {}).get('name')!r}, attempt {self.attempt})"


# ---------------------------------------------------------------------------
# job states
# ---------------------------------------------------------------------------

RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def phase(job) -> str:
    """``queued`` | ``running`` | ``finished`` (result or error ready) of a submitit job."""
    if job.done():
        return "finished"
    state = str(job.state).upper().split()[0] if str(job.state).strip() else "UNKNOWN"
    return "running" if state in RUNNING_STATES else "queued"


def error_line(exc: BaseException, job=None) -> str:
    """One line for a failed job: the last line of its traceback, and where its log is."""
    parts = str(exc).split("----------------------")
    if len(parts) >= 3:  # FailedJobError: the traceback between two rules; its last line is the error
        lines = [ln.strip() for ln in parts[1].splitlines() if ln.strip()]
        msg = lines[-1] if lines else type(exc).__name__
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = lines[0] if lines else type(exc).__name__
    if job is not None:
        try:
            msg += f" (log: {job.paths.stderr})"
        except Exception:  # pragma: no cover - paths of an unknown job
            pass
    return msg
