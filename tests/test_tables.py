"""Tables 1-5: the specs against the paper, record matching, seed statistics, Δ, rendering."""
from __future__ import annotations

import io
import math
import shlex
from pathlib import Path

import pandas as pd
import pytest

from mtlbench.cli import main as cli_main
from mtlbench.delta import delta
from mtlbench.errors import UserError
from mtlbench.tables.build import (RecordIndex, available_tables, build_table, choose_setting, load_spec,
                                   options_match, parse_seeds, render)

FIXTURES = Path(__file__).parent / "fixtures" / "tables"
GOLDEN = FIXTURES / "table1_smoke.md"


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
    assert available_tables() == ["1", "2", "3", "4", "5"]
    rows = {t: [r.label for r in load_spec(t).rows()] for t in available_tables()}
    nine = ["Single Task", "Baseline (MTL)", "DWA", "GradNorm", "UW", "RLW", "Cross Stitch", "KD-MTL", "OKD-MTL"]
    assert rows["1"] == rows["2"] == nine
    assert len(rows["3"]) == 9 and len(rows["4"]) == 6 and len(rows["5"]) == 10
    assert load_spec(3).backbones == ["deeplabv3", "deeplabv3_mtan"]
    with pytest.raises(UserError, match="no table 9"):
        load_spec(9)


@pytest.mark.parametrize("table", ["1", "2"])
def test_paper_delta_recomputes_from_paper_metrics(table):
    """The transcribed numbers reproduce the printed Δ column (Eq. 4, all metrics of each task)."""
    spec = load_spec(table)
    ref, _ = _paper_results(spec, spec.row("baseline"), "vit_tiny")
    for row in spec.rows():
        res, printed = _paper_results(spec, row, "vit_tiny")
        d = delta(res, ref)
        if table == "1" and row.key == "cross_stitch":
            assert d == pytest.approx(0.547, abs=0.005)  # printed 0.58: the paper's slip (see the note)
        else:
            assert d == pytest.approx(printed, abs=0.01), row.label


def test_ablation_tables_agree_with_table1():
    t1, t4, t5 = load_spec(1), load_spec(4), load_spec(5)
    for k1, k4 in [("stl", "stl"), ("baseline", "baseline"), ("okd", "okd")]:
        p1, p4 = t1.paper_values(t1.row(k1), "vit_tiny"), t4.paper_values(t4.row(k4), "vit_tiny")
        assert {k: v for k, v in p1.items() if k in p4} == p4
    assert t5.paper_values(t5.row("afd_ours"), "vit_tiny")["delta"] == 6.22
    assert t5.paper_values(t5.row("T_0.1"), "vit_tiny")["delta"] == 6.22
    t3 = load_spec(3)
    assert t3.row("cross_stitch").paper["deeplabv3_mtan"] is None
    assert "deeplabv3_mtan" in t3.row("cross_stitch").unsupported


def test_spec_rows_name_registered_methods_and_valid_options():
    from mtlbench.config import build_dataclass
    from mtlbench.registry import BACKBONES, METHODS

    for t in available_tables():
        spec = load_spec(t)
        for bb in spec.backbones:
            assert bb in BACKBONES, bb
        for row in spec.rows(hidden=True):
            cls = METHODS.get(row.method).Config
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
    assert (s.dataset, s.preset, s.variant, s.notes) == ("nyuv2", "paper", None, [])
    s = choose_setting(t1, preset="quick")
    assert (s.dataset, s.preset, s.variant) == ("synthetic", "quick", "nyuv2")
    assert "the paper's numbers are for NYUv2" in s.notes[0]
    s = choose_setting(t2, preset="smoke")
    assert (s.dataset, s.variant) == ("synthetic", "cityscapes")
    assert "Cityscapes" in s.notes[0]
    s = choose_setting(t1, dataset="synthetic")
    assert (s.dataset, s.preset, s.variant) == ("synthetic", "quick", "nyuv2")
    s = choose_setting(t2, preset="paper")
    assert (s.dataset, s.preset) == ("cityscapes", "paper")
    with pytest.raises(UserError, match="unknown preset"):
        choose_setting(t1, preset="nope")


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("2-4,0") == [0, 2, 3, 4]
    assert parse_seeds(None) is None
    with pytest.raises(UserError, match="--seeds"):
        parse_seeds("a,b")


