"""Tables 1-5: the specs against the paper, record matching, seed statistics, paired Δ, rendering."""
from __future__ import annotations

import io
import math
import shlex
from pathlib import Path

import pandas as pd
import pytest

from mtlbench.stats import min_detectable_effect

from mtlbench.cli import main as cli_main
from mtlbench.delta import delta
from mtlbench.errors import UserError
from mtlbench.tables import (RecordIndex, apply_overrides, available_tables, build_table, choose_setting,
                             load_spec, method_defaults, options_match, parse_overrides, parse_seeds, render)
from mtlbench import records as records_mod
from mtlbench.tables import options as options_mod
from mtlbench.tables import spec

FIXTURES = Path(__file__).parent / "fixtures" / "tables"
GOLDEN = FIXTURES / "table1_smoke.md"
T975 = {1: 12.706204736174694, 2: 4.302652729749462, 3: 3.1824463052837078}  # t_{0.975, df}


def _paper_results(spec, row, backbone):
    vals = spec.paper_values(row, backbone)
    out = {}
    for c in spec.columns:
        out.setdefault(c.task, {})[c.metric] = vals[c.key]
    return out, vals.get("delta")


# ---------------------------------------------------------------------------
# the specs
# ---------------------------------------------------------------------------

def test_all_five_tables_load():
    # the paper's five by number, then the tables beyond the paper by name (not the claims file)
    assert available_tables() == ["1", "2", "3", "4", "5", "axes", "extended"]
    assert load_spec("extended").id and spec.spec_path("extended").name == "extended.yaml"
    rows = {t: [r.label for r in load_spec(t).rows()] for t in available_tables()}
    eight = ["Single Task", "Baseline (MTL)", "DWA", "GradNorm", "UW", "RLW", "Cross Stitch", "KD-MTL"]
    assert rows["1"] == eight + ["OKD-MTL (text)", "OKD-MTL (script)"]
    assert rows["2"] == eight + ["OKD-MTL"]
    assert len(rows["3"]) == 9 and len(rows["4"]) == 6 and len(rows["5"]) == 10
    assert load_spec(3).backbones == ["deeplabv3", "deeplabv3_mtan"]
    with pytest.raises(UserError, match="--id 9: there is no table 9"):
        load_spec(9)
    with pytest.raises(UserError, match="--table 7: there is no table 7"):
        load_spec(7, flag="--table")


def test_table1_has_both_okd_profiles_with_the_papers_numbers():
    t1 = load_spec(1)
    text, script = t1.row("okd"), t1.row("okd_script")
    assert (text.method, text.overrides) == ("okd", {"profile": "text"})
    assert (script.method, script.overrides) == ("okd", {"profile": "script"})
    assert t1.paper_values(text, "vit_tiny") == t1.paper_values(script, "vit_tiny")
    assert t1.paper_values(text, "vit_tiny")["delta"] == 6.22


def test_columns_come_from_the_datasets_tasks():
    t1 = load_spec(1)
    by_key = {c.key: c for c in t1.columns}
    # label, direction and precision are MetricInfo data on the tasks
    assert (by_key["depth/abs_err"].label, by_key["depth/abs_err"].higher_is_better,
            by_key["depth/abs_err"].precision) == ("abs", False, 4)
    assert (by_key["semseg/miou"].header, by_key["semseg/miou"].precision) == ("mIoU ↑", 2)
    assert t1.directions["normal"]["mean"] is False and t1.directions["normal"]["within_30"] is True
    assert t1.task_metrics["semseg"] == ["miou", "pacc"]
    assert t1.paper_delta_recomputable and not load_spec(3).paper_delta_recomputable
    assert set(load_spec(2).task_metrics) == {"semseg", "depth"}


@pytest.mark.parametrize("table", ["1", "2"])
def test_paper_delta_recomputes_from_paper_metrics(table):
    """The transcribed numbers reproduce the printed Δ column (Eq. 4, all metrics of each task)."""
    spec = load_spec(table)
    ref, _ = _paper_results(spec, spec.row("baseline"), "vit_tiny")
    for row in spec.rows():
        res, printed = _paper_results(spec, row, "vit_tiny")
        d = delta(res, ref, spec.directions)
        if table == "1" and row.key == "cross_stitch":
            assert d == pytest.approx(0.547, abs=0.005)  # printed 0.58: the paper's slip (see the note)
        else:
            assert d == pytest.approx(printed, abs=0.01), row.label


def test_ablation_tables_agree_with_table1():
    t1, t4, t5 = load_spec(1), load_spec(4), load_spec(5)
    for k1, k4 in [("stl", "stl"), ("baseline", "baseline"), ("okd", "okd"), ("okd_script", "okd")]:
        p1, p4 = t1.paper_values(t1.row(k1), "vit_tiny"), t4.paper_values(t4.row(k4), "vit_tiny")
        assert {k: v for k, v in p1.items() if k in p4} == p4
    assert t5.paper_values(t5.row("afd_ours"), "vit_tiny")["delta"] == 6.22
    assert t5.paper_values(t5.row("T_0.1"), "vit_tiny")["delta"] == 6.22
    t3 = load_spec(3)
    assert t3.row("cross_stitch").paper["deeplabv3_mtan"] is None
    assert "deeplabv3_mtan" in t3.row("cross_stitch").unsupported


