"""Table specs: the YAML files beside this module, parsed and checked.

A spec names its dataset, the preset of its own setting (``preset``: the
paper's recipe on that dataset), backbone(s), metric columns (``task/metric``),
sections of rows (a key, a label, a method and the method options the row
sets), the row the paper's Δ is measured against (``paper_reference``), rows
Δ needs that the table does not show (``references``), and the paper's own
number for every cell (``paper``: the printed row in column order, then Δ).

Column labels, directions and printed precision are data on the tasks of the
spec's dataset (``MetricInfo``), not spelled out here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import PluginError, UserError
from .datasets import dataset_tasks

SPEC_DIR = Path(__file__).parent

#: printed names of the datasets the paper's tables are on (display only)
def display_name(dataset: str) -> str:
    """A dataset's printed name (``DatasetPlugin.display_name``; the registry name otherwise)."""
    from ..registry import DATASETS

    try:
        return getattr(DATASETS.get(dataset), "display_name", "") or dataset
    except PluginError:
        raise
    except UserError:
        return dataset

_ROW_KEYS = {"key", "label", "method", "overrides", "paper", "unsupported", "needs", "flags"}


@dataclass(frozen=True)
class Column:
    """A metric column: ``task/metric`` with its printed label, direction and decimals."""

    task: str
    metric: str
    label: str
    higher_is_better: bool
    precision: int = 2

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def header(self) -> str:
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"


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
    #: every metric of each task of the spec's dataset, in the tasks' order
    task_metrics: dict[str, list[str]] = field(default_factory=dict)
    #: ``{task: {metric: higher_is_better}}`` of the spec's dataset
    directions: dict[str, dict[str, bool]] = field(default_factory=dict)
    #: the preset of the table's own setting (on its own dataset: the paper's recipe), key ``preset``
    preset: str = ""
    #: ``--override`` options applied to the rows (``{method: {option: value}}``)
    applied_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

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

    def paper_results(self, row: Row, backbone: str) -> dict[str, dict[str, float]] | None:
        """The paper's printed metrics of a row as ``{task: {metric: value}}``, or None."""
        vals = self.paper_values(row, backbone)
        if vals is None:
            return None
        out: dict[str, dict[str, float]] = {}
        for c in self.columns:
            v = vals.get(c.key)
            if v is not None:
                out.setdefault(c.task, {})[c.metric] = v
        return out

    @property
    def paper_delta_recomputable(self) -> bool:
        """Whether the displayed columns hold every metric of each of their tasks."""
        shown: dict[str, set] = {}
        for c in self.columns:
            shown.setdefault(c.task, set()).add(c.metric)
        return bool(shown) and all(set(self.task_metrics.get(t, ())) <= ms for t, ms in shown.items())


def available_tables() -> list[str]:
    """The table specs beside this module: the paper's by number (``table<N>.yaml``: ``"1"``),
    any other by name (``extended.yaml``: ``"extended"``)."""
    names = []
    for p in SPEC_DIR.glob("*.yaml"):
        if p.stem.startswith("table") and p.stem[len("table"):].isdigit():
            names.append(p.stem[len("table"):])
        elif _is_table_spec(p):
            names.append(p.stem)
    return sorted(names, key=_natural)


