"""The task interface and its registry."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..data.align import names_classes
from ..data.dense import images_as_dense
from ..data.domain import Domain
from ..errors import DataError
from ..registry import Registry
from .spec import TaskSpec
from ..utils import to_device

TASKS: Registry = Registry("task")
_INSTANCES: dict = {}


def output_difference(ref: np.ndarray, out: np.ndarray) -> dict:
    """Export parity of two output arrays: ``n`` and the largest absolute difference (in float64)."""
    return {"n": int(len(ref)), "max_abs_diff": float(np.abs(ref.astype(np.float64) - out).max()) if len(ref) else 0.0}


def argmax_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """The share of rows (images, or pixels of dense maps) whose arg-max over axis 1 is the same."""
    return float((ref.argmax(1) == out.argmax(1)).mean())


def task_of(spec: TaskSpec | str) -> "Task":
    """The task object of a spec (or of a task name); tasks hold no state, one instance each."""
    name = spec if isinstance(spec, str) else spec.task
    if name not in _INSTANCES:
        _INSTANCES[name] = TASKS.get(name)()
    return _INSTANCES[name]


class Task:
    """What differs between tasks. Subclasses register with ``@TASKS.register(name)``.

    ``headline`` is the key of the score a person reads first (``accuracy``, ``miou``,
    ``abs_rel``); ``record_keys`` maps the names of the scores an evaluation record carries
    (``source_val_<name>``, ``target_test_<name>`` in ``metrics.jsonl``) to score keys, the
    headline first. ``deployable`` is the name of the task network in a bundle.
    """

    name: ClassVar[str] = ""
    deployable: ClassVar[str] = "model"
    headline: ClassVar[str] = ""
    record_keys: ClassVar[dict[str, str]] = {}
    higher_is_better: ClassVar[bool] = True
    dense: ClassVar[bool] = True  # data read per sample from a dense domain; False: classification, one label
    # per image, held in memory (code outside edgeda.tasks reads the named decisions below, not this flag)
    default_adapt_method: ClassVar[str | None] = None  # ``edgeda adapt`` without --method (None: not adapted)
    default_backbone: ClassVar[str] = "lraspp"  # the edge model Jetson users deploy; light enough for a CPU
    default_size: ClassVar[tuple[int, int]] = (128, 128)
    losses: ClassVar[tuple[str, ...]] = ()
    label_key: ClassVar[str] = "mask"  # what a dense sample's labels are called ("mask" or "depth")
    labels_flag: ClassVar[str | None] = "has_masks"  # the flag of a domain that carries this task's labels
    label_kind: ClassVar[str] = "masks"  # the labels it trains and scores on (edgeda.data.domain.LABEL_KINDS)
    output: ClassVar[str] = "logits"  # what the task network outputs (TaskSpec.output)
    has_classes: ClassVar[bool] = True  # a spec needs at least one class (depth: none)
    # labelled data naming other classes than the model (a real test set's own list) is read with the model's,
    # by name (edgeda.data.align); False: the class lists must be equal (classification: class folders,
    # where a differing name is more often a typo than another dataset)
    aligns_classes: ClassVar[bool] = True
    class_logits: ClassVar[bool] = True  # outputs are class logits per image or per pixel (what the
    # label-free validators' rows and the augmentation-consistency check read)
    inferred: ClassVar[bool] = False  # chosen from what a dense source carries when --task is not given
    # evaluation settings of a model's own post-processing (COCO evaluation keeps low-score boxes)
    postprocess_options: ClassVar[dict] = {"score_thresh": 0.05, "max_det": 100}
    per_class_key: ClassVar[str | None] = None  # the scores' per-class table a bundle's report keeps apart
    # what the trainer, the evaluation, export, adaptation and the methods decide per task (the values
    # here are the dense tasks'; classification overrides them)
    spatial_output: ClassVar[bool] = True  # outputs and labels lie over the image (maps, boxes), not one per image
    mirror_invariant: ClassVar[bool] = True  # a mirrored image's labels are its labels mirrored (not so for a
    # mirrored digit or sign: another class, or none)
    per_image_rows: ClassVar[bool] = False  # the validators' rows are one per image, with the model's features
    # (sampled from each image's output otherwise)
    display_per_class: ClassVar[bool] = False  # sample grids show up to 8 source images per class (else the first 8)
    draws_samples: ClassVar[bool] = True  # :meth:`sample_panels` draws image | truth | prediction rows
    prediction_files: ClassVar[bool] = True  # ``edgeda predict`` writes files per image to a predictions folder,
    # at most 8 images per batch
    auto_from_init: ClassVar[bool] = True  # ``--method auto`` trains its candidates with ``--init`` from a
    # source-only bundle (else from scratch, plus source-free adaptation of the source-only model)
    auto_methods: ClassVar[tuple[str, ...] | None] = None  # its training candidates (None: edgeda.auto's lists)
    auto_adapt: ClassVar[tuple[str, ...] | None] = None  # its source-free candidates (None: edgeda.auto's lists)
    auto_selector: ClassVar[str | None] = None  # the validator that ranks them (None: edgeda.auto's default)
    # the transfer warning's rule (edgeda.trust.WARNING_RULES), chosen by benchmarks/warning.py on the task's shift suite
    warning_rule: ClassVar[str] = "agreement_or_confidence"
    eval_batch_size: ClassVar[int] = 16  # images per forward pass when evaluating or labelling a domain
    consistency_images: ClassVar[int] = 32  # target images the augmentation-consistency check draws
    adapt_batch_size: ClassVar[int] = 8  # ``edgeda adapt``'s default ``--batch``
    monitor_images: ClassVar[int] = 64  # ``edgeda adapt``'s default ``--monitor-n``
    calibration_images: ClassVar[int] = 128  # int8 export's default number of calibration images
    parity_images: ClassVar[int | None] = 64  # the most images export's parity check compares (None: no cap)

    # -- data ----------------------------------------------------------------------------------
    def labeled_by(self, domain) -> bool:
        """Whether ``domain`` carries this task's labels (for ``--task`` inference and checks): its
        :attr:`labels_flag` (``has_masks``, ``has_depth``, ``has_boxes``) is set."""
        return bool(self.labels_flag and getattr(domain, self.labels_flag, False))

    def reads(self, domain) -> bool:
        """Whether ``domain`` is this task's kind of data: read per sample (dense tasks) or per-image
        data held in memory (classification)."""
        return isinstance(domain, Domain) != self.dense

    def image_domain(self, domain):
        """Unlabeled ``domain`` as this task reads it: a dense domain of its images where ``domain``
        holds per-image data and the task is dense, else ``domain`` itself."""
        return images_as_dense(domain) if self.dense and isinstance(domain, Domain) else domain

    def num_classes_of(self, domain) -> int | None:
        """The number of classes of ``domain``: the classes it names, else None (classification: else its
        largest label + 1)."""
        return domain.num_classes or None

    def check_data(self, domain, spec: TaskSpec, *, labeled: bool, what: str, model: str = "bundle") -> None:
        """One clear :class:`~edgeda.errors.DataError` unless ``domain`` is this task's kind of data
        and usable: images, and where ``labeled`` this task's labels within ``spec``'s classes (the
        same class list where both name one; class names the data made up from its label ids are
        not names). ``what`` names the data in the message (a spec or
        ``--labels SPEC``), ``model`` what it is checked for (``bundle``, ``run``). Dense tasks here;
        classification overrides it."""
        if isinstance(domain, Domain):
            raise DataError(f"{what} has one label per image; this {spec.task} {model} needs per-pixel labels")
        domain.require_usable(labels=self.label_kind if labeled else None, num_classes=spec.num_classes or None)
        if labeled and names_classes(domain) and spec.classes and list(domain.classes) != list(spec.classes):
            raise DataError(f"{what} names the classes {', '.join(domain.classes)}, the {model} "
                            f"{', '.join(spec.classes)}")

    def fit_report(self, model, domain, spec: TaskSpec) -> tuple[dict, list[str]]:
        """(a record for the run's manifest, warning lines) on whether ``model`` can learn the labels of
        the source ``domain`` at ``spec``'s input size; nothing to say by default (detection checks its
        target assignment against the source's boxes: :mod:`edgeda.tasks.detection_fit`)."""
        return {}, []

    def stream(self, domain, spec: TaskSpec, batch_size: int, device, seed: int, *, labeled: bool, cfg,
               weights=None, rank: int = 0, world_size: int = 1):
        """The trainer's infinite, resumable batch stream over ``domain`` (``next() -> Batch``):
        samples decoded and augmented by DataLoader workers, read the way the kind of domain needs
        (:func:`edgeda.training.readers.reader_of`: stacked label maps, or one box record per image)."""
        from ..training.readers import reader_of

        return reader_of(domain).stream(domain, spec, batch_size, device, seed, labeled=labeled, workers=cfg.workers,
                                        hflip=cfg.augment_hflip, weights=weights, rank=rank, world_size=world_size)

    def eval_batches(self, domain, spec: TaskSpec, device, batch_size: int, *, labels: bool, workers: int | None = None,
                     not_decoded: list | None = None, native: bool = False):
        """(normalised images on ``device``, labels on CPU or None, uint8 NHWC images) over
        ``domain`` in order, un-augmented (:func:`edgeda.training.model_eval.eval_batches`); the indices
        of samples that fail only when decoded go to ``not_decoded`` where the reader reports them;
        ``native``: per-pixel labels as a list at their stored sizes (readers of their own: as they read)."""
        from ..training.model_eval import dense_eval_batches
        from ..training.readers import reader_of

        read = reader_of(domain).eval_batches
        if read is not None:
            return read(domain, spec, device, batch_size, labels=labels, workers=workers)
        return dense_eval_batches(domain, spec, device, batch_size, labels=labels, workers=workers, key=self.label_key,
                                  not_decoded=not_decoded, native=native and self.spatial_output)

    def labels_to(self, labels, device):
        """A batch's labels moved to ``device`` (a tensor here; per-image records for some tasks)."""
        return to_device(labels, device)

    # -- model outputs -------------------------------------------------------------------------
    def model_loss(self, model, output, target, kind: str | None = None) -> torch.Tensor:
        """The supervised loss of ``model``'s ``output`` against ``target``: the model's own ``loss``
        (``model.loss(output, target)["loss"]``) where it has one (a detector: the matching of boxes to
        anchors or locations lives in the network), else the task's :meth:`loss`."""
        own = getattr(model, "loss", None)
        if callable(own):
            return own(output, target)["loss"]
        return self.loss(output, target, kind)

    def infer(self, model, x: torch.Tensor):
        """What evaluation, selection and drawing read of ``model`` on ``x`` (eval mode, no gradient):
        the float outputs, or the model's ``postprocess`` of them where it has one (a detector's
        decoded, non-maximum-suppressed boxes, with :attr:`postprocess_options`)."""
        out = model(x)
        post = getattr(model, "postprocess", None)
        if callable(post):  # decoding and non-maximum suppression belong to the network that made the output
            return post(out, **self.postprocess_options)
        return out.float()

    def sample_panels(self, spec: TaskSpec, model, x, labels, raw, path, title: str = ""):
        """A PNG of image | truth | prediction (| error) rows for the first images of a batch."""
        from .draw import save_panels

        pred = self.infer(model, x)
        if isinstance(pred, torch.Tensor):
            pred = self.decide(pred).cpu().numpy()
        truth = labels.numpy() if isinstance(labels, torch.Tensor) else labels
        return save_panels(spec, raw, to_device(pred, "cpu"), truth, path, title)

    def draw_row(self, spec: TaskSpec, image: np.ndarray, pred, truth=None) -> list[np.ndarray]:
        """The panels of one sample: image | truth | prediction (| error), (H, W, 3) uint8 each
        (:mod:`edgeda.tasks.draw`: masks, depth, boxes)."""
        raise NotImplementedError

    # -- training ------------------------------------------------------------------------------
    def make_spec(self, domain, *, image_size, channels: int, mean=None, std=None) -> TaskSpec:
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor, kind: str | None = None) -> torch.Tensor:
        """The supervised loss of the source-only baseline (and of every method's task term)."""
        raise NotImplementedError

    def build_model(self, spec: TaskSpec, backbone: str, backbone_kwargs: dict | None = None):
        raise NotImplementedError

    def options_for_weights(self, backbone: str, backbone_kwargs: dict | None, path) -> dict:
        """``backbone_kwargs`` completed with the build settings the pre-trained file at ``path``
        (``--backbone-weights``) implies; given settings stay. Default: unchanged."""
        return dict(backbone_kwargs or {})

    # -- evaluation ----------------------------------------------------------------------------
    def meter(self, spec: TaskSpec):
        raise NotImplementedError

    def update(self, meter, output: torch.Tensor, target: torch.Tensor) -> None:
        meter.update(self.decide(output), target)

    def unflip(self, output: torch.Tensor) -> torch.Tensor:
        """The output for a horizontally mirrored image in the image's own frame (one per image: unchanged)."""
        return output.flip(-1) if self.spatial_output else output

    def at_size(self, output: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """A dense output (N, C, H, W) or (N, H, W) at another size ``hw``: bilinear, undoing the stretch that
        brought the image to the model's input (logits before the argmax, as dense benchmarks upsample)."""
        if tuple(output.shape[-2:]) == tuple(hw):
            return output
        import torch.nn.functional as F

        flat = output.dim() == 3
        out = F.interpolate(output[:, None] if flat else output, size=tuple(hw), mode="bilinear", align_corners=False)
        return out[:, 0] if flat else out

    def decide(self, output: torch.Tensor) -> torch.Tensor:
        """The prediction compared with labels: class ids (argmax over dim 1) or depth."""
        return output.argmax(1)

    def scores(self, meter, spec: TaskSpec) -> dict:
        raise NotImplementedError

    def selection_score(self, scores: dict) -> float:
        """The headline score oriented so that higher is better (for ``--select source_val``)."""
        v = float(scores[self.headline])
        return v if self.higher_is_better else -v

    def format_scores(self, scores: dict) -> str:
        raise NotImplementedError

    def interval(self, scores: dict) -> dict | None:
        """A 95% bootstrap interval of the headline score on a small labeled set, where the task has
        one (classification accuracy, from the confusion matrix), else None."""
        return None

    def panel_headers(self, with_truth: bool) -> list[str]:
        """The column headers of this task's sample panels (one per panel of :meth:`draw_row`)."""
        return ["image", "truth", "prediction", "error"] if with_truth else ["image", "prediction"]

    def eval_lines(self, scores: dict) -> list[str]:
        """What ``edgeda eval`` prints: the headline line, then one line per per-class table."""
        lines = [self.format_scores(scores)]
        for key, table in scores.items():
            if key.startswith("per_class") and isinstance(table, dict):
                cells = "  ".join(f"{k}:{'-' if v is None else f'{v:.3f}'}" for k, v in table.items())
                lines.append(f"{key.replace('_', ' ')}: {cells}")
        return lines

    def validator_rows(self, output: torch.Tensor, generator: torch.Generator, per_image: int = 64) -> torch.Tensor | None:
        """Rows of class logits (M, K) that label-free validators score: one per image for
        classification, a fixed random sample of pixels per image for segmentation, none for depth."""
        return None

    def prediction_row(self, spec: TaskSpec, output: np.ndarray, image: np.ndarray, stem) -> dict:
        """What ``edgeda predict`` records for one image from the model's ``output`` for it; dense
        tasks also write their PNGs as ``<stem>.<kind>.png`` (``stem``: a path without suffix)."""
        raise NotImplementedError

    # -- export --------------------------------------------------------------------------------
    def export_scores(self, scores: dict) -> dict:
        """What an export's per-precision record keeps of the scores of its model on labeled images:
        the flat scores as ``target_scores`` and the headline as ``target_<headline>``."""
        keep = {k: v for k, v in scores.items() if not isinstance(v, (dict, list))}
        return {"target_scores": keep, "target_" + self.headline: scores[self.headline]}

    def compare(self, ref: np.ndarray, out: np.ndarray) -> dict:
        """Export parity: max abs difference, plus top-1 / pixel agreement where outputs are logits."""
        return {**output_difference(ref, out), "max_abs_ref": float(np.abs(ref).max()) if len(ref) else 0.0}

    def ort_scores(self, outputs: np.ndarray, labels: np.ndarray, spec: TaskSpec) -> dict:
        """Scores of exported-model outputs (N, ...) against labels, for the per-precision report."""
        m = self.meter(spec)
        self.update(m, torch.from_numpy(np.asarray(outputs, np.float32)), torch.from_numpy(np.asarray(labels)))
        return self.scores(m, spec)

