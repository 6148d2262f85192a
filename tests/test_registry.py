from __future__ import annotations

import importlib.metadata as md
import types

import pytest

from mtlbench.cli import main
from mtlbench.errors import UserError
from mtlbench.registry import METHODS, Registry


class _EP:
    """A stand-in for an importlib.metadata entry point of a third-party package."""

    def __init__(self, name, obj, dist="thirdparty-pkg"):
        self.name, self._obj, self.value = name, obj, f"thirdparty.module:{name}"
        self.dist = types.SimpleNamespace(name=dist)
        self.loaded = 0

    def load(self):
        self.loaded += 1
        return self._obj


def _fake_eps(monkeypatch, group_map):
    def entry_points(group=None):
        return group_map.get(group, [])

    monkeypatch.setattr(md, "entry_points", entry_points)


def test_decorator_registration_and_lookup():
    reg = Registry("widget", "mtlbench.widgets")

    @reg.register("alpha", aliases=("a",))
    class Alpha:
        """The first widget.

        More text."""

    assert reg.get("alpha") is Alpha
    assert reg.get("a") is Alpha
    assert reg.canonical("a") == "alpha"
    entry = next(reg.entries())
    assert entry.summary == "The first widget."
    assert "builtin" in entry.origin and __name__ in entry.origin


def test_duplicate_name_names_both_origins():
    reg = Registry("widget", "mtlbench.widgets")
    reg.register("alpha", origin="builtin (pkg.one)")(type("A", (), {}))
    with pytest.raises(UserError) as e:
        reg.register("alpha", origin="builtin (pkg.two)")(type("B", (), {}))
    assert "pkg.one" in str(e.value) and "pkg.two" in str(e.value)


def test_unknown_name_lists_close_matches_and_all_names():
    reg = Registry("widget", "mtlbench.widgets")
    for n in ("gradnorm", "baseline", "okd"):
        reg.register(n)(type(n, (), {}))
    with pytest.raises(UserError) as e:
        reg.get("gradnrom")
    msg = str(e.value)
    assert "did you mean 'gradnorm'" in msg
    assert "baseline" in msg and "okd" in msg


def test_entry_points_load_lazily(monkeypatch):
    class Plugin:
        summary = "a third-party method"

    ep = _EP("thirdparty_method", Plugin)
    _fake_eps(monkeypatch, {"mtlbench.widgets": [ep]})
    reg = Registry("widget", "mtlbench.widgets")
    assert ep.loaded == 0  # nothing loaded at construction
    assert reg.get("thirdparty_method") is Plugin
    assert ep.loaded == 1
    entry = [e for e in reg.entries() if e.name == "thirdparty_method"][0]
    assert entry.origin.startswith("entry point thirdparty-pkg")


def test_entry_point_clashing_with_builtin_is_an_error(monkeypatch):
    reg = Registry("widget", "mtlbench.widgets")
    reg.register("okd", origin="builtin (mtlbench.methods.okd)")(type("O", (), {}))
    _fake_eps(monkeypatch, {"mtlbench.widgets": [_EP("okd", type("X", (), {}))]})
    with pytest.raises(UserError) as e:
        reg.names()
    assert "mtlbench.methods.okd" in str(e.value) and "thirdparty-pkg" in str(e.value)


def test_entry_point_clashing_with_an_alias_names_the_package_to_fix(monkeypatch):
    reg = Registry("widget", "mtlbench.widgets")
    reg.register("baseline", aliases=("ew",), origin="builtin (mtlbench.methods.baseline)")(type("B", (), {}))
    _fake_eps(monkeypatch, {"mtlbench.widgets": [_EP("ew", type("X", (), {}), dist="their-pkg")]})
    with pytest.raises(UserError) as e:
        reg.names()
    assert "duplicate widget name 'ew'" in str(e.value) and "mtlbench.methods.baseline" in str(e.value)
    assert "rename the entry point in the their-pkg package" in str(e.value)


def test_a_plugin_that_fails_to_import_fails_every_lookup(monkeypatch):
    class Broken:
        name, value, dist = "broken", "thirdparty.broken:Broken", types.SimpleNamespace(name="broken-pkg")

        def load(self):
            raise ImportError("No module named 'thirdparty.broken'")

    good = _EP("good", type("Good", (), {}))
    _fake_eps(monkeypatch, {"mtlbench.widgets": [good, Broken()]})
    reg = Registry("widget", "mtlbench.widgets")
    lookups = [reg.names, lambda: reg.get("good"), lambda: "good" in reg, lambda: list(reg.entries()),
               lambda: reg.canonical("good"), reg.names]
    for lookup in lookups:  # not only the first: a second lookup must not see a partial registry
        with pytest.raises(UserError) as e:
            lookup()
        assert "could not load widget plugin 'broken'" in str(e.value) and "broken-pkg" in str(e.value)


