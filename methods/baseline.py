"""The equal-weight multi-task baseline: a shared backbone, one head per task, L = Σ_i L_i.

The paper's "Baseline (MTL)" row (Jacob et al., WACV 2023, §4.0.2: "uniform
task losses"), the reference row of its Δ column.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.api import Method
from mtlbench.registry import METHODS


@dataclass
class BaselineConfig:
    """The equal-weight baseline has no options."""


@METHODS.register("baseline", aliases=("ew",))
class Baseline(Method):
    """Equal-weight MTL: shared backbone, one head per task, sum of task losses."""

    Config = BaselineConfig
    summary = "equal-weight MTL baseline: shared backbone, Σ L_i (the paper's reference row)"
    is_delta_reference = True  # the paper measures every row's Δ against this one
    data_parallel = True  # a sum of task losses: the core's averaging is all it needs
