"""The dense shift targets: conditions of ``synscenes:photo`` and other backgrounds of
``handwritten-scenes``, each an unlabeled adaptation split and a labelled test split."""
import hashlib
import json

import numpy as np
import pytest

from edgeda.data import BUILTIN_DOMAINS, load_domain
from edgeda.data import digitscenes as ds
from edgeda.data import synscenes as ss
from edgeda.data.builtin import HW_SCENES_LOOKS

# sha256 (first 16 hex digits) of images, masks (and depth or scan ids) of the splits stored benchmarks
# were run on, computed before the conditions were added: the base looks must not change by a pixel
BASE_HASHES = {
    ("synscenes", "train", (32, 64), 2): "26b31d2e6a2c1596",
    ("synscenes", "photo", (32, 64), 2): "cf4cc1dfbc57e701",
    ("synscenes", "photo-test", (32, 64), 2): "1dcaa327a7015f35",
    ("synscenes", "photo", (64, 128), 1): "be603e823f726526",
    ("digitscenes", "train", (32, 32), 3): "876b9b392893ebc7",
    ("digitscenes", "test", (64, 64), 2): "2cc23ee0ded0f5ec",
    ("handwritten-scenes", "adapt", (32, 32), 3): "d151f4fda9b13503",
    ("handwritten-scenes", "test", (32, 32), 3): "7db3b18c49b83343",
    ("handwritten-scenes", "adapt", (64, 64), 2): "bfebb9823dd28a3c",
}
SYN_SPLITS = [f"{c}{t}" for c in ss.CONDITIONS for t in ("", "-test")]
HW_SPLITS = [f"{c}{t}" for c in HW_SCENES_LOOKS for t in ("", "-test")]


def _digest(dom) -> str:
    h = hashlib.sha256()
    for a in (dom.images, dom.masks, getattr(dom, "depth", None), getattr(dom, "scan_ids", None)):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("key", list(BASE_HASHES), ids=lambda k: f"{k[0]}:{k[1]}-{k[2][0]}x{k[2][1]}")
def test_base_looks_are_unchanged(key):
    name, split, size, n = key
    dom = BUILTIN_DOMAINS.get(name)(split, size=size, n=n)
    assert _digest(dom) == BASE_HASHES[key]


def test_split_names_and_default_test_splits():
    from edgeda.training.domains import _default_test_split

    assert set(SYN_SPLITS) <= set(BUILTIN_DOMAINS.get("synscenes").splits)
    assert set(HW_SPLITS) <= set(BUILTIN_DOMAINS.get("handwritten-scenes").splits)
    assert ds.HANDWRITTEN_LOOKS == ("photo", *HW_SCENES_LOOKS)
    assert _default_test_split("synscenes:fog") == "synscenes:fog-test"
    assert _default_test_split("handwritten-scenes:paper") == "handwritten-scenes:paper-test"
    with pytest.raises(ValueError, match="has looks"):
        ss.render(1, 0, (16, 32), "snow")
    with pytest.raises(ValueError, match="has looks"):
        ds.render_handwritten(1, 0, "adapt", (16, 16), look="snow")


@pytest.mark.parametrize("spec", [f"synscenes:{s}" for s in SYN_SPLITS]
                         + [f"handwritten-scenes:{s}" for s in HW_SPLITS])
