"""The pieces a training run is built from: the method (with pre-trained weights or ``--init``),
the user's labeled target images and the class-aware source sampling weights."""
from __future__ import annotations

import torch

from .. import distributed
from ..errors import EdgedaError
from ..methods import Engine, Method, OptimConfig
from ..methods.registry import methods_for
from ..models.weights import describe, load_pretrained, pretrained_options
from ..tasks import load_for_task, task_of
from .model_eval import eval_batches
from ..data.sampling import class_counts


def check_method_fits(method_cls, method_name: str, task: str) -> None:
    """One clear error when ``method_name`` does not adapt ``task`` models."""
    if task not in method_cls.tasks:
        raise EdgedaError(f"method {method_name!r} adapts {', '.join(method_cls.tasks)} models, and this source is "
                          f"{task} data; methods for {task}: {', '.join(methods_for(task))} (--method)")


def build_method(cfg, method_cls, spec, domains, *, device, dist, log) -> tuple[Method, dict | None]:
    """(the method, a record of the pre-trained weights it started from or None), ready to train:
    ``--backbone-weights`` or ``--init`` applied, the target images attached for methods that label
    the whole target set, channels-last weights under ``--channels-last``, the same initial
    weights on every torchrun rank."""
    engine = Engine(device, amp=cfg.amp, world_size=dist.world_size)
    optim = OptimConfig(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    # a pre-trained encoder learns slower where the method offers encoder_lr
    options = pretrained_options(method_cls, cfg.options) if cfg.backbone_weights else cfg.options
    if cfg.backbone_weights:  # build settings the file implies (SSDLite on an ImageNet trunk: the full last stage)
        kwargs = task_of(spec.task).options_for_weights(cfg.backbone, cfg.backbone_kwargs, cfg.backbone_weights)
        for k, v in kwargs.items():
            if k not in (cfg.backbone_kwargs or {}):
                log(f"backbone weights: {cfg.backbone} built with {k}={v} to fit {cfg.backbone_weights}")
        cfg.backbone_kwargs = kwargs
    method: Method = method_cls(spec, backbone=cfg.backbone, backbone_kwargs=cfg.backbone_kwargs, options=options,
                                optim=optim, engine=engine, task_loss=cfg.task_loss)
    init_weights = None
    if cfg.backbone_weights:  # pre-trained weights (whole model or encoder), applied at build time, never a download
        rep = load_pretrained(method.model, cfg.backbone_weights)
        for line in describe(rep):
            log(f"backbone weights {line}")
        init_weights = {"file": rep["file"], "sha256": rep["sha256"], "kind": rep["kind"], "head": rep["head"]}
        want = getattr(method.model, "checkpoint_mean", None), getattr(method.model, "checkpoint_std", None)
        if want[0] is not None and (tuple(spec.mean), tuple(spec.std)) != (tuple(want[0]), tuple(want[1])):
            log(f"backbone weights: the public {cfg.backbone} checkpoints expect inputs normalised with mean "
                f"{list(want[0])} and std {list(want[1])}; this run uses {list(spec.mean)} and {list(spec.std)} "
                "(mean and std in a --config file)")
        method.backbone_weights_loaded()
    if cfg.init and hasattr(method, "load_init"):
        method.load_init(cfg.init)
    if domains.target is not None and method_cls.uses_target:  # for methods that label the whole target set
        target, bs = domains.target, task_of(spec.task).eval_batch_size
        method.attach_target_images(lambda: (x for x, _, _ in eval_batches(target, spec, device, bs, labels=False)),
                                    seed=cfg.seed)
    if cfg.channels_last:  # opt-in: NHWC weights (and batches, in the loop) for the convolution kernels
        method.nets.to(memory_format=torch.channels_last)
    if dist.enabled:
        distributed.broadcast_module(method.nets)
        torch.manual_seed(cfg.seed * 7919 + dist.rank)  # per-rank noise (dropout, GAN z) after a shared init
    return method, init_weights


def load_target_val(spec_text: str, spec):
    """The user's few labeled target images (``--target-val``), checked against the run's task."""
    return load_for_task(spec_text, spec, labeled=True, what=f"--target-val {spec_text}", model="model")


def source_weights(method: Method, domain, spec):
    """Per-image source sampling weights when the method asks for class-aware sampling, else None."""
    weigh = method.source_sampling()
    if weigh is None or not spec.num_classes:
        return None
    return weigh(class_counts(domain, spec.num_classes))
