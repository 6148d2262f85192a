"""Figures from fixture records: Fig. 3, Fig. 4 and training curves, as PNG and PDF."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mtlbench import plots
from mtlbench.cli import main as cli_main
from mtlbench.errors import UserError

RESULTS = Path(__file__).parent / "fixtures" / "tables" / "results"
OKD = RESULTS / "runs" / "synthetic" / "vit_tiny" / "okd"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_smooth_is_a_debiased_ema():
    assert plots.smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    s = plots.smooth([0.0, 10.0], 0.5)
    assert s == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5 * 10.0) / (1 - 0.25)])


def test_fig3_from_okd_records_with_and_without_otw(tmp_path):
    recs = plots.load_runs([OKD])
    picked = plots.default_selection("fig3", recs)
    assert [r["config"]["method"].get("otw", True) for r in picked] == [False, True]
    out = plots.make_plot("fig3", picked, tmp_path, "png")
    assert out == tmp_path / "fig3.png"
    _check_png(out)


def test_fig3_pairs_runs_that_differ_only_in_otw():
    recs = {r["id"].rsplit("/", 1)[-1]: r
            for r in plots.load_runs([OKD])}
    # make the "newest of each" choice wrong: seed 1 (and afd=equal, which logs no losses) are newer
    recs["seed0-f000000000"]["created"] = "2024-06-03T00:00:00+00:00"
    recs["seed1-d000000001"]["created"] = "2024-06-02T00:00:00+00:00"
    picked = plots.default_selection("fig3", list(recs.values()))
    assert [r["id"].rsplit("/", 1)[-1] for r in picked] == ["seed0-e000000000", "seed0-d000000000"]
    # with no matching pair it still draws the newest run of each kind
    del recs["seed0-d000000000"]
    picked = plots.default_selection("fig3", list(recs.values()))
    assert [r["id"].rsplit("/", 1)[-1] for r in picked] == ["seed0-e000000000", "seed1-d000000001"]


def test_fig4_default_prefers_a_run_with_the_methods_default_settings():
    recs = {r["id"].rsplit("/", 1)[-1]: r for r in plots.load_runs([OKD])}
    recs["seed0-e000000000"]["created"] = "2024-06-03T00:00:00+00:00"  # otw=false, logs ω, newest
    recs["seed0-d000000000"]["created"] = "2024-06-02T00:00:00+00:00"
    picked = plots.default_selection("fig4", list(recs.values()))
    assert [r["id"].rsplit("/", 1)[-1] for r in picked] == ["seed0-d000000000"]
    for k in ("seed0-d000000000", "seed1-d000000001"):  # no default-config run left: the newest
        del recs[k]
    picked = plots.default_selection("fig4", list(recs.values()))
    assert [r["id"].rsplit("/", 1)[-1] for r in picked] == ["seed0-e000000000"]


def test_fig4_boxplots_of_omega(tmp_path):
    recs = plots.load_runs([OKD / "seed0-d000000000.json"])
    om = plots.omega_history(recs[0])
    assert list(om) == ["semseg", "depth", "normal"] and len(om["semseg"]) == 3 and len(om["semseg"][0]) == 12
    _check_png(plots.make_plot("fig4", recs, tmp_path, "png"))
    pdf = plots.make_plot("fig4", recs, tmp_path, "pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_curves_of_any_runs(tmp_path):
    recs = plots.load_runs(None, RESULTS)
    assert len(recs) == 12
    _check_png(plots.make_plot("curves", recs, tmp_path, "png"))


def test_plot_cli(tmp_path, capsys):
    for kind in ("fig3", "fig4", "curves"):
        assert cli_main(["plot", "--kind", kind, "--results", str(RESULTS), "--out-dir", str(tmp_path)]) == 0
        _check_png(tmp_path / f"{kind}.png")
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["plot", "--kind", "curves", "--runs", str(OKD), "--out-dir", str(tmp_path),
                     "--format", "pdf"]) == 0
    assert (tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_errors(tmp_path, capsys, monkeypatch):
    baseline = RESULTS / "runs" / "synthetic" / "vit_tiny" / "baseline"
    with pytest.raises(UserError, match="fig3 needs okd runs"):
        plots.make_plot("fig3", plots.load_runs([baseline]), tmp_path)
    with pytest.raises(UserError, match="'omega'"):
        plots.make_plot("fig4", plots.load_runs([baseline]), tmp_path)
    assert cli_main(["plot", "--runs", str(tmp_path / "none.json"), "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[plot\]"'):
        plots.make_plot("curves", plots.load_runs([OKD]), tmp_path)
    assert cli_main(["plot", "--runs", str(OKD), "--out-dir", str(tmp_path)]) == 2
    assert "matplotlib" in capsys.readouterr().err
