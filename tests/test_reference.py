"""Input-blind references (mtlbench.tasks fitters, mtlbench.reference) against hand computation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mtlbench.errors import UserError
from mtlbench.metrics import DepthMetric, NormalMetric, SegmentationMetric
from mtlbench.reference import (DEGENERATE_THRESHOLD, ReferenceResult, cache_path, dataset_identity,
                                evaluate_references, fit_references, learned, learned_from_metrics,
                                reference_for_dataset, reference_metrics)
from mtlbench.tasks import (Depth, MajorityClassFitter, MeanDepthFitter, MeanNormalFitter, Normal, SemSeg,
                            Task)

S = 1 / math.sqrt(2)


class Tiny(torch.utils.data.Dataset):
    """A split from a list of ``{task: target}`` dicts (the image is a dummy)."""

    def __init__(self, items, augment: bool = False):
        self.items = items
        self.augment = augment

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = {k: v.clone() for k, v in self.items[i].items()}
        if self.augment:  # a stand-in for random crops: a fit that used it would be visibly off
            item = {k: (v * 0 + 9 if k == "depth" else v) for k, v in item.items()}
        h, w = next(iter(item.values())).shape[-2:]
        return {"image": torch.zeros(3, h, w), **item, "index": i}


class TinyFp(Tiny):
    """A split that says what identifies it (the third-party hook of dataset_identity)."""

    def __init__(self, items, fp: str):
        super().__init__(items)
        self.fp = fp

    def fingerprint(self):
        return self.fp


def depth(rows):
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(0)  # (1, H, W)


def labels(rows):
    return torch.tensor(rows, dtype=torch.int64)


def normals(pixels):
    """(3, 1, W) from a list of W vectors."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(3, 1, len(pixels))


# Training targets, 2x2 depth and labels, 1x3 normals.
DEPTH_TRAIN = [depth([[1, 0], [2, 4]]), depth([[3, 0], [0, 6]]), depth([[5, 0], [4, 0]])]
# pixel (0,0): 1, 3, 5 -> 3; (0,1) never valid -> the global mean (1+2+4+3+6+5+4)/7 = 25/7;
# (1,0): 2, 4 -> 3 (the 0 is invalid, not a depth); (1,1): 4, 6 -> 5.  Median of 1 2 3 4 4 5 6: 4.
DEPTH_MAP = [[3.0, 25 / 7], [3.0, 5.0]]
DEPTH_FLAT = [3.0, 25 / 7, 3.0, 5.0]

LABEL_TRAIN = [labels([[0, 255], [2, 2]]), labels([[0, -1], [2, 1]]), labels([[1, -1], [2, -1]])]
# (0,0): 0 0 1 -> 0; (0,1) never labelled (-1, and 255 >= C is ignored too) -> the global majority:
# class counts 0: 2, 1: 2, 2: 4 -> 2; (1,0): 2 2 2 -> 2; (1,1): 2, 1 (and ignore) -> a tie, the lowest id: 1.
LABEL_MAP = [[0, 2], [2, 1]]

NORMAL_TRAIN = [normals([[1, 0, 0], [0, 0, 1], [0, 0, 0]]),
                normals([[0, 1, 0], [0, 0, 1], [0, 0, 0]]),
                normals([[0, 0, 0], [0.6, 0, 0.8], [0, 0, 0]])]
# pixel 0: (1,0,0) + (0,1,0) (the third invalid) -> (1,1,0)/sqrt 2; pixel 1: sum (0.6, 0, 2.8), the mean
# (0.2, 0, 0.9333) is shorter than 1 and renormalised: / sqrt(8.2); pixel 2 never valid -> the global
# mean direction: sum (1.6, 1, 2.8) / sqrt(11.4).
N1 = [0.6 / math.sqrt(8.2), 0.0, 2.8 / math.sqrt(8.2)]
NG = [1.6 / math.sqrt(11.4), 1.0 / math.sqrt(11.4), 2.8 / math.sqrt(11.4)]
NORMAL_MAP = [[S, S, 0.0], N1, NG]


def train_items():
    return [{"semseg": s, "depth": d} for s, d in zip(LABEL_TRAIN, DEPTH_TRAIN)]


TASKS = {"semseg": SemSeg(3), "depth": Depth()}


# -- fitters -------------------------------------------------------------------------------------

