"""Which mtlbench source produced a result: the commit of the running checkout.

:func:`source_commit` asks git only when the running package lives in a
checkout *of mtlbench*: a wheel installed into a virtual environment that sits
inside some other repository (a lab's experiment repo, say) would otherwise
record that repository's commit as ours.  Everywhere else it returns a version
stamp, ``mtlbench-<version>``.
"""
from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
DIST_NAME = "mtlbench"


def version_stamp() -> str:
    """``mtlbench-<version>``: what identifies an installed (non-checkout) copy."""
    return f"{DIST_NAME}-{__version__}"


def _git(args: list[str], cwd: Path) -> str | None:
    # GIT_DIR and friends would point git at whatever repository the caller is in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _declares_mtlbench(top: Path) -> bool:
    """Whether ``top`` holds the mtlbench distribution's own metadata (setup.cfg or pyproject.toml)."""
    cfg = top / "setup.cfg"
    if cfg.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(cfg)
        except configparser.Error:
            return False
        if parser.get("metadata", "name", fallback="").strip() == DIST_NAME:
            return True
    pyproject = top / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            return False
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, ValueError):
            return False
        return (data.get("project") or {}).get("name") == DIST_NAME
    return False


def checkout_root(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The top of the mtlbench git checkout that ``package_dir`` belongs to, else None.

    Trusted only when git's top level declares the ``mtlbench`` distribution and
    ``package_dir`` is that checkout's own ``mtlbench/`` folder (not a copy nested
    deeper, e.g. in a virtual environment inside the checkout).
    """
    top = _git(["rev-parse", "--show-toplevel"], package_dir)
    if not top:
        return None
    top_path = Path(top).resolve()
    if package_dir.resolve() != top_path / DIST_NAME or not _declares_mtlbench(top_path):
        return None
    return top_path


def source_commit(package_dir: Path = PACKAGE_DIR) -> str | None:
    """The commit of the running mtlbench source (``-dirty`` when tracked files are modified).

    Not in a checkout of mtlbench (an installed wheel, a copy of the package in
    another repository): the version stamp ``mtlbench-<version>``.  None when
    git itself fails inside a checkout (e.g. a repository without commits).
    """
    top = checkout_root(package_dir)
    if top is None:
        return version_stamp()
    head = _git(["rev-parse", "HEAD"], top)
    if not head:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], top)
    return head + ("-dirty" if status else "")


def processor_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, e.g. ``AMD EPYC``; else what
    :mod:`platform` says): what a record's ``device.processor`` holds."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                name = " ".join(line.split(":", 1)[1].split())
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str | None:
    """The CPU kernel family torch dispatches to here (``torch.backends.cpu.get_cpu_capability()``:
    e.g. ``AVX512``, ``AVX2``; None where this torch cannot say)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None