def test_spec_rows_name_registered_methods_and_valid_options():
    from mtlbench.config import build_dataclass, plugin_config_class
    from mtlbench.registry import BACKBONES

    for t in available_tables():
        spec = load_spec(t)
        for bb in spec.backbones:
            assert bb in BACKBONES, bb
        for row in spec.rows(hidden=True):
            arch = row.overrides.get("architecture")
            # the method's Config joined with its architecture's options (method.architecture)
            cls = plugin_config_class("method", row.method, {} if arch is None else {"architecture": arch})
            # raises a UserError for an unknown key or a value of the wrong type
            build_dataclass(cls, {"name": row.method, **row.overrides}, "method", {})
    assert load_spec(4).row("pretrained_afd").overrides == {"teachers": "pretrained", "otw": False}
    assert load_spec(4).row("okd_otw").overrides == {"afd": "none"}


# ---------------------------------------------------------------------------
# the setting
# ---------------------------------------------------------------------------

def test_choose_setting_rules():
    t1, t2 = load_spec(1), load_spec(2)
    s = choose_setting(t1)
    assert (s.dataset, s.preset, s.options, s.notes) == ("nyuv2", "paper", {}, [])
    s = choose_setting(t1, preset="quick")
    assert (s.dataset, s.preset, s.options) == ("synthetic", "quick", {"variant": "nyuv2"})
    assert s.describe() == "synthetic (variant nyuv2)"
    assert "the paper's numbers are for NYUv2" in s.notes[0]
    s = choose_setting(t2, preset="smoke")
    assert (s.dataset, s.options) == ("synthetic", {"variant": "cityscapes"})
    assert "Cityscapes" in s.notes[0]
    s = choose_setting(t1, dataset="synthetic")
    assert (s.dataset, s.preset, s.options) == ("synthetic", "quick", {"variant": "nyuv2"})
    s = choose_setting(t2, preset="paper")
    assert (s.dataset, s.preset) == ("cityscapes", "paper")
    with pytest.raises(UserError, match="unknown preset"):
        choose_setting(t1, preset="nope")


def test_stand_in_follows_the_dataset_hooks(monkeypatch):
    """No dataset name in the tables code: a plugin's family_options decide the stand-in."""
    from mtlbench.registry import DATASETS

    synth = DATASETS.get("synthetic")
    monkeypatch.setattr(synth, "family_options", {"nyuv2": {"variant": "nyuv2", "n_val": 7}})
    t1, t2 = load_spec(1), load_spec(2)
    assert choose_setting(t1, preset="smoke").options == {"variant": "nyuv2", "n_val": 7}
    # synthetic no longer stands in for cityscapes: --preset smoke builds on the table's own dataset
    assert choose_setting(t2, preset="smoke").dataset == "cityscapes"
    bt = build_table(t1, choose_setting(t1, preset="smoke", out="results"), records=[])
    assert "--set dataset.n_val=7" in bt.missing[0].command
    assert bt.missing[0].config.data["dataset"]["n_val"] == 7
    monkeypatch.setattr(synth, "needs_root", True)
    bt = build_table(t1, choose_setting(t1, preset="smoke", out="results"), records=[])
    assert "--dataset synthetic --data-root DIR" in bt.missing[0].command


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("2-4,0") == [0, 2, 3, 4]
    assert parse_seeds(None) is None
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds("a,b")
    with pytest.raises(UserError, match="empty entry"):
        parse_seeds("0,,1")
    with pytest.raises(UserError, match="empty entry"):
        parse_seeds("0,1,")
    with pytest.raises(UserError, match="empty entry"):
        parse_seeds("")
    with pytest.raises(UserError, match="'3-1' is not a seed or a range"):
        parse_seeds("3-1")


# ---------------------------------------------------------------------------
# matching, statistics and Δ
# ---------------------------------------------------------------------------

def _rec(method, seed, metrics, *, opts=None, variant="cityscapes", preset="smoke", created="2024-01-01",
         backbone="vit_tiny"):
    """A record as the trainer writes it: every option of its method, ``opts`` changed."""
    full = {**(method_defaults(method) or {}), **(opts or {})}
    return {"method": method, "backbone": backbone, "dataset": "synthetic", "preset": preset, "seed": seed,
            "created": created, "id": f"{method}-{seed}-{sorted((opts or {}).items())}",
            "config": {"seed": seed, "preset": preset, "method": {"name": method, **full},
                       "dataset": {"name": "synthetic", "variant": variant}},
            "metrics": metrics}


def _m(miou, pacc, abs_err, rel_err):
    return {"semseg": {"miou": miou, "pacc": pacc}, "depth": {"abs_err": abs_err, "rel_err": rel_err}}


def test_a_second_row_of_the_reference_runs_is_the_reference_too():
    """The extended table's "EW, hard sharing" names the baseline's own runs under another key:
    it is the reference (Δ +0.00, verdict reference, no MDE), not a row with no difference."""
    import yaml

    data = yaml.safe_load(spec.spec_path(2).read_text())
    data["sections"][-1]["rows"].append({"key": "ew_hard", "label": "EW, hard sharing", "method": "baseline"})
    data["sections"][-1]["rows"].append({"key": "ew_cs", "label": "EW, Cross-Stitch", "method": "cross_stitch"})
    sp = spec.parse_spec(data)
    setting = choose_setting(sp, preset="smoke", out="/nonexistent")
    records = [_rec("baseline", s, _m(40.0 + s, 80.0, 0.5, 0.2)) for s in (0, 1, 2)] + \
        [_rec("cross_stitch", s, _m(41.0 + 2 * s, 80.0, 0.5, 0.2)) for s in (0, 1, 2)]
    bt = build_table(sp, setting, records=records)
    ew, base, cs = (bt.cell(sp.row(k), "vit_tiny") for k in ("ew_hard", "baseline", "ew_cs"))
    assert base.verdict == ew.verdict == "reference" and ew.delta.mean == 0.0 and ew.mde is None
    assert cs.verdict not in (None, "reference") and cs.mde is not None


