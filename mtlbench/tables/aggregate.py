"""Building a table from records: seed statistics of the metrics, paired Δ, comparisons.

Metric cells are the mean ± sample standard deviation over the seeds found.

Δ (:func:`mtlbench.delta.delta`, the paper's Eq. 4) is *paired*: for each
seed, the row's record is compared with the reference row's record of the same
seed, over all metrics of each task in the records (not only the displayed
ones: that is how the paper's Δ of Tables 1 and 2 recomputes from its printed
metrics).  The per-seed Δs give the mean, a 95% Student-t confidence interval
and a verdict (:mod:`mtlbench.stats`): ``better`` (interval above 0),
``worse`` (below 0), ``no significant difference`` (contains 0), ``too few
seeds`` (fewer than 3 paired seeds).  Pairing removes what the two rows share
through the seed (data order, initialisation), so the interval is about the
method, not about the seed.  Table 3's printed Δ cannot be recomputed from its
displayed columns; ours is shown beside it, not claimed equal.

:meth:`BuiltTable.compare` compares any two rows the same way (``mtlbench
table --compare A,B``); the claims report (:mod:`mtlbench.tables.claims`) is
built on it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import PluginError, UserError
from ..noise import DEFAULT_NUISANCE, effective_sd, find_pairs
from ..reference import learned_from_metrics
from ..stats import PairedSummary, min_detectable_effect, summarize
from .datasets import dataset_tasks, needs_root
from ..records import BadRecord, RecordStore
from .plan import Job, RecordIndex, Setting, plan_runs
from .spec import Column, Row, TableSpec

#: the verdict shown for the Δ reference row itself
REFERENCE = "reference"
#: the row of the input-blind reference predictors (metrics only: no method, no Δ, no verdict)
BLIND_KEY = "input_blind_reference"
BLIND_LABEL = "Input-blind reference"


@dataclass
class Cell:
    """One row on one backbone: seed statistics, paired Δ and the paper's numbers."""

    row: Row
    backbone: str
    seeds: list[int] = field(default_factory=list)  # seeds found
    per_seed: dict[int, dict] = field(default_factory=dict)  # seed -> the record's metrics
    records: dict[int, dict] = field(default_factory=dict)  # seed -> the record itself (the newest match)
    threads: dict[int, int | None] = field(default_factory=dict)  # seed -> the run's CPU threads (record)
    machine: dict[int, dict] = field(default_factory=dict)  # seed -> the record's device (type, amp, processor...)
    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    std: dict[str, dict[str, float]] = field(default_factory=dict)
    delta: PairedSummary | None = None  # paired Δ against the reference row
    # task -> the paired Δ of that task alone (Eq. 4's inner mean over the task's metrics): which
    # task a row's Δ comes from
    task_delta: dict[str, PairedSummary] = field(default_factory=dict)
    is_reference: bool = False
    paper: dict[str, float | None] | None = None
    paper_delta: float | None = None  # the paper's Δ against the reference in use
    unsupported: str | None = None
    # the smallest true Δ the paired seeds detect with 80% power at α = 0.05 (two-sided paired
    # t), from the larger of the row's own paired sd and the noise floor (``mde_basis`` says which)
    mde: float | None = None
    mde_basis: str = ""
    # task -> the seeds whose run did not clearly beat the input-blind reference on that task
    degenerate: dict[str, list[int]] = field(default_factory=dict)

    def value(self, col: Column) -> tuple[float | None, float | None]:
        m = self.mean.get(col.task, {}).get(col.metric)
        s = self.std.get(col.task, {}).get(col.metric)
        return m, s

    @property
    def verdict(self) -> str | None:
        if self.is_reference and self.delta is not None:
            return REFERENCE
        return None if self.delta is None or self.delta.n == 0 else self.delta.verdict


