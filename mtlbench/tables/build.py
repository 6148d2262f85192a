"""Deprecated module path: the table builder now lives in :mod:`mtlbench.tables`
(``spec``, ``options``, ``plan``, ``aggregate``, ``render``); import from there."""
from . import *  # noqa: F401,F403
from . import __all__  # noqa: F401
