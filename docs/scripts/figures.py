"""Regenerate every committed figure in docs/figures/ from the records the tables use.

    .venv/bin/python docs/scripts/figures.py

Each figure is drawn from the records a table itself picks for its rows (``build_table``: the
newest record of each row and seed in the preset's setting), never from hand-named files, so a
figure shows what the table beside it measured:

* ``curves.png``: Table 1's Baseline (MTL), KD-MTL and OKD-MTL (text) rows, seeds 0-2;
* ``fig3.png``: Table 4's OKD-MTL-AFD (OTW off) and OKD-MTL-AFD-OTW rows, seed 2 (the paper's
  Fig. 3: task losses without and with OTW);
* ``fig4.png``: Table 1's OKD-MTL (text) row, seed 2 (the paper's Fig. 4: the AFD weights ω);
* ``okd_steps_text_vs_script_seed0.png``: Table 1's OKD-MTL (text) and (script) rows, seed 0:
  λ, L_AFD and the task losses over the steps.

Options: ``--preset`` (default quick), ``--out`` (the results directory, default results),
``--save`` (default docs/figures).  A row without a record for a needed seed is an error that
names it (train it with ``mtlbench sweep``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlbench.errors import UserError


def table_records(table: str, rows: list[str], seeds: list[int], preset: str, out: str) -> list[dict]:
    """The records table ``table`` uses for ``rows`` and ``seeds`` (its first backbone)."""
    from mtlbench.tables import build_table, choose_setting, load_spec
    from mtlbench.tables.plan import Job

    spec = load_spec(table)
    bt = build_table(spec, choose_setting(spec, preset=preset, out=out), references=False)
    by_key = {j.key: j for j in bt.jobs}
    recs = []
    for key in rows:
        row = spec.row(key)
        if row is None:
            raise UserError(f"table {table} has no row {key!r}")
        group = Job(row.method, row.overrides, spec.backbones[0], 0).group  # as build_table keys its rows
        for s in seeds:
            job = by_key.get((*group, s))
            if job is None or not job.records:
                raise UserError(f"table {table}, row {row.label}: no record for seed {s}",
                                hint=f"train it: {job.command if job else 'mtlbench sweep --table ' + table}")
            recs.append(job.records[0])
    return recs


def main(argv: list[str] | None = None) -> int:
    from mtlbench.plots import find_figure, make_plot

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--out", default="results", help="results directory (default results)")
    p.add_argument("--save", default="docs/figures", help="where the figures go (default docs/figures)")
    args = p.parse_args(argv)
    save = Path(args.save)
    try:
        made = []
        curves = table_records("1", ["baseline", "kd_mtl", "okd"], [0, 1, 2], args.preset, args.out)
        made.append(make_plot(find_figure("curves"), curves, save))
        fig3 = table_records("4", ["okd_afd", "okd"], [2], args.preset, args.out)
        made.append(make_plot(find_figure("fig3"), fig3, save))
        fig4 = table_records("1", ["okd"], [2], args.preset, args.out)
        made.append(make_plot(find_figure("fig4"), fig4, save))
        profiles = table_records("1", ["okd", "okd_script"], [0], args.preset, args.out)
        steps = make_plot(find_figure("steps"), profiles, save, keys=["lambda/*", "afd", "loss/*"])
        target = steps.with_name("okd_steps_text_vs_script_seed0" + steps.suffix)
        steps.replace(target)
        made.append(target)
    except UserError as exc:
        print(f"figures.py: error: {exc}", file=sys.stderr)
        return 2
    for path in made:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