@dataclass
class Comparison:
    """Paired Δ of row ``a`` against row ``b`` on one backbone (per seed, mean, CI, verdict)."""

    a: Row
    b: Row
    backbone: str
    summary: PairedSummary
    errors: dict[int, str] = field(default_factory=dict)  # seed -> why Δ is undefined
    missing: dict[str, list[int]] = field(default_factory=dict)  # row key -> asked seeds without a record
    paper: float | None = None  # the paper's Δ of a against b (printed or recomputed)
    paper_deltas: tuple[float | None, float | None] | None = None  # a's and b's printed Δ (vs the paper's ref)
    paper_reference: str = ""
    mixed_threads: dict[int, tuple[int, int]] = field(default_factory=dict)  # seed -> (a's, b's CPU threads)
    mixed_footing: dict[int, list[str]] = field(default_factory=dict)  # seed -> precision/processor differences
    mde: float | None = None  # the minimum detectable Δ (80% power), from the larger of the paired sd and the floor
    mde_basis: str = ""
    noise_sd: float | None = None  # the measured noise floor of the backbone, if any

    def paper_text(self) -> str | None:
        """The paper's number beside the comparison, or None."""
        if self.paper is not None:
            return f"{self.paper:+.2f}"
        if self.paper_deltas and None not in self.paper_deltas:
            a, b = self.paper_deltas
            return f"Δ {a:.2f} vs {b:.2f} (each vs {self.paper_reference})"
        return None

    def lines(self, multi_backbone: bool = False) -> list[str]:
        """The comparison as text: per-seed Δ, mean ± CI and the verdict."""
        s = self.summary
        bb = f" · {self.backbone}" if multi_backbone else ""
        head = f"{self.a.label} vs {self.b.label}{bb}: Δ (Eq. 4, %, positive = {self.a.label} better)"
        out = [head]
        if s.values:
            out.append("  per seed: " + ", ".join(f"seed {k}: {v:+.2f}" for k, v in s.values.items()))
        out.append("  " + describe_summary(s))
        if self.paper_text():
            out.append(f"  paper: {self.paper_text()}")
        for seed, err in self.errors.items():
            out.append(f"  seed {seed}: Δ undefined: {err}")
        for key, seeds in self.missing.items():
            label = self.a.label if key == self.a.key else self.b.label
            out.append(f"  no record of {label} for seed{'s' if len(seeds) > 1 else ''} "
                       f"{', '.join(map(str, seeds))}")
        if self.mde is not None:
            out.append(f"  detectable: a true Δ of {self.mde:.2f} with 80% power at these {s.n} seeds "
                       f"(from the {self.mde_basis} sd)")
        if self.mixed_threads:
            out.append(f"  {threads_text(self.mixed_threads)}")
        if self.mixed_footing:
            out.append(f"  {footing_text(self.mixed_footing)}")
        return out


def mixed_threads(a: Cell, b: Cell) -> dict[int, tuple[int, int]]:
    """Paired seeds whose two CPU runs used different thread counts: ``{seed: (a's, b's)}``."""
    out = {}
    for s in sorted(set(a.per_seed) & set(b.per_seed)):
        ta, tb = a.threads.get(s), b.threads.get(s)
        if ta and tb and ta != tb:
            out[s] = (ta, tb)
    return out


#: what else decides a run's floating-point results: the resolved precision (``train.amp: auto``
#: resolved), and on a CPU the processor model and the kernel family torch dispatches to
FOOTING_KEYS = (("amp", "precision", False), ("processor", "processor", True),
                ("cpu_capability", "CPU kernels", True))


def mixed_footing(a: Cell, b: Cell) -> dict[int, list[str]]:
    """Paired seeds whose two runs differ in precision, processor or CPU kernel family:
    ``{seed: ["processor AMD EPYC vs Intel Xeon", ...]}``.  Keys a record lacks (written before
    mtlbench recorded them) are unknown, not a difference (:func:`unknown_footing` counts them)."""
    out: dict[int, list[str]] = {}
    for s in sorted(set(a.per_seed) & set(b.per_seed)):
        da, db = a.machine.get(s) or {}, b.machine.get(s) or {}
        diffs = []
        for key, name, cpu_only in FOOTING_KEYS:
            if cpu_only and not (da.get("type") == db.get("type") == "cpu"):
                continue
            va, vb = da.get(key), db.get(key)
            if va is not None and vb is not None and va != vb:
                diffs.append(f"{name} {va} vs {vb}")
        if diffs:
            out[s] = diffs
    return out


