import os

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Rendered built-in domains go to a per-session cache (never the user's)."""
    os.environ["EDGEDA_CACHE"] = str(tmp_path_factory.mktemp("edgeda-cache"))
    # the torch.export-based ONNX exporter takes ~15 s per model on a CPU: tests export with the
    # TorchScript one, except the test of the exporter choice (test_export.py), which asks for auto
    os.environ.setdefault("EDGEDA_ONNX_EXPORTER", "torchscript")
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def tiny_config(tmp_path, **kw):
    """A training config that runs in a second or two on a CPU."""
    from edgeda.config import make_config

    base = dict(out=str(tmp_path / "run"), iters=6, batch_size=8, eval_every=3, checkpoint_every=3,
                source_n=200, device="cpu", backbone_kwargs={"width": 8, "out_dim": 32})
    base.update(kw)
    return make_config(None, base)


@pytest.fixture
def write_png():
    from PIL import Image

    def write(path, size=(12, 10), mode="RGB", value=128):
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = np.full((size[1], size[0], 3 if mode == "RGB" else 1), value, np.uint8)
        Image.fromarray(arr if mode == "RGB" else arr[:, :, 0], mode if mode != "RGB" else None).save(path)
        return path

    return write
