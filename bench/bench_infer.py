"""Video inference speed: model-only against end-to-end frames/s, fp32 against bf16, and what bf16 costs.

For each LR size and precision, on a real clip (opencv-doc's Megamind.avi, resized to the LR size):

- model only: the same temporal windows as the job, already decoded, through ``super_resolve``;
- end to end: ``super_resolve_video`` (decode thread, model, encode thread overlapped) to an H.264 .mp4;
- decode and encode alone, to give their shares of the work the overlap hides;
- bf16's cost: PSNR of the bf16 output against the fp32 output of the same network.

    python bench/bench_infer.py                          # CPU; CUDA too when present
    python bench/bench_infer.py --mid-channels 64 --blocks 30 --frames 30   # the paper's TTVSR

A random-initialised TTVSR unless ``--checkpoint`` names trained weights (a trained network's bf16 cost is
the one to quote; random weights give the same speed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

import vsr_models
from pipelines.inference.colour import from_unit_float, to_unit_float
from pipelines.inference.encode import EncodeSettings, VideoFileWriter
from pipelines.inference.pipeline import cpu_has_native_bf16, with_precision
from pipelines.inference.streams import SourceReader, open_source
from pipelines.inference.video import super_resolve_video, temporal_windows
from vsr_models.inference import super_resolve

REAL_CLIP = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")


def make_clip(path: Path, size: tuple[int, int], frames: int) -> Path:
    """The first ``frames`` frames of the real clip resized to ``size`` (h, w), with its audio, as .mkv."""
    with av.open(str(REAL_CLIP)) as source, av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=source.streams.video[0].average_rate)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index == frames:
                break
            small = frame.reformat(size[1], size[0], format="yuv420p", interpolation="AREA")
            small.pts = None
            out.mux(stream.encode(small))
        out.mux(stream.encode())
    return path


def model_only(network, reader_frames: np.ndarray, windows, device) -> tuple[float, np.ndarray]:
    """Seconds for the windows through the network alone, and the uint8 output frames."""
    outputs = []
    start = time.perf_counter()
    for begin, stop, kept in windows:
        sr = super_resolve(network, to_unit_float(reader_frames[begin:stop]).to(device), scale=4)[0]
        outputs.append(from_unit_float(sr[[f - begin for f in kept]], False))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, np.concatenate(outputs)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="180x320,360x640", help="LR sizes HxW")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--chunk", type=int, default=6)
    parser.add_argument("--mid-channels", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2, help="extraction and propagation blocks")
    parser.add_argument("--checkpoint", help="trained weights instead of a random TTVSR")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--preset", default="medium", help="x264 preset of the end-to-end output")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        network = vsr_models.load_checkpoint(args.checkpoint)
    else:
        network = vsr_models.build_model(
            "ttvsr",
            mid_channels=args.mid_channels,
            num_extract_blocks=args.blocks,
            num_propagation_blocks=args.blocks,
        )
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 native: {cpu_has_native_bf16()}"
    )
    print(f"network: {'checkpoint ' + args.checkpoint if args.checkpoint else 'random TTVSR'} "
          f"mid {args.mid_channels} blocks {args.blocks}; {args.frames} frames, chunk {args.chunk}")  # fmt: skip
    header = (
        "device  LR size   precision  model f/s  end-to-end f/s  ratio  decode %  encode %  bf16 vs fp32 dB"
    )
    print(header)
    with tempfile.TemporaryDirectory() as folder:
        for device_name in devices:
            device = torch.device(device_name)
            network = network.to(device).eval()
            for text in args.sizes.split(","):
                h, w = (int(v) for v in text.split("x"))
                clip = make_clip(Path(folder) / f"clip_{h}x{w}.mkv", (h, w), args.frames)
                source = open_source(clip)
                reader = SourceReader(source)
                start = time.perf_counter()
                frames = reader.read(0, source.num_frames)
                decode_s = time.perf_counter() - start
                reader.close()
                windows = temporal_windows(source.num_frames, args.chunk, None)
                reference = None
                for precision in ("fp32", "bf16"):
                    net = with_precision(network, precision)
                    model_only(net, frames[: args.chunk], windows[:1], device)  # warm-up
                    model_s, outputs = model_only(net, frames, windows, device)
                    reference = outputs if precision == "fp32" else reference
                    writer = VideoFileWriter(Path(folder) / "enc.mp4", source, EncodeSettings(preset=args.preset),
                                             overwrite=True)  # fmt: skip
                    start = time.perf_counter()
                    for index, frame in enumerate(outputs):
                        writer.write(frame[None], [index])
                    writer.close()
                    encode_s = time.perf_counter() - start
                    summary = super_resolve_video(
                        network, clip, Path(folder) / "out.mp4", chunk=args.chunk, device=device, precision=precision,
                        preset=args.preset, progress=False, overwrite=True, tile=None,
                    )  # fmt: skip
                    n = source.num_frames
                    model_fps, e2e_fps = n / model_s, n / summary.seconds
                    cost = "-" if precision == "fp32" else f"{psnr(outputs, reference):.1f}"
                    total = decode_s + model_s + encode_s
                    print(
                        f"{device_name:6s}  {text:8s}  {precision:9s}  {model_fps:9.2f}  {e2e_fps:14.2f}  "
                        f"{e2e_fps / model_fps:5.2f}  {100 * decode_s / total:8.1f}  {100 * encode_s / total:8.1f}  {cost}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
