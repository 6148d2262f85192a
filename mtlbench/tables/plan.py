"""The setting a table is built on, matching records to rows, and the runs a table needs.

Setting.  ``--dataset`` and ``--preset`` decide what the table is built on:

* neither: the table's own dataset (NYUv2 or Cityscapes) with the table's own
  preset (the spec's ``preset``: ``paper``, the paper's recipe);
* ``--preset P`` alone: P's dataset when it can stand in for the table's
  dataset (its plugin's ``family_options`` name it, e.g. ``synthetic`` for
  ``quick`` and ``smoke``); otherwise the table's own dataset;
* ``--dataset D`` alone: the table's own preset when D is the table's own
  dataset, else the configured default preset (``quick``, the ``preset`` of
  ``mtlbench/presets/_defaults.yaml``; so ``--dataset synthetic`` means the
  quick stand-in);
* both: as given.

On a stand-in, the dataset options that make it stand in for the table's
dataset (``family_options``: ``variant: cityscapes`` for Table 2 on
``synthetic``) are part of the setting: records must have them, commands carry
them.  Whenever the dataset is not the table's own, a note says that the
paper's numbers are for NYUv2/Cityscapes and are shown for reference only.

Matching (:class:`mtlbench.records.RecordStore`, the one matcher of records).
A record serves a row when its method, backbone, dataset, preset, seed and the
setting's dataset options are the table's, and its method options are the
row's (:func:`mtlbench.records.options_match`), and its other settings (the
``train``, ``backbone`` and ``dataset`` sections, runtime keys aside) are those
``mtlbench run`` resolves for the row: a run trained with ``--epochs 2`` or
``--set train.amp=bf16`` is not a quick-preset run and serves no row
(:attr:`RecordIndex.variants` names them and the settings that differ; a key
only one side has, from a record older or newer than this code, is not
compared).  Several records for one row and seed (e.g. two runs of the same
config by different code versions): the newest is used, and a note says so.
Records that cannot be read are reported with their path and what is wrong
(:attr:`RecordIndex.problems`), never skipped silently.

Plan.  Every (row, backbone, seed) and the Δ reference is one :class:`Job`
carrying its resolved config (what ``mtlbench sweep`` trains) and its exact
``mtlbench run`` command (:func:`mtlbench.records.command_for`, for display),
ordered so that a run comes after the runs it loads (``Method.requires``:
``stl`` before ``kd_mtl`` and okd with pretrained teachers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import PluginError, UserError
from ..records import BadRecord, RecordStore, command_for, run_command, same_value, yaml_scalar
from .datasets import needs_root, stand_in_options
from .options import canonical_options, effective_overrides, options_key
from .spec import TableSpec, display_name


# ---------------------------------------------------------------------------
# the setting a table is built on
# ---------------------------------------------------------------------------

@dataclass
class Setting:
    """Dataset, preset and results directory a table is built on (and a sweep runs)."""

    dataset: str
    preset: str
    options: dict[str, Any] = field(default_factory=dict)  # dataset options of the stand-in
    data_root: str | None = None
    out: Path = Path("results")
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.options.items())
        return f"{self.dataset}" + (f" ({opts})" if opts else "")


def _preset_dataset(preset: str) -> dict:
    from ..config import DEFAULTS, load_yaml, preset_path

    data = load_yaml(preset_path(preset), f"preset {preset!r}")
    ds = data.get("dataset") or {}
    if isinstance(ds, str):
        ds = {"name": ds}
    return {"name": DEFAULTS["dataset"]["name"], **ds}


def choose_setting(spec: TableSpec, *, dataset: str | None = None, preset: str | None = None,
                   data_root: str | None = None, out: str | Path = "results") -> Setting:
    """The dataset and preset of a table (the rules are in the module docstring)."""
    from ..config import DEFAULTS, preset_path

    if preset is not None:
        preset_path(preset)  # an unknown preset is a UserError naming the presets
    if dataset is not None:
        from ..registry import DATASETS

        try:
            dataset = DATASETS.canonical(dataset)  # an unknown name: did-you-mean and the list
        except UserError as exc:
            raise UserError(f"--dataset: {exc}") from None
    if dataset is None:
        if preset is None:
            preset = spec.preset
            dataset = spec.dataset
        else:
            pds = _preset_dataset(preset)["name"]
            dataset = pds if stand_in_options(pds, spec.dataset) is not None else spec.dataset
    elif preset is None:
        preset = spec.preset if dataset == spec.dataset else DEFAULTS["preset"]
    options = {}
    if dataset != spec.dataset:
        options = dict(stand_in_options(dataset, spec.dataset) or {})
    setting = Setting(dataset=dataset, preset=preset, options=options, data_root=data_root, out=Path(out))
    if dataset != spec.dataset:
        real = display_name(spec.dataset)
        setting.notes.append(
            f"Built on `{setting.describe()}` with preset `{preset}`, not on {real}: the paper's "
            f"numbers are for {real} (384x384, 200 epochs) and are shown for reference only; "
            f"compare orderings and the sign of Δ, not values.")
    return setting


# ---------------------------------------------------------------------------
# the records
# ---------------------------------------------------------------------------

class RecordIndex:
    """The records of a :class:`~mtlbench.records.RecordStore` matched to table rows.

    ``problems``: the files under ``runs/`` that could not be read (path and why).
    ``variants``: method -> {record id: the settings in which it differs from the
    preset}, and ``stale``: method -> (records that predate options of it, those
    options), among the records matched against (they serve no row).
    """

    def __init__(self, store: RecordStore):
        self.store = store
        self.stale: dict[str, tuple[list[dict], list[str]]] = {}
        self.variants: dict[str, dict[str, list[str]]] = {}
        self._expected: dict[tuple, dict | None] = {}

    @classmethod
    def from_dir(cls, out: str | Path) -> "RecordIndex":
        """Every record under ``<out>/runs``; unreadable files go to ``problems``."""
        return cls(RecordStore.scan(out))

    @property
    def problems(self) -> list[BadRecord]:
        return self.store.problems

    def find(self, method: str, overrides: dict, backbone: str, setting: Setting) -> dict[int, list[dict]]:
        """``{seed: [matching records, newest first]}``."""
        found: dict[int, list[dict]] = {}
        must = {"dataset": setting.options}
        for rec in self.store.candidates(method, backbone, setting.dataset, setting.preset):
            cfg = rec.get("config") or {}
            seed = int(rec.get("seed", cfg.get("seed", 0)))
            expected = self._expected_config(method, overrides, backbone, setting, seed)
            why = self.store.explain(rec, expected, method=method, options=overrides, must=must)
            if why is None:
                found.setdefault(seed, []).append(rec)
            elif why.what == "options" and why.details:
                recs, keys = self.stale.setdefault(method, ([], []))
                if not any(r is rec for r in recs):
                    recs.append(rec)
                    keys.extend(k for k in why.details if k not in keys)
            elif why.what == "settings" and all(d.startswith("train.nuisance_seed=") for d in why.details):
                continue  # a run of an A/A pair: the table's noise floor (mtlbench.noise), no row's
            elif why.what == "settings":
                rid = str(rec.get("id") or rec.get("_path") or f"{method} seed {seed}")
                self.variants.setdefault(method, {})[rid] = list(why.details)
        for recs in found.values():
            recs.sort(key=lambda r: r.get("created", ""), reverse=True)
        return found

    def _expected_config(self, method: str, overrides: dict, backbone: str, setting: Setting,
                         seed: int) -> dict | None:
        """The config ``mtlbench run`` resolves for this row and seed (None: it cannot be resolved
        here, e.g. a plugin this install lacks; then no setting is compared)."""
        key = (method, options_key(method, overrides), backbone, setting.dataset, setting.preset,
               repr(sorted(setting.options.items())), seed)
        if key not in self._expected:
            try:
                cfg = JobBuilder(setting).resolve(method, effective_overrides(method, overrides), backbone, seed)
                self._expected[key] = cfg.data
            except PluginError:
                raise
            except UserError:
                self._expected[key] = None
        return self._expected[key]


# ---------------------------------------------------------------------------
# the plan: every run a table needs, in dependency order
# ---------------------------------------------------------------------------

@dataclass
class Job:
    """One run a table needs: a method with options, on a backbone, for a seed.

    ``config``: the run's resolved config (:class:`mtlbench.config.ResolvedConfig`),
    what a sweep trains; None when it cannot be resolved here (``config_error``
    says why, e.g. a plugin that is not installed).  ``command``: the same run
    as an ``mtlbench run`` command line, for display and subprocesses.
    """

    method: str
    overrides: dict
    backbone: str
    seed: int
    labels: list[str] = field(default_factory=list)  # the rows it serves
    deps: list[tuple] = field(default_factory=list)  # keys of jobs to finish first
    records: list[dict] = field(default_factory=list)  # matching records, newest first
    command: str = ""
    config: Any = None
    config_error: str | None = None
    sets: tuple[str, ...] = ()  # further ``--set`` settings of the run (an A/A pair's train.nuisance_seed)

    @property
    def group(self) -> tuple:
        return (self.method, options_key(self.method, self.overrides), self.backbone)

    @property
    def key(self) -> tuple:
        return (*self.group, self.seed, *((self.sets,) if self.sets else ()))

    @property
    def recorded(self) -> bool:
        return bool(self.records)

    def record_path(self, out: str | Path) -> Path | None:
        """Where this run's record goes under results directory ``out`` (None without a config)."""
        from ..records import RunPaths

        return None if self.config is None else RunPaths.for_config(self.config, out).record

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        extra = "".join(f" · {x}" for x in self.sets)
        return (f"{self.method}{f' ({opts})' if opts else ''} · {self.backbone} · seed {self.seed}{extra}"
                f" [{'; '.join(self.labels)}]")


