"""The paper's Tables 1-5, rebuilt from run records.

A table is a YAML spec in this package (``table1.yaml`` ... ``table5.yaml``):
its dataset, backbone(s), metric columns, sections of rows (a label, a method
and the method options that row overrides), the row the paper's Δ is measured
against, and the paper's own number for every cell.  :func:`build_table`
matches run records to the rows, aggregates them with pandas and renders the
result next to the paper's numbers (:func:`render`).

Matching.  A record serves a row when its method, backbone, dataset, preset
and seed are the table's, when the row's overrides equal the record's method
options and every other method option is at its default (an option a record
lacks counts as its default, so records written before an option existed still
match; when the method is not registered only the overrides are checked).  For
a synthetic stand-in dataset the variant must match the table's family too
(``config["dataset"]["variant"]``: Table 2 needs ``cityscapes``).  Several
records for one row and seed (e.g. the same preset with a changed
``--epochs``): the newest is used, and a note says so.

Aggregation.  Each cell is the mean ± sample standard deviation over the seeds
found.  Δ (:func:`mtlbench.delta.delta`, the paper's Eq. 4) is computed from
the seed-mean metrics of a row against the seed-mean metrics of the reference
row, over *all* metrics of each task in the records (not only the displayed
ones): that is how the paper's Δ of Tables 1 and 2 recomputes from its printed
metrics.  Table 3's printed Δ cannot be recomputed from its displayed columns;
ours is shown beside it, not claimed equal.

Setting.  ``--dataset`` and ``--preset`` decide what the table is built on:

* neither: the table's own dataset (NYUv2 or Cityscapes) with the ``paper`` preset;
* ``--preset P`` alone: P's dataset when it is ``synthetic`` (``quick``,
  ``smoke``), with the variant of the table's family; otherwise the table's
  own dataset;
* ``--dataset D`` alone: preset ``paper`` when D is the table's own dataset,
  else ``quick`` (so ``--dataset synthetic`` means the quick stand-in);
* both: as given.

Whenever the dataset is not the table's own, a note says that the paper's
numbers are for NYUv2/Cityscapes and are shown for reference only.

Missing runs.  Every (row, backbone, seed) without a record is listed with
the exact command that produces it (:func:`mtlbench.runs.command_for`), in
dependency order (``stl`` before the runs that load it as teachers); the same
plan drives ``mtlbench sweep``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ..errors import UserError

SPEC_DIR = Path(__file__).parent

#: printed names of the datasets the paper's tables are on
DATASET_NAMES = {"nyuv2": "NYUv2", "cityscapes": "Cityscapes"}

FORMATS = ("rich", "md", "csv", "latex")


# ---------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """A metric column: ``task/metric`` with its printed label and direction."""

    task: str
    metric: str
    label: str
    higher_is_better: bool

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def header(self) -> str:
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"

    @property
    def precision(self) -> int:
        # depth errors are small numbers (metres, or Cityscapes' rescaled disparity)
        return 4 if self.task == "depth" else 2


@dataclass
class Row:
    """One row of a table: a method with some of its options overridden."""

    key: str
    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, list | None] = field(default_factory=dict)  # backbone -> printed values
    unsupported: dict[str, str] = field(default_factory=dict)  # backbone -> why '-'
    needs: list[str] = field(default_factory=list)  # methods to run first (when unregistered)
    flags: list[str] = field(default_factory=list)
    section: int = 0
    shown: bool = True


@dataclass
class Section:
    title: str | None
    rows: list[Row]


@dataclass
class TableSpec:
    """A parsed table spec (see the YAML files beside this module)."""

    id: str
    title: str
    dataset: str
    backbones: list[str]
    columns: list[Column]
    delta: bool
    paper_reference: str
    sections: list[Section]
    references: dict[str, Row] = field(default_factory=dict)
    flag_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""

    def rows(self, hidden: bool = False) -> list[Row]:
        rows = [r for s in self.sections for r in s.rows]
        return rows + list(self.references.values()) if hidden else rows

    def row(self, key: str) -> Row | None:
        for r in self.rows():
            if r.key == key:
                return r
        return self.references.get(key)

    def paper_values(self, row: Row, backbone: str) -> dict[str, float | None] | None:
        """``{column key: value, "delta": Δ}`` as printed in the paper, or None."""
        vals = row.paper.get(backbone)
        if vals is None:
            return None
        keys = [c.key for c in self.columns] + (["delta"] if self.delta else [])
        return {k: (None if v is None else float(v)) for k, v in zip(keys, vals)}

    @property
    def paper_delta_recomputable(self) -> bool:
        """Whether the displayed columns hold every metric of each of their tasks."""
        from ..tasks import DIRECTIONS

        shown: dict[str, set] = {}
        for c in self.columns:
            shown.setdefault(c.task, set()).add(c.metric)
        return bool(shown) and all(set(DIRECTIONS.get(t, {})) <= ms for t, ms in shown.items())


def _metric_infos() -> dict[tuple[str, str], Any]:
    from ..tasks import Depth, Normal, SemSeg

    return {(cls.name, m.key): m for cls in (SemSeg, Depth, Normal) for m in cls.metrics}


def available_tables() -> list[str]:
    return sorted((p.stem[len("table"):] for p in SPEC_DIR.glob("table*.yaml")), key=_natural)


def _natural(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def spec_path(ref: str | int) -> Path:
    ref = str(ref)
    if ref.isdigit():
        p = SPEC_DIR / f"table{int(ref)}.yaml"
        if p.is_file():
            return p
        raise UserError(f"--id {ref}: there is no table {ref}; tables: {', '.join(available_tables())}",
                        hint="pass --id with one of those numbers, or a path to a table spec YAML")
    p = Path(ref)
    if p.is_file():
        return p
    raise UserError(f"--id {ref!r} is neither a table number ({', '.join(available_tables())}) "
                    f"nor an existing spec file", hint="e.g. --id 1")


def load_spec(ref: str | int) -> TableSpec:
    """Load and check a table spec: a number (``1``..``5``) or a path to a YAML file."""
    path = spec_path(ref)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"table spec {path} is not valid YAML: {exc}") from exc
    try:
        return parse_spec(data, source=str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"table spec {path} is malformed: {exc}") from exc


def _row(d: dict, section: int, backbones: list[str], n_values: int, shown: bool = True) -> Row:
    unknown = set(d) - {"key", "label", "method", "overrides", "paper", "unsupported", "needs", "flags"}
    if unknown:
        raise ValueError(f"row {d.get('key')!r}: unknown keys {sorted(unknown)}")
    paper = d.get("paper")
    if paper is None or isinstance(paper, list):
        paper = {backbones[0]: paper} if len(backbones) == 1 else {b: None for b in backbones}
    for b, vals in paper.items():
        if b not in backbones:
            raise ValueError(f"row {d['key']!r}: paper values for unknown backbone {b!r}")
        if vals is not None and len(vals) != n_values:
            raise ValueError(f"row {d['key']!r} ({b}): {len(vals)} paper values, expected {n_values}")
    overrides = dict(d.get("overrides") or {})
    return Row(key=str(d["key"]), label=str(d.get("label", d["key"])), method=str(d["method"]),
               overrides=overrides, paper=paper, unsupported=dict(d.get("unsupported") or {}),
               needs=list(d.get("needs") or []), flags=[str(f) for f in d.get("flags") or []],
               section=section, shown=shown)


def parse_spec(data: dict, source: str = "") -> TableSpec:
    infos = _metric_infos()
    columns = []
    for key in data.get("columns") or []:
        task, _, metric = str(key).partition("/")
        info = infos.get((task, metric))
        if info is None:
            raise ValueError(f"unknown column {key!r}; columns are task/metric, e.g. semseg/miou")
        columns.append(Column(task, metric, info.label, info.higher_is_better))
    backbones = list(data["backbones"])
    has_delta = bool(data.get("delta", True))
    n_values = len(columns) + (1 if has_delta else 0)
    sections = []
    for i, s in enumerate(data["sections"]):
        sections.append(Section(s.get("title"), [_row(r, i, backbones, n_values) for r in s["rows"]]))
    refs = {k: _row({"key": k, **v}, -1, backbones, n_values, shown=False)
            for k, v in (data.get("references") or {}).items()}
    spec = TableSpec(id=str(data["id"]), title=str(data["title"]), dataset=str(data["dataset"]),
                     backbones=backbones, columns=columns, delta=has_delta,
                     paper_reference=str(data.get("paper_reference", "baseline")),
                     sections=sections, references=refs,
                     flag_columns=list(data.get("flag_columns") or []),
                     notes=[str(n) for n in data.get("notes") or []], source=source)
    keys = [r.key for r in spec.rows(hidden=True)]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate row keys in {keys}")
    if spec.row(spec.paper_reference) is None:
        raise ValueError(f"paper_reference {spec.paper_reference!r} is not a row or reference")
    for r in spec.rows():
        if spec.flag_columns and len(r.flags) != len(spec.flag_columns):
            raise ValueError(f"row {r.key!r}: {len(r.flags)} flags for {len(spec.flag_columns)} flag columns")
    return spec


# ---------------------------------------------------------------------------
# the setting a table is built on
# ---------------------------------------------------------------------------

@dataclass
class Setting:
    """Dataset, preset and results directory a table is built on (and a sweep runs)."""

    dataset: str
    preset: str
    variant: str | None = None  # the stand-in's variant records must have (synthetic)
    data_root: str | None = None
    out: Path = Path("results")
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.dataset}" + (f" (variant {self.variant})" if self.variant else "")


def _preset_dataset(preset: str) -> dict:
    from ..config import DEFAULTS, load_yaml, preset_path

    data = load_yaml(preset_path(preset), f"preset {preset!r}")
    ds = data.get("dataset") or {}
    if isinstance(ds, str):
        ds = {"name": ds}
    return {"name": DEFAULTS["dataset"]["name"], **ds}


def _dataset_has_variant(name: str) -> bool:
    from ..registry import DATASETS

    try:
        cls = getattr(DATASETS.get(name), "Config", None)
    except UserError:
        return name == "synthetic"
    return cls is not None and "variant" in {f.name for f in dataclasses.fields(cls)}


def _needs_data_root(name: str) -> bool:
    return name != "synthetic" and not _dataset_has_variant(name)


def choose_setting(spec: TableSpec, *, dataset: str | None = None, preset: str | None = None,
                   data_root: str | None = None, out: str | Path = "results") -> Setting:
    """The dataset and preset of a table (the rules are in the module docstring)."""
    from ..config import preset_path

    if preset is not None:
        preset_path(preset)  # an unknown preset is a UserError naming the presets
    if dataset is None:
        if preset is None:
            preset = "paper"
            dataset = spec.dataset
        else:
            pds = _preset_dataset(preset)["name"]
            dataset = pds if pds == "synthetic" else spec.dataset
    elif preset is None:
        preset = "paper" if dataset == spec.dataset else "quick"
    variant = None
    if dataset != spec.dataset and _dataset_has_variant(dataset):
        variant = spec.dataset
    setting = Setting(dataset=dataset, preset=preset, variant=variant, data_root=data_root, out=Path(out))
    if dataset != spec.dataset:
        real = DATASET_NAMES.get(spec.dataset, spec.dataset)
        setting.notes.append(
            f"Built on `{setting.describe()}` with preset `{preset}`, not on {real}: the paper's "
            f"numbers are for {real} (384x384, 200 epochs) and are shown for reference only; "
            f"compare orderings and the sign of Δ, not values.")
    return setting


# ---------------------------------------------------------------------------
# matching records to rows
# ---------------------------------------------------------------------------

_DEFAULTS_CACHE: dict[str, dict | None] = {}


def method_defaults(method: str) -> dict | None:
    """The default options of a registered method, or None when it is not registered."""
    if method not in _DEFAULTS_CACHE:
        from ..registry import METHODS

        try:
            cls = METHODS.get(method).Config
            _DEFAULTS_CACHE[method] = {k: v for k, v in dataclasses.asdict(cls()).items()}
        except (UserError, TypeError, AttributeError):
            _DEFAULTS_CACHE[method] = None
    return _DEFAULTS_CACHE[method]


def canonical_options(method: str, overrides: dict) -> dict:
    """A row's full method options (defaults filled in when the method is registered)."""
    defaults = method_defaults(method)
    return {**(defaults or {}), **overrides}