# ---------------------------------------------------------------------------
# matching, statistics and Δ
# ---------------------------------------------------------------------------

def _rec(method, seed, metrics, *, opts=None, variant="cityscapes", preset="smoke", created="2024-01-01"):
    return {"method": method, "backbone": "vit_tiny", "dataset": "synthetic", "preset": preset, "seed": seed,
            "created": created, "id": f"{method}-{seed}",
            "config": {"seed": seed, "preset": preset, "method": {"name": method, **(opts or {})},
                       "dataset": {"name": "synthetic", "variant": variant}},
            "metrics": metrics}


def _m(miou, pacc, abs_err, rel_err):
    return {"semseg": {"miou": miou, "pacc": pacc}, "depth": {"abs_err": abs_err, "rel_err": rel_err}}


def test_mean_std_and_delta_from_seed_means_hand_computed():
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
    # Δ from the seed means (46, 84, 0.45, 0.16) against (42, 80, 0.6, 0.2):
    #   semseg (4/42 + 4/80) / 2 = 0.0726190, depth (0.15/0.6 + 0.04/0.2) / 2 = 0.225
    #   Δ = 100 * (0.0726190 + 0.225) / 2 = 14.8810 (the mean of per-seed Δs would be 14.02)
    assert okd.delta == pytest.approx(14.880952, abs=1e-5)
    assert base.delta == pytest.approx(0.0)
    assert okd.paper_delta == 9.19
    # rows without records: no statistics, no Δ, one missing run per seed
    dwa = bt.cell(spec.row("dwa"), "vit_tiny")
    assert dwa.seeds == [] and dwa.delta is None
    assert sum(1 for j in bt.missing if j.method == "dwa") == 2
    # asking for a seed nobody ran: it is missing for every row, statistics use the seeds found
    bt3 = build_table(spec, setting, records=records, seeds=[0, 1, 2])
    assert bt3.cell(spec.row("okd"), "vit_tiny").mean["semseg"]["miou"] == pytest.approx(46.0)
    assert {j.seed for j in bt3.missing if j.method == "okd"} == {2}


def test_delta_against_stl_and_paper_delta_recomputed():
    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")
    records = [_rec("stl", 0, _m(50.0, 90.0, 0.5, 0.2)), _rec("baseline", 0, _m(45.0, 81.0, 0.55, 0.22))]
    bt = build_table(spec, setting, records=records, delta_ref="stl")
    assert bt.cell(spec.row("stl"), "vit_tiny").delta == pytest.approx(0.0)
    # (-5/50 - 9/90) / 2 = -0.1 ; (-0.05/0.5 - 0.02/0.2) / 2 = -0.1  -> -10
    assert bt.cell(spec.row("baseline"), "vit_tiny").delta == pytest.approx(-10.0)
    # the paper prints Δ vs the baseline; against STL it is recomputed from the printed metrics
    p = bt.cell(spec.row("baseline"), "vit_tiny").paper_delta
    stl_p, _ = _paper_results(spec, spec.row("stl"), "vit_tiny")
    base_p, _ = _paper_results(spec, spec.row("baseline"), "vit_tiny")
    assert p == pytest.approx(delta(base_p, stl_p))
    assert any("recomputed from the paper's printed metrics" in n for n in bt.notes)
    with pytest.raises(UserError, match="--delta-ref"):
        build_table(spec, setting, records=records, delta_ref="nope")


