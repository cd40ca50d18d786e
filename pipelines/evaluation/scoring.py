"""Scoring whole clips against bicubic upsampling, with the benchmark conventions.

Scores follow ``docs/benchmarks.md#evaluation-conventions``: per-frame PSNR / SSIM on uint8-quantised
frames (RGB for REDS4 and the sample dataset, the MATLAB Y channel for the BD benchmarks), averaged per
clip, clips averaged (:class:`vsr_models.metrics.MetricAggregator`). Vimeo-90K-T scores only each
septuplet's centre frame. The bicubic baseline is MATLAB's ``imresize(lr, 4, 'bicubic')``
(:func:`pipelines.data.degradations.imresize_bicubic`), the row "Bicubic" of the papers' tables.

How a split is scored (channel, border, centre frame, mirroring, how many clips and frames) is one
:class:`~pipelines.evaluation.protocol.ValidationProtocol`. Used by the training loop (periodic
validation, sharded over Ray Train workers), by tuning's evaluation sweeps and by ``jobs/evaluate.py``
(:mod:`pipelines.evaluation.run`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pipelines.common.errors import DataError
from pipelines.data.degradations import imresize_bicubic
from pipelines.data.ingest import iter_val_clips
from pipelines.data.manifest import PreparedDataset
from pipelines.evaluation.protocol import ValidationProtocol
from vsr_models.frames import float_to_uint8, mirror_extend
from vsr_models.inference import super_resolve
from vsr_models.metrics import MetricAggregator, MetricSummary, frame_metrics

ValClip = tuple[str, Tensor, Tensor]
"""``(clip_id, lr (1, t, 3, h, w), gt (1, t, 3, H, W))`` as :func:`pipelines.data.ingest.iter_val_clips` yields."""
ClipCallback = Callable[[str, Tensor, Tensor, Tensor], None]
"""Called as ``on_clip(clip_id, bicubic, sr, gt)`` with ``(t, 3, H, W)`` frames of each scored clip."""


@dataclass(frozen=True)
class ClipScores:
    """Per-frame scores of one clip, for the model and for bicubic upsampling (plain floats: picklable)."""

    clip_id: str
    psnr: list[float]
    ssim: list[float]
    bicubic_psnr: list[float]
    bicubic_ssim: list[float]


@dataclass(frozen=True)
class EvaluationReport:
    """Dataset and per-clip means for the model and the bicubic baseline, on one channel."""

    channel: str
    model: MetricSummary
    bicubic: MetricSummary

    def metrics(self) -> dict[str, float]:
        """Flat dataset means for logging: ``psnr``, ``ssim``, ``bicubic_psnr``, ``bicubic_ssim``."""
        return {
            "psnr": self.model.psnr,
            "ssim": self.model.ssim,
            "bicubic_psnr": self.bicubic.psnr,
            "bicubic_ssim": self.bicubic.ssim,
        }

    def table(self) -> str:
        """A plain-text table: one row per clip and the mean, channel in the header."""
        channel = self.channel.upper()
        header = (
            f"{'clip':<24} {'frames':>6}  {'bicubic PSNR/SSIM':>18}  {'model PSNR/SSIM':>18}  ({channel})"
        )
        rows = [header, "-" * len(header)]
        for clip_id, scores in self.model.clips.items():
            base = self.bicubic.clips[clip_id]
            rows.append(
                f"{clip_id:<24} {scores.num_frames:>6}  {base.psnr:>9.2f} / {base.ssim:.4f}  "
                f"{scores.psnr:>9.2f} / {scores.ssim:.4f}"
            )
        rows.append("-" * len(header))
        rows.append(
            f"{'mean':<24} {self.model.num_frames:>6}  {self.bicubic.psnr:>9.2f} / {self.bicubic.ssim:.4f}  "
            f"{self.model.psnr:>9.2f} / {self.model.ssim:.4f}"
        )
        return "\n".join(rows)

    def csv(self) -> str:
        """The per-clip table as CSV, one row per clip (no mean row), floats at full precision.

        Columns: ``clip, frames, bicubic_psnr, bicubic_ssim, psnr, ssim, channel`` (``psnr`` / ``ssim``:
        the model's); each value reads back (``float()``) exactly as scored.
        """
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for clip_id, scores in self.model.clips.items():
            base = self.bicubic.clips[clip_id]
            writer.writerow(
                [clip_id, scores.num_frames, base.psnr, base.ssim, scores.psnr, scores.ssim, self.channel]
            )
        return out.getvalue()

    def markdown(self) -> str:
        """The per-clip table as Markdown (PSNR in dB to 2 decimals, SSIM to 4), with the mean row last."""
        channel = self.channel.upper()
        rows = [
            "| clip | frames | bicubic PSNR | bicubic SSIM | model PSNR | model SSIM | channel |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for clip_id, scores in self.model.clips.items():
            base = self.bicubic.clips[clip_id]
            rows.append(
                f"| {_markdown_cell(clip_id)} | {scores.num_frames} | {base.psnr:.2f} | {base.ssim:.4f} | "
                f"{scores.psnr:.2f} | {scores.ssim:.4f} | {channel} |"
            )
        rows.append(
            f"| **mean** | {self.model.num_frames} | {self.bicubic.psnr:.2f} | {self.bicubic.ssim:.4f} | "
            f"{self.model.psnr:.2f} | {self.model.ssim:.4f} | {channel} |"
        )
        return "\n".join(rows) + "\n"


CSV_COLUMNS = ("clip", "frames", "bicubic_psnr", "bicubic_ssim", "psnr", "ssim", "channel")
"""The header of :meth:`EvaluationReport.csv` (``psnr`` / ``ssim``: the model's scores)."""


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def bicubic_upscale(lr: Tensor, scale: int) -> Tensor:
    """MATLAB bicubic x``scale`` of ``(..., 3, h, w)`` frames in [0, 1], clamped back to [0, 1]."""
    return imresize_bicubic(lr, float(scale)).clamp_(0, 1)


STRIP_LABELS = ("bicubic", "output", "ground truth")
LABEL_BAND = 16  # pixel rows above the frames that hold the labels


def image_strip(bicubic: Tensor, sr: Tensor, gt: Tensor) -> np.ndarray:
    """``bicubic | output | ground truth`` of one ``(3, H, W)`` frame, side by side and labelled:
    ``(LABEL_BAND + H, 3W, 3)`` uint8, each panel's name written in the black band above it (what the
    MLflow run's image view shows)."""
    from PIL import Image, ImageDraw, ImageFont

    frames = float_to_uint8(torch.cat([bicubic, sr, gt], dim=-1))
    width = bicubic.shape[-1]
    band = Image.new("RGB", (frames.shape[1], LABEL_BAND))
    draw, font = ImageDraw.Draw(band), ImageFont.load_default(size=LABEL_BAND - 4)
    for panel, label in enumerate(STRIP_LABELS):
        draw.text((panel * width + 3, 1), label, fill=(255, 255, 255), font=font)
    return np.concatenate([np.asarray(band), frames], axis=0)


def score_clips(
    model: nn.Module,
    clips: Iterable[ValClip],
    protocol: ValidationProtocol = ValidationProtocol(),
    *,
    on_clip: ClipCallback | None = None,
) -> list[ClipScores]:
    """Super-resolve each clip whole (``super_resolve`` tiles / chunks as the model needs) and score it
    as ``protocol`` says (its ``split`` and ``max_clips`` are the caller's: they chose ``clips``).

    The scale is read from the shapes (GT width over LR width). Runs on the model's device; scores on
    the CPU in float64. ``protocol.max_frames`` keeps the first frames of each clip (cheaper periodic
    validation); ``protocol.mirror_times`` feeds each clip mirrored (see :func:`super_resolve_mirrored`).
    """
    device = next(model.parameters()).device
    results = []
    for clip_id, lr, gt in clips:
        if protocol.max_frames is not None:
            lr, gt = lr[:, : protocol.max_frames], gt[:, : protocol.max_frames]
        scale = gt.shape[-1] // lr.shape[-1]
        sr = (
            super_resolve_mirrored(
                model, lr.to(device), protocol.mirror_times, chunk=protocol.chunk, scale=scale
            )[0]
            .float()
            .cpu()
        )
        gt, bicubic = gt[0].float().cpu(), bicubic_upscale(lr[0].float().cpu(), scale)
        if protocol.centre_frame_only:
            centre = slice(lr.shape[1] // 2, lr.shape[1] // 2 + 1)
            sr, gt, bicubic = sr[centre], gt[centre], bicubic[centre]
        psnr, ssim = frame_metrics(sr, gt, protocol.crop_border, protocol.channel)
        bicubic_psnr, bicubic_ssim = frame_metrics(bicubic, gt, protocol.crop_border, protocol.channel)
        results.append(
            ClipScores(clip_id, psnr.tolist(), ssim.tolist(), bicubic_psnr.tolist(), bicubic_ssim.tolist())
        )
        if on_clip is not None:
            on_clip(clip_id, bicubic, sr, gt)
    return results


def super_resolve_mirrored(model: nn.Module, lr: torch.Tensor, mirror_times: int, **kwargs) -> torch.Tensor:
    """``super_resolve`` of ``lr`` (n, t, 3, h, w) mirror-extended ``mirror_times`` times, each frame's
    outputs averaged over its copies: the Vimeo-90K-T protocol of the recurrent models (TTVSR: 7 -> 28)."""
    if not mirror_times:
        return super_resolve(model, lr, **kwargs)
    sr = super_resolve(model, mirror_extend(lr, mirror_times), **kwargs)
    positions = mirror_extend(torch.arange(lr.shape[1]).view(1, -1), mirror_times)[0]  # frame of each slot
    copies = torch.zeros(lr.shape[1], positions.numel(), dtype=sr.dtype, device=sr.device)
    copies[positions, torch.arange(positions.numel())] = 1.0
    copies /= copies.sum(dim=1, keepdim=True)
    return torch.einsum("fs,nschw->nfchw", copies, sr)


def summarise(scores: Iterable[ClipScores], channel: str) -> EvaluationReport:
    """Aggregate clip scores (possibly gathered from several workers) like the benchmark tables."""
    model, bicubic = MetricAggregator(), MetricAggregator()
    for clip in sorted(scores, key=lambda c: c.clip_id):
        model.add(clip.clip_id, clip.psnr, clip.ssim)
        bicubic.add(clip.clip_id, clip.bicubic_psnr, clip.bicubic_ssim)
    return EvaluationReport(channel, model.summary(), bicubic.summary())


def evaluate(
    model: nn.Module, dataset: PreparedDataset, protocol: ValidationProtocol = ValidationProtocol()
) -> EvaluationReport:
    """Evaluate ``model`` on every clip of ``protocol.split`` of an opened dataset
    (:func:`pipelines.data.manifest.open_dataset`; its first ``protocol.max_clips``) against bicubic
    upsampling, scored as ``protocol`` says."""
    clips = iter_val_clips(dataset, split=protocol.split, max_clips=protocol.max_clips)
    scores = score_clips(model, clips, protocol)
    if not scores:
        raise DataError(
            f"{dataset.root}: split {protocol.split!r} has no clips to evaluate; choose another --split"
        )
    return summarise(scores, protocol.channel)
