"""DACS: self-training with a mean teacher and cross-domain ClassMix, with DAFormer's and MIC's additions."""
from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F

from ..errors import EdgedaError
from ..models.mixing import (class_mix_masks, label_at_feature_scale, masked_feature_distance, mix, patch_keep_mask,
                             strong_augment)
from ..models.mean_teacher import MeanTeacher, pseudo_labels
from ..data.dense import IGNORE_INDEX
from ..data.sampling import rare_class_weights
from .base import Batch, Method
from .registry import METHODS

# DAFormer's feature-distance classes on Cityscapes: traffic light, traffic sign and the eight object classes
THING_NAMES = {"traffic light", "traffic sign", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}
BACKGROUND_NAMES = {"background", "void", "unlabeled", "unlabelled", "other"}


def thing_classes(classes: list[str] | None, num_classes: int) -> list[int]:
    """Class ids of "things": the Cityscapes object names where the class list has them, else every
    class not named background/void/unlabeled/other (e.g. the ten digits of digit scenes)."""
    names = [str(c).strip().lower() for c in (classes or [str(i) for i in range(num_classes)])]
    things = [i for i, n in enumerate(names) if n in THING_NAMES]
    return things or [i for i, n in enumerate(names) if n not in BACKGROUND_NAMES]


def warmup_factor(progress: float, share: float, start: float = 1e-6) -> float:
    """Linear learning-rate warm-up from ``start`` to 1 over the first ``share`` of training (1 after)."""
    if share <= 0 or progress >= share:
        return 1.0
    return start + (1.0 - start) * progress / share


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mean_{n,h,w} weight * CE(logits, labels), ignored (255) pixels counting 0 (DACS's pixel-weighted loss)."""
    ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction="none")
    return (ce * weight).mean()