def _same(a: Any, b: Any) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def options_match(record_options: dict, method: str, overrides: dict) -> bool:
    """Whether a record's method options are the row's (overrides set, the rest default)."""
    defaults = method_defaults(method)
    have = {**(defaults or {}), **{k: v for k, v in record_options.items() if k != "name"}}
    want = canonical_options(method, overrides)
    return all(k in have and _same(have[k], v) for k, v in want.items())


def effective_overrides(method: str, overrides: dict) -> dict:
    """The overrides that differ from the method's defaults (all of them when it is unregistered)."""
    defaults = method_defaults(method)
    if defaults is None:
        return dict(overrides)
    return {k: v for k, v in overrides.items() if k not in defaults or not _same(defaults[k], v)}


def _options_key(method: str, overrides: dict) -> str:
    return json.dumps(canonical_options(method, overrides), sort_keys=True, default=str)


class RecordIndex:
    """Records grouped by (method, backbone, dataset, preset) for matching rows."""

    def __init__(self, records: Iterable[dict]):
        self.by_key: dict[tuple, list[dict]] = {}
        for rec in records:
            key = (rec.get("method"), rec.get("backbone"), rec.get("dataset"), rec.get("preset"))
            self.by_key.setdefault(key, []).append(rec)

    @classmethod
    def from_dir(cls, out: str | Path) -> "RecordIndex":
        from ..runs import iter_records

        return cls(iter_records(out))

    def find(self, method: str, overrides: dict, backbone: str, setting: Setting) -> dict[int, list[dict]]:
        """``{seed: [matching records, newest first]}``."""
        found: dict[int, list[dict]] = {}
        for rec in self.by_key.get((method, backbone, setting.dataset, setting.preset), []):
            cfg = rec.get("config") or {}
            if setting.variant is not None and (cfg.get("dataset") or {}).get("variant") != setting.variant:
                continue
            if not options_match(cfg.get("method") or {}, method, overrides):
                continue
            found.setdefault(int(rec.get("seed", cfg.get("seed", 0))), []).append(rec)
        for recs in found.values():
            recs.sort(key=lambda r: r.get("created", ""), reverse=True)
        return found


