"""Figures from fixture records: the core's (curves, steps), OKD-MTL's (fig3, fig4) through
``Method.figures()``, both record schemas, default selections and the CLI."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtlbench import plots
from mtlbench.api import FigureSpec
from mtlbench.cli import main as cli_main
from mtlbench.errors import UserError
from mtlbench.methods import _okd_figures as okd_figures
from mtlbench.registry import METHODS

RESULTS = Path(__file__).parent / "fixtures" / "tables" / "results"
OKD = RESULTS / "runs" / "synthetic" / "vit_tiny" / "okd"
BASELINE = RESULTS / "runs" / "synthetic" / "vit_tiny" / "baseline"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def _by_stem(recs):
    return {Path(r["_path"]).stem: r for r in recs}


def _stems(recs):
    return [Path(r["_path"]).stem for r in recs]


def _as_cityscapes(rec: dict, created: str, stem: str) -> dict:
    """A copy of ``rec`` trained on the cityscapes-like variant."""
    r = copy.deepcopy(rec)
    r["config"]["dataset"]["variant"] = "cityscapes"
    r["dataset_family"] = "cityscapes"
    r["created"] = created
    r["_path"] = str(Path(rec["_path"]).with_name(stem + ".json"))
    return r


def to_schema2(src: Path, out_dir: Path) -> Path:
    """Write ``src`` (schema 1) as a schema-2 record: step and full epoch rows in JSON Lines beside it,
    the record keeping compact epoch rows without method logs."""
    rec = json.loads(src.read_text())
    stem = src.stem
    steps = rec["history"].pop("steps")
    epochs = rec["history"]["epochs"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (out_dir / f"{stem}.epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    rec["schema"] = 2
    rec["history"] = {"epochs": [{k: v for k, v in e.items() if k != "logs"} for e in epochs],
                      "steps_file": f"{stem}.steps.jsonl", "epochs_file": f"{stem}.epochs.jsonl"}
    dst = out_dir / src.name
    dst.write_text(json.dumps(rec))
    return dst


class _Captured(Exception):
    pass


@pytest.fixture
def capture(monkeypatch):
    """Make figures stop at saving and hand over the matplotlib figure."""
    box = {}

    def fake_save(fig, out):
        box["fig"] = fig
        box["out"] = Path(out)
        return Path(out)

    monkeypatch.setattr(plots, "save_figure", fake_save)
    return box


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def test_smooth_is_a_debiased_ema():
    assert plots.smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    s = plots.smooth([0.0, 10.0], 0.5)
    assert s == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5 * 10.0) / (1 - 0.25)])
    assert plots.smooth([1.0, 5.0], 0.0) == [1.0, 5.0]
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(UserError, match=r"\[0, 1\)"):
            plots.check_smoothing(bad)


def test_primary_metric_from_the_record_else_the_first():
    rec = {"tasks": {"semseg": {"metrics": {"miou": "higher", "pacc": "higher"}, "primary": "pacc"},
                     "depth": {"metrics": {"abs_err": "lower", "rel_err": "lower"}}}}
    assert plots.primary_metric(rec, "semseg") == "pacc"
    assert plots.primary_metric(rec, "depth") == "abs_err"  # schema-1 record: the first metric
    assert plots.primary_metric({"metrics": {"x": {"m2": 1, "m1": 2}}}, "x") == "m2"
    assert plots.primary_metric({}, "x") is None
    # an old record whose config still builds its dataset: the task's registered primary metric
    old = plots.load_runs([OKD / "seed0-d000000000.json"])[0]
    assert "primary" not in old["tasks"]["normal"] and list(old["tasks"]["normal"]["metrics"])[0] == "within_11.25"
    assert [plots.primary_metric(old, t) for t in old["tasks"]] == ["miou", "abs_err", "mean"]
    old["config"]["dataset"]["name"] = "no_such_dataset"  # cannot be built: the first metric
    assert plots.primary_metric(old, "normal") == "within_11.25"


# ---------------------------------------------------------------------------
# records: schema 1 (inline steps) and schema 2 (JSON Lines beside the record)
# ---------------------------------------------------------------------------

def test_step_and_epoch_rows_read_both_schemas(tmp_path):
    src = OKD / "seed0-d000000000.json"
    inline = plots.load_runs([src])[0]
    assert len(inline["history"]["steps"]) == 40
    rec2 = plots.load_runs([to_schema2(src, tmp_path / "runs")])[0]
    assert "steps" not in rec2["history"]
    assert plots.step_rows(rec2) == plots.step_rows(inline) == inline["history"]["steps"]
    assert plots.epoch_rows(rec2) == inline["history"]["epochs"]  # full rows, logs included
    assert okd_figures.omega_history(rec2) == okd_figures.omega_history(inline)
    assert len(okd_figures.omega_history(rec2)["depth"]) == 3


def test_step_rows_errors_name_the_file(tmp_path):
    rec = plots.load_runs([to_schema2(OKD / "seed0-d000000000.json", tmp_path)])[0]
    steps = tmp_path / "seed0-d000000000.steps.jsonl"
    lines = steps.read_text().splitlines()
    steps.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(UserError, match=r"steps\.jsonl is not valid JSON Lines: line 4"):
        plots.step_rows(rec)
    steps.unlink()
    with pytest.raises(UserError, match="does not exist") as err:
        plots.step_rows(rec)
    assert str(steps) in str(err.value)
    no_path = {k: v for k, v in rec.items() if k != "_path"}
    with pytest.raises(UserError, match="location is unknown"):
        plots.step_rows(no_path)


def test_schema2_records_draw_and_select(tmp_path, capsys):
    runs = tmp_path / "results" / "runs" / "synthetic" / "vit_tiny" / "okd"
    for p in sorted(OKD.glob("*.json")):
        to_schema2(p, runs)
    recs = plots.load_runs(None, tmp_path / "results")
    assert _stems(plots.default_selection("fig3", recs)) == ["seed0-e000000000", "seed0-d000000000"]
    assert _stems(plots.default_selection("fig4", recs))[0] in ("seed0-d000000000", "seed1-d000000001")
    for kind in ("fig3", "fig4", "steps", "curves"):
        assert cli_main(["plot", "--kind", kind, "--results", str(tmp_path / "results"),
                         "--out-dir", str(tmp_path / "fig")]) == 0
        _check_png(tmp_path / "fig" / f"{kind}.png")
    assert "warning" not in capsys.readouterr().err


def test_unreadable_records_are_reported_not_skipped_silently(tmp_path, capsys):
    runs = tmp_path / "results" / "runs" / "synthetic" / "vit_tiny" / "baseline"
    runs.mkdir(parents=True)
    good = runs / "seed0-b000000000.json"
    good.write_text((BASELINE / "seed0-b000000000.json").read_text())
    broken = runs / "seed1-broken.json"
    broken.write_text('{"schema": 1, "config": ')
    recs = plots.load_runs(None, tmp_path / "results")
    assert _stems(recs) == ["seed0-b000000000"]
    err = capsys.readouterr().err
    assert "warning" in err and str(broken) in err and "not valid JSON" in err
    assert cli_main(["plot", "--kind", "curves", "--results", str(tmp_path / "results"),
                     "--out-dir", str(tmp_path / "fig")]) == 0
    assert str(broken) in capsys.readouterr().err
    # ... and in a directory named with --runs
    assert len(plots.load_runs([runs])) == 1
    assert str(broken) in capsys.readouterr().err


# ---------------------------------------------------------------------------
# OKD-MTL's figures and their default selections
# ---------------------------------------------------------------------------

def test_okd_provides_fig3_and_fig4_through_its_hook():
    figs = METHODS.get("okd").figures()
    assert figs is okd_figures.FIGURES and set(figs) == {"fig3", "fig4"}
    assert all(isinstance(f, FigureSpec) and f.select is not None for f in figs.values())
    assert "smoothing" in figs["fig3"].options and not figs["fig4"].options
    names = {(f.provider, f.name) for f in plots.available_figures()}
    assert {("", "curves"), ("", "steps"), ("okd", "fig3"), ("okd", "fig4")} <= names


def test_okd_figures_import_without_matplotlib_and_register_nothing():
    code = ("import sys; from mtlbench.registry import METHODS; n = len(METHODS.names()); "
            "import mtlbench.methods._okd_figures as f; "
            "print('matplotlib' in sys.modules, len(METHODS.names()) == n, 'okd_figures' in METHODS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "False"]


def test_fig3_from_okd_records_with_and_without_otw(tmp_path):
    recs = plots.load_runs([OKD])
    picked = plots.default_selection("fig3", recs)
    assert [r["config"]["method"].get("otw", True) for r in picked] == [False, True]
    out = plots.make_plot("fig3", picked, tmp_path, "png")
    assert out == tmp_path / "fig3.png"
    _check_png(out)


def test_fig3_pairs_runs_that_differ_only_in_otw():
    recs = _by_stem(plots.load_runs([OKD]))
    # make the "newest of each" choice wrong: seed 1 (and afd=equal, which logs no losses) are newer
    recs["seed0-f000000000"]["created"] = "2024-06-03T00:00:00+00:00"
    recs["seed1-d000000001"]["created"] = "2024-06-02T00:00:00+00:00"
    picked = plots.default_selection("fig3", list(recs.values()))
    assert _stems(picked) == ["seed0-e000000000", "seed0-d000000000"]
    # with no matching pair it still draws the newest run of each kind
    del recs["seed0-d000000000"]
    picked = plots.default_selection("fig3", list(recs.values()))
    assert _stems(picked) == ["seed0-e000000000", "seed1-d000000001"]


def test_fig3_never_pairs_runs_on_different_datasets():
    recs = _by_stem(plots.load_runs([OKD]))
    off, on = recs["seed0-e000000000"], recs["seed0-d000000000"]
    city_on = _as_cityscapes(on, "2024-06-05T00:00:00+00:00", "seed0-c1")
    # the only run with OTW on the same seed and settings is on Cityscapes-like data
    assert not okd_figures.same_but_otw(off, city_on)
    assert okd_figures.same_but_otw(off, on)
    picked = plots.default_selection("fig3", [off, city_on, recs["seed1-d000000001"]])
    assert _stems(picked) == ["seed0-e000000000", "seed1-d000000001"]  # the nyuv2 one, though older
    # a Cityscapes-like pair that is newer wins as a pair
    city_off = _as_cityscapes(off, "2024-06-04T00:00:00+00:00", "seed0-c0")
    picked = plots.default_selection("fig3", [off, on, city_off, city_on])
    assert _stems(picked) == ["seed0-c0", "seed0-c1"]
    # no run of the other kind on the same dataset: one panel, the newest
    assert _stems(plots.default_selection("fig3", [off, city_on])) == ["seed0-c1"]


def test_fig4_default_prefers_nyuv2_and_the_methods_default_settings():
    recs = _by_stem(plots.load_runs([OKD]))
    recs["seed0-e000000000"]["created"] = "2024-06-03T00:00:00+00:00"  # otw=false, logs ω, newest
    recs["seed0-d000000000"]["created"] = "2024-06-02T00:00:00+00:00"
    city = _as_cityscapes(recs["seed0-d000000000"], "2024-06-09T00:00:00+00:00", "seed0-c1")
    picked = plots.default_selection("fig4", [*recs.values(), city])
    assert _stems(picked) == ["seed0-d000000000"]
    for k in ("seed0-d000000000", "seed1-d000000001"):  # no default-config nyuv2 run left: the newest nyuv2
        del recs[k]
    picked = plots.default_selection("fig4", [*recs.values(), city])
    assert _stems(picked) == ["seed0-e000000000"]
    assert _stems(plots.default_selection("fig4", [city])) == ["seed0-c1"]  # no nyuv2 run at all


def test_fig4_boxplots_of_omega(tmp_path):
    recs = plots.load_runs([OKD / "seed0-d000000000.json"])
    om = okd_figures.omega_history(recs[0])
    assert list(om) == ["semseg", "depth", "normal"] and len(om["semseg"]) == 3 and len(om["semseg"][0]) == 12
    _check_png(plots.make_plot("fig4", recs, tmp_path, "png"))
    pdf = plots.make_plot("fig4", recs, tmp_path, "pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_fig3_draws_the_smoothed_losses(capture):
    rec = plots.load_runs([OKD / "seed0-d000000000.json"])[0]
    plots.make_plot("fig3", [rec], "unused", smoothing=0.5)
    ax = capture["fig"].axes[0]
    line = next(ln for ln in ax.lines if ln.get_label() == "MTL depth")
    xs, ys = plots.series(plots.step_rows(rec), "mtl/depth")
    assert list(line.get_xdata()) == xs
    assert list(line.get_ydata()) == pytest.approx(plots.smooth(ys, 0.5))


# ---------------------------------------------------------------------------
# core figures
# ---------------------------------------------------------------------------

def test_curves_of_any_runs(tmp_path):
    recs = plots.load_runs(None, RESULTS)
    assert len(recs) == 12
    _check_png(plots.make_plot("curves", recs, tmp_path, "png"))


def test_curves_draw_each_tasks_primary_metric(capture):
    rec = plots.load_runs([OKD / "seed0-d000000000.json"])[0]
    rec["tasks"]["semseg"]["primary"] = "pacc"  # as a record naming its primary metric would
    rec["tasks"]["semseg"]["labels"] = {"miou": "mIoU", "pacc": "pAcc"}
    plots.make_plot("curves", [rec], "unused")
    fig = capture["fig"]
    tasks = list(rec["tasks"])
    ncols = len(tasks)
    epochs = [e for e in rec["history"]["epochs"] if e.get("metrics")]
    for j, (task, key) in enumerate([("semseg", "pacc"), ("depth", "abs_err"), ("normal", "mean")]):
        ax = fig.axes[ncols + j]  # bottom row
        assert list(ax.lines[0].get_ydata()) == pytest.approx([e["metrics"][""][task][key] for e in epochs])
    assert fig.axes[ncols].get_ylabel() == "val pAcc ↑"
    assert fig.axes[ncols + 2].get_ylabel() == "val mean ↓"


def test_steps_figure_matches_key_patterns(capture, tmp_path):
    rec = plots.load_runs([OKD / "seed0-d000000000.json"])[0]
    plots.make_plot("steps", [rec], "unused", keys=["lambda/*", "afd*"])
    fig = capture["fig"]
    lam = fig.axes[0]
    assert sorted(ln.get_label() for ln in lam.lines) == ["lambda/depth", "lambda/normal", "lambda/semseg"]
    line = next(ln for ln in lam.lines if ln.get_label() == "lambda/normal")
    xs, ys = plots.series(plots.step_rows(rec), "lambda/normal")
    assert list(line.get_xdata()) == xs and list(line.get_ydata()) == ys  # raw: no smoothing by default
    assert lam.get_title() == "lambda/*"
    with pytest.raises(UserError, match="no logged step value matches 'cos/\\*'") as err:
        plots.make_plot("steps", [rec], "unused", keys=["cos/*"])
    assert "lambda/depth" in str(err.value)  # the hint lists what was logged
    with pytest.raises(UserError, match="no per-step log"):
        plots.make_plot("steps", plots.load_runs([BASELINE]), "unused")


def test_steps_figure_for_any_method_through_the_cli(tmp_path):
    assert cli_main(["plot", "--kind", "steps", "--runs", str(OKD / "seed0-d000000000.json"),
                     str(OKD / "seed0-e000000000.json"), "--keys", "mtl/*", "stl/*", "--smooth", "0.5",
                     "--out-dir", str(tmp_path)]) == 0
    _check_png(tmp_path / "steps.png")


# ---------------------------------------------------------------------------
# finding figures; the CLI
# ---------------------------------------------------------------------------

def test_plot_list(capsys):
    assert cli_main(["plot", "--list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(ln.split()[:2] == ["curves", "[core]"] for ln in lines)
    assert any(ln.split()[:2] == ["steps", "[core]"] for ln in lines)
    assert any(ln.split()[:3] == ["okd:fig3", "[method", "okd]"] for ln in lines)
    assert any(ln.split()[:3] == ["okd:fig4", "[method", "okd]"] for ln in lines)
    assert "option smoothing" in out and "option keys" in out


def test_unknown_and_ambiguous_kinds(monkeypatch, capsys, tmp_path):
    with pytest.raises(UserError, match="did you mean 'fig3'"):
        plots.find_figure("fig33")
    assert cli_main(["plot", "--kind", "fgi4", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'fig4'" in err and "okd:fig3" in err
    # a second method providing a "fig3": the plain name is ambiguous, the qualified one is not
    other = FigureSpec("fig3", "another fig3", draw=lambda recs, out: Path(out))
    monkeypatch.setattr(METHODS.get("dwa"), "figures", classmethod(lambda cls: {"fig3": other}))
    with pytest.raises(UserError, match="ambiguous") as err:
        plots.find_figure("fig3")
    assert "okd:fig3" in str(err.value) and "dwa:fig3" in str(err.value)
    assert plots.find_figure("dwa:fig3").spec is other
    assert plots.find_figure("okd:fig3").spec is okd_figures.FIGURES["fig3"]


def test_options_a_figure_does_not_take_are_errors(tmp_path, capsys):
    assert cli_main(["plot", "--kind", "fig4", "--smooth", "0.5", "--results", str(RESULTS),
                     "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--smooth" in err and "would do nothing" in err
    assert cli_main(["plot", "--kind", "curves", "--keys", "x/*", "--out-dir", str(tmp_path)]) == 2
    assert "--keys" in capsys.readouterr().err
    with pytest.raises(UserError, match="takes no option 'smoothing'"):
        plots.make_plot("curves", [], tmp_path, smoothing=0.5)
    assert cli_main(["plot", "--kind", "fig3", "--smooth", "1.5", "--results", str(RESULTS),
                     "--out-dir", str(tmp_path)]) == 2
    assert "[0, 1)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing drawn


def test_plot_cli(tmp_path, capsys):
    for kind in ("fig3", "fig4", "curves", "okd:fig3"):
        assert cli_main(["plot", "--kind", kind, "--results", str(RESULTS), "--out-dir", str(tmp_path)]) == 0
        _check_png(tmp_path / f"{kind.split(':')[-1]}.png")
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["plot", "--kind", "fig3", "--option", "smoothing=0.5", "--results", str(RESULTS),
                     "--out-dir", str(tmp_path)]) == 0
    assert cli_main(["plot", "--kind", "curves", "--runs", str(OKD), "--out-dir", str(tmp_path),
                     "--format", "pdf"]) == 0
    assert (tmp_path / "curves.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(UserError, match="fig3 needs okd runs"):
        plots.make_plot("fig3", plots.load_runs([BASELINE]), tmp_path)
    with pytest.raises(UserError, match="'omega'"):
        plots.make_plot("fig4", plots.load_runs([BASELINE]), tmp_path)
    assert cli_main(["plot", "--runs", str(tmp_path / "none.json"), "--out-dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[plot\]"'):
        plots.make_plot("curves", plots.load_runs([OKD]), tmp_path)
    assert cli_main(["plot", "--runs", str(OKD), "--out-dir", str(tmp_path)]) == 2
    assert "matplotlib" in capsys.readouterr().err
