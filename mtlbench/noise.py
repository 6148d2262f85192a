"""The noise floor of a setting, measured with A/A pairs of the reference method.

An A/A pair is two runs of the same method, backbone, dataset, preset and seed that
share the initialisation and the data order and differ only in the random stream
left after initialisation: dropout masks, random loss weights, any sampling a method
does.  The run identity expresses the split with ``train.nuisance_seed`` (a
backward-compatible option, :class:`mtlbench.config.TrainConfig`): ``seed`` still
seeds the networks' initialisation and the shuffle order, and the trainer reseeds
the global generators from ``(seed, nuisance_seed)`` once everything is built
(:func:`mtlbench.trainer.nuisance_stream_seed`).  A run without ``nuisance_seed`` is
an ordinary run; its records never serve an A/A pair, and A/A records never serve a
table row (they differ in ``train.nuisance_seed``).

The pair of seed ``s`` is the runs with ``nuisance_seed = a`` and ``= b`` (default 1
and 2); its paired Δ (Eq. 4) is run b against run a.  Under the null hypothesis that
nothing but the nuisance stream differs, these Δs are what a comparison of two
methods would show with no effect at all: their standard deviation over the pairs is
the noise floor of that setting, in Δ points.  Tables show it under their rows, and
it enters every comparison's minimum detectable effect (:mod:`mtlbench.stats`).

The records are ordinary run records (``results/runs/...``, their config holding the
``nuisance_seed``): ``mtlbench noise`` trains the missing ones and prints the floor.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .errors import UserError

#: the nuisance seeds of an A/A pair, unless told otherwise
DEFAULT_NUISANCE = (1, 2)
#: the least number of pairs whose spread is quoted as a floor
MIN_PAIRS = 3


def nuisance_set(k: int) -> str:
    """The ``--set`` string of a run of an A/A pair."""
    return f"train.nuisance_seed={int(k)}"


@dataclass
class NoiseFloor:
    """The A/A pairs of ``method`` on ``backbone`` in one setting.

    ``deltas``: seed -> Δ of the pair's ``b`` run against its ``a`` run; ``errors``: seed ->
    why Δ is undefined; ``missing``: (seed, nuisance seed) of the runs without a record,
    among the seeds that have at least one.
    """

    method: str
    backbone: str
    nuisance: tuple[int, int]
    deltas: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    missing: list[tuple[int, int]] = field(default_factory=list)
    records: dict[tuple[int, int], dict] = field(default_factory=dict)  # (seed, nuisance) -> record

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def sd(self) -> float | None:
        """The sample standard deviation of the pairs' Δ (None with fewer than 2 pairs)."""
        return statistics.stdev(self.deltas.values()) if self.n >= 2 else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.deltas.values()) if self.deltas else None

    @property
    def measured(self) -> bool:
        """Enough pairs to quote (:data:`MIN_PAIRS`)."""
        return self.n >= MIN_PAIRS

    def text(self) -> str:
        """One line: the floor, the pairs it rests on and their range."""
        who = f"A/A pairs of {self.method} on {self.backbone} (nuisance seeds {self.nuisance[0]} vs {self.nuisance[1]})"
        if not self.deltas:
            return f"Noise floor: no complete {who}."
        vals = list(self.deltas.values())
        seeds = ", ".join(map(str, self.deltas))
        rng = f"range {min(vals):+.2f} … {max(vals):+.2f}"
        if self.sd is None:
            return f"Noise floor: one pair only ({who}, seed {seeds}: Δ {vals[0]:+.2f}); not yet a measurement."
        few = "" if self.measured else f"; fewer than {MIN_PAIRS} pairs, a rough figure"
        return (f"Noise floor: sd {self.sd:.2f} Δ points over {self.n} {who}, seeds {seeds} "
                f"(mean {self.mean:+.2f}, {rng}){few}.")


def _seed_of(rec: dict) -> int:
    return int(rec.get("seed", (rec.get("config") or {}).get("seed", 0)))


def _nuisance_of(rec: dict) -> int | None:
    return ((rec.get("config") or {}).get("train") or {}).get("nuisance_seed")


def pair_seeds(store, method: str, backbone: str, setting, nuisance: Sequence[int]) -> list[int]:
    """The seeds with at least one A/A record (nuisance seed in ``nuisance``) of ``method``."""
    seeds = {_seed_of(r) for r in store.candidates(method, backbone, setting.dataset, setting.preset)
             if _nuisance_of(r) in set(nuisance)}
    return sorted(seeds)


def pair_jobs(setting, method: str, backbone: str, seeds: Iterable[int],
              nuisance: Sequence[int] = DEFAULT_NUISANCE, overrides: dict | None = None) -> list:
    """The runs of the A/A pairs of ``seeds``: for each seed, one run per nuisance seed
    (:class:`mtlbench.tables.plan.Job`, with the exact ``mtlbench run`` command)."""
    from .tables.plan import JobBuilder

    builder = JobBuilder(setting)
    jobs = []
    for s in seeds:
        for k in nuisance:
            job = builder.build(method, dict(overrides or {}), backbone, int(s), sets=(nuisance_set(k),))
            job.labels = [f"A/A pair {s}, nuisance {k}"]
            jobs.append(job)
    return jobs


def find_pairs(store, setting, method: str, backbone: str, seeds: Iterable[int] | None = None,
               nuisance: Sequence[int] = DEFAULT_NUISANCE, overrides: dict | None = None,
               directions: dict | None = None) -> NoiseFloor:
    """The noise floor from the A/A records in ``store`` (a :class:`~mtlbench.records.RecordStore`).

    ``seeds``: the pairs to use (default: every seed with an A/A record); ``directions``:
    metric directions for Δ (default: the records' own)."""
    from .delta import delta, directions_of

    a, b = (int(x) for x in nuisance)
    if a == b:
        raise UserError(f"an A/A pair needs two different nuisance seeds, got {a} and {b}")
    floor = NoiseFloor(method, backbone, (a, b))
    if seeds is None:
        seeds = pair_seeds(store, method, backbone, setting, (a, b))
    for job in pair_jobs(setting, method, backbone, seeds, (a, b), overrides):
        if job.config is None:
            raise UserError(f"the A/A runs of {method} on {backbone} cannot be resolved here: {job.config_error}")
        k = job.config.train.nuisance_seed
        found = store.find(method, job.config.data, options=job.overrides)
        if found:
            floor.records[(job.seed, k)] = found[0]
        else:
            floor.missing.append((job.seed, k))
    for s in sorted({s for s, _ in floor.records}):
        ra, rb = floor.records.get((s, a)), floor.records.get((s, b))
        if ra is None or rb is None:
            continue
        dirs = directions or directions_of(ra, rb)
        try:
            floor.deltas[s] = delta(rb.get("metrics") or {}, ra.get("metrics") or {}, dirs)
        except ValueError as exc:
            floor.errors[s] = str(exc).removeprefix("delta: ")
    return floor


def effective_sd(observed: float | None, floor: NoiseFloor | None) -> tuple[float | None, str]:
    """The sd a comparison's power is computed from: the larger of its own paired sd and the
    measured noise floor (``(sd, "observed" | "noise floor")``; ``(None, "")`` without either)."""
    fl = floor.sd if floor is not None and floor.measured else None
    cands = [(v, name) for v, name in ((observed, "observed"), (fl, "noise floor"))
             if v is not None and math.isfinite(v)]
    if not cands:
        return None, ""
    return max(cands, key=lambda c: c[0])