def test_mean_std_and_paired_delta_hand_computed():
    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")
    records = [
        _rec("baseline", 0, _m(40.0, 80.0, 0.5, 0.2)), _rec("baseline", 1, _m(44.0, 80.0, 0.7, 0.2)),
        _rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15)), _rec("okd", 1, _m(47.0, 84.0, 0.4, 0.17)),
        # not this table's: another variant, another preset, non-default okd options
        _rec("okd", 0, _m(1.0, 1.0, 9.0, 9.0), variant="nyuv2"),
        _rec("okd", 1, _m(1.0, 1.0, 9.0, 9.0), preset="quick"),
        _rec("okd", 0, _m(1.0, 1.0, 9.0, 9.0), opts={"otw": False}),
    ]
    bt = build_table(spec, setting, records=records)
    assert bt.seeds == [0, 1]
    okd, base = bt.cell(spec.row("okd"), "vit_tiny"), bt.cell(spec.row("baseline"), "vit_tiny")
    assert okd.seeds == [0, 1]
    assert okd.mean["semseg"]["miou"] == pytest.approx(46.0)
    assert okd.std["semseg"]["miou"] == pytest.approx(math.sqrt(2))  # sample std of 45, 47
    assert base.std["semseg"]["miou"] == pytest.approx(math.sqrt(8))  # 40, 44
    assert base.mean["depth"]["abs_err"] == pytest.approx(0.6)
    assert base.std["depth"]["abs_err"] == pytest.approx(math.sqrt(0.02))
    # Δ per seed against the baseline record of the same seed:
    #   seed 0: semseg (5/40 + 4/80) / 2 = 0.0875,    depth (0/0.5 + 0.05/0.2) / 2 = 0.125  -> 10.625
    #   seed 1: semseg (3/44 + 4/80) / 2 = 0.0590909, depth (0.3/0.7 + 0.03/0.2) / 2 = 0.2892857 -> 17.41883
    d0 = 100 * (0.0875 + 0.125) / 2
    d1 = 100 * ((3 / 44 + 4 / 80) / 2 + (0.3 / 0.7 + 0.03 / 0.2) / 2) / 2
    assert okd.delta.values == pytest.approx({0: d0, 1: d1})
    assert okd.delta.mean == pytest.approx(14.021916, abs=1e-5)  # the seed-mean Δ would be 14.88
    # each task's own paired Δ (which task the row's Δ comes from): the inner means above
    assert okd.task_delta["semseg"].values == pytest.approx({0: 8.75, 1: 100 * (3 / 44 + 4 / 80) / 2})
    assert okd.task_delta["depth"].values == pytest.approx({0: 12.5, 1: 100 * (0.3 / 0.7 + 0.03 / 0.2) / 2})
    frame = bt.frame().set_index("row")
    assert frame.loc["okd", "delta:semseg"] == pytest.approx((8.75 + 100 * (3 / 44 + 4 / 80) / 2) / 2)
    assert frame.loc["okd", "delta:depth:lo"] < frame.loc["okd", "delta:depth"] < frame.loc["okd", "delta:depth:hi"]
    # Eq. 4 is the mean over tasks, so the row's Δ is the mean of its tasks' Δ
    assert frame.loc["okd", "delta"] == pytest.approx(
        (frame.loc["okd", "delta:semseg"] + frame.loc["okd", "delta:depth"]) / 2)
    sd = abs(d1 - d0) / math.sqrt(2)
    assert okd.delta.half_width == pytest.approx(T975[1] * sd / math.sqrt(2))
    assert okd.verdict == "too few seeds"
    assert base.delta.mean == pytest.approx(0.0) and base.verdict == "reference"
    assert okd.paper_delta == 9.19
    # rows without records: no statistics, no Δ, one missing run per seed
    dwa = bt.cell(spec.row("dwa"), "vit_tiny")
    assert dwa.seeds == [] and dwa.delta is None and dwa.verdict is None
    assert sum(1 for j in bt.missing if j.method == "dwa") == 2
    # asking for a seed nobody ran: it is missing for every row, statistics use the seeds found
    bt3 = build_table(spec, setting, records=records, seeds=[0, 1, 2])
    assert bt3.cell(spec.row("okd"), "vit_tiny").mean["semseg"]["miou"] == pytest.approx(46.0)
    assert {j.seed for j in bt3.missing if j.method == "okd"} == {2}


def _shift(d):
    """Metrics whose Table 2 Δ against ``_m(50, 80, 0.5, 0.2)`` is exactly ``d``:
    mIoU 50 + 2d gives semseg (2d/50)/2 * 100 = 2d, depth 0, so Δ = (2d + 0) / 2 = d."""
    return _m(50.0 + 2 * d, 80.0, 0.5, 0.2)


VERDICT_ROWS = {  # row -> Δ per seed
    "dwa": [2.0, 3.0, 4.0],  # mean 3, sd 1, half 4.302653 / sqrt(3) = 2.4841: [0.52, 5.48] better
    "gradnorm": [-2.0, -3.0, -4.0],  # worse
    "uw": [1.0, 2.0, 3.0, 6.0],  # mean 3, half 3.182446 * sqrt(14/3) / 2 = 3.4374: contains 0
    "rlw": [5.0, 6.0],  # two paired seeds
}


