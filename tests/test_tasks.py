"""Task registry conformance, the task spec, and dense-specific export pieces (no training)."""
import numpy as np
import pytest
import torch

from edgeda.errors import EdgedaError
from edgeda.tasks.spec import TaskSpec
from edgeda.tasks import TASKS, task_of


def _spec(name):
    kind = task_of(name).label_key
    if not task_of(name).has_classes:
        return TaskSpec(task=name, image_size=(16, 24), depth_range=(0.1, 80.0))
    size = (16, 16) if kind == "labels" else (64, 64) if kind == "boxes" else (16, 24)
    return TaskSpec(3, ["a", "b", "c"], task=name, image_size=size)


def _example(name, g):
    """(a perfect output, its target, a worse output) for a task, by the kind of labels it learns from."""
    kind = task_of(name).label_key
    if kind == "labels":
        target = torch.randint(0, 3, (8,), generator=g)
        perfect = torch.nn.functional.one_hot(target, 3).float() * 10
        return perfect, target, perfect.flip(0)
    if kind == "mask":
        target = torch.randint(0, 3, (2, 16, 24), generator=g)
        perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
        return perfect, target, perfect.flip(0)
    if kind == "boxes":  # per-image records; the worse set gives each image the other one's boxes
        target = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [34.0, 10.0, 60.0, 24.0]]), "labels": torch.tensor([0, 2])},
                  {"boxes": torch.tensor([[10.0, 30.0, 50.0, 62.0]]), "labels": torch.tensor([1])}]
        perfect = [{**t, "scores": torch.full((len(t["labels"]),), 0.9)} for t in target]
        return perfect, target, perfect[::-1]
    target = torch.rand(2, 16, 24, generator=g) * 50 + 1
    target[:, :4] = 0  # invalid rows
    perfect = target[:, None].clone()
    perfect[perfect == 0] = 7.0
    return perfect, target, perfect.flip(0) * 1.7


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_scores_its_own_outputs(name):
    """Every registered task: loss is finite, a perfect prediction gets the best headline score."""
    task, spec = task_of(name), _spec(name)
    assert task.headline and task.record_keys and next(iter(task.record_keys.values())) == task.headline
    g = torch.Generator().manual_seed(0)
    perfect, target, worse_output = _example(name, g)
    if task.label_key == "boxes":  # a network that owns its loss: the loss of its raw outputs on these targets
        model = task.build_model(spec, task.default_backbone, {"width": 0.25})
        loss = task.model_loss(model, model(torch.zeros(2, 3, *spec.image_size)), target)
    else:
        loss = task.loss(perfect, target)
    assert torch.isfinite(loss)
    m = task.meter(spec)
    task.update(m, perfect, target)
    best = task.scores(m, spec)[task.headline]
    assert best == pytest.approx(1.0 if task.higher_is_better else 0.0, abs=1e-9)
    worse = task.meter(spec)
    task.update(worse, worse_output, target)
    score = task.scores(worse, spec)[task.headline]
    assert (score < best) if task.higher_is_better else (score > best)


def test_task_spec_checks_and_round_trips():
    s = TaskSpec(task="depth", image_size=(16, 24), depth_range=(0.5, 40))
    assert s.num_classes == 0 and s.output == "depth" and task_of(s).dense
    back = TaskSpec.from_dict(s.to_dict())
    assert back == s and back.image_size == (16, 24)
    with pytest.raises(ValueError):
        TaskSpec(task="segmentation", image_size=(8, 8))  # no classes
    with pytest.raises(ValueError):
        TaskSpec(2, ["a"], task="segmentation")  # names and count differ
    with pytest.raises(ValueError):
        TaskSpec(2, ["a", "b"], image_size=(0, 8))


def test_segmentation_parity_compares_pixels():
    t = task_of("segmentation")
    ref = np.zeros((2, 3, 4, 4), np.float32)
    ref[:, 1] = 1.0
    out = ref.copy()
    out[0, 2, 0, 0] = 5.0  # one pixel flips to class 2
    c = t.compare(ref, out)
    assert c["max_abs_diff"] == pytest.approx(5.0) and c["pixel_agreement"] == pytest.approx(1 - 1 / 32)


def test_tensorrt_profile_for_dynamic_height_and_width():
    from edgeda.export.trt import _spatial_profile

    lo, opt, hi = _spatial_profile((3, -1, -1), (128, 256), "image")
    assert opt == (3, 128, 256) and lo == (3, 64, 128) and hi == (3, 256, 512)
    assert _spatial_profile((3, -1, -1), (40, 40), "image")[0] == (3, 32, 32)
    with pytest.raises(EdgedaError):
        _spatial_profile((3, -1, -1), None, "image")


def test_confidence_epilogue_runs_per_pixel_on_a_dense_graph(tmp_path):
    pytest.importorskip("onnxruntime_extensions")
    import onnx
    import onnxruntime as ort

    from edgeda.export.onnx import export_onnx, signature_of
    from edgeda.export.plugins import apply_plugins
    from edgeda.export.plugins_ort import ort_session_options
    from edgeda.models import build

    spec = TaskSpec(4, list("abcd"), task="segmentation", image_size=(32, 32))
    model = build("dense_model", arch="lraspp", num_outputs=4, output="logits", channels=3, width=0.25).eval()
    path = export_onnx(model, signature_of(model, spec), tmp_path / "m.onnx")
    fused = apply_plugins(onnx.load(str(path)), confidence=True, instnorm=True)
    onnx.save(fused, str(tmp_path / "f.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "f.onnx"), ort_session_options(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 48)).astype(np.float32)  # another size than exported
    logits, cls, conf, ent = sess.run(None, {"image": x})
    assert logits.shape == (2, 4, 64, 48) and cls.shape == (2, 64, 48)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert (cls == logits.argmax(1)).all()
    np.testing.assert_allclose(conf, p.max(1), atol=1e-5)
    np.testing.assert_allclose(ent, -(p * np.log(np.clip(p, 1e-12, None))).sum(1), atol=1e-4)


def test_methods_refuse_tasks_they_do_not_adapt():
    from edgeda.methods import METHODS

    spec = _spec("segmentation")
    with pytest.raises(EdgedaError, match="source_only"):
        METHODS.get("coral")(spec, backbone="lraspp")