# ---------------------------------------------------------------------------
# the plan: every run a table needs, in dependency order
# ---------------------------------------------------------------------------

@dataclass
class Job:
    """One run a table needs: a method with options, on a backbone, for a seed."""

    method: str
    overrides: dict
    backbone: str
    seed: int
    labels: list[str] = field(default_factory=list)  # the rows it serves
    deps: list[tuple] = field(default_factory=list)  # keys of jobs to finish first
    records: list[dict] = field(default_factory=list)  # matching records, newest first
    command: str = ""

    @property
    def group(self) -> tuple:
        return (self.method, _options_key(self.method, self.overrides), self.backbone)

    @property
    def key(self) -> tuple:
        return (*self.group, self.seed)

    @property
    def recorded(self) -> bool:
        return bool(self.records)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return (f"{self.method}{f' ({opts})' if opts else ''} · {self.backbone} · seed {self.seed}"
                f" [{'; '.join(self.labels)}]")


def _requires(method: str, overrides: dict, fallback: list[str]) -> list[str]:
    """Methods whose runs must exist first (``Method.requires``; the spec's ``needs`` otherwise)."""
    from ..registry import METHODS

    try:
        cls = METHODS.get(method)
    except UserError:
        return list(fallback)
    req = getattr(cls, "requires", None)
    if req is None:
        return list(fallback)
    try:
        return list(req(cls.Config(**canonical_options(method, overrides))))
    except (TypeError, ValueError):
        return list(fallback)


