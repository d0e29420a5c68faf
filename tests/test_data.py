import numpy as np
import pytest
from PIL import Image

from edgeda.data import load_domain
from edgeda.data.syndigits import render
from edgeda.errors import DataError


def test_syndigits_is_deterministic_per_seed():
    a = render(40, seed=3)
    b = render(40, seed=3)
    c = render(40, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_syndigits_labels_match_rendered_digits():
    """A 1-nearest-neighbour classifier on clean glyph masks recovers the labels far above chance;
    labels misaligned with images would give ~10%."""
    xtr, ytr, mtr = render(1500, seed=11, distractors=False)
    xte, yte, mte = render(200, seed=12, distractors=False)
    assert np.bincount(ytr, minlength=10).min() == 150  # class-balanced
    ftr = mtr.reshape(len(mtr), -1).astype(np.float32) / 255
    fte = mte.reshape(len(mte), -1).astype(np.float32) / 255
    d = (fte ** 2).sum(1)[:, None] - 2 * fte @ ftr.T + (ftr ** 2).sum(1)[None]
    acc = (ytr[d.argmin(1)] == yte).mean()
    assert acc > 0.6, acc
    # the mask marks the digit: image pixels under the mask differ from the rest
    diff = [abs(x[m > 0].mean() - x[m == 0].mean()) for x, m in zip(xte[:50].astype(float), mte[:50])]
    assert np.median(diff) > 20


def test_handwritten_split_is_fixed_and_disjoint():
    adapt = load_domain("handwritten", labeled=False)
    test = load_domain("handwritten:test", labeled=True)
    assert len(adapt) == 1000 and len(test) == 797
    assert adapt.images.shape[1:] == (32, 32, 3)
    again = load_domain("handwritten:test", labeled=True)
    np.testing.assert_array_equal(test.labels, again.labels)
    a = {x.tobytes() for x in adapt.images}
    assert sum(x.tobytes() in a for x in test.images) < 5  # (a few scans are duplicates in the source data)


def test_folder_labeled_and_unlabeled(tmp_path, write_png):
    for cls in ("cat", "dog"):
        for i in range(3):
            write_png(tmp_path / cls / f"{i}.png", value=40 * i)
    write_png(tmp_path / "dog" / "deep" / "x.jpg")
    d = load_domain(str(tmp_path), labeled=True, size=(16, 16), channels=3)
    assert d.classes == ["cat", "dog"] and len(d) == 7
    assert list(np.bincount(d.labels)) == [3, 4]
    assert d.images.shape == (7, 16, 16, 3)
    u = load_domain(str(tmp_path), labeled=False, size=(8, 8), channels=1)
    assert u.labels is None and u.images.shape == (7, 8, 8, 1)


def test_corrupt_files_are_skipped_and_reported(tmp_path, write_png):
    write_png(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "a" / "text.jpg").write_text("not an image")
    good = tmp_path / "a" / "ok.png"
    (tmp_path / "a" / "truncated.png").write_bytes(good.read_bytes()[:40])
    Image.fromarray(np.zeros((4, 4), np.uint16) + 60000).save(tmp_path / "a" / "sixteen.png")
    d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
    assert len(d) == 2  # ok.png and the 16-bit image
    reasons = dict((p.split("/")[-1], r) for p, r in d.report.skipped)
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.png"}
    assert reasons["empty.png"] == "empty file"
    sixteen = d.images[[i for i in range(len(d))][1]]
    assert sixteen.max() > 200  # 16-bit range scaled, not clipped to 255 of 65535


def test_npz_loading_and_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (5, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", x=x, y=np.array([0, 1, 2, 1, 0]))
    d = load_domain(str(tmp_path / "ok.npz"), labeled=True, size=(12, 12), channels=3)
    assert d.images.shape == (5, 12, 12, 3) and d.classes == ["0", "1", "2"]
    np.savez(tmp_path / "nolabels.npz", x=x)
    with pytest.raises(DataError, match="no labels"):
        load_domain(str(tmp_path / "nolabels.npz"), labeled=True)
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_domain(str(tmp_path / "float.npz"), labeled=False)
    np.savez(tmp_path / "nox.npz", images=x)
    with pytest.raises(DataError, match="no array 'x'"):
        load_domain(str(tmp_path / "nox.npz"), labeled=False)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable"):
        load_domain(str(tmp_path / "bad.npz"), labeled=False)


def test_empty_and_unknown_domains(tmp_path):
    (tmp_path / "empty").mkdir()
    d = load_domain(str(tmp_path / "empty"), labeled=False)
    with pytest.raises(DataError, match="no usable images"):
        d.require_usable()
    with pytest.raises(DataError, match="needs one subfolder per class"):
        load_domain(str(tmp_path / "empty"), labeled=True)
    with pytest.raises(DataError, match="unknown domain"):
        load_domain("no-such-thing", labeled=False)


def test_random_translate_moves_content_by_at_most_the_shift():
    import torch

    from edgeda.data.transforms import random_translate

    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    y = random_translate(x, 2, torch.Generator().manual_seed(0))
    pos = y.flatten(1).argmax(1)
    r, c = pos // 9, pos % 9
    assert ((r - 4).abs() <= 2).all() and ((c - 4).abs() <= 2).all()
    assert len(set(zip(r.tolist(), c.tolist()))) > 10  # shifts vary per image
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(64))  # nothing lost or duplicated


def test_save_images_round_trips_plain_and_dense_domains(tmp_path):
    from edgeda.data import save_images

    x = np.random.default_rng(0).integers(0, 256, (5, 12, 10), dtype=np.uint8)  # grayscale
    np.savez(tmp_path / "gray.npz", x=x, y=np.arange(5) % 2)
    gray = load_domain(str(tmp_path / "gray.npz"), labeled=False, size=(12, 10), channels=1)
    assert save_images(gray, tmp_path / "g") == 5
    files = sorted((tmp_path / "g").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    for i, f in enumerate(files):  # written in order, pixel for pixel
        np.testing.assert_array_equal(np.asarray(Image.open(f)), x[i])
    again = load_domain(str(tmp_path / "g"), labeled=False, channels=1, size=(12, 10))
    assert len(again) == 5

    dense = load_domain("synscenes:photo-test", labeled=False, size=(32, 64), channels=3)
    n = save_images(dense, tmp_path / "d")
    assert n == len(dense) and len(list((tmp_path / "d").iterdir())) == n
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d" / "00001.png")), dense.sample(1).image)
