"""``mtlbench report``: the study as a static, self-contained HTML site.

:func:`build_report` reads the run records under a results directory and writes a
folder that opens from the file system with no network (inline CSS, a few lines of
inline JavaScript that sort a table by a clicked column and nothing else; the pages
read the same without it):

* ``index.html``: the settings of the study, where its records come from (their
  ``git_commit``, ``versions`` and ``device``), and the claims report: every claim of
  the tables in the report with its comparisons (as ``mtlbench claims`` prints them,
  that text in full too) and a forest plot per claim (``claims/<id>.png``: each
  comparison's paired Δ with its 95% interval as a bar, each seed a dot, a line at 0 and
  a diamond at the paper's effect);
* ``table-<id>.html`` per table: the table as ``mtlbench table`` prints it (the same
  :class:`~mtlbench.tables.BuiltTable`, rendered by :func:`mtlbench.tables.render.render_html`
  from the same cell strings: metrics, Δ ± interval, MDE, verdicts, the input-blind
  reference row, †k, noise floor, notes, missing runs), the training curves of one seed,
  and the prediction gallery of that seed (:mod:`mtlbench.gallery`);
* ``figures.html``: every figure a method provides (:meth:`mtlbench.api.Method.figures`
  through :func:`mtlbench.plots.available_figures`), drawn from the records the tables use
  with the figure's own choice of runs, or why it could not be drawn.

Tables are built exactly as ``mtlbench table`` and ``mtlbench claims`` build them (one
read of the records for all of them); nothing here computes a number of its own except
the pixels of the gallery.
"""
from __future__ import annotations

import datetime as _dt
import html
import os
import shutil
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import UserError
from .gallery import GALLERY_INDICES

#: the generator tag of every page; a folder whose index.html has it is a report (rewritable)
GENERATOR = "mtlbench report"
#: what a report writes into its folder (and removes from an earlier report before writing)
OWN_DIRS = ("claims", "figures", "gallery")
#: the widest a figure is kept (px); wider ones are scaled down, all are stored 8-bit indexed
MAX_FIGURE_WIDTH = 1400

VERDICT_COLOURS = {"reproduced": "#2ca02c", "contradicted": "#d62728", "smaller than the paper's effect": "#ff7f0e",
                   "underpowered": "#1f77b4", "inconclusive": "#7f7f7f", "too few seeds": "#bcbd22"}


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


# ---------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------

CSS = """
:root { --fg: #1d1f23; --muted: #5f6670; --line: #d8dce1; --bg2: #f5f6f8; --accent: #2756a8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: #fff; }
nav { background: #20242b; padding: .5rem 1rem; position: sticky; top: 0; z-index: 2; }
nav a { color: #e6e9ee; text-decoration: none; margin-right: 1.1rem; font-size: 14px; }
nav a.here { color: #fff; font-weight: 600; border-bottom: 2px solid #8fb3ff; }
main { max-width: 1500px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.55rem; margin: .6rem 0 .4rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .6rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin: 1.3rem 0 .4rem; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { background: var(--bg2); padding: 0 .2em; border-radius: 3px; }
pre { background: var(--bg2); padding: .8rem; overflow-x: auto; white-space: pre-wrap; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .5rem; vertical-align: top; }
thead th { background: var(--bg2); text-align: left; position: relative; }
table.results thead th { cursor: pointer; white-space: nowrap; }
table.results td.num, table.results th.num { text-align: right; white-space: nowrap; }
table.results tbody th { text-align: left; white-space: nowrap; font-weight: 500; }
table.results tr.blind th, table.results tr.blind td { color: var(--muted); font-style: italic;
       border-top: 2px solid var(--line); }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
.paper { color: var(--muted); font-size: 85%; }
.deg { color: #b2182b; font-weight: 600; }
td.verdict { white-space: nowrap; }
.v-better { color: #1a7f37; font-weight: 600; } .v-worse { color: #c62828; font-weight: 600; }
.v-nsd { color: var(--muted); } .v-few { color: #8a6d00; } .v-ref { color: var(--accent); }
.info, .legend, .footer, .muted { color: var(--muted); font-size: 13.5px; }
.badge { display: inline-block; padding: .05rem .45rem; border-radius: 3px; color: #fff; font-size: 12.5px;
         font-weight: 600; text-transform: uppercase; letter-spacing: .02em; vertical-align: 1px; }
.claim { border-left: 4px solid var(--line); padding: .1rem 0 .1rem .9rem; margin: 1.2rem 0; }
.claim img { max-width: 100%; height: auto; }
table.kv th { text-align: left; font-weight: 500; color: var(--muted); white-space: nowrap; }
table.claims td, table.claims th { font-size: 13.5px; }
figure { margin: .6rem 0 1.2rem; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
table.gallery td, table.gallery th { border: none; padding: 2px 3px; text-align: center; font-size: 12.5px; }
table.gallery thead th { background: none; font-weight: 600; max-width: 150px; }
table.gallery tbody th { text-align: right; color: var(--muted); font-weight: 500; white-space: nowrap; }
table.gallery img { width: 144px; height: auto; image-rendering: pixelated; display: block; }
.swatch { display: inline-block; width: 1.1em; height: .9em; vertical-align: -1px; margin: 0 .15em 0 .6em;
          border: 1px solid #0003; }
.na { background: #fff7e6; border: 1px solid #f0d9a8; padding: .4rem .7rem; font-size: 13.5px; }
details summary { cursor: pointer; color: var(--accent); }
"""

