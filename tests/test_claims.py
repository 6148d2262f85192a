"""The claims report: the built-in claims file, the verdict rules, one claim of each verdict."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from mtlbench.cli import main as cli_main
from mtlbench.delta import delta
from mtlbench.errors import UserError
from mtlbench.stats import min_detectable_effect
from mtlbench.tables import build_table, choose_setting, load_spec, method_defaults
from mtlbench.tables.claims import (CONTRADICTED, INCONCLUSIVE, REPRODUCED, SMALLER, TOO_FEW_SEEDS, UNDERPOWERED,
                                    check_claims, claim_verdict, load_claims, render_claims)

FIXTURES = Path(__file__).parent / "fixtures" / "tables"


def test_builtin_claims_name_rows_of_their_tables():
    claims = load_claims()
    assert len(claims) == 12
    by_id = {c.id: c for c in claims}
    assert {c.table for c in claims} == {"1", "2", "4", "5"}
    for c in claims:
        spec = load_spec(c.table)
        for key in [c.row, *c.over, *c.exclude]:
            assert spec.row(key) is not None, (c.id, key)
    t4 = by_id["t4-afd-otw-beats-each"]
    assert (t4.kind, t4.row, t4.over) == ("beats", "okd", ["okd_afd", "okd_otw"])
    t5 = by_id["t5-T-0.1-best"]
    assert t5.kind == "best" and t5.over == ["T_0.01", "T_0.05", "T_0.1", "T_0.3", "T_1.0"]
    assert by_id["t4-pretrained-afd-beats-baseline"].over == ["baseline"]


def test_best_compares_with_every_other_row():
    bt = build_table(load_spec(1), choose_setting(load_spec(1), preset="smoke", out="results"), records=[])
    best = {c.id: c for c in load_claims()}["t1-okd-best"]
    # every shown row but itself and the other OKD-MTL profile
    assert best.opponents(bt) == ["stl", "baseline", "dwa", "gradnorm", "uw", "rlw", "cross_stitch", "kd_mtl"]
    t5 = load_spec(5)
    bt5 = build_table(t5, choose_setting(t5, preset="smoke", out="results"), records=[])
    assert {c.id: c for c in load_claims()}["t5-afd-ours-best"].opponents(bt5) == [
        "afd_last_layer", "afd_equal", "afd_softmax", "afd_select_skip"]


def test_claim_verdict_rules():
    assert claim_verdict([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert claim_verdict([REPRODUCED, CONTRADICTED, TOO_FEW_SEEDS]) == CONTRADICTED
    assert claim_verdict([REPRODUCED, TOO_FEW_SEEDS, INCONCLUSIVE]) == TOO_FEW_SEEDS
    assert claim_verdict([REPRODUCED, INCONCLUSIVE]) == INCONCLUSIVE
    assert claim_verdict([SMALLER, UNDERPOWERED, INCONCLUSIVE, REPRODUCED]) == UNDERPOWERED
    assert claim_verdict([SMALLER, INCONCLUSIVE]) == INCONCLUSIVE
    assert claim_verdict([SMALLER, REPRODUCED]) == SMALLER
    assert claim_verdict([]) == TOO_FEW_SEEDS


def test_bad_claims_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("claims:\n  - {id: a, table: 2, text: t, beats: okd}\n")
    with pytest.raises(UserError, match="needs `over"):
        load_claims(p)
    p.write_text("claims:\n  - {id: a, table: 2, text: t, beats: okd, best: okd, over: [x]}\n")
    with pytest.raises(UserError, match="exactly one of"):
        load_claims(p)
    p.write_text("claims:\n  - {id: a, table: 2, text: t, best: okd, colour: red}\n")
    with pytest.raises(UserError, match="unknown keys"):
        load_claims(p)
    p.write_text("claims:\n  - {id: a, table: 2, text: t, beats: okd, over: [nope]}\n")
    bt = build_table(load_spec(2), choose_setting(load_spec(2), preset="smoke", out="results"), records=[])
    with pytest.raises(UserError, match="no row 'nope'"):
        check_claims(load_claims(p), {"2": bt})


# ---------------------------------------------------------------------------
# one claim of each verdict, from records with known per-seed Δ
# ---------------------------------------------------------------------------

def _rec(method, seed, miou):
    full = method_defaults(method) or {}
    return {"method": method, "backbone": "vit_tiny", "dataset": "synthetic", "preset": "smoke", "seed": seed,
            "created": "2024-01-01", "id": f"{method}-{seed}",
            "config": {"seed": seed, "preset": "smoke", "method": {"name": method, **full},
                       "dataset": {"name": "synthetic", "variant": "cityscapes"}},
            "metrics": {"semseg": {"miou": miou, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}}


def _shift(d):
    """mIoU whose Table 2 Δ against the baseline (mIoU 50, the rest equal) is d: (2d/50)/2 * 100 / 2 = d."""
    return 50.0 + 2 * d


DELTAS = {"okd": [2.0, 3.0, 4.0], "uw": [1.0, 2.0, 3.0, 6.0], "rlw": [5.0, 6.0], "stl": [20.0, 20.0, 20.0],
          "dwa": [1.0, 2.0, 12.0], "gradnorm": [0.0, 0.0, 0.0]}

CLAIMS = """
claims:
  - {id: okd-beats-baseline, table: 2, beats: okd, over: [baseline], text: "OKD-MTL beats the baseline"}
  - {id: okd-best, table: 2, best: okd, among: [okd, baseline, stl], text: "OKD-MTL is the best", where: "Table 2"}
  - {id: uw-beats-baseline, table: 2, beats: uw, over: [baseline], text: "UW beats the baseline"}
  - {id: rlw-beats-baseline, table: 2, beats: rlw, over: [baseline], text: "RLW beats the baseline"}
  - {id: dwa-beats-baseline, table: 2, beats: dwa, over: [baseline], text: "DWA beats the baseline"}
  - {id: okd-best-of-three, table: 2, best: okd, among: [okd, baseline, gradnorm], text: "OKD-MTL beats both"}