class CommandBuilder:
    """The exact ``mtlbench run`` command of a job, via :func:`mtlbench.runs.command_for`."""

    def __init__(self, setting: Setting):
        self.setting = setting
        self._likes: dict[tuple, dict | None] = {}

    def like(self, backbone: str, seed: int) -> dict | None:
        """The resolved config of this setting (method aside), or None when it cannot be resolved."""
        key = (backbone, seed)
        if key not in self._likes:
            from ..config import resolve

            s = self.setting
            try:
                self._likes[key] = resolve(
                    preset=s.preset,
                    flags=[("backbone.name", backbone, "--backbone"), ("dataset.name", s.dataset, "--dataset"),
                           ("dataset.root", s.data_root, "--data-root"), ("seed", seed, "--seed")],
                    sets=[f"dataset.variant={s.variant}"] if s.variant else []).data
            except UserError:
                self._likes[key] = None  # e.g. a backbone or dataset plugin that is not installed
        return self._likes[key]

    def __call__(self, method: str, overrides: dict, backbone: str, seed: int) -> str:
        from ..runs import command_for

        like = self.like(backbone, seed)
        if like is not None:
            try:
                cmd = command_for(like, method, overrides, out=self.setting.out)
                return self._with_root_placeholder(cmd)
            except UserError:
                pass  # the method is not registered: build the same command by hand
        return self._with_root_placeholder(self.manual(method, overrides, backbone, seed))

    def manual(self, method: str, overrides: dict, backbone: str, seed: int) -> str:
        """What ``command_for`` writes, without resolving (for plugins not installed here)."""
        from ..runs import _yaml_scalar

        s = self.setting
        args = ["mtlbench", "run", "--method", method, "--backbone", backbone, "--dataset", s.dataset,
                "--preset", s.preset, "--seed", str(seed)]
        if s.data_root:
            args += ["--data-root", str(s.data_root)]
        pds = _preset_dataset(s.preset)
        if s.variant and not (pds["name"] == s.dataset and pds.get("variant") == s.variant):
            args += ["--set", f"dataset.variant={s.variant}"]
        for k, v in overrides.items():
            args += ["--set", f"method.{k}={_yaml_scalar(v)}"]
        if Path(s.out) != Path("results"):
            args += ["--out", str(s.out)]
        return " ".join(shlex.quote(a) for a in args)

    def _with_root_placeholder(self, cmd: str) -> str:
        s = self.setting
        if s.data_root is None and _needs_data_root(s.dataset) and "--data-root" not in cmd:
            cmd = cmd.replace(f" --dataset {s.dataset} ", f" --dataset {s.dataset} --data-root DIR ", 1)
        return cmd


