"""The paper's claims, checked against the run records (``mtlbench claims``).

The claims are data (``claims.yaml`` beside this module): each names one table
and rows of it (their keys in ``tableN.yaml``) and says that a row *beats*
others: ``beats: A, over: [B, C]`` (A beats B and A beats C), or that a row
is the *best* of a set: ``best: A, among: [...]`` / ``exclude: [...]`` (A
beats every other row of the set; by default the table's shown rows).

Each comparison "A beats B" is the paired Δ (Eq. 4) of A against B: per seed,
A's record against B's record of the same seed, then the mean and the 95%
Student-t interval over the paired seeds (:meth:`BuiltTable.compare`).

Verdict rules.

* A comparison is **reproduced** when its interval lies above 0 (A is
  significantly better), **not reproduced** when it lies below 0 (B is
  significantly better: the data contradict the claim), **inconclusive** when
  it contains 0, and **too few seeds** with fewer than 3 paired seeds
  (including none: the missing runs are listed with their commands).
* A claim ("A beats each of B, C, ..." and "A is the best", which is "A beats
  every other row of the set") is **not reproduced** as soon as one of its
  comparisons is not reproduced (for "best": some other row significantly
  beats A); otherwise **too few seeds** if a comparison has too few seeds;
  otherwise **inconclusive** if a comparison is inconclusive; **reproduced**
  only when A significantly beats every row it is compared with.

The paper's number is shown beside each comparison: its Δ of A against B
(as printed when B is the paper's reference row, else recomputed from the
printed metrics when the table shows every metric of each task), or else the
printed Δs of A and of B, each against the paper's reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ..errors import UserError
from ..stats import BETTER, MIN_SEEDS, TOO_FEW, WORSE
from .aggregate import BuiltTable, Comparison, describe_summary, threads_text
from .plan import Job

CLAIMS_PATH = Path(__file__).parent / "claims.yaml"

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
TOO_FEW_SEEDS = TOO_FEW  # "too few seeds"
CLAIM_VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, TOO_FEW_SEEDS)

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
    p = Path(path) if path is not None else CLAIMS_PATH
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"claims file {p} cannot be read: {exc}") from exc
    claims = []
    for i, d in enumerate(data.get("claims") or []):
        where = f"claims file {p}, claim {i + 1} ({d.get('id', '?') if isinstance(d, dict) else d!r})"
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


def comparison_verdict(comp: Comparison, min_n: int = MIN_SEEDS) -> str:
    """The verdict of one comparison "A beats B" (rules in the module docstring)."""
    v = comp.summary.verdict if comp.summary.n >= min_n else TOO_FEW
    return {BETTER: REPRODUCED, WORSE: NOT_REPRODUCED, TOO_FEW: TOO_FEW_SEEDS}.get(v, INCONCLUSIVE)


def claim_verdict(verdicts: Sequence[str]) -> str:
    """Combine the verdicts of a claim's comparisons (rules in the module docstring)."""
    for v in (NOT_REPRODUCED, TOO_FEW_SEEDS, INCONCLUSIVE):
        if v in verdicts:
            return v
    return REPRODUCED if verdicts else TOO_FEW_SEEDS


@dataclass
class ClaimResult:
    """A claim with its comparisons, their verdicts and the claim's verdict."""

    claim: Claim
    table: BuiltTable
    comparisons: list[Comparison]
    verdicts: list[str]
    verdict: str

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
    verdicts = [comparison_verdict(c) for c in comps]
    return ClaimResult(claim, bt, comps, verdicts, claim_verdict(verdicts))


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
               "95% t-interval. Verdicts: reproduced (every interval above 0), not reproduced (some interval "
               "below 0), inconclusive (an interval contains 0), too few seeds (< 3 paired seeds).")
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
        where = f" ({r.claim.where})" if r.claim.where else ""
        out.append(f"[{r.verdict.upper()}] {r.claim.text}{where}  ·  claim {r.claim.id}")
        multi = len(bt.spec.backbones) > 1
        for comp, v in zip(r.comparisons, r.verdicts):
            bb = f" ({comp.backbone})" if multi else ""
            line = f"    {comp.a.label} vs {comp.b.label}{bb}: {describe_summary(comp.summary, verdict=False)} -> {v}"
            out.append(line)
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
