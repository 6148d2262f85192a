"""One process of a data-parallel test run (tests/test_ddp.py starts N of them with torchrun's
environment): ``python tests/_ddp_worker.py SPEC.json``.

SPEC: ``{"results": DIR, "jobs": [{"name", "method", "backbone", "sets", "out", "resume",
"kill_after_epoch"}]}``;
each job trains one run with :func:`mtlbench.trainer.train` (the smoke preset, the backbone
shrunk); the process joins the group once for all jobs.  Rank r writes
``DIR/rank<r>-<name>.json``: ``{"ok": true}`` or ``{"error": message, "type": class}``.
``kill_after_epoch``: the process kills itself (SIGKILL) once that epoch's checkpoint is
written, as a crash would.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def stable_adam() -> None:
    """Adam(W) with eps 1e-3 for the equality tests (the test module says why)."""
    from mtlbench import trainer

    trainer.OPTIMIZERS["adamw"] = partial(torch.optim.AdamW, eps=1e-3)
    trainer.OPTIMIZERS["adam"] = partial(torch.optim.Adam, eps=1e-3)


def config(method: str, backbone: str, sets: list[str]):
    from conftest import shrink_sets
    from mtlbench.config import resolve

    return resolve(preset="smoke", flags=[("method.name", method, "--method"),
                                          ("backbone.name", backbone, "--backbone"),
                                          ("train.device", "cpu", "--device")],
                   sets=[*shrink_sets(backbone), *sets])


def run_job(job: dict) -> None:
    from mtlbench.trainer import TrainOptions, train

    cfg = config(job["method"], job.get("backbone", "vit_tiny"), job.get("sets", []))
    kill = job.get("kill_after_epoch")

    def on_epoch(epoch, entry):
        if kill is not None and epoch == kill:
            os.kill(os.getpid(), signal.SIGKILL)

    train(cfg, TrainOptions(out=Path(job["out"]), quiet=True, resume=bool(job.get("resume")),
                            on_epoch=on_epoch))


def main(spec_path: str) -> int:
    from mtlbench import distributed
    from mtlbench.errors import UserError

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    stable_adam()
    world = distributed.init("cpu")
    for job in spec["jobs"]:
        result: dict = {"ok": True}
        t0 = time.perf_counter()
        try:
            run_job(job)
        except UserError as exc:  # refusals the test expects; the world is still consistent
            result = {"error": str(exc), "type": type(exc).__name__}
        if os.environ.get("MTLBENCH_TEST_TIMES"):
            print(f"job {job['name']}: {time.perf_counter() - t0:.2f}s", flush=True)
        results = Path(spec["results"])
        results.mkdir(parents=True, exist_ok=True)
        (results / f"rank{world.rank}-{job['name']}.json").write_text(json.dumps(result))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
