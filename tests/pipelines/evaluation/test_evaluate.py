"""Evaluation against bicubic on whole clips: scores, channels, sharding, the table, model loading."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from torch import nn

from jobs.evaluate import main
from pipelines.common.errors import DataError
from pipelines.data.degradations import imresize_bicubic
from pipelines.evaluation.config import EvaluationConfig
from pipelines.evaluation.protocol import ValidationProtocol
from pipelines.evaluation.run import run_evaluation
from pipelines.evaluation.scoring import (
    CSV_COLUMNS,
    LABEL_BAND,
    bicubic_upscale,
    image_strip,
    score_clips,
    summarise,
)
from pipelines.inference.loading import load_model
from vsr_models import build_model, save_checkpoint


class BicubicModel(nn.Module):
    """A stand-in network that answers with MATLAB bicubic x4: it must score exactly like the baseline."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # score_clips reads the device from a parameter

    def forward(self, lr):
        return bicubic_upscale(lr, 4)


def make_clips(count: int, frames: int = 3, seed: int = 0):
    """``(clip_id, lr, gt)`` of smooth random frames, LR made with MATLAB bicubic /4 (BI)."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for i in range(count):
        coarse = torch.rand(frames, 3, 16, 16, generator=generator)
        gt = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
        lr = imresize_bicubic(gt, 0.25).clamp(0, 1)
        clips.append((f"clip{i}", lr[None], gt[None]))
    return clips


def test_image_strip_is_bicubic_output_and_ground_truth_side_by_side():
    frames = [torch.full((3, 4, 5), v) for v in (0.0, 0.5, 1.0)]
    strip = image_strip(*frames)[LABEL_BAND:]  # below the labels
    assert strip.shape == (4, 15, 3) and strip.dtype.name == "uint8"
    assert (strip[:, :5] == 0).all() and (strip[:, 5:10] == 128).all() and (strip[:, 10:] == 255).all()


def test_image_strip_labels_each_panel_above_it():
    from PIL import Image, ImageDraw, ImageFont

    frames = [torch.full((3, 32, 96), 0.5) for _ in range(3)]
    strip = image_strip(*frames)
    assert strip.shape == (LABEL_BAND + 32, 288, 3)
    band = strip[:LABEL_BAND]
    font = ImageFont.load_default(size=LABEL_BAND - 4)
    for panel, label in enumerate(("bicubic", "output", "ground truth")):
        expected = Image.new("RGB", (96, LABEL_BAND))
        ImageDraw.Draw(expected).text((3, 1), label, fill=(255, 255, 255), font=font)
        written = band[:, panel * 96 : (panel + 1) * 96]
        assert written.max() == 255 and np.array_equal(written, np.asarray(expected)), label


def test_a_bicubic_model_scores_exactly_the_bicubic_baseline():
    report = summarise(score_clips(BicubicModel(), make_clips(2)), "rgb")
    assert report.model.psnr == report.bicubic.psnr and report.model.ssim == report.bicubic.ssim
    assert list(report.model.clips) == ["clip0", "clip1"]
    assert report.model.clips["clip0"].num_frames == 3
    assert 20 < report.bicubic.psnr < 60 and 0.5 < report.bicubic.ssim <= 1


def test_centre_frame_only_and_max_frames_select_the_scored_frames():
    clips = make_clips(1, frames=7)
    report = summarise(score_clips(BicubicModel(), clips, ValidationProtocol(centre_frame_only=True)), "y")
    assert report.model.clips["clip0"].num_frames == 1
    report = summarise(score_clips(BicubicModel(), clips, ValidationProtocol(max_frames=2)), "y")
    assert report.model.clips["clip0"].num_frames == 2


def test_y_channel_scores_differ_from_rgb_and_the_table_says_which():
    clips = make_clips(2)
    rgb = summarise(score_clips(BicubicModel(), clips, ValidationProtocol(channel="rgb")), "rgb")
    y = summarise(score_clips(BicubicModel(), clips, ValidationProtocol(channel="y")), "y")
    assert y.bicubic.psnr != pytest.approx(rgb.bicubic.psnr, abs=1e-3)
    header, _, first, second, _, mean = y.table().splitlines()
    assert "(Y)" in header
    assert first.split()[:2] == ["clip0", "3"] and second.split()[:2] == ["clip1", "3"]
    assert mean.split() == [
        "mean",
        "6",
        f"{y.bicubic.psnr:.2f}",
        "/",
        f"{y.bicubic.ssim:.4f}",
        f"{y.model.psnr:.2f}",
        "/",
        f"{y.model.ssim:.4f}",
    ]


def test_csv_reads_back_every_clip_exactly_and_markdown_adds_the_mean_row():
    report = summarise(score_clips(BicubicModel(), make_clips(2)), "y")
    rows = list(csv.DictReader(io.StringIO(report.csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["clip"] for row in rows] == ["clip0", "clip1"]
    for row in rows:
        model, base = report.model.clips[row["clip"]], report.bicubic.clips[row["clip"]]
        assert int(row["frames"]) == model.num_frames and row["channel"] == "y"
        assert (float(row["psnr"]), float(row["ssim"])) == (model.psnr, model.ssim)
        assert (float(row["bicubic_psnr"]), float(row["bicubic_ssim"])) == (base.psnr, base.ssim)
    header, rule, *clips, mean = report.markdown().strip().splitlines()
    assert "bicubic PSNR" in header and rule.startswith("|---") and len(clips) == 2
    cells = [cell.strip() for cell in mean.strip("|").split("|")]
    assert cells == [
        "**mean**",
        "6",
        f"{report.bicubic.psnr:.2f}",
        f"{report.bicubic.ssim:.4f}",
        f"{report.model.psnr:.2f}",
        f"{report.model.ssim:.4f}",
        "Y",
    ]


def test_clips_shared_over_workers_merge_to_the_single_worker_result():
    clips = make_clips(3)
    shards = [score_clips(BicubicModel(), clips[rank::2]) for rank in (1, 0)]  # iter_val_clips' shares
    merged = summarise([c for shard in shards for c in shard], "rgb")
    assert merged == summarise(score_clips(BicubicModel(), clips), "rgb")


def test_a_checkpoint_folder_or_file_loads_and_a_missing_one_says_what_to_pass(tmp_path):
    model = build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    save_checkpoint(model, tmp_path / "checkpoint_00000006" / "model.pt")
    for source in (tmp_path / "checkpoint_00000006", tmp_path / "checkpoint_00000006" / "model.pt"):
        loaded = load_model(str(source))
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="models:/<name>@<alias>"):
        load_model(str(tmp_path / "nothing"))


def test_evaluating_without_a_prepared_dataset_names_the_prepare_command(tmp_path):
    with pytest.raises(DataError, match="jobs/prepare_data.py --dataset sample"):
        run_evaluation(EvaluationConfig(model=str(tmp_path), data=str(tmp_path / "missing")))


def test_an_unknown_registered_model_is_one_error_line_not_a_traceback(
    tiny_prepared_dataset, mlflow_uri, ray_local, capsys
):
    argv = [
        "--model",
        "models:/nosuch@champion",
        "--data",
        str(tiny_prepared_dataset),
        "--mlflow-uri",
        mlflow_uri,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # (MLflow logs its store creation to stderr first)
    assert err.splitlines()[-1].startswith("error: cannot load model models:/nosuch@champion")
    assert "Traceback" not in err


class _FrameIndexModel(torch.nn.Module):
    """x4 nearest upsampling plus, on every output, the slot's position in the sequence / 100."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, lr):
        up = lr.repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)
        slot = torch.arange(lr.shape[1], dtype=lr.dtype).view(1, -1, 1, 1, 1) / 100
        return up + slot + self.anchor


def test_mirrored_inference_averages_each_frame_over_its_copies():
    from pipelines.evaluation.scoring import super_resolve_mirrored

    lr = torch.rand(1, 7, 3, 8, 8)
    model = _FrameIndexModel()
    plain = super_resolve_mirrored(model, lr, 0)
    mirrored = super_resolve_mirrored(model, lr, 2)  # 28 slots: frame f sits at f, 13-f, 14+f, 27-f
    assert mirrored.shape == plain.shape == (1, 7, 3, 32, 32)
    for frame in range(7):
        slots = [frame, 13 - frame, 14 + frame, 27 - frame]
        expected = plain[:, frame] - frame / 100 + sum(slots) / len(slots) / 100
        torch.testing.assert_close(mirrored[:, frame], expected)