def encoder_sha(record: dict | None) -> str | None:
    """The sha256 of the pretrained encoder a run started from (``encoder_init.pretraining``), or
    None for a run from scratch or a record written before mtlbench recorded it.  The config hash
    names the pretraining recipe, not its bytes: a rebuilt artefact can be other bytes."""
    init = (record or {}).get("encoder_init")
    pre = init.get("pretraining") if isinstance(init, dict) else None
    sha = pre.get("sha256") if isinstance(pre, dict) else None
    return sha if isinstance(sha, str) and sha else None


def encoder_mismatch(a: Cell, b: Cell) -> dict[int, str]:
    """Paired seeds whose two runs started from different pretrained encoders (both known):
    ``{seed: why the two are not a pair}``.  Such seeds are left out of the paired Δ: the encoder
    is the starting point of training, not a floating-point detail."""
    out = {}
    for s in sorted(set(a.per_seed) & set(b.per_seed)):
        ea, eb = encoder_sha(a.records.get(s)), encoder_sha(b.records.get(s))
        if ea is not None and eb is not None and ea != eb:
            out[s] = (f"the two runs start from different pretrained encoders (sha256 {ea[:8]} vs {eb[:8]}): "
                      f"not a pair; train both on one encoder (see results/superseded/ for how records "
                      f"of a replaced encoder are set aside)")
    return out


def paired_cells(a: Cell, b: Cell, directions: dict) -> tuple[dict[int, float], dict[int, str]]:
    """:func:`paired_deltas` of two cells, seeds on different pretrained encoders left out (as errors)."""
    skip = encoder_mismatch(a, b) if a is not b else {}
    values, errors = paired_deltas({s: m for s, m in a.per_seed.items() if s not in skip},
                                   {s: m for s, m in b.per_seed.items() if s not in skip}, directions)
    return values, {**errors, **skip}


def paired_task_cells(a: Cell, b: Cell, directions: dict) -> dict[str, dict[int, float]]:
    """``{task: {seed: that task's Δ of a against b}}`` over the seeds :func:`paired_cells` pairs."""
    from ..delta import per_task_delta

    skip = encoder_mismatch(a, b) if a is not b else {}
    out: dict[str, dict[int, float]] = {}
    for s in sorted((set(a.per_seed) & set(b.per_seed)) - set(skip)):
        try:
            per_task = per_task_delta(a.per_seed[s], b.per_seed[s], directions)
        except ValueError:  # the whole Δ is undefined for this seed too (paired_cells says why)
            continue
        for task, v in per_task.items():
            out.setdefault(task, {})[s] = v
    return out


def footing_text(mixed: dict[int, list[str]]) -> str:
    return ("runs on unequal footing (" + "; ".join(f"seed {s}: {', '.join(d)}" for s, d in mixed.items())
            + "): the floating-point results differ by machine and precision alone")


THREADS_CAVEAT = ("the floating-point reduction order differs, which alone can move a seed's Δ by several "
                  "points (docs/RESULTS.md, the noise floor)")


def threads_text(mixed: dict[int, tuple[int, int]]) -> str:
    """The caveat for pairs of runs on different CPU thread counts."""
    pairs = ", ".join(f"seed {s}: {ta} vs {tb}" for s, (ta, tb) in mixed.items())
    return f"thread counts differ ({pairs}): {THREADS_CAVEAT}"


def describe_summary(s: PairedSummary, verdict: bool = True) -> str:
    """``mean +1.23 ± 0.45 (95% CI [+0.78, +1.68], 3 paired seeds): better`` (without
    ``: better`` when ``verdict`` is False)."""
    tail = f": {s.verdict}" if verdict else ""
    if s.n == 0:
        return "no paired seeds" + tail
    if s.half_width is None:
        return f"mean {s.mean:+.2f} (1 paired seed)" + tail
    conf = round(s.interval.confidence * 100)
    return (f"mean {s.mean:+.2f} ± {s.half_width:.2f} ({conf}% CI [{s.lo:+.2f}, {s.hi:+.2f}], "
            f"{s.n} paired seeds)" + tail)


