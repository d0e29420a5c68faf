"""Labelled data naming other classes than the model: read with the model's classes by name."""
import numpy as np
import pytest
from PIL import Image

from edgeda.data.align import align_classes
from edgeda.data.dense import ArrayDenseDomain
from edgeda.data.detection import DetectionSample
from edgeda.data.domain import Domain
from edgeda.errors import DataError


def _detection_domain():
    from edgeda.data.detection import DetectionDomain

    class Two(DetectionDomain):
        def __len__(self):
            return 1

        def sample(self, i):
            return DetectionSample(np.zeros((8, 8, 3), np.uint8), [[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4]],
                                   [0, 1, 2], [[0, 0, 8, 8]], [1])

    dom = Two("coco", classes=["bird", "cat", "dog"], has_boxes=True)
    dom.category_ids = [5, 9, 12]
    return dom


def test_boxes_of_other_classes_are_left_out_and_the_rest_renumbered():
    dom, msg = align_classes(_detection_domain(), ["dog", "cat"], "test")
    s = dom.sample(0)
    np.testing.assert_array_equal(s.boxes, [[1, 1, 3, 3], [2, 2, 4, 4]])
    assert s.labels.tolist() == [1, 0] and s.crowd_labels.tolist() == [1]  # cat -> 1, dog -> 0; bird gone
    assert dom.classes == ["dog", "cat"] and dom.category_ids == [12, 9]  # the json's ids, in the model's order
    assert "bird are left out" in msg and msg in dom.report.warnings
    # a model class the data never names: no examples, said; its json ids are then unknown
    dom, msg = align_classes(_detection_domain(), ["cat", "horse"], "test")
    assert dom.sample(0).labels.tolist() == [0] and "horse have no examples" in msg and dom.category_ids is None


def test_masks_and_class_labels_are_renumbered_by_name():
    mask = np.array([[0, 1, 2, 255]], np.uint8)
    dense = ArrayDenseDomain("d", np.zeros((1, 1, 4, 3), np.uint8), mask[None], classes=["sky", "road", "car"])
    out, _ = align_classes(dense, ["road", "sky"], "d")
    assert out.sample(0).mask.tolist() == [[1, 0, 255, 255]] and out.classes == ["road", "sky"]
    cls = Domain("c", np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 1, 2, 1]), ["a", "b", "c"])
    out, _ = align_classes(cls, ["c", "a"], "c")
    assert out.labels.tolist() == [1, 0] and len(out) == 2 and len(cls) == 4  # b's images left out
    assert not cls.report.warnings  # the original is untouched
    with pytest.raises(DataError, match="no class in common"):
        align_classes(cls, ["x", "y"], "c")
    same, msg = align_classes(cls, ["a", "b", "c"], "c")
    assert same is cls and msg is None


def test_a_target_test_with_more_classes_is_scored_on_the_sources(tmp_path):
    from edgeda.config import make_config
    from edgeda.training.domains import load_domains

    def folder(root, classes, ids):
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for k in range(2):
            Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(root / "images" / f"{k}.png")
            Image.fromarray(np.array(ids, np.uint8).repeat(4)[None].repeat(16, 0)).save(root / "masks" / f"{k}.png")
        (root / "classes.txt").write_text("\n".join(classes) + "\n")

    folder(tmp_path / "src", ["road", "car"], [0, 1, 0, 1])
    folder(tmp_path / "test", ["sky", "car", "road"], [0, 1, 2, 1])
    cfg = make_config(None, {"source": str(tmp_path / "src"), "target": str(tmp_path / "test" / "images"),
                             "target_test": str(tmp_path / "test"), "task": "segmentation", "image_size": 16,
                             "out": str(tmp_path / "run")})
    d = load_domains(cfg, True)
    assert d.target_test.classes == ["road", "car"]
    assert d.target_test.sample(0).mask[0].tolist() == [255] * 4 + [1] * 4 + [0] * 4 + [1] * 4
    assert any("sky are left out" in w for w in d.target_test.report.warnings)


def test_train_on_some_source_classes_only(tmp_path):
    from edgeda.config import make_config
    from edgeda.training.domains import load_domains

    cfg = make_config(None, {"source": "syndigits", "classes": "7,3", "source_n": 300, "out": str(tmp_path / "r")})
    d = load_domains(cfg, True)
    assert d.source.classes == ["7", "3"] and set(np.unique(d.source.labels)) <= {0, 1}
    assert d.source_val.classes == ["7", "3"] and len(d.source) + len(d.source_val) < 300
    # the target test (all ten digits) is scored on the two: its other digits left out
    assert d.target_test.classes == ["7", "3"] and len(d.target_test) < 797
    assert any("left out" in w for w in d.target_test.report.warnings)
    with pytest.raises(DataError, match="no such class"):
        load_domains(make_config(None, {"source": "syndigits", "classes": "7,x", "out": str(tmp_path / "r")}), True)


def test_a_model_of_some_classes_evaluates_on_data_of_all(tmp_path):
    from click.testing import CliRunner

    from edgeda.cli import main

    from edgeda.bundle import Bundle
    from edgeda.config import make_config
    from edgeda.training.trainer import Trainer

    cfg = make_config(None, {"method": "source_only", "classes": ["1", "2"], "iters": 3, "source_n": 200,
                             "eval_every": 3, "checkpoint_every": 3, "batch_size": 8, "out": str(tmp_path / "r"),
                             "device": "cpu"})
    result = Trainer(cfg, progress=False, log=None).run()
    assert Bundle(result.bundle).task.classes == ["1", "2"]
    res = CliRunner().invoke(main, ["eval", str(result.bundle), "--data", "handwritten:test"])
    assert res.exit_code == 0, res.output
    assert "left out of the scores" in res.output


def _class_folders(root, names, per=2):
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per):
            Image.fromarray(np.full((8, 8, 3), 40 * k + i, np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def _classifier_spec(classes):
    from edgeda.tasks.spec import TaskSpec

    return TaskSpec(num_classes=len(classes), classes=classes, task="classification", image_size=(8, 8), channels=3)


def test_classification_folders_of_some_classes_are_read_by_name(tmp_path):
    from edgeda.tasks.loading import load_for_task

    spec = _classifier_spec(["ant", "bee", "cat"])
    dom = load_for_task(_class_folders(tmp_path / "a", ["ant", "cat"]), spec, labeled=True)
    assert dom.classes == ["ant", "bee", "cat"] and sorted(dom.labels.tolist()) == [0, 0, 2, 2]  # not 0, 0, 1, 1
    numbered = _classifier_spec([str(i) for i in range(10)])
    dom = load_for_task(_class_folders(tmp_path / "n", ["3", "5"]), numbered, labeled=True)
    assert sorted(dom.labels.tolist()) == [3, 3, 5, 5]


def test_classification_folders_naming_another_class_are_refused(tmp_path):
    from edgeda.tasks.loading import load_for_task

    with pytest.raises(DataError, match="names the classes ant, bee, cow, the bundle ant, bee, cat"):
        load_for_task(_class_folders(tmp_path / "a", ["ant", "bee", "cow"]), _classifier_spec(["ant", "bee", "cat"]),
                      labeled=True)
    # ids written out on either side (an .npz without names) are compared as ids, as before
    dom = load_for_task(_class_folders(tmp_path / "b", ["x", "y"]), _classifier_spec(["0", "1"]), labeled=True)
    assert sorted(dom.labels.tolist()) == [0, 0, 1, 1]