def test_option_matching_uses_defaults():
    # okd's defaults: afd ours, otw true, ...; a record lacking an option counts as its default
    assert options_match({"name": "okd"}, "okd", {})
    assert options_match({"name": "okd", "afd": "ours"}, "okd", {"afd": "ours"})
    assert not options_match({"name": "okd", "afd": "equal"}, "okd", {})
    assert not options_match({"name": "okd", "afd": "equal", "otw": False}, "okd", {"afd": "equal"})
    assert options_match({"name": "okd", "T": 1}, "okd", {"T": 1.0})
    # an unregistered method: only the overrides are checked
    assert options_match({"name": "zzz", "a": 1, "b": 2}, "zzz", {"a": 1})


def test_fixture_rows_match_their_records():
    index = RecordIndex.from_dir(FIXTURES / "results")
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
# missing runs and their commands
# ---------------------------------------------------------------------------

def test_missing_run_commands_are_command_for_and_resolve_to_the_row(tmp_path):
    from mtlbench.config import resolve
    from mtlbench.runs import command_for
    from mtlbench.sweep import parse_run_argv

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
    assert cs.rstrip(" |").endswith("| - | - | - | - | - | - | - | -")


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


def test_csv_latex_rich_and_no_paper(monkeypatch):
    bt = _fixture_table(monkeypatch)
    df = pd.read_csv(io.StringIO(render(bt, "csv")))
    okd = df[df["row"] == "okd"].iloc[0]
    assert okd["semseg/miou"] == pytest.approx(48.0)
    assert okd["semseg/miou:std"] == pytest.approx(math.sqrt(2))
    assert okd["semseg/miou:paper"] == pytest.approx(51.99)
    assert okd["n_seeds"] == 2 and okd["delta:paper"] == pytest.approx(6.22)
    assert math.isnan(df[df["row"] == "uw"].iloc[0]["semseg/miou"])
    assert "semseg/miou:paper" not in pd.read_csv(io.StringIO(render(bt, "csv", paper=False))).columns
    tex = render(bt, "latex")
    assert r"\toprule" in tex and r"OKD-MTL & 2/2 & 48.00 $\pm$ 1.41 [51.99]" in tex
    assert "mtlbench run --method gradnorm" in tex  # missing runs as comments
    rich = render(bt, "rich")
    assert "OKD-MTL" in rich and "[51.99]" in rich and "Missing runs (11)" in rich
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
    assert a.seeds == b.seeds == [0, 1] and a.delta == b.delta
    afd_eq = bt.cell(load_spec(5).row("afd_equal"), "vit_tiny")
    assert afd_eq.seeds == [0] and afd_eq.delta is not None
    md3 = render(_fixture_table(monkeypatch, table=3), "md")
    assert "deeplabv3: mIoU ↑" in md3 and "deeplabv3_mtan: Δ ↑" in md3
    assert "cannot be recomputed from its displayed columns" in md3


def test_cli_table(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(FIXTURES)
    save = tmp_path / "t1.md"
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--format", "md", "--save", str(save)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(GOLDEN.read_text())
    assert save.read_text() == GOLDEN.read_text()
    assert cli_main(["table", "--id", "1", "--preset", "smoke", "--seeds", "0", "--format", "csv"]) == 0
    assert "okd" in capsys.readouterr().out
    assert cli_main(["table", "--id", "7"]) == 2
    assert "no table 7" in capsys.readouterr().err
    assert cli_main(["table", "--id", "1", "--seeds", "x"]) == 2


def test_zero_in_the_reference_gives_one_note_not_a_crash():
    spec = load_spec(2)
    setting = choose_setting(spec, preset="smoke", out="/nonexistent")
    records = [_rec("baseline", 0, _m(0.0, 80.0, 0.5, 0.2)), _rec("okd", 0, _m(5.0, 84.0, 0.5, 0.15))]
    bt = build_table(spec, setting, records=records)
    assert bt.cell(spec.row("okd"), "vit_tiny").delta is None
    notes = [n for n in bt.notes if n.startswith("Δ is undefined")]
    assert len(notes) == 1 and notes[0].startswith("Δ is undefined for Baseline (MTL), OKD-MTL:")
