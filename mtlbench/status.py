"""Where a results directory's runs stand: training now, interrupted (resumable), recorded.

``mtlbench status`` reads, never writes and never locks: a run is *training* when the kernel
lists an ``flock`` on its lock file (``/proc/locks`` on Linux, matched by device and inode: taking
the lock even for a moment to test it could make a starting run fail with "being trained by
another process"), or else when the lock file's pid is alive and the file names this host (where
``/proc/locks`` is missing or does not list every process's locks); a lock file naming another host
is reported as such, since this kernel cannot see that host's locks.  A run is *interrupted* when its checkpoint
``last.pt`` exists and nobody holds its lock: ``--resume`` (or the next sweep) continues it.
The epoch a checkpoint reached is read from the checkpoint itself (memory-mapped, so a 100 MB
checkpoint costs a fraction of a second).
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class InFlight:
    """One run with a lock file or a checkpoint (and no record yet)."""

    rel: str  # <dataset>/<backbone>/<method>/seed<S>-<hash>
    state: str  # "training" | "interrupted"
    epoch: int | None = None  # epochs done at the last checkpoint
    total: int | None = None  # epochs of the whole run
    checkpoint_age_s: float | None = None
    holder: dict | None = None  # the lock file's pid, host and start time
    detail: str = ""  # why the epoch is unknown, when it is
    epoch_s: float | None = None  # mean seconds of the last (up to 3) epochs before the checkpoint

    def line(self) -> str:
        where = (f"epoch {self.epoch}/{self.total if self.total is not None else '?'}"
                 if self.epoch is not None else "no checkpoint yet")
        if self.checkpoint_age_s is not None:
            where += f" (checkpoint {_age(self.checkpoint_age_s)} ago)"
        if self.state == "training" and self.epoch_s and self.total is not None and self.epoch is not None:
            left = max(0, self.total - self.epoch) * self.epoch_s - (self.checkpoint_age_s or 0.0)
            where += f", about {_age(max(left, 0.0))} of training left at its recent pace"
        if self.detail:
            where += f" ({self.detail})"
        who = ""
        if self.holder:
            who = (f"  pid {self.holder.get('pid', '?')} on {self.holder.get('host', '?')} "
                   f"since {self.holder.get('started', '?')}")
        return f"  {self.rel}: {where}{who}"


def _age(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def held_locks(proc_locks: str | Path = "/proc/locks") -> set[tuple[int, int, int]] | None:
    """``(major, minor, inode)`` of every file with an ``flock`` now, or None where the kernel
    does not list them.  A line reads ``1: FLOCK  ADVISORY  WRITE 7743 fd:01:123456 0 EOF``
    (major and minor in hex, the inode in decimal); ``->`` lines are waiters, not holders."""
    try:
        text = Path(proc_locks).read_text()
    except OSError:
        return None
    out: set[tuple[int, int, int]] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            out.add((int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return out


def _lock_state(lock: Path, locks: set | None, holder: dict) -> str:
    """``held``, ``free`` (a stale file: its holder was killed before it could remove it) or
    ``elsewhere`` (the file names another host, whose locks this kernel does not list).  Held: the
    kernel lists the flock, or the file's pid is alive on this host (the fallback where
    ``/proc/locks`` is missing or, as in some sandboxes, does not list every process's locks)."""
    try:
        st = os.stat(lock)
    except OSError:
        return "free"
    if locks is not None and (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locks:
        return "held"
    if holder.get("host") not in (None, socket.gethostname()):
        return "elsewhere"
    if not isinstance(holder.get("pid"), int) or holder["pid"] <= 0:
        return "free"
    try:
        os.kill(holder["pid"], 0)
        return "held"
    except ProcessLookupError:
        return "free"
    except PermissionError:  # alive, another user's
        return "held"


def _read_holder(lock: Path) -> dict:
    """The lock file's ``pid``, ``host`` and ``started`` (what RunLock writes, a few dozen bytes);
    read at most 4 KiB, each text value cut to 100 characters: a foreign file cannot flood the report."""
    try:
        with open(lock, "rb") as fh:
            raw = fh.read(4096)
        data = json.loads(raw.decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict = {}
    for k in ("pid", "host", "started"):
        v = data.get(k)
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            out[k] = v
        elif isinstance(v, str):
            out[k] = v[:100]
    return out


def _checkpoint_progress(last: Path) -> tuple[int | None, int | None, str, float | None]:
    import torch

    try:
        state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # torch raises several kinds for a truncated or foreign file
        return None, None, f"checkpoint unreadable: {type(exc).__name__}", None
    if not isinstance(state, dict) or "epoch" not in state:
        return None, None, "not an mtlbench checkpoint", None
    total = state.get("total_epochs")
    if total is None:  # written before checkpoints kept it: the config's epochs (no leading ones)
        total = ((state.get("config") or {}).get("train") or {}).get("epochs")
    times = [e.get("time_s") for e in ((state.get("history") or {}).get("epochs") or [])[-3:]
             if isinstance(e, dict)]
    times = [float(t) for t in times if isinstance(t, (int, float))]
    pace = sum(times) / len(times) if times else None
    return int(state["epoch"]), (int(total) if total is not None else None), "", pace


def scan(out: str | Path, proc_locks: str | Path = "/proc/locks") -> tuple[list[InFlight], int]:
    """The runs under ``out`` that are training or interrupted (by path), and the number of records."""
    out = Path(out)
    ckroot = out / "checkpoints"
    locks = held_locks(proc_locks)
    found: dict[str, InFlight] = {}
    now = time.time()
    if ckroot.is_dir():
        for lock in ckroot.rglob("*.lock"):
            rel = lock.relative_to(ckroot).with_suffix("").as_posix()
            holder = _read_holder(lock)
            state = _lock_state(lock, locks, holder)
            if state == "held":
                found[rel] = InFlight(rel, "training", holder=holder)
            elif state == "elsewhere":
                found[rel] = InFlight(rel, "training", holder=holder,
                                      detail="by its lock file, on another host: not checkable from here")
        for last in ckroot.rglob("last.pt"):
            rel = last.parent.relative_to(ckroot).as_posix()
            run = found.setdefault(rel, InFlight(rel, "interrupted"))
            run.epoch, run.total, why, run.epoch_s = _checkpoint_progress(last)
            run.detail = "; ".join(d for d in (run.detail, why) if d)
            try:
                run.checkpoint_age_s = now - last.stat().st_mtime
            except OSError:
                pass
    runs = out / "runs"
    records = sum(1 for p in runs.rglob("*.json")) if runs.is_dir() else 0
    # a run whose record exists is finished, whatever its checkpoint folder still holds
    inflight = [r for r in found.values() if not (runs / f"{r.rel}.json").exists()]
    return sorted(inflight, key=lambda r: (r.state != "training", r.rel)), records


def report(out: str | Path, proc_locks: str | Path = "/proc/locks") -> str:
    """What ``mtlbench status`` prints."""
    inflight, records = scan(out, proc_locks)
    training = [r for r in inflight if r.state == "training"]
    interrupted = [r for r in inflight if r.state == "interrupted"]
    lines = [f"{out}: {records} recorded runs, {len(training)} training now, "
             f"{len(interrupted)} interrupted"]
    if training:
        lines.append(f"training now ({len(training)}):")
        lines += [r.line() for r in training]
    if interrupted:
        lines.append(f"interrupted, resumable with --resume or the next sweep ({len(interrupted)}):")
        lines += [r.line() for r in interrupted]
    return "\n".join(lines)
