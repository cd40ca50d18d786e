"""The whole pipeline in a few minutes on a laptop (``make demo``, ``jobs/demo.py``).

1. prepares the built-in sample dataset (real photographs in smooth motion, BI x4);
2. trains the small TTVSR of ``configs/ttvsr_sample.yaml`` on Ray Train (resumes if run before);
3. evaluates it on the sample's validation clips against bicubic (RGB PSNR / SSIM);
4. registers it in MLflow (alias ``champion`` if it is the best so far);
5. super-resolves a validation clip, written as an LR and an SR video;

and prints where to look. Every step skips work already done, so running it again is quick.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.common.ray_session import init_ray
from pipelines.data.ingest import iter_val_clips
from pipelines.data.manifest import open_dataset
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.video_io import FrameWriter
from pipelines.evaluation.config import EvaluationConfig
from pipelines.evaluation.run import run_evaluation
from pipelines.inference.loading import ModelRef
from pipelines.inference.video import super_resolve_video
from pipelines.training.config import Experiment
from pipelines.training.run import run_training
from vsr_models.frames import float_to_uint8


def run_demo(cfg: Experiment, output: str | Path) -> str:
    """Run the five steps (printing as it goes); returns the "where to look" text."""
    output = Path(output).resolve()
    init_ray(cfg.run.address)
    print(f"[1/5] preparing the sample dataset in {cfg.data.path}", flush=True)
    print(prepare_dataset(PrepareConfig(source="sample", output=cfg.data.path)).describe(), flush=True)

    print(f"[2/5] training {cfg.run.name} on Ray Train ({cfg.train.total_iters} iterations)", flush=True)
    summary = run_training(cfg)
    print(summary.describe(), flush=True)

    print("[3/5] evaluating the trained network against bicubic on the validation clips", flush=True)
    evaluation = EvaluationConfig(
        model=summary.best_checkpoint_path,
        data=cfg.data.path,
        channel=cfg.val.channel,
        tracking_uri=summary.tracking_uri,
    )
    print(run_evaluation(evaluation).table(), flush=True)

    model_uri = f"models:/{cfg.tracking.registered_model}@{cfg.tracking.champion_alias}"
    if summary.registered is not None and not summary.registered.is_champion:
        # not champion (e.g. it does not beat bicubic yet): its own version
        model_uri = summary.registered.uri
    print(f"[4/5] registry: {model_uri} -> {summary.registered.uri if summary.registered else 'unchanged'}")

    validation = open_dataset(cfg.data.path, splits=[cfg.data.val_split])
    clip_id, lr, _ = next(iter_val_clips(validation, split=cfg.data.val_split))
    lr_video, sr_video = output / f"{clip_id}_lr.mkv", output / f"{clip_id}_sr_x4.mkv"
    print(f"[5/5] super-resolving validation clip {clip_id} with {model_uri}", flush=True)
    with FrameWriter(lr_video, fps=25, overwrite=True) as writer:
        writer.write(float_to_uint8(lr[0]))
    super_resolve_video(
        ModelRef(model_uri, tracking_uri=summary.tracking_uri), lr_video, sr_video, overwrite=True
    )

    store = summary.tracking_uri
    return (
        "\nWhere to look:\n"
        f"  MLflow UI:    mlflow ui --backend-store-uri {store} --port 5000   (then http://localhost:5000)\n"
        f"  checkpoints:  {Path(summary.checkpoint_path).parent}\n"
        f"  videos:       {lr_video} (input, LR)  ->  {sr_video} (x4)\n"
        f"  evaluate:     python jobs/evaluate.py --model {model_uri} --data {cfg.data.path} --mlflow-uri {store}\n"
        f"  infer:        python jobs/infer.py {lr_video} {output / 'sr.mp4'} --model {model_uri} --mlflow-uri {store}"
    )