def _verdict_records():
    recs = [_rec("baseline", s, _shift(0.0)) for s in range(4)]
    for method, ds in VERDICT_ROWS.items():
        recs += [_rec(method, s, _shift(d)) for s, d in enumerate(ds)]
    return recs


def test_paired_delta_verdicts():
    spec = load_spec(2)
    bt = build_table(spec, choose_setting(spec, preset="smoke", out="/nonexistent"), records=_verdict_records())
    cell = {k: bt.cell(spec.row(k), "vit_tiny") for k in VERDICT_ROWS}
    assert cell["dwa"].delta.values == pytest.approx({0: 2.0, 1: 3.0, 2: 4.0})
    assert cell["dwa"].delta.half_width == pytest.approx(T975[2] / math.sqrt(3))
    assert cell["dwa"].delta.lo == pytest.approx(3 - T975[2] / math.sqrt(3))
    assert cell["uw"].delta.half_width == pytest.approx(T975[3] * math.sqrt(14 / 3) / 2)
    assert {k: c.verdict for k, c in cell.items()} == {
        "dwa": "better", "gradnorm": "worse", "uw": "no significant difference", "rlw": "too few seeds"}
    # any two rows: DWA against GradNorm, per seed 2-(-2), 3-(-3), 4-(-4) in Δ-vs-GradNorm terms
    comp = bt.compare("dwa", "gradnorm")
    assert list(comp.summary.values) == [0, 1, 2] and comp.summary.verdict == "better"
    assert comp.summary.values[0] == pytest.approx(delta(_shift(2.0), _shift(-2.0), spec.directions))
    assert comp.missing == {"dwa": [3], "gradnorm": [3]}
    # the paper's Δ of DWA against GradNorm, recomputed from its printed metrics (Table 2 shows them all)
    p_dwa = _paper_results(spec, spec.row("dwa"), "vit_tiny")[0]
    p_gradnorm = _paper_results(spec, spec.row("gradnorm"), "vit_tiny")[0]
    assert comp.paper == pytest.approx(delta(p_dwa, p_gradnorm, spec.directions))
    text = "\n".join(comp.lines())
    assert "per seed: seed 0: +" in text and "better" in text and "95% CI" in text
    with pytest.raises(UserError, match="no row 'nope'"):
        bt.compare("dwa", "nope")


def test_paired_delta_from_fixture_records(monkeypatch):
    """Per-seed Δ of the fixture records equals Eq. 4 on the two records of each seed."""
    from mtlbench.runs import read_record

    bt = _fixture_table(monkeypatch)
    spec = bt.spec
    runs = FIXTURES / "results" / "runs" / "synthetic" / "vit_tiny"
    okd = {0: read_record(runs / "okd" / "seed0-d000000000.json"),
           1: read_record(runs / "okd" / "seed1-d000000001.json")}
    base = {0: read_record(runs / "baseline" / "seed0-b000000000.json"),
            1: read_record(runs / "baseline" / "seed1-b000000001.json")}
    c = bt.cell(spec.row("okd_script"), "vit_tiny")
    for s in (0, 1):
        assert c.delta.values[s] == pytest.approx(delta(okd[s]["metrics"], base[s]["metrics"], spec.directions))
    assert c.delta.mean == pytest.approx(sum(c.delta.values.values()) / 2)
    assert c.verdict == "too few seeds"
    # DWA has seed 0 only: one paired seed, no interval
    dwa = bt.cell(spec.row("dwa"), "vit_tiny")
    assert list(dwa.delta.values) == [0] and dwa.delta.half_width is None


def test_delta_against_stl_and_paper_delta_recomputed():
    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")
    records = [_rec("stl", 0, _m(50.0, 90.0, 0.5, 0.2)), _rec("baseline", 0, _m(45.0, 81.0, 0.55, 0.22))]
    bt = build_table(spec, setting, records=records, delta_ref="stl")
    assert bt.cell(spec.row("stl"), "vit_tiny").delta.mean == pytest.approx(0.0)
    # (-5/50 - 9/90) / 2 = -0.1 ; (-0.05/0.5 - 0.02/0.2) / 2 = -0.1  -> -10
    assert bt.cell(spec.row("baseline"), "vit_tiny").delta.mean == pytest.approx(-10.0)
    # the paper prints Δ vs the baseline; against STL it is recomputed from the printed metrics
    p = bt.cell(spec.row("baseline"), "vit_tiny").paper_delta
    stl_p, _ = _paper_results(spec, spec.row("stl"), "vit_tiny")
    base_p, _ = _paper_results(spec, spec.row("baseline"), "vit_tiny")
    assert p == pytest.approx(delta(base_p, stl_p, spec.directions))
    assert any("recomputed from the paper's printed metrics" in n for n in bt.notes)
    with pytest.raises(UserError, match="--delta-ref"):
        build_table(spec, setting, records=records, delta_ref="nope")


def test_option_matching_uses_defaults():
    full = {"name": "okd", **method_defaults("okd")}
    assert options_match(full, "okd", {})
    assert options_match({**full, "afd": "ours"}, "okd", {"afd": "ours"})
    assert not options_match({**full, "afd": "equal"}, "okd", {})
    assert not options_match({**full, "afd": "equal", "otw": False}, "okd", {"afd": "equal"})
    assert options_match({**full, "T": 1}, "okd", {"T": 1.0})
    assert options_match({**full, "profile": "text"}, "okd", {"profile": "text"})
    assert not options_match({**full, "profile": "text"}, "okd", {})
    # an unregistered method: only the overrides are checked
    assert options_match({"name": "zzz", "a": 1, "b": 2}, "zzz", {"a": 1})