def test_each_target_generates_deterministically_with_valid_masks(spec):
    syn = spec.startswith("synscenes")
    size = (32, 64) if syn else (32, 32)
    dom = load_domain(spec, labeled=True, n=2, size=size)
    again = BUILTIN_DOMAINS.get(spec.split(":")[0])(spec.split(":")[1], size=size, n=2)  # cached
    assert dom.images.shape == (2, *size, 3) and dom.masks.shape == (2, *size) and dom.images.dtype == np.uint8
    assert dom.name == spec and _digest(dom) == _digest(again)
    valid = [c for c in range(19) if ss.CLASSES[c] not in ("train", "motorcycle")] if syn else list(range(11))
    assert np.isin(dom.masks, valid).all() and len(np.unique(dom.masks)) >= 2
    if syn:
        assert dom.has_depth and np.isfinite(dom.depth).all() and dom.depth.min() >= 0
    look = spec.split(":")[1].removesuffix("-test")
    render = (lambda s: ss.render(2, s, size, look)) if syn else \
        (lambda s: ds.render_handwritten(2, s, "adapt", size, look=look))
    a, b, c = render(5), render(5), render(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.fixture(scope="module")
def syn_renders():
    return {look: ss.render(4, 0, (64, 128), look) for look in ("photo", *ss.CONDITIONS)}


def _lum(x):
    return x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_weather_conditions_keep_the_photo_worlds_and_change_the_light(syn_renders):
    photo_x, photo_m, photo_d = syn_renders["photo"]
    for look in ("fog", "night", "rain"):
        x, m, d = syn_renders[look]
        np.testing.assert_array_equal(m, photo_m)  # the same worlds through the same camera
        np.testing.assert_array_equal(d, photo_d)
        assert not np.array_equal(x, photo_x)
    contrast = {k: np.mean([g.std() / g.mean() for g in _lum(syn_renders[k][0])]) for k in ("photo", "fog")}
    assert contrast["fog"] < 0.6 * contrast["photo"], contrast  # fog lowers contrast
    assert _lum(syn_renders["fog"][0]).std() < _lum(photo_x).std()
    assert _lum(syn_renders["night"][0]).mean() < 0.6 * _lum(photo_x).mean()  # night is dark
    road, sky = photo_m == ss.ROAD, photo_m == ss.SKY  # rain: an overcast sky, a wet road mirroring it, streaks
    rain, photo = _lum(syn_renders["rain"][0]), _lum(photo_x)
    assert rain[sky].std() < photo[sky].std()
    assert rain[road].mean() / rain.mean() > photo[road].mean() / photo.mean() + 0.1
    dark = np.full((64, 128, 3), 20.0, np.float32)
    streaks = ss._rain_streaks(np.random.default_rng(0), dark)
    assert 0.01 < (streaks[..., 0] > 40).mean() < 0.3


def test_camera_conditions_move_the_horizon_and_widen_the_view(syn_renders):
    _, pm, pd = syn_renders["photo"]

    def road_top(m):  # the highest image row with road: the horizon where the road meets it
        return np.mean([np.flatnonzero((mm == ss.ROAD).any(1)).min() for mm in m])

    _, hm, _ = syn_renders["high-cam"]
    assert road_top(hm) < road_top(pm) - 6  # a higher camera pitched down: the horizon moves up
    assert (hm == ss.SKY).mean() < (pm == ss.SKY).mean()
    _, _, wd = syn_renders["wide"]
    bottom = {k: np.median(v[:, -1][v[:, -1] > 0]) for k, v in (("photo", pd), ("wide", wd))}
    assert bottom["wide"] < 0.7 * bottom["photo"], bottom  # a wider view sees the ground closer to the car


def test_suburb_changes_the_class_proportions(syn_renders):
    frac = {k: np.bincount(syn_renders[k][1].ravel(), minlength=19) / syn_renders[k][1].size
            for k in ("photo", "suburb")}
    assert frac["suburb"][ss.BUILDING] < 0.6 * frac["photo"][ss.BUILDING], frac
    assert frac["suburb"][ss.SKY] > frac["photo"][ss.SKY]


def test_handwritten_backgrounds_differ_as_intended():
    out = {look: ds.render_handwritten(6, 11, "adapt", (64, 64), look=look) for look in ds.HANDWRITTEN_LOOKS}
    photo_x, photo_m, photo_s = out["photo"]
    lum = {k: _lum(v[0]) for k, v in out.items()}
    bg = {k: lum[k][out[k][1] == 0] for k in out}
    ink = {k: lum[k][out[k][1] > 0] for k in out}
    assert bg["paper"].mean() > bg["photo"].mean() + 30 and bg["paper"].std() < 0.5 * bg["photo"].std()
    assert ink["paper"].mean() < bg["paper"].mean() - 60  # pen ink on paper
    assert bg["board"].mean() < 80 and ink["board"].mean() > bg["board"].mean() + 60  # chalk on a board
    x, m, s = out["noisy"]
    np.testing.assert_array_equal(m, photo_m)  # the photo scenes, in low light
    np.testing.assert_array_equal(s, photo_s)
    hf = {k: np.abs(np.diff(out[k][0].astype(np.float32), axis=2)).mean() for k in ("photo", "noisy")}
    assert hf["noisy"] > 1.2 * hf["photo"] and lum["noisy"].mean() < lum["photo"].mean()
    for look in ("paper", "board"):  # the adaptation split's scans only
        assert np.isin(out[look][2][out[look][2] >= 0], ds.scan_indices("adapt")).all()


def test_target_val_selects_dense_models_by_miou_on_a_few_labelled_frames(tmp_path):
    """``--target-val`` with k labelled target frames (a dense folder) and ``--select target_val``: every
    evaluation scores the model by mIoU on those frames and the best one ships."""
    from PIL import Image

    import edgeda
    from edgeda.bundle import load_bundle
    from edgeda.training.model_eval import evaluate_model

    test = load_domain("handwritten-scenes:paper-test", labeled=True, n=3, size=(32, 32))
    adapt = load_domain("handwritten-scenes:paper", labeled=True, n=8, size=(32, 32))
    np.savez(tmp_path / "adapt.npz", x=adapt.images)
    folder = tmp_path / "val"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i, (x, m) in enumerate(zip(test.images, test.masks)):
        Image.fromarray(x).save(folder / "images" / f"{i}.png")
        Image.fromarray(m).save(folder / "masks" / f"{i}.png")
    res = edgeda.train(method="source_only", source="digitscenes", source_n=16, target=str(tmp_path / "adapt.npz"),
                       target_val=str(folder), select="target_val",
                       iters=4, eval_every=2, checkpoint_every=2, batch_size=4, image_size=[32, 32], backbone="unet",
                       backbone_kwargs={"width": 0.125}, out=str(tmp_path / "run"), device="cpu", progress=False,
                       log=None)
    evals = [h for h in res.history if "score/target_val" in h]
    assert len(evals) == 2 and all(h["score/target_val"] == h["target_val_miou"] for h in evals)
    best = max(evals, key=lambda h: h["score/target_val"])
    assert res.metrics["selected_iteration"] == best["iteration"]
    b = load_bundle(res.bundle)
    val = load_domain(str(folder), labeled=True)
    miou = evaluate_model(b.module(b.primary), val, b.task, "cpu").scores["miou"]
    assert miou == pytest.approx(best["target_val_miou"], abs=1e-6)


def test_a_few_labelled_frames_need_not_show_every_class(tmp_path):
    """Class names made up from the largest mask id fit a task with more classes; named classes must match."""
    from edgeda.errors import DataError

    y = np.zeros((2, 8, 8), np.uint8)
    y[:, :2] = 3
    np.savez(tmp_path / "few.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=y)
    few = load_domain(str(tmp_path / "few.npz"), labeled=True)
    assert few.num_classes == 4 and few.classes_from_ids
    few.require_usable(labels="masks", num_classes=11)
    with pytest.raises(DataError, match="names 4 classes"):
        few.require_usable(labels="masks", num_classes=3)
    np.savez(tmp_path / "named.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=y, classes=np.array(list("abcd")))
    named = load_domain(str(tmp_path / "named.npz"), labeled=True)
    with pytest.raises(DataError, match="names 4 classes"):
        named.require_usable(labels="masks", num_classes=11)


@pytest.mark.slow  # ~45 s on 2 shared cores once the quick starting bundles exist, ~2 min before
def test_dense_shift_suite_quick_profile_runs_stores_and_resumes(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dense_shifts

    runs = tmp_path / "runs"
    out = dense_shifts.main(["--quick", "--results", str(runs)])
    s, recs = out["summary"], out["records"]
    assert s["targets"] == ["fog", "paper"] and s["runs"] == 2
    assert {r["target"] for r in recs} == {"fog", "paper"}
    for r in recs:
        assert set(r["candidates"]) == {"source_only@init", "dann@init", "source_only+tent"}
        for c in r["candidates"].values():
            assert 0 <= c["target"] <= 1 and {"source_val", "entropy", "info_max"} <= set(c["scores"])
    assert s["recommended_validator"] in s["validators"] and set(s["few_labels"]) <= {"1", "2", "5", "10"}
    shipped = s["as_shipped"]  # edgeda.auto's own candidates among those run, ranked by its default validator
    assert shipped["runs"] == 2 and set(shipped["candidates"]) == {"source_only@init", "dann@init", "source_only+tent"}
    assert shipped["best_single_miou"] <= shipped["oracle_miou"] and shipped["miou"] <= shipped["oracle_miou"]
    files = sorted(runs.glob("*.json"))
    assert [f.name for f in files] == [f"{t}-{c}-s0.json" for t in ("fog", "paper")
                                       for c in ("dann@init", "source_only+tent", "source_only@init")]
    tent = json.loads((runs / "fog-source_only+tent-s0.json").read_text())
    assert tent["config"]["adapt_method"] == "tent" and tent["config"]["init"].endswith("syn_seg-s0.edgeda")
    for f in files:
        with np.load(f.with_suffix(".npz"), allow_pickle=False) as z:
            assert z["maps"].dtype == np.uint8 and z["inter"].shape == z["union"].shape == z["support"].shape
            assert (z["inter"] <= z["union"]).all() and len(z["map_frames"]) == len(z["maps"])
    saved = json.loads((tmp_path / "dense_shifts.json").read_text())
    assert saved["records"] and saved["summary"]["runs"] == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    dense_shifts.main(["--quick", "--results", str(runs)])  # resumes: every run is stored
    assert capsys.readouterr().out.count(": stored") == 6
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_few_label_regret_and_miou_from_frame_counts():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dense_shifts

    # two frames, three classes; class 2 is never labelled, so it is left out of the mean
    counts = {"inter": np.array([[4, 0, 0], [2, 3, 0]]), "union": np.array([[5, 1, 2], [2, 6, 1]]),
              "support": np.array([[5, 0, 0], [2, 4, 0]])}
    assert dense_shifts.miou(counts) == pytest.approx((6 / 7 + 3 / 7) / 2)
    assert dense_shifts.miou(counts, np.array([True, False])) == pytest.approx(4 / 5)
    good = {k: v.copy() for k, v in counts.items()}
    good["inter"] = good["support"].copy()
    good["union"] = good["support"].copy()
    runs = [{"target": "t", "seed": 0, "candidate": "source_only@init", "_arrays": counts},
            {"target": "t", "seed": 0, "candidate": "x@init", "_arrays": good}]
    fl = dense_shifts.few_labels(runs, ks=(1,), draws=5)
    assert fl["1"]["mean_regret"] == 0 and fl["1"]["draws"] == 5  # the perfect candidate wins on any frame


def test_majority_from_stored_class_maps_marks_the_odd_candidate_out():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dense_shifts

    maps = np.random.default_rng(0).integers(0, 3, (2, 4, 4)).astype(np.uint8)

    def run(m):
        return {"map_frames": [0, 1], "_arrays": {"maps": m, "inter": np.zeros((2, 3), np.int64)}}

    scores = dense_shifts.majority_scores({"a": run(maps), "b": run(maps), "odd": run((maps + 1) % 3)})
    if scores:  # the majority validator is registered
        assert scores["odd"] < min(scores["a"], scores["b"])


def test_source_free_candidates_start_from_the_source_only_bundle():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dense_shifts

    assert dense_shifts.source_free("source_only+tent") == "tent" and dense_shifts.source_free("dann@init") is None
    with pytest.raises(SystemExit, match="starts from the source-only bundle"):
        dense_shifts.source_free("dann+tent")
    cfg = dense_shifts.run_config("cpu", "paper", "source_only+tent", 1)
    assert cfg["adapt_method"] == "tent" and cfg["init"].endswith("digits_seg-s1.edgeda")
    assert cfg["target"] == "handwritten-scenes:paper" and cfg["target_test"] == "handwritten-scenes:paper-test"
    assert {k: cfg[k] for k in dense_shifts.ADAPT_SETTINGS} == dense_shifts.ADAPT_SETTINGS and "iters" not in cfg
    with pytest.raises(SystemExit, match="on-device methods"):
        dense_shifts.main(["--targets", "paper", "--candidates", "source_only+nothing", "--results", "/nonexistent"])


def test_a_candidate_not_yet_run_on_every_target_is_left_out_of_the_summary_and_named():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import dense_shifts

    def run(t, c):
        return {"target": t, "seed": 0, "candidate": c}

    runs = [run(t, c) for t in ("fog", "night", "rain") for c in (dense_shifts.REFERENCE, "dacs@init")]
    runs += [run("fog", "cda@init"), run("night", "cda@init")]
    kept, partial = dense_shifts.complete_candidates(runs)
    assert partial == {"cda@init": 2}
    assert {r["candidate"] for r in kept} == {dense_shifts.REFERENCE, "dacs@init"} and len(kept) == 6
    kept, partial = dense_shifts.complete_candidates(runs + [run("rain", "cda@init")])
    assert partial == {} and len(kept) == 9
