"""The overlapped decode / model / encode pipeline, precision, per-frame progress and the tile chosen for
large frames."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from media import NearestUpscaler, write_clip

import vsr_models
from pipelines.common.errors import ConfigError
from pipelines.inference import memory, pipeline, video
from pipelines.inference.pipeline import FrameProgress, resolve_precision, run_overlapped, with_precision


def test_overlapped_stages_run_in_their_own_threads_in_window_order():
    seen = {"decode": set(), "model": set(), "encode": set()}
    encoded = []

    def stage(name, result):
        seen[name].add(threading.current_thread().name)
        return result

    run_overlapped(
        range(6),
        lambda window: stage("decode", window * 10),
        lambda window, decoded: stage("model", decoded + 1),
        lambda window, out: encoded.append(stage("encode", (window, out))),
    )

    assert encoded == [(w, w * 10 + 1) for w in range(6)]
    assert seen == {"decode": {"decode"}, "model": {threading.current_thread().name}, "encode": {"encode"}}


def test_an_error_in_the_decoder_stops_the_pipeline_and_is_raised():
    def decode(window):
        if window == 3:
            raise ValueError("frame 3 is damaged")
        return window

    encoded = []
    with pytest.raises(ValueError, match="frame 3 is damaged"):
        run_overlapped(range(100), decode, lambda w, x: x, lambda w, x: encoded.append(x))
    assert encoded == list(range(len(encoded))) and len(encoded) <= 3  # the output is aborted anyway
    assert {t.name for t in threading.enumerate()} & {"decode", "encode", "progress"} == set()


def test_auto_precision_is_bf16_only_on_native_hardware(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not pipeline.cpu_has_native_bf16(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert pipeline.cpu_has_native_bf16(str(cpuinfo))

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(ConfigError, match="--precision 'half'"):
        resolve_precision("half", torch.device("cpu"))


def test_bf16_output_is_close_to_fp32_and_float32():
    model = vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    lr = torch.rand(1, 3, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        fp32 = model.eval()(lr)
        bf16 = with_precision(model, "bf16")(lr)

    assert bf16.dtype == torch.float32
    psnr = 10 * torch.log10(1 / torch.mean((bf16.clamp(0, 1) - fp32.clamp(0, 1)) ** 2))
    assert psnr > 35


def test_progress_prints_every_frame_with_rate_and_eta():
    stream = io.StringIO()
    report = FrameProgress("clip.mp4", 3, stream=stream, interval=0)

    for done in (1, 2, 3):
        report(done, 3)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("clip.mp4: 1/3 frames (33%), ") and " frames/s, ETA " in lines[0]


def test_super_resolve_video_reports_each_frame(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=7, audio=None)
    calls = []

    video.super_resolve_video(
        NearestUpscaler(),
        clip,
        tmp_path / "out.mkv",
        chunk=4,
        chunk_overlap=1,
        progress=lambda d, t: calls.append((d, t)),
    )

    assert calls == [(done, 7) for done in range(1, 8)]


def test_a_1080p_input_without_tile_gets_a_tile_that_fits_the_device():
    model = vsr_models.build_model("ttvsr")  # the paper's size: mid 64, widest convolution 256 channels
    cpu = torch.device("cpu")

    choice = memory.choose_tile(model, (1080, 1920), 30, cpu, free=64 * 2**30)

    assert choice.tile is not None and choice.tile % 4 == 0 and 64 <= choice.tile < 1080
    assert choice.needed <= memory.BUDGET * 64 * 2**30
    bigger = memory.call_bytes(memory.network_width(model), memory.TILE_BATCH * (choice.tile + 4) ** 2, 30)
    assert bigger > memory.BUDGET * 64 * 2**30  # the largest tile that fits
    assert "tiles of" in choice.note and "--tile" in choice.note
    assert memory.choose_tile(model, (180, 320), 30, cpu, free=64 * 2**30).tile is None


def test_a_1080p_input_that_cannot_fit_stops_with_one_line_naming_tile(tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "in.mkv", num_frames=1, size=(1080, 1920), audio=None)
    monkeypatch.setattr(memory, "free_memory", lambda device: 2**24)  # a 16 MiB device
    model = vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    called = []
    model.register_forward_pre_hook(lambda *args: called.append(1))

    with pytest.raises(ConfigError, match=r"^1920x1080 frames do not fit cpu: .* --tile 64") as error:
        video.super_resolve_video(model, clip, tmp_path / "out.mkv", progress=False)

    assert "\n" not in str(error.value) and not called
    assert not (tmp_path / "out.mkv").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]
    assert np.isfinite(memory.call_bytes(8, 1, 1))
