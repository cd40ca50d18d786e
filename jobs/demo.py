"""The whole pipeline in a few minutes on a laptop (``make demo``).

1. prepares the built-in sample dataset (real photographs in smooth motion, BI x4) into data/sample;
2. trains the small TTVSR of configs/ttvsr_sample.yaml on Ray Train (resumes if run before);
3. evaluates it on the sample's validation clips against bicubic (RGB PSNR / SSIM);
4. registers it in MLflow as ttvsr (alias champion if it is the best so far);
5. super-resolves a validation clip, written as an LR and an SR video;
and prints where to look. Every step skips work already done, so running it again is quick.

Examples:
  python jobs/demo.py
  python jobs/demo.py --set train.total_iters=600 --name ttvsr_sample_600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.evaluate import EvaluationConfig, run_evaluation
from pipelines.experiment import TTVSRExperiment, add_experiment_args, experiment_from_args
from pipelines.infer import super_resolve_video
from pipelines.ingest import iter_val_clips
from pipelines.prepare import PrepareConfig, prepare_dataset
from pipelines.train import init_ray, run_training
from pipelines.video_io import FrameWriter

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = add_experiment_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--output", default="outputs/demo", help="where the demo videos go")
    parser.set_defaults(config=str(REPO_ROOT / "configs" / "ttvsr_sample.yaml"))
    args = parser.parse_args(argv)
    cfg = experiment_from_args(TTVSRExperiment, args)
    output = Path(args.output).resolve()

    init_ray(cfg.run.address)
    print(f"[1/5] preparing the sample dataset in {cfg.data.path}", flush=True)
    print(prepare_dataset(PrepareConfig(source="sample", output=cfg.data.path)).table(), flush=True)

    print(f"[2/5] training {cfg.run.name} on Ray Train ({cfg.train.total_iters} iterations)", flush=True)
    summary = run_training(cfg)
    print(summary.describe(), flush=True)

    print("[3/5] evaluating the trained network against bicubic on the validation clips", flush=True)
    evaluation = EvaluationConfig(model=summary.checkpoint_path, data=cfg.data.path, channel=cfg.val.channel)
    print(run_evaluation(evaluation).table(), flush=True)

    model_uri = f"models:/{cfg.tracking.registered_model}@{cfg.tracking.champion_alias}"
    print(f"[4/5] registry: {model_uri} -> {summary.registered.uri if summary.registered else 'unchanged'}")

    clip_id, lr, _ = next(iter_val_clips(cfg.data.path, split=cfg.data.val_split))
    lr_video, sr_video = output / f"{clip_id}_lr.mkv", output / f"{clip_id}_sr_x4.mkv"
    print(f"[5/5] super-resolving validation clip {clip_id} with {model_uri}", flush=True)
    with FrameWriter(lr_video, fps=25, overwrite=True) as writer:
        writer.write((lr[0].permute(0, 2, 3, 1) * 255).round().byte().numpy())
    super_resolve_video(model_uri, lr_video, sr_video, overwrite=True, tracking_uri=summary.tracking_uri)

    store = summary.tracking_uri
    print(
        "\nWhere to look:\n"
        f"  MLflow UI:    mlflow ui --backend-store-uri {store} --port 5000   (then http://localhost:5000)\n"
        f"  checkpoints:  {Path(summary.checkpoint_path).parent}\n"
        f"  videos:       {lr_video} (input, LR)  ->  {sr_video} (x4)\n"
        f"  evaluate:     python jobs/evaluate.py --model {model_uri} --data {cfg.data.path} --mlflow-uri {store}\n"
        f"  infer:        python jobs/infer.py {lr_video} {output / 'sr.mp4'} --model {model_uri} --mlflow-uri {store}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
