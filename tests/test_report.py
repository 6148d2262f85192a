"""``mtlbench report`` (issue 26): the static site for fabricated records: every page parses and
every link resolves, the table pages hold what ``mtlbench table`` prints, the index holds what
``mtlbench claims`` prints, the gallery shows known predictions pixel for pixel, predictions come
from a checkpoint and are cached, bad input is a UserError, and a real browser opens the pages."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mtlbench import gallery as g
from mtlbench.cli import main as cli_main
from mtlbench.records import RecordStore, RunPaths
from mtlbench.registry import DATASETS
from mtlbench.tables import choose_setting, load_spec
from mtlbench.tables.plan import JobBuilder, RecordIndex

WORKTREE = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
#: the known predictions of baseline seed 0 (cached as the report caches them)
DEPTH, CLASS, NORMAL = 2.5, 3, (0.0, 0.0, 1.0)


# ---------------------------------------------------------------------------
# fabricated records: Table 1 on the smoke preset
# ---------------------------------------------------------------------------

def _metrics(k: float) -> dict:
    return {"semseg": {"miou": 20.0 + k, "pacc": 60.0 + k},
            "depth": {"abs_err": 1.0 - 0.05 * k, "rel_err": 0.4 - 0.01 * k},
            "normal": {"within_11.25": 10.0 + k, "within_22.5": 30.0 + k, "within_30": 40.0 + k,
                       "mean": 40.0 - k, "median": 35.0 - k}}


def _record(setting, tasks, method, overrides, seed, k, *, logs=None):
    job = JobBuilder(setting).build(method, overrides, "vit_tiny", seed)
    paths = RunPaths.for_config(job.config, setting.out)
    epochs = []
    for e in range(2):
        row = {"epoch": e, "train_loss": {t: 1.0 / (e + 1) + 0.01 * k for t in tasks},
               "metrics": {"": _metrics(k - 1 + e)}}
        if logs:
            row["logs"] = logs(e)
        epochs.append(row)
    rec = {"schema": 2, "id": paths.rel.as_posix(), "created": f"2026-01-0{seed + 1}T00:00:00+00:00",
           "method": method, "backbone": "vit_tiny", "dataset": "synthetic", "dataset_family": "nyuv2",
           "preset": setting.preset, "seed": seed, "config": job.config.data, "config_hash": job.config.hash,
           "tasks": {t: task.describe() for t, task in tasks.items()}, "metrics": _metrics(k),
           "history": {"epochs": epochs}, "git_commit": "0123456789abcdef" + ("-dirty" if seed == 2 else ""),
           "versions": {"mtlbench": "0.1.0", "torch": "2.x", "python": "3.11"},
           "device": {"type": "cpu", "name": "x86_64", "threads": 1, "amp": "fp32"},
           "checkpoint": (Path("checkpoints") / paths.rel / "final.pt").as_posix()}
    paths.record.parent.mkdir(parents=True, exist_ok=True)
    paths.record.write_text(json.dumps(rec))
    return rec


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Records of Table 1's baseline, DWA and OKD-MTL (script) rows, seeds 0-2, on the smoke preset;
    known cached predictions for baseline seed 0; the report of it (``--tables 1``)."""
    root = tmp_path_factory.mktemp("report")
    out = root / "results"
    spec = load_spec(1)
    setting = choose_setting(spec, preset="smoke", out=out)
    cfg = JobBuilder(setting).resolve("baseline", {}, "vit_tiny", 0)
    dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
    tasks = dict(dataset.tasks())
    recs = {}
    for s in SEEDS:
        recs["baseline", s] = _record(setting, tasks, "baseline", {}, s, 2.0 * s)
        recs["dwa", s] = _record(setting, tasks, "dwa", {}, s, 2.0 * s + 1.0 + 0.3 * s)
        omega = (lambda e: {"omega": {t: [0.1 * (e + 1), 0.2] for t in tasks}})
        recs["okd", s] = _record(setting, tasks, "okd", {"profile": "script"}, s, 2.0 * s - 1.5, logs=omega)
    base = recs["baseline", 0]
    n, h, w = 4, *cfg.dataset.image_size
    preds = g.Predictions(list(range(n)), {
        "semseg": np.full((n, h, w), CLASS, np.uint8),
        "depth": np.full((n, h, w), DEPTH, np.float16),
        "normal": g.encode(tasks["normal"], np.broadcast_to(np.array(NORMAL, np.float32)[None, :, None, None],
                                                             (n, 3, h, w)))})
    g.save_predictions(g.cache_path(out, base), preds, base)
    site = root / "site"
    rc = cli_main(["report", "--preset", "smoke", "--seeds", "0-2", "--tables", "1", "--out", str(out),
                   "--site", str(site)])
    assert rc == 0
    return {"out": out, "site": site, "records": recs, "dataset": dataset, "tasks": tasks, "root": root}