#: sorts a results table by the clicked column (numbers by their leading value); the
#: input-blind reference row stays last.  The pages read the same without it.
SORT_JS = """
document.querySelectorAll('table.results').forEach(function (t) {
  t.querySelectorAll('thead th').forEach(function (th, col) {
    th.title = 'sort by this column';
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var blind = rows.filter(function (r) { return r.classList.contains('blind'); });
      rows = rows.filter(function (r) { return !r.classList.contains('blind'); });
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      function key(r) { var c = r.cells[col]; var s = c ? c.textContent : '';
        var m = s.match(/^\\s*([-+]?\\d+(?:\\.\\d+)?)/); return m ? parseFloat(m[1]) : s; }
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x === 'number' && typeof y === 'number') return dir * (x - y);
        if (typeof x === 'number') return -1; if (typeof y === 'number') return 1;
        return dir * String(x).localeCompare(String(y)); });
      rows.concat(blind).forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def page(title: str, body: str, nav: Sequence[tuple[str, str]], here: str, footer: str = "") -> str:
    """One complete page: inline CSS, the navigation bar, ``body``, the sorting script."""
    here_attr = ' class="here"'
    links = "".join(f'<a href="{esc(href)}"{here_attr if href == here else ""}>{esc(text)}</a>'
                    for href, text in nav)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="{GENERATOR}">\n<link rel="icon" href="data:,">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<nav>{links}</nav>\n<main>\n{body}\n</main>\n"
            + (f'<footer><main class="muted">{footer}</main></footer>\n' if footer else "")
            + f"<script>{SORT_JS}</script>\n</body>\n</html>\n")


def kv_table(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column table of already escaped HTML values."""
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def count_table(title: str, counts: Counter, what: str = "records") -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td class=\"num\">{n}</td></tr>" for k, n in counts.most_common())
    return (f'<table class="kv"><thead><tr><th>{esc(title)}</th><th>{esc(what)}</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

def compact_png(path: Path, max_width: int = MAX_FIGURE_WIDTH) -> None:
    """Rewrite a figure smaller: scaled down to ``max_width``, 256 colours (8-bit indexed)."""
    from PIL import Image

    with Image.open(path) as im:
        img = im.convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(path, format="PNG", optimize=True)


def paper_mark(comp) -> float | None:
    """Where the forest plot marks the paper: its effect of "A beats B" (printed or recomputed
    Δ of A against B, else the difference of the printed Δs), also when the paper has A behind."""
    from .tables.claims import paper_effect

    e, _ = paper_effect(comp)
    if e is not None:
        return e
    if comp.paper is not None:
        return comp.paper
    if comp.paper_deltas and None not in comp.paper_deltas:
        return comp.paper_deltas[0] - comp.paper_deltas[1]
    return None


def forest_plot(result, path: Path) -> Path:
    """One claim's comparisons: per comparison the paired Δ's 95% interval (bar), its mean (tick),
    each seed (dot), the interval the verdict used when wider (Holm / Bonferroni, dotted), the
    paper's effect (diamond), and a line at 0."""
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .plots import pyplot, save_figure

    plt = pyplot()
    comps = result.comparisons
    n = max(len(comps), 1)
    fig, ax = plt.subplots(figsize=(7.2, 0.5 * n + 1.9))
    xs: list[float] = [0.0]
    wide_drawn = False
    for i, comp in enumerate(comps):
        y = n - 1 - i
        s = comp.summary
        v = result.verdicts[i] if i < len(result.verdicts) else ""
        colour = VERDICT_COLOURS.get(v, "#7f7f7f")
        if s.lo is not None:
            ax.barh(y, s.hi - s.lo, left=s.lo, height=0.42, color=colour, alpha=0.3, edgecolor=colour, lw=1.2)
            xs += [s.lo, s.hi]
        d = result.details[i] if i < len(result.details) else None
        iv = getattr(d, "interval", None)
        if iv is not None and iv.half_width is not None and s.interval.half_width is not None \
                and iv.half_width > s.interval.half_width + 1e-12:
            ax.hlines(y, iv.lo, iv.hi, color=colour, lw=1.3, linestyles=":")
            xs += [iv.lo, iv.hi]
            wide_drawn = True
        if s.mean is not None:
            ax.vlines(s.mean, y - 0.25, y + 0.25, color="black", lw=2)
            xs.append(s.mean)
        vals = list(s.values.values())
        if vals:
            jit = np.linspace(-0.13, 0.13, len(vals)) if len(vals) > 1 else [0.0]
            ax.scatter(vals, [y + j for j in jit], s=13, color="black", zorder=3)
            xs += vals
        e = paper_mark(comp)
        if e is not None:
            ax.plot([e], [y], marker="D", color="#d62728", ms=6, mec="white", zorder=4)
            xs.append(e)
    ax.axvline(0.0, color="#555555", lw=1)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.7, n + 0.2)  # a band above the rows holds the legend, so it covers no mark
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"vs {c.b.label}" + (f" ({c.backbone})" if len({x.backbone for x in comps}) > 1 else "")
                        for c in reversed(comps)], fontsize=9)
    a = comps[0].a.label if comps else result.claim.row
    ax.set_xlabel(f"Δ (Eq. 4, %) of {a}, paired per seed; positive = {a} better", fontsize=9)
    ax.grid(alpha=0.25, axis="x")
    handles = [Patch(facecolor="#999999", alpha=0.35, edgecolor="#666666", label="95% interval"),
               Line2D([], [], color="black", lw=2, label="mean"),
               Line2D([], [], marker="o", ls="", color="black", ms=4, label="seeds"),
               Line2D([], [], marker="D", ls="", color="#d62728", ms=6, label="paper's effect")]
    if wide_drawn:
        handles.insert(1, Line2D([], [], color="#666666", ls=":", label="interval of the verdict (Holm)"))
    ax.legend(handles=handles, fontsize=7.5, loc="upper center", ncol=len(handles), frameon=False,
              handletextpad=0.4, columnspacing=1.0, borderaxespad=0.2)
    title = "\n".join(textwrap.wrap(result.claim.text, 70))
    ax.set_title(f"{title}\n{result.verdict}", fontsize=10, color=VERDICT_COLOURS.get(result.verdict, "black"))
    fig.tight_layout()
    save_figure(fig, path)
    compact_png(path)
    return path


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------

