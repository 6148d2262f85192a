"""The paper's claims, checked against the run records (``mtlbench claims``).

The claims are data (``claims.yaml`` beside this module): each names one table
and rows of it (their keys in ``tableN.yaml``) and says that a row *beats*
others: ``beats: A, over: [B, C]`` (A beats B and A beats C), or that a row
is the *best* of a set: ``best: A, among: [...]`` / ``exclude: [...]`` (A
beats every other row of the set; by default the table's shown rows).

Each comparison "A beats B" is the paired Δ (Eq. 4) of A against B: per seed,
A's record against B's record of the same seed, then the mean and the 95%
Student-t interval over the paired seeds (:meth:`BuiltTable.compare`).

Verdict rules (:func:`mtlbench.stats.claim_verdict`; the claim's direction is "A is better").
Each comparison is read against the paper's own effect ``e`` (its Δ of A against B, below):

* **reproduced**: the interval lies above 0 (A is significantly better);
* **contradicted**: it lies below 0 (B is significantly better);
* otherwise the interval contains 0, and it is
  * **smaller than the paper's effect** when it lies below ``e`` (the paper's magnitude is
    excluded: whatever A's advantage is, it is smaller than claimed),
  * **underpowered** when it reaches ``e``: these seeds could not have told; the report says
    how many paired seeds would detect ``e`` with 80% power (two-sided paired t, α = 0.05) at
    the larger of the observed sd and the setting's noise floor (``mtlbench noise``),
  * **inconclusive** when the paper gives no positive effect to compare with;
* **too few seeds** with fewer than 3 paired seeds (including none: the missing runs are
  listed with their commands).

"A is the best" makes several comparisons at once: their paired t-tests are corrected together
with Holm's method (:func:`mtlbench.stats.best_row_test`), and a comparison whose interval lies
above 0 but that is not significant after the correction is read as containing 0.

A claim combines its comparisons: **contradicted** as soon as one is; otherwise **too few
seeds** if one has too few; **reproduced** when every one is; otherwise **underpowered** if one
is (with the most seeds any of them needs), then **inconclusive**, then **smaller than the
paper's effect**.  A claim whose comparisons rest on degenerate tasks (runs that do not beat
the input-blind reference on a task, :mod:`mtlbench.reference`) says so.

The paper's number is shown beside each comparison: its Δ of A against B
(as printed when B is the paper's reference row, else recomputed from the
printed metrics when the table shows every metric of each task), or else the
printed Δs of A and of B, each against the paper's reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import stats
from ..errors import UserError, quote
from ..stats import (CONTRADICTED, INCONCLUSIVE, MIN_SEEDS, REPRODUCED, SMALLER, TOO_FEW, UNDERPOWERED,
                     ClaimVerdict)
from .aggregate import BuiltTable, Comparison, describe_summary, footing_text, threads_text
from .plan import Job

CLAIMS_PATH = Path(__file__).parent / "claims.yaml"

TOO_FEW_SEEDS = TOO_FEW  # "too few seeds"
#: the verdicts in the order the report counts them
CLAIM_VERDICTS = (REPRODUCED, CONTRADICTED, SMALLER, UNDERPOWERED, INCONCLUSIVE, TOO_FEW_SEEDS)

_KEYS = {"id", "table", "text", "where", "beats", "over", "best", "among", "exclude", "backbone"}


@dataclass
class Claim:
    """One claim: ``row`` beats each row of ``over`` (``kind`` says how the paper put it)."""

    id: str
    table: str
    text: str
    row: str
    kind: str  # "beats" | "best"
    over: list[str] = field(default_factory=list)  # explicit rows ("beats"; "best" with among)
    exclude: list[str] = field(default_factory=list)  # "best" without among: rows left out
    where: str = ""
    backbone: str | None = None

    def opponents(self, bt: BuiltTable) -> list[str]:
        """The rows ``row`` must beat, in the table's order."""
        if self.kind == "best" and not self.over:
            keys = [r.key for r in bt.spec.rows()]
            return [k for k in keys if k != self.row and k not in self.exclude]
        return [k for k in self.over if k != self.row]


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """The claims of ``claims.yaml`` (or of the YAML at ``path``)."""
    from ..config import read_yaml_file

    p = Path(path) if path is not None else CLAIMS_PATH
    data = read_yaml_file(p, "claims file", example="`claims: [{id: ..., table: 1, text: ..., best: okd}]`") or {}
    if not isinstance(data, dict) or not isinstance(data.get("claims") or [], list):
        got = data if not isinstance(data, dict) else data["claims"]
        raise UserError(f"claims file {p} is malformed: it must hold `claims:`, a list of claims, "
                        f"not {type(got).__name__}",
                        hint="see mtlbench/tables/claims.yaml for the form of a claim")
    claims = []
    for i, d in enumerate(data.get("claims") or []):
        ident = d.get("id", "?") if isinstance(d, dict) else d
        ident = ident if isinstance(ident, str) and len(ident) <= 200 else quote(ident, 200)
        where = f"claims file {p}, claim {i + 1} ({ident})"
        if not isinstance(d, dict) or not {"id", "table", "text"} <= set(d):
            raise UserError(f"{where}: a claim needs id, table and text")
        unknown = set(d) - _KEYS
        if unknown:
            raise UserError(f"{where}: unknown keys {sorted(unknown)}", hint=f"keys: {', '.join(sorted(_KEYS))}")
        if ("beats" in d) == ("best" in d):
            raise UserError(f"{where}: give exactly one of `beats: ROW` (with `over`) or `best: ROW`")
        kind = "beats" if "beats" in d else "best"
        over = [str(x) for x in (d.get("over") if kind == "beats" else d.get("among")) or []]
        if kind == "beats" and not over:
            raise UserError(f"{where}: `beats` needs `over: [ROW, ...]`")
        claims.append(Claim(id=str(d["id"]), table=str(d["table"]), text=str(d["text"]), row=str(d[kind]),
                            kind=kind, over=over, exclude=[str(x) for x in d.get("exclude") or []],
                            where=str(d.get("where", "")), backbone=d.get("backbone")))
    ids = [c.id for c in claims]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UserError(f"claims file {p}: duplicate claim ids {sorted(dup)}")
    return claims


