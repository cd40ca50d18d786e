"""The released optimisation recipe (``docs/models.md#training-recipes``), without Ray.

Adam (0.9, 0.99) with SPyNet in its own parameter group at ``spynet_lr_mult`` x the learning rate and
frozen for the first ``fix_spynet_iters`` iterations (TTVSR Sec. 3.4), and cosine annealing with
restarts stepped every iteration (:class:`CosineRestartFactor`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pipelines.training.config import Experiment, OptimSection, ScheduleSection

SPYNET_PREFIX = "spynet."  # parameter-name prefix of the flow network in both models


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Adam:
    """Adam with two parameter groups: the network at ``lr`` and SPyNet (``spynet.*``) at ``lr * spynet_lr_mult``."""
    spynet = [p for name, p in model.named_parameters() if name.startswith(SPYNET_PREFIX)]
    rest = [p for name, p in model.named_parameters() if not name.startswith(SPYNET_PREFIX)]
    groups = [{"params": rest, "lr": optim.lr, "name": "network"}]
    if spynet:
        groups.append({"params": spynet, "lr": optim.lr * optim.spynet_lr_mult, "name": "spynet"})
    return torch.optim.Adam(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


@dataclass
class CosineRestartFactor:
    """Learning-rate multiplier of cosine annealing with warm restarts (BasicSR's CosineAnnealingRestartLR).

    In period ``k`` (starting at iteration ``s_k``, length ``T_k``, restart weight ``w_k``)::

        lr(i) = eta_min + w_k * (base_lr - eta_min) * (1 + cos(pi * (i - s_k) / T_k)) / 2

    and ``eta_min`` after the last period. Returned as ``lr(i) / base_lr`` for ``LambdaLR``; one
    instance per parameter group since ``eta_min`` is absolute (the SPyNet group has a smaller base).
    """

    base_lr: float
    periods: list[int]
    restart_weights: list[float]
    eta_min: float

    def __call__(self, iteration: int) -> float:
        start = 0
        for period, weight in zip(self.periods, self.restart_weights, strict=True):
            if iteration < start + period:
                cosine = 0.5 * (1 + math.cos(math.pi * (iteration - start) / period))
                return (self.eta_min + weight * (self.base_lr - self.eta_min) * cosine) / self.base_lr
            start += period
        return self.eta_min / self.base_lr


def lr_schedule(optimizer: torch.optim.Optimizer, schedule: ScheduleSection) -> LambdaLR:
    """An iteration-stepped ``LambdaLR`` with one :class:`CosineRestartFactor` per parameter group."""
    factors = [
        CosineRestartFactor(
            group["lr"], list(schedule.periods), list(schedule.restart_weights), schedule.eta_min
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, factors)


def describe_schedule(cfg: Experiment) -> str:
    """The resolved learning-rate schedule in one line (printed at start, logged as the ``schedule`` param)."""
    schedule = cfg.schedule
    return (
        f"cosine annealing with restarts, lr {cfg.optim.lr:g} -> {schedule.eta_min:g}: periods "
        f"{list(schedule.periods)}, restart weights {list(schedule.restart_weights)}, covering "
        f"{sum(schedule.periods)} of train.total_iters={cfg.train.total_iters} iterations"
    )


def batch_lr_factor(cfg: Experiment) -> float:
    """What ``scaling.lr_rule`` multiplies ``optim.lr`` by at this run's global batch.

    ``linear``: global / recipe batch; ``sqrt``: its square root; 1 with ``none`` or no
    ``scaling.recipe_global_batch`` (``docs/cluster.md#global-batch-and-learning-rate-rules``).
    """
    recipe, rule = cfg.scaling.recipe_global_batch, cfg.scaling.lr_rule
    if rule == "none" or recipe is None:
        return 1.0
    ratio = cfg.global_batch / recipe
    return ratio if rule == "linear" else math.sqrt(ratio)


def with_batch_lr(cfg: Experiment) -> Experiment:
    """``cfg`` as the workers train it: ``optim.lr`` scaled by :func:`batch_lr_factor`, the rule then spent.

    The rule is set to ``none`` in the result, so applying this twice scales once. Both parameter
    groups follow (SPyNet's lr is ``spynet_lr_mult`` x ``optim.lr``); ``schedule.eta_min`` stays absolute.
    """
    factor = batch_lr_factor(cfg)
    if cfg.scaling.lr_rule == "none":
        return cfg
    optim = dataclasses.replace(cfg.optim, lr=cfg.optim.lr * factor)
    return dataclasses.replace(cfg, optim=optim, scaling=dataclasses.replace(cfg.scaling, lr_rule="none"))


def describe_global_batch(cfg: Experiment) -> tuple[str, str | None]:
    """The run's global batch in one line, and a one-line warning when it is not the recipe's (else None)."""
    scaling = cfg.scaling
    line = (
        f"{cfg.global_batch} sequences per step (data.batch_size {cfg.data.batch_size} x "
        f"scaling.num_workers {scaling.num_workers})"
    )
    recipe = scaling.recipe_global_batch
    if recipe is None or recipe == cfg.global_batch:
        return line, None
    lr = cfg.optim.lr
    if scaling.lr_rule == "none":
        action = (
            f"optim.lr {lr:g} is kept (scaling.lr_rule none); set scaling.lr_rule to linear or sqrt to "
            "scale it, or data.batch_size to match"
        )
    else:
        factor = batch_lr_factor(cfg)
        action = (
            f"scaling.lr_rule {scaling.lr_rule} scales optim.lr {lr:g} -> {lr * factor:g} (x{factor:.3g})"
        )
    warning = (
        f"global batch {cfg.global_batch} differs from the recipe's {recipe} (scaling.recipe_global_batch)"
    )
    return line, f"{warning}: {action}"


def set_spynet_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze the flow network (TTVSR Sec. 3.4: fixed for the first 5,000 iterations)."""
    for name, parameter in model.named_parameters():
        if name.startswith(SPYNET_PREFIX):
            parameter.requires_grad_(trainable)