# ---------------------------------------------------------------------------
# the pages
# ---------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    """Tags must balance; collects every href and src and the text of table cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.links: list[str] = []
        self.tables: list[tuple[str, list[list[str]]]] = []  # (class, rows of cell texts)
        self._cell: list[str] | None = None
        self._pre: list[str] | None = None
        self.pre: dict[str, str] = {}
        self._pre_class = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("href", "src"):
            if a.get(k):
                self.links.append(a[k])
        if tag == "table":
            self.tables.append((a.get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = []
        elif tag == "pre":
            self._pre, self._pre_class = [], a.get("class") or ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}> "
                               f"at line {self.getpos()[0]}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "pre" and self._pre is not None:
            self.pre[self._pre_class] = "".join(self._pre)
            self._pre = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self._pre.append(data)


def _parse(path: Path) -> _Checker:
    c = _Checker()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def test_every_page_parses_and_every_link_resolves(study):
    site = study["site"]
    pages = sorted(site.glob("*.html"))
    assert [p.name for p in pages] == ["figures.html", "index.html", "table-1.html"]
    for page in pages:
        c = _parse(page)
        assert not c.errors, (page.name, c.errors[:5])
        assert not c.stack, (page.name, c.stack)
        text = page.read_text()
        assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
        for link in c.links:
            assert not re.match(r"^(https?:)?//", link), f"{page.name} reaches the network: {link}"
            if link.startswith(("data:", "#")):
                continue
            target = link.split("#", 1)[0]
            assert (page.parent / target).is_file(), f"{page.name} links to a missing {link}"
        assert "stylesheet" not in text and "@import" not in text and "url(" not in text  # inline CSS only
    # the forest plot of every Table 1 claim, the curves and the method figure that has data
    index = (site / "index.html").read_text()
    for cid in ("t1-okd-beats-baseline", "t1-okd-script-beats-baseline", "t1-okd-best", "t1-okd-script-best"):
        assert f'src="claims/{cid}.png"' in index and (site / "claims" / f"{cid}.png").is_file()
    assert (site / "figures" / "table-1" / "curves.png").is_file()
    figures = (site / "figures.html").read_text()
    assert 'src="figures/okd/fig4.png"' in figures  # drawn from the okd records' ω logs
    assert "Not drawn: none of the records the tables use is one this figure draws" in figures  # no step logs


def _md_rows(md: str) -> list[list[str]]:
    rows = []
    for line in md.splitlines():
        if line.startswith("|") and not line.startswith("|:") and not line.startswith("|-"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
    return rows


def test_table_page_holds_what_mtlbench_table_prints(study, capsys):
    out = study["out"]
    capsys.readouterr()
    assert cli_main(["table", "--table", "1", "--preset", "smoke", "--seeds", "0-2", "--out", str(out),
                     "--format", "md"]) == 0
    md = capsys.readouterr().out
    expected = _md_rows(md)
    c = _parse(study["site"] / "table-1.html")
    results = [rows for cls, rows in c.tables if cls == "results"]
    assert len(results) == 1
    got = [r for r in results[0] if r]
    assert len(expected) == 12  # the header, Table 1's ten rows, the input-blind reference
    assert got == expected  # header and every cell, as formatted strings
    # what the cells carry: Δ ± interval, MDE, verdicts, the reference row, degenerate marks
    by_row = {r[0]: r for r in got}
    assert by_row["Baseline (MTL)"][-1] == "reference" and by_row["Input-blind reference"][1] == "–"
    assert re.fullmatch(r"[+-]\d+\.\d\d ± \d+\.\d\d \[\d+\.\d\d\]", by_row["DWA"][-3])
    page = html.unescape(re.sub(r"<[^>]+>", "", (study["site"] / "table-1.html").read_text()))
    for line in md.splitlines():
        if line.startswith(("Input-blind reference:", "†k:", "Noise floor", "- ")):
            assert line.removeprefix("- ").replace("`", "") in page.replace("`", "")
    # each row's Δ task by task, as `mtlbench table --format csv` carries it
    assert cli_main(["table", "--table", "1", "--preset", "smoke", "--seeds", "0-2", "--out", str(out),
                     "--format", "csv"]) == 0
    import csv
    import io

    frame = {r["row"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    dwa = frame["dwa"]
    shown = "".join(f"{float(dwa[f'delta:{t}']):+.2f} [{float(dwa[f'delta:{t}:lo']):+.2f}, "
                    f"{float(dwa[f'delta:{t}:hi']):+.2f}]" for t in ("semseg", "depth", "normal"))
    assert "Δ task by task" in page and f"DWA3{shown}" in page.replace("\n", ""), page[page.find("Δ task"):][:600]


def test_index_holds_what_mtlbench_claims_prints_and_the_provenance(study, capsys):
    out = study["out"]
    capsys.readouterr()
    assert cli_main(["claims", "--table", "1", "--preset", "smoke", "--seeds", "0-2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    c = _parse(study["site"] / "index.html")
    assert c.pre["claims-text"] == printed
    claims = [rows for cls, rows in c.tables if cls == "claims"]
    assert len(claims) == 4  # one per Table 1 claim
    text = (study["site"] / "index.html").read_text()
    assert "0123456789abcdef-dirty" in text and "torch 2.x" in text and "cpu · x86_64 · 1 threads · fp32" in text
    assert "mtlbench report --preset smoke --seeds 0-2 --tables 1" in text


def test_default_tables_are_those_with_records(study):
    from mtlbench.report import tables_with_records

    index = RecordIndex(RecordStore.scan(study["out"]))
    # baseline rows are in Tables 1, 4, 5 and the extended one; Table 2 is on the cityscapes variant
    assert tables_with_records(index, preset="smoke", out=study["out"]) == ["1", "4", "5", "extended"]
    assert tables_with_records(index, preset="quick", out=study["out"]) == []


# ---------------------------------------------------------------------------
# the gallery
# ---------------------------------------------------------------------------

def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_gallery_shows_the_known_predictions_pixel_for_pixel(study):
    site, dataset, tasks = study["site"], study["dataset"], study["tasks"]
    base = study["records"]["baseline", 0]
    folders = list((site / "gallery").glob("synthetic-nyuv2-*"))
    assert len(folders) == 1
    run = folders[0] / "runs" / g.safe_name(g.run_slug(base).replace("/", "__"))
    page = (site / "table-1.html").read_text()
    assert run.relative_to(site).as_posix() + "/depth-0.png" in page
    viridis, inferno = g.cmap_palette(g.SCALAR_CMAP), g.cmap_palette(g.ERROR_CMAP)
    val = dataset.split("val")
    for i in range(4):
        tr = g.truth_of(val[i], tasks, i)
        lo, hi = tr.scales["depth"]
        # the predictions: one colour each, the colour map's at the value
        depth = _rgb(run / f"depth-{i}.png")
        assert depth.shape[:2] == tr.truth["depth"].shape
        assert (depth == np.array(viridis[int(g.level(DEPTH, lo, hi))])).all()
        assert (_rgb(run / f"semseg-{i}.png") == np.array(g.PALETTE[CLASS])).all()
        assert (_rgb(run / f"normal-{i}.png") == np.array([128, 128, 255])).all()  # (n + 1) / 2 of (0, 0, 1)
        # the errors, pixel by pixel against the ground truth
        valid = tr.valid["depth"]
        want = np.array(inferno)[g.level(np.abs(DEPTH - tr.truth["depth"]), 0.0, hi - lo)]
        want[~valid] = g.INVALID
        assert (_rgb(run / f"depth-error-{i}.png") == want).all()
        seg = tr.truth["semseg"]
        want = np.where((seg == CLASS)[..., None], g.RIGHT, g.WRONG)
        want[~tr.valid["semseg"]] = g.INVALID
        assert (_rgb(run / f"semseg-error-{i}.png") == want).all()
        angle = np.degrees(np.arccos(np.clip(tr.truth["normal"][..., 2], -1, 1)))
        err = _rgb(run / f"normal-error-{i}.png")
        want = np.array(inferno)[g.level(angle, 0.0, g.MAX_ANGLE)]
        want[~tr.valid["normal"]] = g.INVALID
        assert np.abs(err.astype(int) - want.astype(int)).max() <= 12  # one palette level (uint8 normals)
        # the ground truth on the same scale: its extremes at the two ends of the colour map
        gt = _rgb(folders[0] / f"truth-depth-{i}.png")
        assert (gt[valid] == np.array(viridis[-1])).all(-1).any() and (gt[valid] == np.array(viridis[0])).all(-1).any()
        assert (gt[~valid] == np.array(g.INVALID)).all()
        assert (folders[0] / "reference" / f"depth-{i}.png").is_file()
    # the runs without predictions are listed, not drawn
    assert "<b>Predictions not available</b> for: DWA (no final checkpoint and no cached predictions)" in page
    assert "OKD-MTL (script) (no final checkpoint and no cached predictions)" in page


def test_predictions_come_from_the_final_checkpoint_and_are_cached(tmp_path, toy_backbone):
    import torch

    from mtlbench.config import resolve
    from mtlbench.models import assemble

    cfg = resolve(preset="smoke", flags=[("method.name", "baseline", "--method"),
                                         ("backbone.name", toy_backbone, "--backbone"),
                                         ("train.device", "cpu", "--device")])
    _, tasks, _, method = assemble(cfg)
    # every head a 1x1 convolution: zero weights and a bias make each task's prediction constant
    with torch.no_grad():
        for m in method.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                bias = {1: [DEPTH], 3: list(NORMAL)}.get(m.out_channels)
                m.bias.copy_(torch.tensor(bias) if bias else 10.0 * torch.eye(m.out_channels)[CLASS])
    out = tmp_path / "results"
    paths = RunPaths.for_config(cfg, out)
    rec = {"id": paths.rel.as_posix(), "config": cfg.data, "metrics": {}, "_path": str(paths.record),
           "checkpoint": (Path("checkpoints") / paths.rel / "final.pt").as_posix()}
    paths.final.parent.mkdir(parents=True)
    torch.save({"model": method.state_dict(), "config": cfg.data}, paths.final)
    preds, why = g.run_predictions(rec, out, [0, 2])
    assert why == "" and preds.indices == [0, 2] and preds.source.startswith("final checkpoint")
    assert (preds.maps["depth"] == np.float16(DEPTH)).all() and (preds.maps["semseg"] == CLASS).all()
    assert (preds.maps["normal"] == np.array([128, 128, 255], np.uint8)).all()
    cache = g.cache_path(out, rec)
    assert cache.is_file() and cache.stat().st_size < 20_000
    paths.final.unlink()  # a later report needs no checkpoint
    again, _ = g.run_predictions(rec, out, [2])
    assert again.source.startswith("cached") and again.indices == [2]
    assert (again.maps["depth"] == preds.maps["depth"][1:]).all()
    # images the cache lacks, no checkpoint: not available, said why
    assert g.run_predictions(rec, out, [1]) == (None, "no final checkpoint and no cached predictions")
    # a checkpoint of another config (overwritten by another run) is refused, not drawn
    other = resolve(preset="smoke", flags=[("method.name", "baseline", "--method"),
                                           ("backbone.name", toy_backbone, "--backbone"), ("seed", 7, "--seed")])
    torch.save({"model": method.state_dict(), "config": other.data}, paths.final)
    none, why = g.run_predictions(rec, out, [1])
    assert none is None and "belongs to another config" in why


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_input_is_a_user_error(study, tmp_path, capsys):
    out = str(study["out"])

    def err(*argv):
        capsys.readouterr()
        assert cli_main(["report", *argv]) == 2
        return capsys.readouterr().err

    assert "--tables 9: there is no table 9" in err("--tables", "9", "--out", out, "--site", str(tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    assert "no run records under" in err("--out", str(tmp_path / "empty"), "--site", str(tmp_path / "b"))
    assert "no such directory" in err("--out", str(tmp_path / "nope"), "--site", str(tmp_path / "b"))
    assert "no table has a record of preset quick" in err("--preset", "quick", "--out", out,
                                                          "--site", str(tmp_path / "b"))
    (tmp_path / "file").write_text("x")
    e = err("--preset", "smoke", "--tables", "1", "--out", out, "--site", str(tmp_path / "file" / "site"))
    assert "cannot write there" in e and "hint:" in e
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "not empty and holds no earlier report" in err("--preset", "smoke", "--tables", "1", "--out", out,
                                                         "--site", str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written on a bad input


# ---------------------------------------------------------------------------
# a real browser
# ---------------------------------------------------------------------------

CHECK_JS = ("<script>window.addEventListener('load', function () {"
            "var imgs = Array.prototype.slice.call(document.images);"
            "var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });"
            "document.title = 'checked images=' + imgs.length + ' broken=' + bad.length"
            " + ' [' + bad.map(function (i) { return i.getAttribute('src'); }).join(' ') + ']';"
            "});</script>")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.browser
def test_pages_open_in_headless_chromium_without_errors(study, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("CI: Chromium is not installed, so the report cannot be checked in a browser "
                        "(.ci/run installs it: apt-get install -y chromium)")
        pytest.skip("needs Chromium for the browser check: apt-get install chromium")
    site = tmp_path / "site"
    shutil.copytree(study["site"], site)
    flags = ["--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
             "--allow-file-access-from-files", "--virtual-time-budget=5000"]
    procs = {}
    for i, name in enumerate(["index.html", "table-1.html", "figures.html"]):
        checked = site / f"check-{name}"
        checked.write_text((site / name).read_text().replace("</body>", CHECK_JS + "</body>"))
        procs[name] = subprocess.Popen(
            [exe, *flags, f"--user-data-dir={tmp_path / f'profile{i}'}", "--enable-logging=stderr", "--v=0",
             "--dump-dom", checked.as_uri()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shot = tmp_path / "screenshot-index.png"
    shooter = subprocess.Popen([exe, *flags, f"--user-data-dir={tmp_path / 'profile-shot'}", "--hide-scrollbars",
                                "--window-size=1280,1600", f"--screenshot={shot}", (site / "index.html").as_uri()],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name, p in procs.items():
        dom, log = p.communicate(timeout=90)
        title = re.search(r"<title>(.*?)</title>", dom, re.S)
        assert title and title.group(1).startswith("checked images="), (name, dom[:300], log[-2000:])
        n, broken = re.match(r"checked images=(\d+) broken=(\d+)", title.group(1)).groups()
        assert int(n) > 0 and broken == "0", (name, title.group(1))
        console = [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        assert not console, (name, console)
    shooter.wait(timeout=90)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        assert len(np.unique(np.asarray(im.convert("L")))) > 20  # a page, not a blank
