"""The noise floor (issue 22, item 3): A/A pairs share the initialisation and the data order and
differ only in the random stream after it; the floor is the sd of their paired Δ."""
from __future__ import annotations

import statistics

import pytest
import torch

from mtlbench.errors import UserError
from mtlbench.noise import NoiseFloor, effective_sd, find_pairs, pair_jobs
from mtlbench.records import RecordStore, setting_differences
from mtlbench.tables import build_table, choose_setting, load_spec
from mtlbench.tables.plan import JobBuilder
from mtlbench.trainer import Training, TrainOptions, nuisance_stream_seed
from mtlbench.records import RunPaths


def _training(smoke_config, tmp_path, *sets):
    cfg = smoke_config("baseline", "vit_tiny", *sets)
    return Training(cfg, TrainOptions(out=tmp_path, quiet=True), RunPaths.for_config(cfg, tmp_path))


def test_an_aa_pair_shares_init_and_order_and_differs_in_the_nuisance_stream(smoke_config, tmp_path):
    runs = {}
    draws = {}
    for k in (None, 1, 2):
        t = _training(smoke_config, tmp_path, *([] if k is None else [f"train.nuisance_seed={k}"]))
        draws[k] = torch.rand(8)  # the first numbers the training steps would draw (dropout masks)
        runs[k] = t
    states = {k: t.method.state_dict() for k, t in runs.items()}
    for k in (1, 2):  # the networks at step 0: equal, tensor for tensor
        assert states[k].keys() == states[None].keys()
        assert all(torch.equal(states[k][n], states[None][n]) for n in states[None])
        # the data order: the same batches in the same order, epoch after epoch
        for epoch in (0, 3):
            assert list(runs[k].train_loader(epoch).sampler) == list(runs[None].train_loader(epoch).sampler)
    # the stream after initialisation: one per nuisance seed, and not the plain run's
    assert not torch.equal(draws[1], draws[2])
    assert not torch.equal(draws[1], draws[None]) and not torch.equal(draws[2], draws[None])
    # ... so a dropout layer in train mode draws different masks in the two runs of the pair
    masks = []
    for k in (1, 2):
        _training(smoke_config, tmp_path, f"train.nuisance_seed={k}")
        masks.append(torch.nn.functional.dropout(torch.ones(64), 0.5, training=True))
    assert not torch.equal(*masks)
    # and the stream is a function of (seed, nuisance seed) alone
    assert nuisance_stream_seed(0, 1) == nuisance_stream_seed(0, 1) != nuisance_stream_seed(1, 0)
    assert 0 <= nuisance_stream_seed(2**40, 7) < 2**63


def test_nuisance_seed_is_its_own_setting(smoke_config):
    """An A/A record serves no table row, and a plain record serves no pair; the option leaves the
    identity of a run without it unchanged (backward compatible)."""
    plain = smoke_config("baseline").data
    aa = smoke_config("baseline", "vit_tiny", "train.nuisance_seed=1").data
    assert setting_differences(aa, plain) == ["train.nuisance_seed=1 (the preset: 'its default')"]
    assert setting_differences(plain, aa) == ["train.nuisance_seed='its default' (the preset: 1)"]
    assert setting_differences(plain, plain) == []
    from mtlbench.config import config_hash

    no_key = {**plain, "train": {k: v for k, v in plain["train"].items() if k != "nuisance_seed"}}
    assert config_hash(plain) == config_hash(no_key) != config_hash(aa)


def _setting():
    spec = load_spec(2)
    return spec, choose_setting(spec, preset="smoke", out="/nonexistent")