def test_mean_depth_map_excludes_invalid_pixels_and_falls_back_to_the_global_mean():
    f = MeanDepthFitter()
    f.update(torch.stack(DEPTH_TRAIN[:2]))  # batches of 2 and 1: the same as one of 3
    f.update(torch.stack(DEPTH_TRAIN[2:]))
    p = f.predictions()
    assert set(p) == set(f.variants) == {"pixel_mean", "median"}
    assert p["pixel_mean"].shape == (1, 2, 2) and p["pixel_mean"].dtype == torch.float32
    assert p["pixel_mean"].flatten().tolist() == pytest.approx(DEPTH_FLAT)
    assert p["median"].shape == (1, 2, 2) and (p["median"] == 4.0).all()
    # an even count: the mean of the two middle values (1 2 | 3 10 -> 2.5)
    g = MeanDepthFitter()
    g.update(torch.stack([depth([[1, 2]]), depth([[10, 3]])]))
    assert float(g.predictions()["median"][0, 0, 0]) == 2.5


def test_majority_class_ignores_ignore_labels_and_falls_back_to_the_global_majority():
    f = MajorityClassFitter(3)
    for lab in LABEL_TRAIN:
        f.update(lab.unsqueeze(0))
    p = f.predictions()
    assert p["pixel_majority"].dtype == torch.int64
    assert p["pixel_majority"].tolist() == LABEL_MAP
    assert p["majority"].tolist() == [[2, 2], [2, 2]]


def test_mean_normal_is_renormalised_and_falls_back_to_the_global_direction():
    f = MeanNormalFitter()
    f.update(torch.stack(NORMAL_TRAIN))
    p = f.predictions()
    got = p["pixel_mean"][:, 0, :].T.tolist()  # one vector per pixel
    for g, want in zip(got, NORMAL_MAP):
        assert g == pytest.approx(want, abs=1e-6)
    assert p["pixel_mean"].norm(dim=0).flatten().tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert p["mean"][:, 0, 1].tolist() == pytest.approx(NG, abs=1e-6)  # the constant variant
    # normals that cancel out at a pixel have no mean direction there: the global one
    g = MeanNormalFitter()
    g.update(torch.stack([normals([[1, 0, 0], [0, 0, 1]]), normals([[-1, 0, 0], [0, 0, 1]])]))
    assert g.predictions()["pixel_mean"][:, 0, 0].tolist() == pytest.approx([0.0, 0.0, 1.0])


def test_fitters_refuse_what_they_cannot_fit():
    with pytest.raises(ValueError, match="no targets seen"):
        MeanDepthFitter().predictions()
    f = MeanDepthFitter()
    f.update(torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="no valid depth"):
        f.predictions()
    s = MajorityClassFitter(3)
    s.update(torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="no labelled pixel"):
        s.predictions()
    n = MeanNormalFitter()
    n.update(torch.zeros(1, 3, 1, 2))
    with pytest.raises(ValueError, match="no valid normal"):
        n.predictions()
    m = MeanDepthFitter()
    m.update(torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="one size"):
        m.update(torch.ones(1, 1, 3, 2))


def test_task_hooks():
    assert isinstance(SemSeg(13).reference_fitter(), MajorityClassFitter)
    assert SemSeg(13).reference_fitter().num_classes == 13
    assert isinstance(Depth().reference_fitter(), MeanDepthFitter)
    assert isinstance(Normal().reference_fitter(), MeanNormalFitter)
    assert Task().reference_fitter() is None  # a task without a reference
    a, b = Depth().reference_fitter(), Depth().reference_fitter()
    assert a is not b  # a fresh fitter each time


# -- fitting on a split and scoring on the other ----------------------------------------------------

def test_fit_references_on_a_split_any_batch_size():
    for bs in (1, 2, 3):
        maps = fit_references(TASKS, Tiny(train_items()), batch_size=bs)
        assert maps["depth"]["pixel_mean"].flatten().tolist() == pytest.approx(DEPTH_FLAT)
        assert maps["semseg"]["pixel_majority"].tolist() == LABEL_MAP
    # a task without a fitter is left out
    class Blind(Task):
        name = "blind"

    assert set(fit_references({"depth": Depth(), "blind": Blind()}, Tiny(train_items()))) == {"depth"}


def test_fit_switches_augmentation_off():
    aug = Tiny(train_items(), augment=True)
    assert float(aug[0]["depth"][0, 0, 0]) == 9.0  # the split as a run would see it
    maps = fit_references(TASKS, aug)
    assert maps["depth"]["pixel_mean"].flatten().tolist() == pytest.approx(DEPTH_FLAT)
    assert aug.augment  # the caller's split is left as it was


VAL = [{"semseg": labels([[0, 1], [2, -1]]), "depth": depth([[2, 4], [0, 5]])}]
VAL_NORMAL = [{"normal": normals([[1, 0, 0], [0, 0, 1], [0, 0, 0]])}]


