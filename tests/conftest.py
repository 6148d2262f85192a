"""Shared fixtures: tiny synthetic data in a per-session cache, CPU-only, few threads."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _synthetic_cache(tmp_path_factory):
    """Keep generated synthetic data out of the user's cache, shared across the session."""
    old = os.environ.get("MTLBENCH_CACHE")
    os.environ["MTLBENCH_CACHE"] = str(tmp_path_factory.mktemp("mtlbench-cache"))
    yield
    if old is None:
        os.environ.pop("MTLBENCH_CACHE", None)
    else:
        os.environ["MTLBENCH_CACHE"] = old
