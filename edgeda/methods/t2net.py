"""T2Net: synthetic-to-realistic translation and depth estimation trained end to end."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.gan_utils import ImagePool, _to_uint8, cycle_loss
from ..tasks.draw import colourise_depth
from ._pixel import PIXEL_DEFAULTS, PixelMethod
from .base import Batch
from .losses import edge_aware_smoothness
from .registry import METHODS


class FeatureMapDiscriminator(nn.Module):
    """D_f: one real/translated logit per location of an encoder map, (N, C, h, w) -> (N, 1, h, w)
    (1x1 convs + LeakyReLU(0.2), so it works on the small maps of a stride-16 encoder at any size)."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 1), nn.LeakyReLU(0.2, True),
                                  nn.Conv2d(width, width, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(width, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.body(f)


@METHODS.register("t2net")
class T2Net(PixelMethod):
    """T2Net: a translation network G (synthetic -> realistic) and a depth network T on G's output,
    trained end to end; real images go to T directly, and T ships.

    Zheng, Cham & Cai, "T2Net: Synthetic-to-Realistic Translation for Solving Single-Image Depth
    Estimation Tasks", ECCV 2018.

    With x_s, y_s synthetic images and depth, x_t real images, D_T a PatchGAN on images and D_f a
    per-location discriminator on T's encoder map f(.), G and T minimise
      L = L_gan(G, D_T)                        GAN: D_T(G(x_s)) -> real
        + l_f L_gan(f, D_f)                    GAN: D_f(f(G(x_s))) -> real, D_f(f(x_t)) is "real"
        + l_r ||G(x_t) - x_t||_1               G leaves real images alone (identity / reconstruction)
        + l_t ||s(T(G(x_s))) - s(y_s)||_1      on valid pixels (y_s > 0), s(d) = 2 (log d - log lo) /
                                               (log hi - log lo) - 1 maps the depth range to [-1, 1]
        + l_s sum |d_x d| e^{-|d_x x_t|} + |d_y d| e^{-|d_y x_t|},  d = T(x_t) / mean T(x_t)
                                               (edge-aware smoothness on real images)
    and D_T, D_f minimise 1/2 [L(D_T(x_t), real) + L(D_T(pool(G(x_s))), fake)] + 1/2 [L(D_f(f(x_t)),
    real) + L(D_f(f(G(x_s))), fake)] with the least-squares GAN loss (``gan``). T sees G(x_s) and x_t
    in one forward pass, so its batch statistics cover both.

    Defaults (the authors' released training options, except the learning rates): l_f = 0.1
    (``lambda_f``), l_r = 40 (``lambda_r``), l_t = 20 (``lambda_t``), l_s = 0.01 (``lambda_s``), Adam
    betas (0.5, 0.9), lr 1e-3 for T (``lr_task``) and 1e-4 for G and both discriminators
    (``lr_trans``), a history pool of 20 translated images; G is the pixel methods' ResNet generator (``g_width`` 16, 2 blocks) and
    D_T their PatchGAN, sized for 64x128 images on a CPU where the paper used a wider G and U-Net T
    at 640x192. The shipped ``refiner`` is G; ``model`` is T. The task L1 is on log-depth scaled to
    [-1, 1] where the authors' T ends in tanh over linear depth scaled to [-1, 1]: this repository's
    depth heads predict unbounded log-depth in training, and an L1 in metres on an untrained head's
    outputs (up to 1e8 m at initialisation) exploded at the first step.
    The cpu benchmark runs 400 iterations (a step costs about 8 source-only steps).
    The learning rates are ten times the released 1e-4 (T) and 2e-5 (G, D) for a budget of hundreds
    rather than hundreds of thousands of steps: in 200-step pilots (synscenes, 32x64) the released
    rates left the source-validation abs rel at 3.9, 10x gave 1.35 (G at 2e-4: 1.53).
    """

    summary = "translation G (synthetic -> real, identity on real) + depth net T on G's output, end to end (Zheng et al. 2018)"
    tasks = ("depth",)
    defaults = {**{k: v for k, v in PIXEL_DEFAULTS.items() if k != "lr_g"}, "lambda_f": 0.1, "lambda_r": 40.0, "lambda_t": 20.0, "lambda_s": 0.01,
                "lr_task": 1e-3, "lr_trans": 1e-4, "beta2": 0.9, "pool": 20, "df_width": 64}

    def build(self) -> None:
        o = self.opts
        self.nets["model"] = self.make_model()               # T
        self.nets["refiner"] = self.make_refiner()                     # G
        self.nets["disc_t"] = self.make_discriminator()                # D_T on images
        self.nets["disc_f"] = FeatureMapDiscriminator(self.model.feature_channels, o.df_width)  # D_f
        base = self.optim_cfg.lr
        self.optims["main"] = self._adam([{"params": list(self.nets["refiner"].parameters()), "lr_mult": o.lr_trans / base},
                                          {"params": list(self.model.parameters()), "lr_mult": o.lr_task / base}])
        self.optims["disc"] = self._adam([{"params": list(self.nets["disc_t"].parameters()) + list(self.nets["disc_f"].parameters()),
                                           "lr_mult": o.lr_trans / base}])
        self.pool = ImagePool(o.pool, 1)

    def _adam(self, groups: list[dict]) -> torch.optim.Optimizer:
        return self.make_adam(groups, betas=(0.5, self.opts.beta2))

    # -- losses -----------------------------------------------------------------------------------
    def task_l1(self, pred: torch.Tensor, depth: torch.Tensor, log_pred: bool = False) -> torch.Tensor:
        """||s(T(G(x_s))) - s(y_s)||_1 on valid pixels (y_s > 0), log-depth scaled to [-1, 1] over the
        range; ``log_pred``: ``pred`` is already log-depth."""
        lo, hi = float(self.model.min_depth), float(self.model.max_depth)
        valid = depth > 0
        if not bool(valid.any()):
            return pred.sum() * 0.0
        log_pred_d = pred[:, 0].float() if log_pred else pred[:, 0].float().clamp_min(1e-6).log()
        diff = log_pred_d - depth.float().clamp_min(1e-6).log()
        return diff.abs()[valid].mean() * (2.0 / (math.log(hi) - math.log(lo)))

    def identity_loss(self, real: torch.Tensor) -> torch.Tensor:
        """||G(x_t) - x_t||_1 for real images in tanh space: zero when G leaves them unchanged."""
        return cycle_loss(self.nets["refiner"](real), real)

    def feature_gan(self, translated: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(generator loss: D_f(f(G(x_s))) -> real, discriminator loss: f(x_t) real, f(G(x_s)) fake);
        the discriminator loss sees detached features."""
        Df = self.nets["disc_f"]
        g = self.gan(Df(translated), True, generator=True)
        d = 0.5 * (self.gan(Df(real.detach()), True) + self.gan(Df(translated.detach()), False))
        return g, d

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        o = self.opts
        G, T, Dt = self.nets["refiner"], self.model, self.nets["disc_t"]
        ns = len(source)
        xs, xt = self.to_tanh(source.x), self.to_tanh(target.x)
        with self.autocast():
            fake = G(xs)
            feats, log_depth = T.features_and_log_depth(torch.cat([self.to_input(fake), target.x]))
            adv = self.gan(Dt(fake), True, generator=True)
            adv_f, d_f = self.feature_gan(feats[:ns], feats[ns:])
            rec = self.identity_loss(xt)
            task = self.task_l1(log_depth[:ns], source.y, log_pred=True)
            smooth = edge_aware_smoothness(log_depth[ns:], xt, log_depth=True)
            loss = (adv + o.lambda_f * adv_f + o.lambda_r * rec + o.lambda_t * task
                    + o.lambda_s * smooth)
        self.update(loss, "main")
        with self.autocast():
            d_img = 0.5 * (self.gan(Dt(xt), True) + self.gan(Dt(self.pool.query(fake)), False))
            d_loss = d_img + d_f
        self.update(d_loss, "disc")
        return {"loss/g_adv": adv.item(), "loss/f_adv": adv_f.item(), "loss/identity": rec.item(),
                "loss/task": task.item(), "loss/smooth": smooth.item(), "loss/d_img": d_img.item(), "loss/d_feat": d_f.item()}

    # -- what ships and what a person sees --------------------------------------------------------
    def visualize(self, folder, iteration: int, source: Batch, target: Batch | None):
        """Source validation rows: image | translated G(x) | predicted depth T(G(x)) | truth."""
        from PIL import Image

        if source is None or source.y is None:
            return None
        xs = self.to_tanh(source.x)
        fake = self.nets["refiner"](xs)
        pred = self.model(self.to_input(fake))[:, 0].float().cpu().numpy()
        truth = source.y.float().cpu().numpy()
        img, tr = _to_uint8(xs), _to_uint8(fake)
        rows = []
        for i in range(len(img)):
            vmax = float(truth[i][truth[i] > 0].max()) if (truth[i] > 0).any() else float(pred[i].max())
            rows.append(np.concatenate([img[i], tr[i], colourise_depth(pred[i], vmax=vmax),
                                        colourise_depth(truth[i], vmax=vmax)], axis=1))
        path = Path(folder) / f"samples_{iteration:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        return path