@dataclass
class BuiltTable:
    """A table with its cells, the runs it needs, and notes."""

    spec: TableSpec
    setting: Setting
    seeds: list[int]
    reference: Row
    cells: dict[tuple[str, str], Cell]
    jobs: list[Job]
    notes: list[str]
    directions: dict[str, dict[str, bool]] = field(default_factory=dict)
    problems: list[BadRecord] = field(default_factory=list)  # unreadable records under runs/
    noise: dict[str, Any] = field(default_factory=dict)  # backbone -> NoiseFloor (A/A pairs of the Δ reference)
    # the input-blind references of the setting's dataset (mtlbench.reference); None: not computed
    # (``blind_note`` says why); ``tasks``: the dataset's tasks (their primary metrics)
    blind: Any = None
    blind_note: str = ""
    tasks: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> list[Job]:
        return [j for j in self.jobs if not j.recorded]

    def cell(self, row: Row, backbone: str) -> Cell:
        return self.cells[(row.key, backbone)]

    def row(self, key: str, flag: str = "--compare") -> Row:
        r = self.spec.row(key)
        if r is None:
            keys = [x.key for x in self.spec.rows(hidden=True)]
            raise UserError(f"{flag}: table {self.spec.id} has no row {key!r}", hint=f"rows: {', '.join(keys)}")
        return r

    def compare(self, a: str | Row, b: str | Row, backbone: str | None = None) -> Comparison:
        """Paired Δ of row ``a`` against row ``b`` (row keys or rows) over the table's seeds."""
        ra = a if isinstance(a, Row) else self.row(a)
        rb = b if isinstance(b, Row) else self.row(b)
        bb = backbone or self.spec.backbones[0]
        ca, cb = self.cell(ra, bb), self.cell(rb, bb)
        values, errors = paired_cells(ca, cb, self.directions)
        missing = {r.key: [s for s in self.seeds if s not in c.per_seed]
                   for r, c in ((ra, ca), (rb, cb)) if not c.unsupported}
        comp = Comparison(ra, rb, bb, summarize(values), errors, {k: v for k, v in missing.items() if v},
                          paper_reference=(self.spec.row(self.spec.paper_reference).label),
                          mixed_threads=mixed_threads(ca, cb), mixed_footing=mixed_footing(ca, cb))
        fl = self.noise.get(bb)
        comp.noise_sd = fl.sd if fl is not None and fl.measured else None
        if comp.summary.n >= 2:
            sd, basis = effective_sd(comp.summary.sd, fl)
            if sd is not None:
                comp.mde, comp.mde_basis = min_detectable_effect(comp.summary.n, sd), basis
        pa, pb = self.spec.paper_values(ra, bb), self.spec.paper_values(rb, bb)
        if self.spec.delta and pa is not None and pb is not None:
            if rb.key == self.spec.paper_reference:
                comp.paper = pa.get("delta")
            elif ra.key == rb.key:
                comp.paper = 0.0
            elif self.spec.paper_delta_recomputable:
                comp.paper = _paper_delta(self.spec, ra, rb, bb)
            else:
                comp.paper_deltas = (pa.get("delta"), pb.get("delta"))
        return comp

    def frame(self):
        """A wide numeric DataFrame: one line per (row, backbone) (the CSV output)."""
        import pandas as pd

        lines = []
        for sec in self.spec.sections:
            for row in sec.rows:
                for bb in self.spec.backbones:
                    c = self.cell(row, bb)
                    line: dict[str, Any] = {
                        "section": sec.title or "", "row": row.key, "label": row.label,
                        "method": row.method, "overrides": json.dumps(row.overrides, sort_keys=True),
                        "backbone": bb, "dataset": self.setting.dataset, "preset": self.setting.preset,
                        "seeds": " ".join(str(s) for s in c.seeds), "n_seeds": len(c.seeds),
                        "unsupported": bool(c.unsupported)}
                    for flag, v in zip(self.spec.flag_columns, row.flags):
                        line[flag] = v
                    for col in self.spec.columns:
                        m, s = c.value(col)
                        line[col.key] = m
                        line[f"{col.key}:std"] = s
                        line[f"{col.key}:paper"] = (c.paper or {}).get(col.key)
                    d = c.delta
                    line["delta"] = None if d is None else d.mean
                    line["delta_lo"] = None if d is None else d.lo
                    line["delta_hi"] = None if d is None else d.hi
                    line["delta_n"] = 0 if d is None else d.n
                    line["verdict"] = c.verdict or ""
                    for s in self.seeds:
                        line[f"delta_seed{s}"] = None if d is None else d.values.get(s)
                    line["delta:paper"] = c.paper_delta
                    for task in self.tasks:  # which task the row's Δ comes from
                        td = c.task_delta.get(task)
                        line[f"delta:{task}"] = None if td is None else td.mean
                        line[f"delta:{task}:lo"] = None if td is None else td.lo
                        line[f"delta:{task}:hi"] = None if td is None else td.hi
                    line["mde"] = c.mde
                    line["mde_basis"] = c.mde_basis
                    fl = self.noise.get(bb)
                    line["noise_sd"] = fl.sd if fl is not None and fl.measured else None
                    line["noise_pairs"] = fl.n if fl is not None else 0
                    for task in self.tasks:
                        line[f"degenerate:{task}"] = len(c.degenerate.get(task, []))
                    lines.append(line)
        blind = self.blind_values()
        if blind is not None:
            for bb in self.spec.backbones:
                line = {"section": "", "row": BLIND_KEY, "label": BLIND_LABEL, "method": "", "overrides": "",
                        "backbone": bb, "dataset": self.setting.dataset, "preset": self.setting.preset,
                        "seeds": "", "n_seeds": 0, "unsupported": False}
                for col in self.spec.columns:
                    line[col.key] = blind.get(col.task, {}).get(col.metric)
                lines.append(line)
        return pd.DataFrame(lines)

    def blind_values(self) -> dict[str, dict[str, float]] | None:
        """The input-blind reference row's metrics, ``{task: {metric: value}}``: per task the
        reference variant strongest on the task's primary metric (None: not computed)."""
        if self.blind is None:
            return None
        out = {}
        for task, t in self.tasks.items():
            if task in self.blind.metrics:
                out[task] = dict(self.blind.best(task, t.primary_metric)[1])
        return out

    def blind_variants(self) -> dict[str, str]:
        """``{task: the reference variant the row shows}`` (e.g. depth: pixel_mean)."""
        if self.blind is None:
            return {}
        return {task: self.blind.best(task, t.primary_metric)[0] for task, t in self.tasks.items()
                if task in self.blind.metrics}

    def primary_column(self, task: str) -> Column | None:
        """The column that carries ``task``'s degenerate flag: its primary metric's, else its first."""
        cols = [c for c in self.spec.columns if c.task == task]
        t = self.tasks.get(task)
        key = t.primary_metric.key if t is not None else None
        return next((c for c in cols if c.metric == key), cols[0] if cols else None)


