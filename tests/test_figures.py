"""Every figure a person reads (sample panels, dense previews, confusion matrices) keeps its text
apart and inside the picture at its default size, for few and many classes."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from edgeda.data.dense import ArrayDenseDomain  # noqa: E402
from edgeda.tasks.preview import preview_dense_figure  # noqa: E402
from edgeda.tasks.spec import TaskSpec  # noqa: E402
from edgeda.tasks.draw import panel_figure  # noqa: E402
from edgeda.tasks.base import task_of  # noqa: E402
from edgeda.training.model_eval import confusion_figure, format_count  # noqa: E402

NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def _texts_apart_and_inside(fig):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    page = fig.bbox
    boxes, seen = [], set()
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or id(t) in seen:
            continue
        seen.add(id(t))
        b = t.get_window_extent(renderer=r)
        assert b.x0 >= page.x0 - 1 and b.x1 <= page.x1 + 1 and b.y0 >= page.y0 - 1 and b.y1 <= page.y1 + 1, \
            f"{t.get_text()!r} is cut off"
        boxes.append((t.get_text(), b))
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            assert not a.shrunk(0.98, 0.9).overlaps(b.shrunk(0.98, 0.9)), f"{ta!r} overlaps {tb!r}"
    plt.close(fig)
    return [t for t, _ in boxes]


def _sample(k, n=3, h=32, w=64):
    rng = np.random.default_rng(k)
    return (rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8), rng.integers(0, k, (n, h, w)),
            rng.integers(0, k, (n, h, w)), rng.uniform(1, 60, (n, h, w)).astype(np.float32))


@pytest.mark.parametrize("k", [2, 4, 11, 19])
def test_every_figure_keeps_its_text_apart(k):
    names = NAMES[:k]
    images, pred, truth, depth = _sample(k)
    spec = TaskSpec(k, names, task="segmentation", image_size=(32, 64))
    seg = task_of(spec)
    rows = [np.concatenate(seg.draw_row(spec, images[i], pred[i], truth[i]), axis=1) for i in range(3)]
    texts = _texts_apart_and_inside(panel_figure(spec, rows, ["image", "truth", "prediction", "error"],
                                                 "model.edgeda on /data/street/test", errors=True))
    assert {"image", "truth", "prediction", "error", "wrong", "right", *names} <= set(texts)
    dspec = TaskSpec(0, [], task="depth", image_size=(32, 64))
    drows = [np.concatenate(task_of(dspec).draw_row(dspec, images[i], depth[i], depth[i] * 1.2), axis=1) for i in range(3)]
    assert "near" in _texts_apart_and_inside(panel_figure(dspec, drows, ["image", "truth", "prediction", "error"],
                                                          "depth", errors=True))
    dom = ArrayDenseDomain("synscenes:photo", images, truth.astype(np.uint8), depth, classes=names)
    texts = _texts_apart_and_inside(preview_dense_figure(dom, 3))
    assert {"image", "mask", "depth", "far", "near", *names} <= set(texts)
    conf = np.random.default_rng(k).integers(0, 900_000, (k, k))
    conf[0, 0] = 44268
    texts = _texts_apart_and_inside(confusion_figure({"confusion": conf.tolist(), "miou": 0.4}, names,
                                                     "model.edgeda on /tmp/a/rather/long/path/to/the/test/data: mIoU 40.0%"))
    assert "44.3k" in texts and not any("e+" in t for t in texts)


def test_counts_have_one_format():
    assert [format_count(v) for v in (7, 950, 44268, 700_000, 1_234_567)] == ["7", "950", "44.3k", "700k", "1.2M"]
