"""The dataset plugin contract.

A dataset plugin is a class registered in :data:`mtlbench.registry.DATASETS`
with a ``Config`` dataclass (a subclass of :class:`DataConfig`).  It names its
tasks and builds its ``train`` and ``val`` splits.  Every split yields dicts of
tensors without a batch axis::

    {"image": (3, H, W) float32 in [0, 1],
     "semseg": (H, W) int64, -1 = ignore,
     "depth": (1, H, W) float32, 0 = invalid,
     "normal": (3, H, W) float32, (0, 0, 0) = invalid}

holding only the keys of the dataset's tasks (plus ``"image"`` and ``"index"``).

Optional hooks, used by the command line and the trainer without asking which
dataset it is:

* ``needs_root`` / ``root_use``: whether ``dataset.root`` (``--data-root``) is
  required, and what ``dataset.root`` does when it is not; :func:`check_data_root`
  refuses ``--data-root`` for a dataset that reads no directory;
* ``family_options``: the config options that make this dataset stand in for a
  real one (the synthetic data's ``variant``), by family name;
* :meth:`DatasetPlugin.check`: validate a data directory file by file
  (``mtlbench data check``);
* :meth:`DatasetPlugin.synth` with ``synth_options``: write a dataset
  (``mtlbench data synth``);
* :meth:`DatasetPlugin.validate_for_training`: fail before training, naming
  the file, on data values that would crash or poison a run (NaN, labels out of
  range); run once per data directory and remembered (:func:`validated_once`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import torch

from ..config import option
from ..errors import UserError
from ..tasks import Task

#: ``progress(done, total, what)``: called as counted work advances
ProgressFn = Callable[[int, int, str], None]


@dataclass
class DataConfig:
    """Options shared by every dataset."""

    root: str | None = None  # data directory (real datasets); cache dir override (synthetic)
    image_size: list[int] = field(default_factory=lambda: [96, 128])  # (H, W) after resizing
    augment: bool = False  # random scale-crop {1, 1.2, 1.5} and horizontal flip (MTAN's)
    num_workers: int = option(0, ge=0, le=256)  # DataLoader workers


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data directory: the file (or folder) and what is wrong.

    ``fatal``: whether training on it would crash or be poisoned (a NaN, a label
    out of range, a broken layout); non-fatal problems (an image value slightly
    above 1, normals not quite unit length) are reported by ``data check`` but
    do not stop a run.
    """

    path: str
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CheckReport:
    """What :meth:`DatasetPlugin.check` found.

    ``layout``: one line describing the expected format (printed with the
    verdict); ``remedy``: how to get clean data again; ``counts``: images per
    split, for the summary of a clean directory.
    """

    root: Path
    problems: list[Problem]
    layout: str = ""
    remedy: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


class DatasetPlugin:
    """Base class of dataset plugins."""

    Config = DataConfig
    summary = ""
    #: the printed name (tables): "NYUv2"; the registry name when empty
    display_name: ClassVar[str] = ""
    #: the real dataset whose layout/tasks this one follows (tables use it)
    family: str = ""
    #: whether ``dataset.root`` (``--data-root``) must name the data directory
    needs_root: ClassVar[bool] = True
    #: when ``needs_root`` is False: what ``dataset.root`` does instead (named in the
    #: error for ``--data-root``); empty: nothing
    root_use: ClassVar[str] = ""
    #: family name -> the config options that make this dataset stand in for it
    #: (e.g. synthetic: ``{"nyuv2": {"variant": "nyuv2"}, ...}``); empty for real datasets
    family_options: ClassVar[dict[str, dict]] = {}
    #: config keys :meth:`synth` takes -> help text; empty: the dataset cannot be generated
    synth_options: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    def tasks(self) -> dict[str, Task]:
        raise NotImplementedError

    def split(self, name: str) -> torch.utils.data.Dataset:
        """The ``"train"`` or ``"val"`` split."""
        raise NotImplementedError

    # -- optional hooks ----------------------------------------------------------
    @classmethod
    def check(cls, root: str | os.PathLike | None, *, full: bool = True, progress: ProgressFn | None = None,
              options: dict[str, Any] | None = None) -> CheckReport:
        """Validate the data directory ``root`` file by file.

        ``full``: load every array and check its values (else structure and
        headers only); ``options``: config keys the user gave (``--set``), e.g.
        the synthetic data's ``variant`` when the directory does not say.
        Raises :class:`UserError` for a ``root`` that cannot be checked at all.
        """
        raise UserError(f"dataset {_name(cls)!r} cannot check a data directory: its plugin does not "
                        "implement the check hook (DatasetPlugin.check)",
                        hint=f"datasets that can be checked: {', '.join(implementing('check')) or 'none'}")

    @classmethod
    def synth(cls, out: Path, options: dict[str, Any], progress: ProgressFn | None = None) -> str:
        """Write a dataset into the new, empty directory ``out``; returns a one-line summary.

        ``options``: values for keys of ``synth_options`` (the others take the
        Config defaults).
        """
        raise UserError(f"dataset {_name(cls)!r} cannot be generated: its plugin does not implement "
                        "the synth hook (DatasetPlugin.synth)",
                        hint=f"datasets that can be generated: {', '.join(implementing('synth')) or 'none'}")

    def validate_for_training(self, log: Callable[[str], None] | None = None) -> None:
        """Raise :class:`UserError` naming the files whose values would break training.

        Called by the trainer when it builds a run (before the splits and the first step).
        The default accepts everything (a plugin whose data cannot be wrong).
        ``log`` receives notices (e.g. "checking data values once").
        """