def test_records_predating_an_option_serve_no_row_unless_it_is_backward_compatible(monkeypatch):
    """A record lacking okd's `profile` ran before profiles existed: it is neither profile."""
    full = {"name": "okd", **method_defaults("okd")}
    old = {k: v for k, v in full.items() if k not in ("profile", "otw_schedule")}
    assert options_mod.stale_options(old, "okd") == ["profile", "otw_schedule"]
    assert not options_match(old, "okd", {}) and not options_match(old, "okd", {"profile": "text"})
    spec = load_spec(2)
    rec = _rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15))
    rec["config"]["method"] = old
    bt = build_table(spec, choose_setting(spec, preset="smoke", out="/nonexistent"),
                     records=[rec, _rec("baseline", 0, _m(40.0, 80.0, 0.5, 0.2))])
    assert bt.cell(spec.row("okd"), "vit_tiny").seeds == []
    note = next(n for n in bt.notes if n.startswith("1 okd record of this setting lacks the options profile, otw_schedule"))
    assert note.endswith("the missing runs below train them again.")  # okd has no current record here
    fresh = _rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15), created="2025-01-01")
    bt2 = build_table(spec, choose_setting(spec, preset="smoke", out="/nonexistent"),
                      records=[rec, fresh, _rec("baseline", 0, _m(40.0, 80.0, 0.5, 0.2))], seeds=[0])
    assert bt2.cell(spec.row("okd"), "vit_tiny").seeds == [0]
    assert any(n.startswith("1 okd record") and n.endswith("has a newer record for each of its runs.")
               for n in bt2.notes)
    # declared backward compatible (option(..., hash_default=False)): a missing option is its default
    monkeypatch.setattr(records_mod, "_NEUTRAL_CACHE", {"okd": frozenset({"profile", "otw_schedule"})})
    assert options_match(old, "okd", {}) and not options_match(old, "okd", {"profile": "text"})


def test_neutral_options_read_the_config_declaration(monkeypatch):
    from dataclasses import dataclass

    from mtlbench.config import option
    from mtlbench.registry import METHODS, Entry

    @dataclass
    class Cfg:
        a: int = 1
        b: str = option("x", hash_default=False)

    class Tmp:
        Config = Cfg

    monkeypatch.setitem(METHODS._entries, "tmp_neutral", Entry("tmp_neutral", Tmp, "test", "", ()))
    monkeypatch.setattr(records_mod, "_NEUTRAL_CACHE", {})
    monkeypatch.setattr(records_mod, "_DEFAULTS_CACHE", {})
    # every weighting also has method.architecture, backward compatible at its default (hard)
    assert records_mod.neutral_options("tmp_neutral") == {"b", "architecture"}
    assert options_match({"name": "tmp_neutral", "a": 1}, "tmp_neutral", {})  # b added later: default
    assert not options_match({"name": "tmp_neutral", "b": "x"}, "tmp_neutral", {})  # a missing: stale


def test_records_with_other_train_settings_serve_no_row():
    """A quick-preset record trained in bf16 or for fewer epochs is not a run of the preset: it must
    not stand in for the row (the bf16 baseline records were once taken as the fp32 Baseline row)."""
    from mtlbench.records import setting_differences
    from mtlbench.tables.plan import JobBuilder

    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")
    preset_train = JobBuilder(setting).resolve("baseline", {}, "vit_tiny", 0).data["train"]
    assert preset_train["amp"] == "auto"

    def with_train(rec, **train):
        rec["config"]["train"] = {**preset_train, **train}
        return rec

    records = [
        with_train(_rec("baseline", 0, _m(40.0, 80.0, 0.5, 0.2))),
        with_train(_rec("baseline", 1, _m(44.0, 80.0, 0.7, 0.2))),
        # newer than the fp32 records: the old matcher took these as the row
        with_train(_rec("baseline", 0, _m(10.0, 10.0, 5.0, 2.0), created="2025-01-01"), amp="bf16"),
        with_train(_rec("baseline", 1, _m(10.0, 10.0, 5.0, 2.0), created="2025-01-01"),
                   epochs=preset_train["epochs"] + 1),
        # a runtime key (the device) differs: the same run
        with_train(_rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15)), device="cpu"),
        # a record from other code, with a train key this code lacks and without one it has: not compared
        _rec("okd", 1, _m(47.0, 84.0, 0.4, 0.17)),
    ]
    records[-1]["config"]["train"] = {k: v for k, v in preset_train.items() if k != "grad_clip"}
    records[-1]["config"]["train"]["some_future_key"] = 3
    bt = build_table(spec, setting, records=records)
    base = bt.cell(spec.row("baseline"), "vit_tiny")
    assert base.seeds == [0, 1] and base.mean["semseg"]["miou"] == pytest.approx(42.0)
    assert bt.cell(spec.row("okd"), "vit_tiny").seeds == [0, 1]
    note = next(n for n in bt.notes if n.startswith("2 baseline records of this setting differ"))
    assert "train.amp, train.epochs" in note and "they serve no row" in note
    assert not any("records match" in n for n in bt.notes)  # no row had two candidates left
    # the comparison itself: tuples and lists alike, ints and floats alike, runtime keys ignored
    cfg = {"train": {"lr": 1, "amp": "auto", "device": "cuda"}, "dataset": {"image_size": [96, 128]}}
    exp = {"train": {"lr": 1.0, "amp": "auto", "device": "cpu"}, "dataset": {"image_size": (96, 128)}}
    assert setting_differences(cfg, exp) == []
    assert setting_differences({**cfg, "train": {"lr": 2}}, exp) == ["train.lr=2 (the preset: 1.0)"]