def plan_runs(spec: TableSpec, setting: Setting, seeds: Sequence[int], index: RecordIndex,
              delta_ref: str | None = None) -> list[Job]:
    """Every run of the table (its rows, the Δ reference, their dependencies), ordered.

    Runs that serve several rows (Table 5's AFD-ours and T = 0.10) appear once.
    The order is the rows' order, except that a run comes after the runs it
    depends on (``Method.requires``: ``stl`` before ``kd_mtl`` and okd with
    pretrained teachers; see :func:`_topological`).
    """
    build_cmd = CommandBuilder(setting)
    ref = spec.row(delta_ref or spec.paper_reference)
    # a reference the table does not show goes first: Δ is then available early
    rows = ([ref] if ref is not None and not ref.shown else []) + spec.rows()
    jobs: dict[tuple, Job] = {}

    def add(method: str, overrides: dict, backbone: str, seed: int, label: str) -> Job:
        job = Job(method, effective_overrides(method, overrides), backbone, seed)
        if job.key in jobs:
            job = jobs[job.key]
        else:
            jobs[job.key] = job
            job.records = index.find(method, overrides, backbone, setting).get(seed, [])
            job.command = build_cmd(method, overrides, backbone, seed)
        if label not in job.labels:
            job.labels.append(label)
        return job

    for row in rows:
        label = row.label + ("" if row.shown else " (Δ reference)")
        for bb in spec.backbones:
            if bb in row.unsupported:
                continue
            for seed in seeds:
                job = add(row.method, row.overrides, bb, seed, label)
                for need in _requires(row.method, row.overrides, row.needs):
                    dep = add(need, {}, bb, seed, f"needed by {row.label}")
                    if dep.key not in job.deps:
                        job.deps.append(dep.key)
    return _topological(list(jobs.values()))


def _topological(jobs: list[Job]) -> list[Job]:
    """Stable order by dependency depth: runs needing nothing first (in the rows' order), then
    the runs that need them.  Every run comes after its dependencies, and the runs others need
    all come early (so parallel executors can start the dependants sooner)."""
    by_key = {j.key: j for j in jobs}
    depth: dict[tuple, int] = {}

    def level(job: Job, stack: tuple = ()) -> int:
        if job.key in stack:
            raise ValueError(f"dependency cycle through {job.describe()}")
        if job.key not in depth:
            deps = [by_key[d] for d in job.deps if d in by_key]
            depth[job.key] = 1 + max((level(d, stack + (job.key,)) for d in deps), default=-1)
        return depth[job.key]

    return sorted(jobs, key=level)


def parse_seeds(text: str | None, flag: str = "--seeds") -> list[int] | None:
    """``"0,1,2"`` or ``"0-2"`` -> ``[0, 1, 2]``; None stays None."""
    if text is None:
        return None
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a list of seeds",
                        hint=f"write e.g. {flag} 0,1,2 or {flag} 0-4") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UserError(f"{flag} {text!r} must name non-negative seeds", hint=f"e.g. {flag} 0,1,2")
    return sorted(dict.fromkeys(seeds))


# ---------------------------------------------------------------------------
# building the table
# ---------------------------------------------------------------------------

@dataclass
class Cell:
    """One row on one backbone: seed statistics, Δ and the paper's numbers."""

    row: Row
    backbone: str
    seeds: list[int] = field(default_factory=list)  # seeds found
    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    std: dict[str, dict[str, float]] = field(default_factory=dict)
    delta: float | None = None
    paper: dict[str, float | None] | None = None
    paper_delta: float | None = None  # the paper's Δ against the reference in use
    unsupported: str | None = None

    def value(self, col: Column) -> tuple[float | None, float | None]:
        m = self.mean.get(col.task, {}).get(col.metric)
        s = self.std.get(col.task, {}).get(col.metric)
        return m, s


@dataclass
class BuiltTable:
    spec: TableSpec
    setting: Setting
    seeds: list[int]
    reference: Row
    cells: dict[tuple[str, str], Cell]
    jobs: list[Job]
    notes: list[str]

    @property
    def missing(self) -> list[Job]:
        return [j for j in self.jobs if not j.recorded]

    def cell(self, row: Row, backbone: str) -> Cell:
        return self.cells[(row.key, backbone)]

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
                    line["delta"] = c.delta
                    line["delta:paper"] = c.paper_delta
                    lines.append(line)
        return pd.DataFrame(lines)


