"""What a table says about its own limits (issue 22): the input-blind reference row, degenerate
cells, the minimum detectable effect, and pairs of runs that are not on equal footing."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from mtlbench.reference import reference_for_dataset
from mtlbench.registry import DATASETS
from mtlbench.tables import build_table, choose_setting, load_spec, render
from mtlbench.tables.plan import JobBuilder


def _setting():
    spec = load_spec(2)  # Cityscapes-like: semseg (mIoU) and depth (abs err)
    return spec, choose_setting(spec, preset="smoke", out="/nonexistent")


def _reference(setting):
    cfg = JobBuilder(setting).resolve("baseline", {}, "vit_tiny", 0)
    ds = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
    return reference_for_dataset(ds), ds.tasks()


def _record(setting, method, seed, metrics, device=None):
    job = JobBuilder(setting).build(method, {}, "vit_tiny", seed)
    cfg = job.config.data
    rec = {"method": method, "backbone": "vit_tiny", "dataset": cfg["dataset"]["name"], "preset": cfg["preset"],
           "seed": seed, "created": "2025-01-01", "config": cfg, "id": f"{method}-{seed}", "metrics": metrics}
    if device is not None:
        rec["device"] = device
    return rec


def test_reference_row_and_degenerate_flags_on_both_sides_of_the_threshold():
    spec, setting = _setting()
    ref, tasks = _reference(setting)
    q_depth = min(v["abs_err"] for v in ref.metrics["depth"].values())  # the stronger variant
    q_miou = max(v["miou"] for v in ref.metrics["semseg"].values())

    def m(depth_gain, miou_gain):
        # abs err the fraction depth_gain below the reference's; mIoU the fraction miou_gain above
        return {"semseg": {"miou": q_miou * (1 + miou_gain), "pacc": 80.0},
                "depth": {"abs_err": q_depth * (1 - depth_gain), "rel_err": 0.2}}

    recs = [_record(setting, "baseline", s, m(0.5, 1.0)) for s in range(3)]  # learned everything
    # DWA: depth 4% better than the reference in seeds 0 and 1 (degenerate at 5%), 6% in seed 2
    recs += [_record(setting, "dwa", s, m(g, 1.0)) for s, g in enumerate([0.04, 0.04, 0.06])]
    # UW: mIoU no better than the majority class in seed 0 only
    recs += [_record(setting, "uw", s, m(0.5, g)) for s, g in enumerate([0.0, 0.2, 0.2])]
    bt = build_table(spec, setting, records=recs)
    assert bt.blind is not None and set(bt.tasks) == {"semseg", "depth"}
    assert bt.cell(spec.row("baseline"), "vit_tiny").degenerate == {}
    assert bt.cell(spec.row("dwa"), "vit_tiny").degenerate == {"depth": [0, 1]}
    assert bt.cell(spec.row("uw"), "vit_tiny").degenerate == {"semseg": [0]}
    # the row shows each task's stronger variant on the task's primary metric, with the same metric code
    blind = bt.blind_values()
    assert blind["depth"]["abs_err"] == pytest.approx(q_depth) and blind["semseg"]["miou"] == pytest.approx(q_miou)
    md = render(bt, "md")
    ref_line = next(line for line in md.splitlines() if line.startswith("| Input-blind reference"))
    assert f"{q_depth:.4f}" in ref_line and ref_line.rstrip().endswith("| –         |")  # no verdict
    dwa_line = next(line for line in md.splitlines() if line.startswith("| DWA"))
    assert "†2" in dwa_line.split("|")[5]  # the abs-err column (Method, seeds, mIoU, pAcc, abs)
    uw_line = next(line for line in md.splitlines() if line.startswith("| UW"))
    assert "†1" in uw_line.split("|")[3]  # mIoU
    assert "depth in 2, semseg in 1 run-seeds of the table" in md
    df = pd.read_csv(io.StringIO(render(bt, "csv")))
    row = df[df["row"] == "input_blind_reference"].iloc[0]
    abs_col = next(c.key for c in spec.columns if (c.task, c.metric) == ("depth", "abs_err"))
    assert row[abs_col] == pytest.approx(q_depth) and pd.isna(row["delta"])
    assert df[df["row"] == "dwa"].iloc[0]["degenerate:depth"] == 2
    assert r"$^\dagger$2" in render(bt, "latex")
    # off: no row, no flags
    bare = build_table(spec, setting, records=recs, references=False)
    assert bare.blind is None and not any(c.degenerate for c in bare.cells.values())
    assert "Input-blind reference" not in render(bare, "md")


def test_a_dataset_that_cannot_be_opened_has_no_reference_row_and_says_why():
    spec = load_spec(1)
    setting = choose_setting(spec, out="/nonexistent")  # NYUv2 itself, no --data-root
    bt = build_table(spec, setting, records=[])
    assert bt.blind is None and "input-blind reference needs the dataset's files" in bt.blind_note
    assert "No input-blind reference row: the input-blind reference needs" in render(bt, "md")


CPU = {"type": "cpu", "threads": 2, "amp": "fp32"}


def test_pairs_on_another_processor_or_precision_are_flagged_and_old_records_labelled():
    spec, setting = _setting()
    m = {"semseg": {"miou": 40.0, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}
    amd = {**CPU, "processor": "AMD EPYC", "cpu_capability": "AVX512"}
    intel = {**CPU, "processor": "Intel Xeon", "cpu_capability": "AVX512"}
    recs = [_record(setting, "baseline", s, m, amd) for s in range(3)]
    recs += [_record(setting, "dwa", 0, m, intel), _record(setting, "dwa", 1, m, amd),
             _record(setting, "dwa", 2, m, {**amd, "cpu_capability": "AVX2"})]
    recs += [_record(setting, "uw", 0, m, {**amd, "amp": "bf16"}), _record(setting, "uw", 1, m, amd)]
    recs += [_record(setting, "rlw", s, m, CPU) for s in range(3)]  # before the processor was recorded
    gpu = {"type": "cuda", "amp": "fp32", "processor": "x", "cpu_capability": "AVX2"}
    recs += [_record(setting, "gradnorm", 0, m, gpu)]
    bt = build_table(spec, setting, records=recs, references=False)
    dwa = bt.compare("dwa", "baseline")
    assert dwa.mixed_footing == {0: ["processor Intel Xeon vs AMD EPYC"], 2: ["CPU kernels AVX2 vs AVX512"]}
    assert bt.compare("uw", "baseline").mixed_footing == {0: ["precision bf16 vs fp32"]}
    assert bt.compare("rlw", "baseline").mixed_footing == {}  # unknown is not a difference
    assert bt.compare("gradnorm", "baseline").mixed_footing == {}  # a GPU run: the CPU does not reduce it
    assert any("runs on unequal footing (seed 0: processor Intel Xeon vs AMD EPYC" in line for line in dwa.lines())
    note = next(n for n in bt.notes if n.startswith("Paired runs not on equal footing"))
    assert "DWA: " in note and "UW: " in note and "RLW" not in note
    assert any(n.startswith("3 records of this table predate the processor field") for n in bt.notes)


def test_mde_uses_the_noise_floor_when_it_is_larger():
    from mtlbench.noise import pair_jobs
    from mtlbench.stats import min_detectable_effect

    spec, setting = _setting()

    def m(miou):
        return {"semseg": {"miou": miou, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}

    recs = [_record(setting, "baseline", s, m(50.0)) for s in range(3)]
    recs += [_record(setting, "dwa", s, m(50.0 + 2 * d)) for s, d in enumerate([2.0, 3.0, 4.0])]  # Δ sd 1
    bt = build_table(spec, setting, records=recs, references=False)
    dwa = bt.cell(spec.row("dwa"), "vit_tiny")
    assert dwa.mde == pytest.approx(min_detectable_effect(3, 1.0)) and dwa.mde_basis == "observed"
    # A/A pairs with Δ 4, -4, 0 (sd 4): larger than DWA's own sd, so the MDE rests on it
    for job in pair_jobs(setting, "baseline", "vit_tiny", [0, 1, 2]):
        k = job.config.train.nuisance_seed
        d = {0: 4.0, 1: -4.0, 2: 0.0}[job.seed] if k == 2 else 0.0
        rec = _record(setting, "baseline", job.seed, m(50.0 + 2 * d))
        rec["config"], rec["id"] = job.config.data, f"aa-{job.seed}-{k}"
        recs.append(rec)
    bt = build_table(spec, setting, records=recs, references=False)
    dwa = bt.cell(spec.row("dwa"), "vit_tiny")
    assert bt.noise["vit_tiny"].sd == pytest.approx(4.0)
    assert dwa.mde == pytest.approx(min_detectable_effect(3, 4.0)) and dwa.mde_basis == "noise floor"
    comp = bt.compare("dwa", "baseline")
    assert comp.mde == pytest.approx(dwa.mde) and comp.noise_sd == pytest.approx(4.0)
    md = render(bt, "md")
    assert f"{dwa.mde:.2f}*" in md and "Noise floor: sd 4.00 Δ points over 3 A/A pairs" in md
    # the reference row of the table is unchanged by the pairs' records
    assert bt.cell(spec.row("baseline"), "vit_tiny").mean["semseg"]["miou"] == pytest.approx(50.0)


def _on_encoder(rec, sha):
    rec["encoder_init"] = {"pretraining": {"recipe": "r", "key": "k", "sha256": sha, "version": 1}}
    return rec


def test_pairs_on_different_pretrained_encoders_are_left_out_of_the_paired_delta():
    """The config hash names the pretraining recipe, not its bytes: a rebuilt encoder is other bytes,
    and a run started from it is no pair for a run started from the first one."""
    spec, setting = _setting()

    def m(miou):
        return {"semseg": {"miou": miou, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}

    a, b = "a" * 64, "b" * 64
    recs = [_on_encoder(_record(setting, "baseline", s, m(40.0)), a) for s in range(3)]
    # DWA: seed 0 on the other encoder (and far better); seeds 1, 2 on the reference's, 1 point ahead
    recs += [_on_encoder(_record(setting, "dwa", 0, m(60.0)), b)]
    recs += [_on_encoder(_record(setting, "dwa", s, m(41.0)), a) for s in (1, 2)]
    recs += [_record(setting, "uw", s, m(41.0)) for s in range(3)]  # scratch / unrecorded: unknown, kept
    bt = build_table(spec, setting, records=recs, references=False)
    dwa = bt.cell(spec.row("dwa"), "vit_tiny")
    assert sorted(dwa.delta.values) == [1, 2] and dwa.delta.n == 2
    comp = bt.compare("dwa", "baseline")
    assert sorted(comp.summary.values) == [1, 2]
    assert "different pretrained encoders (sha256 bbbbbbbb vs aaaaaaaa)" in comp.errors[0]
    assert any("seed 0: Δ undefined: the two runs start from different pretrained encoders" in line
               for line in comp.lines())
    assert bt.compare("uw", "baseline").summary.n == 3
    # an encoder-free Δ of DWA's seeds 1 and 2 equals the Δ the table shows
    same = build_table(spec, setting, records=[r for r in recs if not (r["method"] == "dwa" and r["seed"] == 0)],
                       references=False)
    assert same.cell(spec.row("dwa"), "vit_tiny").delta.values == dwa.delta.values
    note = next(n for n in bt.notes if n.startswith("Left out of the paired Δ"))
    assert "DWA seed 0" in note and "UW" not in note
    assert any(n.startswith("The records of this table start from 2 different pretrained encoders "
                            "(sha256 aaaaaaaa: 5 records, sha256 bbbbbbbb: 1 record)") for n in bt.notes)
    assert not any("too short a training run" in n for n in bt.notes)
    assert not any(n.startswith("Left out") for n in same.notes)
