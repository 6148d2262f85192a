"""``mtlbench.provenance.source_commit``: the commit of mtlbench's own checkout, never another repo's."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mtlbench
from mtlbench import provenance

PKG = Path(mtlbench.__file__).resolve().parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
                          *args], cwd=cwd, capture_output=True, text=True, env=ENV, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def make_repo(root: Path, setup_name: str | None, pkg_at: str = "mtlbench") -> Path:
    """A git repository with a copy of the package at ``pkg_at`` and, if given, a setup.cfg naming
    ``setup_name``; one commit.  Returns the package copy's folder."""
    root.mkdir(parents=True)
    git(root, "init", "-q")
    pkg = root / pkg_at
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    if setup_name:
        (root / "setup.cfg").write_text(f"[metadata]\nname = {setup_name}\nversion = 1.0\n")
    (root / "README").write_text("another project\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return pkg


def commit_seen_by(pkg: Path) -> str:
    """``source_commit()`` as the copy at ``pkg`` reports it, run from that copy in a fresh process."""
    code = "import mtlbench.provenance as p; print(p.source_commit())"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120,
                         env={**ENV, "PYTHONPATH": str(pkg.parent)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_this_checkout_reports_its_head():
    top = Path(git(PKG, "rev-parse", "--show-toplevel"))
    if PKG != top / "mtlbench":
        pytest.fail(f"the tests expect an editable install of this checkout, found {PKG}")
    head = git(top, "rev-parse", "HEAD")
    dirty = bool(git(top, "status", "--porcelain", "--untracked-files=no"))
    assert provenance.source_commit() == head + ("-dirty" if dirty else "")
    assert provenance.checkout_root() == top


def test_a_copy_inside_another_repository_does_not_report_its_commit(tmp_path):
    pkg = make_repo(tmp_path / "lab", setup_name="lab-experiments")
    other = git(tmp_path / "lab", "rev-parse", "HEAD")
    seen = commit_seen_by(pkg)
    assert other not in seen
    assert seen == f"mtlbench-{mtlbench.__version__}" == provenance.version_stamp()
    assert provenance.source_commit(pkg) == seen  # the same answer in-process


def test_a_nested_copy_inside_an_mtlbench_checkout_is_not_the_checkout(tmp_path):
    # e.g. a wheel installed in a virtual environment inside a checkout
    pkg = make_repo(tmp_path / "co", setup_name="mtlbench", pkg_at="venv/lib/site-packages/mtlbench")
    assert provenance.checkout_root(pkg) is None
    assert provenance.source_commit(pkg) == provenance.version_stamp()


def test_a_copy_outside_any_repository(tmp_path):
    pkg = tmp_path / "site-packages" / "mtlbench"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert provenance.source_commit(pkg) == provenance.version_stamp()


def test_an_mtlbench_checkout_reports_its_own_head_and_dirty(tmp_path):
    pkg = make_repo(tmp_path / "fork", setup_name="mtlbench")
    head = git(tmp_path / "fork", "rev-parse", "HEAD")
    assert commit_seen_by(pkg) == head
    (pkg / "errors.py").write_text((pkg / "errors.py").read_text() + "\n# changed\n")
    assert provenance.source_commit(pkg) == head + "-dirty"
    (tmp_path / "fork" / "untracked.txt").write_text("x")  # untracked files do not make it dirty
    git(tmp_path / "fork", "checkout", "-q", "--", "mtlbench/errors.py")
    assert provenance.source_commit(pkg) == head


def test_git_dir_in_the_environment_is_ignored(tmp_path, monkeypatch):
    pkg = make_repo(tmp_path / "lab", setup_name="lab")
    mine = make_repo(tmp_path / "fork", setup_name="mtlbench")
    head = git(tmp_path / "fork", "rev-parse", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "lab" / ".git"))  # would point git at the other repo
    assert provenance.source_commit(mine) == head
    assert provenance.source_commit(pkg) == provenance.version_stamp()