def _requires(method: str, overrides: dict, fallback: list[str]) -> list[str]:
    """Methods whose runs must exist first (``Method.requires``; the spec's ``needs`` otherwise)."""
    from ..registry import METHODS

    try:
        cls = METHODS.get(method)
    except PluginError:
        raise
    except UserError:
        return list(fallback)
    req = getattr(cls, "requires", None)
    if req is None:
        return list(fallback)
    from ..config import plugin_config_class

    try:
        # the method's Config joined with its architecture's (method.architecture and its options)
        arch = overrides.get("architecture")
        cfg_cls = plugin_config_class("method", method, {} if arch is None else {"architecture": arch})
        return list(req(cfg_cls(**canonical_options(method, overrides))))
    except PluginError:
        raise
    except (TypeError, ValueError, UserError):
        return list(fallback)


class JobBuilder:
    """A job's resolved config and its exact ``mtlbench run`` command."""

    def __init__(self, setting: Setting):
        self.setting = setting

    def resolve(self, method: str, overrides: dict, backbone: str, seed: int, extra: Sequence[str] = ()):
        """The run's :class:`~mtlbench.config.ResolvedConfig`, as ``mtlbench run`` would resolve it
        (``extra``: further ``--set`` strings)."""
        from ..config import resolve

        s = self.setting
        sets = [f"dataset.{k}={yaml_scalar(v)}" for k, v in s.options.items()]
        sets += [f"method.{k}={yaml_scalar(v)}" for k, v in overrides.items()]
        sets += list(extra)
        return resolve(preset=s.preset,
                       flags=[("method.name", method, "--method"), ("backbone.name", backbone, "--backbone"),
                              ("dataset.name", s.dataset, "--dataset"),
                              ("dataset.root", s.data_root, "--data-root"), ("seed", seed, "--seed")],
                       sets=sets)

    def build(self, method: str, overrides: dict, backbone: str, seed: int, sets: Sequence[str] = ()) -> Job:
        job = Job(method, effective_overrides(method, overrides), backbone, seed, sets=tuple(sets))
        try:
            job.config = self.resolve(method, job.overrides, backbone, seed, job.sets)
        except PluginError:  # installed but broken: said, not planned around
            raise
        except UserError as exc:  # e.g. a plugin that is not installed here
            job.config_error = exc.message
        if job.config is not None:
            job.command = command_for(job.config.data, method, job.overrides, out=self.setting.out)
        else:
            job.command = self.manual(method, job.overrides, backbone, seed)
        job.command = self._with_root_placeholder(job.command)
        return job

    def manual(self, method: str, overrides: dict, backbone: str, seed: int) -> str:
        """What :func:`~mtlbench.records.command_for` writes, without resolving (for plugins not
        installed here): the setting's dataset options that the preset does not set, and the
        method overrides."""
        s = self.setting
        pds = _preset_dataset(s.preset)
        same_ds = pds["name"] == s.dataset
        sets = [f"dataset.{k}={yaml_scalar(v)}" for k, v in s.options.items()
                if not (same_ds and k in pds and same_value(pds[k], v))]
        return run_command(method, backbone, s.dataset, s.preset, seed, data_root=s.data_root, sets=sets,
                           method_overrides=overrides, out=s.out)

    def _with_root_placeholder(self, cmd: str) -> str:
        s = self.setting
        if s.data_root is None and needs_root(s.dataset) and "--data-root" not in cmd:
            cmd = cmd.replace(f" --dataset {s.dataset} ", f" --dataset {s.dataset} --data-root DIR ", 1)
        return cmd


