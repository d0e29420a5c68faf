"""The check that a detector can learn the source's boxes at the run's input size
(:mod:`edgeda.tasks.detection_fit`): the per-box assignment of each detector on hand-made boxes, and
the report and warning a run gets."""
import numpy as np
import pytest
import torch

from edgeda.data.detection import ArrayDetectionDomain
from edgeda.models import build
from edgeda.tasks import task_of
from edgeda.tasks.detection_fit import box_coverage, fit_report

SIZE = (64, 64)


def _ssd():
    return build("detector", arch="ssdlite", num_classes=2, channels=3, image_size=list(SIZE), width=0.25)


def _fcos():
    return build("detector", arch="fcos", num_classes=2, channels=3, image_size=list(SIZE), backbone="mobilenet_v3_large",
                 width=0.25, fpn_channels=64, num_convs=0)


def test_ssd_assigns_a_box_some_default_box_overlaps_by_half_and_not_a_speck():
    m = _ssd()
    anchor = m.anchors(SIZE)[0]  # a default box itself: IoU 1
    speck = torch.tensor([30.0, 30.0, 33.0, 33.0])  # 3 x 3 px; the smallest default box is 0.2 * 64 = 12.8 px
    assert m.assigned(torch.stack([anchor, speck]), SIZE).tolist() == [True, False]
    assert m.assigned(torch.zeros(0, 4), SIZE).numel() == 0


def test_fcos_assigns_a_box_holding_a_location_near_its_centre_and_not_one_between_locations():
    m = _fcos()
    # stride-8 locations at multiples of 8: (16, 16) lies inside the first box, near its centre;
    # the second box (3 x 3 px, centred at (20, 20)) holds no location
    boxes = torch.tensor([[12.0, 12.0, 22.0, 22.0], [18.5, 18.5, 21.5, 21.5]])
    assert m.assigned(boxes, SIZE).tolist() == [True, False]
    # one image's boxes compete for locations (the smallest takes a shared one), images do not:
    # the same box in two images is assigned in each
    assert box_coverage(m, [boxes[:1], boxes[:1]], SIZE) == 1.0


def _domain(box_side: float, n: int = 6) -> ArrayDetectionDomain:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, *SIZE, 3), dtype=np.uint8)
    boxes, labels = [], []
    for i in range(n):
        x, y = 10 + 5 * i + 0.5, 20.5
        boxes.append(np.array([[x, y, x + box_side, y + box_side]], np.float32))
        labels.append(np.array([i % 2]))
    return ArrayDetectionDomain("squares", images, boxes, labels, classes=["a", "b"])


def test_the_report_warns_when_few_boxes_can_be_learned_and_names_what_assigns_more():
    dom = _domain(3.0)  # specks: SSDLite at 64 x 64 assigns none of them
    spec = task_of("detection").make_spec(dom, image_size=SIZE, channels=3)
    rec, lines = fit_report(_ssd(), dom, spec)
    assert rec["assigned"] == 0.0 and rec["boxes"] == 6 and rec["median_box_wh"] == [3.0, 3.0]
    assert rec["short_side_under_8px"] == 1.0
    assert len(lines) == 1 and "ssdlite can learn 0 % of the source's boxes at 64x64" in lines[0]
    # each hint is measured: named only where it assigns more than the run's detector
    more = [h for h in ("--backbone fcos", "--image-size 128,128") if h in lines[0]]
    assert more == [h for h, share in (("--backbone fcos", rec["assigned_fcos"]),
                                       ("--image-size 128,128", rec["assigned_at_2x"])) if share > 0]


def test_the_report_is_silent_when_the_detector_assigns_the_boxes():
    dom = _domain(24.0)
    spec = task_of("detection").make_spec(dom, image_size=SIZE, channels=3)
    rec, lines = fit_report(_fcos(), dom, spec)
    assert rec["assigned"] == 1.0 and lines == []
    assert "assigned_at_2x" not in rec  # alternatives are measured only for a warning


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_other_tasks_report_nothing(task):
    assert task_of(task).fit_report(None, None, None) == ({}, [])
