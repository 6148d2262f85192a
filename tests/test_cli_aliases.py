"""One name per concept across subcommands; the old spellings still work for one release.

* the table a command is about: ``--table N`` (``table``, ``sweep``, ``claims``); ``table --id`` is old;
* the results directory: ``--out DIR`` (``run``, ``sweep``, ``table``, ``claims``, ``plot``);
  ``plot --results`` is old;
* where a rendered table or figure is written: ``--save`` (``table --save FILE``,
  ``plot --save DIR``); ``plot --out-dir`` is old;
* a dataset's directory: ``--data-root DIR`` (``run``, ``sweep``, ``table``, ``claims``,
  ``data check``, ``data synth``); ``data synth --out`` is old.

An old spelling sets the same value and prints one line to stderr naming what replaced it.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import mtlbench.plots
from mtlbench.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _note(old: str, new: str) -> str:
    return f"mtlbench: note: {old} is now {new}"


@pytest.mark.parametrize("old,new,argv,dest", [
    ("--id", "--table", ["table", "{flag}", "4", "--out", "R"], "table"),
    ("--results", "--out", ["plot", "{flag}", "R"], "out"),
    ("--out-dir", "--save", ["plot", "{flag}", "F"], "save"),
    ("--out", "--data-root", ["data", "synth", "{flag}", "D"], "data_root"),
])
def test_old_and_new_spelling_parse_to_the_same_value_and_the_old_says_what_replaced_it(
        old, new, argv, dest, capsys):
    parser = build_parser()
    got_new = parser.parse_args([a.replace("{flag}", new) for a in argv])
    assert capsys.readouterr().err == ""
    got_old = build_parser().parse_args([a.replace("{flag}", old) for a in argv])
    err = capsys.readouterr().err
    assert vars(got_old) == vars(got_new)
    assert err.count("\n") == 1 and err.startswith(_note(old, new)), err
    assert getattr(got_old, dest) == argv[argv.index("{flag}") + 1]


@pytest.mark.parametrize("argv", [
    ["table", "--id", "1", "--table", "2"],
    ["plot", "--results", "R", "--out", "S"],
    ["plot", "--out-dir", "F", "--save", "G"],
    ["data", "synth", "--out", "D", "--data-root", "E"],
])
def test_old_and_new_spelling_together_is_a_usage_error(argv, capsys):
    assert main(argv) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_new_spellings_are_in_help_and_the_old_ones_not(capsys):
    for argv, shown, hidden in [(["table", "--help"], "--table N", "--id"),
                                (["plot", "--help"], "--save DIR", "--out-dir"),
                                (["plot", "--help"], "--out DIR", "--results"),
                                (["data", "synth", "--help"], "--data-root DIR", "--out ")]:
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert shown in out and hidden not in out, (argv, out)


def test_required_table_flag_is_still_required(capsys):
    assert main(["table", "--out", "results"]) == 2
    assert "--table" in capsys.readouterr().err


def test_table_old_spelling_builds_the_same_table(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    common = ["--preset", "smoke", "--dataset", "synthetic", "--format", "csv", "--out", str(tmp_path)]
    assert main(["table", "--table", "1", *common]) == 0  # warms the data and reference caches
    capsys.readouterr()
    assert main(["table", "--table", "1", *common]) == 0
    new = capsys.readouterr()
    assert main(["table", "--id", "1", *common]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and "Single Task" in new.out
    assert new.err == "" and old.err.startswith(_note("--id", "--table"))


def test_plot_old_spellings_reach_the_same_directories(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(mtlbench.plots, "pyplot", lambda: None)
    monkeypatch.setattr(mtlbench.plots, "load_runs", lambda runs, results: seen.setdefault("results", results) and [])
    monkeypatch.setattr(mtlbench.plots, "default_selection", lambda entry, records: records)

    def make_plot(entry, records, out_dir, fmt, **options):
        seen["out_dir"] = out_dir
        return Path(out_dir) / f"curves.{fmt}"

    monkeypatch.setattr(mtlbench.plots, "make_plot", make_plot)
    for argv in (["--out", "R", "--save", "F"], ["--results", "R", "--out-dir", "F"]):
        seen.clear()
        assert main(["plot", "--kind", "curves", *argv]) == 0
        assert seen == {"results": "R", "out_dir": "F"}
    err = capsys.readouterr().err
    assert _note("--results", "--out") in err and _note("--out-dir", "--save") in err


def test_data_synth_old_spelling_writes_the_dataset(tmp_path, capsys):
    size = ["--n-train", "2", "--n-val", "1", "--height", "16", "--width", "24"]
    assert main(["data", "synth", "--out", str(tmp_path / "old"), *size]) == 0
    assert main(["data", "synth", "--data-root", str(tmp_path / "new"), *size]) == 0
    err = capsys.readouterr().err
    assert err.count(_note("--out", "--data-root")) == 1
    old = sorted(p.relative_to(tmp_path / "old") for p in (tmp_path / "old").rglob("*"))
    assert old and old == sorted(p.relative_to(tmp_path / "new") for p in (tmp_path / "new").rglob("*"))
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(tmp_path / "old")]) == 0


def test_sweep_and_claims_take_table_too(capsys):
    assert build_parser().parse_args(["sweep", "--table", "1"]).table == "1"
    assert build_parser().parse_args(["claims", "--table", "1"]).table == "1"
    assert capsys.readouterr().err == ""


def test_the_readme_examples_use_the_new_spellings(capsys):
    """Every ``mtlbench ...`` line of the README's examples parses, and none prints a renamed flag's note."""
    text = README.read_text()
    # a command continued over lines with a trailing backslash is one command
    lines = [m.group(1) for block in re.findall(r"```bash\n(.*?)```", text.replace("\\\n", " "), re.S)
             for m in re.finditer(r"^mtlbench (.*)$", block, re.M)]
    lines = [line.split("  #")[0].strip() for line in lines if "..." not in line]
    assert len(lines) >= 10
    for line in lines:
        build_parser().parse_args(shlex.split(line))
        err = capsys.readouterr().err
        assert "note:" not in err, (line, err)
    assert not re.search(r"mtlbench table --id|plot .*--(results|out-dir)|data synth .*--out ", text)