def test_pairs_on_different_thread_counts_are_flagged():
    """Two runs of one seed on different CPU thread counts differ by reduction order alone (several Δ
    points here): the table notes it and a comparison lists the counts; equal or unknown counts: silent."""
    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")

    def on(rec, threads):
        if threads is not None:
            rec["device"] = {"type": "cpu", "threads": threads}
        return rec

    records = [on(_rec("baseline", s, _m(40.0 + s, 80.0, 0.5, 0.2)), 2) for s in range(3)]
    records += [on(_rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15)), 1), on(_rec("okd", 1, _m(45.0, 84.0, 0.5, 0.15)), 2),
                on(_rec("okd", 2, _m(45.0, 84.0, 0.5, 0.15)), 1),
                on(_rec("dwa", 0, _m(41.0, 80.0, 0.5, 0.2)), 2), on(_rec("dwa", 1, _m(41.0, 80.0, 0.5, 0.2)), None)]
    gpu = _rec("uw", 0, _m(41.0, 80.0, 0.5, 0.2))
    gpu["device"] = {"type": "cuda", "threads": 1}  # torch's CPU threads do not reduce a GPU run's sums
    records.append(gpu)
    bt = build_table(spec, setting, records=records)
    assert bt.compare("uw", "baseline").mixed_threads == {}
    note = next(n for n in bt.notes if n.startswith("Paired runs on different CPU thread counts"))
    assert "OKD-MTL seeds 0, 2." in note and "DWA" not in note
    comp = bt.compare("okd", "baseline")
    assert comp.mixed_threads == {0: (1, 2), 2: (1, 2)}
    assert any("thread counts differ (seed 0: 1 vs 2, seed 2: 1 vs 2)" in line for line in comp.lines())
    assert bt.compare("dwa", "baseline").mixed_threads == {}


def test_fixture_rows_match_their_records():
    index = RecordIndex.from_dir(FIXTURES / "results")
    assert index.problems == []
    t5 = load_spec(5)
    s5 = choose_setting(t5, preset="smoke", out=FIXTURES / "results")
    row = t5.row("afd_equal")
    assert list(index.find(row.method, row.overrides, "vit_tiny", s5)) == [0]
    t4 = load_spec(4)
    row = t4.row("okd_afd")
    found = index.find(row.method, row.overrides, "vit_tiny", s5)
    assert [r["config_hash"] for r in found[0]] == ["e000000000"]
    t2 = load_spec(2)
    s2 = choose_setting(t2, preset="smoke", out=FIXTURES / "results")
    assert list(index.find("baseline", {}, "vit_tiny", s2)) == [0]  # only the cityscapes-variant record


# ---------------------------------------------------------------------------
# row overrides
# ---------------------------------------------------------------------------

def test_parse_and_apply_overrides():
    assert parse_overrides(["okd.profile=script", "okd.T=0.05"]) == {
        "okd": {"profile": "script", "T": 0.05}}
    with pytest.raises(UserError, match="has no option 'nope'"):
        parse_overrides(["okd.nope=1"])
    with pytest.raises(UserError, match="METHOD.OPTION"):
        parse_overrides(["profile=script"])
    with pytest.raises(UserError, match="METHOD.OPTION=VALUE"):
        parse_overrides(["okd.profile"])
    t4, notes = apply_overrides(load_spec(4), parse_overrides(["okd.profile=text"]))
    assert t4.row("okd_afd").overrides == {"profile": "text", "otw": False}
    assert t4.row("okd").overrides == {"profile": "text"}
    assert t4.row("baseline").overrides == {}
    assert notes == ["Row overrides: okd.profile=text on every row of those methods."]
    # a row that sets the option itself keeps it
    t1, notes = apply_overrides(load_spec(1), {"okd": {"profile": "text"}})
    assert t1.row("okd_script").overrides == {"profile": "script"}
    assert any(n.startswith("OKD-MTL (script) keeps its own profile=script") for n in notes)
    with pytest.raises(UserError, match="no row of table 1 uses method 'kdd'"):
        apply_overrides(load_spec(1), {"kdd": {"x": 1}})


def test_override_changes_matching_and_commands():
    spec, _ = apply_overrides(load_spec(4), {"okd": {"profile": "text"}})
    setting = choose_setting(spec, preset="smoke", out="results")
    text = _rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15), opts={"otw": False, "profile": "text"}, variant="nyuv2")
    script = _rec("okd", 0, _m(45.0, 84.0, 0.5, 0.15), opts={"otw": False}, variant="nyuv2")
    bt = build_table(spec, setting, records=[text, script])
    assert bt.cell(spec.row("okd_afd"), "vit_tiny").per_seed == {0: text["metrics"]}
    job = next(j for j in bt.missing if "OKD-MTL-OTW" in j.labels)
    assert "--set method.profile=text --set method.afd=none" in job.command
    assert job.config.data["method"]["profile"] == "text"


# ---------------------------------------------------------------------------
# missing runs and their commands
# ---------------------------------------------------------------------------

