"""What tables need to know about a dataset, read from its plugin (never from its name).

* its tasks and their metrics (labels, directions, printed precision):
  ``DATASETS.get(name)(Config(**options)).tasks()`` -> ``Task.metrics``;
* ``needs_root`` (class attribute, default True): whether its runs need
  ``--data-root`` (a generated dataset such as ``synthetic`` does not);
* ``family_options`` (class attribute, default ``{}``): ``{real dataset:
  {config option: value}}``, the options that make this dataset stand in for
  a real one (``synthetic``: ``{"nyuv2": {"variant": "nyuv2"}, ...}``).  A
  table of the real dataset built on the stand-in matches records whose
  dataset config has those options, and puts them into its commands.
"""
from __future__ import annotations

from typing import Any

from ..errors import PluginError, UserError


def dataset_class(name: str) -> type | None:
    """The registered dataset plugin class, or None when ``name`` is not registered."""
    from ..registry import DATASETS

    try:
        return DATASETS.get(name)
    except PluginError:  # a broken plugin is named, never taken for a name that is not registered
        raise
    except UserError:
        return None


def needs_root(name: str) -> bool:
    """Whether runs on dataset ``name`` need a data directory (unknown datasets: yes)."""
    return bool(getattr(dataset_class(name), "needs_root", True))


def family_options(name: str) -> dict[str, dict[str, Any]]:
    """``{real dataset: config options}`` that make ``name`` stand in for it."""
    opts = getattr(dataset_class(name), "family_options", None) or {}
    return {str(k): dict(v or {}) for k, v in opts.items()}


def stand_in_options(name: str, family: str) -> dict[str, Any] | None:
    """The options that make dataset ``name`` stand in for ``family``, or None when it cannot."""
    return family_options(name).get(family)


def dataset_tasks(name: str, options: dict[str, Any] | None = None) -> dict | None:
    """``{task name: Task}`` of dataset ``name`` configured with ``options``; None when it is
    not registered or cannot be configured so."""
    cls = dataset_class(name)
    cfg_cls = getattr(cls, "Config", None)
    if cls is None or cfg_cls is None:
        return None
    try:
        return dict(cls(cfg_cls(**(options or {}))).tasks())
    except (TypeError, ValueError, UserError):
        return None
