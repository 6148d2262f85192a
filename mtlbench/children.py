"""Stopping the ``mtlbench`` processes a command started, when that command is interrupted.

A sweep with ``--jobs K`` and ``run --nproc N`` train in child processes.  Ctrl-C in a terminal
reaches the children too (the terminal signals the whole process group), but SIGTERM (``kill``,
``timeout``, a scheduler) reaches only the parent: without this, its children would train on as
orphans, holding their runs' locks.  :func:`stop_children` passes the interruption on.
"""
from __future__ import annotations

import signal
import subprocess
import time
from typing import Sequence


#: seconds a child gets to stop on its own before it is sent SIGTERM
GRACE_S = 2.0


def stop_children(procs: Sequence[subprocess.Popen], grace_s: float | None = None, wait_s: float = 60.0) -> list[int]:
    """Stop every child still running and reap them all; return the pids that had to be signalled.

    A child gets ``grace_s`` seconds to stop on its own (after Ctrl-C it already has the signal,
    and a second one could cut its clean-up short), then SIGTERM, which ``mtlbench`` handles as
    Ctrl-C (its last checkpoint kept, its lock and temporary files removed), then ``wait_s``
    seconds before SIGKILL (a child deaf to SIGTERM, e.g. blocked in a collective)."""
    deadline = time.monotonic() + (GRACE_S if grace_s is None else grace_s)
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    signalled = []
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            signalled.append(p.pid)
    for p in procs:
        try:
            p.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return signalled
