"""Bad input: every case gets a clear one-sentence error (exit code 2) or is skipped and counted;
never a traceback, never a hang. Cases run through the loaders and through the CLI."""
import os
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeda.cli import main
from edgeda.data import load_domain
from edgeda.errors import DataError


def png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h pixels but carries almost no data (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    # a CliRunner keeps an uncaught exception in res.exception: anything but SystemExit is a traceback
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res


def _skips(dom):
    return {os.path.basename(p): r for p, r in dom.report.skipped}


def good(folder, name="ok.png", value=128):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(folder / name)
    return folder / name


# -- files that must be skipped and counted ---------------------------------------------------------
BAD_FILES = {
    "corrupt.png": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200)),
    "truncated.png": lambda p: p.write_bytes(good(p.parent, "_src.png").read_bytes()[:45]),
    "zero.jpg": lambda p: p.write_bytes(b""),
    "notes.jpeg": lambda p: p.write_text("this is a text file with an image extension\n"),
    "bomb.png": lambda p: p.write_bytes(png_with_size(100_000, 100_000)),  # PIL's own bomb limit
    "bomb9k.png": lambda p: p.write_bytes(png_with_size(9_000, 9_000)),  # under PIL's limit, over edgeda's
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_skipped_with_a_reason(tmp_path, name):
    good(tmp_path / "a")
    BAD_FILES[name](tmp_path / "a" / name)
    (tmp_path / "a" / "_src.png").unlink(missing_ok=True)
    d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
    assert len(d) == 1
    skips = _skips(d)
    assert list(skips) == [name] and skips[name]
    if name.startswith("bomb"):
        assert "bomb" in skips[name].lower() or "too large" in skips[name]


def test_preview_cli_reports_skipped_files(tmp_path):
    good(tmp_path / "a")
    for name, make in BAD_FILES.items():
        make(tmp_path / "a" / name)
    res = cli("data", "preview", tmp_path, "--out", tmp_path / "grid.png", "--n", 4)
    assert res.exit_code == 0
    assert f"{len(BAD_FILES)} files skipped" in res.output
    assert (tmp_path / "grid.png").is_file()


def test_folder_of_only_bad_files_is_one_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    for name, make in BAD_FILES.items():
        make(tmp_path / "a" / name)
    (tmp_path / "a" / "_src.png").unlink()  # the good image the truncated one was cut from
    res = cli("data", "preview", tmp_path, "--out", tmp_path / "grid.png")
    assert res.exit_code == 2 and "no usable images" in res.output and "unreadable" in res.output


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16", "CMYK", "I"])
def test_unusual_image_modes_load(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray(np.full((9, 7), 50000, np.uint16))
    elif mode == "I":
        im = Image.fromarray(np.full((9, 7), 40000, np.int32), "I")
    else:
        im = rgb.convert(mode)
    path = tmp_path / "c" / ("x.jpg" if mode == "CMYK" else "x.png")
    path.parent.mkdir()
    im.save(path, format="TIFF" if mode == "I" else None)  # 32-bit: a TIFF under a .png name
    for channels in (1, 3):
        d = load_domain(str(tmp_path), labeled=True, size=(8, 8), channels=channels)
        assert d.images.shape == (1, 8, 8, channels) and not d.report.skipped
    if mode in ("I;16", "I"):
        assert d.images.max() > 100  # 16-bit range is scaled, not clipped


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    good(tmp_path / "a")
    p = good(tmp_path / "a", "locked.png")
    # as root, chmod 000 does not stop reading, so the permission error is simulated at open()
    real_open = Image.open

    def deny(fp, *a, **k):
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", deny)
    d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
    assert len(d) == 1 and "Permission denied" in _skips(d)["locked.png"]
    assert p.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="running as root: chmod 000 files stay readable")
def test_chmod_000_file_is_skipped(tmp_path):
    good(tmp_path / "a")
    p = good(tmp_path / "a", "locked.png")
    p.chmod(0)
    try:
        d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
        assert len(d) == 1 and "locked.png" in _skips(d)
    finally:
        p.chmod(0o644)


def test_fifo_with_image_name_is_skipped_without_hanging(tmp_path):
    good(tmp_path / "a")
    os.mkfifo(tmp_path / "a" / "pipe.png")  # opening it for reading would block forever
    d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
    assert len(d) == 1 and _skips(d) == {"pipe.png": "not a regular file"}


def test_symlink_loops_do_not_hang(tmp_path):
    good(tmp_path / "a")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)  # directory loop
    (tmp_path / "a" / "x.png").symlink_to(tmp_path / "a" / "y.png")  # file loop
    (tmp_path / "a" / "y.png").symlink_to(tmp_path / "a" / "x.png")
    (tmp_path / "self").symlink_to(tmp_path / "self")  # a looping entry at the class level
    d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
    assert len(d) == 1 and set(_skips(d)) == {"x.png", "y.png"}
    assert d.classes == ["a"]
    res = cli("data", "preview", tmp_path, "--out", tmp_path / "g.png")
    assert res.exit_code == 0 and "2 files skipped" in res.output


def test_directory_named_like_an_image_is_ignored(tmp_path):
    good(tmp_path / "a")
    (tmp_path / "a" / "fake.png").mkdir()
    d = load_domain(str(tmp_path), labeled=True, size=(8, 8))
    assert len(d) == 1 and not d.report.skipped


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli("data", "preview", tmp_path / "empty", "--out", tmp_path / "g.png")
    assert res.exit_code == 2 and "no usable images" in res.output
    res = cli("train", "--source", tmp_path / "empty", "--target", tmp_path / "empty", "--out", tmp_path / "r",
              "--device", "cpu")
    assert res.exit_code == 2 and "class subfolders" in res.output


