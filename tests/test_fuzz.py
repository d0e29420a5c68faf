"""Property-based tests (hypothesis): manifest parsing raises nothing but BundleError, the .npz
loader nothing but DataError, and the folder loader never raises on arbitrary file bytes.

The test functions take no fixtures so ``benchmarks/reliability.py`` can call them directly;
``EXAMPLES`` counts the examples each one ran.
"""
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeda.bundle import FORMAT, Bundle, check_manifest
from edgeda.data import load_domain
from edgeda.errors import BundleError, DataError

EXAMPLES: Counter = Counter()
FAST = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
paths = st.sampled_from(["classifier.safetensors", "../x", "/abs", "a/../b", "", "a\\b", "~/x", ".", "a//b", "x\x00"]) \
    | st.text(max_size=12)
near_manifests = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from([FORMAT, "other"]) | json_values,
        "format_version": st.sampled_from([0, 1, 2, True, "1"]) | json_values,
        "task": st.fixed_dictionaries({}, optional={"num_classes": json_values | st.integers(0, 5),
                                                    "classes": json_values, "task": st.sampled_from(["classification", "x"]),
                                                    "image_size": json_values, "channels": st.sampled_from([1, 3, 0, "3"]),
                                                    "mean": json_values, "std": json_values}) | json_values,
        "deployables": st.dictionaries(st.sampled_from(["classifier", "refiner"]) | st.text(max_size=5),
                                       st.fixed_dictionaries({}, optional={"file": paths | json_values,
                                                                           "arch": json_values}) | json_values,
                                       max_size=3) | json_values,
        "files": st.dictionaries(paths, st.fixed_dictionaries({}, optional={"sha256": st.text(max_size=64) | json_values})
                                 | json_values, max_size=3) | json_values,
    },
)


@FAST
@given(json_values | near_manifests)
def test_check_manifest_raises_only_bundle_errors(m):
    EXAMPLES["check_manifest"] += 1
    try:
        check_manifest(m)
    except BundleError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(near_manifests, st.binary(max_size=64))
def test_bundle_loading_raises_only_bundle_errors(m, weights):
    EXAMPLES["bundle"] += 1
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "b.edgeda"
        root.mkdir()
        (root / "classifier.safetensors").write_bytes(weights)
        (root / "manifest.json").write_text(json.dumps(m))
        try:
            b = Bundle(root)
            for name in b.names:
                b.module(name)
        except BundleError:
            pass


small_shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)
arrays = hnp.arrays(
    st.sampled_from([np.uint8, np.int8, np.int64, np.uint64, np.float32, np.bool_, np.dtype("U3"), np.dtype("S2")]),
    small_shapes,
)


@FAST
@given(st.dictionaries(st.sampled_from(["x", "y", "classes", "other"]), arrays, max_size=4), st.booleans())
@example({"x": np.zeros((0, 1, 1), np.uint8), "y": np.zeros((0, 0, 0), np.uint8)}, False)  # no images: a DataError
def test_npz_loader_raises_only_data_errors(contents, labeled):
    EXAMPLES["npz"] += 1
    buf = io.BytesIO()
    np.savez(buf, **contents)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "d.npz"
        path.write_bytes(buf.getvalue())
        try:
            dom = load_domain(str(path), labeled=labeled, size=(8, 8), channels=3)
        except DataError:
            return
        assert dom.images.shape[1:] == (8, 8, 3) and dom.images.dtype == np.uint8
        if dom.labels is not None:
            assert dom.labels.min(initial=0) >= 0 and len(dom.labels) == len(dom.images)


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png(0)
mutated_png = st.builds(
    lambda cuts, flips: _mutate(PNG, cuts, flips),
    st.integers(0, len(PNG)), st.lists(st.tuples(st.integers(0, len(PNG) - 1), st.integers(1, 255)), max_size=6),
)


def _mutate(data: bytes, cut: int, flips) -> bytes:
    b = bytearray(data[:cut] if cut else data)
    for i, x in flips:
        if i < len(b):
            b[i] ^= x
    return bytes(b)


@FAST
@given(st.lists(st.binary(max_size=200) | mutated_png, min_size=1, max_size=4))
def test_folder_loader_never_raises_on_arbitrary_bytes(blobs):
    EXAMPLES["folder"] += 1
    with tempfile.TemporaryDirectory() as d:
        for i, blob in enumerate(blobs):
            sub = Path(d) / ("a" if i % 2 else "b")
            sub.mkdir(exist_ok=True)
            (sub / f"{i}.png").write_bytes(blob)
        dom = load_domain(d, labeled=True, size=(8, 8), channels=1)
        assert dom.report.loaded + len(dom.report.skipped) == len(blobs)
        assert all(reason for _, reason in dom.report.skipped)

