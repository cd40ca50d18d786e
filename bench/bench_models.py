"""Speed and peak memory of both networks, fast path against reference path, measured in one run.

For each model, LR size, sequence length and precision (float32, bf16 autocast) the reference and the
fast path (``implementation="reference"`` / ``"fast"``, same weights, same input) run alternately,
``--repeats`` times each; the best time of each gives ms per output frame and their ratio. Training
rows time one forward + backward of a Charbonnier loss (frames/s). Peak memory: on CUDA
``max_memory_allocated``; on the CPU the peak resident set size above the size at the start of the call
(sampled every millisecond, freed heap returned to the system first), which includes the input and
output of the call.

On the CPU the released sizes are too slow for a few minutes, so by default TTVSR keeps 10 of its 60
propagation blocks and VSR-Transformer 5 of 30 blocks per feed-forward branch and 10 of 30
reconstruction blocks (``--full``: the released configurations); the printed header names what ran.
VSR-Transformer runs fixed 5-frame windows of 64x64 patches (``vsr_models.inference.super_resolve``:
non-overlapping windows, 180x320 frames as 28 overlapping tiles, on the CPU only with ``--full`` or
``--vsrt-sizes``), so its cost per frame does not depend on the sequence length: it runs 10 frames.

    python bench/bench_models.py                        # 64x64, 10 / 50 / 100 frames: minutes on 2 cores
    python bench/bench_models.py --sizes 64x64 180x320  # + 10 frames of 180x320 (--max-pixels: longer)
    python bench/bench_models.py --quick                # 64x64, 10 frames
    python bench/bench_models.py --candidates --with-compile  # each candidate alone, torch.compile too
    python bench/bench_models.py --key-frame-memory     # quality cost of max_key_frames
    python bench/bench_models.py --full --sizes 64x64 180x320 --max-pixels 0  # released sizes (a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vsr_models import build_model
from vsr_models.inference import super_resolve
from vsr_models.losses import charbonnier_loss

CPU_TTVSR = {"num_propagation_blocks": 10}
CPU_VSRT = {"num_ffn_blocks": 5, "num_reconstruct_blocks": 10}


@dataclass
class Case:
    """One row: a model at one LR size, length and precision, inference or one training step."""

    arch: str
    size: tuple[int, int]
    frames: int
    bf16: bool
    train: bool = False


class PeakMemory:
    """Peak memory of a block in bytes (``.peak``), see the module docstring."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def _resident(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        with contextlib.suppress(OSError):  # give freed heap back, so the start is honest
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start = self._resident()
        self.highest = self.start
        self.running = True
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.highest = max(self.highest, self._resident())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self.running = False
        self.sampler.join()
        self.peak = max(self.highest, self._resident()) - self.start