def paper_effect(comp: Comparison) -> tuple[float | None, str]:
    """The paper's effect of "A beats B" in Δ points and how it was obtained: its Δ of A against
    B (printed or recomputed from its metrics), else the difference of A's and B's printed Δs
    (each against the paper's reference: an approximation, Δ is not additive).  None when the
    paper gives none, or when its own numbers do not have A ahead (no effect to reach)."""
    if comp.paper is not None:
        e, how = comp.paper, "the paper's Δ"
    elif comp.paper_deltas and None not in comp.paper_deltas:
        e, how = comp.paper_deltas[0] - comp.paper_deltas[1], "the difference of the paper's printed Δs"
    else:
        return None, ""
    return (e, how) if e > 0 else (None, "")


def comparison_verdict(comp: Comparison, min_n: int = MIN_SEEDS, p_holm: float | None = None,
                       family: int = 1, alpha: float = stats.ALPHA) -> ClaimVerdict:
    """The verdict of one comparison "A beats B" (rules in the module docstring).

    ``p_holm``: for a "best" claim, the comparison's p-value after Holm's correction over the
    ``family`` comparisons.  It decides significance (reproduced / contradicted); a comparison it
    does not make significant is read with its Bonferroni interval (confidence 1 - α/family,
    which contains 0 whenever Holm does not reject), and its seeds needed are for that level."""
    e, _ = paper_effect(comp)
    if p_holm is None or family <= 1 or comp.summary.n < max(min_n, 2) or math.isnan(p_holm):
        return stats.claim_verdict(comp.summary.interval, e, claim="better", noise_sd=comp.noise_sd, min_n=min_n)
    if p_holm < alpha:
        raw = stats.claim_verdict(comp.summary.interval, e, claim="better", noise_sd=comp.noise_sd, min_n=min_n)
        v = REPRODUCED if comp.summary.mean > 0 else CONTRADICTED
        side = "above" if v == REPRODUCED else "below"
        return ClaimVerdict(v, raw.interval, raw.paper_effect, raw.direction, raw.sd_used, raw.seeds_needed,
                            raw.min_detectable, f"significant after Holm's correction over {family} comparisons "
                                                f"(adjusted p = {p_holm:.3f}), mean {side} 0")
    wide = stats.summarize(comp.summary.values, confidence=1 - alpha / family).interval
    cv = stats.claim_verdict(wide, e, claim="better", noise_sd=comp.noise_sd, min_n=min_n)
    why = (f"not significant after Holm's correction over {family} comparisons (adjusted p = {p_holm:.3f}); "
           f"{cv.reason.replace(f'the {wide.confidence:.0%} interval', f'its Bonferroni {wide.confidence:.1%} interval')}")
    return ClaimVerdict(cv.verdict, cv.interval, cv.paper_effect, cv.direction, cv.sd_used, cv.seeds_needed,
                        cv.min_detectable, why)


