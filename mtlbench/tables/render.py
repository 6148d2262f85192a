"""Rendering a built table: Markdown, CSV, LaTeX (booktabs), rich and HTML.

Every format shows, per row and backbone: the seeds found, each metric as
mean ± sample std over those seeds, and Δ as ``mean ± half-width`` of its 95%
paired t-interval with the verdict beside it; the paper's number follows in
brackets (``[x]``; a dim second line in rich).  CSV holds the numbers in
separate columns instead: ``delta``, ``delta_lo``, ``delta_hi``, ``delta_n``,
``verdict`` and ``delta_seed<S>`` (the per-seed Δs).  Markdown goes through
``DataFrame.to_markdown`` (tabulate), LaTeX through ``Styler.to_latex``.
HTML (:func:`render_html`, what ``mtlbench report`` puts on a table's page) is a
fragment without a page around it: the same cell strings as Markdown, marked up
(the paper's number, †k and the verdict in their own spans and classes).
"""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import UserError
from ..reference import DEGENERATE_THRESHOLD
from .aggregate import BLIND_LABEL, BuiltTable, Cell
from .spec import Column, Row, Section

FORMATS = ("rich", "md", "csv", "latex", "html")

DASH = "–"


def _fmt(v: float | None, prec: int) -> str:
    return DASH if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{prec}f}"


def _ours(c: Cell, col: Column) -> str:
    m, s = c.value(col)
    if m is None:
        return DASH
    return _fmt(m, col.precision) + (f" ± {_fmt(s, col.precision)}" if s is not None else "")


def _paper(c: Cell, key: str, prec: int) -> str | None:
    if c.paper is None:
        return None
    v = c.paper.get(key)
    return None if v is None else f"{v:.{prec}f}"


def delta_text(c: Cell) -> str:
    """``+1.23 ± 0.45`` (paired Δ), ``+0.00`` for the reference, ``–`` without records."""
    d = c.delta
    if d is None or d.n == 0:
        return DASH
    if c.is_reference:
        return f"{d.mean:+.2f}"
    return d.text(2)


def mde_text(c: Cell) -> str:
    """``5.05`` (the minimum detectable Δ from the row's own paired sd), ``5.05*`` (from the
    noise floor, which is larger), ``–`` without two paired seeds."""
    if c.mde is None:
        return DASH
    return f"{c.mde:.2f}" + ("*" if c.mde_basis == "noise floor" else "")


def _degenerate_mark(bt: BuiltTable, c: Cell, col: Column) -> str:
    seeds = c.degenerate.get(col.task)
    if not seeds or bt.primary_column(col.task) is not col:
        return ""
    return f" †{len(seeds)}"


def _cells(bt: BuiltTable, row: Row, bb: str, paper: bool) -> list[str]:
    """The printed cells of one row on one backbone: seeds, metrics, Δ, MDE, verdict."""
    c = bt.cell(row, bb)
    ncols = len(bt.spec.columns) + (3 if bt.spec.delta else 0)
    if c.unsupported:
        return ["-"] * (1 + ncols)
    out = [f"{len(c.seeds)}/{len(bt.seeds)}"]
    for col in bt.spec.columns:
        text = _ours(c, col) + _degenerate_mark(bt, c, col)
        p = _paper(c, col.key, col.precision) if paper else None
        out.append(text + (f" [{p}]" if p is not None else ""))
    if bt.spec.delta:
        p = None if (not paper or c.paper_delta is None) else f"{c.paper_delta:.2f}"
        out.append(delta_text(c) + (f" [{p}]" if p is not None else ""))
        out.append(mde_text(c))
        out.append(c.verdict or DASH)
    return out


def _blind_cells(bt: BuiltTable) -> list[str] | None:
    """The input-blind reference row's cells on one backbone (metrics only), or None."""
    values = bt.blind_values()
    if values is None:
        return None
    out = [DASH]
    for col in bt.spec.columns:
        out.append(_fmt(values.get(col.task, {}).get(col.metric), col.precision))
    if bt.spec.delta:
        out += [DASH, DASH, DASH]
    return out


