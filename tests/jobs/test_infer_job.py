"""jobs/infer.py: the command line over pipelines.inference (help, a real run, clear errors)."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, opencv_video

import vsr_models
from jobs.infer import main
from pipelines.data.video_io import FrameWriter, open_frames


def test_help_lists_model_sources_and_options():
    result = subprocess.run(
        [sys.executable, "jobs/infer.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    for option in ("--model", "--official", "--arch", "--tile", "--chunk", "--scale-check", "--set"):
        assert option in result.stdout
    for option in (
        "--precision",
        "--codec",
        "--crf",
        "--preset",
        "--pix-fmt",
        "--no-audio",
        "--start",
        "--end",
    ):
        assert option in result.stdout
    for option in ("--outscale", "--outscale-filter", "--fps"):
        assert option in result.stdout


def test_checkpoint_run_writes_4x_video_and_passes_scale_check(tmp_path, capsys):
    frames = open_frames(opencv_video("tree.avi")).read(0, 3)
    small = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(64, 64), mode="area")
    with FrameWriter(tmp_path / "in.mkv", fps=15) as writer:
        writer.write(small.round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    model = vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    checkpoint = vsr_models.save_checkpoint(model, tmp_path / "tiny.pt")

    code = main(
        [str(tmp_path / "in.mkv"), str(tmp_path / "out.mp4"), "--model", str(checkpoint), "--chunk", "2"]
        + ["--set", "chunk_overlap=1", "--scale-check", "--quiet"]
    )

    assert code == 0
    out = open_frames(tmp_path / "out.mp4")
    assert (out.info.num_frames, out.info.height, out.info.width) == (3, 256, 256)
    assert "3 frames 64x64 -> 256x256" in capsys.readouterr().out


def test_missing_input_exits_2_naming_it(tmp_path, capsys):
    code = main(
        [str(tmp_path / "missing.mp4"), str(tmp_path / "out.mp4"), "--model", "models:/ttvsr@champion"]
    )

    assert code == 2
    assert f"error: input {tmp_path / 'missing.mp4'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_config_typo_and_official_without_arch_are_rejected(tmp_path, capsys):
    video = opencv_video("tree.avi")
    assert main([str(video), str(tmp_path / "o.mp4"), "--model", "m.pt", "--set", "chunks=3"]) == 2
    assert "chunks" in capsys.readouterr().err
    assert main([str(video), str(tmp_path / "o.mp4"), "--official", "TTVSR_REDS.pth"]) == 2
    assert "--official needs --arch" in capsys.readouterr().err


def test_output_that_is_the_input_is_refused_with_one_line_and_the_input_kept(tmp_path, capsys):
    source = tmp_path / "in.mkv"
    with FrameWriter(source, fps=15) as writer:
        writer.write(torch.zeros(2, 64, 64, 3, dtype=torch.uint8).numpy())
    original = source.read_bytes()
    (tmp_path / "link.mkv").symlink_to(source)

    for out in (source, tmp_path / "link.mkv"):
        code = main([str(source), str(out), "--model", "models:/ttvsr@champion", "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1
        assert err.startswith(f"error: output {out} is the input {source}") and "--overwrite never" in err
    assert source.read_bytes() == original