def _is_table_spec(p: Path) -> bool:
    """Whether a YAML beside the specs is a table (the claims file is not)."""
    from ..config import guarded_yaml_load

    try:
        if not p.is_file():  # a FIFO is never opened (it would block)
            return False
        data = guarded_yaml_load(p.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return False
    return isinstance(data, dict) and "sections" in data and "columns" in data


def _natural(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def spec_path(ref: str | int, flag: str = "--id") -> Path:
    """The YAML file of table ``ref`` (a number or a path); ``flag`` names it in errors."""
    ref = str(ref)
    if ref.isdigit():
        p = SPEC_DIR / f"table{int(ref)}.yaml"
        if p.is_file():
            return p
        raise UserError(f"{flag} {ref}: there is no table {ref}; tables: {', '.join(available_tables())}",
                        hint=f"pass {flag} with one of those numbers, or a path to a table spec YAML")
    named = SPEC_DIR / f"{ref}.yaml"
    if ref in available_tables() and named.is_file():
        return named
    p = Path(ref)
    if p.is_file():
        return p
    raise UserError(f"{flag} {ref!r} is neither a table ({', '.join(available_tables())}) "
                    f"nor an existing spec file", hint=f"e.g. {flag} 1")


def load_spec(ref: str | int, flag: str = "--id") -> TableSpec:
    """Load and check a table spec: a number (``1``..``5``) or a path to a YAML file."""
    from ..config import read_yaml_file

    path = spec_path(ref, flag)
    data = read_yaml_file(path, "table spec", example="`dataset: nyuv2` with `sections:` and `columns:`") or {}
    if not isinstance(data, dict):
        raise UserError(f"table spec {path} is malformed: it holds {type(data).__name__}, not a mapping",
                        hint="a table spec maps dataset, columns and sections (see mtlbench/tables/table1.yaml)")
    try:
        return parse_spec(data, source=str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"table spec {path} is malformed: {exc}") from exc


def _row(d: dict, section: int, backbones: list[str], n_values: int, shown: bool = True) -> Row:
    unknown = set(d) - _ROW_KEYS
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
    """A :class:`TableSpec` from a spec's parsed YAML (ValueError when malformed)."""
    dataset = str(data["dataset"])
    tasks = dataset_tasks(dataset)
    if tasks is None:
        raise ValueError(f"dataset {dataset!r} is not registered, so its metric columns are unknown "
                         f"(see `mtlbench list`)")
    infos = {(t, m.key): m for t, task in tasks.items() for m in task.metrics}
    columns = []
    for key in data.get("columns") or []:
        task, _, metric = str(key).partition("/")
        info = infos.get((task, metric))
        if info is None:
            raise ValueError(f"unknown column {key!r}; the columns of {dataset} are task/metric, one of "
                             f"{', '.join(f'{t}/{m}' for t, m in infos)}")
        columns.append(Column(task, metric, info.label, info.higher_is_better, int(info.precision)))
    backbones = list(data["backbones"])
    has_delta = bool(data.get("delta", True))
    n_values = len(columns) + (1 if has_delta else 0)
    sections = []
    for i, s in enumerate(data["sections"]):
        sections.append(Section(s.get("title"), [_row(r, i, backbones, n_values) for r in s["rows"]]))
    refs = {k: _row({"key": k, **v}, -1, backbones, n_values, shown=False)
            for k, v in (data.get("references") or {}).items()}
    spec = TableSpec(id=str(data["id"]), title=str(data["title"]), dataset=dataset,
                     backbones=backbones, columns=columns, delta=has_delta,
                     paper_reference=str(data["paper_reference"]), preset=str(data["preset"]),
                     sections=sections, references=refs,
                     flag_columns=list(data.get("flag_columns") or []),
                     notes=[str(n) for n in data.get("notes") or []], source=source,
                     task_metrics={t: [m.key for m in task.metrics] for t, task in tasks.items()},
                     directions={t: {m.key: m.higher_is_better for m in task.metrics}
                                 for t, task in tasks.items()})
    keys = [r.key for r in spec.rows(hidden=True)]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate row keys in {keys}")
    if spec.row(spec.paper_reference) is None:
        raise ValueError(f"paper_reference {spec.paper_reference!r} is not a row or reference")
    for r in spec.rows():
        if spec.flag_columns and len(r.flags) != len(spec.flag_columns):
            raise ValueError(f"row {r.key!r}: {len(r.flags)} flags for {len(spec.flag_columns)} flag columns")
    return spec


def apply_overrides(spec: TableSpec, overrides: dict[str, dict[str, Any]],
                    flag: str = "--override", strict: bool = True) -> tuple[TableSpec, list[str]]:
    """The spec with ``{method: {option: value}}`` set on every row of each method.

    A row that sets an option itself keeps its own value (Table 1's ``OKD-MTL
    (text)`` and ``OKD-MTL (script)`` rows stay what they say).  Returns the new
    spec and notes for the table.  ``strict``: a method no row uses is an error.
    """
    if not overrides:
        return spec, []
    notes = []
    methods = {r.method for r in spec.rows(hidden=True)}
    unused = [m for m in overrides if m not in methods]
    if strict and unused:
        raise UserError(f"{flag} {unused[0]}.…: no row of table {spec.id} uses method {unused[0]!r}",
                        hint=f"its methods: {', '.join(sorted(methods))}")

    def patched(row: Row) -> Row:
        ov = overrides.get(row.method)
        if not ov:
            return row
        kept = {k: row.overrides[k] for k in ov if k in row.overrides}
        if kept:
            notes.append(f"{row.label} keeps its own {', '.join(f'{k}={v}' for k, v in kept.items())} "
                         f"({flag} does not change what a row sets itself).")
        return dataclasses.replace(row, overrides={**ov, **row.overrides})

    sections = [Section(s.title, [patched(r) for r in s.rows]) for s in spec.sections]
    refs = {k: patched(r) for k, r in spec.references.items()}
    used = {m: dict(v) for m, v in overrides.items() if m in methods}
    new = dataclasses.replace(spec, sections=sections, references=refs,
                              applied_overrides={**spec.applied_overrides, **used})
    if used:
        text = ", ".join(f"{m}.{k}={v}" for m, ov in used.items() for k, v in ov.items())
        notes.insert(0, f"Row overrides: {text} on every row of those methods.")
    return new, notes
