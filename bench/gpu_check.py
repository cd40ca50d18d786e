"""GPU check: the released TTVSR recipe at full size through the real jobs, in under 8 minutes.

On a machine with NVIDIA GPUs (``bash bench/gpu_check.sh``, ``make gpu-check``) this

1. checks the GPUs: ``nvidia-smi``, ``torch.cuda``, bf16 in hardware (not emulated), NCCL for two or
   more; then runs one training step of the recipe on the first GPU (``bench/gpu_measure.py``)
   under ``torch.cuda.set_sync_debug_mode("error")`` (a host sync anywhere in the step fails the
   check) and measures its peak ``torch.cuda.max_memory_allocated``;
2. renders a synthetic REDS-sized dataset with :mod:`pipelines.data.sample` (moving photographs,
   720x1280 frames, 100-frame clips) in REDS's ``train_sharp/<clip>`` layout, clip 000 being a REDS4
   clip and so the val split, and prepares it with ``jobs/prepare_data.py`` (BI x4: 180x320 LR);
3. trains ``jobs/train_ttvsr.py --config configs/ttvsr_reds4.yaml --gpus N``: the released recipe at
   full size (50-frame sequences of 64x64 LR crops, bf16 autocast, DDP over NCCL with 2+ GPUs) for
   300 iterations, validating (one clip, 20 frames) and checkpointing at the end. One departure: SPyNet
   is unfrozen at iteration 150 (the recipe: 5,000) so that the re-wrapped DDP network is exercised too;
4. evaluates the final checkpoint with ``jobs/evaluate.py`` on the GPU (the whole 100-frame val clip);
5. prints frames/s (the ``frames_per_s`` the training loop logs every 10 iterations), each GPU's
   utilisation and memory used during the training (NVML, sampled every 500 ms) and the loss curve,
   read back from the run's MLflow store (SQLite, beside the run).

Everything goes under ``--out`` (default ``outputs/gpu_check/``): the dataset (kept: a rerun skips
step 2), the run's checkpoints, ``mlflow.db``, one log per step and ``summary.json``. Each step runs
under what is left of ``--budget`` seconds; the exit status is 1 if a step fails, times out or the
loss is not finite, 2 if there is no usable GPU.

    bash bench/gpu_check.sh [--gpus N] [--iters 300] [--budget 460] [--out outputs/gpu_check]
    .venv/bin/python bench/gpu_check.py --cpu-smoke   # the same steps on CPU, tiny (2 iterations)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from gpu_measure import GpuSampler, step_check_lines  # bench/, beside this script

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = "configs/ttvsr_reds4.yaml"
VAL_CLIP = "000"  # a REDS4 clip id: the REDS layout makes it the val split
RUN_NAME = "gpu_check"
EXPERIMENT = "gpu-check"


class CheckFailed(Exception):
    """A step failed; the message says which and why."""


class NoGpu(CheckFailed):
    pass


@dataclass(frozen=True)
class Plan:
    """What one check runs: the dataset, the training job's overrides and where things go."""

    mode: str  # "gpu" or "cpu-smoke"
    gpus: int  # 0 on CPU
    frame_size: tuple[int, int]  # HR (h, w)
    clip_frames: int
    train_clips: int
    val_frames: int
    iters: int
    log_every: int
    num_frames: int  # frames per training sequence
    overrides: list[str]  # training --set values beyond the recipe
    eval_device: str
    out: Path

    @property
    def frames_per_iter(self) -> int:
        """LR frames one iteration trains on, over all workers (the recipe's batch of 1 per worker)."""
        return self.num_frames * max(1, self.gpus)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.run_dir / 'mlflow.db'}"