def test_a_builtin_plugin_that_fails_to_import_fails_every_lookup(tmp_path, monkeypatch):
    pkg = tmp_path / "brokenplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fine.py").write_text("from mtlbench.registry import METHODS\n")
    (pkg / "zbroken.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_eps(monkeypatch, {})
    reg = Registry("widget", "mtlbench.widgets", ("brokenplugins",))
    for _ in range(3):
        with pytest.raises(UserError, match=r"could not import the built-in widget plugin "
                                            r"brokenplugins\.zbroken: ModuleNotFoundError"):
            reg.names()


def test_assemble_moved_to_models_and_the_old_import_warns():
    import warnings

    import mtlbench.registry as registry
    from mtlbench.models import assemble

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from mtlbench.registry import assemble as old
    assert old is assemble
    assert any(issubclass(w.category, DeprecationWarning) and "mtlbench.models.assemble" in str(w.message)
               for w in caught)
    with pytest.raises(AttributeError):
        registry.no_such_name  # noqa: B018


def test_builtin_registries_have_the_core_plugins():
    assert {"baseline", "stl"} <= set(METHODS.names())
    assert METHODS.canonical("ew") == "baseline"


def test_cli_list(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "stl" in out and "builtin" in out


def test_third_party_method_runs_through_cli_list(monkeypatch, capsys):
    from mtlbench.api import Method

    class MyMethod(Method):
        summary = "my lab's method"

    reg = Registry("method", "mtlbench.methods", ("mtlbench.methods",))
    _fake_eps(monkeypatch, {"mtlbench.methods": [_EP("mymethod", MyMethod, dist="my-lab")]})
    monkeypatch.setattr("mtlbench.registry.METHODS", reg)
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "mymethod" in out and "my-lab" in out


def test_third_party_method_with_its_own_optimiser_and_figure_runs_end_to_end(tmp_path, capsys):
    """A plugin from another package gets what the built-ins get: the trainer builds, steps
    and checkpoints its own optimiser, the run is recorded, and `plot --list` shows its figure."""
    import json
    from dataclasses import dataclass

    import torch

    from mtlbench.api import FigureSpec, Method, OptimizerSpec
    from mtlbench.config import option

    @dataclass
    class ScaledConfig:
        scale_lr: float = option(0.05, gt=0)  # Adam lr of the per-task log-scales

    class Scaled(Method):
        Config = ScaledConfig
        summary = "a third-party example: learned per-task loss scales with their own Adam"

        def build(self):
            super().build()
            self.log_scale = torch.nn.Parameter(torch.zeros(len(self.task_names)))

        def param_groups(self):
            return [{"params": [p for n, p in self.named_parameters() if n != "log_scale"]}]

        def optimizers(self):
            return [OptimizerSpec("model", self.param_groups()),
                    OptimizerSpec("scales", [{"params": [self.log_scale]}], kind="adam",
                                  lr=self.cfg.scale_lr, scheduled=False)]

        def loss_weights(self, losses):
            w = torch.exp(-self.log_scale)
            return {t: w[i] for i, t in enumerate(self.task_names)}

        @classmethod
        def figures(cls):
            return {"scales": FigureSpec("scales", "the learned scales over steps",
                                         draw=lambda records, out, **kw: out)}

    METHODS.names()  # load the built-ins first
    METHODS.add("thirdparty_scaled", Scaled, origin="entry point my-lab:my_lab.scaled:Scaled")
    try:
        out = tmp_path / "res"
        assert main(["run", "--method", "thirdparty_scaled", "--backbone", "vit_tiny", "--preset", "smoke",
                     "--quiet", "--out", str(out), "--set", "method.scale_lr=0.1"]) == 0
        rec_path = next((out / "runs").rglob("thirdparty_scaled/*.json"))
        rec = json.loads(rec_path.read_text())
        # a third-party weighting gets the architecture axis too (hard sharing by default)
        assert rec["config"]["method"] == {"name": "thirdparty_scaled", "scale_lr": 0.1, "architecture": "hard"}
        final = torch.load(out / rec["checkpoint"], weights_only=False)["model"]
        # the trainer stepped the plugin's own optimiser: 2 Adam steps of lr 0.1 move each scale
        assert torch.all(final["log_scale"].abs() > 0.05), final["log_scale"]
        step = json.loads((rec_path.parent / rec["history"]["steps_file"]).read_text().splitlines()[0])
        assert {"weight/semseg", "weight/depth", "weight/normal"} <= set(step)
        capsys.readouterr()
        assert main(["plot", "--list"]) == 0
        listed = capsys.readouterr().out
        assert "scales" in listed and "thirdparty_scaled" in listed
    finally:
        METHODS._entries.pop("thirdparty_scaled", None)