def plan_runs(spec: TableSpec, setting: Setting, seeds: Sequence[int], index: RecordIndex,
              delta_ref: str | None = None) -> list[Job]:
    """Every run of the table (its rows, the Δ reference, their dependencies), ordered.

    Runs that serve several rows (Table 5's AFD-ours and T = 0.10) appear once.
    The order is the rows' order, except that a run comes after the runs it
    depends on (``Method.requires``: ``stl`` before ``kd_mtl`` and okd with
    pretrained teachers; see :func:`_topological`).  A dependency gets the
    ``--override`` options of its method too.
    """
    builder = JobBuilder(setting)
    ref = spec.row(delta_ref or spec.paper_reference)
    # a reference the table does not show goes first: Δ is then available early
    rows = ([ref] if ref is not None and not ref.shown else []) + spec.rows()
    jobs: dict[tuple, Job] = {}

    def add(method: str, overrides: dict, backbone: str, seed: int, label: str) -> Job:
        probe = Job(method, effective_overrides(method, overrides), backbone, seed)
        job = jobs.get(probe.key)
        if job is None:
            job = jobs[probe.key] = builder.build(method, overrides, backbone, seed)
            job.records = index.find(method, overrides, backbone, setting).get(seed, [])
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
                    dep = add(need, dict(spec.applied_overrides.get(need, {})), bb, seed,
                              f"needed by {row.label}")
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


