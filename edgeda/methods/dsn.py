"""Domain Separation Networks: shared and private encoders, a shared decoder, adversarial similarity."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import BACKBONES, DomainClassifier, dann_coefficient
from ..models.decoder import FeatureDecoder
from .base import Batch, Method
from .losses import difference_loss, domain_adversarial_loss, scale_invariant_mse
from .registry import METHODS


@METHODS.register("dsn")
class DomainSeparation(Method):
    """DSN: split each domain's representation into a shared part and a private part.

    Bousmalis et al., "Domain Separation Networks", NeurIPS 2016 (DANN similarity variant).

    Shared encoder E_c (the shipped classifier's backbone), private encoders E_p^s and E_p^t (same
    architecture, not shared), shared decoder D, domain classifier Z, head G:
        h_c = E_c(x), h_p = E_p^d(x),  x_hat = D(h_c + h_p)
        L = CE(G(h_c^s), y_s)
          + alpha * (SIMSE(x_s, x_hat_s) + SIMSE(x_t, x_hat_t))
          + beta  * (||H_c^s^T H_p^s||_F^2 + ||H_c^t^T H_p^t||_F^2)
          + gamma * [BCE(Z(R_l(h_c^s)), 1) + BCE(Z(R_l(h_c^t)), 0)]
    SIMSE(x, x_hat) = ||x - x_hat||^2 / k - ((x - x_hat) . 1)^2 / k^2 (k pixels); the difference
    loss is on row-L2-normalised codes, averaged over entries (see ``losses.difference_loss``);
    R_l is gradient reversal with DANN's schedule l_p = 2 / (1 + exp(-10 p)) - 1.

    Defaults (within the paper's ranges alpha in [0.01, 0.15], beta in [0.05, 0.075],
    gamma in [0.25, 0.3]): alpha 0.1, beta 0.05, gamma 0.25, domain classifier hidden 256; one
    optimizer over all modules. Ships E_c + G only; the private encoders and decoder stay behind.
    """

    summary = "domain separation networks: shared/private encoders, shared decoder (Bousmalis et al. 2016)"
    defaults = {"alpha": 0.1, "beta": 0.05, "gamma": 0.25, "hidden": 256, "grl_gamma": 10.0}

    def build(self) -> None:
        t = self.task
        self.nets["model"] = self.make_model()
        dim = self.nets["model"].feature_dim
        for name in ("private_source", "private_target"):
            self.nets[name] = BACKBONES.get(self.backbone)(channels=t.channels, image_size=t.image_size[0], **self.backbone_kwargs)
        width = int(self.backbone_kwargs.get("width", 16)) if self.backbone == "dtn" else 16
        self.nets["decoder"] = FeatureDecoder(dim, t.channels, t.image_size[0], width)
        self.nets["domain"] = DomainClassifier(dim, self.opts.hidden)
        self.optims["main"] = self.make_optimizer(self.nets.parameters())

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        ns, o = len(source), self.opts
        coeff = dann_coefficient(self.progress, o.grl_gamma)
        with self.autocast():
            shared, logits = self.model.features_and_logits(torch.cat([source.x, target.x]))
            cls_loss = F.cross_entropy(logits[:ns].float(), source.y)
            hp_s, hp_t = self.nets["private_source"](source.x), self.nets["private_target"](target.x)
            rec_s = self.nets["decoder"](shared[:ns] + hp_s)
            rec_t = self.nets["decoder"](shared[ns:] + hp_t)
            recon = scale_invariant_mse(source.x, rec_s) + scale_invariant_mse(target.x, rec_t)
            diff = difference_loss(shared[:ns], hp_s) + difference_loss(shared[ns:], hp_t)
            sim, dom_acc = domain_adversarial_loss(self.nets["domain"], shared[:ns], shared[ns:], coeff)
            loss = cls_loss + o.alpha * recon + o.beta * diff + o.gamma * sim
        self.update(loss)
        return {"loss/cls": cls_loss.item(), "loss/recon": recon.item(), "loss/difference": diff.item(),
                "loss/similarity": sim.item(), "acc/domain": dom_acc.item(), "grl": coeff}