def _bb_headers(bt: BuiltTable) -> list[str]:
    hs = ["seeds"] + [c.header for c in bt.spec.columns]
    if bt.spec.delta:
        hs += ["Δ ↑", "MDE", "verdict"]
    return hs


def _headers(bt: BuiltTable) -> list[str]:
    multi = len(bt.spec.backbones) > 1
    hs = ["Method", *bt.spec.flag_columns]
    for bb in bt.spec.backbones:
        pre = f"{bb}: " if multi else ""
        hs += [pre + h for h in _bb_headers(bt)]
    return hs


def _body(bt: BuiltTable, section: Section, paper: bool) -> list[list[str]]:
    rows = []
    for row in section.rows:
        line = [row.label, *row.flags]
        for bb in bt.spec.backbones:
            line += _cells(bt, row, bb, paper)
        rows.append(line)
    blind = _blind_cells(bt)
    if blind is not None and section is bt.spec.sections[-1]:  # under the last section's rows
        rows.append([BLIND_LABEL, *([""] * len(bt.spec.flag_columns)), *(blind * len(bt.spec.backbones))])
    return rows


def footer_lines(bt: BuiltTable) -> list[str]:
    """What every format prints under the table: the reference row's provenance, the degenerate
    flags' meaning and count, and the noise floor of each backbone (or that it is not measured)."""
    out = []
    if bt.blind is not None:
        variants = ", ".join(f"{t}: {v}" for t, v in bt.blind_variants().items())
        out.append(f"{BLIND_LABEL}: predictions that ignore the image, fitted on the train split and scored "
                   f"on val with the runs' metric code ({variants}; the stronger variant per task on its "
                   f"primary metric). It is no method and takes no verdict.")
        flagged = [(c, t, len(ss)) for c in bt.cells.values() for t, ss in c.degenerate.items()]
        if flagged:
            runs = sum(len(c.seeds) for c in bt.cells.values() if c.degenerate)
            by_task = {}
            for c, t, n in flagged:
                by_task[t] = by_task.get(t, 0) + n
            tasks = ", ".join(f"{t} in {n}" for t, n in sorted(by_task.items()))
            out.append(f"†k: in k of the row's seeds the run did not learn the task: its primary metric is "
                       f"not more than {DEGENERATE_THRESHOLD:.0%} better than the input-blind reference's "
                       f"(degenerate; {tasks} run-seeds of the table). Such a run is still a result, but "
                       f"its Δ on that task measures nothing the image taught it.")
    elif bt.blind_note:
        out.append(f"No {BLIND_LABEL.lower()} row: {bt.blind_note}.")
    if bt.spec.delta:
        ref = bt.reference
        for bb in bt.spec.backbones:
            fl = bt.noise.get(bb)
            on = f" ({bb})" if len(bt.spec.backbones) > 1 else ""
            if fl is None:
                out.append(f"Noise floor{on}: not measured (`mtlbench noise --table {bt.spec.id} --preset "
                           f"{bt.setting.preset}{f' --backbone {bb}' if on else ''}` trains A/A pairs of "
                           f"{ref.label}). MDE then rests on each row's own paired sd.")
            else:
                out.append(fl.text() + (" MDE* uses it where it exceeds a row's own paired sd." if fl.measured else ""))
    return out


def _info_line(bt: BuiltTable) -> str:
    s = bt.setting
    ref = bt.reference
    ref_info = ref.label
    if not ref.shown:
        found = [f"{len(bt.cell(ref, bb).seeds)}/{len(bt.seeds)}" for bb in bt.spec.backbones]
        ref_info += f" (not shown; seeds found: {', '.join(found)})"
    return (f"dataset `{s.describe()}` · preset `{s.preset}` · backbone{'s' if len(bt.spec.backbones) > 1 else ''} "
            f"{', '.join(f'`{b}`' for b in bt.spec.backbones)} · seeds {', '.join(map(str, bt.seeds))} · "
            f"Δ vs {ref_info} · records from `{s.out}`")


