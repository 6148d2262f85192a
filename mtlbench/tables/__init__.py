"""The paper's Tables 1-5: YAML specs (``table1.yaml`` ... ``table5.yaml``) and their builder.

Example::

    from mtlbench.tables import build_table, choose_setting, load_spec, render

    spec = load_spec(1)                                   # Table 1: NYUv2, ViT-tiny, nine rows
    setting = choose_setting(spec, preset="quick", out="results")   # on the synthetic stand-in
    print(render(build_table(spec, setting, seeds=[0, 1, 2]), "md"))
"""
from .build import (BuiltTable, Job, RecordIndex, Setting, TableSpec, available_tables, build_table,
                    choose_setting, load_spec, parse_seeds, plan_runs, render)

__all__ = ["BuiltTable", "Job", "RecordIndex", "Setting", "TableSpec", "available_tables", "build_table",
           "choose_setting", "load_spec", "parse_seeds", "plan_runs", "render"]