def test_missing_run_commands_are_command_for_and_resolve_to_the_row(tmp_path):
    from mtlbench.config import resolve
    from mtlbench.cli.run import parse_run_argv
    from mtlbench.records import command_for

    spec = load_spec(4)
    setting = choose_setting(spec, preset="smoke", out=tmp_path)
    bt = build_table(spec, setting, records=[])
    assert len(bt.missing) == 6
    like = resolve(preset="smoke", flags=[("seed", 0, "--seed")]).data
    by_label = {j.labels[0]: j for j in bt.missing}
    job = by_label["MTL-pretrained-AFD"]
    assert job.command == command_for(like, "okd", {"teachers": "pretrained", "otw": False}, out=tmp_path)
    assert "--set method.teachers=pretrained --set method.otw=false" in job.command
    args, cfg = parse_run_argv(shlex.split(job.command)[1:])
    assert cfg.data["method"]["teachers"] == "pretrained" and cfg.data["method"]["otw"] is False
    assert cfg.data["dataset"]["name"] == "synthetic" and cfg.data["preset"] == "smoke"
    assert Path(args.out) == tmp_path
    # the job carries the very config its command resolves to
    for j in bt.missing:
        assert j.config.hash == parse_run_argv(shlex.split(j.command)[1:])[1].hash, j.describe()
    # the stl run that pretrained teachers load comes first
    assert bt.missing.index(by_label["STL"]) < bt.missing.index(job)
    assert job.deps == [by_label["STL"].key]


def test_commands_carry_the_variant_and_the_data_root(tmp_path):
    t2 = load_spec(2)
    bt = build_table(t2, choose_setting(t2, preset="smoke", out="results"), records=[])
    cmd = bt.missing[0].command
    assert cmd == ("mtlbench run --method stl --backbone vit_tiny --dataset synthetic --preset smoke "
                   "--seed 0 --set dataset.variant=cityscapes")
    # the table's own dataset: the data root goes in, or a DIR placeholder and nothing is claimed
    data = tmp_path / "nyu"
    t1 = load_spec(1)
    bt = build_table(t1, choose_setting(t1, data_root=str(data), out="results"), records=[])
    assert f"--data-root {data}" in bt.missing[0].command and "--preset paper" in bt.missing[0].command
    bt = build_table(t1, choose_setting(t1, out="results"), records=[])
    assert "--dataset nyuv2 --data-root DIR" in bt.missing[0].command


def test_unsupported_cells_have_no_run():
    spec = load_spec(3)
    bt = build_table(spec, choose_setting(spec, preset="smoke", out="results"), records=[])
    assert not any(j.method == "cross_stitch" and j.backbone == "deeplabv3_mtan" for j in bt.jobs)
    assert any(j.method == "cross_stitch" and j.backbone == "deeplabv3" for j in bt.jobs)
    md = render(bt, "md")
    cs = next(line for line in md.splitlines() if line.startswith("| Cross Stitch"))
    cells = [c.strip() for c in cs.strip().strip("|").split("|")]
    assert cells[-9:] == ["-"] * 9  # seeds, six metrics, Δ, verdict on deeplabv3_mtan
    assert cells[1] == "0/1"


def test_unreadable_records_are_reported_with_path_and_problem(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "results", tmp_path / "results")
    bad = tmp_path / "results" / "runs" / "synthetic" / "vit_tiny" / "uw" / "seed0-0123456789.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"config": ')
    notrec = bad.with_name("seed1-0123456789.json")
    notrec.write_text("[1, 2]")
    spec = load_spec(1)
    bt = build_table(spec, choose_setting(spec, preset="smoke", out=tmp_path / "results"))
    assert [(p.path, "not valid JSON" in p.problem) for p in bt.problems] == [(bad, True), (notrec, False)]
    assert "is not an mtlbench run record" in bt.problems[1].problem
    notes = [n for n in bt.notes if n.startswith("Unreadable record")]
    assert len(notes) == 2 and str(bad) in notes[0] and "not valid JSON" in notes[0]


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------

def _fixture_table(monkeypatch, table=1, **kw):
    monkeypatch.chdir(FIXTURES)  # records under ./results: commands carry no --out
    spec = load_spec(table)
    return build_table(spec, choose_setting(spec, preset="smoke", out="results"), **kw)


def test_golden_markdown_table1(monkeypatch):
    bt = _fixture_table(monkeypatch)
    assert bt.seeds == [0, 1]
    assert render(bt, "md") == GOLDEN.read_text()


def _interval_records():
    """Table 2 records where DWA is better than the baseline on three seeds (Δ 2, 3, 4)."""
    return [r for r in _verdict_records() if r["method"] in ("baseline", "dwa")]


def test_markdown_csv_latex_rich_carry_the_interval():
    spec = load_spec(2)
    bt = build_table(spec, choose_setting(spec, preset="smoke", out="results"), records=_interval_records())
    half = T975[2] / math.sqrt(3)  # 2.4841
    cell = f"+3.00 ± {half:.2f}"
    md = render(bt, "md")
    dwa_line = next(line for line in md.splitlines() if line.startswith("| DWA"))
    assert f"{cell} [7.17]" in dwa_line and "| better" in dwa_line
    assert "95% Student-t interval" in md
    tex = render(bt, "latex")
    mde = min_detectable_effect(3, 1.0)  # sd of Δ 2, 3, 4: 1; no noise floor measured
    assert f"|  {mde:.2f} | better" in dwa_line
    assert rf"+3.00 $\pm$ {half:.2f} [7.17] & {mde:.2f} & better \\" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex
    rich = render(bt, "rich")
    assert cell in rich and "better" in rich
    df = pd.read_csv(io.StringIO(render(bt, "csv")))
    dwa = df[df["row"] == "dwa"].iloc[0]
    assert dwa["delta"] == pytest.approx(3.0)
    assert (dwa["delta_lo"], dwa["delta_hi"]) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert dwa["delta_n"] == 3 and dwa["verdict"] == "better"
    assert dwa["mde"] == pytest.approx(mde) and dwa["mde_basis"] == "observed"
    assert [dwa[f"delta_seed{s}"] for s in range(3)] == pytest.approx([2.0, 3.0, 4.0])
    assert math.isnan(dwa["delta_seed3"])  # seed 3: the baseline only
    assert df[df["row"] == "baseline"].iloc[0]["verdict"] == "reference"