def claim_verdict(verdicts: Sequence[str]) -> str:
    """Combine the verdicts of a claim's comparisons (rules in the module docstring)."""
    if not verdicts:
        return TOO_FEW_SEEDS
    for v in (CONTRADICTED, TOO_FEW_SEEDS):
        if v in verdicts:
            return v
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    for v in (UNDERPOWERED, INCONCLUSIVE, SMALLER):
        if v in verdicts:
            return v
    raise ValueError(f"unknown verdicts {sorted(set(verdicts) - set(CLAIM_VERDICTS))}")


@dataclass
class ClaimResult:
    """A claim with its comparisons, their verdicts and the claim's verdict.

    ``details``: each comparison's :class:`~mtlbench.stats.ClaimVerdict` (reason, seeds needed,
    minimum detectable effect); ``holm``: for "best" claims, Holm's adjusted p-value per
    comparison; ``degenerate``: row label -> tasks some of its paired seeds did not learn."""

    claim: Claim
    table: BuiltTable
    comparisons: list[Comparison]
    verdicts: list[str]
    verdict: str
    details: list[ClaimVerdict] = field(default_factory=list)
    holm: list[float] | None = None
    degenerate: dict[str, list[str]] = field(default_factory=dict)

    @property
    def seeds_needed(self) -> int | None:
        """For an underpowered claim: the most paired seeds any of its underpowered comparisons needs."""
        ns = [d.seeds_needed for d in self.details if d.verdict == UNDERPOWERED and d.seeds_needed]
        return max(ns) if ns else None

    def missing_jobs(self) -> list[Job]:
        """The unrecorded runs (and their unrecorded dependencies) of the claim's rows."""
        bt = self.table
        keys = [self.claim.row] + [c.b.key for c in self.comparisons]
        by_key = {j.key: j for j in bt.jobs}
        want: set = set()
        bb = self.comparisons[0].backbone if self.comparisons else bt.spec.backbones[0]

        def add(key):
            if key in by_key and key not in want:
                want.add(key)
                for d in by_key[key].deps:
                    add(d)

        for k in keys:
            row = bt.spec.row(k)
            group = Job(row.method, row.overrides, bb, 0).group
            for s in bt.seeds:
                add((*group, s))
        return [j for j in bt.jobs if j.key in want and not j.recorded]