def paired_deltas(results: dict[int, dict], reference: dict[int, dict],
                  directions: dict) -> tuple[dict[int, float], dict[int, str]]:
    """``({seed: Δ of results[seed] against reference[seed]}, {seed: why Δ is undefined})``."""
    from ..delta import delta

    values, errors = {}, {}
    for s in sorted(set(results) & set(reference)):
        try:
            values[s] = delta(results[s], reference[s], directions)
        except ValueError as exc:
            errors[s] = str(exc).removeprefix("delta: ")
    return values, errors


def _paper_delta(spec: TableSpec, a: Row, b: Row, backbone: str) -> float | None:
    from ..delta import delta

    ra, rb = spec.paper_results(a, backbone), spec.paper_results(b, backbone)
    if not ra or not rb:
        return None
    try:
        return delta(ra, rb, spec.directions)
    except ValueError:
        return None


def table_directions(spec: TableSpec, setting: Setting, records: Iterable[dict]) -> dict[str, dict[str, bool]]:
    """Metric directions: the spec's dataset, the setting's dataset, then the records' own."""
    from ..delta import directions_of
    from ..tasks import metric_directions

    dirs = {t: dict(ms) for t, ms in spec.directions.items()}
    tasks = dataset_tasks(setting.dataset, setting.options)
    for t, ms in (metric_directions(tasks) if tasks else {}).items():
        dirs.setdefault(t, {}).update(ms)
    for t, ms in directions_of(*records).items():
        dirs.setdefault(t, {}).update(ms)
    return dirs