def test_reference_metrics_by_hand():
    r = reference_metrics(TASKS, Tiny(train_items()), Tiny(VAL), cache=False)
    d = r.metrics["depth"]
    # pixel_mean [[3, 25/7], [3, 5]] against [[2, 4], [0 (invalid), 5]]: errors 1, 3/7, 0 over 3 pixels
    assert d["pixel_mean"]["abs_err"] == pytest.approx((1 + 3 / 7 + 0) / 3)
    assert d["pixel_mean"]["rel_err"] == pytest.approx((1 / 2 + (3 / 7) / 4 + 0) / 3)
    # the median 4: errors 2, 0, 1
    assert d["median"]["abs_err"] == pytest.approx(1.0)
    assert d["median"]["rel_err"] == pytest.approx((2 / 2 + 0 + 1 / 5) / 3)
    s = r.metrics["semseg"]
    # [[0, 2], [2, 1]] against [[0, 1], [2, ignore]]: conf[0,0] = conf[1,2] = conf[2,2] = 1;
    # IoU 1, 0, 1/(2+1-1) -> mIoU 50%; 2 of 3 right
    assert s["pixel_majority"] == pytest.approx({"miou": 50.0, "pacc": 200 / 3})
    # all 2: IoU 0, 0, 1/3 -> 11.1%; 1 of 3 right
    assert s["majority"] == pytest.approx({"miou": 100 / 9, "pacc": 100 / 3})
    assert r.images == {"train": 3, "val": 1} and not r.cached


def test_normal_reference_metrics_by_hand():
    r = reference_metrics({"normal": Normal()}, Tiny([{"normal": n} for n in NORMAL_TRAIN]), Tiny(VAL_NORMAL),
                          cache=False)
    m = r.metrics["normal"]["pixel_mean"]
    # pixel 0: (1,0,0) against (1,1,0)/sqrt 2 = 45 degrees; pixel 1: (0,0,1) against N1 = acos(2.8/sqrt 8.2)
    a1 = math.degrees(math.acos(2.8 / math.sqrt(8.2)))  # 12.09 degrees
    assert m["mean"] == pytest.approx((45 + a1) / 2, abs=1e-4)
    assert m["median"] == pytest.approx((45 + a1) / 2, abs=1e-4)
    assert (m["within_11.25"], m["within_22.5"], m["within_30"]) == pytest.approx((0.0, 50.0, 50.0))


def test_reference_metrics_equal_the_metric_classes_on_the_constant_prediction():
    # a batch of several val images, scored with a batch size that splits it
    gen = torch.Generator().manual_seed(0)
    val = []
    for _ in range(5):
        d = torch.rand(1, 2, 2, generator=gen) * 5
        d[d < 1] = 0
        val.append({"semseg": torch.randint(-1, 3, (2, 2), generator=gen), "depth": d})
    r = reference_metrics(TASKS, Tiny(train_items()), Tiny(val), cache=False, batch_size=2)
    dm = DepthMetric()
    dm.update(torch.tensor([DEPTH_MAP]).expand(5, 1, 2, 2), torch.stack([v["depth"] for v in val]))
    assert r.metrics["depth"]["pixel_mean"] == pytest.approx(dm.compute(), rel=1e-6)
    sm = SegmentationMetric(3)
    sm.update(torch.tensor(LABEL_MAP).expand(5, 2, 2), torch.stack([v["semseg"] for v in val]))
    assert r.metrics["semseg"]["pixel_majority"] == pytest.approx(sm.compute())
    nm = NormalMetric()
    nt = torch.nn.functional.normalize(torch.randn(4, 3, 1, 3, generator=gen), dim=1)
    rn = reference_metrics({"normal": Normal()}, Tiny([{"normal": n} for n in NORMAL_TRAIN]),
                           Tiny([{"normal": x} for x in nt]), cache=False)
    nm.update(torch.tensor(NORMAL_MAP).T.reshape(3, 1, 3).expand(4, 3, 1, 3), nt)
    assert rn.metrics["normal"]["pixel_mean"] == pytest.approx(nm.compute(), rel=1e-5)


def test_val_split_of_another_size_is_an_error():
    val = [{"semseg": labels([[0, 1, 2]] * 3), "depth": depth([[1, 2, 3]] * 3)}]
    with pytest.raises(UserError, match="one size"):
        reference_metrics(TASKS, Tiny(train_items()), Tiny(val), cache=False)


def test_evaluate_references_takes_given_maps():
    maps = {"depth": {"two": torch.full((1, 2, 2), 2.0)}}
    m = evaluate_references(TASKS, maps, Tiny(VAL))
    assert m == {"depth": {"two": pytest.approx({"abs_err": (0 + 2 + 3) / 3, "rel_err": (0 + 0.5 + 0.6) / 3})}}


