"""Monocular depth: metric depth in metres per pixel, 0 = invalid truth."""
from __future__ import annotations

import torch

from ..errors import EdgedaError
from ..models import build
from .base import TASKS, Task
from .metrics import DepthMeter
from .spec import TaskSpec

DEFAULT_RANGE = (0.1, 80.0)


def silog_loss(pred: torch.Tensor, truth: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Scale-invariant log loss (Eigen, Puhrsch and Fergus, NIPS 2014, eq. 4), per image on valid
    pixels (truth > 0), averaged over the images that have any: with d = log p - log g over n
    pixels, L = (1/n) sum d^2 - (lam / n^2) (sum d)^2. lam = 0.5 as in their training (lam = 1
    would ignore global scale entirely; lam = 0 is the plain log MSE). Shapes: (N, H, W)."""
    pred, truth = pred.float().flatten(1), truth.float().flatten(1)
    valid = truth > 0
    d = torch.where(valid, pred.clamp_min(1e-6).log() - truth.clamp_min(1e-6).log(), torch.zeros_like(pred))
    n = valid.sum(1)
    has = n > 0
    if not bool(has.any()):
        return pred.sum() * 0.0
    n = n[has].float()
    d = d[has]
    return (d.pow(2).sum(1) / n - lam * d.sum(1).pow(2) / n.pow(2)).mean()


def masked_l1(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean |p - g| in metres over valid pixels (truth > 0) of the batch."""
    valid = truth > 0
    if not bool(valid.any()):
        return pred.sum() * 0.0
    return (pred.float() - truth.float()).abs()[valid].mean()


@TASKS.register("depth")
class Depth(Task):
    """Loss: scale-invariant log loss (``silog``, default) or L1 in metres (``l1``), on valid pixels.
    Metric: abs rel, sq rel, RMSE, RMSE log, delta < 1.25^k (Eigen et al. 2014) on valid pixels."""

    name = "depth"
    headline = "abs_rel"
    record_keys = {"abs_rel": "abs_rel", "rmse": "rmse", "delta1": "delta1"}
    higher_is_better = False
    losses = ("silog", "l1")
    label_key = "depth"
    labels_flag = "has_depth"
    label_kind = "depth"
    output = "depth"
    has_classes = False
    class_logits = False
    inferred = True

    def make_spec(self, domain, *, image_size, channels, mean=None, std=None, depth_range=DEFAULT_RANGE) -> TaskSpec:
        return TaskSpec(num_classes=0, classes=[], task=self.name, image_size=image_size, channels=channels,
                        mean=mean, std=std, depth_range=tuple(depth_range))

    def loss(self, output, target, kind=None):
        kind = kind or "silog"
        pred = output[:, 0] if output.dim() == 4 else output
        if kind == "silog":
            return silog_loss(pred, target)
        if kind == "l1":
            return masked_l1(pred, target)
        raise EdgedaError(f"unknown depth loss {kind!r}; valid: {', '.join(self.losses)}")

    def build_model(self, spec, backbone, backbone_kwargs=None):
        lo, hi = spec.depth_range or DEFAULT_RANGE
        kw = {"min_depth": lo, "max_depth": hi, **dict(backbone_kwargs or {})}
        return build("dense_model", arch=backbone, num_outputs=1, output="depth", channels=spec.channels, **kw)

    def meter(self, spec):
        return DepthMeter(max_depth=(spec.depth_range or DEFAULT_RANGE)[1])

    def decide(self, output):
        return output[:, 0] if output.dim() == 4 else output

    def scores(self, meter, spec):
        return meter.compute()

    def format_scores(self, scores):
        return f"abs rel {scores['abs_rel']:.3f}, RMSE {scores['rmse']:.2f} m, delta<1.25 {scores['delta1']:.1%}"

    def eval_lines(self, scores):
        m = scores
        return [f"abs rel {m['abs_rel']:.3f}, sq rel {m['sq_rel']:.3f}, RMSE {m['rmse']:.2f} m, "
                f"RMSE log {m['rmse_log']:.3f}, delta<1.25 {m['delta1']:.1%}, <1.25^2 {m['delta2']:.1%}, "
                f"<1.25^3 {m['delta3']:.1%} ({m['n_images']} images, {m['n_pixels']} valid pixels)"]

    def compare(self, ref, out):
        res = super().compare(ref, out)
        if len(ref):
            rel = abs(ref.astype("float64") - out) / abs(ref.astype("float64")).clip(1e-6)
            res["max_rel_diff"] = float(rel.max())
        return res

    def draw_row(self, spec, image, pred, truth=None):
        from .draw import depth_row

        return depth_row(spec, image, pred, truth)

    def prediction_row(self, spec, output, image, stem):
        import numpy as np
        from PIL import Image

        from .draw import colourise_depth

        h, w = image.shape[:2]
        d = self.at_size(torch.from_numpy(np.asarray(output, np.float32)).reshape(1, 1, *output.shape[-2:]),
                         (h, w))[0, 0].numpy()
        stem.parent.mkdir(parents=True, exist_ok=True)
        files = {"depth_png": f"{stem}.depth.png", "depth_color_png": f"{stem}.depth_color.png"}
        raw = np.rint(d * 1000.0)
        mm = np.clip(raw, 0, 65535).astype(np.uint16)
        Image.fromarray(mm).save(files["depth_png"])  # 16-bit, millimetres (the format edgeda reads back)
        Image.fromarray(colourise_depth(d)).save(files["depth_color_png"])
        return {"depth_min_m": round(float(d.min()), 4), "depth_median_m": round(float(np.median(d)), 4),
                "depth_max_m": round(float(d.max()), 4),
                # pixels beyond 65.535 m, the most a 16-bit millimetre PNG holds (the colour PNG and
                # the min/median/max columns are not clipped)
                "depth_png_clipped_px": int((raw > 65535).sum()), **files}
