"""``--device`` values a user can mistype are one line naming the flag, not a torch traceback."""

from __future__ import annotations

import pytest
import torch

from pipelines.common.errors import UserError
from pipelines.inference.loading import resolve_device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "nonsense", "meta", "cuda:99", ""])
def test_a_device_that_is_not_one_is_a_user_error_naming_it(device):
    with pytest.raises(UserError) as refused:
        resolve_device(device)
    assert "\n" not in str(refused.value) and (
        "--device" in str(refused.value) or "CUDA" in str(refused.value)
    )


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
