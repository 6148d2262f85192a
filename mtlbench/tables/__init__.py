"""The paper's Tables 1-5: YAML specs (``table1.yaml`` ... ``table5.yaml``), their builder, the claims.

Modules: :mod:`~mtlbench.tables.spec` (the specs), :mod:`~mtlbench.tables.options`
(method options, row matching, ``--override``), :mod:`~mtlbench.tables.datasets`
(what a dataset plugin says about itself), :mod:`~mtlbench.tables.plan` (the
setting, records, the runs a table needs), :mod:`~mtlbench.tables.aggregate`
(statistics, paired Δ with confidence intervals, comparisons),
:mod:`~mtlbench.tables.render` (md, csv, latex, rich) and
:mod:`~mtlbench.tables.claims` (the paper's claims, checked).

Example::

    from mtlbench.tables import build_table, choose_setting, load_spec, render

    spec = load_spec(1)                                   # Table 1: NYUv2, ViT-tiny
    setting = choose_setting(spec, preset="quick", out="results")   # on the synthetic stand-in
    bt = build_table(spec, setting, seeds=[0, 1, 2])
    print(render(bt, "md"))
    print(bt.compare("okd", "baseline").summary.verdict)
"""
from .aggregate import BuiltTable, Cell, Comparison, build_table
from .options import (canonical_options, effective_overrides, method_defaults, options_match,
                      parse_overrides)
from .plan import BadRecord, Job, JobBuilder, RecordIndex, Setting, choose_setting, parse_seeds, plan_runs
from .render import FORMATS, render, render_comparisons, render_rich
from .spec import Column, Row, Section, TableSpec, apply_overrides, available_tables, load_spec, parse_spec

__all__ = ["BadRecord", "BuiltTable", "Cell", "Column", "Comparison", "FORMATS", "Job", "JobBuilder",
           "RecordIndex", "Row", "Section", "Setting", "TableSpec", "apply_overrides", "available_tables",
           "build_table", "canonical_options", "choose_setting", "effective_overrides", "load_spec",
           "method_defaults", "options_match", "parse_overrides", "parse_seeds", "parse_spec", "plan_runs",
           "render", "render_comparisons", "render_rich"]