# -- cache ------------------------------------------------------------------------------------------

def test_cache_keyed_by_the_dataset_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    train, val = TinyFp(train_items(), "train-v1"), TinyFp(VAL, "val-v1")
    ident = dataset_identity(TASKS, train, val)
    assert ident is not None
    first = reference_metrics(TASKS, train, val)
    assert not first.cached and first.identity == ident
    path = cache_path(ident)
    assert path.parent == tmp_path / "reference" and path.exists()
    saved = json.loads(path.read_text())
    assert saved["identity"] == ident and saved["metrics"]["depth"]["median"]["abs_err"] == pytest.approx(1.0)
    again = reference_metrics(TASKS, train, val)
    assert again.cached and again.metrics == first.metrics
    # other content, other identity: computed afresh (here with other targets)
    train2 = TinyFp([{"semseg": s, "depth": d * 2} for s, d in zip(LABEL_TRAIN, DEPTH_TRAIN)], "train-v2")
    other = reference_metrics(TASKS, train2, val)
    assert not other.cached and other.identity != ident
    assert other.metrics["depth"]["median"]["abs_err"] == pytest.approx((6 + 4 + 3) / 3)  # median 8
    # other tasks (class count), other identity
    assert dataset_identity({"semseg": SemSeg(4), "depth": Depth()}, train, val) != ident
    # a damaged cache file is recomputed and rewritten
    path.write_text("{not json")
    assert not reference_metrics(TASKS, train, val).cached
    assert reference_metrics(TASKS, train, val).cached


def test_no_identity_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    assert dataset_identity(TASKS, Tiny(train_items()), Tiny(VAL)) is None
    r = reference_metrics(TASKS, Tiny(train_items()), Tiny(VAL))
    assert r.identity is None and not r.cached and not (tmp_path / "reference").exists()
    # an identity given by the caller is used
    r = reference_metrics(TASKS, Tiny(train_items()), Tiny(VAL), identity="abc" * 8)
    assert cache_path("abc" * 8).exists()
    assert reference_metrics(TASKS, Tiny(train_items()), Tiny(VAL), identity="abc" * 8).cached


def test_nan_metrics_round_trip_through_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    val = [{"semseg": labels([[-1, -1], [-1, -1]]), "depth": depth([[0, 0], [0, 0]])}]  # nothing valid
    r = reference_metrics(TASKS, TinyFp(train_items(), "t"), TinyFp(val, "v"))
    assert math.isnan(r.metrics["depth"]["median"]["abs_err"])
    again = reference_metrics(TASKS, TinyFp(train_items(), "t"), TinyFp(val, "v"))
    assert again.cached and math.isnan(again.metrics["depth"]["median"]["abs_err"])


def test_synthetic_dataset_references(tmp_path, monkeypatch):
    from mtlbench.data.synthetic import Synthetic

    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    ds = Synthetic(Synthetic.Config(n_train=3, n_val=2, height=16, width=16, image_size=[16, 16], augment=True))
    tasks = ds.tasks()
    ident = dataset_identity(tasks, ds.split("train"), ds.split("val"))
    assert ident is not None
    r = reference_for_dataset(ds)
    assert not r.cached and r.identity == ident and set(r.metrics) == {"semseg", "depth", "normal"}
    assert set(r.metrics["depth"]) == {"pixel_mean", "median"}
    assert set(r.metrics["normal"]["mean"]) == set(NormalMetric.keys)
    # the same numbers as fitting by hand on the unaugmented train targets and scoring with the metric
    from mtlbench.data.mtan import MTANDataset

    plain = MTANDataset(ds.data_dir(), "train", ds.split("train").spec, image_size=[16, 16])  # no augmentation
    train = [plain[i] for i in range(3)]
    valid = torch.stack([t["depth"] for t in train])
    cnt = (valid != 0).sum(0)
    mean = torch.where(cnt > 0, valid.sum(0) / cnt.clamp_min(1), valid[valid != 0].mean())
    dm = DepthMetric()
    for i in range(2):
        dm.update(mean.unsqueeze(0), ds.split("val")[i]["depth"].unsqueeze(0))
    assert r.metrics["depth"]["pixel_mean"] == pytest.approx(dm.compute(), rel=1e-5)
    assert reference_for_dataset(ds).cached
    # another resize, another identity
    ds2 = Synthetic(Synthetic.Config(n_train=3, n_val=2, height=16, width=16, image_size=[8, 8]))
    assert dataset_identity(tasks, ds2.split("train"), ds2.split("val")) != ident