#: the most seeds a ``--seeds`` list may name (each one is a run, or a record to look up)
MAX_SEEDS = 1000


def parse_seeds(text: str | None, flag: str = "--seeds") -> list[int] | None:
    """``"0,1,2"`` or ``"0-2"`` -> ``[0, 1, 2]``; None stays None; an empty entry is an error, and
    so are more than :data:`MAX_SEEDS` seeds and a seed above :data:`mtlbench.config.MAX_SEED`
    (checked before a range is expanded)."""
    from ..config import MAX_SEED
    from ..errors import quote

    if text is None:
        return None
    seeds: set[int] = set()
    hint = f"write e.g. {flag} 0,1,2 or {flag} 0-4"
    shown = quote(str(text), 100)
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise UserError(f"{flag} {shown} has an empty entry", hint=hint)
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise UserError(f"{flag} {shown}: {quote(part, 100)} is not a seed or a range of seeds",
                            hint=hint) from None
        if lo < 0:
            raise UserError(f"{flag} {shown} must name non-negative seeds", hint=f"e.g. {flag} 0,1,2")
        if hi > MAX_SEED:
            raise UserError(f"{flag} {shown}: seed {hi} is above the largest seed, {MAX_SEED} (2^32 - 1)",
                            hint=hint)
        if hi - lo + 1 > MAX_SEEDS or len(seeds | set(range(lo, hi + 1))) > MAX_SEEDS:  # range: small here
            raise UserError(f"{flag} {shown} names more than {MAX_SEEDS} seeds",
                            hint=f"name at most {MAX_SEEDS} (each is a run of every row), e.g. {flag} 0-4")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)