def check_claim(claim: Claim, bt: BuiltTable) -> ClaimResult:
    """Evaluate one claim on a built table."""
    for key in [claim.row, *claim.over, *claim.exclude]:
        if bt.spec.row(key) is None:
            raise UserError(f"claim {claim.id}: table {bt.spec.id} has no row {key!r}",
                            hint=f"rows: {', '.join(r.key for r in bt.spec.rows(hidden=True))}")
    bb = claim.backbone or bt.spec.backbones[0]
    if bb not in bt.spec.backbones:
        raise UserError(f"claim {claim.id}: table {bt.spec.id} has no backbone {bb!r}",
                        hint=f"backbones: {', '.join(bt.spec.backbones)}")
    opponents = claim.opponents(bt)
    if not opponents:
        raise UserError(f"claim {claim.id}: row {claim.row!r} is compared with no other row",
                        hint="list the rows it beats (`over` / `among`)")
    comps = [bt.compare(claim.row, other, bb) for other in opponents]
    holm = None
    if claim.kind == "best" and len(comps) > 1:
        test = stats.best_row_test({i: c.summary.values for i, c in enumerate(comps) if c.summary.n >= 2})
        holm = [test.comparisons[i].p_holm if i in test.comparisons else math.nan for i in range(len(comps))]
        details = [comparison_verdict(c, p_holm=holm[i], family=len(test.comparisons))
                   for i, c in enumerate(comps)]
    else:
        details = [comparison_verdict(c) for c in comps]
    verdicts = [d.verdict for d in details]
    degenerate: dict[str, list[str]] = {}
    for key in [claim.row, *opponents]:
        row = bt.spec.row(key)
        cell = bt.cell(row, bb)
        tasks = sorted(cell.degenerate)
        if tasks:
            degenerate[row.label] = tasks
    return ClaimResult(claim, bt, comps, verdicts, claim_verdict(verdicts), details, holm, degenerate)


def check_claims(claims: Iterable[Claim], tables: dict[str, BuiltTable]) -> list[ClaimResult]:
    """Evaluate the claims whose table is in ``tables`` (``{table id: BuiltTable}``)."""
    return [check_claim(c, tables[c.table]) for c in claims if c.table in tables]


def build_claim_tables(claims: Sequence[Claim], *, table: str | None = None, dataset: str | None = None,
                       preset: str | None = None, data_root: str | None = None, out: str | Path = "results",
                       seeds: Sequence[int] | None = None,
                       overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, BuiltTable]:
    """Build every table the claims need (only ``table`` when given), with row overrides applied."""
    from ..records import RecordStore
    from .aggregate import build_table
    from .plan import RecordIndex, choose_setting
    from .spec import apply_overrides, load_spec

    ids = list(dict.fromkeys(c.table for c in claims))
    if table is not None:
        if str(table) not in ids:
            raise UserError(f"--table {table}: no claim is about table {table}",
                            hint=f"claims are about tables {', '.join(ids)}")
        ids = [str(table)]
    specs, notes = {}, {}
    for tid in ids:
        specs[tid], notes[tid] = apply_overrides(load_spec(tid, flag="--table"), overrides or {}, strict=False)
    used = {m for s in specs.values() for m in s.applied_overrides}
    unused = [m for m in (overrides or {}) if m not in used]
    if unused:
        raise UserError(f"--override {unused[0]}.…: no row of table{'s' if len(ids) > 1 else ''} "
                        f"{', '.join(ids)} uses method {unused[0]!r}")
    tables, index = {}, None
    for tid, spec in specs.items():
        setting = choose_setting(spec, dataset=dataset, preset=preset, data_root=data_root, out=out)
        if index is None:
            index = RecordIndex(RecordStore.scan(setting.out))  # one read of the records for every table
        bt = build_table(spec, setting, seeds=seeds, index=index)
        bt.notes[:0] = notes[tid]
        tables[tid] = bt
    return tables


