"""Dense data: joint transforms, folder and .npz loaders with their bad-file policy, the Dataset."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeda.data.dense import ArrayDenseDomain, DenseSample
from edgeda.data.dense_files import (FileDenseDomain, check_same_classes, is_dense_folder, load_dense_folder,
                                     load_dense_npz, npz_is_dense, read_class_list)
from edgeda.data.dense_transforms import DenseDataset, random_scale_crop, resize_sample
from edgeda.errors import DataError

CELL, ROWS, COLS = 16, 4, 6


def block_sample(h=ROWS * CELL, w=COLS * CELL):
    """Blocks of CELL px: R encodes the block row, G the block column; mask = block id; depth = column + 1."""
    r, c = np.mgrid[:h, :w]
    br, bc = r // CELL, c // CELL
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 40 * br + 20, 40 * bc + 20, 90
    return DenseSample(img, (br * COLS + bc).astype(np.uint8), (c + 1).astype(np.float32))


def check_alignment(out):
    img, mask, depth = out.image.astype(int), out.mask.astype(int), out.depth
    # mask and depth share the nearest grid exactly: the mask's block column is the depth's column block
    assert np.array_equal(mask % COLS, (depth.astype(int) - 1) // CELL)
    # where the image holds a pure block colour, that colour names the mask's block
    pure = ((img[..., 0] - 20) % 40 == 0) & ((img[..., 1] - 20) % 40 == 0)
    assert pure.mean() > 0.3
    from_img = ((img[..., 0] - 20) // 40) * COLS + (img[..., 1] - 20) // 40
    assert np.array_equal(mask[pure], from_img[pure])
    # depth is monotone along every row, in the direction the image's columns run
    d = np.diff(depth, axis=1)
    g = img[:, -1, 1] - img[:, 0, 1]
    assert np.all(g != 0)
    forward = g[0] > 0
    assert np.all(g > 0) == forward and (np.all(d >= 0) if forward else np.all(d <= 0))
    return forward


def test_random_scale_crop_keeps_image_mask_depth_aligned_through_flips():
    s, seen = block_sample(), set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        size = [(24, 32), (40, 40), (32, 72)][seed % 3]
        out = random_scale_crop(s, size, rng, scale=(0.5, 1.0))
        assert out.image.shape == (*size, 3) and out.mask.shape == size and out.depth.shape == size
        seen.add(check_alignment(out))
    assert seen == {True, False}  # both flipped and unflipped crops were checked


def test_resize_sample_alignment_channels_and_fresh_arrays():
    s = block_sample()
    out = resize_sample(s, (20, 30))
    check_alignment(out)
    grey = resize_sample(s, (64, 96), channels=1)
    assert grey.image.shape == (64, 96, 1)
    assert np.array_equal(grey.mask, s.mask) and not np.shares_memory(grey.mask, s.mask)
    same = resize_sample(s, (64, 96))
    assert np.array_equal(same.image, s.image) and not np.shares_memory(same.image, s.image)
    with pytest.raises(ValueError):
        resize_sample(DenseSample(s.image, s.mask[:-1]), (8, 8))


def test_mask_resize_never_invents_classes_and_depth_never_mixes_zeros():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(3, 40, 2)
        mask = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(h, w))
        depth = rng.uniform(1, 50, (h, w)).astype(np.float32)
        depth[rng.random((h, w)) < 0.5] = 0
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        size = tuple(int(v) for v in rng.integers(1, 60, 2))
        out = resize_sample(DenseSample(img, mask, depth), size)
        assert set(np.unique(out.mask)) <= set(np.unique(mask))
        assert np.all(np.isin(out.depth, depth))
        crop = random_scale_crop(DenseSample(img, mask, depth), size, rng, scale=(0.2, 1.0))
        assert set(np.unique(crop.mask)) <= set(np.unique(mask)) and np.all(np.isin(crop.depth, depth))


# ---------------------------------------------------------------- folders

def save(path, arr, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)
    return path


def image(h=10, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_folder_with_classes_txt_nested_names_and_jpg_images(tmp_path):
    save(tmp_path / "images/a/x.jpg", image())
    save(tmp_path / "images/y.png", image(seed=1))
    m1 = np.zeros((10, 12), np.uint8)
    m1[:, 6:] = 2
    m1[0] = 255
    save(tmp_path / "masks/a/x.png", m1)
    save(tmp_path / "masks/y.png", np.ones((10, 12), np.uint8))
    (tmp_path / "classes.txt").write_text("# street classes\nroad\n\nsky\ntraffic light\n")
    assert is_dense_folder(tmp_path) and not is_dense_folder(tmp_path / "images")
    d = load_dense_folder(tmp_path, labeled=True)
    assert d.classes == ["road", "sky", "traffic light"] and d.palette is None
    assert d.has_masks and not d.has_depth and len(d) == 2 and d.report.loaded == 2 and not d.report.skipped
    s = d.sample([p.name for p, _, _ in d.items].index("x.jpg"))
    assert s.image.shape == (10, 12, 3) and s.mask.dtype == np.uint8 and np.array_equal(s.mask, m1)
    d.require_usable(labels="masks", num_classes=3)
    unl = load_dense_folder(tmp_path, labeled=False)
    assert not unl.has_masks and unl.classes is None and unl.sample(0).mask is None


def test_rgb_masks_map_by_colour_and_palette_masks_by_index(tmp_path):
    (tmp_path / "classes.txt").write_text("road 128 64 128\nsky 70 130 180\ncar 0 0 142\n")
    names, pal = read_class_list(tmp_path / "classes.txt")
    assert names == ["road", "sky", "car"] and pal.tolist()[2] == [0, 0, 142]
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:] = (70, 130, 180)
    rgb[5:, :] = (0, 0, 142)
    rgb[0, 0] = (1, 2, 3)  # not a class colour
    save(tmp_path / "images/rgb.png", image())
    save(tmp_path / "masks/rgb.png", rgb)
    idx = np.zeros((10, 12), np.uint8)
    idx[:, 4:] = 2
    # the palette's colours are deliberately not the classes' colours: the index is the id
    save(tmp_path / "images/pal.png", image(seed=2))
    save(tmp_path / "masks/pal.png", idx, "P", palette=[9, 9, 9, 200, 0, 0, 0, 200, 0] + [0] * 759)
    with Image.open(tmp_path / "masks/pal.png") as im:
        assert im.mode == "P"
    d = load_dense_folder(tmp_path, labeled=True)
    assert d.palette.tolist() == pal.tolist() and len(d) == 2
    by = {p.stem: i for i, (p, _, _) in enumerate(d.items)}
    want = np.where(np.arange(10)[:, None] >= 5, 2, 1).repeat(12, 1)
    want[0, 0] = 255
    assert np.array_equal(d.sample(by["rgb"]).mask, want)
    assert np.array_equal(d.sample(by["pal"]).mask, idx)


def test_classes_txt_ids_map_a_datasets_own_mask_ids_to_the_classes(tmp_path):
    from edgeda.data.dense_files import read_class_file

    # Cityscapes / GTA5 label ids: road 7, sidewalk 8, car 26; every other id (0 unlabelled, 11 building) ignored
    (tmp_path / "classes.txt").write_text("# name = label ids\nroad = 7\nsidewalk = 8, 9\ncar = 26\n")
    names, pal, id_map = read_class_file(tmp_path / "classes.txt")
    assert names == ["road", "sidewalk", "car"] and pal is None
    assert [int(id_map[v]) for v in (7, 8, 9, 26, 0, 11)] == [0, 1, 1, 2, 255, 255]
    ids = np.array([[7, 8, 9, 26, 0, 11]] * 10, np.uint8).repeat(2, 1)
    save(tmp_path / "images/gta.png", image())
    save(tmp_path / "masks/gta.png", ids, "P", palette=list(range(256)) * 3)  # GTA5: a palette PNG of label ids
    big = np.full((10, 12), 1000, np.uint16)
    big[:, :3] = 26
    save(tmp_path / "images/wide.png", image(seed=1))
    save(tmp_path / "masks/wide.png", big)  # 16-bit ids: 1000 is no class's
    d = load_dense_folder(tmp_path, labeled=True)
    assert d.classes == ["road", "sidewalk", "car"] and len(d) == 2 and not d.report.skipped
    by = {p.stem: i for i, (p, _, _) in enumerate(d.items)}
    assert d.sample(by["gta"]).mask[0].tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 255, 255, 255, 255]
    assert d.sample(by["wide"]).mask[0].tolist() == [2, 2, 2] + [255] * 9
    # the shipped Cityscapes / GTA5 map names synscenes' classes in their order
    from edgeda.data.synscenes import CLASSES

    names, _, cs = read_class_file(Path(__file__).resolve().parents[1] / "configs/classes/cityscapes-label-ids.txt")
    assert names == list(CLASSES) and [int(cs[v]) for v in (7, 26, 33, 0, 1, 34)] == [0, 13, 18, 255, 255, 255]
    names, _, sy = read_class_file(Path(__file__).resolve().parents[1] / "configs/classes/synthia-ids.txt")
    assert names == [c for c in CLASSES if c not in ("terrain", "truck", "train")]  # the 16-class protocol
    assert [names[int(sy[v])] for v in (3, 8, 11)] == ["road", "car", "bicycle"] and int(sy[16]) == int(sy[22]) == 255
    # ids for some classes only, an id given to two classes, ids with colours: one clear error each
    for text in ("road = 7\nsky\n", "road = 7\nsky = 7\n", "road 1 2 3 = 7\nsky 4 5 6 = 8\n", "road = x\n"):
        (tmp_path / "classes.txt").write_text(text)
        with pytest.raises(DataError):
            read_class_file(tmp_path / "classes.txt")


def test_cityscapes_and_bdd_names_pair_by_their_shared_endings(tmp_path):
    cs = tmp_path / "cs"
    for city, n in (("aachen", 0), ("bonn", 1)):
        save(cs / f"images/{city}/{city}_00000{n}_000019_leftImg8bit.png", image(seed=n))
        save(cs / f"masks/{city}/{city}_00000{n}_000019_gtFine_labelIds.png", np.full((10, 12), 7 + n, np.uint8))
    (cs / "classes.txt").write_text("road = 7\nsidewalk = 8\n")
    d = load_dense_folder(cs, labeled=True)
    assert len(d) == 2 and not d.report.skipped and "_gtFine_labelIds' (masks)" in d.report.warnings[0]
    assert sorted(int(d.sample(i).mask[0, 0]) for i in range(2)) == [0, 1]  # each image got its own mask
    bdd = tmp_path / "bdd"
    for k in ("7d2f7975-e0c1c5a7", "7d4a9094-0455564b"):
        save(bdd / f"images/{k}.jpg", image())
        save(bdd / f"masks/{k}_train_id.png", np.zeros((10, 12), np.uint8))
    assert len(load_dense_folder(bdd, labeled=True)) == 2
    vk = tmp_path / "vkitti"  # Virtual KITTI: rgb_00001.jpg with depth_00001.png
    for k in ("00001", "00002"):
        save(vk / f"images/Camera_0/rgb_{k}.jpg", image())
        save(vk / f"depth/Camera_0/depth_{k}.png", np.full((10, 12), int(k) * 100, np.uint16))
    (vk / "depth_units.txt").write_text("100\n")
    v = load_dense_folder(vk, labeled=True)
    assert len(v) == 2 and "'rgb_'" in v.report.warnings[0]
    assert sorted(float(v.sample(i).depth[0, 0]) for i in range(2)) == [1.0, 2.0]
    # names that match as they are never have endings dropped
    plain = tmp_path / "plain"
    for k in ("a_x", "b_x"):
        save(plain / f"images/{k}.png", image())
        save(plain / f"masks/{k}.png", np.zeros((10, 12), np.uint8))
    p = load_dense_folder(plain, labeled=True)
    assert len(p) == 2 and not p.report.warnings


def test_gtfine_as_it_comes_reads_the_kind_of_mask_classes_txt_is_for(tmp_path):
    """Cityscapes' gtFine (like ACDC and Dark Zurich) holds a colour, an instance-id and a label-id PNG per
    frame: the label ids are read with a 'name = id' classes.txt, the colours with a colour one; a kind
    that classes.txt cannot read (train ids, here absent) is one clear error naming the kinds."""
    cs = tmp_path / "cs"
    for city, n in (("aachen", 0), ("bonn", 1)):
        stem = f"{city}/{city}_00000{n}_000019"
        save(cs / f"images/{stem}_leftImg8bit.png", image(seed=n))
        save(cs / f"masks/{stem}_gtFine_labelIds.png", np.full((10, 12), 7 + n, np.uint8))
        save(cs / f"masks/{stem}_gtFine_instanceIds.png", np.full((10, 12), 26000 + n, np.uint16))
        save(cs / f"masks/{stem}_gtFine_color.png", np.full((10, 12, 3), (128, 64, 128) if n == 0 else (244, 35, 232),
                                                             np.uint8))
    (cs / "masks/bonn/bonn_000009_000019_gtFine_labelIds.png").write_bytes(b"")  # a frame not among the images
    (cs / "classes.txt").write_text("road = 7\nsidewalk = 8\n")
    d = load_dense_folder(cs, labeled=True)
    assert len(d) == 2 and "reading the _labelIds ones" in d.report.warnings[0]
    assert sorted(int(d.sample(i).mask[0, 0]) for i in range(2)) == [0, 1]
    assert [p for p, _ in d.report.skipped] == [str(cs / "masks/bonn/bonn_000009_000019_gtFine_labelIds.png")]
    (cs / "classes.txt").write_text("road 128 64 128\nsidewalk 244 35 232\n")
    d = load_dense_folder(cs, labeled=True)
    assert "reading the _color ones" in d.report.warnings[0]
    assert sorted(int(d.sample(i).mask[0, 0]) for i in range(2)) == [0, 1]
    (cs / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"3 kinds of file per image \(_color, _instanceIds, _labelIds\)"):
        load_dense_folder(cs, labeled=True)


def _png_rgb16(path, arr):
    """A 16-bit RGB PNG of ``arr`` (H, W, 3) written by hand, every row Paeth-filtered (as encoders choose
    for natural content), so reading it exactly depends on the filter being undone."""
    import struct
    import zlib

    raw = arr.astype(">u2").view(np.uint8).reshape(arr.shape[0], -1).astype(np.int64)
    a = np.pad(raw, ((0, 0), (6, 0)))[:, :-6]  # the byte one pixel (6 bytes) to the left
    b = np.pad(raw, ((1, 0), (0, 0)))[:-1]
    c = np.pad(b, ((0, 0), (6, 0)))[:, :-6]
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    rows = np.concatenate([np.full((len(raw), 1), 4), (raw - pred) % 256], 1).astype(np.uint8)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", arr.shape[1], arr.shape[0], 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows.tobytes()))
                     + chunk(b"IEND", b""))


def test_synthia_16_bit_colour_labels_are_read_by_their_first_channel(tmp_path):
    """SYNTHIA's GT/LABELS are 16-bit colour PNGs, class id in the first channel, instance id in the
    second; PIL alone reads them as 8 bits (the high byte: every id 0). Read exactly, with an id map."""
    rng = np.random.default_rng(0)
    ids = rng.choice([0, 1, 3, 8, 300], size=(10, 12))
    arr = np.stack([ids, rng.integers(0, 60000, (10, 12)), np.zeros((10, 12), int)], -1)
    for k in range(2):
        save(tmp_path / f"images/{k:07d}.png", image(seed=k))
        _png_rgb16(tmp_path / f"masks/{k:07d}.png", arr)
    (tmp_path / "classes.txt").write_text("sky = 1\nroad = 3\ncar = 8\nother = 300\n")
    d = load_dense_folder(tmp_path, labeled=True)
    assert len(d) == 2 and not d.report.skipped
    lut = {0: 255, 1: 0, 3: 1, 8: 2, 300: 3}
    np.testing.assert_array_equal(d.sample(1).mask, np.vectorize(lut.get)(ids))


def test_bad_folder_files_are_skipped_and_reported(tmp_path):
    for k in range(5):
        save(tmp_path / f"images/i{k}.png", image(seed=k))
    for k in (0, 1, 3):
        save(tmp_path / f"masks/i{k}.png", np.zeros((10, 12), np.uint8))
    save(tmp_path / "masks/i2.png", np.zeros((9, 12), np.uint8))  # wrong size
    (tmp_path / "images/i5.png").write_bytes(b"this is not a png")  # unreadable header
    save(tmp_path / "masks/i5.png", np.zeros((10, 12), np.uint8))
    save(tmp_path / "masks/orphan.png", np.zeros((10, 12), np.uint8))
    (tmp_path / "classes.txt").write_text("a\nb\n")
    d = load_dense_folder(tmp_path, labeled=True)
    reasons = {p.split("/")[-2] + "/" + p.split("/")[-1]: r for p, r in d.report.skipped}
    assert sorted(p.stem for p, _, _ in d.items) == ["i0", "i1", "i3"] and d.report.loaded == 3
    assert "no mask" in reasons["images/i4.png"]
    assert reasons["masks/i2.png"].startswith("mask is 12x9")
    assert "images/i5.png" in reasons and "masks/orphan.png" in reasons
    assert len(d.report.skipped) == 4


def test_rgb_mask_without_colours_and_8bit_depth_are_skipped(tmp_path):
    save(tmp_path / "images/a.png", image())
    save(tmp_path / "images/b.png", image(seed=1))
    save(tmp_path / "masks/a.png", np.zeros((10, 12, 3), np.uint8))
    save(tmp_path / "masks/b.png", np.zeros((10, 12), np.uint8))
    save(tmp_path / "depth/a.png", np.zeros((10, 12), np.uint16))
    save(tmp_path / "depth/b.png", np.zeros((10, 12), np.uint8))
    d = load_dense_folder(tmp_path, labeled=True)
    assert len(d) == 0 and d.report.loaded == 0
    reasons = dict(d.report.skipped)
    assert "colour" in reasons[str(tmp_path / "masks/a.png")]
    assert "16-bit" in reasons[str(tmp_path / "depth/b.png")]
    with pytest.raises(DataError, match="2 files were skipped"):
        d.require_usable(labels="masks")


def test_decode_failures_raise_and_the_dataset_replaces_them(tmp_path):
    for k in range(3):
        save(tmp_path / f"images/i{k}.png", image(40, 48, seed=k))
        save(tmp_path / f"masks/i{k}.png", np.full((40, 48), k, np.uint8))
    save(tmp_path / "masks/i1.png", np.full((40, 48), 7, np.uint8))  # id beyond the 3 classes
    raw = (tmp_path / "images/i2.png").read_bytes()
    (tmp_path / "images/i2.png").write_bytes(raw[: len(raw) // 2])  # header fine, pixels truncated
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    d = load_dense_folder(tmp_path, labeled=True)
    assert [p.stem for p, _, _ in d.items] == ["i0", "i2"]  # the out-of-range mask is skipped at load, counted
    assert d.report.loaded == 2 and d.report.skipped == [
        (str(tmp_path / "masks/i1.png"), "mask: mask has class id 7, beyond the 3 classes named in classes.txt")]
    with pytest.raises(ValueError):
        d.sample(1)  # the truncated image passes the header check and fails when decoded
    items = [d.items[0], (tmp_path / "images/i1.png", tmp_path / "masks/i1.png", None), d.items[1]]
    raw_dom = FileDenseDomain("raw", items, classes=d.classes)  # built without the load-time scan
    with pytest.raises(ValueError, match="class id 7"):
        raw_dom.sample(1)
    ds = DenseDataset(raw_dom, (16, 16), 3, train=True, seed=1)
    for k, want in ((0, 0), (1, 0), (2, 0), (3, 0)):
        item = ds[k]
        assert int(item["index"]) == want and int(item["replaced"]) == int(k % 3 != 0)
        assert torch.all(item["mask"] == 0)
    bad = FileDenseDomain("bad", items[1:], classes=d.classes)
    with pytest.raises(DataError, match="none of the 2 samples"):
        DenseDataset(bad, (8, 8), 3, train=False)[0]


def test_jpeg_masks_are_refused_and_empty_class_folders_named(tmp_path):
    from edgeda.data.files import load_folder

    save(tmp_path / "seg/images/a.png", image(seed=1))
    save(tmp_path / "seg/images/b.png", image(seed=2))
    save(tmp_path / "seg/masks/a.png", np.zeros((10, 12), np.uint8))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "seg/masks/b.jpg")
    d = load_dense_folder(tmp_path / "seg", labeled=True)
    assert len(d) == 1 and len(d.report.skipped) == 1
    path, reason = d.report.skipped[0]
    assert path.endswith("b.jpg") and "JPEG mask refused" in reason and "PNG" in reason
    for c in ("cat", "dog"):
        save(tmp_path / f"cls/{c}/x.png", image(seed=3))
    (tmp_path / "cls/empty").mkdir()
    dom = load_folder(tmp_path / "cls", labeled=True, size=(8, 8), channels=3)
    assert dom.classes == ["cat", "dog", "empty"] and len(dom.report.warnings) == 1
    assert "'empty' has no usable images" in dom.report.warnings[0] and dom.report.to_dict()["warnings"]


def test_no_classes_txt_infers_k_and_skips_undecodable_masks(tmp_path):
    for k, top in enumerate((2, 4, 1)):
        save(tmp_path / f"images/i{k}.png", image(seed=k))
        m = np.full((10, 12), 255, np.uint8)
        m[:3] = top
        save(tmp_path / f"masks/i{k}.png", m)
    save(tmp_path / "images/i3.png", image(seed=3))
    save(tmp_path / "masks/i3.png", np.full((10, 12), 300, np.uint16))  # beyond what a uint8 mask holds
    d = load_dense_folder(tmp_path, labeled=True)
    assert d.classes == ["0", "1", "2", "3", "4"] and len(d) == 3
    assert any("300" in r for _, r in d.report.skipped)


def test_depth_png_millimetres_npy_metres_and_sparse(tmp_path):
    mm = np.zeros((10, 12), np.uint16)
    mm[2:, :] = 1500
    mm[5, 5] = 65535
    save(tmp_path / "images/p.png", image())
    save(tmp_path / "depth/p.png", mm)
    npy = np.full((10, 12), 3.25, np.float64)
    npy[0, 0], npy[0, 1], npy[0, 2] = np.nan, -1.0, np.inf
    save(tmp_path / "images/n.png", image(seed=1))
    np.save(tmp_path / "depth/n.npy", npy)
    sparse = np.zeros((40, 48), np.float32)
    pts = np.random.default_rng(0).integers(0, 40 * 48, 60)
    sparse.flat[pts] = np.random.default_rng(1).uniform(2, 80, 60)
    save(tmp_path / "images/s.png", image(40, 48, seed=2))
    np.save(tmp_path / "depth/s.npy", sparse)
    d = load_dense_folder(tmp_path, labeled=True)
    assert d.has_depth and not d.has_masks and d.classes is None and len(d) == 3
    by = {p.stem: i for i, (p, _, _) in enumerate(d.items)}
    p = d.sample(by["p"]).depth
    assert p.dtype == np.float32 and p[0, 0] == 0 and p[3, 3] == pytest.approx(1.5) and p[5, 5] == pytest.approx(65.535)
    n = d.sample(by["n"]).depth
    assert n[0, :3].tolist() == [0, 0, 0] and n[1, 1] == pytest.approx(3.25)
    ds = DenseDataset(d.subset([by["s"]]), (20, 24), 3, train=True, seed=3)
    for k in range(5):
        out = ds[k]["depth"].numpy()
        assert (out > 0).mean() < 0.15 and np.all(np.isin(out, sparse))
    # KITTI's PNGs hold 256 values per metre: depth_units.txt says so (.npy metres are unaffected)
    (tmp_path / "depth_units.txt").write_text("# KITTI\n256\n")
    k = load_dense_folder(tmp_path, labeled=True)
    assert k.sample(by["p"]).depth[3, 3] == pytest.approx(1500 / 256) and k.sample(by["n"]).depth[1, 1] == 3.25
    for bad in ("0", "metres", "256 100"):
        (tmp_path / "depth_units.txt").write_text(bad)
        with pytest.raises(DataError, match="values per metre"):
            load_dense_folder(tmp_path, labeled=True)


# ---------------------------------------------------------------- npz

def test_npz_good(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 8, 10, 4), dtype=np.uint8)
    y = rng.integers(0, 3, (3, 8, 10)).astype(np.int32)
    y[0, 0, 0] = 255
    depth = rng.uniform(1, 9, (3, 8, 10))
    depth[1, 1, 1], depth[2, 2, 2] = np.nan, -4
    f = tmp_path / "d.npz"
    np.savez(f, x=x, y=y, depth=depth, classes=np.array(["road", "sky", "car"]),
             palette=np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    d = load_dense_npz(f, labeled=True)
    assert npz_is_dense(f) and d.classes == ["road", "sky", "car"] and d.palette[2].tolist() == [7, 8, 9]
    s = d.sample(1)
    assert s.image.shape == (8, 10, 3) and np.array_equal(s.image, x[1, ..., :3])
    assert np.array_equal(d.masks, y.astype(np.uint8)) and d.depth[1, 1, 1] == 0 and d.depth[2, 2, 2] == 0
    unl = load_dense_npz(f, labeled=False)
    assert not unl.labeled and unl.classes is None
    np.savez(tmp_path / "k.npz", x=x[..., 0], y=y)
    assert load_dense_npz(tmp_path / "k.npz", labeled=True).classes == ["0", "1", "2"]
    np.savez(tmp_path / "cls.npz", x=x, y=np.arange(3))
    assert not npz_is_dense(tmp_path / "cls.npz") and not npz_is_dense(tmp_path / "missing.npz")


@pytest.mark.parametrize("arrays,match", [
    (dict(y=np.zeros((2, 8, 9), np.uint8)), r"'y' must have shape \(2, 8, 10\).*\(2, 8, 9\)"),
    (dict(depth=np.zeros((2, 8), np.float32)), r"'depth' must have shape \(2, 8, 10\)"),
    (dict(y=np.full((2, 8, 10), 256, np.int32)), "256"),
    (dict(y=np.full((2, 8, 10), -1, np.int32)), "-1"),
    (dict(y=np.full((2, 8, 10), 2, np.uint8), classes=np.array(["a", "b"])), "class id 2"),
    (dict(y=np.zeros((2, 8, 10), np.float32)), "integer"),
    (dict(y=np.zeros((2, 8, 10), np.uint8), classes=np.array(["a"]), palette=np.zeros((2, 3), int)), "palette"),
])
def test_npz_bad(tmp_path, arrays, match):
    f = tmp_path / "bad.npz"
    np.savez(f, x=np.zeros((2, 8, 10, 3), np.uint8), **arrays)
    with pytest.raises(DataError, match=match):
        load_dense_npz(f, labeled=True)


def test_check_same_classes():
    x = np.zeros((1, 4, 4, 3), np.uint8)
    a = ArrayDenseDomain("a", x, np.zeros((1, 4, 4), np.uint8), classes=["road", "sky"])
    b = ArrayDenseDomain("b", x, np.zeros((1, 4, 4), np.uint8), classes=["sky", "road"])
    check_same_classes(a, ArrayDenseDomain("c", x, classes=None))
    check_same_classes(a, ArrayDenseDomain("d", x, classes=["road", "sky"]))
    with pytest.raises(DataError, match=r"\[road, sky\] vs \[sky, road\]"):
        check_same_classes(a, b)


# ---------------------------------------------------------------- dataset

def array_domain(n=6):
    s = block_sample()
    k = np.arange(n)[:, None, None]
    return ArrayDenseDomain("blocks", np.stack([s.image] * n), (s.mask[None] + k) % 24, np.stack([s.depth] * n),
                            classes=[str(i) for i in range(24)])


def test_dataset_is_deterministic_per_k_and_fresh_per_epoch():
    dom = array_domain()
    ds = DenseDataset(dom, (24, 32), 3, train=True, seed=5)
    a, b = ds[3], ds[3]
    assert a.keys() == {"image", "mask", "depth", "index", "replaced"}
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert a["image"].dtype == torch.uint8 and a["mask"].dtype == torch.int64 and a["depth"].dtype == torch.float32
    assert a["image"].shape == (24, 32, 3) and a["mask"].shape == (24, 32) and a["index"].shape == ()
    later = ds[3 + len(dom)]
    assert int(later["index"]) == 3 and not torch.equal(later["image"], a["image"])
    assert not torch.equal(DenseDataset(dom, (24, 32), 3, train=True, seed=6)[3]["image"], a["image"])
    ev = DenseDataset(dom, (24, 32), 1, train=False, labels=False)
    assert ev[3].keys() == {"image", "index", "replaced"} and ev[3]["image"].shape == (24, 32, 1)
    assert torch.equal(ev[3]["image"], ev[3 + len(dom)]["image"])
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again[3]["mask"], a["mask"])


def test_dataloader_workers_match_single_process(tmp_path):
    for k in range(6):
        save(tmp_path / f"images/i{k}.png", image(30, 40, seed=k))
        save(tmp_path / f"masks/i{k}.png", np.full((30, 40), k % 3, np.uint8))
        (tmp_path / "depth").mkdir(exist_ok=True)
        np.save(tmp_path / f"depth/i{k}.npy", np.full((30, 40), k + 1.0))
    (tmp_path / "images/i4.png").write_bytes((tmp_path / "images/i4.png").read_bytes()[:200])  # fails at decode
    d = load_dense_folder(tmp_path, labeled=True)
    assert len(d) == 6
    ds = DenseDataset(d, (16, 20), 3, train=True, seed=2)
    order = [int(v) for v in np.random.default_rng(0).permutation(18)]

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=order, num_workers=workers)
        return list(loader)

    one, two = batches(0), batches(2)
    assert len(one) == len(two) == 5
    for p, q in zip(one, two):
        assert p.keys() == q.keys() and all(torch.equal(p[key], q[key]) for key in p)
    assert p["image"].shape[1:] == (16, 20, 3)
    assert sum(int(b["replaced"].sum()) for b in one) == 3  # i4 is asked for in each of 3 epochs
    again = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives
    assert all(torch.equal(again[7][key], ds[7][key]) for key in ds[7])
