"""Straightforward NumPy re-implementations of the authors' MATLAB degradation scripts.

Oracles for ``pipelines/data/degradations.py``: ``tests/pipelines/data/test_degradations.py`` checks the
library against them and ``bench/bench_degradations.py`` times the library against them. They are
written independently of the library and as literally as possible, with loops instead of matrices, so
that an error in the library's vectorisation cannot hide in both:

- ``imresize_reference``: MATLAB ``imresize`` (``contributions()`` then one axis at a time, rows first),
  a loop over every output pixel.
- ``imfilter_replicate_reference``: MATLAB ``imfilter(uint8, kernel, 'replicate')``, an explicit 2-D
  correlation over all kernel taps on the whole frame.

Images here are ``(h, w, c)`` NumPy arrays, MATLAB's layout.

They live in ``bench/`` because both use them and ``bench/`` is the one place both may import: they are
yardsticks, not the library's business (nothing in ``pipelines/`` runs them, and a second, slow copy of
the degradations there would invite using it), and ``bench/`` must not import from ``tests/``
(``tests/test_layers.py``). The tests import them as ``bench.reference_degradations``; the bench
scripts, run as ``python bench/<script>.py``, as ``reference_degradations``.
"""

from __future__ import annotations

import math

import numpy as np


def matlab_cubic(x: float) -> float:
    absx = abs(x)
    if absx <= 1:
        return 1.5 * absx**3 - 2.5 * absx**2 + 1
    if absx <= 2:
        return -0.5 * absx**3 + 2.5 * absx**2 - 4 * absx + 2
    return 0.0


def matlab_contributions(in_length: int, out_length: int, scale: float) -> tuple[list, list]:
    """Per output pixel: the 0-based input indices and normalised weights, MATLAB's ``contributions()``."""
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    taps = math.ceil(kernel_width) + 2
    mirror = list(range(1, in_length + 1)) + list(range(in_length, 0, -1))
    all_indices, all_weights = [], []
    for x in range(1, out_length + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kernel_width / 2)
        indices, weights = [], []
        for j in range(taps):
            index = left + j
            distance = u - index
            weight = scale * matlab_cubic(scale * distance) if antialias else matlab_cubic(distance)
            indices.append(mirror[(index - 1) % len(mirror)] - 1)
            weights.append(weight)
        total = sum(weights)
        all_indices.append(indices)
        all_weights.append([weight / total for weight in weights])
    return all_indices, all_weights


def _resize_rows(img: np.ndarray, out_rows: int, scale: float) -> np.ndarray:
    indices, weights = matlab_contributions(img.shape[0], out_rows, scale)
    out = np.zeros((out_rows,) + img.shape[1:], dtype=np.float64)
    for i in range(out_rows):
        row_weights = np.asarray(weights[i])
        for j in range(img.shape[1]):
            out[i, j] = row_weights @ img[indices[i], j]
    return out


def imresize_reference(
    img: np.ndarray, scale: float, output_size: tuple[int, int] | None = None
) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` on a float ``(h, w, c)`` image, rows first."""
    h, w = img.shape[:2]
    out_h, out_w = output_size or (math.ceil(h * scale), math.ceil(w * scale))
    rows_done = _resize_rows(img.astype(np.float64), out_h, scale)
    return _resize_rows(rows_done.swapaxes(0, 1), out_w, scale).swapaxes(0, 1)


def im2uint8_reference(img: np.ndarray) -> np.ndarray:
    """MATLAB ``im2uint8`` of a double image: saturate, scale by 255, round half away from zero."""
    return np.floor(np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def degrade_bi_reference(hr: np.ndarray, scale: int) -> np.ndarray:
    """``im2uint8(imresize(im2double(hr), 1/scale, 'bicubic'))`` for uint8 ``(h, w, c)``."""
    out_size = (math.ceil(hr.shape[0] / scale), math.ceil(hr.shape[1] / scale))
    return im2uint8_reference(imresize_reference(hr / 255.0, 1 / scale, out_size))


def fspecial_gaussian_reference(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: the full 2-D kernel."""
    half = (size - 1) / 2
    y, x = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def imfilter_replicate_reference(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB ``imfilter(uint8 img, kernel, 'replicate')``: 2-D correlation, then round and saturate."""
    size_y, size_x = kernel.shape
    centre_y, centre_x = (size_y + 1) // 2 - 1, (size_x + 1) // 2 - 1  # 0-based centre element
    h, w = img.shape[:2]
    padded = np.pad(
        img.astype(np.float64),
        ((centre_y, size_y - 1 - centre_y), (centre_x, size_x - 1 - centre_x), (0, 0)),
        mode="edge",
    )
    out = np.zeros(img.shape, dtype=np.float64)
    for dy in range(size_y):
        for dx in range(size_x):
            out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def degrade_bd_reference(hr: np.ndarray, sigma: float = 1.6) -> np.ndarray:
    """The authors' BD script on uint8 ``(h, w, c)``: Gaussian blur, then ``img(2:4:end-2, 2:4:end-2, :)``."""
    size = math.ceil(3 * sigma) * 2 + 2
    blurred = imfilter_replicate_reference(hr, fspecial_gaussian_reference(size, sigma))
    h, w = hr.shape[:2]
    # 1-based 2:4:end-2 -> 0-based 1, 5, ... up to h - 3 inclusive
    return blurred[1 : h - 2 : 4, 1 : w - 2 : 4]