def _directions(records: Iterable[dict]) -> dict[str, dict[str, bool]]:
    from ..tasks import DIRECTIONS

    dirs = {t: dict(ms) for t, ms in DIRECTIONS.items()}
    for rec in records:
        for t, info in (rec.get("tasks") or {}).items():
            for k, d in (info.get("metrics") or {}).items():
                dirs.setdefault(t, {})[k] = d == "higher"
    return dirs


def _nested(flat: dict[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (t, m), v in flat.items():
        out.setdefault(t, {})[m] = v
    return out


def _paper_results(spec: TableSpec, values: dict[str, float | None]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for c in spec.columns:
        v = values.get(c.key)
        if v is not None:
            out.setdefault(c.task, {})[c.metric] = v
    return out


def build_table(spec: TableSpec, setting: Setting, *, seeds: Sequence[int] | None = None,
                delta_ref: str | None = None, records: Iterable[dict] | None = None) -> BuiltTable:
    """Match records to the spec's rows and aggregate them.

    ``seeds``: the seeds the table should have (default: every seed found in
    the table's records, or ``[0]`` when there are none).  ``delta_ref``: the
    key of the Δ reference row (default: the paper's, ``baseline``).
    ``records``: the records to use (default: every record under ``setting.out``).
    """
    import pandas as pd

    from ..delta import delta

    ref_key = delta_ref or spec.paper_reference
    ref = spec.row(ref_key)
    if ref is None:
        keys = [r.key for r in spec.rows(hidden=True)]
        raise UserError(f"--delta-ref {ref_key!r}: table {spec.id} has no such row",
                        hint=f"use one of: {', '.join(keys)}")
    recs = list(records) if records is not None else None
    index = RecordIndex(recs) if recs is not None else RecordIndex.from_dir(setting.out)
    notes = list(setting.notes)
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
    used = [j.records[0] for j in jobs if j.records]
    directions = _directions(used)

    def cell_stats(row: Row, bb: str) -> Cell:
        c = Cell(row, bb)
        if bb in row.unsupported:
            c.unsupported = row.unsupported[bb]
            return c
        c.paper = spec.paper_values(row, bb)
        g = Job(row.method, row.overrides, bb, 0).group
        c.seeds = [s for s in seeds if by_key.get((*g, s)) is not None and by_key[(*g, s)].recorded]
        if c.seeds and repr(g) in stats.index.get_level_values(0):
            sub = stats.loc[repr(g)]
            c.mean = _nested({k: float(v) for k, v in sub["mean"].items()})
            c.std = _nested({k: float(v) for k, v in sub["std"].items() if not math.isnan(v)})
        return c

    cells = {(row.key, bb): cell_stats(row, bb) for row in spec.rows(hidden=True) for bb in spec.backbones}
    undefined: dict[str, list[str]] = {}  # error -> rows (a zero in the reference hits them all)
    for (_, bb), c in cells.items():
        rc = cells.get((ref.key, bb))
        if c.mean and rc is not None and rc.mean:
            try:
                c.delta = delta(c.mean, rc.mean, directions)
            except ValueError as exc:
                undefined.setdefault(str(exc), []).append(
                    c.row.label + (f" ({bb})" if len(spec.backbones) > 1 else ""))
        # the paper's Δ: as printed against its own reference, else recomputed from its metrics
        if c.paper is not None and spec.delta:
            if ref.key == spec.paper_reference:
                c.paper_delta = c.paper.get("delta")
            elif spec.paper_delta_recomputable and rc is not None and rc.paper is not None:
                c.paper_delta = delta(_paper_results(spec, c.paper), _paper_results(spec, rc.paper))
    for err, labels in undefined.items():
        notes.append(f"Δ is undefined for {', '.join(labels)}: {err.removeprefix('delta: ')} "
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
    if setting.data_root is None and _needs_data_root(setting.dataset) and any(not j.recorded for j in jobs):
        notes.append(f"The commands carry `--data-root DIR`: replace DIR with your {setting.dataset} "
                     f"directory, or pass --data-root to this command.")
    return BuiltTable(spec, setting, seeds, ref, cells, jobs, notes)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------

DASH = "–"


def _fmt(v: float | None, prec: int) -> str:
    return DASH if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{prec}f}"


def _ours(c: Cell, col: Column) -> str:
    m, s = c.value(col)
    if m is None:
        return DASH
    return _fmt(m, col.precision) + (f" ± {_fmt(s, col.precision)}" if s is not None else "")


def _paper(c: Cell, key: str, prec: int) -> str | None:
    if c.paper is None:
        return None
    v = c.paper.get(key)
    return None if v is None else f"{v:.{prec}f}"


def _cells(bt: BuiltTable, row: Row, bb: str, paper: bool) -> list[str]:
    """The printed cells of one row on one backbone: seeds, metrics, Δ."""
    c = bt.cell(row, bb)
    ncols = len(bt.spec.columns) + (1 if bt.spec.delta else 0)
    if c.unsupported:
        return ["-"] * (1 + ncols)
    out = [f"{len(c.seeds)}/{len(bt.seeds)}"]
    for col in bt.spec.columns:
        text = _ours(c, col)
        p = _paper(c, col.key, col.precision) if paper else None
        out.append(text + (f" [{p}]" if p is not None else ""))
    if bt.spec.delta:
        text = DASH if c.delta is None else f"{c.delta:+.2f}"
        p = None if (not paper or c.paper_delta is None) else f"{c.paper_delta:.2f}"
        out.append(text + (f" [{p}]" if p is not None else ""))
    return out


def _headers(bt: BuiltTable) -> list[str]:
    multi = len(bt.spec.backbones) > 1
    hs = ["Method", *bt.spec.flag_columns]
    for bb in bt.spec.backbones:
        pre = f"{bb}: " if multi else ""
        hs.append(f"{pre}seeds")
        hs += [pre + c.header for c in bt.spec.columns]
        if bt.spec.delta:
            hs.append(pre + "Δ ↑")
    return hs


def _body(bt: BuiltTable, section: Section, paper: bool) -> list[list[str]]:
    rows = []
    for row in section.rows:
        line = [row.label, *row.flags]
        for bb in bt.spec.backbones:
            line += _cells(bt, row, bb, paper)
        rows.append(line)
    return rows


def _info_line(bt: BuiltTable) -> str:
    s = bt.setting
    ref = bt.reference
    ref_info = ref.label
    if not ref.shown:
        found = [f"{len(bt.cell(ref, bb).seeds)}/{len(bt.seeds)}" for bb in bt.spec.backbones]
        ref_info += f" (not shown; seeds found: {', '.join(found)})"
    return (f"dataset `{s.describe()}` · preset `{s.preset}` · backbone{'s' if len(bt.spec.backbones) > 1 else ''} "
            f"{', '.join(f'`{b}`' for b in bt.spec.backbones)} · seeds {', '.join(map(str, bt.seeds))} · "
            f"Δ vs {ref_info} · records from `{s.out}`")


def _legend(bt: BuiltTable, paper: bool) -> str:
    text = ("Cells: mean ± sample std over the seeds found (one seed: no ±); "
            "`seeds`: found / asked.")
    if paper:
        text += " [x]: the paper's number."
    if bt.spec.delta:
        text += (f" Δ (Eq. 4, %, higher is better) from the seed-mean metrics against "
                 f"{bt.reference.label}, over all metrics of each task.")
    return text


def _missing_lines(bt: BuiltTable) -> list[str]:
    miss = bt.missing
    if not miss:
        return []
    pos = {j.key: i + 1 for i, j in enumerate(miss)}
    lines = [f"Missing runs ({len(miss)}), in dependency order:"]
    for i, j in enumerate(miss, 1):
        after = [str(pos[d]) for d in j.deps if d in pos]
        dep = f" (after {', '.join(after)})" if after else ""
        lines.append(f"{i}. {j.describe()}{dep}: `{j.command}`")
    return lines


def render_markdown(bt: BuiltTable, paper: bool = True) -> str:
    def md_row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"### {bt.spec.title}", "", _info_line(bt), ""]
    headers = _headers(bt)
    align = ["---"] + [":---:"] * len(bt.spec.flag_columns) + ["---:"] * (len(headers) - 1 - len(bt.spec.flag_columns))
    for sec in bt.spec.sections:
        if sec.title:
            out += [f"**{sec.title}**", ""]
        out += [md_row(headers), md_row(align)]
        out += [md_row(r) for r in _body(bt, sec, paper)]
        out.append("")
    out += [_legend(bt, paper), ""]
    if bt.notes:
        out += ["Notes:"] + [f"- {n}" for n in bt.notes] + [""]
    miss = _missing_lines(bt)
    if miss:
        out += miss + [""]
    return "\n".join(out)


def render_csv(bt: BuiltTable, paper: bool = True) -> str:
    df = bt.frame()
    if not paper:
        df = df[[c for c in df.columns if not c.endswith(":paper")]]
    return df.to_csv(index=False)


_LATEX_SUBS = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
               ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"),
               ("Δ", r"$\Delta$"), ("°", r"$^\circ$"), ("✓", r"\checkmark"), ("–", "--"),
               ("<", r"$<$")]


def _tex(s: str) -> str:
    for a, b in _LATEX_SUBS:
        s = s.replace(a, b)
    return s


def render_latex(bt: BuiltTable, paper: bool = True) -> str:
    """A booktabs table (needs \\usepackage{booktabs}; amssymb for \\checkmark)."""
    spec = bt.spec
    multi = len(spec.backbones) > 1
    per_bb = 1 + len(spec.columns) + (1 if spec.delta else 0)
    lead = 1 + len(spec.flag_columns)
    colspec = "l" + "c" * len(spec.flag_columns) + "r" * per_bb * len(spec.backbones)
    out = [f"% {spec.title}", f"% {_info_line(bt)}", r"\begin{table}[t]", r"\centering",
           r"\caption{" + _tex(spec.title) + "}", r"\begin{tabular}{" + colspec + "}", r"\toprule"]
    if multi:
        groups = [""] * lead + []
        line = " & ".join(groups) + " & " + " & ".join(
            rf"\multicolumn{{{per_bb}}}{{c}}{{{_tex(bb)}}}" for bb in spec.backbones) + r" \\"
        out.append(line)
        out.append(" ".join(rf"\cmidrule(lr){{{lead + 1 + i * per_bb}-{lead + (i + 1) * per_bb}}}"
                            for i in range(len(spec.backbones))))
    headers = _headers(bt)
    if multi:
        headers = headers[:lead] + [h.split(": ", 1)[1] for h in headers[lead:]]
    out.append(" & ".join(_tex(h) for h in headers) + r" \\")
    out.append(r"\midrule")
    for i, sec in enumerate(spec.sections):
        if sec.title:
            if i:
                out.append(r"\midrule")
            out.append(rf"\multicolumn{{{len(headers)}}}{{l}}{{\textit{{{_tex(sec.title)}}}}} \\")
        for r in _body(bt, sec, paper):
            out.append(" & ".join(_tex(c) for c in r) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    out += [f"% {line}" for line in [_legend(bt, paper), *bt.notes, *_missing_lines(bt)]]
    return "\n".join(out) + "\n"


def render_rich(bt: BuiltTable, paper: bool = True, console=None) -> None:
    """Print the table with rich: one table per backbone and section, the paper's number under ours."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
            console = Console(width=200)
    console.print(Text(bt.spec.title, style="bold"))
    console.print(Text(_info_line(bt), style="dim"))
    spec = bt.spec
    for bb in spec.backbones:
        for sec in spec.sections:
            title = " · ".join(t for t in ((bb if len(spec.backbones) > 1 else None), sec.title) if t)
            table = Table(title=title or None, title_justify="left")
            table.add_column("Method", no_wrap=True)
            for f in spec.flag_columns:
                table.add_column(f, justify="center")
            table.add_column("seeds", justify="right")
            for col in spec.columns:
                table.add_column(col.header, justify="right", no_wrap=True)
            if spec.delta:
                table.add_column("Δ ↑", justify="right", no_wrap=True)
            for row in sec.rows:
                cells = _cells(bt, row, bb, paper)
                # "ours [paper]" -> ours, with the paper's number dimmed on a second line
                texts = []
                for c in cells:
                    ours, sep, rest = c.partition(" [")
                    t = Text(ours)
                    if sep:
                        t.append("\n[" + rest, style="dim")
                    texts.append(t)
                table.add_row(Text(row.label), *(Text(f) for f in row.flags), *texts)
            console.print(table)
    console.print(Text(_legend(bt, paper)))
    for n in bt.notes:
        console.print(Text(f"note: {n}", style="yellow"))
    for line in _missing_lines(bt):
        console.print(Text(line), soft_wrap=True)


def render(bt: BuiltTable, fmt: str = "md", paper: bool = True) -> str:
    """The table as text: ``md``, ``csv``, ``latex``, or ``rich`` (rendered without colour)."""
    if fmt == "md":
        return render_markdown(bt, paper)
    if fmt == "csv":
        return render_csv(bt, paper)
    if fmt == "latex":
        return render_latex(bt, paper)
    if fmt == "rich":
        import io

        from rich.console import Console

        buf = io.StringIO()
        render_rich(bt, paper, Console(file=buf, width=200, no_color=True, highlight=False))
        return buf.getvalue()
    raise UserError(f"--format {fmt!r} is not a table format", hint=f"use one of: {', '.join(FORMATS)}")
