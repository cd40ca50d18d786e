"""A video keeps everything but its resolution: other streams, timing, colour, bit depth; flags people expect.

Media are generated with PyAV (tests/pipelines/inference/media.py) or are opencv-doc's real files; the
network repeats pixels (``NearestUpscaler``), so flat colours keep their exact values through it.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import opencv_video, tiny_tmpfs
from media import (
    NTSC,
    NearestUpscaler,
    duration,
    first_frame_planes,
    packet_count,
    stream_codecs,
    write_clip,
)

from pipelines.common.errors import ConfigError, OutputExistsError
from pipelines.inference import encode, streams, video


def run(in_path, out_path, **options):
    options.setdefault("progress", False)
    options.setdefault("chunk", 6)
    return video.super_resolve_video(NearestUpscaler(), in_path, out_path, **options)


def test_audio_and_subtitle_streams_are_copied_and_the_duration_kept(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=12, audio="aac", subtitles=True)

    run(clip, tmp_path / "out.mkv")

    out = tmp_path / "out.mkv"
    assert stream_codecs(out) == [("video", "ffv1"), *stream_codecs(clip)[1:]]
    assert [kind for kind, _ in stream_codecs(clip)] == ["video", "audio", "subtitle"]
    assert packet_count(out, "audio") == packet_count(clip, "audio")
    assert packet_count(out, "subtitle") == 1
    assert abs(duration(out) - duration(clip)) <= 1 / NTSC


def test_audio_the_container_cannot_hold_is_reencoded_and_said(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=12, audio="pcm_s16le", subtitles=True)

    summary = run(clip, tmp_path / "out.mp4", codec="h264")

    assert stream_codecs(tmp_path / "out.mp4") == [("video", "h264"), ("audio", "aac")]
    assert any("(pcm_s16le) cannot go into .mp4 as is: re-encoded to AAC" in note for note in summary.notes)
    assert any(
        "subtitle stream 2" in note and "cannot go into .mp4: dropped" in note for note in summary.notes
    )
    assert abs(duration(tmp_path / "out.mp4") - duration(clip)) <= 1 / NTSC + 0.03  # AAC frames: 21 ms


def test_no_audio_drops_audio_and_subtitles(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=6, subtitles=True)

    run(clip, tmp_path / "out.mkv", no_audio=True)

    assert stream_codecs(tmp_path / "out.mkv") == [("video", "ffv1")]


def test_ntsc_rate_and_frame_times_are_exact(tmp_path):
    clip = write_clip(tmp_path / "in.mp4", num_frames=10, codec="libx264", audio=None)

    run(clip, tmp_path / "out.mp4")

    with av.open(str(tmp_path / "out.mp4")) as out:
        stream = out.streams.video[0]
        assert stream.average_rate == Fraction(30000, 1001)
        times = sorted(float(p.pts * p.time_base) for p in out.demux(stream) if p.size)
    assert np.allclose(times, [i * 1001 / 30000 for i in range(10)], atol=1e-4)


def test_start_and_end_select_frames_and_trim_audio(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=30, audio="aac")

    summary = run(clip, tmp_path / "out.mkv", start="5f", end=f"{15 * 1001 / 30000:.4f}")

    assert summary.num_frames == 10
    with av.open(str(tmp_path / "out.mkv")) as out:
        frames = sum(1 for _ in out.decode(video=0))
    assert frames == 10
    assert abs(duration(tmp_path / "out.mkv") - 10 / NTSC) <= 1 / NTSC + 0.03
    with pytest.raises(ConfigError, match="select no frame"):
        run(clip, tmp_path / "none.mkv", start="40f")


@pytest.mark.parametrize(("matrix", "name"), [(6, "smpte170m"), (1, "bt709")])
def test_bt601_and_bt709_inputs_keep_their_tags_and_colours(tmp_path, matrix, name):
    # A colour inside both gamuts that BT.601 and BT.709 decode 10 levels of red apart.
    yuv = (100, 100, 180)
    clip = write_clip(tmp_path / "in.mkv", num_frames=3, yuv=yuv, matrix=matrix, audio=None)

    summary = run(clip, tmp_path / "out.mp4", codec="h264", crf=0, preset="ultrafast")

    frame, planes = first_frame_planes(tmp_path / "out.mp4")
    with av.open(str(tmp_path / "out.mp4")) as out:
        context = out.streams.video[0].codec_context
        tags = (context.colorspace, context.color_primaries, context.color_trc, context.color_range)
    assert tags == (matrix, matrix, matrix, 1)
    assert [abs(int(np.median(plane)) - value) <= 1 for plane, value in zip(planes, yuv)] == [True] * 3
    assert (frame.width, frame.height) == (256, 256)
    assert f"colour: {name}/{name}/{name} tv 8-bit" in summary.notes[-1]


def test_a_10_bit_input_is_written_with_10_bits(tmp_path):
    yuv = (401, 451, 561)  # 10-bit samples, not multiples of 4 (8 bits would lose them), inside the gamut
    clip = write_clip(tmp_path / "in.mkv", num_frames=3, pix_fmt="yuv420p10le", yuv=yuv, matrix=1, audio=None)

    run(clip, tmp_path / "out.mkv", pix_fmt="yuv420p10le")
    summary = run(clip, tmp_path / "out.mp4", codec="h264", crf=0, preset="ultrafast")
    reduced = run(clip, tmp_path / "out.webm", codec="vp9")

    frame, planes = first_frame_planes(tmp_path / "out.mkv")
    assert frame.format.name == "yuv420p10le"
    assert [int(np.median(plane)) for plane in planes] == pytest.approx(yuv, abs=1)
    assert [abs(int(np.median(plane)) - value) <= 1 for plane, value in zip(planes, yuv)] == [True] * 3
    assert first_frame_planes(tmp_path / "out.mp4")[0].format.name == "yuv420p10le"
    assert "16-bit" not in summary.notes[-1] and "10-bit" in summary.notes[-1]
    assert any("reduced to 8-bit" in note for note in reduced.notes)


def test_tree_avi_comes_out_as_long_as_it_plays(tmp_path):
    tree = opencv_video("tree.avi")  # header: 444 frames at 15 fps; the file: 68 frames over 29.6 s

    summary = run(tree, tmp_path / "tree.mkv", chunk=17, outscale=1, outscale_filter="area")

    assert summary.num_frames == 68
    assert abs(duration(tmp_path / "tree.mkv") - duration(tree)) <= 1 / 15
    assert abs(duration(tmp_path / "tree.mkv") - 29.6) <= 1 / 15
    assert any("declares 444 frames" in note and "68 frames over 29.60 s" in note for note in summary.notes)


def test_megamind_bugy_frames_with_disordered_timestamps_keep_the_file_length(tmp_path):
    bugy = opencv_video("Megamind_bugy.avi")  # 270 frames at 30 fps; decoded timestamps come out of order

    source = streams.open_source(bugy)
    reader = streams.SourceReader(source)
    # The writer times the frames; the network does not touch timing, so the LR frames stand in for the
    # x4 ones (4x 720x528 frames through the whole job take minutes on 2 CPUs).
    writer = encode.VideoFileWriter(tmp_path / "bugy.mkv", source, encode.EncodeSettings())
    for start in range(0, 270, 30):
        writer.write(reader.read(start, start + 30), list(range(start, start + 30)))
    writer.close()
    reader.close()

    assert len(source.times) == 270 and source.times == sorted(set(source.times))
    assert abs(duration(tmp_path / "bugy.mkv") - duration(bugy)) <= 1 / 30
    assert abs(duration(tmp_path / "bugy.mkv") - 9.0) <= 1 / 30
    assert reader.untimed > 100 and "out of display order" in reader.notes()[0]
    assert stream_codecs(tmp_path / "bugy.mkv") == [("video", "ffv1")]


def test_an_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=2, audio=None)
    original = clip.read_bytes()
    os.link(clip, tmp_path / "hard.mkv")
    (tmp_path / "soft.mkv").symlink_to(clip)

    for out in (clip, tmp_path / "hard.mkv", tmp_path / "soft.mkv", tmp_path / "." / "in.mkv"):
        with pytest.raises(OutputExistsError, match="is the input .*--overwrite never replaces an input"):
            run(clip, out, overwrite=True)
    assert clip.read_bytes() == original


def test_outscale_resizes_with_the_named_filter(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=2, size=(64, 96), audio=None)

    summary = run(clip, tmp_path / "out.mkv", outscale=2, outscale_filter="bicubic")

    assert summary.sr_size == (128, 192)
    assert first_frame_planes(tmp_path / "out.mkv")[0].width == 192
    with pytest.raises(ConfigError, match="outscale-filter"):
        run(clip, tmp_path / "bad.mkv", outscale=2, outscale_filter="sharp")


def test_fps_gives_a_constant_rate_of_the_same_length(tmp_path):
    clip = write_clip(tmp_path / "in.mkv", num_frames=10, audio=None)

    run(clip, tmp_path / "out.mkv", fps="15")

    with av.open(str(tmp_path / "out.mkv")) as out:
        frames = sum(1 for _ in out.decode(video=0))
    assert frames == 6  # 10 frames at 29.97 fps last 0.3337 s: 6 slots of 1/15 s start inside it
    assert abs(duration(tmp_path / "out.mkv") - duration(clip)) <= 1 / 15 + 0.001  # Matroska's ms


@pytest.mark.parametrize(
    ("text", "expected"), [("12.5", 12.5), ("1:02.5", 62.5), ("1:00:00", 3600.0), ("300f", 300), (None, None)]
)
def test_positions_are_seconds_or_frames(text, expected):
    assert streams.parse_position(text) == expected


@pytest.mark.parametrize("output", ["out.mkv", "frames"])
def test_full_disk_while_writing_the_output_is_one_line_naming_it_and_leaves_no_temporary_file(
    tmp_path, output
):
    from pipelines.common.errors import VideoError
    from pipelines.data.video_io import FrameWriter

    clip = write_clip(tmp_path / "in.mkv", num_frames=8, audio=None)
    source = streams.open_source(clip)
    # 8 frames of 256x256 noise: 1.5 MB that neither FFV1 nor PNG can shrink
    noise = np.random.default_rng(0).integers(0, 256, (8, 256, 256, 3), np.uint8)
    with tiny_tmpfs(tmp_path / "full", "the output below is 1.5 MB of noise") as full:
        out = full / output
        if output == "frames":  # a folder of PNG frames (FrameWriter, also what infer writes for folders)
            writer = FrameWriter(out, 25.0)
            write = lambda i: writer.write(noise[i : i + 1])  # noqa: E731
        else:
            writer = encode.VideoFileWriter(out, source, encode.EncodeSettings())
            write = lambda i: writer.write(noise[i : i + 1], [i])  # noqa: E731
        with pytest.raises(VideoError) as full_disk:
            for i in range(8):
                write(i)
            writer.close()
        message = str(full_disk.value)
        assert "\n" not in message and message.startswith(f"no space left on the device while writing {out}:")
        assert list(full.iterdir()) == []  # no output, and no hidden partial one