def _legend(bt: BuiltTable, paper: bool) -> str:
    text = ("Cells: mean ± sample std over the seeds found (one seed: no ±); "
            "`seeds`: found / asked.")
    if paper:
        text += " [x]: the paper's number."
    if bt.spec.delta:
        text += (f" Δ (Eq. 4, %, higher is better) is paired: computed per seed against {bt.reference.label}'s "
                 f"record of the same seed, over all metrics of each task; shown as mean ± half-width of the "
                 f"95% Student-t interval over the paired seeds. MDE: the smallest true Δ these paired seeds "
                 f"detect with 80% power (two-sided paired t, α = 0.05), from the row's paired sd or, marked *, "
                 f"the noise floor when larger. Verdict: better / worse (interval above / "
                 f"below 0), no significant difference (contains 0), too few seeds (< 3 paired seeds).")
    return text


def _missing_lines(bt: BuiltTable) -> list[str]:
    miss = bt.missing
    if not miss:
        return []
    pos = {j.key: i + 1 for i, j in enumerate(miss)}
    lines = [f"Missing runs ({len(miss)}), in dependency order:"]
    for i, j in enumerate(miss, 1):
        after = [str(pos[d]) for d in j.deps if d in pos]
        dep = f" (after {', '.join(after)})" if after else ""
        lines.append(f"{i}. {j.describe()}{dep}: `{j.command}`")
    return lines


def render_markdown(bt: BuiltTable, paper: bool = True) -> str:
    """GitHub Markdown: one pipe table per section (``DataFrame.to_markdown``), legend, notes, missing runs."""
    import pandas as pd

    out = [f"### {bt.spec.title}", "", _info_line(bt), ""]
    headers = _headers(bt)
    nflags = len(bt.spec.flag_columns)
    align = ["left"] + ["center"] * nflags + ["left" if h.endswith("verdict") else "right"
                                              for h in headers[1 + nflags:]]
    for sec in bt.spec.sections:
        if sec.title:
            out += [f"**{sec.title}**", ""]
        body = [[c.replace("|", "\\|") for c in r] for r in _body(bt, sec, paper)]
        df = pd.DataFrame(body, columns=headers)
        out += [df.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    out += [_legend(bt, paper), ""]
    out += [line for f in footer_lines(bt) for line in (f, "")]
    if bt.notes:
        out += ["Notes:"] + [f"- {n}" for n in bt.notes] + [""]
    miss = _missing_lines(bt)
    if miss:
        out += miss + [""]
    return "\n".join(out)


def render_csv(bt: BuiltTable, paper: bool = True) -> str:
    """One line per (row, backbone), numbers in their own columns (see :meth:`BuiltTable.frame`)."""
    df = bt.frame()
    if not paper:
        df = df[[c for c in df.columns if not c.endswith(":paper")]]
    return df.to_csv(index=False)


_LATEX_SUBS = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
               ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"),
               ("Δ", r"$\Delta$"), ("†", r"$^\dagger$"), ("°", r"$^\circ$"), ("✓", r"\checkmark"), ("–", "--"),
               ("<", r"$<$")]


def _tex(s: str) -> str:
    for a, b in _LATEX_SUBS:
        s = s.replace(a, b)
    return s