@dataclass
class RunColumn:
    """One predictor of a gallery: a run (its record) serving one or more rows, or an A/A run."""

    labels: list[str]
    record: dict
    preds: Any = None  # gallery.Predictions or None
    why: str = ""
    images: dict = field(default_factory=dict)  # index -> {task: (pred path, error path)}

    @property
    def label(self) -> str:
        return " = ".join(self.labels)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the folder, its pages, its size, the predictions used."""

    site: Path
    pages: list[Path]
    tables: list[str]
    bytes: int
    files: int
    predictions: Counter = field(default_factory=Counter)  # "cached" / "checkpoint" / "not available"
    claims: int = 0


def _check_site(site: Path) -> None:
    """``site`` must be a folder we may write: new, empty, or an earlier report."""
    if site.exists() and not site.is_dir():
        raise UserError(f"--site {site}: exists and is not a folder",
                        hint="name a folder for the report (default docs/report)")
    if site.is_dir() and any(site.iterdir()):
        index = site / "index.html"
        try:
            mine = index.is_file() and f'content="{GENERATOR}"' in index.read_text(errors="replace")[:2000]
        except OSError:
            mine = False
        if not mine:
            raise UserError(f"--site {site}: the folder is not empty and holds no earlier report "
                            f"(no index.html written by {GENERATOR}); nothing is written into it",
                            hint="name a new or empty folder, or an earlier report's folder")
    try:
        site.mkdir(parents=True, exist_ok=True)
        probe = site / ".mtlbench-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--site {site}: cannot write there ({exc.strerror or exc})",
                        hint="name a folder you can write to, e.g. --site /tmp/report") from None


def _clean_site(site: Path) -> None:
    """Remove what an earlier report wrote (its pages and folders; any other file stays)."""
    for d in OWN_DIRS:
        if (site / d).is_dir():
            shutil.rmtree(site / d)
    for p in site.glob("*.html"):
        p.unlink()


def _table_ids(tables: Sequence[str] | str | None) -> list[str] | None:
    if tables is None:
        return None
    if isinstance(tables, str):
        tables = [t.strip() for t in tables.split(",")]
    ids = [str(t).strip() for t in tables if str(t).strip()]
    if not ids:
        raise UserError("--tables names no table", hint="e.g. --tables 1,4,5 (default: every table with records)")
    return list(dict.fromkeys(ids))


def _has_records(spec, setting, index) -> bool:
    for row in spec.rows(hidden=True):
        for bb in spec.backbones:
            if bb not in row.unsupported and any(index.find(row.method, row.overrides, bb, setting).values()):
                return True
    return False


def tables_with_records(index, *, preset: str | None = None, dataset: str | None = None,
                        data_root: str | None = None, out: str | Path = "results") -> list[str]:
    """The tables (ids, in order) with at least one record serving a row in their setting
    (``index``: a :class:`~mtlbench.tables.plan.RecordIndex` of the results directory)."""
    from .tables import available_tables, choose_setting, load_spec

    found = []
    for tid in available_tables():
        spec = load_spec(tid)
        setting = choose_setting(spec, dataset=dataset, preset=preset, data_root=data_root, out=out)
        if _has_records(spec, setting, index):
            found.append(tid)
    return found


def _presets_found(store) -> str:
    c = Counter(str(r.get("preset")) for r in store)
    return ", ".join(f"{p} ({n})" for p, n in c.most_common()) or "none"


def build_report(*, out: str | Path = "results", site: str | Path = "docs/report", preset: str | None = None,
                 seeds: Sequence[int] | None = None, tables: Sequence[str] | str | None = None,
                 dataset: str | None = None, data_root: str | None = None,
                 checkpoints: Iterable[str | Path] = (), images: Sequence[int] = GALLERY_INDICES,
                 gallery_seed: int | None = None, log: Callable[[str], None] | None = None) -> ReportResult:
    """Write the report of the records under ``out`` into the folder ``site`` (module docstring).

    ``preset``, ``seeds``, ``dataset``, ``data_root``: as for ``mtlbench table``; ``tables``: table
    ids (default: every table with at least one record in its setting); ``checkpoints``: further
    results directories whose ``checkpoints/`` may hold the runs' final weights; ``images``: the
    val images of the galleries; ``gallery_seed``: the seed the galleries and curves show
    (default: each table's first seed).  Bad input is a :class:`UserError`.
    """
    from .plots import pyplot
    from .records import RecordStore
    from .tables import apply_overrides, build_table, choose_setting, load_spec
    from .tables.plan import RecordIndex

    say = log or (lambda m: None)
    out, site = Path(out), Path(site)
    pyplot()  # matplotlib (and with it Pillow) before anything is read
    if not out.is_dir():
        raise UserError(f"--out {out}: no such directory, so there are no run records to read",
                        hint="pass the results directory the runs wrote to (default: results)")
    store = RecordStore.scan(out)
    if not len(store):
        raise UserError(f"--out {out}: no run records under {out / 'runs'}",
                        hint="train some first (mtlbench sweep --table 1 --preset quick), or pass the "
                             "results directory that holds them")
    ids = _table_ids(tables)
    for tid in ids or []:
        load_spec(tid, flag="--tables")  # an unknown table: a UserError naming the tables
    index = RecordIndex(store)
    asked = ids  # None: the default (the tables with records), so the regenerating command names none
    if ids is None:
        ids = tables_with_records(index, preset=preset, dataset=dataset, data_root=data_root, out=out)
    specs, settings = {}, {}
    for tid in ids:
        # as `mtlbench table` and `mtlbench claims` build them (no row overrides)
        spec, notes = apply_overrides(load_spec(tid, flag="--tables"), {}, strict=False)
        specs[tid] = (spec, notes)
        settings[tid] = choose_setting(spec, dataset=dataset, preset=preset, data_root=data_root, out=out)
    if not specs:
        raise UserError(f"--out {out}: no table has a record of preset {preset or '(each table’s own)'} "
                        f"under {out / 'runs'} (records there by preset: {_presets_found(store)})",
                        hint="pass --preset with the records' preset (e.g. --preset quick), or --tables N "
                             "to show a table with its missing runs")
    _check_site(site)
    built = {}
    for tid, (spec, notes) in specs.items():
        say(f"building table {tid}")
        bt = build_table(spec, settings[tid], seeds=seeds, index=index)
        bt.notes[:0] = notes
        built[tid] = bt
    _clean_site(site)
    return _Writer(site, out, built, list(checkpoints), list(images), gallery_seed, say,
                   dict(preset=preset, seeds=seeds, dataset=dataset, tables=asked)).write()


class _Writer:
    """Writes the pages of one report (see :func:`build_report`)."""

    def __init__(self, site: Path, out: Path, built: dict, checkpoints: list, images: list[int],
                 gallery_seed: int | None, log: Callable[[str], None], asked: dict):
        self.site, self.out, self.built = site, out, built
        self.checkpoints, self.images, self.gallery_seed, self.log = checkpoints, images, gallery_seed, log
        self.asked = asked
        self.pages: list[Path] = []
        self.predictions: Counter = Counter()
        self._runs: dict[str, tuple[Any, str]] = {}  # run slug -> (Predictions | None, why)
        self._datasets: dict[str, Any] = {}  # dataset key -> (writer, truth images, reference images) | str
        self.nav = [("index.html", "Overview")] + [(self.table_page(t), self.short(t)) for t in built] \
            + [("figures.html", "Method figures")]

    # -- names -------------------------------------------------------------------
    @staticmethod
    def table_page(tid: str) -> str:
        from .gallery import safe_name

        return f"table-{safe_name(str(tid))}.html"

    @staticmethod
    def short(tid: str) -> str:
        return f"Table {tid}" if str(tid).isdigit() else str(tid).capitalize()

    def write_page(self, name: str, title: str, body: str) -> None:
        path = self.site / name
        footer = (f"Written by {esc(GENERATOR)} (mtlbench {esc(self.version())}) from the records under "
                  f"<code>{esc(self.out)}</code>. Static files only: no network, no external fonts.")
        path.write_text(page(title, body, self.nav, name, footer), encoding="utf-8")
        self.pages.append(path)

    @staticmethod
    def version() -> str:
        from . import __version__

        return __version__

    # -- records -----------------------------------------------------------------
    def used_records(self) -> list[dict]:
        """Every record the tables use (rows and noise floors), once."""
        seen, out = set(), []
        for bt in self.built.values():
            recs = [r for c in bt.cells.values() for r in c.records.values()]
            recs += [r for fl in bt.noise.values() for r in fl.records.values()]
            for r in recs:
                key = r.get("id") or r.get("_path") or id(r)
                if key not in seen:
                    seen.add(key)
                    out.append(r)
        return out

    def seed_of(self, bt) -> int:
        if self.gallery_seed is not None and self.gallery_seed in bt.seeds:
            return self.gallery_seed
        return bt.seeds[0]

    # -- the whole -----------------------------------------------------------------
    def write(self) -> ReportResult:
        from .tables.claims import check_claims, load_claims

        claims = check_claims(load_claims(), self.built)
        (self.site / "claims").mkdir(parents=True, exist_ok=True)
        for r in claims:
            self.log(f"forest plot of claim {r.claim.id}")
            forest_plot(r, self.site / "claims" / f"{_file_id(r.claim.id)}.png")
        self.write_index(claims)
        for tid, bt in self.built.items():
            self.write_table(tid, bt, [r for r in claims if r.table is bt])
        self.write_figures()
        files = [p for p in self.site.rglob("*") if p.is_file()]
        mine = [p for p in files if p.name.endswith(".html") or p.relative_to(self.site).parts[0] in OWN_DIRS]
        return ReportResult(self.site, self.pages, list(self.built), sum(p.stat().st_size for p in mine), len(mine),
                            self.predictions, len(claims))

    # -- index -------------------------------------------------------------------
    def write_index(self, claims: list) -> None:
        from .provenance import source_commit
        from .tables.claims import CLAIM_VERDICTS

        recs = self.used_records()
        a = self.asked
        seeds = sorted({s for bt in self.built.values() for s in bt.seeds})
        presets = sorted({bt.setting.preset for bt in self.built.values()})
        cmd = "mtlbench report" + (f" --preset {a['preset']}" if a["preset"] else "") \
            + (f" --seeds {_seed_text(a['seeds'])}" if a["seeds"] else "") \
            + (f" --dataset {a['dataset']}" if a["dataset"] else "") \
            + (f" --tables {','.join(a['tables'])}" if a["tables"] else "") \
            + (f" --out {self.out}" if str(self.out) != "results" else "") \
            + (f" --site {self.site}" if str(self.site) != os.path.join("docs", "report") else "")
        body = [f"<h1>MTL benchmark report: preset {esc(', '.join(presets))}, seeds {esc(_seed_text(seeds))}</h1>",
                '<p class="muted">The tables, the paper\'s claims checked against the run records, the training '
                "curves and predictions of the runs, as <code>mtlbench table</code> and <code>mtlbench claims</code> "
                "print them. Numbers on the built-in synthetic data say what the methods do there, not on the "
                "paper's datasets.</p>"]
        body.append("<h2 id=\"settings\">Settings</h2>")
        rows = [("regenerate", f"<code>{esc(cmd)}</code>"),
                ("records read", f"<code>{esc(self.out / 'runs')}</code>: {len(recs)} records serve the tables "
                                 "(rows and noise floors)"),
                ("gallery images", esc(", ".join(f"val {i}" for i in self.images)))]
        body.append(kv_table(rows))
        trs = []
        for tid, bt in self.built.items():
            n_rec = sum(len(c.records) for c in bt.cells.values())
            n_cells = sum(1 for c in bt.cells.values() if not c.unsupported and c.row.shown)
            trs.append(f'<tr><td><a href="{esc(self.table_page(tid))}">{esc(self.short(tid))}</a></td>'
                       f"<td>{esc(bt.spec.title)}</td><td>{esc(bt.setting.describe())}</td>"
                       f"<td>{esc(bt.setting.preset)}</td><td>{esc(_seed_text(bt.seeds))}</td>"
                       f'<td class="num">{n_rec}</td><td class="num">{len(bt.missing)}</td>'
                       f'<td class="num">{n_cells}</td></tr>')
        body.append('<div class="scroll"><table class="kv"><thead><tr><th>table</th><th>title</th><th>dataset</th>'
                    "<th>preset</th><th>seeds</th><th>records</th><th>missing runs</th><th>rows</th></tr></thead>"
                    f"<tbody>{''.join(trs)}</tbody></table></div>")
        body.append("<h2 id=\"provenance\">Provenance</h2>")
        body.append(f'<p class="muted">From the {len(recs)} records the tables use: the commit of the mtlbench '
                    "source that trained each run (<code>git_commit</code>; <code>-dirty</code>: with uncommitted "
                    "changes), its library versions and where it ran. This report was written by mtlbench "
                    f"{esc(self.version())} at commit <code>{esc(source_commit() or 'unknown')}</code> on "
                    f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d')}.</p>")
        commits = Counter(str(r.get("git_commit") or "unknown") for r in recs)
        versions = Counter(" · ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()) or "unknown"
                           for r in recs)
        machines = Counter(_machine(r.get("device") or {}) for r in recs)
        created = sorted(str(r.get("created")) for r in recs if r.get("created"))
        body.append('<div class="scroll">' + count_table("commit", commits) + count_table("versions", versions)
                    + count_table("machine", machines) + "</div>")
        if created:
            body.append(f'<p class="muted">Runs finished between {esc(created[0])} and {esc(created[-1])}.</p>')
        body.append("<h2 id=\"claims\">The paper's claims</h2>")
        counts = Counter(r.verdict for r in claims)
        summary = ", ".join(f"{counts[v]} {v}" for v in CLAIM_VERDICTS if counts[v])
        body.append(f"<p><b>Summary:</b> {esc(summary or 'no claim is about these tables')} "
                    f"(of {len(claims)} claims).</p>")
        body.append(_claims_legend())
        body.append(self.claims_html(claims))
        if claims:
            from .tables.claims import render_claims

            body.append("<details><summary>The claims report as text (<code>mtlbench claims</code>)</summary>"
                        f'<pre class="claims-text">{esc(render_claims(claims))}</pre></details>')
        self.write_page("index.html", "MTL benchmark report", "\n".join(body))

    def claims_html(self, claims: list) -> str:
        from .stats import MIN_SEEDS, UNDERPOWERED
        from .tables.aggregate import footing_text, threads_text
        from .tables.render import footer_lines, html_inline

        out, shown = [], set()
        for r in claims:
            bt = r.table
            if bt.spec.id not in shown:
                shown.add(bt.spec.id)
                tid = next(t for t, b in self.built.items() if b is bt)
                s = bt.setting
                out.append(f'<h3><a href="{esc(self.table_page(tid))}">{esc(self.short(tid))}</a> on '
                           f"{esc(s.describe())}, preset {esc(s.preset)}, seeds {esc(', '.join(map(str, bt.seeds)))}</h3>")
                lines = [n for n in bt.notes if n.startswith(("Row overrides", "Unreadable record"))
                         or "keeps its own" in n or "serve no row" in n]
                lines += [f for f in footer_lines(bt) if f.startswith("Noise floor")]
                out += [f'<p class="muted">{html_inline(n)}</p>' for n in lines]
            colour = VERDICT_COLOURS.get(r.verdict, "#7f7f7f")
            needed = (f" (about {r.seeds_needed} paired seeds needed)"
                      if r.verdict == UNDERPOWERED and r.seeds_needed else "")
            where = f" ({r.claim.where})" if r.claim.where else ""
            out.append(f'<section class="claim" id="claim-{esc(_file_id(r.claim.id))}" style="border-color:{colour}">')
            out.append(f'<h3><span class="badge" style="background:{colour}">{esc(r.verdict)}</span>{esc(needed)} '
                       f"{esc(r.claim.text)}<span class=\"muted\">{esc(where)} · claim {esc(r.claim.id)}</span></h3>")
            if r.holm is not None:
                n = sum(1 for p in r.holm if p == p)
                out.append(f'<p class="muted">Holm\'s correction over {n} comparisons.</p>')
            multi = len(bt.spec.backbones) > 1
            trs = []
            for i, (comp, v) in enumerate(zip(r.comparisons, r.verdicts)):
                s = comp.summary
                d = r.details[i] if i < len(r.details) else None
                ci = (f"[{s.lo:+.2f}, {s.hi:+.2f}]" if s.lo is not None else "–")
                per = ", ".join(f"{k}: {x:+.2f}" for k, x in s.values.items()) or "–"
                why = [d.reason] if d is not None and d.reason and s.n >= MIN_SEEDS else []
                why += [f"seed {k}: Δ undefined: {e}" for k, e in comp.errors.items()]
                for key, ss in comp.missing.items():
                    label = comp.a.label if key == comp.a.key else comp.b.label
                    why.append(f"missing: {label}, seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}")
                if comp.mixed_threads:
                    why.append(threads_text(comp.mixed_threads))
                if comp.mixed_footing:
                    why.append(footing_text(comp.mixed_footing))
                mde = f"{d.min_detectable:.2f}" if d is not None and d.min_detectable is not None else "–"
                bb = f" ({comp.backbone})" if multi else ""
                trs.append(f"<tr><td>{esc(comp.a.label)} vs {esc(comp.b.label)}{esc(bb)}</td>"
                           f'<td class="num">{esc(s.text(2))}</td><td class="num">{esc(ci)}</td>'
                           f'<td class="num">{s.n}</td><td>{esc(per)}</td><td>{esc(comp.paper_text() or "–")}</td>'
                           f'<td class="num">{esc(mde)}</td>'
                           f'<td style="color:{VERDICT_COLOURS.get(v, "inherit")}"><b>{esc(v)}</b></td>'
                           f'<td class="muted">{"<br>".join(esc(w) for w in why)}</td></tr>')
            out.append('<div class="scroll"><table class="claims"><thead><tr><th>comparison</th><th>Δ</th>'
                       "<th>95% CI</th><th>seeds</th><th>Δ per seed</th><th>paper</th><th>MDE</th><th>verdict</th>"
                       f"<th>why</th></tr></thead><tbody>{''.join(trs)}</tbody></table></div>")
            if r.degenerate:
                what = "; ".join(f"{label}: {', '.join(tasks)}" for label, tasks in r.degenerate.items())
                out.append(f'<p class="muted">Rests on degenerate tasks (runs no better than the input-blind '
                           f"reference): {esc(what)}</p>")
            img = f"claims/{_file_id(r.claim.id)}.png"
            out.append(f'<img src="{esc(img)}" alt="forest plot of claim {esc(r.claim.id)}">')
            out.append("</section>")
        return "\n".join(out)

    # -- a table -------------------------------------------------------------------
    def write_table(self, tid: str, bt, claims: list) -> None:
        from .tables.render import render_html

        body = [f"<h1>{esc(bt.spec.title)}</h1>", render_html(bt), self.task_delta_html(bt)]
        if claims:
            links = ", ".join(f'<a href="index.html#claim-{esc(_file_id(r.claim.id))}">{esc(r.claim.text)}</a> '
                              f"({esc(r.verdict)})" for r in claims)
            body.append(f"<h2>Claims about this table</h2><p>{links}</p>")
        seed = self.seed_of(bt)
        body.append(self.curves_html(tid, bt, seed))
        body.append(self.gallery_html(tid, bt, seed))
        self.write_page(self.table_page(tid), bt.spec.title, "\n".join(body))

    @staticmethod
    def task_delta_html(bt) -> str:
        """Each row's paired Δ task by task (mean and 95% interval): which task its Δ comes from."""
        if not bt.spec.delta:
            return ""
        tasks = list(bt.tasks)
        multi = len(bt.spec.backbones) > 1
        head = "".join(f"<th>Δ {esc(t)}</th>" for t in tasks)
        rows = []
        for sec in bt.spec.sections:
            for row in sec.rows:
                for bb in bt.spec.backbones:
                    c = bt.cell(row, bb)
                    if c.is_reference or not c.task_delta:
                        continue
                    cells = []
                    for t in tasks:
                        d = c.task_delta.get(t)
                        if d is None or d.mean is None:
                            cells.append("<td>–</td>")
                            continue
                        iv = f" [{d.lo:+.2f}, {d.hi:+.2f}]" if d.lo is not None else ""
                        cls = (' class="v-better"' if d.lo is not None and d.lo > 0 else
                               ' class="v-worse"' if d.hi is not None and d.hi < 0 else "")
                        cells.append(f"<td{cls}>{d.mean:+.2f}{iv}</td>")
                    label = esc(row.label) + (f" ({esc(bb)})" if multi else "")
                    rows.append(f"<tr><td>{label}</td><td>{c.delta.n}</td>{''.join(cells)}</tr>")
        if not rows:
            return ""
        ref = esc(bt.reference.label)
        return ("<h2>Δ task by task</h2><p class=\"info\">Each task's own paired Δ against "
                f"{ref} (Eq. 4's inner mean over the task's metrics; the row's Δ is their mean): mean "
                "[95% interval] over the paired seeds; green: the interval lies above 0, red: below.</p>"
                f"<table><tr><th>row</th><th>paired seeds</th>{head}</tr>{''.join(rows)}</table>")

    def curves_html(self, tid: str, bt, seed: int) -> str:
        from .gallery import safe_name
        from .plots import find_figure, make_plot

        recs = []
        for row in bt.spec.rows():
            for bb in bt.spec.backbones:
                r = bt.cell(row, bb).records.get(seed)
                if r is not None and all(r is not x for x in recs):
                    recs.append(r)
        head = f"<h2 id=\"curves\">Training curves, seed {seed}</h2>"
        if not recs:
            return head + f'<p class="na">No record of seed {seed}: no curves.</p>'
        try:
            path = make_plot(find_figure("curves"), recs, self.site / "figures" / f"table-{safe_name(str(tid))}")
        except UserError as exc:
            return head + f'<p class="na">Not drawn: {esc(exc.message)}</p>'
        compact_png(path)
        rel = path.relative_to(self.site).as_posix()
        return (head + f'<figure><img src="{esc(rel)}" alt="training curves of seed {seed}">'
                f"<figcaption>Per task: the mean training loss per epoch (top) and the primary validation metric "
                f"(bottom), of the {len(recs)} runs of seed {seed} that serve the table's rows "
                f"(<code>mtlbench plot --kind curves</code>).</figcaption></figure>")

    # -- galleries ---------------------------------------------------------------------
    def dataset_gallery(self, bt, seed: int):
        """``(writer, truth images, reference images, reference label)`` of the table's dataset,
        drawn once per dataset; or a string saying why there is none."""
        from . import gallery as g
        from .registry import DATASETS
        from .tables.plan import JobBuilder

        s = bt.setting
        try:
            cfg = JobBuilder(s).resolve(bt.reference.method, {}, bt.spec.backbones[0], seed)
        except UserError as exc:
            return f"the dataset's config cannot be resolved here ({exc.message})"
        key = g.dataset_key(cfg.data)
        if key in self._datasets:
            return self._datasets[key]
        try:
            dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
            tasks = dict(dataset.tasks())
            keep, items = g.validation_items(dataset, self.images)
        except (UserError, OSError) as exc:
            msg = exc.message if isinstance(exc, UserError) else str(exc)
            self._datasets[key] = f"the gallery needs the dataset's files ({msg})"
            return self._datasets[key]
        if not items:
            self._datasets[key] = f"the val split has none of the images {self.images}"
            return self._datasets[key]
        truths = [g.truth_of(it, tasks, i) for i, it in zip(keep, items)]
        classes = max([int(t.channels) for t in tasks.values() if g.view_of(t) == "labels"] or [0])
        writer = g.GalleryWriter(self.site / "gallery" / key, self.site, tasks, truths,
                                 g.label_palette(dataset, classes))
        truth_imgs = writer.truth_images()
        ref_imgs, ref_note = {}, ""
        if bt.blind is not None:
            self.log(f"fitting the input-blind reference maps of {s.describe()} for the gallery")
            maps = g.reference_maps(tasks, dataset.split("train"), bt.blind_variants())
            ref_imgs = writer.prediction_images("reference", lambda t, i: maps.get(t))
            ref_note = ", ".join(f"{t}: {v}" for t, v in bt.blind_variants().items())
        for name in (g.SCALAR_CMAP, g.ERROR_CMAP):
            p = self.site / "gallery" / f"colorbar-{name}.png"
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(g.colorbar_png(name))
        self._datasets[key] = (writer, truth_imgs, ref_imgs, ref_note)
        return self._datasets[key]

    def columns(self, bt, seed: int) -> tuple[list[RunColumn], list[str]]:
        """The gallery's runs of ``seed`` (one column per record, the rows it serves as its labels;
        then the noise floor's A/A runs) and the rows without a record of that seed."""
        cols: dict[str, RunColumn] = {}
        norecord = []
        multi = len(bt.spec.backbones) > 1
        for row in bt.spec.rows(hidden=True):
            for bb in bt.spec.backbones:
                if bb in row.unsupported:
                    continue
                label = row.label + (f" · {bb}" if multi else "") + ("" if row.shown else " (Δ reference)")
                rec = bt.cell(row, bb).records.get(seed)
                if rec is None:
                    norecord.append(label)
                    continue
                key = str(rec.get("id") or rec.get("_path"))
                if key in cols:
                    cols[key].labels.append(label)
                else:
                    cols[key] = RunColumn([label], rec)
        for bb, fl in bt.noise.items():
            for (s, k), rec in sorted(fl.records.items()):
                if s != seed:
                    continue
                key = str(rec.get("id") or rec.get("_path"))
                label = f"{bt.reference.label}{f' · {bb}' if multi else ''} · A/A run, nuisance seed {k}"
                cols.setdefault(key, RunColumn([label], rec))
        return list(cols.values()), norecord

    def predictions_of(self, rec: dict):
        from . import gallery as g

        slug = g.run_slug(rec)
        if slug not in self._runs:
            preds, why = g.run_predictions(rec, self.out, self.images, self.checkpoints, log=self.log)
            self._runs[slug] = (preds, why)
            self.predictions["not available" if preds is None else
                             ("cached" if preds.source.startswith("cached") else "checkpoint")] += 1
        return self._runs[slug]

    def gallery_html(self, tid: str, bt, seed: int) -> str:
        from . import gallery as g
        from .tables.aggregate import BLIND_LABEL

        head = f'<h2 id="gallery">Predictions on val images {esc(", ".join(map(str, self.images)))}, seed {seed}</h2>'
        ds = self.dataset_gallery(bt, seed)
        if isinstance(ds, str):
            return head + f'<p class="na">No gallery: {esc(ds)}.</p>'
        writer, truth_imgs, ref_imgs, ref_label = ds
        cols, norecord = self.columns(bt, seed)
        shown, missing = [], []
        for c in cols:
            c.preds, c.why = self.predictions_of(c.record)
            if c.preds is None:
                missing.append(c)
                continue
            name = g.safe_name(g.run_slug(c.record).replace("/", "__"))
            c.images = writer.prediction_images(f"runs/{name}", c.preds.get)
            shown.append(c)
        out = [head, self.gallery_legend(writer)]
        if ref_imgs:
            out.append(f'<p class="muted">{esc(BLIND_LABEL)}: the maps that ignore the image, fitted on the train '
                       f"split, the variant the table's row shows ({esc(ref_label)}).</p>")
        if missing or norecord:
            items = [f"{esc(c.label)} ({esc(c.why)})" for c in missing]
            items += [f"{esc(lb)} (no record of seed {seed})" for lb in norecord]
            out.append('<p class="na"><b>Predictions not available</b> for: ' + "; ".join(items) + ". A run's "
                       "predictions come from its cached predictions (<code>results/predictions/</code>) or its "
                       "final checkpoint (<code>results/checkpoints/…/final.pt</code>, not committed).</p>")
        tasks = list(writer.tasks)
        heads = ["", "ground truth"] + ([BLIND_LABEL] if ref_imgs else []) + [c.label for c in shown]
        for tr in writer.truths:
            i = tr.index
            scale = "; ".join(f"{t} colour scale {lo:.4g} – {hi:.4g}" for t, (lo, hi) in tr.scales.items())
            rows = []
            cells = [f'<th scope="row">input</th><td>{_img(truth_imgs[i]["input"], f"val image {i}")}</td>']
            rows.append("<tr>" + "".join(cells) + "</tr>")
            for t in tasks:
                if t not in truth_imgs[i]:
                    continue
                pred = [f'<th scope="row">{esc(t)}</th><td>{_img(truth_imgs[i][t], f"{t} ground truth, image {i}")}</td>']
                err = [f'<th scope="row">{esc(t)} error</th><td></td>']
                for label, imgs in ([("reference", ref_imgs)] if ref_imgs else []) + [(c.label, c.images) for c in shown]:
                    pair = imgs.get(i, {}).get(t)
                    pred.append(f"<td>{_img(pair[0], f'{label}: {t}, image {i}')}</td>" if pair else "<td>–</td>")
                    err.append(f"<td>{_img(pair[1], f'{label}: {t} error, image {i}')}</td>" if pair else "<td>–</td>")
                rows += ["<tr>" + "".join(pred) + "</tr>", "<tr>" + "".join(err) + "</tr>"]
            out.append(f'<div class="scroll"><table class="gallery"><caption>val image {i}'
                       f'{f" <span class=muted>({esc(scale)})</span>" if scale else ""}</caption>'
                       "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr></thead>"
                       f"<tbody>{''.join(rows)}</tbody></table></div>")
        if shown:
            out.append('<details><summary>Where the predictions come from</summary><ul>'
                       + "".join(f"<li>{esc(c.label)}: run <code>{esc(g.run_slug(c.record))}</code>, "
                                 f"{esc(c.preds.source)}</li>" for c in shown) + "</ul></details>")
        return "\n".join(out)

    def gallery_legend(self, writer) -> str:
        from . import gallery as g

        views = {t: g.view_of(task) for t, task in writer.tasks.items()}
        parts = []
        if "labels" in views.values():
            sw = "".join(f'<span class="swatch" style="background:rgb{tuple(c)}"></span>{k}'
                         for k, c in enumerate(writer.palette))
            parts.append(f"Classes (one fixed palette for the dataset):{sw}. Label error: "
                         f'<span class="swatch" style="background:rgb{g.WRONG}"></span>wrong '
                         f'<span class="swatch" style="background:rgb{g.RIGHT}"></span>right.')
        if "scalar" in views.values():
            parts.append(f'{", ".join(t for t, v in views.items() if v == "scalar")}: '
                         f'<img class="bar" src="gallery/colorbar-{g.SCALAR_CMAP}.png" alt="{g.SCALAR_CMAP} scale" '
                         'style="width:128px;height:10px;vertical-align:middle"> low to high over the ground '
                         "truth's range in that image, one scale for the truth and every prediction (values "
                         "outside it clipped); its error |prediction − truth| over 0 to that range.")
        if "vector" in views.values():
            parts.append(f'{", ".join(t for t, v in views.items() if v == "vector")}: RGB = (n + 1) / 2; error: the '
                         f"angle to the truth, 0° to {g.MAX_ANGLE:g}°.")
        parts.append(f'Errors: <img class="bar" src="gallery/colorbar-{g.ERROR_CMAP}.png" alt="{g.ERROR_CMAP} scale" '
                     'style="width:128px;height:10px;vertical-align:middle"> none to most; grey: no valid ground '
                     "truth.")
        return '<p class="muted">' + " ".join(parts) + "</p>"

    # -- method figures --------------------------------------------------------------
    def write_figures(self) -> None:
        from .gallery import safe_name
        from .plots import available_figures, default_selection, make_plot, run_label

        recs = self.used_records()
        body = ["<h1>Method figures</h1>",
                '<p class="muted">The figures the registered methods provide (<code>mtlbench plot --list</code>), '
                f"each drawn from the {len(recs)} records the tables use, with the figure's own choice of runs.</p>"]
        entries = [f for f in available_figures() if f.provider]
        if not entries:
            body.append('<p class="na">No registered method provides a figure.</p>')
        for f in entries:
            body.append(f'<h2 id="{esc(safe_name(f.qualified))}">{esc(f.qualified)}</h2>'
                        f'<p class="muted">{esc(f.spec.summary)}</p>')
            try:
                sel = default_selection(f, recs)
                if not sel:
                    raise UserError("none of the records the tables use is one this figure draws")
                self.log(f"drawing {f.qualified}")
                path = make_plot(f, sel, self.site / "figures" / safe_name(f.provider))
            except UserError as exc:
                body.append(f'<p class="na">Not drawn: {esc(exc.message)}</p>')
                continue
            except Exception as exc:  # noqa: BLE001 - a broken plugin figure must not take the report down
                body.append(f'<p class="na">Not drawn: the figure failed ({esc(type(exc).__name__)}: '
                            f"{esc(str(exc)[:300])})</p>")
                continue
            compact_png(path)
            rel = path.relative_to(self.site).as_posix()
            runs = "; ".join(run_label(r) for r in sel)
            body.append(f'<figure><img src="{esc(rel)}" alt="{esc(f.qualified)}"><figcaption>Drawn from: '
                        f"{esc(runs)} (<code>mtlbench plot --kind {esc(f.qualified)}</code>).</figcaption></figure>")
        self.write_page("figures.html", "Method figures", "\n".join(body))


def _img(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


def _file_id(text: str) -> str:
    from .gallery import safe_name

    return safe_name(str(text))


def _seed_text(seeds: Sequence[int] | None) -> str:
    """``0-4`` for a run of consecutive seeds, else ``0,2,5``."""
    s = sorted(set(int(x) for x in seeds or []))
    if not s:
        return "–"
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(map(str, s))


def _machine(dev: dict) -> str:
    if not dev:
        return "unknown"
    parts = [str(dev.get("type", "?"))]
    for k in ("name", "processor"):
        if dev.get(k) and dev.get(k) not in parts:
            parts.append(str(dev[k]))
    if dev.get("threads"):
        parts.append(f"{dev['threads']} threads")
    if dev.get("amp"):
        parts.append(str(dev["amp"]))
    return " · ".join(parts)


def _claims_legend() -> str:
    return ('<p class="muted">Δ: paired per seed (Eq. 4, %, positive = the claimed row is better), mean ± '
            "half-width of the 95% t-interval. Verdicts: reproduced (the interval lies above 0), contradicted "
            "(below 0), smaller than the paper's effect (contains 0, excludes the paper's Δ), underpowered "
            "(contains 0 and reaches the paper's Δ: the seeds could not tell; seeds needed for 80% power), "
            "inconclusive (contains 0, no paper effect), too few seeds (&lt; 3 paired seeds). \"Best\" claims: "
            "Holm's correction over their comparisons. MDE: the smallest Δ the seeds detect with 80% power, from "
            "the larger of the paired sd and the noise floor. Forest plots: each comparison's 95% interval (bar), "
            "mean (tick), seeds (dots), the paper's effect (diamond); a dotted line is the wider interval a "
            "Holm-corrected verdict used.</p>")


def site_size(site: str | Path) -> tuple[int, int]:
    """``(bytes, files)`` under ``site``."""
    files = [p for p in Path(site).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)
