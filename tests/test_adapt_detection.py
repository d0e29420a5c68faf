"""On-device adaptation of detection bundles: TENT and CoTTA end to end through the CLI, the
per-anchor objectives and the anchor mirror map by hand, and the collapse monitor on detections
that vanish or explode (rolled back to a healthy state)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgeda.adapt import ADAPT_METHODS, adapt
from edgeda.adapt.base import AdaptMethod
from edgeda.adapt.detection import (DetectionMonitor, DetectionStats, anchor_entropy, class_probs,
                                    mirror_permutation)
from edgeda.adapt.tasks import adaptation_of
from edgeda.bundle import Bundle, write_bundle
from edgeda.models import build
from edgeda.task import TaskSpec

CLASSES = ["red", "green"]
SIZE = 64
SMALL = {"ssdlite": {"width": 0.25},
         "fcos": {"backbone": "resnet18", "width": 8, "fpn_channels": 64, "num_convs": 1}}
TRAIN = {"ssdlite": (250, 5e-3), "fcos": (60, 3e-3)}  # (iterations, Adam lr) that give confident detections

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def squares(n, seed, bright=1.0):
    """(uint8 (n, 64, 64, 3) images, box targets): one or two red (class 0) or green (class 1) squares
    on a dark background; ``bright`` scales the squares' colour (the target shift)."""
    g = np.random.default_rng(seed)
    x = np.full((n, SIZE, SIZE, 3), 30, np.uint8)
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(g.integers(1, 3))):
            c, s = int(g.integers(0, 2)), int(g.integers(14, 26))
            x0, y0 = (int(v) for v in g.integers(0, SIZE - s, 2))
            colour = np.array([200, 60, 60] if c == 0 else [60, 200, 60]) * bright
            x[i, y0:y0 + s, x0:x0 + s] = np.clip(colour, 0, 255)
            boxes.append([x0, y0, x0 + s, y0 + s])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return x, targets


def spec():
    return TaskSpec(num_classes=2, classes=CLASSES, task="detection", image_size=(SIZE, SIZE), channels=3,
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def train_detector(arch):
    x, targets = squares(32, 0)
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.manual_seed(0)
    model = build("detector", arch=arch, num_classes=2, channels=3, image_size=[SIZE, SIZE], **SMALL[arch])
    iters, lr = TRAIN[arch]
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(iters):
        idx = torch.randint(0, len(x), (8,), generator=g)
        loss = model.loss(model(xt[idx]), [targets[i] for i in idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """Tiny trained SSDLite and FCOS bundles (written with the bundle API) and a folder of target PNGs
    (the squares dimmer)."""
    root = tmp_path_factory.mktemp("adapt-det")
    bundles = {}
    for arch in SMALL:
        bundles[arch] = write_bundle(root / f"{arch}.edgeda", {"model": train_detector(arch)}, spec(),
                                     method={"name": "source_only"})
    frames = root / "camera"
    frames.mkdir()
    xt, _ = squares(16, 1, bright=0.8)
    for i, img in enumerate(xt):
        Image.fromarray(img).save(frames / f"f{i:02d}.png")
    return {"bundles": bundles, "frames": frames}
