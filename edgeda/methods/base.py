"""The method interface every adaptation method implements, and the engine that runs its updates.

A method builds its modules and optimizers from the task spec and its options, and implements
``step(source, target) -> dict[str, float]``. Everything else (iteration budget, LR schedule, AMP,
distributed gradient averaging, evaluation, checkpoints, bundles) belongs to the trainer, reached
through :meth:`Method.update`.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..bundle import Bundle
from ..errors import EdgedaError
from ..options import Configurable
from ..tasks import task_of
from ..tasks.spec import TaskSpec
from .registry import methods_for


def task_network_renamed(state: dict) -> dict:
    """A method state (:meth:`Method.state_dict`) with the task network under its current name:
    checkpoints written before it was called ``model`` hold it as ``nets["classifier"]`` (tensor
    keys ``classifier.*``) and, in methods that name its optimizer after it, ``optims["classifier"]``.
    Those become ``model.*`` and ``optims["model"]``; every other key, and a state that already
    uses ``model``, stays as it is. The given dict is not changed."""
    nets, optims = state.get("nets"), state.get("optims")
    old = "classifier."
    if nets is not None and any(k.startswith(old) for k in nets) and not any(k.startswith("model.") for k in nets):
        renamed = type(nets)()
        for k, v in nets.items():
            renamed["model." + k[len(old):] if k.startswith(old) else k] = v
        state = {**state, "nets": renamed}
    if optims is not None and "classifier" in optims and "model" not in optims:
        state = {**state, "optims": {("model" if k == "classifier" else k): v for k, v in optims.items()}}
    return state


@dataclass
class Batch:
    """A batch on the training device: normalised images, labels (None for target; a dense task's
    label maps), and for classification sources that have them the images' foreground masks."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    foreground: torch.Tensor | None = None  # (N, 1, H, W) float in [0, 1], foreground = 1

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)


FUSED_OPTIMIZERS = True  # build_optimizer's fused update where torch has one (False: torch's default)