def render_latex(bt: BuiltTable, paper: bool = True) -> str:
    """A booktabs table via ``Styler.to_latex`` (needs booktabs; multirow for sectioned tables,
    amssymb for \\checkmark)."""
    import pandas as pd

    spec = bt.spec
    multi = len(spec.backbones) > 1
    lead = ["Method", *spec.flag_columns]
    sub = _bb_headers(bt)
    tuples = [("", _tex(h)) for h in lead] + [(_tex(bb), _tex(h)) for bb in spec.backbones for h in sub]
    rows, index = [], []
    for sec in spec.sections:
        for r in _body(bt, sec, paper):
            rows.append([_tex(c) for c in r])
            index.append(_tex(sec.title or ""))
    columns = pd.MultiIndex.from_tuples(tuples) if multi else pd.Index([t[1] for t in tuples])
    df = pd.DataFrame(rows, columns=columns)
    sectioned = any(s.title for s in spec.sections)
    per_bb = "".join("l" if h == "verdict" else "r" for h in sub)
    colspec = "l" + "c" * len(spec.flag_columns) + per_bb * len(spec.backbones)
    if sectioned:
        df.index = pd.MultiIndex.from_arrays([index, list(range(len(index)))])
        styler = df.style.hide(axis="index", level=1)
        colspec = "l" + colspec
    else:
        styler = df.style.hide(axis="index")
    tabular = styler.to_latex(hrules=True, column_format=colspec, multicol_align="c",
                              multirow_align="t", clines="skip-last;data" if sectioned else None)
    if sectioned:  # booktabs rules between sections, none doubled before the bottom rule
        lines = tabular.splitlines()
        lines = [r"\midrule" if ln.startswith(r"\cline{") else ln for ln in lines]
        tabular = "\n".join(ln for i, ln in enumerate(lines)
                             if not (ln == r"\midrule" and i + 1 < len(lines) and lines[i + 1] == r"\bottomrule"))
    out = [f"% {spec.title}", f"% {_info_line(bt)}", r"\begin{table}[t]", r"\centering",
           r"\caption{" + _tex(spec.title) + "}", tabular.rstrip("\n"), r"\end{table}"]
    out += [f"% {line}" for line in [_legend(bt, paper), *footer_lines(bt), *bt.notes, *_missing_lines(bt)]]
    return "\n".join(out) + "\n"


#: the CSS class of each verdict a table prints (HTML)
VERDICT_CLASSES = {"better": "v-better", "worse": "v-worse", "no significant difference": "v-nsd",
                   "too few seeds": "v-few", "reference": "v-ref"}


