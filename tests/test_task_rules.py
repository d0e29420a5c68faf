"""One rule, one place: outside ``edgeda/tasks`` code asks the task object what it decides (its named
attributes and methods: ``eval_batch_size``, ``spatial_output``, ``unflip``, ...) instead of
branching on the generic ``Task.dense`` flag."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The attributes named ``dense`` outside edgeda/tasks that are not a task's flag, (file, expression)
# each for a reason; a new one fails the test, and so does one listed here that is gone (take it off).
NOT_TASK_DENSE = {
    ("edgeda/data/builtin.py", "digitscenes.dense"): "a built-in domain function's marker: it loads dense data",
    ("edgeda/data/builtin.py", "handwritten_scenes.dense"): "a built-in domain function's marker",
    ("edgeda/data/builtin.py", "synscenes.dense"): "a built-in domain function's marker",
    ("edgeda/data/detection_builtin.py", "fn.dense"): "a built-in domain function's marker (box data: not dense)",
    ("edgeda/models/segformer.py", "self.dense"): "SegFormer's attention output Linear layer (checkpoint names)",
    ("edgeda/training/validators/majority.py", "ctx.dense"): "the validators' context: rows are sampled pixels",
    ("edgeda/adapt/safety.py", "self.dense"): "prediction statistics that saw per-pixel logits",
}


def dense_attributes(root: Path = REPO) -> set[tuple[str, str]]:
    """(file, expression) of every attribute named ``dense`` read or written in edgeda (outside
    edgeda/tasks, where the task classes define and read their flag) and benchmarks."""
    found = set()
    for f in sorted([*(root / "edgeda").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]):
        rel = f.relative_to(root).as_posix()
        if rel.startswith("edgeda/tasks/"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "dense":
                found.add((rel, ast.unparse(node)))
    return found


def test_no_task_dense_checks_outside_the_tasks():
    found = dense_attributes()
    assert found - set(NOT_TASK_DENSE) == set()
    assert set(NOT_TASK_DENSE) <= found


def test_the_dense_scan_finds_a_planted_task_check(tmp_path):
    for rel, text in (("edgeda/training/x.py", "bs = 16 if task_of(spec).dense else 256\n"),
                      ("edgeda/tasks/y.py", "dense = self.dense\n"), ("benchmarks/z.py", "if tk.dense: pass\n")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert dense_attributes(tmp_path) == {("edgeda/training/x.py", "task_of(spec).dense"),
                                          ("benchmarks/z.py", "tk.dense")}


def test_the_built_in_tasks_keep_their_defaults():
    from edgeda.tasks import task_of

    for name in ("classification", "segmentation", "depth", "detection"):
        t, per_image = task_of(name), name == "classification"
        sizes = (t.eval_batch_size, t.consistency_images, t.adapt_batch_size, t.monitor_images, t.calibration_images,
                 t.parity_images)
        assert sizes == ((256, 256, 64, 512, 512, None) if per_image else (16, 32, 8, 64, 128, 64)), name
        assert {not t.spatial_output, not t.mirror_invariant, not t.draws_samples, not t.prediction_files,
                not t.auto_from_init, t.per_image_rows, t.display_per_class} == {per_image}, name


def test_each_task_asks_the_data_for_its_kind_of_labels(tmp_path):
    """The data layer checks label kinds, never task names: each task names a kind the domains know,
    and a domain asked for another kind's labels says what it holds and what was asked."""
    import numpy as np
    import pytest

    from edgeda.data import load_domain
    from edgeda.data.domain import LABEL_KINDS, Domain
    from edgeda.errors import DataError
    from edgeda.tasks import TASKS, task_of

    assert {task_of(t).label_kind for t in TASKS} == set(LABEL_KINDS)
    per_image = Domain("digits", np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
    per_image.require_usable(labels="classes", num_classes=2)
    with pytest.raises(DataError, match="has one label per image, not segmentation masks"):
        per_image.require_usable(labels="masks")
    np.savez(tmp_path / "seg.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros((2, 8, 8), np.uint8))
    dense = load_domain(str(tmp_path / "seg.npz"), labeled=True)
    dense.require_usable(labels="masks", num_classes=2)
    with pytest.raises(DataError, match="holds per-pixel data, not box annotations"):
        dense.require_usable(labels="boxes")
    with pytest.raises(DataError, match="has no depth maps"):
        dense.require_usable(labels="depth")
    with pytest.raises(ValueError, match="unknown kind of labels 'segmentation'"):
        dense.require_usable(labels="segmentation")