class _SGD(torch.optim.SGD):
    """torch's SGD whose fused update also takes parameters that get their first gradient after the
    others started: torch's fused kernel expects a momentum buffer for every parameter or for none, and
    fails on a network trained in part first (CSG's frozen encoder, a discriminator joining later).
    Such a buffer starts at zero: one momentum update of zero (dampening 0) is the loop's first step,
    a copy of the gradient."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group.get("fused") and group["momentum"] and not group["dampening"]:
                for p in group["params"]:
                    if p.grad is not None and self.state[p].get("momentum_buffer") is None:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return super().step(closure)


def build_optimizer(params, name: str, lr: float, *, momentum: float = 0.0, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), where: str = "") -> torch.optim.Optimizer:
    """The one optimizer factory, for training methods (:meth:`Method.make_optimizer`) and on-device
    methods alike: ``name`` (``"sgd"``, Nesterov when ``momentum`` > 0, or ``"adam"`` with ``betas``)
    over ``params`` (tensors, or groups; a group's own ``lr`` wins) at ``lr``. Every param group
    records its ``initial_lr``: the learning rate an LR schedule scales.

    The update runs as one fused kernel over all parameters (``fused=True``, the same algorithm) where
    torch has it for their device and dtype, else as torch's default: on the CPU the per-parameter
    loop took ~10x as long (Adam over SSDLite's 266 tensors: 17.8 ms a step against 1.7 ms fused, ~8 %
    of a detection training step; ``benchmarks/step_efficiency.py`` measures the steps)."""
    if name == "sgd":
        make = functools.partial(_SGD, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    elif name == "adam":
        make = functools.partial(torch.optim.Adam, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    else:
        raise EdgedaError(f"unknown optimizer {name!r}{' ' + where if where else ''}; valid: adam, sgd")
    params = list(params)
    opt = None
    if FUSED_OPTIMIZERS:
        try:
            opt = make(params, fused=True)
        except (RuntimeError, ValueError, TypeError):  # a device or dtype without fused kernels
            opt = None
    if opt is None:
        opt = make(params)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def scheduled_lr(optim_name: str, opt: torch.optim.Optimizer, factor: float, owner: str = "") -> None:
    """Set every param group of ``opt`` to its ``initial_lr`` times ``factor`` (the LR schedule); a
    group without ``initial_lr`` (an optimizer not made by :func:`build_optimizer`) is an error
    naming the optimizer."""
    for i, g in enumerate(opt.param_groups):
        if "initial_lr" not in g:
            raise EdgedaError(f"{owner + ': ' if owner else ''}optimizer {optim_name!r} param group {i} has no "
                              "initial_lr for the LR schedule to scale (build optimizers with build_optimizer, "
                              "make_optimizer or make_adam)")
        g["lr"] = g["initial_lr"] * factor


class NonFiniteLoss(ArithmeticError):
    """Raised before this update changes any parameter when its loss, or (without AMP loss scaling,
    which skips such steps itself) one of its gradients, is NaN or infinite."""


class Engine:
    """Runs one optimisation update: AMP autocast + loss scaling on CUDA, and gradient averaging
    across ranks under ``torchrun`` (so methods with several optimizers need no DDP wrapper).

    ``amp``: True (the default) autocasts on CUDA only, in bf16 where the GPU has it, else in fp16
    with loss scaling; False turns it off; ``"bf16"`` (opt-in) autocasts in bf16 on the CPU too;
    ``"fp16"`` forces fp16 with loss scaling (CUDA only)."""

    def __init__(self, device: torch.device | str = "cpu", amp: bool | str = False, world_size: int = 1):
        self.device = torch.device(device)
        if amp == "bf16":
            self.amp, self.dtype = self.device.type in ("cuda", "cpu"), torch.bfloat16
        elif amp == "fp16":
            if self.device.type != "cuda":
                raise EdgedaError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16")
            self.amp, self.dtype = True, torch.float16
        else:
            self.amp = bool(amp) and self.device.type == "cuda"
            self.dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.dtype == torch.float16)
        self.world_size = world_size

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizers: list[torch.optim.Optimizer], retain_graph: bool = False) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.world_size > 1:  # every rank must take the same branch
            import torch.distributed as dist

            flag = torch.tensor([1.0 if finite else 0.0], device=loss.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        if not finite:
            raise NonFiniteLoss(float(loss.detach().float().sum()))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward(retain_graph=retain_graph)
        if self.world_size > 1:
            self._average_gradients(optimizers)
        if not self.scaler.is_enabled():  # the scaler skips steps with inf/NaN gradients on its own
            self._check_gradients(optimizers)
        for opt in optimizers:
            self.scaler.step(opt)
        self.scaler.update()

    @staticmethod
    def _check_gradients(optimizers: list[torch.optim.Optimizer]) -> None:
        """A finite loss can still give inf/NaN gradients (e.g. sqrt or log at 0): refuse the step.
        After the all-reduce every rank holds the same gradients, so all ranks agree."""
        grads = [p.grad for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        if not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss("a gradient is NaN or infinite")

    def _average_gradients(self, optimizers: list[torch.optim.Optimizer]) -> None:
        import torch.distributed as dist

        grads = [p.grad for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


class Method(Configurable):
    """Base class. Subclasses set ``name``/``summary``/``defaults`` and implement ``build`` and ``step``.

    ``self.nets`` (an ``nn.ModuleDict``) holds every module the method trains; ``self.optims``
    its optimizers by name. ``self.progress`` in [0, 1] is set by the trainer before each step.
    """

    uses_target: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("classification",)  # the tasks this method adapts

    def __init__(
        self,
        task: TaskSpec,
        *,
        backbone: str = "dtn",
        backbone_kwargs: dict | None = None,
        options: dict | None = None,
        optim: OptimConfig | None = None,
        engine: Engine | None = None,
        task_loss: str | None = None,
    ):
        if task.task not in self.tasks:
            raise EdgedaError(f"method {self.name!r} adapts {', '.join(self.tasks)} models, not {task.task}; "
                              f"methods for {task.task}: {', '.join(methods_for(task.task))}")
        self.opts = self.resolve_options(options)
        self.given = set(options or {})  # the option names the user set (the rest are defaults)
        self.task = task
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.optim_cfg = optim or OptimConfig()
        self.engine = engine or Engine()
        self.task_loss = task_loss
        self.progress = 0.0
        self.nets = nn.ModuleDict()
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.build()
        for name, opt in self.optims.items():  # the trainer's LR schedule scales each group's initial_lr
            if any("initial_lr" not in g for g in opt.param_groups):
                raise EdgedaError(f"method {self.name!r}: optimizer {name!r} was not made by make_optimizer / make_adam "
                                  "(build_optimizer), so its param groups have no initial_lr for the LR schedule")
        self.nets.to(self.engine.device)

    # -- to implement -------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def step(self, source: Batch, target: Batch | None) -> dict[str, float]:
        raise NotImplementedError

    # -- shared helpers -----------------------------------------------------------------------
    def make_model(self) -> nn.Module:
        """The task network (a classifier, or a dense encoder + head), built from the task spec."""
        return task_of(self.task).build_model(self.task, self.backbone, self.backbone_kwargs)

    def task_loss_of(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's supervised loss (cross-entropy; per-pixel for segmentation; depth: ``--task-loss``)."""
        return task_of(self.task).model_loss(self.model, output, target, self.task_loss)

    def make_optimizer(self, params, lr_mult: float = 1.0, name: str | None = None, *,
                       betas: tuple[float, float] | None = None, weight_decay: float | None = None) -> torch.optim.Optimizer:
        """``name`` (default the config's) over ``params`` (tensors, or groups ``{"params": ...,
        "lr_mult": m}`` so that a pre-trained encoder can learn slower) at the configured learning
        rate times ``lr_mult``; Adam's ``betas`` and the ``weight_decay`` default to the config's.
        Built by :func:`build_optimizer`, so each group records its ``initial_lr``, which the
        trainer's LR schedule scales."""
        c = self.optim_cfg
        lr = c.lr * lr_mult
        params = list(params)
        if params and isinstance(params[0], dict):
            params = [{**g, "lr": lr * g.pop("lr_mult")} if "lr_mult" in g else g for g in (dict(g) for g in params)]
        where = f"asked for by method {self.name!r}" if name else "(the config's `optimizer`)"
        return build_optimizer(params, name or c.name, lr, momentum=c.momentum,
                               weight_decay=c.weight_decay if weight_decay is None else weight_decay,
                               betas=tuple(betas or c.betas), where=where)

    def make_adam(self, params, lr: float | None = None, betas: tuple[float, float] | None = None,
                  weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """Adam at ``lr`` (default: the configured learning rate; still scaled by the trainer's LR
        schedule) with ``betas`` (default: the config's) and ``weight_decay`` (default none), for a
        method's own networks (discriminators, generators, regressors)."""
        lr_mult = 1.0 if lr is None else float(lr) / self.optim_cfg.lr
        return self.make_optimizer(params, lr_mult=lr_mult, name="adam", betas=betas, weight_decay=weight_decay)

    @staticmethod
    def param_groups(model: nn.Module, encoder_lr: float = 1.0) -> list[dict]:
        """``model``'s parameters as optimizer groups, its encoder (``encoder``, or a classifier's
        ``features``) at ``encoder_lr`` times the learning rate and the rest at 1x."""
        encoder = getattr(model, "encoder", None) or getattr(model, "features", None)
        if encoder is None or encoder_lr == 1.0:
            return [{"params": list(model.parameters()), "lr_mult": 1.0}]
        enc = {id(p) for p in encoder.parameters()}
        return [{"params": [p for p in model.parameters() if id(p) in enc], "lr_mult": float(encoder_lr)},
                {"params": [p for p in model.parameters() if id(p) not in enc], "lr_mult": 1.0}]

    def source_sampling(self):
        """None (uniform: a shuffled permutation per epoch), or a function from the source images'
        per-class counts (N, K) to per-image sampling weights (N,), e.g.
        :func:`edgeda.data.sampling.rare_class_weights`; the trainer counts and builds the stream."""
        return None

    def backbone_weights_loaded(self) -> None:
        """Called by the trainer right after ``--backbone-weights`` were loaded into the encoder (and
        before ``--init``): a method that regularises towards the pre-trained encoder keeps it here."""

    def visualize(self, folder, iteration: int, source: Batch, target: Batch | None):
        """Write a sample grid PNG for this evaluation (pixel-level methods); return its path or None.

        ``source``/``target`` are fixed, un-augmented display batches (the same at every evaluation).
        """
        return None

    target_images = None  # set by attach_target_images
    target_seed = 0

    def attach_target_images(self, batches, seed: int = 0) -> None:
        """Called by the trainer before training: ``batches()`` makes one pass over the target
        adaptation images (normalised, un-augmented, in a fixed order, on the training device), for
        methods that label the whole target set between updates (CBST's rounds); ``seed`` is the run's."""
        self.target_images, self.target_seed = batches, int(seed)

    def load_init(self, path: str) -> None:
        """Initialise the task network from a bundle directory (its ``classifier``, or ``model`` for
        dense tasks) or a ``.safetensors`` file (``--init``)."""
        from pathlib import Path

        from safetensors.torch import load_file

        p = Path(path)
        if (p / "manifest.json").is_file():
            state = Bundle(p).model.state_dict()
        elif p.suffix == ".safetensors" and p.is_file():
            state = load_file(str(p))
        else:
            raise EdgedaError(f"--init {path}: expected an edgeda bundle directory or a .safetensors file")
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise EdgedaError(f"--init {path} does not fit this model: {str(e).splitlines()[0]}") from None

    @property
    def model(self) -> nn.Module:
        """The task network (``nets["model"]``): a classifier, a segmenter, a depth model or a detector."""
        return self.nets["model"]

    def deployables(self) -> dict[str, nn.Module]:
        """What ships: always the task network (``"classifier"``: features + head; ``"model"`` for
        dense tasks); pixel-level methods add ``"refiner"``."""
        return {task_of(self.task).deployable: self.model}

    def train(self) -> None:
        self.nets.train()

    def eval(self) -> None:
        self.nets.eval()

    def state_dict(self) -> dict:
        return {
            "nets": self.nets.state_dict(),
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
            "scaler": self.engine.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        state = task_network_renamed(state)
        self.nets.load_state_dict(state["nets"])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        if state.get("scaler"):
            self.engine.scaler.load_state_dict(state["scaler"])