def _name(cls: type) -> str:
    return getattr(cls, "registry_name", None) or cls.__name__


def overrides(cls: type, hook: str) -> bool:
    """Whether the plugin class ``cls`` implements ``hook`` (overrides DatasetPlugin's)."""
    def raw(obj):
        return getattr(obj, "__func__", obj)

    return raw(getattr(cls, hook, None)) is not raw(getattr(DatasetPlugin, hook))


def implementing(hook: str) -> list[str]:
    """The registered datasets whose plugin implements ``hook`` (e.g. ``"check"``, ``"synth"``)."""
    from ..registry import DATASETS

    return [e.name for e in DATASETS.entries() if isinstance(e.obj, type) and overrides(e.obj, hook)]


def check_data_root(plugin: type | DatasetPlugin, root: str | None, *, flag: str = "--data-root") -> None:
    """Refuse a data directory given (by ``flag``) to a dataset that reads none.

    ``--data-root`` names the files a dataset reads; for a dataset with
    ``needs_root = False`` it would do nothing of the sort, so it is a
    :class:`UserError` rather than a flag passing silently.  Where ``dataset.root``
    has another use (``root_use``: synthetic data caches its generated files
    there), the hint says so and how to ask for it explicitly.
    """
    cls = plugin if isinstance(plugin, type) else type(plugin)
    if root is None or cls.needs_root:
        return
    name = _name(cls)
    hint = f"drop {flag}"
    if cls.root_use:
        hint += f"; for {name!r}, dataset.root is {cls.root_use}: if that is what you meant, " \
                f"pass --set dataset.root={root} (or set MTLBENCH_CACHE)"
    raise UserError(f"{flag} {root}: dataset {name!r} reads no data directory, so {flag} would not "
                    "be used as one", hint=hint)


# -- validation, once per directory -------------------------------------------------------

#: bump when the checks change, so earlier verdicts are not trusted
VALIDATION_VERSION = 1


def cache_dir() -> Path:
    """mtlbench's cache: ``$MTLBENCH_CACHE``, else ``~/.cache/mtlbench``."""
    env = os.environ.get("MTLBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtlbench"


def not_a_regular_file(path: str) -> str | None:
    """What ``path`` is when it is not a regular file (following links): ``"a FIFO (named pipe)"``,
    ``"a directory"``, ...; None for a regular file.  Checked before a file is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: opening it says so
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def fingerprint(files: Iterable[str | os.PathLike], extra: Any = None) -> str:
    """A digest of the files' paths, sizes, modification and change times, inodes (and ``extra``)."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for f in sorted(os.fspath(p) for p in files):
        try:
            st = os.stat(f)
        except OSError:
            h.update(f"{f}\0missing\n".encode())
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def _verdict_path(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "validated" / f"{key}.json"


def validated_once(root: str | os.PathLike, files: Iterable[str | os.PathLike], what: Any,
                   check: Callable[[], list[Problem]]) -> tuple[list[Problem], bool]:
    """``check()``'s problems for ``root``, or none when a clean verdict is remembered.

    The verdict is kept in ``<cache_dir()>/validated/`` keyed by ``root`` and a
    :func:`fingerprint` of ``files`` and ``what`` (what was checked against, e.g.
    the number of classes), so changing, adding or removing a file, or the
    check, validates again.  Only clean verdicts (no fatal problem) are
    remembered.  Returns ``(problems, cached)``.
    """
    root = Path(root)
    fp = fingerprint(files, {"what": what, "version": VALIDATION_VERSION})
    path = _verdict_path(root)
    try:
        if not_a_regular_file(str(path)):  # not a verdict this wrote (a FIFO would block the read)
            raise OSError(f"{path} is not a regular file")
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fp:
            return [Problem(**p) for p in saved.get("warnings", [])], True
    except (OSError, ValueError, TypeError):
        pass
    problems = check()
    if not any(p.fatal for p in problems):
        from ..runs import atomic_write_json

        try:
            atomic_write_json(path, {"root": str(root.resolve()), "fingerprint": fp,
                                     "warnings": [dataclasses.asdict(p) for p in problems]})
        except OSError:
            pass  # a read-only cache: validate again next time
    return problems, False