# -- .npz files ---------------------------------------------------------------------------------
X = np.random.default_rng(1).integers(0, 255, (6, 10, 10, 3), dtype=np.uint8)
Y = np.array([0, 1, 2, 0, 1, 2])
BAD_NPZ = {
    "missing_x": (dict(images=X, y=Y), "no array 'x'"),
    "missing_y": (dict(x=X), "no labels"),
    "float_x": (dict(x=X.astype(np.float32), y=Y), "uint8"),
    "x_5d": (dict(x=X[:, None], y=Y), "shape"),
    "x_2_channels": (dict(x=X[..., :2], y=Y), "shape"),
    "x_zero_width": (dict(x=X[:, :, :0], y=Y), "empty image dimension"),
    "y_wrong_length": (dict(x=X, y=Y[:4]), "'y' must have shape"),
    "y_float": (dict(x=X, y=Y.astype(np.float32)), "integer labels"),
    "y_negative": (dict(x=X, y=-Y - 1), "negative"),
    "y_huge": (dict(x=X, y=Y + 10**12), "beyond"),
    "y_beyond_classes": (dict(x=X, y=Y, classes=np.array(["a", "b"])), "beyond the 2 names"),
    "classes_2d": (dict(x=X, y=Y, classes=np.array([["a", "b"], ["c", "d"]])), "'classes' must be"),
    "object_array": (dict(x=X, y=np.array([{"a": 1}] * 6, dtype=object)), "not a readable"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_is_one_clear_error(tmp_path, case):
    arrays, message = BAD_NPZ[case]
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_domain(str(tmp_path / "d.npz"), labeled=True, size=(8, 8))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"\x93NUMPY garbage"])
def test_unreadable_npz_bytes(tmp_path, content):
    (tmp_path / "d.npz").write_bytes(content)
    with pytest.raises(DataError, match="not a readable"):
        load_domain(str(tmp_path / "d.npz"), labeled=False)


def test_bad_npz_through_train_cli(tmp_path):
    np.savez(tmp_path / "ok.npz", x=X, y=Y)
    np.savez(tmp_path / "bad.npz", x=X.astype(np.float32), y=Y)
    res = cli("train", "--source", tmp_path / "bad.npz", "--target", tmp_path / "ok.npz", "--out", tmp_path / "r",
              "--device", "cpu")
    assert res.exit_code == 2 and "uint8" in res.output
    assert not (tmp_path / "r" / "model.edgeda").exists()


# -- labels and classes against the model ---------------------------------------------------------
def _bundle(tmp_path, classes=("a", "b", "c")):
    from edgeda.bundle import write_bundle
    from edgeda.models import build
    from edgeda.tasks.spec import TaskSpec

    clf = build("classifier", backbone="dtn", num_classes=len(classes), channels=3, image_size=32,
                backbone_kwargs={"width": 8, "out_dim": 32})
    task = TaskSpec(num_classes=len(classes), classes=list(classes), image_size=(32, 32), channels=3)
    return write_bundle(tmp_path / "m.edgeda", {"classifier": clf}, task)


def test_eval_labels_out_of_range_is_a_clear_error(tmp_path):
    b = _bundle(tmp_path)
    np.savez(tmp_path / "d.npz", x=X, y=np.array([0, 1, 2, 3, 4, 5]))
    res = cli("eval", b, "--data", tmp_path / "d.npz", "--confusion", tmp_path / "c.png")
    assert res.exit_code == 2 and "labels in [0, 5]" in res.output and "3 classes" in res.output


def test_eval_on_fewer_classes_than_the_model_works(tmp_path):
    b = _bundle(tmp_path)
    np.savez(tmp_path / "d.npz", x=X, y=np.array([0, 1, 0, 1, 0, 1]))
    res = cli("eval", b, "--data", tmp_path / "d.npz", "--confusion", tmp_path / "c.png", "--json")
    assert res.exit_code == 0, res.output
    assert '"n": 6' in res.output


def test_train_with_target_test_labels_beyond_the_source_classes(tmp_path):
    np.savez(tmp_path / "src.npz", x=X, y=np.array([0, 1, 0, 1, 0, 1]))
    np.savez(tmp_path / "tgt.npz", x=X, y=Y)
    res = cli("train", "--source", tmp_path / "src.npz", "--target", tmp_path / "tgt.npz", "--target-test",
              tmp_path / "tgt.npz", "--out", tmp_path / "r", "--device", "cpu")
    assert res.exit_code == 2 and ("2 classes" in res.output or "classes differ" in res.output)


def test_class_folders_differ_between_source_and_target(tmp_path):
    for c in ("cat", "dog"):
        good(tmp_path / "src" / c, "1.png")
        good(tmp_path / "src" / c, "2.png")
    for c in ("cat", "fox"):
        good(tmp_path / "tgt" / c, "1.png")
    res = cli("train", "--source", tmp_path / "src", "--target", tmp_path / "tgt", "--target-test", tmp_path / "tgt",
              "--out", tmp_path / "r", "--device", "cpu")
    assert res.exit_code == 2 and "classes differ" in res.output and "fox" in res.output
