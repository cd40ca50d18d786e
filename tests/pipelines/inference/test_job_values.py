"""``jobs/infer.py`` refuses a value it cannot run in one line, before Ray starts and before any frame is
decoded: ``--tile`` against the network family's input constraints, ``--num-workers``, ``--arch``
(argparse's choices: the registry's families)."""

from __future__ import annotations

import numpy as np
import pytest

import vsr_models
from jobs.infer import main
from pipelines.common.config import load_config
from pipelines.data.video_io import FrameWriter
from pipelines.inference.config import InferConfig


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny TTVSR checkpoint, a folder of 64x64 frames and a folder holding one 64x64 video."""
    root = tmp_path_factory.mktemp("infer_values")
    model = vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    checkpoint = vsr_models.save_checkpoint(model, root / "tiny.pt")
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
    with FrameWriter(root / "frames", fps=25) as writer:
        writer.write(frames)
    (root / "videos").mkdir()
    with FrameWriter(root / "videos" / "a.mkv", fps=25) as writer:
        writer.write(frames)
    return {"checkpoint": checkpoint, "frames": root / "frames", "videos": root / "videos"}


@pytest.mark.parametrize(
    ("source", "flags", "message"),
    [
        ("frames", ["--tile", "-2"], "--tile (tile) must be a positive LR tile size, or 0 / none"),
        # TTVSR: multiples of 4 (and of its token size), at least 64 (TTVSRConfig.input_constraints)
        ("frames", ["--tile", "50"], "--tile 50: TTVSR needs a multiple of 4 that is at least 64"),
        ("frames", ["--tile", "32"], "--tile 32: TTVSR needs a multiple of 4 that is at least 64"),
        ("videos", ["--tile", "50"], "--tile 50: TTVSR needs a multiple of 4 that is at least 64"),
        ("videos", ["--num-workers", "0"], "--num-workers must be at least 1"),
        ("videos", ["--gpus-per-worker", "-1"], "--gpus-per-worker must be 0 or more"),
    ],
)
def test_bad_value_is_one_line_before_ray_starts_or_a_frame_is_decoded(
    inputs, tmp_path, capsys, source, flags, message
):
    import ray

    ray.shutdown()  # so that "before Ray starts" is observable; the next test needing Ray starts it again
    out = tmp_path / "out"
    assert main([str(inputs[source]), str(out), "--model", str(inputs["checkpoint"]), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not ray.is_initialized()
    assert not out.exists()


def test_an_unknown_arch_is_refused_listing_the_registry_families_before_ray_starts(inputs, tmp_path, capsys):
    import ray

    ray.shutdown()
    out = tmp_path / "out"
    argv = [
        str(inputs["frames"]),
        str(out),
        "--model",
        str(inputs["checkpoint"]),
        "--quiet",
        "--arch",
        "ttvrs",
    ]
    with pytest.raises(SystemExit) as exit_:  # --arch's choices are the registry's families
        main(argv)
    assert exit_.value.code == 2
    assert "argument --arch: invalid choice: 'ttvrs' (choose from 'ttvsr', 'vsrt')" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not out.exists()


def test_tile_zero_means_whole_frames():
    assert load_config(InferConfig, None, ["tile=0"]).tile is None
    assert load_config(InferConfig, None, ["tile=64"]).tile == 64
