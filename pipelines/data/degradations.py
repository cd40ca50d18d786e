"""The two degradations the benchmarks are built with: BI and BD (TTVSR Sec. 4.1, VSR-Transformer Sec. 5).

Both papers train and test on low-resolution frames made by the authors' MATLAB scripts
(``docs/benchmarks.md#degradations``):

- **BI** (REDS4): ``imresize(im2double(img), 1/s, 'bicubic')``, MATLAB's antialiased bicubic, then
  ``im2uint8``.
- **BD** (Vid4, UDM10, Vimeo-90K-T): ``imfilter(img, fspecial('gaussian', 12, 1.6), 'replicate')`` on the
  uint8 frame, then ``img(2:4:end-2, 2:4:end-2, :)``.

Both are separable linear maps followed by a rounding to uint8, so each is written here as two matrices,
one per axis: ``low = A_rows @ high @ A_cols^T``. The matrices hold MATLAB's exact weights, edge handling
included (mirrored indices for BI, clamped ones for BD), and BD's matrices only have rows for the pixels
the script keeps, so nothing is filtered and then thrown away. On one CPU core two dense matmuls per
frame ran about 3x faster than banded gathers of the 16 (BI) or 12 (BD) taps; see
``bench/bench_degradations.py`` for throughput.

uint8 results are computed in float64 as MATLAB does, so that rounding lands on the same grey level;
float32 would flip a few pixels that fall within 1e-5 of a half level.

Tensors are ``(..., c, h, w)`` (any leading dims, e.g. ``(n, c, h, w)`` or ``(n, t, c, h, w)``), on CPU or
CUDA; the work stays on the input's device.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Degradation = Literal["BI", "BD"]

# BD as in the authors' script: x4 only (`2:4:end-2`), Gaussian sigma 1.6.
BD_SCALE = 4
BD_SIGMA = 1.6


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as in MATLAB's ``imresize`` (``cubic``)."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


@functools.lru_cache(maxsize=64)
def bicubic_weight_matrix(in_length: int, out_length: int, scale: float) -> np.ndarray:
    """The ``(out_length, in_length)`` float64 matrix of MATLAB's antialiased bicubic along one axis.

    Follows ``contributions()`` in MATLAB's ``imresize.m``: output pixel ``x`` (1-based) sits at input
    position ``u = x / scale + 0.5 * (1 - 1 / scale)``; when shrinking, the kernel is stretched by
    ``1 / scale`` (antialiasing), each row of weights is normalised to sum to 1, and indices falling off
    the edge are mirrored symmetrically (edge pixel repeated).
    """
    if scale < 1:
        kernel_width = 4.0 / scale

        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * d)
    else:
        kernel_width = 4.0
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left + np.arange(taps)  # 1-based, may fall outside 1..in_length
    weights = kernel(u - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    # symmetric mirror: MATLAB's aux = [1:in, in:-1:1] indexed periodically
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    columns = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], columns.shape)
    np.add.at(matrix, (rows, columns), weights)
    return matrix


def gaussian_kernel_1d(sigma: float = BD_SIGMA) -> tuple[np.ndarray, int]:
    """1-D factor of ``fspecial('gaussian', size, sigma)`` with the scripts' size ``ceil(3 sigma) * 2 + 2``.

    Returns the normalised taps and the offset of the first tap relative to the filtered pixel. The size
    is even (12 for sigma 1.6); ``imfilter`` puts an even kernel's centre at element ``floor((size+1)/2)``
    (1-based), so the taps cover offsets ``-5 .. +6`` for size 12. The 2-D kernel is the outer product
    of this one with itself; ``fspecial``'s zeroing of values below ``eps * max`` never triggers here
    (the smallest 2-D tap is ~7e-6 of the largest).
    """
    size = math.ceil(3 * sigma) * 2 + 2
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-(coords**2) / (2 * sigma**2))
    taps /= taps.sum()
    centre = (size + 1) // 2  # 1-based
    return taps, 1 - centre


@functools.lru_cache(maxsize=64)
def gaussian_sampling_matrix(in_length: int, sigma: float = BD_SIGMA, scale: int = BD_SCALE) -> np.ndarray:
    """The ``(in_length // scale, in_length)`` float64 matrix of BD along one axis.

    Row ``k`` filters at pixel ``1 + scale * k`` (0-based; the script's ``2:4:end-2``) with the Gaussian
    taps, clamping indices at the borders (``'replicate'``). For ``in_length >= 4`` the script keeps
    ``floor(in_length / 4)`` pixels, i.e. exactly ``in_length / 4`` when 4 divides the length.
    """
    taps, first_offset = gaussian_kernel_1d(sigma)
    kept = np.arange(1, in_length - 2, scale)  # 0-based positions of 2:4:end-2
    columns = np.clip(kept[:, None] + first_offset + np.arange(len(taps)), 0, in_length - 1)
    matrix = np.zeros((len(kept), in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(len(kept))[:, None], columns.shape)
    np.add.at(matrix, (rows, columns), np.broadcast_to(taps, columns.shape))
    return matrix


def _apply_separable(x: Tensor, row_matrix: np.ndarray, col_matrix: np.ndarray) -> Tensor:
    """``row_matrix @ x @ col_matrix^T`` over the last two dims of ``x`` (rows first, as MATLAB does)."""
    rows = torch.from_numpy(row_matrix).to(device=x.device, dtype=x.dtype)
    cols = torch.from_numpy(col_matrix).to(device=x.device, dtype=x.dtype)
    return torch.matmul(torch.matmul(rows, x), cols.T)


def round_to_uint8(x: Tensor) -> Tensor:
    """Saturate to 0..255 and round half away from zero, as MATLAB's ``uint8()`` and ``im2uint8`` do.

    ``torch.round`` rounds half to even, which would differ on exact half levels.
    """
    return torch.floor(x.clamp(0, 255) + 0.5).to(torch.uint8)


def _check_uint8(hr: Tensor, name: str) -> None:
    if hr.dtype != torch.uint8:
        raise TypeError(f"{name}: expected a uint8 tensor (..., c, h, w), got {hr.dtype}")
    if hr.dim() < 2:
        raise ValueError(f"{name}: expected at least (h, w) dims, got shape {tuple(hr.shape)}")


def _output_length(in_length: int, scale: float) -> int:
    """MATLAB's ``ceil(scale * in_length)``, ignoring float noise such as ``720 * (1/3) = 240.00000000000003``."""
    exact = in_length * scale
    nearest = round(exact)
    return nearest if math.isclose(exact, nearest, rel_tol=0, abs_tol=1e-9) else math.ceil(exact)


def imresize_bicubic(x: Tensor, scale: float, output_size: tuple[int, int] | None = None) -> Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` with antialiasing, on float images.

    Args:
        x: ``(..., h, w)`` float tensor (e.g. ``(n, c, h, w)`` in [0, 1]); computed in ``x.dtype``.
        scale: MATLAB's factor, output size over input size: ``1/4`` shrinks by 4, ``4`` enlarges.
        output_size: ``(h_out, w_out)``; defaults to ``ceil(scale * (h, w))`` like MATLAB.

    Returns:
        ``(..., h_out, w_out)`` tensor of ``x.dtype``, not clamped (bicubic overshoots slightly).
    """
    if not x.is_floating_point():
        raise TypeError(f"imresize_bicubic: expected a float tensor, got {x.dtype}")
    if scale <= 0:
        raise ValueError(f"imresize_bicubic: scale must be positive, got {scale}")
    h, w = x.shape[-2:]
    out_h, out_w = output_size or (_output_length(h, scale), _output_length(w, scale))
    return _apply_separable(
        x, bicubic_weight_matrix(h, out_h, float(scale)), bicubic_weight_matrix(w, out_w, float(scale))
    )


def crop_to_multiple(hr: Tensor, scale: int) -> tuple[Tensor, bool]:
    """Crop the bottom rows and right columns of ``hr (..., h, w)`` so ``h`` and ``w`` divide by ``scale``.

    Returns the (possibly unchanged) tensor, a view, and whether anything was cropped.
    """
    h, w = hr.shape[-2:]
    new_h, new_w = h - h % scale, w - w % scale
    if new_h == 0 or new_w == 0:
        raise ValueError(f"crop_to_multiple: frame {h}x{w} is smaller than the scale {scale}")
    return hr[..., :new_h, :new_w], (new_h, new_w) != (h, w)


def degrade_bi(hr_uint8: Tensor, scale: int = 4) -> Tensor:
    """BI: ``im2uint8(imresize(im2double(hr), 1/scale, 'bicubic'))``.

    Args:
        hr_uint8: ``(..., c, h, w)`` uint8; ``h`` and ``w`` should divide by ``scale`` (see
            :func:`crop_to_multiple`), otherwise the output is ``ceil(h / scale)`` like MATLAB.
        scale: integer downscaling factor (2, 3, 4 in the benchmarks).

    Returns:
        ``(..., c, ceil(h / scale), ceil(w / scale))`` uint8.
    """
    _check_uint8(hr_uint8, "degrade_bi")
    hr = hr_uint8.to(torch.float64) / 255  # im2double
    h, w = hr.shape[-2:]
    out_size = (math.ceil(h / scale), math.ceil(w / scale))
    return round_to_uint8(imresize_bicubic(hr, 1 / scale, out_size) * 255)


def degrade_bd(hr_uint8: Tensor, scale: int = BD_SCALE, sigma: float = BD_SIGMA) -> Tensor:
    """BD: Gaussian blur (``fspecial('gaussian', 12, 1.6)``, ``'replicate'``), uint8 rounding, ``2:4:end-2``.

    Only the kept pixels are filtered. The blur is separable and the rounding happens once, after both
    passes, so this equals the script's 2-D ``imfilter`` on uint8 followed by the sampling.

    Args:
        hr_uint8: ``(..., c, h, w)`` uint8 with ``h, w >= 4``.
        scale: must be 4; the script samples with a hard-coded stride of 4.
        sigma: Gaussian standard deviation; the kernel size follows as ``ceil(3 sigma) * 2 + 2``.

    Returns:
        ``(..., c, h // 4, w // 4)`` uint8 (``h / 4`` when 4 divides ``h``; otherwise the last
        ``h % 4`` rows are dropped, as the script does).
    """
    _check_uint8(hr_uint8, "degrade_bd")
    if scale != BD_SCALE:
        raise ValueError(
            f"degrade_bd: the authors' BD script is defined for x{BD_SCALE} only (img(2:4:end-2)); "
            f"got scale={scale}. Use degradation 'BI' for other scales."
        )
    h, w = hr_uint8.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"degrade_bd: frame {h}x{w} is smaller than {scale}x{scale}")
    blurred = _apply_separable(
        hr_uint8.to(torch.float64),
        gaussian_sampling_matrix(h, float(sigma), scale),
        gaussian_sampling_matrix(w, float(sigma), scale),
    )
    return round_to_uint8(blurred)


def degrade(hr_uint8: Tensor, kind: Degradation, scale: int = 4) -> Tensor:
    """Apply the named benchmark degradation, ``'BI'`` or ``'BD'``, to uint8 frames ``(..., c, h, w)``."""
    if kind == "BI":
        return degrade_bi(hr_uint8, scale)
    if kind == "BD":
        return degrade_bd(hr_uint8, scale)
    raise ValueError(f"degrade: kind must be 'BI' or 'BD', got {kind!r}")