def make_model(arch: str, device: torch.device, full: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    overrides = {} if full else {"ttvsr": CPU_TTVSR, "vsrt": CPU_VSRT}[arch]
    return build_model(arch, **overrides).to(device)


def forward_fn(model: torch.nn.Module, case: Case) -> Callable[[torch.Tensor], torch.Tensor]:
    """The call that super-resolves the clip: TTVSR whole; VSR-Transformer by windows and tiles."""
    if case.arch == "ttvsr":
        return model
    return lambda lr: super_resolve(model, lr, chunk_overlap=0)


def run_once(model: torch.nn.Module, case: Case, path: str, device: torch.device) -> tuple[float, int]:
    """Seconds and peak bytes of one inference (or training step) of ``case`` through ``path``."""
    model.config.implementation = path
    h, w = case.size
    frames = 5 if case.train and case.arch == "vsrt" else case.frames
    lr = torch.rand(1, frames, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.bf16)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        if case.train:
            model.train()
            with autocast:
                out = model(lr)
            charbonnier_loss(out.float(), torch.zeros_like(out, dtype=torch.float32)).backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad(), autocast:
                out = forward_fn(model, case)(lr)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        del out
    return seconds, memory.peak


def measure(model: torch.nn.Module, case: Case, device: torch.device, repeats: int) -> dict[str, tuple]:
    """Best seconds and peak bytes per path, the two paths run alternately after a short warm-up.

    Cases larger than 10 frames of 64x64 (seconds each) run once per path.
    """
    # oneDNN builds its kernels for these shapes once (VSR-Transformer: one window of 64x64 tiles)
    warm_up = dataclasses.replace(case, frames=min(case.frames, 3))
    if case.arch == "vsrt":
        warm_up = dataclasses.replace(case, size=(64, 64), frames=5)
    for path in ("reference", "fast"):
        run_once(model, warm_up, path, device)
    if case.size[0] * case.size[1] * case.frames > 64 * 64 * 10 or case.train:
        repeats = 1
    best: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for path in ("reference", "fast"):
            seconds, peak = run_once(model, case, path, device)
            old = best.get(path, (float("inf"), 0))
            best[path] = (min(old[0], seconds), max(old[1], peak))
    return best


def header(args: argparse.Namespace, devices: list[torch.device]) -> list[str]:
    ttvsr = "released (60 propagation blocks)" if args.full else f"released except {CPU_TTVSR}"
    vsrt = "released REDS (5 frames, depth 5)" if args.full else f"released REDS except {CPU_VSRT}"
    lines = [
        f"devices: {', '.join(str(d) for d in devices)}; CPU: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; torch {torch.__version__}",
        f"TTVSR: {ttvsr}, 64 channels; VSR-Transformer: {vsrt}, 64 channels; random weights, batch 1",
        f"load average at start: {os.getloadavg()[0]:.1f}",
    ]
    return lines


def cases(args: argparse.Namespace) -> list[Case]:
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    vsrt_sizes = [tuple(int(v) for v in s.split("x")) for s in args.vsrt_sizes or args.sizes]
    found: list[Case] = []
    for arch in args.models:
        for bf16 in [p == "bf16" for p in args.precisions]:
            for size in sizes:
                if arch == "vsrt" and size not in vsrt_sizes:
                    continue
                for frames in args.frames if arch == "ttvsr" else [min(args.frames)]:
                    if args.max_pixels and size[0] * size[1] * frames > args.max_pixels and size != sizes[0]:
                        continue  # large frames x long sequences: only with --max-pixels 0
                    found.append(Case(arch, size, frames, bf16))
            found.append(Case(arch, sizes[0], args.train_frames, bf16, train=True))
    return found


def row(case: Case, device: torch.device, best: dict[str, tuple], fp32_ref: float | None) -> str:
    (ref_s, ref_mem), (fast_s, fast_mem) = best["reference"], best["fast"]
    frames = 5 if case.train and case.arch == "vsrt" else case.frames
    kind = "train" if case.train else "infer"
    if case.train:
        ref, fast, unit = frames / ref_s, frames / fast_s, "frames/s"
    else:
        ref, fast, unit = 1e3 * ref_s / frames, 1e3 * fast_s / frames, "ms/frame"
    versus = f"{fp32_ref / fast_s:.2f}x" if fp32_ref is not None and case.bf16 else ""
    return (
        f"| {device.type} | {case.arch} | {kind} | {case.size[0]}x{case.size[1]} | {frames} | "
        f"{'bf16' if case.bf16 else 'fp32'} | {ref:.1f} | {fast:.1f} {unit} | **{ref_s / fast_s:.2f}x** | "
        f"{versus} | {ref_mem / 2**20:.0f} | {fast_mem / 2**20:.0f} | {ref_mem / max(fast_mem, 1):.2f}x |"
    )


def photo_pan(name: str, frames: int) -> torch.Tensor:
    """A scikit-image photograph panned one HR pixel per frame, x4 down (bicubic, antialiased): (1, t, 3, 64, 64)."""
    import skimage.data

    image = torch.from_numpy(getattr(skimage.data, name)().copy()).permute(2, 0, 1) / 255.0
    hr = torch.stack([image[:, :256, i : i + 256] for i in range(frames)])
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
    return lr.clamp(0, 1).unsqueeze(0)


def real_video(path: str, frames: int) -> torch.Tensor:
    """Frames of a real video (decord), x3 down (bicubic, antialiased), cropped to multiples of 4."""
    import decord

    reader = decord.VideoReader(path)
    clip = torch.from_numpy(reader.get_batch(list(range(min(frames, len(reader))))).asnumpy())
    lr = torch.nn.functional.interpolate(
        clip.permute(0, 3, 1, 2) / 255.0, scale_factor=1 / 3, mode="bicubic", antialias=True
    )
    h, w = lr.shape[-2] // 4 * 4, lr.shape[-1] // 4 * 4
    return lr[..., :h, :w].clamp(0, 1).unsqueeze(0)


def key_frame_memory(args: argparse.Namespace) -> None:
    """PSNR of TTVSR's output with only the last K key frames kept against the unbounded output."""
    torch.manual_seed(0)
    model = build_model("ttvsr", num_propagation_blocks=2).eval()
    clips = {f"{name} (pan)": photo_pan(name, 100) for name in ("astronaut", "coffee")}
    if os.path.exists(args.video):
        clips[f"{os.path.basename(args.video)} (x3 down)"] = real_video(args.video, 100)
    print("TTVSR, released config except 2 propagation blocks, random weights (seed 0), float32. Per K:")
    print("PSNR (dB) of the bounded-memory output against the unbounded one (not against ground truth),")
    print("and how much the network's own part (output - bilinear base) changes, relative (%)\n")
    print(
        "| clip | LR size | frames | key frames per direction | "
        + " | ".join(f"K={k}" for k in args.keep)
        + " |"
    )
    print("|---" * (4 + len(args.keep)) + "|")
    for name, lr in clips.items():
        base = torch.nn.functional.interpolate(lr[0], scale_factor=4, mode="bilinear", align_corners=False)
        with torch.no_grad():
            model.config.max_key_frames = None
            with PeakMemory(torch.device("cpu")) as memory:
                unbounded = model(lr)
            peaks = {None: memory.peak}
            residual = float((unbounded[0] - base).norm())
            cells = []
            for kept in args.keep:
                model.config.max_key_frames = kept
                with PeakMemory(torch.device("cpu")) as memory:
                    bounded = model(lr)
                peaks[kept] = memory.peak
                mse = float(((bounded.clamp(0, 1) - unbounded.clamp(0, 1)) ** 2).mean())
                change = 100 * float((bounded - unbounded).norm()) / residual
                psnr = "inf" if mse == 0 else f"{10 * torch.log10(torch.tensor(1 / mse)):.1f}"
                cells.append(f"{psnr} / {change:.2f}%")
        t, (h, w) = lr.shape[1], lr.shape[-2:]
        key_frames = len(range(0, t - 1, model.config.key_frame_stride))
        print(f"| {name} | {h}x{w} | {t} | {key_frames} | " + " | ".join(cells) + " |", flush=True)
        mib = " | ".join(f"{peaks[k] / 2**20:.0f}" for k in args.keep)
        print(f"| peak MiB (unbounded: {peaks[None] / 2**20:.0f}) | | | | {mib} |", flush=True)


def best_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best of ``repeats`` wall-clock milliseconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def attention_inputs(p: int, d: int, k: int, dtype: torch.dtype) -> tuple:
    """Random L2-normalised keys (2, k*p, d), queries (2, p, d), location maps and a filled TokenMemory,
    in ``dtype`` (under bf16 autocast the model's tokens are bf16)."""
    import torch.nn.functional as F

    from vsr_models.ttvsr import fast as ttvsr_fast

    keys = F.normalize(torch.randn(2, k * p, d), dim=-1).to(dtype)
    query = F.normalize(torch.randn(2, p, d), dim=-1).to(dtype)
    maps = torch.randint(0, 16, (2, 2 * k, 16, 16)).float()
    memory = ttvsr_fast.TokenMemory(k)
    for i in range(k):
        memory.append(keys[:, i * p : (i + 1) * p], torch.randn(2, p, 3 * d, dtype=dtype))
    return keys, query, maps, memory


def option_timings(args: argparse.Namespace) -> None:
    """TTVSR options: a training step with and without activation checkpointing; compiled steps."""
    from vsr_models.ttvsr import fast as ttvsr_fast

    torch.manual_seed(0)
    model = build_model("ttvsr", **CPU_TTVSR)
    case = Case("ttvsr", (64, 64), args.train_frames, False, train=True)
    print("\n| TTVSR option | precision | without | with |")
    print("|---|---|---|---|")
    results = []
    for flag in (False, True):
        model.config.checkpoint_propagation = flag
        run_once(model, dataclasses.replace(case, frames=3), "fast", torch.device("cpu"))
        results.append(run_once(model, case, "fast", torch.device("cpu")))
    (s0, m0), (s1, m1) = results
    name = f"checkpoint_propagation: training step, {args.train_frames} frames 64x64 (s, peak MiB)"
    print(f"| {name} | fp32 | {s0:.2f} s, {m0 / 2**20:.0f} | {s1:.2f} s, {m1 / 2**20:.0f} |", flush=True)
    if not args.with_compile:
        return
    model.config.checkpoint_propagation = False
    model.eval()
    current = torch.rand(2, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    for bf16 in (False, True):
        ttvsr_fast._COMPILED.pop(model.propagation, None)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            eager = ttvsr_fast._eager_step(model.propagation)
            compiled = ttvsr_fast.compiled_step(model.propagation)
            start = time.perf_counter()
            compiled(current, current)
            seconds = time.perf_counter() - start
            eager_ms = best_ms(lambda eager=eager: eager(current, current))
            compiled_ms = best_ms(lambda compiled=compiled: compiled(current, current))
        name = f"compile: propagation step, batch 2 (first call {seconds:.0f} s)"
        precision = "bf16" if bf16 else "fp32"
        print(f"| {name} | {precision} | {eager_ms:.1f} ms | {compiled_ms:.1f} ms |", flush=True)


def candidate_timings(bf16: bool) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(candidate, reference way, fast way) at 64x64 LR, 64 channels, both directions (batch 2)."""
    import torch.nn.functional as F

    from vsr_models.blocks import ResidualBlocksWithInputConv, UpsampleHead
    from vsr_models.spynet import SpyNet
    from vsr_models.ttvsr import fast as ttvsr_fast
    from vsr_models.ttvsr import trajectory_hard_attention
    from vsr_models.ttvsr.trajectory import cross_scale_tokens, tokenize, untokenize
    from vsr_models.vsrt import fast as vsrt_fast

    torch.manual_seed(0)
    cl = torch.channels_last
    feat = torch.rand(2, 64, 64, 64)
    feat_cl = feat.contiguous(memory_format=cl)
    blocks = ResidualBlocksWithInputConv(128, 64, 10)
    pair = torch.rand(2, 128, 64, 64)
    head = UpsampleHead(64)
    frames = torch.rand(18, 3, 64, 64)
    spynet = SpyNet()
    p, d, k = 256, 1024, 17  # tokens of a 64x64 frame, 64 x 4 x 4 per token, key frames of 50 frames
    dtype = torch.bfloat16 if bf16 else torch.float32
    keys, query, maps, memory = attention_inputs(p, d, k, dtype)
    rows, inside = memory.rows(maps)
    values = [torch.randn(2, k * p, d, dtype=dtype) for _ in range(3)]
    picked = torch.randint(0, 2 * k * p, (2 * p,))
    qkv = [
        torch.randn(1, 320, 4096, dtype=dtype) for _ in range(3)
    ]  # VSR-Transformer: 5 x 64 patches of 8x8x64
    norm = torch.nn.LayerNorm((64, 64, 64))
    frames_cl = torch.rand(5, 64, 64, 64).contiguous(memory_format=cl)
    return [
        (
            "conv 3x3 64->64, 2x64x64: NCHW -> channels_last",
            lambda: blocks.main[2][0].conv1(feat),
            lambda: blocks.main[2][0].conv1(feat_cl),
        ),
        (
            "propagation blocks: 2 directions one by one (NCHW) -> one batch of 2 (channels_last)",
            lambda: [blocks(pair[i : i + 1]) for i in range(2)],
            lambda: blocks(pair.contiguous(memory_format=cl)),
        ),
        (
            "SPyNet: the two directions as two calls -> one call",
            lambda: (spynet(frames[:9], frames[9:]), spynet(frames[9:], frames[:9])),
            lambda: spynet(frames, frames.roll(9, 0)),
        ),
        (
            "key tokens: pixel_unshuffle (c, y, x) -> view of channels_last (y, x, c)",
            lambda: F.normalize(tokenize(feat, 4), dim=-1),
            lambda: F.normalize(ttvsr_fast.tokens(feat_cl, 4), dim=-1),
        ),
        (
            "cross-scale value tokens 6x6 + 8x8: unfold windows -> pool once and gather",
            lambda: [cross_scale_tokens(feat_cl, 4, w) for w in (6, 8)],
            lambda: [ttvsr_fast.cross_scale_token_grid(feat_cl, 4, w) for w in (6, 8)],
        ),
        (
            "similarity over 17 key frames: einsum over (k, p) -> keys gathered per token (p, k), matvec",
            lambda: trajectory_hard_attention(query, keys, maps),
            lambda: ttvsr_fast.hard_attention_index(memory.keys, query, rows, inside),
        ),
        (
            "selected values: 3 gathers + 3 folds -> one gather + one fold",
            lambda: torch.cat(
                [untokenize(v.flatten(0, 1)[picked].view(2, p, d), (64, 64), 4) for v in values], 1
            ),
            lambda: ttvsr_fast.untokens(memory.values.flatten(0, 1)[picked].view(2, p, -1), (64, 64), 4),
        ),
        (
            "x4 head, 1 frame: NCHW -> channels_last + conv_pixel_shuffle",
            lambda: head(feat[:1]),
            lambda: head.forward_channels_last(feat_cl[:1]),
        ),
        (
            "VSR-Transformer attention 320 x 4096: scaled_dot_product_attention -> baddbmm, softmax, bmm",
            lambda: F.scaled_dot_product_attention(*qkv, scale=4096**-0.5),
            lambda: vsrt_fast.attention(*qkv),
        ),
        (
            "VSR-Transformer layer norm of 5 channels_last frames: via (c, h, w) copies -> on the (h, w, c) view",
            lambda: F.layer_norm(frames_cl.contiguous(), (64, 64, 64), norm.weight, norm.bias).contiguous(
                memory_format=cl
            ),
            lambda: vsrt_fast.layer_norm(frames_cl, norm),
        ),
    ]


def candidates(args: argparse.Namespace) -> None:
    """Each fast-path candidate on its own: the reference way against the fast way, ms per call."""
    print(
        f"{torch.get_num_threads()} torch threads; 64x64 LR, 64 channels; best of 5 calls after a warm-up\n"
    )
    print("| candidate | precision | reference way ms | fast way ms | speed-up |")
    print("|---|---|---|---|---|")
    for bf16 in [p == "bf16" for p in args.precisions]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for name, reference, fast in candidate_timings(bf16):
                ref_ms, fast_ms = best_ms(reference), best_ms(fast)
                precision = "bf16" if bf16 else "fp32"
                print(
                    f"| {name} | {precision} | {ref_ms:.2f} | {fast_ms:.2f} | {ref_ms / fast_ms:.2f}x |",
                    flush=True,
                )
    option_timings(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ttvsr", "vsrt"], choices=["ttvsr", "vsrt"])
    parser.add_argument("--frames", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--sizes", nargs="+", default=["64x64"], help="LR sizes, e.g. 64x64 180x320")
    parser.add_argument(
        "--vsrt-sizes", nargs="+", help="VSR-Transformer's sizes (default: 64x64 on the CPU, else --sizes)"
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--train-frames", type=int, default=10, help="TTVSR training clip length")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path (small cases); the best counts")
    parser.add_argument("--max-pixels", type=int, default=180 * 320 * 10, help="skip larger sizes x frames")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--full", action="store_true", help="the released configurations")
    parser.add_argument("--quick", action="store_true", help="64x64, 10 frames")
    parser.add_argument(
        "--key-frame-memory", action="store_true", help="instead: quality cost of TTVSR's max_key_frames"
    )
    parser.add_argument("--keep", nargs="+", type=int, default=[1, 4, 8], help="max_key_frames values")
    parser.add_argument("--video", default="/usr/share/doc/opencv-doc/examples/data/tree.avi")
    parser.add_argument("--candidates", action="store_true", help="instead: each fast-path candidate alone")
    parser.add_argument("--with-compile", action="store_true", help="--candidates: also torch.compile (slow)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.candidates:
        candidates(args)
        return
    if args.key_frame_memory:
        key_frame_memory(args)
        return
    if args.quick:
        args.frames, args.sizes, args.train_frames = [10], ["64x64"], 10
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.vsrt_sizes is None and devices and not args.full:
        args.vsrt_sizes = ["64x64"]  # a 180x320 frame is 28 such tiles: minutes per clip on 2 cores
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print("\n".join(header(args, devices)))
    print(
        "\n| device | model | run | LR size | frames | precision | reference | fast | fast / reference "
        "| fast bf16 / ref fp32 | ref peak MiB | fast peak MiB | memory ref / fast |"
    )
    print("|---" * 13 + "|")
    started = time.perf_counter()
    for device in devices:
        full = args.full or device.type == "cuda"
        models = {arch: make_model(arch, device, full) for arch in args.models}
        fp32_refs: dict[tuple, float] = {}
        for case in cases(args):
            best = measure(models[case.arch], case, device, args.repeats)
            key = (case.arch, case.size, case.frames, case.train)
            if not case.bf16:
                fp32_refs[key] = best["reference"][0]
            print(row(case, device, best, fp32_refs.get(key)), flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s; load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