def render_claims(results: Sequence[ClaimResult], paper: bool = True) -> str:
    """The claims report as text: each claim, its comparisons, verdicts, and the missing runs."""
    out: list[str] = []
    counts = {v: sum(r.verdict == v for r in results) for v in CLAIM_VERDICTS}
    out.append("Claims of Jacob et al., \"Online Knowledge Distillation for Multi-task Learning\" "
               "(WACV 2023), checked on the run records")
    out.append("Δ: paired per seed (Eq. 4, %, positive = the claimed row is better), mean ± half-width of the "
               "95% t-interval. Verdicts: reproduced (the interval lies above 0), contradicted (below 0), "
               "smaller than the paper's effect (contains 0, excludes the paper's Δ), underpowered (contains "
               "0 and reaches the paper's Δ: the seeds could not tell; seeds needed for 80% power), "
               "inconclusive (contains 0, no paper effect), too few seeds (< 3 paired seeds). \"Best\" "
               "claims: Holm's correction over their comparisons. MDE: the smallest Δ the seeds detect with "
               "80% power, from the larger of the paired sd and the noise floor.")
    out.append("")
    shown_tables: set = set()
    for r in results:
        bt = r.table
        if bt.spec.id not in shown_tables:
            shown_tables.add(bt.spec.id)
            s = bt.setting
            out.append(f"== Table {bt.spec.id} on {s.describe()}, preset {s.preset}, seeds "
                       f"{', '.join(map(str, bt.seeds))} (records from {s.out})")
            for n in bt.notes:
                if n.startswith(("Row overrides", "Unreadable record")) or "keeps its own" in n \
                        or "serve no row" in n:
                    out.append(f"   note: {n}")
            from .render import footer_lines

            for n in footer_lines(bt):
                if n.startswith("Noise floor"):
                    out.append(f"   {n}")
        where = f" ({r.claim.where})" if r.claim.where else ""
        needed = f" (about {r.seeds_needed} paired seeds needed)" if r.verdict == UNDERPOWERED and r.seeds_needed else ""
        out.append(f"[{r.verdict.upper()}]{needed} {r.claim.text}{where}  ·  claim {r.claim.id}")
        if r.holm is not None:
            out.append(f"    (Holm's correction over {sum(not math.isnan(p) for p in r.holm)} comparisons)")
        multi = len(bt.spec.backbones) > 1
        for i, (comp, v) in enumerate(zip(r.comparisons, r.verdicts)):
            bb = f" ({comp.backbone})" if multi else ""
            line = f"    {comp.a.label} vs {comp.b.label}{bb}: {describe_summary(comp.summary, verdict=False)} -> {v}"
            out.append(line)
            d = r.details[i] if i < len(r.details) else None
            if d is not None and d.reason and comp.summary.n >= MIN_SEEDS:
                extra = []
                if d.min_detectable is not None:
                    extra.append(f"MDE {d.min_detectable:.2f}")
                out.append(f"        why: {d.reason}" + (f" ({'; '.join(extra)})" if extra else ""))
            if comp.summary.values:
                out.append("        per seed: " + ", ".join(f"{k}: {x:+.2f}" for k, x in comp.summary.values.items()))
            if paper and comp.paper_text():
                out.append(f"        paper: {comp.paper_text()}")
            for seed, err in comp.errors.items():
                out.append(f"        seed {seed}: Δ undefined: {err}")
            for key, seeds in comp.missing.items():
                label = comp.a.label if key == comp.a.key else comp.b.label
                plural = "s" if len(seeds) > 1 else ""
                out.append(f"        missing: {label}, seed{plural} {', '.join(map(str, seeds))}")
            if comp.mixed_threads:
                out.append(f"        {threads_text(comp.mixed_threads)}")
            if comp.mixed_footing:
                out.append(f"        {footing_text(comp.mixed_footing)}")
        if r.degenerate:
            what = "; ".join(f"{label}: {', '.join(tasks)}" for label, tasks in r.degenerate.items())
            out.append(f"    rests on degenerate tasks (runs no better than the input-blind reference): {what}")
        out.append("")
    out.append("Summary: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" (of {len(results)} claims)")
    missing = _missing(results)
    if missing:
        out.append("")
        out.append(f"Missing runs ({sum(len(j) for j in missing.values())}), in dependency order per table:")
        for tid, jobs in missing.items():
            out.append(f"Table {tid}:")
            for j in jobs:
                out.append(f"  {j.command}")
    return "\n".join(out) + "\n"


def _missing(results: Sequence[ClaimResult]) -> dict[str, list[Job]]:
    out: dict[str, list[Job]] = {}
    for r in results:
        tid = r.table.spec.id
        have = {j.key for j in out.get(tid, [])}
        new = [j for j in r.missing_jobs() if j.key not in have]
        if new:
            merged = out.get(tid, []) + new
            order = {j.key: i for i, j in enumerate(r.table.jobs)}
            out[tid] = sorted(merged, key=lambda j: order[j.key])
    return out