"""


@pytest.fixture
def claims_table(tmp_path):
    recs = [_rec("baseline", s, 50.0) for s in range(4)]
    for method, ds in DELTAS.items():
        recs += [_rec(method, s, _shift(d)) for s, d in enumerate(ds)]
    spec = load_spec(2)
    bt = build_table(spec, choose_setting(spec, preset="smoke", out="results"), records=recs)
    path = tmp_path / "claims.yaml"
    path.write_text(CLAIMS)
    return bt, load_claims(path)


def spec_delta(row: str) -> float:
    """Table 2's printed Δ of a row (against the paper's baseline)."""
    spec = load_spec(2)
    return spec.paper_values(spec.row(row), "vit_tiny")["delta"]


def test_one_claim_of_each_verdict(claims_table):
    bt, claims = claims_table
    res = {r.claim.id: r for r in check_claims(claims, {"2": bt})}
    assert {k: r.verdict for k, r in res.items()} == {
        "okd-beats-baseline": REPRODUCED,  # [2, 3, 4]: 3 ± 2.48, above 0
        "okd-best": CONTRADICTED,  # STL significantly beats OKD-MTL, also after Holm's correction
        "uw-beats-baseline": SMALLER,  # [1, 2, 3, 6]: 3 ± 3.44 contains 0, below the paper's +7.19
        "rlw-beats-baseline": TOO_FEW_SEEDS,  # two paired seeds
        "dwa-beats-baseline": UNDERPOWERED,  # [1, 2, 12]: 5 ± 15.1 contains 0 and reaches the paper's Δ
        "okd-best-of-three": UNDERPOWERED,  # two comparisons at p = 0.035 each: Holm adjusts both to 0.070
    }
    # Holm by hand, with the two-sided p-value of t on 2 df in closed form, p = 1 - t / sqrt(t² + 2):
    # okd vs baseline: Δ 2, 3, 4, t = 3 / (1 / sqrt 3); vs STL: Δ -10, -9.44, -8.89 (mIoU 54, 56, 58
    # against 90), t = 9.444 / (0.5556 / sqrt 3).  Holm: the smaller p doubled, the larger kept.
    def p2(t):
        return 1 - t / math.sqrt(t * t + 2)

    p_base = p2(3 / (1 / math.sqrt(3)))
    p_stl = p2((85 / 9) / ((5 / 9) / math.sqrt(3)))
    best = res["okd-best"]
    assert best.holm == pytest.approx([max(p_base, 2 * p_stl), 2 * p_stl], rel=1e-6)
    three = res["okd-best-of-three"]
    assert three.holm == pytest.approx([2 * p_base, 2 * p_base], rel=1e-6)
    # vs the baseline the paper's +9.19 lies above the corrected interval; vs GradNorm its Δ does not
    assert [d.verdict for d in three.details] == [SMALLER, UNDERPOWERED]
    # read with the Bonferroni 97.5% interval: 3 ± t(0.9875, 2) / sqrt 3 = 3 ± 6.2053 / 1.7321
    assert three.details[0].interval.half_width == pytest.approx(6.205347 / math.sqrt(3), rel=1e-5)
    assert "not significant after Holm's correction over 2 comparisons (adjusted p = 0.070)" in three.details[0].reason
    # seeds needed for the paper's effect e at the observed sd and level 0.05 / 2 (the family's): checked by
    # the power they give, 80% reached at n and not at n - 1
    from mtlbench.stats import paired_power

    d = three.details[1]
    e = d.paper_effect
    assert d.seeds_needed >= 2 and paired_power(e, d.sd_used, d.seeds_needed, 0.025) >= 0.8 > \
        paired_power(e, d.sd_used, d.seeds_needed - 1, 0.025)
    dwa = res["dwa-beats-baseline"].details[0]
    sd = statistics.stdev([1.0, 2.0, 12.0])
    assert dwa.sd_used == pytest.approx(sd) and dwa.paper_effect == spec_delta("dwa")
    assert paired_power(dwa.paper_effect, sd, dwa.seeds_needed, 0.05) >= 0.8 > \
        paired_power(dwa.paper_effect, sd, dwa.seeds_needed - 1, 0.05)
    assert res["dwa-beats-baseline"].seeds_needed == dwa.seeds_needed
    assert dwa.min_detectable == pytest.approx(min_detectable_effect(3, sd))
    okd = res["okd-beats-baseline"].comparisons[0]
    assert okd.summary.values == pytest.approx({0: 2.0, 1: 3.0, 2: 4.0})
    assert okd.summary.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert okd.paper == 9.19  # as printed: the baseline is the paper's reference
    assert [c.b.key for c in best.comparisons] == ["baseline", "stl"]
    assert best.verdicts == [REPRODUCED, CONTRADICTED]
    vs_stl = best.comparisons[1]
    spec = bt.spec
    m = lambda miou: {"semseg": {"miou": miou, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}  # noqa: E731
    assert vs_stl.summary.values[0] == pytest.approx(delta(m(54.0), m(90.0), spec.directions))  # -10
    assert vs_stl.summary.values[0] == pytest.approx(100 * (-36 / 90) / 2 / 2)
    # the paper's Δ of OKD-MTL against STL, recomputed from its printed metrics
    assert vs_stl.paper == pytest.approx(delta(spec.paper_results(spec.row("okd"), "vit_tiny"),
                                               spec.paper_results(spec.row("stl"), "vit_tiny"), spec.directions))
    uw = res["uw-beats-baseline"].comparisons[0].summary
    assert uw.half_width == pytest.approx(3.182446 * math.sqrt(14 / 3) / 2, rel=1e-6)
    assert res["rlw-beats-baseline"].comparisons[0].missing == {"rlw": [2, 3]}


def test_claims_report_text(claims_table):
    bt, claims = claims_table
    text = render_claims(check_claims(claims, {"2": bt}))
    lines = text.splitlines()
    assert "[REPRODUCED] OKD-MTL beats the baseline  ·  claim okd-beats-baseline" in lines
    assert "[CONTRADICTED] OKD-MTL is the best (Table 2)  ·  claim okd-best" in lines
    assert "[SMALLER THAN THE PAPER'S EFFECT] UW beats the baseline  ·  claim uw-beats-baseline" in lines
    dwa = next(ln for ln in lines if ln.endswith("claim dwa-beats-baseline"))
    assert dwa.startswith("[UNDERPOWERED] (about ") and "paired seeds needed) DWA beats the baseline" in dwa
    assert "[TOO FEW SEEDS] RLW beats the baseline  ·  claim rlw-beats-baseline" in lines
    i = lines.index("[REPRODUCED] OKD-MTL beats the baseline  ·  claim okd-beats-baseline")
    assert lines[i + 1].startswith("    OKD-MTL vs Baseline (MTL): mean +3.00 ± 2.48 (95% CI [+0.52, +5.48], "
                                   "3 paired seeds) -> reproduced")
    assert lines[i + 3] == "        per seed: 0: +2.00, 1: +3.00, 2: +4.00"
    assert lines[i + 4] == "        paper: +9.19"
    assert lines[i + 2].startswith("        why: the 95% interval [+0.52, +5.48] lies above 0 (MDE ")
    assert ("Summary: 1 reproduced, 1 contradicted, 1 smaller than the paper's effect, 2 underpowered, "
            "1 too few seeds (of 6 claims)") in lines
    assert "    (Holm's correction over 2 comparisons)" in lines
    # the missing runs of the claims' rows, as commands (RLW seeds 2 and 3, OKD-MTL and STL seed 3)
    miss = lines[lines.index("Table 2:") + 1:]
    assert ("  mtlbench run --method rlw --backbone vit_tiny --dataset synthetic --preset smoke --seed 2 "
            "--set dataset.variant=cityscapes") in miss
    assert sum("--method okd " in ln for ln in miss) == 1 and sum("--method rlw " in ln for ln in miss) == 2
    assert not any("--method uw " in ln for ln in miss)  # UW has a record for every seed


def test_cli_claims_on_fixture_records(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(FIXTURES)
    assert cli_main(["claims", "--table", "1", "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "== Table 1 on synthetic (variant nyuv2), preset smoke, seeds 0, 1" in out
    assert "[TOO FEW SEEDS] OKD-MTL (script profile) beats the MTL baseline" in out
    assert "OKD-MTL (script) vs Baseline (MTL): mean +8.87 ± 21.46" in out and "paper: +6.22" in out
    assert "--set method.profile=text" in out  # the text profile's runs are missing
    assert "claim t4-" not in out
    assert cli_main(["claims", "--preset", "smoke", "--override", "okd.profile=text"]) == 0
    out = capsys.readouterr().out
    assert "claim t4-afd-beats-baseline" in out and "Row overrides: okd.profile=text" in out
    assert cli_main(["claims", "--table", "3", "--preset", "smoke"]) == 2
    assert "no claim is about table 3" in capsys.readouterr().err
    assert cli_main(["claims", "--preset", "smoke", "--override", "foo.x=1"]) == 2
    assert "no row of tables" in capsys.readouterr().err
    assert cli_main(["claims", "--preset", "smoke", "--seeds", "0,,1"]) == 2
    assert cli_main(["claims", "--preset", "smoke", "--out", str(tmp_path / "none")]) == 2