def _metrics(miou):
    return {"semseg": {"miou": miou, "pacc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}


def _record(job, miou, created="2025-01-01"):
    """A record as the trainer writes it for ``job`` (its resolved config), with metrics of mIoU ``miou``."""
    cfg = job.config.data
    return {"method": job.method, "backbone": job.backbone, "dataset": cfg["dataset"]["name"],
            "preset": cfg["preset"], "seed": job.seed, "created": created, "config": cfg,
            "id": f"{job.method}-{job.seed}-{job.sets}", "metrics": _metrics(miou)}


def _aa_records(setting, mious):
    """``mious``: seed -> (mIoU of the nuisance-1 run, of the nuisance-2 run)."""
    recs = []
    for job in pair_jobs(setting, "baseline", "vit_tiny", sorted(mious)):
        recs.append(_record(job, mious[job.seed][job.config.train.nuisance_seed - 1]))
    return recs


def test_the_floor_is_the_sd_of_the_pairs_delta_hand_computed():
    spec, setting = _setting()
    # Table 2's Δ of run 2 against run 1 when only mIoU differs: 100 * (m2 / m1 - 1) / 2 / 2
    mious = {0: (40.0, 42.0), 1: (50.0, 49.0), 2: (40.0, 40.0), 3: (44.0, 46.2)}
    recs = _aa_records(setting, mious)
    plain = JobBuilder(setting).build("baseline", {}, "vit_tiny", 0)
    recs.append(_record(plain, 10.0))  # an ordinary baseline run: not part of any pair
    fl = find_pairs(RecordStore(recs), setting, "baseline", "vit_tiny", directions=spec.directions)
    want = {s: 100 * (b / a - 1) / 4 for s, (a, b) in mious.items()}
    assert fl.deltas == pytest.approx(want)
    assert fl.n == 4 and fl.measured and fl.missing == []
    assert fl.sd == pytest.approx(statistics.stdev(want.values()))
    assert fl.mean == pytest.approx(sum(want.values()) / 4)
    assert "sd 0.89 Δ points over 4 A/A pairs of baseline on vit_tiny" in fl.text()
    # a pair with one run missing: listed, not counted
    fl3 = find_pairs(RecordStore(recs[:-2]), setting, "baseline", "vit_tiny", directions=spec.directions)
    assert fl3.n == 3 and fl3.missing == [(3, 2)]
    # an explicit seed list: seeds without records are missing runs
    fl9 = find_pairs(RecordStore(recs), setting, "baseline", "vit_tiny", seeds=[0, 9], directions=spec.directions)
    assert fl9.n == 1 and fl9.missing == [(9, 1), (9, 2)] and not fl9.measured and fl9.sd is None
    with pytest.raises(UserError, match="two different nuisance seeds"):
        find_pairs(RecordStore(recs), setting, "baseline", "vit_tiny", nuisance=(1, 1))


def test_tables_keep_pair_records_out_of_rows_and_show_the_floor():
    spec, setting = _setting()
    mious = {0: (40.0, 42.0), 1: (50.0, 49.0), 2: (40.0, 40.0)}
    recs = _aa_records(setting, mious)
    builder = JobBuilder(setting)
    recs += [_record(builder.build("baseline", {}, "vit_tiny", s), 40.0 + s, created="2024-01-01")
             for s in range(3)]
    bt = build_table(spec, setting, records=recs)
    base = bt.cell(spec.row("baseline"), "vit_tiny")
    assert base.mean["semseg"]["miou"] == pytest.approx(41.0)  # the plain runs only
    assert not any("differ" in n and "nuisance_seed" in n for n in bt.notes)  # not called variants
    fl = bt.noise["vit_tiny"]
    assert fl.n == 3 and fl.sd == pytest.approx(statistics.stdev([1.25, -0.5, 0.0]))
    from mtlbench.tables import render

    md = render(bt, "md")
    assert "Noise floor: sd 0.90 Δ points over 3 A/A pairs of baseline on vit_tiny" in md


def test_effective_sd_takes_the_larger_of_observed_and_floor():
    fl = NoiseFloor("baseline", "vit_tiny", (1, 2), deltas={0: 1.0, 1: -1.0, 2: 3.0})
    assert fl.sd == pytest.approx(2.0)
    assert effective_sd(0.5, fl) == (pytest.approx(2.0), "noise floor")
    assert effective_sd(3.0, fl) == (3.0, "observed")
    assert effective_sd(0.5, None) == (0.5, "observed")
    few = NoiseFloor("baseline", "vit_tiny", (1, 2), deltas={0: 1.0, 1: 9.0})  # 2 pairs: not a floor yet
    assert effective_sd(0.5, few) == (0.5, "observed")
    assert effective_sd(None, None) == (None, "")
    assert effective_sd(float("nan"), fl) == (pytest.approx(2.0), "noise floor")


def test_noise_cli_dry_run_lists_the_pair_commands(tmp_path, capsys):
    from mtlbench.cli import main

    rc = main(["noise", "--table", "2", "--preset", "smoke", "--seeds", "0,1", "--out", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "0 of 4 runs recorded, 4 to run" in out
    cmds = [line for line in out.splitlines() if line.startswith("mtlbench run")]
    assert len(cmds) == 4
    assert sum("--seed 1 " in c and "--set train.nuisance_seed=2" in c for c in cmds) == 1
    assert all("--method baseline" in c and "variant=cityscapes" in c for c in cmds)


@pytest.mark.parametrize("bad", ["1", "1,1", "a,b", "1,-2", "1,2,3"])
def test_noise_cli_refuses_bad_nuisance(bad, tmp_path, capsys):
    from mtlbench.cli import main

    rc = main(["noise", "--preset", "smoke", "--nuisance", bad, "--out", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "--nuisance" in err and "Traceback" not in err