# -- degenerate tasks ----------------------------------------------------------------------------

def test_learned_both_directions_both_sides_of_the_threshold():
    hib = {"depth": False, "semseg": True}
    # lower is better: (0.60 - 0.58) / 0.60 = 3.3% < 5%: degenerate; (0.60 - 0.45) / 0.60 = 25%: learned
    out = learned({"depth": 0.58, "semseg": 20.5}, {"depth": 0.60, "semseg": 20.0}, hib)
    assert out["depth"].improvement == pytest.approx(0.02 / 0.60) and out["depth"].degenerate
    # higher is better: (20.5 - 20) / 20 = 2.5%: degenerate
    assert out["semseg"].improvement == pytest.approx(0.025) and out["semseg"].degenerate
    out = learned({"depth": 0.45, "semseg": 30.0}, {"depth": 0.60, "semseg": 20.0}, hib)
    assert out["depth"].improvement == pytest.approx(0.25) and out["depth"].degenerate is False
    assert out["semseg"].improvement == pytest.approx(0.5) and out["semseg"].degenerate is False
    # worse than the reference: negative, degenerate in either direction
    out = learned({"depth": 0.70, "semseg": 15.0}, {"depth": 0.60, "semseg": 20.0}, hib)
    assert out["depth"].improvement == pytest.approx(-0.1 / 0.6) and out["depth"].degenerate
    assert out["semseg"].improvement == pytest.approx(-0.25) and out["semseg"].degenerate
    # the threshold is a parameter; learning means beating it, so exactly at it is degenerate
    # (binary-exact: 0.0625 / 0.5 = 0.125)
    assert learned({"depth": 0.4375}, {"depth": 0.5}, hib, threshold=0.125)["depth"].degenerate
    assert learned({"depth": 0.4375}, {"depth": 0.5}, hib, threshold=0.1)["depth"].degenerate is False
    assert learned({"depth": 0.4375}, {"depth": 0.5}, hib, threshold=0.2)["depth"].degenerate
    assert learned({"semseg": 20.5}, {"semseg": 20.0}, hib, threshold=0.0)["semseg"].degenerate is False
    assert learned({"semseg": 20.0}, {"semseg": 20.0}, hib, threshold=0.0)["semseg"].degenerate
    assert DEGENERATE_THRESHOLD == 0.05


def test_learned_edge_cases():
    hib = {"depth": False, "semseg": True}
    assert learned({"semseg": 5.0}, {"semseg": 0.0}, hib)["semseg"].improvement == math.inf
    z = learned({"depth": 0.0}, {"depth": 0.0}, hib)["depth"]
    assert z.improvement == 0.0 and z.degenerate
    assert learned({"depth": 0.1}, {"depth": 0.0}, hib)["depth"].improvement == -math.inf
    n = learned({"depth": math.nan}, {"depth": 0.5}, hib)["depth"]
    assert math.isnan(n.improvement) and n.degenerate is None
    assert learned({"depth": 0.5, "normal": 30.0}, {"depth": 0.6}, hib).keys() == {"depth"}
    with pytest.raises(ValueError, match="direction"):
        learned({"x": 1.0}, {"x": 2.0}, hib)
    with pytest.raises(ValueError, match="threshold"):
        learned({"depth": 1.0}, {"depth": 2.0}, hib, threshold=-0.1)


def test_learned_from_metrics_takes_the_strongest_reference():
    ref = ReferenceResult({"depth": {"pixel_mean": {"abs_err": 0.60, "rel_err": 0.2},
                                     "median": {"abs_err": 0.65, "rel_err": 0.1}},
                           "semseg": {"pixel_majority": {"miou": 12.0, "pacc": 40.0},
                                      "majority": {"miou": 3.0, "pacc": 45.0}}})
    tasks = {"depth": Depth(), "semseg": SemSeg(13), "normal": Normal()}
    assert ref.best("depth", tasks["depth"].primary_metric)[0] == "pixel_mean"  # lower abs_err
    assert ref.best("semseg", tasks["semseg"].primary_metric)[0] == "pixel_majority"  # higher mIoU
    run = {"depth": {"abs_err": 0.59, "rel_err": 0.19}, "semseg": {"miou": 30.0, "pacc": 60.0},
           "normal": {"mean": 30.0}}
    out = learned_from_metrics(run, ref, tasks)
    assert out.keys() == {"depth", "semseg"}  # no normal reference: not judged
    assert out["depth"].reference == 0.60 and out["depth"].degenerate
    assert out["semseg"].reference == 12.0 and out["semseg"].improvement == pytest.approx(1.5)
    assert not out["semseg"].degenerate