def build_table(spec: TableSpec, setting: Setting, *, seeds: Sequence[int] | None = None,
                delta_ref: str | None = None, records: Iterable[dict] | None = None,
                index: RecordIndex | None = None, references: bool = True) -> BuiltTable:
    """Match records to the spec's rows and aggregate them.

    ``seeds``: the seeds the table should have (default: every seed found in
    the table's records, or ``[0]`` when there are none).  ``delta_ref``: the
    key of the Δ reference row (default: the paper's, ``baseline``).
    ``records``: the records to use (default: every record under
    ``setting.out``); or a prepared ``index``.  ``references``: compute the input-blind
    reference row and the degenerate flags (:func:`input_blind_reference`; opens the dataset).
    """
    import pandas as pd

    ref_key = delta_ref or spec.paper_reference
    ref = spec.row(ref_key)
    if ref is None:
        keys = [r.key for r in spec.rows(hidden=True)]
        raise UserError(f"--delta-ref {ref_key!r}: table {spec.id} has no such row",
                        hint=f"use one of: {', '.join(keys)}")
    if index is None:
        index = RecordIndex(RecordStore(records) if records is not None else RecordStore.scan(setting.out))
    notes = list(setting.notes)
    for bad in index.problems:
        if bad.newer:  # not broken: left alone by sweeps too
            notes.append(f"Skipped record {bad.path}: {bad.problem}.")
            continue
        notes.append(f"Unreadable record {bad.path}: {bad.problem} (ignored here; `mtlbench sweep` moves "
                     f"it aside to <name>.corrupt-<time> and runs it again).")
    if seeds is None:
        found: set[int] = set()
        for row in spec.rows() + [ref]:
            for bb in spec.backbones:
                if bb not in row.unsupported:
                    found |= set(index.find(row.method, row.overrides, bb, setting))
        seeds = sorted(found) or [0]
    seeds = list(seeds)
    jobs = plan_runs(spec, setting, seeds, index, ref_key)
    by_key = {j.key: j for j in jobs}

    # one long frame of every metric of every used record, then seed statistics per run group
    long = []
    for j in jobs:
        if not j.records:
            continue
        if len(j.records) > 1:
            notes.append(f"{len(j.records)} records match {j.describe()}; the newest "
                         f"({j.records[0].get('id', j.records[0].get('_path'))}) is used.")
        for task, ms in (j.records[0].get("metrics") or {}).items():
            for metric, v in ms.items():
                if v is not None:
                    long.append({"group": repr(j.group), "seed": j.seed, "task": task, "metric": metric,
                                 "value": float(v)})
    frame = pd.DataFrame(long, columns=["group", "seed", "task", "metric", "value"])
    stats = frame.groupby(["group", "task", "metric"])["value"].agg(["mean", "std", "count"])
    groups = set(stats.index.get_level_values(0))
    directions = table_directions(spec, setting, [j.records[0] for j in jobs if j.records])

    def cell_stats(row: Row, bb: str) -> Cell:
        g = Job(row.method, row.overrides, bb, 0).group  # full options: defaults filled in
        # a row of the very runs of the reference (another key for them) is the reference too
        c = Cell(row, bb, is_reference=row.key == ref.key or g == Job(ref.method, ref.overrides, bb, 0).group)
        if bb in row.unsupported:
            c.unsupported = row.unsupported[bb]
            return c
        c.paper = spec.paper_values(row, bb)
        for s in seeds:
            j = by_key.get((*g, s))
            if j is not None and j.recorded:
                c.seeds.append(s)
                c.per_seed[s] = j.records[0].get("metrics") or {}
                c.records[s] = j.records[0]
                dev = j.records[0].get("device") or {}
                c.threads[s] = dev.get("threads") if dev.get("type") == "cpu" else None  # CPU runs only
                c.machine[s] = dev
        if c.seeds and repr(g) in groups:
            sub = stats.loc[repr(g)]
            c.mean = _nested({k: float(v) for k, v in sub["mean"].items()})
            c.std = _nested({k: float(v) for k, v in sub["std"].items() if not math.isnan(v)})
        return c

    cells = {(row.key, bb): cell_stats(row, bb) for row in spec.rows(hidden=True) for bb in spec.backbones}
    undefined: dict[str, list[str]] = {}  # error -> rows (a zero in the reference hits them all)
    mixed_rows: list[str] = []  # rows with paired seeds on different CPU thread counts
    unequal: list[str] = []  # rows with paired seeds on different precision / processors
    split_encoders: list[str] = []  # rows with seeds whose run and the reference's differ in encoder
    multi = len(spec.backbones) > 1
    for (_, bb), c in cells.items():
        rc = cells.get((ref.key, bb))
        if c.per_seed and rc is not None and rc.per_seed:
            values, errors = paired_cells(c, rc, directions)
            c.delta = summarize(values)
            c.task_delta = {t: summarize(v) for t, v in paired_task_cells(c, rc, directions).items()}
            footing = mixed_footing(c, rc) if c is not rc else {}
            if footing:
                unequal.append(c.row.label + (f" ({bb})" if multi else "") + ": " + footing_text(footing))
            mixed = mixed_threads(c, rc) if c is not rc else {}
            if mixed:
                mixed_rows.append(c.row.label + (f" ({bb})" if multi else "")
                                  + f" seed{'s' if len(mixed) > 1 else ''} " + ", ".join(map(str, mixed)))
            apart = encoder_mismatch(c, rc) if c is not rc else {}
            if apart:
                split_encoders.append(c.row.label + (f" ({bb})" if multi else "") + " seed"
                                      + ("s " if len(apart) > 1 else " ") + ", ".join(map(str, apart)))
            for s, err in errors.items():
                if s not in apart:
                    undefined.setdefault(f"seed {s}: {err}", []).append(c.row.label + (f" ({bb})" if multi else ""))
        # the paper's Δ: as printed against its own reference, else recomputed from its metrics
        if c.paper is not None and spec.delta:
            if ref.key == spec.paper_reference:
                c.paper_delta = c.paper.get("delta")
            elif spec.paper_delta_recomputable and rc is not None and rc.paper is not None:
                c.paper_delta = _paper_delta(spec, c.row, ref, bb)
    for method, (stale, opts) in index.stale.items():
        n = len(stale)
        retrain = ("the missing runs below train them again" if any(j.method == method and not j.recorded
                                                                      for j in jobs)
                   else "this table has a newer record for each of its runs")
        notes.append(f"{n} {method} record{'s' if n > 1 else ''} of this setting lack{'' if n > 1 else 's'} "
                     f"the option{'s' if len(opts) > 1 else ''} {', '.join(opts)} (added to {method} since, "
                     f"not declared backward compatible): they serve no row; {retrain}.")
    for method, recs in index.variants.items():
        n = len(recs)
        settings = sorted({d.split("=")[0] for diffs in recs.values() for d in diffs})
        example_id, example = next(iter(recs.items()))
        notes.append(f"{n} {method} record{'s' if n > 1 else ''} of this setting differ{'' if n > 1 else 's'} "
                     f"from the preset in {', '.join(settings)} (e.g. {example_id}: {'; '.join(example)}): "
                     f"not runs of this preset, they serve no row.")
    if mixed_rows:
        notes.append(f"Paired runs on different CPU thread counts than {ref.label}'s of the same seed: "
                     f"{'; '.join(mixed_rows)}. {THREADS_CAVEAT[0].upper()}{THREADS_CAVEAT[1:]}; "
                     f"`mtlbench table --compare` lists the counts.")
    if unequal:
        notes.append(f"Paired runs not on equal footing with {ref.label}'s of the same seed: {'; '.join(unequal)}. "
                     f"Pin the processor and precision of a study (records say where each ran).")
    if split_encoders:
        notes.append(f"Left out of the paired Δ, the run and {ref.label}'s of the same seed starting from "
                     f"different pretrained encoders (encoder_init.pretraining.sha256): {'; '.join(split_encoders)}. "
                     f"A rebuilt pretraining artefact can be other bytes; train every run of a seed on one.")
    shas: dict[str, int] = {}
    for c in cells.values():
        for rec in c.records.values():
            sha = encoder_sha(rec)
            if sha is not None:
                shas[sha] = shas.get(sha, 0) + 1
    if len(shas) > 1:
        notes.append("The records of this table start from " + str(len(shas)) + " different pretrained encoders ("
                     + ", ".join(f"sha256 {k[:8]}: {v} record{'s' if v > 1 else ''}" for k, v in shas.items())
                     + "): seed statistics mix them.")
    unknown = sum(1 for c in cells.values() for d in c.machine.values() if "processor" not in (d or {}))
    if unknown:
        notes.append(f"{unknown} record{'s' if unknown > 1 else ''} of this table predate{'' if unknown > 1 else 's'} "
                     f"the processor field (written before mtlbench recorded the CPU model and kernel family): "
                     f"their machine is unknown, so pairs with them are not checked for it.")
    for err, labels in undefined.items():
        notes.append(f"Δ is undefined for {', '.join(labels)} on {err} "
                     f"(too short a training run? e.g. --preset quick trains longer than smoke)")
    if spec.delta and ref.key != spec.paper_reference:
        pref = spec.row(spec.paper_reference)
        notes.append(
            f"The paper's Δ is against {pref.label}; "
            + (f"its Δ against {ref.label} shown here is recomputed from the paper's printed metrics."
               if spec.paper_delta_recomputable else
               f"its Δ against {ref.label} cannot be recomputed from the printed columns and is not shown."))
    notes.extend(spec.notes)
    if any(not c.seeds for (k, bb), c in cells.items() if k == ref.key and bb in spec.backbones
           and not c.unsupported):
        notes.append(f"Δ needs the reference row ({ref.label}): see the missing runs.")
    if setting.data_root is None and needs_root(setting.dataset) and any(not j.recorded for j in jobs):
        notes.append(f"The commands carry `--data-root DIR`: replace DIR with your {setting.dataset} "
                     f"directory, or pass --data-root to this command.")
    noise = {}
    for bb in spec.backbones:
        if bb in ref.unsupported:
            continue
        fl = find_pairs(index.store, setting, ref.method, bb, nuisance=DEFAULT_NUISANCE,
                        overrides=ref.overrides, directions=directions)
        if fl.records:
            noise[bb] = fl
    bt = BuiltTable(spec, setting, seeds, ref, cells, jobs, notes, directions, list(index.problems), noise)
    if references:
        bt.blind, bt.tasks, bt.blind_note = input_blind_reference(setting, ref.method, spec.backbones[0],
                                                                  seeds[0] if seeds else 0)
    for (_, bb), c in cells.items():
        if c.delta is not None and c.delta.n >= 2 and not c.is_reference:
            sd, basis = effective_sd(c.delta.sd, noise.get(bb))
            if sd is not None:
                c.mde, c.mde_basis = min_detectable_effect(c.delta.n, sd), basis
        if bt.blind is not None:
            for s_, metrics in c.per_seed.items():
                for task, lr in learned_from_metrics(metrics, bt.blind, bt.tasks).items():
                    if lr.degenerate:
                        c.degenerate.setdefault(task, []).append(s_)
    return bt


def input_blind_reference(setting: Setting, method: str, backbone: str, seed: int):
    """``(ReferenceResult, tasks, "")`` of the setting's dataset (:mod:`mtlbench.reference`: fitted on
    its train split, scored on val, cached), or ``(None, {}, why)`` when the dataset cannot be
    opened here (e.g. a real dataset without ``--data-root``)."""
    import sys

    from ..reference import reference_for_dataset
    from ..registry import DATASETS
    from .plan import JobBuilder

    try:
        cfg = JobBuilder(setting).resolve(method, {}, backbone, seed)
        dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
        result = reference_for_dataset(dataset, log=lambda m: print(f"mtlbench: {m}", file=sys.stderr,
                                                                      flush=True))
        return result, dict(dataset.tasks()), ""
    except PluginError:  # a broken plugin is named, not taken for missing files
        raise
    except (UserError, OSError) as exc:
        msg = exc.message if isinstance(exc, UserError) else str(exc)
        return None, {}, f"the input-blind reference needs the dataset's files ({msg})"


def _nested(flat: dict[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (t, m), v in flat.items():
        out.setdefault(t, {})[m] = v
    return out