@METHODS.register("dacs")
class DACS(Method):
    """DACS (Tranheden, Olsson, Pinto & Svensson, "DACS: Domain Adaptation via Cross-domain Mixed
    Sampling", WACV 2021) with DAFormer's robustness pieces (Hoyer, Dai & Van Gool, "DAFormer",
    CVPR 2022) and MIC's masked-image consistency (Hoyer et al., "MIC", CVPR 2023) as options.

    An EMA teacher T (:class:`~edgeda.models.mean_teacher.MeanTeacher`, alpha 0.99 with DACS's
    warm-up 1 - 1/(t+1)) labels each target image: p_t = argmax T(x_t), w_t = share of its pixels
    with max softmax > tau. ClassMix pastes ceil(n/2) of the n classes of a source label y_s (mask M)
    onto the paired target image; with A the strong augmentation (colour jitter, Gaussian blur):

        x_m = A(M x_s + (1 - M) x_t),   y_m = M y_s + (1 - M) p_t,   omega = M + (1 - M) w_t
        L = CE(S(x_s), y_s) + mean_px omega CE(S(x_m), y_m)
            [+ lambda_fd mean_{thing px} ||F_S(x_s) - F_0(x_s)||_2]  [+ lambda_mic mean_px w_t CE(S(P . A(x_t)), p_t)]

    ignored pixels (255) of y_s stay ignored where pasted. After each student step the teacher takes
    theta_T <- a theta_T + (1 - a) theta_S.

    Defaults (the papers'): ``alpha`` 0.99, ``threshold`` tau 0.968; colour jitter (brightness,
    contrast, saturation, hue) of strength 0.2 with probability 0.8 and Gaussian blur with
    probability 0.5, sigma in [0.15, 1.15], kernel ~10 % of the side (DACS/DAFormer). DAFormer:

    * ``rare_class_sampling`` (on): source images are drawn by class, P(c) = softmax((1 - f_c) / T),
      T = ``rcs_temperature`` 0.01, f_c the class's share of source pixels; an image *contains* c when
      more than ``rcs_min_share`` 0.0015 of its pixels are c (DAFormer's 3000 px of a GTA label map).
      The trainer counts the source classes once before training (every source label is read once)
      and the stream draws with the weights (:mod:`edgeda.data.sampling`), deterministically per
      seed and resumably; DAFormer's re-crop until the class is in the crop is not done.
    * ``warmup`` (0.0375 = DAFormer's 1500 of 40k iterations): every learning rate of the student's
      optimizer is scaled linearly from 1e-6 to 1 over that share of training, on top of the
      trainer's schedule. ``encoder_lr`` (1; with ``--backbone-weights`` the trainer's pre-trained
      default, as for source-only) scales the encoder's rate (DAFormer's head learns 10x faster).
    * ``feature_distance`` (on, but only where it applies): with ``--backbone-weights`` the encoder's
      final map on source images is pulled towards that of a frozen copy of the pre-trained encoder
      (lambda_fd 0.005), on feature pixels whose image block is >= 75 % one thing class
      (:func:`thing_classes`: the Cityscapes object names, else every non-background class). With no
      pre-trained encoder (from scratch, or ``--init`` alone) there is nothing to keep and the term
      is off. The reference is the pre-trained encoder even when ``--init`` then loads other weights.

    MIC (``mic``, off): the student also sees the strongly augmented target with patches of
    ``mask_patch`` px masked out (0 in normalised space) with probability ``mask_ratio`` 0.7, and is
    trained towards the teacher's pseudo-labels of the unmasked image, weighted by w_t
    (``lambda_mic`` 1). ``mask_patch`` 0 scales MIC's 64 px at 512-px crops: 64 * min(H, W) / 512.

    Choices: the teacher predicts in eval mode (its averaged BatchNorm statistics; DAFormer's code
    runs its teacher in training mode with dropout and drop-path off); w_t is per target image (DACS and DAFormer use one
    share for the whole batch, the mean of these); the source, mixed and masked batches are separate
    forward passes (BatchNorm sees each alone) summed into one update; source image i is mixed onto
    target image i. What ships is the student, as in the DACS, DAFormer and MIC code, which evaluate
    the student (``--ema`` averages it further if wanted); the teacher (an EMA with a ~100-step
    horizon) is kept in checkpoints with its update count and the mixing generator, so ``--resume``
    continues exactly. The teacher starts as a copy of the student at the first step, so it begins
    from ``--init`` or the pre-trained weights, whatever the order they were loaded in.

    CPU budget: nothing is scaled except what the image size scales (the blur kernel, MIC's patch:
    8 px at 64x128 and 64x64). A step is two forward/backward passes of the segmenter (source, mixed)
    and a teacher forward: measured side by side (lraspp width 1.0, 64x128, batch 8, one thread, a
    shared 2-core CPU) 2.0-2.5x a source-only step, 3-4x with ``mic``. The benchmark rows run it at their own
    settings (syn_seg: lraspp width 1.0, 64x128, batch 8, 1200 iterations from the source-only
    bundle with ``--init``; digits_seg: deeplab resnet18 width 0.25, 64x64, batch 16, Adam 1e-3,
    3000 iterations); it also trains from scratch and with any dense backbone.
    """

    summary = "mean-teacher self-training on cross-domain ClassMix images (DACS), with DAFormer's rare-class sampling, warm-up and feature distance, and MIC masking"
    tasks = ("segmentation",)
    defaults = {
        "alpha": 0.99, "threshold": 0.968,
        "jitter_p": 0.8, "jitter_strength": 0.2, "blur_p": 0.5,
        "rare_class_sampling": True, "rcs_temperature": 0.01, "rcs_min_share": 0.0015,
        "warmup": 0.0375, "encoder_lr": 1.0,
        "feature_distance": True, "lambda_fd": 0.005, "fd_min_ratio": 0.75,
        "mic": False, "mask_ratio": 0.7, "mask_patch": 0, "lambda_mic": 1.0,
    }
    option_help = {
        "alpha": "EMA rate of the teacher (warmed up as min(alpha, 1 - 1/(t+1)))",
        "threshold": "teacher confidence above which a target pixel counts towards its image's pseudo-label weight",
        "jitter_p": "probability of colour jitter on a mixed (and MIC-masked) image",
        "jitter_strength": "colour jitter strength s: brightness/contrast/saturation factors in [1-s, 1+s], hue shift in [-s, s]",
        "blur_p": "probability of Gaussian blur on a mixed (and MIC-masked) image",
        "rare_class_sampling": "draw source images by class, rare classes more often (DAFormer)",
        "rcs_temperature": "rare-class sampling temperature T in softmax((1 - f_c) / T)",
        "rcs_min_share": "share of an image's labelled pixels a class needs for the image to count as containing it",
        "warmup": "share of training over which the student's learning rate rises linearly (0: none)",
        "encoder_lr": "learning-rate multiplier of the encoder (DAFormer: 0.1, the head learning 10x faster; "
                      "with --backbone-weights the trainer's pre-trained default applies unless given)",
        "feature_distance": "with --backbone-weights: keep the encoder's thing-class features near the pre-trained ones",
        "lambda_fd": "weight of the feature-distance term",
        "fd_min_ratio": "share of a feature pixel's image block one thing class must cover for the pixel to count",
        "mic": "masked-image consistency on the target (MIC)",
        "mask_ratio": "share of target patches masked out (MIC)",
        "mask_patch": "MIC patch side in pixels (0: 64 px scaled from 512-px crops to this image size)",
        "lambda_mic": "weight of the masked-image consistency loss",
    }

    def build(self) -> None:
        o = self.opts
        for key in ("threshold", "jitter_p", "blur_p", "mask_ratio"):
            if not 0.0 <= o[key] <= 1.0:
                raise EdgedaError(f"method 'dacs' option {key}={o[key]} must lie in [0, 1]")
        if not 0.0 <= o.warmup < 1.0:
            raise EdgedaError(f"method 'dacs' option warmup={o.warmup} must lie in [0, 1)")
        self.nets["model"] = self.make_model()
        self.optims["main"] = self.make_optimizer(self.param_groups(self.model, o.encoder_lr))
        self.mean_teacher = MeanTeacher(self.model, o.alpha)
        self.nets["teacher"] = self.mean_teacher.teacher  # moved, saved and restored with the student
        self.pretrained_encoder: torch.nn.Module | None = None
        self._things = torch.tensor(thing_classes(self.task.classes, self.task.num_classes), dtype=torch.long)
        # mixing, augmentation and masking draw from their own generator, seeded from the run's seed
        self._generator = torch.Generator().manual_seed((torch.initial_seed() * 7919 + 17) % 2**63)

    # -- hooks the trainer calls ----------------------------------------------------------------
    def source_sampling(self):
        if not self.opts.rare_class_sampling:
            return None
        return functools.partial(rare_class_weights, temperature=self.opts.rcs_temperature,
                                 min_share=self.opts.rcs_min_share)

    def backbone_weights_loaded(self) -> None:
        if self.opts.feature_distance and self.opts.lambda_fd > 0:
            if not hasattr(self.model, "features_and_logits"):
                raise EdgedaError("dacs feature_distance needs a dense model with features_and_logits; "
                                  "pass --option feature_distance=false")
            encoder = self.model.encoder
            self.pretrained_encoder = copy.deepcopy(encoder).requires_grad_(False).eval()

    # -- the update -------------------------------------------------------------------------------
    def mask_patch(self) -> int:
        given = self.opts.mask_patch
        return given if given > 0 else max(1, round(64 * min(self.task.image_size) / 512))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        o = self.opts
        return strong_augment(x, self.task.mean, self.task.std, self._generator, jitter_p=o.jitter_p,
                              jitter_strength=o.jitter_strength, blur_p=o.blur_p)

    def _feature_distance(self, features: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.pretrained_encoder.eval()
            reference = self.pretrained_encoder.forward_intermediates(x)["out"]
        small = label_at_feature_scale(y, features.shape[-2:], self.task.num_classes, self.opts.fd_min_ratio)
        return masked_feature_distance(features, reference, torch.isin(small, self._things.to(small.device)))

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o = self.opts
        student = self.model
        if self.mean_teacher.updates == 0:  # start from the weights the student starts from (--init, pre-trained)
            self.mean_teacher.teacher.load_state_dict(student.state_dict())
        warm = warmup_factor(self.progress, o.warmup)
        for g in self.optims["main"].param_groups:  # the trainer set lr = initial_lr * schedule this iteration
            g["lr"] = g["lr"] * warm

        fd_on = self.pretrained_encoder is not None
        with self.autocast():
            if fd_on:
                features, logits_s = student.features_and_logits(source.x)
            else:
                logits_s = student(source.x)
            loss_src = self.task_loss_of(logits_s, source.y)
        loss = loss_src
        out = {"loss/src": loss_src.item()}
        if fd_on:
            fd = self._feature_distance(features, source.x, source.y)
            loss = loss + o.lambda_fd * fd
            out["loss/fd"] = fd.item()

        probs = self.mean_teacher.probs(target.x)
        plabel, confident, w_t = pseudo_labels(probs, o.threshold)
        n = min(len(source), len(target))
        mask = class_mix_masks(source.y[:n], self._generator)
        x_mix = self.augment(mix(mask, source.x[:n], target.x[:n]))
        y_mix = mix(mask, source.y[:n], plabel[:n])
        omega = mask[:, 0] + (1 - mask[:, 0]) * w_t[:n].view(-1, 1, 1)
        with self.autocast():
            logits_m = student(x_mix)
        loss_mix = weighted_cross_entropy(logits_m, y_mix, omega)
        loss = loss + loss_mix
        out.update({"loss/mix": loss_mix.item(), "pseudo/weight": w_t.mean().item(),
                    "pseudo/confident": confident.float().mean().item(), "mix/pasted": mask.mean().item()})

        if o.mic:
            keep = patch_keep_mask(len(target), tuple(target.x.shape[-2:]), self.mask_patch(), o.mask_ratio,
                                   self._generator).to(target.x.device)
            with self.autocast():
                logits_k = student(self.augment(target.x) * keep)
            weight = w_t.view(-1, 1, 1).expand(-1, *plabel.shape[1:])
            loss_mic = weighted_cross_entropy(logits_k, plabel, weight)
            loss = loss + o.lambda_mic * loss_mic
            out["loss/mic"] = loss_mic.item()

        self.update(loss, "main")
        self.mean_teacher.update(student)
        out["lr/warmup"] = warm
        return out

    # -- checkpoints: the teacher's weights are in nets; its update count and the generator here --
    def state_dict(self) -> dict:
        return {**super().state_dict(), "teacher_updates": self.mean_teacher.updates,
                "mixing_rng": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mean_teacher.updates = int(state.get("teacher_updates", 0))
        self.mean_teacher.teacher.eval()
        if "mixing_rng" in state:
            self._generator.set_state(state["mixing_rng"])