def test_csv_latex_rich_and_no_paper(monkeypatch):
    bt = _fixture_table(monkeypatch)
    df = pd.read_csv(io.StringIO(render(bt, "csv")))
    okd = df[df["row"] == "okd_script"].iloc[0]
    assert okd["semseg/miou"] == pytest.approx(48.0)
    assert okd["semseg/miou:std"] == pytest.approx(math.sqrt(2))
    assert okd["semseg/miou:paper"] == pytest.approx(51.99)
    assert okd["n_seeds"] == 2 and okd["delta:paper"] == pytest.approx(6.22)
    assert okd["delta_n"] == 2 and okd["verdict"] == "too few seeds"
    assert math.isnan(df[df["row"] == "uw"].iloc[0]["semseg/miou"])
    assert "semseg/miou:paper" not in pd.read_csv(io.StringIO(render(bt, "csv", paper=False))).columns
    tex = render(bt, "latex")
    assert r"\toprule" in tex and r"OKD-MTL (script) & 2/2 & 48.00 $\pm$ 1.41 [51.99]" in tex
    assert "mtlbench run --method gradnorm" in tex  # missing runs as comments
    rich = render(bt, "rich")
    assert "OKD-MTL (script)" in rich and "[51.99]" in rich and "Missing runs (13)" in rich
    md = render(bt, "md", paper=False)
    assert "[51.99]" not in md and "48.00 ± 1.41" in md


def test_multi_section_and_multi_backbone_tables(monkeypatch):
    bt = _fixture_table(monkeypatch, table=5)
    md = render(bt, "md")
    assert "**AFD variants**" in md and "**OTW temperature**" in md
    # AFD-ours and T = 0.10 are one configuration: one run per seed serves both rows
    t5 = load_spec(5)
    ours = [j for j in bt.jobs if j.method == "okd" and not j.overrides]
    assert [(j.seed, j.labels) for j in ours] == [(0, ["AFD-ours", "T = 0.10"]), (1, ["AFD-ours", "T = 0.10"])]
    a, b = bt.cell(t5.row("afd_ours"), "vit_tiny"), bt.cell(t5.row("T_0.1"), "vit_tiny")
    assert a.seeds == b.seeds == [0, 1] and a.delta.values == b.delta.values
    afd_eq = bt.cell(load_spec(5).row("afd_equal"), "vit_tiny")
    assert afd_eq.seeds == [0] and afd_eq.delta.mean is not None
    tex5 = render(bt, "latex")
    assert r"\multirow[t]{5}{*}{AFD variants}" in tex5
    md3 = render(_fixture_table(monkeypatch, table=3), "md")
    assert "deeplabv3: mIoU ↑" in md3 and "deeplabv3_mtan: Δ ↑" in md3 and "deeplabv3_mtan: verdict" in md3
    assert "cannot be recomputed from its displayed columns" in md3
    tex3 = render(_fixture_table(monkeypatch, table=3), "latex")
    assert r"\multicolumn{10}{c}{deeplabv3\_mtan}" in tex3  # seeds, 6 metrics, Δ, MDE, verdict


def test_cli_table(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(FIXTURES)
    save = tmp_path / "new" / "folder" / "t1.md"  # missing folders are created
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--format", "md", "--save", str(save)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(GOLDEN.read_text())
    assert save.read_text() == GOLDEN.read_text()
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--seeds", "0", "--format", "csv"]) == 0
    assert "okd" in capsys.readouterr().out
    assert cli_main(["table", "--table", "7"]) == 2
    assert "--table 7: there is no table 7" in capsys.readouterr().err
    assert cli_main(["table", "--id", "1", "--seeds", "x"]) == 2
    assert cli_main(["table", "--id", "1", "--seeds", "0,,1"]) == 2
    assert "empty entry" in capsys.readouterr().err
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--out", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
    # compare two rows
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--compare", "okd_script,baseline"]) == 0
    out = capsys.readouterr().out
    assert "OKD-MTL (script) vs Baseline (MTL)" in out and "per seed: seed 0: " in out
    assert "too few seeds" in out and "paper: +6.22" in out
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--compare", "okd"]) == 2
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--compare", "okd,nope"]) == 2
    assert "no row 'nope'" in capsys.readouterr().err
    # overrides: the text profile everywhere in Table 4 (no fixture records are text runs)
    assert cli_main(["table", "--id", "4", "--preset", "smoke", "--format", "md",
                     "--override", "okd.profile=text"]) == 0
    out = capsys.readouterr().out
    assert "Row overrides: okd.profile=text" in out and "--set method.profile=text" in out
    assert cli_main(["table", "--id", "4", "--override", "okd.nope=1"]) == 2


def test_zero_in_the_reference_gives_one_note_not_a_crash():
    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")
    records = [_rec("baseline", 0, _m(0.0, 80.0, 0.5, 0.2)), _rec("okd", 0, _m(5.0, 84.0, 0.5, 0.15))]
    bt = build_table(spec, setting, records=records)
    assert bt.cell(spec.row("okd"), "vit_tiny").delta.n == 0
    assert bt.cell(spec.row("okd"), "vit_tiny").verdict is None
    notes = [n for n in bt.notes if n.startswith("Δ is undefined")]
    assert len(notes) == 1 and notes[0].startswith("Δ is undefined for Baseline (MTL), OKD-MTL on seed 0:")
