import math

import pytest
import torch

from vsr_models.losses import charbonnier_loss


def test_charbonnier_equals_closed_form_on_known_differences():
    pred = torch.tensor([0.0, 0.5, 1.0, 0.25])
    target = torch.tensor([0.0, 0.2, 0.0, 0.75])
    eps = 1e-6
    expected = [math.sqrt(d * d + eps) for d in (0.0, 0.3, 1.0, -0.5)]
    assert charbonnier_loss(pred, target, eps=eps, reduction="sum").item() == pytest.approx(sum(expected))
    assert charbonnier_loss(pred, target, eps=eps).item() == pytest.approx(sum(expected) / 4)


def test_charbonnier_default_eps_is_on_the_squared_error():
    zeros = torch.zeros(2, 3, 3, 4, 4)
    # sqrt(0 + 1e-12) = 1e-6 per element
    assert charbonnier_loss(zeros, zeros).item() == pytest.approx(1e-6, rel=1e-4)
    assert charbonnier_loss(zeros, zeros, reduction="sum").item() == pytest.approx(
        1e-6 * zeros.numel(), rel=1e-4
    )


def test_charbonnier_approaches_l1_and_has_finite_gradient_at_zero():
    pred = torch.tensor([0.3, -0.2, 0.0], requires_grad=True)
    target = torch.zeros(3)
    loss = charbonnier_loss(pred, target, reduction="sum")
    assert loss.item() == pytest.approx(0.5, abs=1e-5)
    loss.backward()
    assert torch.allclose(pred.grad, torch.tensor([1.0, -1.0, 0.0]), atol=1e-5)


def test_charbonnier_rejects_bad_reduction_and_shape_mismatch():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="reduction"):
        charbonnier_loss(x, x, reduction="none")
    with pytest.raises(ValueError, match="shape"):
        charbonnier_loss(x, torch.zeros(5))
