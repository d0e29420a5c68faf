"""Built-in dense domains: digitscenes, handwritten-scenes and synscenes."""
import numpy as np
import pytest

from edgeda.data import BUILTIN_DOMAINS, load_domain
from edgeda.data import digitscenes as ds
from edgeda.data import synscenes as ss
from edgeda.data.builtin import cache_dir
from edgeda.errors import DataError

SMALL = (48, 96)


def _lap(img):
    g = img.astype(np.float32).mean(-1)
    return np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])


@pytest.mark.parametrize("render", [
    lambda seed: ds.render(4, seed, (32, 32)),
    lambda seed: ds.render_handwritten(4, seed, "adapt", (32, 40)),
    lambda seed: ss.render(3, seed, SMALL, "game"),
    lambda seed: ss.render(3, seed, SMALL, "photo"),
], ids=["digitscenes", "handwritten-scenes", "synscenes", "synscenes-photo"])
def test_renderers_are_deterministic_per_seed(render):
    a, b, c = render(7), render(7), render(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("look", ss.LOOKS)
def test_synscenes_labels_and_depth_follow_the_geometry(look):
    x, m, d = ss.render(8, 3, (64, 128), look)
    assert x.shape == (8, 64, 128, 3) and x.dtype == np.uint8 and m.dtype == np.uint8 and d.dtype == np.float32
    assert m.max() < 19
    assert np.isfinite(d).all() and d.min() >= 0 and d.max() <= ss.MAX_DEPTH
    assert (d[m == ss.SKY] == 0).all()
    assert (d[(m != ss.SKY) & (m != ss.ROAD) & (m != ss.TERRAIN)] > 0).mean() > 0.9  # near objects have depth
    top = m[:, 0, 32:96]
    assert np.isin(top, [ss.SKY, ss.BUILDING, ss.VEG, ss.POLE]).mean() > 0.8
    assert sum((row == ss.SKY).any() for row in m[:, 0]) >= 6
    assert (m[:, -1, 64] == ss.ROAD).sum() >= 7
    for mi, di in zip(m, d):  # along the centre column, road depth grows towards the horizon
        col = np.flatnonzero((mi[:, 64] == ss.ROAD) & (di[:, 64] > 0))
        assert len(col) > 5
        assert (np.diff(di[col, 64]) < 0).all()  # rows go down the image
    assert np.isin(m, [ss.ROAD, ss.WALK, ss.BUILDING]).mean() > 0.4


def test_synscenes_looks_differ_in_image_statistics():
    game, gm, _ = ss.render(4, 0, (64, 128), "game")
    photo, pm, _ = ss.render(4, 0, (64, 128), "photo")
    g, p = np.median([_lap(i) for i in game]), np.median([_lap(i) for i in photo])
    assert p > g + 2, (g, p)
    for mm in (gm, pm):
        assert mm.max() < 19 and len(np.unique(mm)) >= 5


def test_digitscenes_masks_are_where_each_digit_was_drawn():
    for s in range(6):
        layers = []
        img, mask = ds.render_scene(np.random.default_rng(s), (64, 64), layers)
        expect = np.zeros_like(mask)
        for digit, alpha, _ in layers:
            expect[np.rint(alpha * 255) >= 128] = digit + 1
        np.testing.assert_array_equal(mask, expect)
        present = set(np.unique(mask)) - {0}
        assert len(present) >= 2 and present == {d + 1 for d, _, _ in layers}
        for digit, alpha, ink in layers:  # the labelled pixels carry that digit's ink
            on = (mask == digit + 1) & (alpha > 0.95)
            if on.sum() >= 5:
                err_on = np.abs(img[on] - ink).mean()
                err_bg = np.abs(img[mask == 0] - ink).mean()
                assert err_on < err_bg, (s, digit, err_on, err_bg)
    dom = load_domain("digitscenes:val", labeled=True, n=6, size=(32, 32))
    assert dom.images.shape == (6, 32, 32, 3) and dom.classes == ["background"] + [str(i) for i in range(10)]
    assert all(len(np.unique(mm)) >= 3 for mm in dom.masks) and dom.masks.max() <= 10
    assert dom.has_masks and not dom.has_depth


def test_handwritten_scenes_use_disjoint_real_scans():
    adapt, test = ds.scan_indices("adapt"), ds.scan_indices("test")
    assert len(adapt) == 1000 and len(test) == 797 and not set(adapt) & set(test)
    assert sorted(ds.scan_indices("all")) == sorted(set(adapt) | set(test))
    targets = ds._scans()[1]
    for split, pool in (("adapt", adapt), ("test", test)):
        for seed in (0, 1):
            dom = load_domain(f"handwritten-scenes:{split}", labeled=True, n=5, seed=seed, size=(40, 40))
            ids = dom.scan_ids[dom.scan_ids >= 0]
            assert set(ids) <= set(pool)
            for mm, row in zip(dom.masks, dom.scan_ids):
                row = row[row >= 0]
                assert len(row) >= 2 and set(np.unique(mm)) - {0} == {int(targets[i]) + 1 for i in row}
    a0 = load_domain("handwritten-scenes", labeled=False, n=4, seed=0, size=(40, 40))
    a1 = load_domain("handwritten-scenes", labeled=False, n=4, seed=1, size=(40, 40))
    assert a0.name == "handwritten-scenes:adapt" and not np.array_equal(a0.images, a1.images)
    # the label is the upsampled real scan above half intensity, the last drawn scan on top
    layers = []
    _, masks, _ = ds.render_handwritten(3, 9, "test", (64, 64), layers=layers)
    for mask, drawn in zip(masks, layers):
        expect = np.zeros_like(mask)
        for digit, alpha, _ in drawn:
            expect[alpha > 0.5] = digit + 1
        np.testing.assert_array_equal(mask, expect)
        assert (mask > 0).mean() > 0.02


def test_split_names_and_errors():
    assert BUILTIN_DOMAINS.get("synscenes").splits[:5] == ("train", "val", "test", "photo", "photo-test")
    assert BUILTIN_DOMAINS.get("digitscenes").splits == ("train", "val", "test")
    assert BUILTIN_DOMAINS.get("handwritten-scenes").splits[:3] == ("adapt", "test", "all")
    for name in ("synscenes", "digitscenes", "handwritten-scenes"):
        with pytest.raises(ValueError, match="has splits"):
            BUILTIN_DOMAINS.get(name)("nope", n=2, size=(16, 16))
        with pytest.raises(DataError, match="not 'nope'"):
            load_domain(f"{name}:nope", labeled=True)
    for spec in ("synscenes", "synscenes:val", "synscenes:photo", "synscenes:photo-test"):
        dom = load_domain(spec, labeled=False, n=2, size=(32, 32))
        assert dom.images.shape == (2, 32, 32, 3) and dom.depth.shape == (2, 32, 32)
        assert dom.classes == ss.CLASSES and dom.palette.shape == (19, 3) and dom.has_depth
    assert tuple(dom.palette[0]) == (128, 64, 128) and tuple(dom.palette[10]) == (70, 130, 180)
    grey = load_domain("synscenes:photo", labeled=False, n=2, size=(24, 40), channels=1)
    assert grey.images.shape == (2, 24, 40, 1)


@pytest.mark.parametrize("spec", ["synscenes:val", "digitscenes:test"])
def test_cache_reloads_identically_and_survives_damage(spec):
    first = load_domain(spec, labeled=True, n=3, size=(32, 48), seed=5)
    name, split = spec.split(":")
    folders = list(cache_dir().glob(f"{name}-v*-{split}-*-n3-32x48-c3"))
    assert len(folders) == 1 and (folders[0] / "x.npy").is_file()
    again = load_domain(spec, labeled=True, n=3, size=(32, 48), seed=5)
    assert isinstance(again.images, np.memmap)  # read from the cache, pages loaded when used
    x = folders[0] / "x.npy"
    for damage in (b"not an npy file", x.read_bytes()[:300]):
        again = load_domain(spec, labeled=True, n=3, size=(32, 48), seed=5)
        np.testing.assert_array_equal(first.images, again.images)
        np.testing.assert_array_equal(first.masks, again.masks)
        x.unlink()  # a new damaged file (live memory maps of the old one stay valid, as after edgeda's atomic writes)
        x.write_bytes(damage)
        repaired = load_domain(spec, labeled=True, n=3, size=(32, 48), seed=5)
        np.testing.assert_array_equal(first.images, repaired.images)
        np.testing.assert_array_equal(first.masks, repaired.masks)
        if first.depth is not None:
            np.testing.assert_array_equal(first.depth, repaired.depth)
    # a cache written as one .npz by earlier versions is converted, not rendered again
    import shutil

    arrays = {k.stem: np.load(k) for k in folders[0].glob("*.npy")}
    shutil.rmtree(folders[0])
    np.savez(folders[0].with_name(folders[0].name + ".npz"), **arrays)
    from edgeda.data import builtin

    calls = []
    real = builtin._cached_dense
    converted = real(folders[0].name + ".npz", lambda: calls.append(1), {k: a.shape for k, a in arrays.items()})
    assert not calls and (folders[0] / "x.npy").is_file()
    np.testing.assert_array_equal(converted["x"], first.images)
