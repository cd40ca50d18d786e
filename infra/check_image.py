"""The image's build check: this torch is a CUDA build whose CUDA, cuDNN and NCCL libraries load.

A build machine has no GPU, so ``torch.cuda.is_available()`` is False there whatever was installed;
what can be proven without one is that the wheel is a CUDA build and that each library it needs
loads: ``import torch`` of a CUDA build loads the CUDA runtime and cuBLAS (it fails if one is
missing), ``torch.backends.cudnn.version()`` loads cuDNN and ``torch.cuda.nccl.version()`` NCCL, the
collective library of DDP. Exit status 1 with one line naming what is missing; run by
``infra/Dockerfile`` when the image is built.

    python infra/check_image.py
"""

from __future__ import annotations

import sys


def check() -> str:
    """One line with the versions found; :class:`RuntimeError` naming what is missing."""
    import torch
    import torch.distributed

    if not torch.version.cuda or not torch.backends.cuda.is_built():
        raise RuntimeError(
            f"torch {torch.__version__} is not a CUDA build: install the wheel of the CUDA index "
            "(the Dockerfile's TORCH_INDEX_URL)"
        )
    cudnn = torch.backends.cudnn.version()  # loads libcudnn; None where it does not load
    if not cudnn:
        raise RuntimeError(f"torch {torch.__version__}: cuDNN does not load (the nvidia-cudnn wheel?)")
    if not torch.distributed.is_nccl_available():
        raise RuntimeError(f"torch {torch.__version__} was built without NCCL, which DDP on GPUs needs")
    nccl = torch.cuda.nccl.version()  # loads libnccl
    nccl_text = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    return f"torch {torch.__version__}: CUDA {torch.version.cuda}, cuDNN {cudnn}, NCCL {nccl_text}"


def main() -> int:
    try:
        print(check())
    except (RuntimeError, OSError) as error:  # OSError: a library that does not load
        print(f"check_image: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