def make_plan(args: argparse.Namespace, gpus: int) -> Plan:
    out = Path(args.out).resolve() / ("cpu_smoke" if args.cpu_smoke else f"{gpus}gpu")
    schedule = [
        f"train.total_iters={args.iters}",
        f"train.log_every={args.log_every}",
        f"train.val_every={args.iters}",
        f"train.checkpoint_every={args.iters}",
        "val.max_clips=1",
        f"tracking.experiment={EXPERIMENT}",
        "tracking.registered_model=ttvsr_gpu_check",
    ]
    if args.cpu_smoke:  # 64x64 LR crops as in the recipe, everything else tiny
        tiny = [
            "model.mid_channels=8",
            "model.num_extract_blocks=1",
            "model.num_propagation_blocks=1",
            "data.num_frames=4",
            "val.max_frames=4",
            "optim.fix_spynet_iters=1",
            "scaling.use_gpu=false",
            "scaling.cpus_per_worker=1",
        ]
        return Plan(
            mode="cpu-smoke", gpus=0, frame_size=(256, 256), clip_frames=8, train_clips=2, val_frames=4,
            iters=args.iters, log_every=args.log_every, num_frames=4, overrides=schedule + tiny,
            eval_device="cpu", out=out,
        )  # fmt: skip
    recipe = yaml.safe_load((REPO_ROOT / TRAIN_CONFIG).read_text())
    # The recipe's CPUs per worker, fewer when the machine has not that many beside Ray Data's crops:
    # Ray Train would otherwise wait for CPUs that never come.
    cpus_per_worker = max(1, min(recipe["scaling"]["cpus_per_worker"], ((os.cpu_count() or 2) - 2) // gpus))
    changes = [
        "val.max_frames=20",
        f"optim.fix_spynet_iters={args.iters // 2}",
        f"scaling.cpus_per_worker={cpus_per_worker}",
    ]
    # REDS: 100-frame clips of 720x1280; at least one training clip per worker.
    return Plan(
        mode="gpu", gpus=gpus, frame_size=(720, 1280), clip_frames=100, train_clips=max(3, gpus),
        val_frames=100, iters=args.iters, log_every=args.log_every, num_frames=recipe["data"]["num_frames"],
        overrides=schedule + changes, eval_device="cuda", out=out,
    )  # fmt: skip


# -- 1. GPUs ------------------------------------------------------------------------------------------


def check_gpus(requested: int | None) -> tuple[int, list[str]]:
    """The number of GPUs to train on and their nvidia-smi descriptions; :class:`NoGpu` if unusable."""
    if shutil.which("nvidia-smi") is None:
        raise NoGpu("nvidia-smi not found: this check needs NVIDIA GPUs and their driver (or --cpu-smoke)")
    listed = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    names = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    if listed.returncode != 0 or not names:
        raise NoGpu(f"nvidia-smi lists no GPU: {listed.stderr.strip() or listed.stdout.strip()}")
    import torch
    import torch.distributed

    if not torch.cuda.is_available():
        version = os.environ.get("TORCH_VERSION", "<the Makefile's TORCH_VERSION>")
        raise NoGpu(
            f"torch {torch.__version__} sees no CUDA device (a CPU build?): install the CUDA build of "
            f"torch=={version}, e.g. pip install torch=={version} --index-url https://download.pytorch.org/whl/cu128"
        )
    available = torch.cuda.device_count()
    gpus = requested or available
    if gpus > available:
        raise NoGpu(f"--gpus {gpus} but torch sees {available} GPU(s)")
    # in hardware: emulated bf16 (pre-Ampere) would run the recipe, many times slower
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        raise NoGpu(f"{torch.cuda.get_device_name(0)} has no bf16 in hardware, which the recipe trains in")
    if gpus >= 2 and not torch.distributed.is_nccl_available():
        raise NoGpu(f"torch {torch.__version__} was built without NCCL; DDP over {gpus} GPUs needs it")
    return gpus, names


# -- 2. the dataset -----------------------------------------------------------------------------------


def _render_clip(task: tuple[int, int, tuple[int, int], str, int]) -> None:
    """Render one clip of moving photographs into ``dest`` (a REDS clip folder of PNG frames)."""
    seed, num_frames, size, dest, threads = task
    import torch

    from pipelines.data.sample import render_sample_dataset

    torch.set_num_threads(threads)
    dest_path = Path(dest)
    with tempfile.TemporaryDirectory(prefix=".render-", dir=dest_path.parent.parent) as scratch:
        rendered = render_sample_dataset(
            Path(scratch) / "clip",
            num_train_clips=1,
            num_val_clips=0,
            num_frames=num_frames,
            size=size,
            seed=seed,
        )
        (clip,) = (rendered / "train").iterdir()
        clip.rename(dest_path)


def build_dataset(plan: Plan) -> tuple[Path, bool]:
    """The REDS-layout source (rendered unless already there with these settings) and whether it is new."""
    source = plan.data_dir / "reds"
    marker = source / "_COMPLETE"
    clips = {VAL_CLIP: plan.val_frames} | {
        f"{i:03d}": plan.clip_frames for i in range(1, plan.train_clips + 1)
    }
    settings = {"clips": clips, "size": list(plan.frame_size)}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"   {source}: already rendered", flush=True)
        return source, False
    shutil.rmtree(source, ignore_errors=True)
    (source / "train_sharp").mkdir(parents=True)
    cpus = os.cpu_count() or 1
    workers = max(1, min(len(clips), cpus))
    tasks = [
        (seed, frames, plan.frame_size, str(source / "train_sharp" / clip), max(1, cpus // workers))
        for seed, (clip, frames) in enumerate(sorted(clips.items()))
    ]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_render_clip, tasks))
    marker.write_text(json.dumps(settings))
    return source, True


# -- running the jobs ---------------------------------------------------------------------------------

_RUNNING: list[subprocess.Popen] = []


def _stop(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the job's process group (its local Ray too), SIGKILL what is left after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _on_signal(signum, frame) -> None:
    """timeout(1) of gpu_check.sh (SIGKILL follows 5 s later) or Ctrl-C: stop the jobs, then exit."""
    for process in list(_RUNNING):
        _stop(process, grace=3)
    sys.exit(128 + signum)


def job_env(plan: Plan) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # local Ray, the check's own MLflow store
        env.pop(name, None)
    env.update(
        PYTHONUNBUFFERED="1",
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        NCCL_DEBUG="VERSION",  # each DDP process prints "NCCL version ..." when NCCL starts
    )
    return env


def run_step(name: str, command: list[str], plan: Plan, deadline: float, reserve: float) -> tuple[str, float]:
    """Run ``command`` from the repository root, echoing and logging its output; stop it ``reserve``
    seconds before ``deadline``. Returns its output and wall seconds; :class:`CheckFailed` if it fails."""
    timeout = deadline - time.monotonic() - reserve
    if timeout < 10:
        raise CheckFailed(f"{name}: only {timeout:.0f} s of the budget left; raise --budget or lower --iters")
    log_path = plan.out / f"{name}.log"
    print(f"== {name} (at most {timeout:.0f} s): {shlex.join(command)}", flush=True)
    lines: list[str] = []
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=job_env(plan), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    _RUNNING.append(process)

    def echo() -> None:
        with log_path.open("w") as log:
            for line in process.stdout:
                lines.append(line)
                log.write(line)
                sys.stdout.write(f"   | {line}")
                sys.stdout.flush()

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        code = None
    finally:
        _RUNNING.remove(process)
    reader.join(10)
    seconds = time.monotonic() - started
    if code is None:
        raise CheckFailed(f"{name}: stopped after {seconds:.0f} s, the time left for it (log: {log_path})")
    if code != 0:
        raise CheckFailed(f"{name}: exited with {code} after {seconds:.0f} s (log: {log_path})")
    return "".join(lines), seconds


# -- 3a. one training step in this machine's first GPU ----------------------------------------------------


def run_step_check(summary: Summary, plan: Plan, deadline: float, reserve: float) -> str | None:
    """``bench/gpu_measure.py``'s step check with the training's overrides; what it found wrong, or None."""
    result_path = plan.out / "step_check.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "bench/gpu_measure.py", "--json", str(result_path)]
    command += [] if plan.gpus else ["--cpu-smoke"]
    for override in plan.overrides:
        command += ["--set", override]
    try:
        _, summary.steps_s["one training step (sync debug)"] = run_step(
            "step-check", command, plan, deadline, reserve
        )
        failure = None
    except CheckFailed as error:
        failure = str(error)
    if result_path.is_file():
        summary.step_check = json.loads(result_path.read_text())
        if summary.step_check.get("sync_debug_error"):
            failure = f"a host sync in the training step: {summary.step_check['sync_debug_error']}"
        elif summary.step_check.get("host_syncs"):
            failure = f"host-sync-like operations in the training step: {summary.step_check['host_syncs']}"
    return failure


# -- 5. what to report --------------------------------------------------------------------------------


def metric_history(tracking_uri: str, run_name: str) -> dict[str, list[tuple[int, float]]]:
    """``(step, value)`` series of the training run's metrics, from its MLflow store."""
    from pipelines.tracking import find_run, mlflow_client

    run_id = find_run(tracking_uri, EXPERIMENT, run_name)
    if run_id is None:
        return {}
    client = mlflow_client(tracking_uri)
    history = {}
    for key in ("loss", "frames_per_s", "lr", "val/psnr", "val/bicubic_psnr", "val/ssim"):
        values = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if values:
            history[key] = values
    return history


def loss_curve(history: dict[str, list[tuple[int, float]]], width: int = 40) -> list[str]:
    losses = history.get("loss", [])
    speed = dict(history.get("frames_per_s", []))
    finite = [v for _, v in losses if math.isfinite(v)]
    if not losses:
        return ["   (no loss logged)"]
    top = max(finite, default=0.0)
    lines = ["     iter      loss   frames/s"]
    for step, value in losses:
        bar = "#" * round(width * value / top) if math.isfinite(value) and top > 0 else "?"
        lines.append(f"   {step:6d}  {value:8.5f}  {speed.get(step, float('nan')):9.1f}  {bar}")
    return lines


@dataclass
class Summary:
    mode: str
    gpus: list[str] = field(default_factory=list)
    steps_s: dict[str, float] = field(default_factory=dict)
    frames_per_s: dict[str, float] = field(default_factory=dict)
    gpu_memory: dict[str, dict[str, float]] = field(default_factory=dict)
    step_check: dict = field(default_factory=dict)
    loss: list[tuple[int, float]] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)
    nccl_versions: list[str] = field(default_factory=list)
    evaluation: str = ""
    warnings: list[str] = field(default_factory=list)
    failure: str | None = None


def report(summary: Summary, plan: Plan, history: dict, started: float) -> None:
    print("\n== gpu_check summary", flush=True)
    print(f"   mode: {plan.mode}; output: {plan.out}")
    for gpu in summary.gpus:
        print(f"   GPU: {gpu}")
    if plan.gpus >= 2:
        found = ", ".join(sorted(set(summary.nccl_versions))) or "no 'NCCL version' line in the training log"
        print(f"   DDP over {plan.gpus} GPUs, NCCL: {found}")
    elif plan.gpus == 1:
        print("   one GPU: DDP and NCCL not exercised (run on 2+ GPUs for that)")
    for step, seconds in summary.steps_s.items():
        print(f"   {step}: {seconds:.0f} s")
    if summary.frames_per_s:
        fps = summary.frames_per_s
        print(
            f"   frames/s (training, all workers): median {fps['median']:.1f}, min {fps['min']:.1f}, "
            f"max {fps['max']:.1f} over {fps['windows']:.0f} windows of {plan.log_every} iterations"
            f" (the first, warm-up window left out); {fps['median'] / plan.frames_per_iter:.2f} iterations/s"
            f" of {plan.frames_per_iter} frames"
        )
    for line in step_check_lines(summary.step_check):
        print(f"   {line}")
    for index, gpu in sorted(summary.gpu_memory.items()):
        print(
            f"   GPU {index} during training (NVML): peak {gpu['peak_mib'] / 1024:.1f} GiB used of "
            f"{gpu['total_mib'] / 1024:.1f} GiB ({gpu['first_mib'] / 1024:.1f} GiB before; the allocator's "
            "cache and CUDA context included)"
        )
        if "utilisation_median" in gpu:
            print(
                f"   GPU {index} utilisation: median {gpu['utilisation_median']:.0f} %, mean "
                f"{gpu['utilisation_mean']:.0f} %, {gpu['utilisation_under_50_share']:.0%} of "
                f"{gpu['utilisation_samples']:.0f} samples under 50 % (from the first busy sample)"
            )
    if plan.gpus and not summary.gpu_memory:
        print("   GPU memory and utilisation: no NVML samples")
    print("   loss curve (Charbonnier, mean over workers):")
    print("\n".join(loss_curve(history)))
    if summary.validation:
        val = summary.validation
        print(
            f"   validation at {plan.iters}: PSNR {val.get('val/psnr', float('nan')):.2f} dB "
            f"(bicubic {val.get('val/bicubic_psnr', float('nan')):.2f}), SSIM {val.get('val/ssim', float('nan')):.4f}"
        )
    if summary.evaluation:
        print("   jobs/evaluate.py:")
        print("\n".join(f"     {line}" for line in summary.evaluation.strip().splitlines()))
    for warning in summary.warnings:
        print(f"   WARNING: {warning}")
    print(f"   total: {time.monotonic() - started:.0f} s")
    print(f"   FAILED: {summary.failure}" if summary.failure else "   OK")
    (plan.out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")


def summarise_training(summary: Summary, plan: Plan, history: dict, train_log: str) -> None:
    """Fill in the training figures; :class:`CheckFailed` if the run did not do what was asked."""
    losses = history.get("loss", [])
    summary.loss = losses
    speeds = [v for _, v in history.get("frames_per_s", [])]
    if len(speeds) > 1:
        speeds = speeds[1:]  # the first window includes cuDNN autotuning and Ray Data's start
    if speeds:
        summary.frames_per_s = {
            "median": statistics.median(speeds), "min": min(speeds), "max": max(speeds), "windows": len(speeds),
        }  # fmt: skip
    summary.validation = {k: v[-1][1] for k, v in history.items() if k.startswith("val/")}
    summary.nccl_versions = [
        line.split("NCCL version", 1)[1].split()[0]
        for line in train_log.splitlines()
        if "NCCL version" in line
    ]
    if not losses:
        raise CheckFailed(f"training: no loss in the MLflow store {plan.tracking_uri}")
    if not all(math.isfinite(v) for _, v in losses):
        raise CheckFailed(f"training: non-finite loss {losses}")
    if losses[-1][0] != plan.iters:
        raise CheckFailed(f"training: the last loss is at iteration {losses[-1][0]}, not {plan.iters}")
    if len(losses) >= 6:
        start, end = statistics.mean(v for _, v in losses[:3]), statistics.mean(v for _, v in losses[-3:])
        if end >= start:
            summary.warnings.append(
                f"the loss did not fall: {start:.5f} (first 3 logs) -> {end:.5f} (last 3)"
            )
    if plan.gpus >= 2 and not summary.nccl_versions:
        summary.warnings.append("no 'NCCL version' line in the training log: was NCCL used?")


# -- the check ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, help="GPUs to train on (default: every GPU torch sees)")
    parser.add_argument("--iters", type=int, help="training iterations (default 300; --cpu-smoke: 2)")
    parser.add_argument(
        "--log-every", type=int, help="iterations per logged loss (default 10; --cpu-smoke: 1)"
    )
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole check (default 460; --cpu-smoke: 900)"
    )
    parser.add_argument(
        "--out", default="outputs/gpu_check", help="output folder (default outputs/gpu_check)"
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU: the same steps on CPU, tiny")
    args = parser.parse_args(argv)
    args.iters = args.iters or (2 if args.cpu_smoke else 300)
    args.log_every = args.log_every or (1 if args.cpu_smoke else 10)
    args.budget = args.budget or (900.0 if args.cpu_smoke else 460.0)
    if args.iters % args.log_every:
        parser.error(f"--iters {args.iters} must be a multiple of --log-every {args.log_every}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)

    started = time.monotonic()
    deadline = started + args.budget
    try:
        gpus, names = (0, []) if args.cpu_smoke else check_gpus(args.gpus)
    except NoGpu as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    plan = make_plan(args, gpus)
    summary = Summary(plan.mode, gpus=names)
    history: dict = {}
    python = sys.executable
    eval_reserve = 60.0 if plan.gpus else 120.0
    try:
        # A fresh run each time: the same run name would resume the last one.
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        plan.run_dir.mkdir(parents=True)

        step_failure = run_step_check(summary, plan, deadline, eval_reserve + 240)

        h, w = plan.frame_size
        print(
            f"== dataset: {plan.train_clips} training clips of {plan.clip_frames} frames and val clip "
            f"{VAL_CLIP} of {plan.val_frames}, {h}x{w}",
            flush=True,
        )
        t0 = time.monotonic()
        source, rendered = build_dataset(plan)
        summary.steps_s["render"] = time.monotonic() - t0
        prepared = plan.data_dir / "prepared"
        if rendered:
            shutil.rmtree(prepared, ignore_errors=True)
        prepare = [python, "jobs/prepare_data.py", "--source", str(source), "--output", str(prepared)]
        prepare += ["--num-cpus", str(os.cpu_count() or 1)]
        _, summary.steps_s["prepare"] = run_step("prepare", prepare, plan, deadline, eval_reserve + 120)

        train = [python, "jobs/train_ttvsr.py", "--config", TRAIN_CONFIG]
        train += ["--gpus", str(plan.gpus)] if plan.gpus else ["--num-workers", "1"]
        train += ["--name", RUN_NAME, "--storage-path", str(plan.run_dir / "runs")]
        train += ["--mlflow-uri", plan.tracking_uri, "--set", f"data.path={prepared}"]
        for override in plan.overrides:
            train += ["--set", override]
        sampler = GpuSampler(plan.out / "gpu_samples.csv") if plan.gpus else None
        try:
            with sampler or contextlib.nullcontext():
                train_log, summary.steps_s["train (job wall time)"] = run_step(
                    "train", train, plan, deadline, eval_reserve
                )
        except CheckFailed as error:
            history = metric_history(plan.tracking_uri, RUN_NAME)  # what got logged before it stopped
            reached = history["loss"][-1][0] if history.get("loss") else 0
            raise CheckFailed(
                f"{error}; the last loss logged is at iteration {reached} of {plan.iters}"
            ) from None
        finally:
            summary.gpu_memory = sampler.summary() if sampler else {}
        history = metric_history(plan.tracking_uri, RUN_NAME)
        summarise_training(summary, plan, history, train_log)

        checkpoint = plan.run_dir / "runs" / RUN_NAME / f"checkpoint_{plan.iters:08d}"
        if not checkpoint.is_dir():
            found = sorted(p.name for p in (plan.run_dir / "runs" / RUN_NAME).glob("checkpoint_*"))
            raise CheckFailed(f"training: no checkpoint {checkpoint} (found {found})")
        evaluate = [python, "jobs/evaluate.py", "--model", str(checkpoint), "--data", str(prepared)]
        evaluate += ["--device", plan.eval_device, "--output", str(plan.run_dir / "evaluation")]
        evaluate += ["--mlflow-uri", plan.tracking_uri, "--set", "max_clips=1"]
        output, summary.steps_s["evaluate"] = run_step("evaluate", evaluate, plan, deadline, 0)
        table = plan.run_dir / "evaluation" / "per_clip.md"
        where = [line for line in output.splitlines() if line.startswith("evaluated on")]
        summary.evaluation = "\n".join(
            [table.read_text() if table.is_file() else "\n".join(output.splitlines()[-8:]), *where]
        )
        if plan.gpus and not any(line.startswith("evaluated on cuda") for line in where):
            summary.warnings.append(f"jobs/evaluate.py --device cuda did not report a GPU run: {where}")
        if step_failure:  # found in the step check; the training's figures are worth having anyway
            raise CheckFailed(step_failure)
    except CheckFailed as error:
        summary.failure = str(error)
        if not summary.loss and history.get("loss"):
            summary.loss = history["loss"]
    report(summary, plan, history, started)
    return 1 if summary.failure else 0


if __name__ == "__main__":
    sys.exit(main())
