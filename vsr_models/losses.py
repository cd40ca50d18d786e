"""Training losses.

Both released recipes train with the Charbonnier penalty (TTVSR Sec. 3.4, VSR-Transformer supplementary Sec. D):
``sqrt((x - y)^2 + eps)``, a differentiable L1. The released implementations put ``eps = 1e-12`` on
the *squared* error; TTVSR averages it (``reduction='mean'``) and VSR-Transformer sums it
(``reduction='sum'``), see ``docs/models.md#training-recipes``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum"]


def charbonnier_loss(
    pred: Tensor, target: Tensor, eps: float = 1e-12, reduction: Reduction = "mean"
) -> Tensor:
    """Charbonnier loss ``sqrt((pred - target)^2 + eps)`` reduced over every element.

    Args:
        pred: prediction of any shape, e.g. ``(n, t, 3, 4h, 4w)``.
        target: ground truth of the same shape.
        eps: added to the squared error, not to the difference (so ``sqrt(eps)`` is the floor per element).
        reduction: ``'mean'`` (TTVSR) or ``'sum'`` (VSR-Transformer).

    Returns:
        A scalar tensor.
    """
    if pred.shape != target.shape:
        raise ValueError(f"charbonnier_loss: pred shape {tuple(pred.shape)} != target {tuple(target.shape)}")
    penalty = torch.sqrt((pred - target) ** 2 + eps)
    if reduction == "mean":
        return penalty.mean()
    if reduction == "sum":
        return penalty.sum()
    raise ValueError(f"charbonnier_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