def html_inline(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code> (the info line, legend, notes)."""
    import html
    import re

    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


def _html_cell(text: str) -> str:
    """One cell, marked up: ``ours †k [paper]`` with †k and [paper] in spans (same text content)."""
    import html
    import re

    ours, sep, rest = text.partition(" [")
    body = html.escape(ours, quote=False)
    body = re.sub(r" (†\d+)", r' <span class="deg" title="degenerate in this many seeds: not better than '
                              r'the input-blind reference">\1</span>', body)
    if sep:
        body += f'<span class="paper"> [{html.escape(rest, quote=False)}</span>'
    return body


def render_html(bt: BuiltTable, paper: bool = True) -> str:
    """The table as an HTML fragment: the info line, one ``<table class="results">`` per section
    (the cells of :func:`render_markdown`, verbatim in their text), the legend, the footer lines
    (input-blind reference, †k, noise floor), the notes and the missing runs."""
    import html

    headers = _headers(bt)
    nflags = len(bt.spec.flag_columns)
    verdict_at = {i for i, h in enumerate(headers) if h.endswith("verdict")}
    out = [f'<p class="info">{html_inline(_info_line(bt))}</p>']
    for sec in bt.spec.sections:
        out.append('<div class="scroll"><table class="results">')
        if sec.title:
            out.append(f"<caption>{html.escape(sec.title)}</caption>")
        heads = [f'<th scope="col">{html.escape(h)}</th>' if i <= nflags else
                 f'<th scope="col" class="num">{html.escape(h)}</th>' for i, h in enumerate(headers)]
        out.append("<thead><tr>" + "".join(heads) + "</tr></thead>")
        out.append("<tbody>")
        for line in _body(bt, sec, paper):
            blind = line[0] == BLIND_LABEL
            cells = [f'<th scope="row">{html.escape(line[0])}</th>']
            for i, c in enumerate(line[1:], 1):
                if i in verdict_at:
                    cls = VERDICT_CLASSES.get(c, "")
                    cells.append(f'<td class="verdict {cls}">{html.escape(c)}</td>' if cls else
                                 f'<td class="verdict">{html.escape(c)}</td>')
                elif i <= nflags:
                    cells.append(f'<td class="flag">{html.escape(c)}</td>')
                else:
                    cells.append(f'<td class="num">{_html_cell(c)}</td>')
            out.append(('<tr class="blind">' if blind else "<tr>") + "".join(cells) + "</tr>")
        out.append("</tbody></table></div>")
    out.append(f'<p class="legend">{html_inline(_legend(bt, paper))}</p>')
    out += [f'<p class="footer">{html_inline(f)}</p>' for f in footer_lines(bt)]
    if bt.notes:
        out.append('<h3>Notes</h3><ul class="notes">' + "".join(f"<li>{html_inline(n)}</li>" for n in bt.notes)
                   + "</ul>")
    miss = _missing_lines(bt)
    if miss:
        items = "".join(f"<li>{html_inline(m.split('. ', 1)[1])}</li>" for m in miss[1:])
        out.append(f'<details class="missing"><summary>{html.escape(miss[0].rstrip(":"))}</summary>'
                   f"<ol>{items}</ol></details>")
    return "\n".join(out) + "\n"


def render_rich(bt: BuiltTable, paper: bool = True, console=None) -> None:
    """Print the table with rich: one table per backbone and section, the paper's number under ours."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
            console = Console(width=220)
    console.print(Text(bt.spec.title, style="bold"))
    console.print(Text(_info_line(bt), style="dim"))
    spec = bt.spec
    styles = {"better": "green", "worse": "red"}
    for bb in spec.backbones:
        for sec in spec.sections:
            title = " · ".join(t for t in ((bb if len(spec.backbones) > 1 else None), sec.title) if t)
            table = Table(title=title or None, title_justify="left")
            table.add_column("Method", no_wrap=True)
            for f in spec.flag_columns:
                table.add_column(f, justify="center")
            for h in _bb_headers(bt):
                table.add_column(h, justify="left" if h == "verdict" else "right", no_wrap=True)
            for row in sec.rows:
                cells = _cells(bt, row, bb, paper)
                # "ours [paper]" -> ours, with the paper's number dimmed on a second line
                texts = []
                for i, c in enumerate(cells):
                    ours, sep, rest = c.partition(" [")
                    is_verdict = spec.delta and i == len(cells) - 1
                    t = Text(ours, style=styles.get(ours, "") if is_verdict else "")
                    if sep:
                        t.append("\n[" + rest, style="dim")
                    texts.append(t)
                table.add_row(Text(row.label), *(Text(f) for f in row.flags), *texts)
            blind = _blind_cells(bt)
            if blind is not None and sec is spec.sections[-1]:
                table.add_row(Text(BLIND_LABEL, style="dim"), *(Text("") for _ in spec.flag_columns),
                              *(Text(x, style="dim") for x in blind))
            console.print(table)
    console.print(Text(_legend(bt, paper)))
    for line in footer_lines(bt):
        console.print(Text(line))
    for n in bt.notes:
        console.print(Text(f"note: {n}", style="yellow"))
    for line in _missing_lines(bt):
        console.print(Text(line), soft_wrap=True)


def render(bt: BuiltTable, fmt: str = "md", paper: bool = True) -> str:
    """The table as text: ``md``, ``csv``, ``latex``, ``html`` (a fragment), or ``rich`` (rendered
    without colour)."""
    if fmt == "md":
        return render_markdown(bt, paper)
    if fmt == "html":
        return render_html(bt, paper)
    if fmt == "csv":
        return render_csv(bt, paper)
    if fmt == "latex":
        return render_latex(bt, paper)
    if fmt == "rich":
        import io

        from rich.console import Console

        buf = io.StringIO()
        render_rich(bt, paper, Console(file=buf, width=220, no_color=True, highlight=False))
        return buf.getvalue()
    raise UserError(f"--format {fmt!r} is not a table format", hint=f"use one of: {', '.join(FORMATS)}")


def render_comparisons(comparisons: Sequence, multi_backbone: bool = False) -> str:
    """Comparisons (:class:`~mtlbench.tables.aggregate.Comparison`) as text blocks."""
    blocks = ["\n".join(c.lines(multi_backbone)) for c in comparisons]
    return "\n\n".join(blocks) + "\n"
