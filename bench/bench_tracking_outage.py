"""A long tracking outage during a real training run: the timeline of iterations and of logged steps.

Starts ``mlflow server`` on 127.0.0.1 (SQLite backend), trains the tiny TTVSR of configs/ttvsr_test.yaml
on a sample dataset for ``--iters`` iterations logging every iteration, SIGKILLs the server (its whole
process group) right after iteration ``--kill-at`` and starts it again on the same port ``--outage``
seconds later. Prints when the server died and returned, the iterations done meanwhile and their rate
against the rate before the kill (measured in the same run), and which logged steps reached MLflow.

    .venv/bin/python bench/bench_tracking_outage.py [--outage 90] [--kill-at 20] [--iters 300]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outage", type=float, default=90.0, help="seconds the server stays dead")
    parser.add_argument("--kill-at", type=int, default=20, help="iteration after which it dies")
    parser.add_argument("--iters", type=int, default=300, help="training iterations (log_every 1)")
    args = parser.parse_args()

    from pipelines.common.config import load_config
    from pipelines.common.ray_session import init_ray
    from pipelines.data.prepare import PrepareConfig, prepare_dataset
    from pipelines.data.sample import render_sample_dataset
    from pipelines.tracking import RunTracker, mlflow_client
    from pipelines.tracking.server import KillServerAt, MlflowServer
    from pipelines.training.config import Experiment
    from pipelines.training.run import run_training

    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    init_ray(None)
    source = render_sample_dataset(work / "src", num_train_clips=2, num_val_clips=1, num_frames=8)
    data = work / "prepared"
    prepare_dataset(PrepareConfig(source=str(source), output=str(data)))
    server = MlflowServer(work)
    server.start()
    timeline = work / "timeline.txt"
    cfg = load_config(
        Experiment,
        REPO_ROOT / "configs" / "ttvsr_test.yaml",
        [
            f"data.path={data}",
            f"run.storage_path={work / 'runs'}",
            f"tracking.uri={server.uri}",
            "run.name=outage",
            f"train.total_iters={args.iters}",
            "train.log_every=1",
            "train.val_every=50",
            "train.checkpoint_every=50",
            "run.max_failures=0",
            "tracking.system_metrics_interval=5",
        ],
    )
    returned: dict[str, float] = {}

    def restart_after_outage() -> None:
        while server.process.poll() is None:
            time.sleep(0.05)
        time.sleep(args.outage)
        returned["start"] = time.time()
        returned["health_s"] = server.start()
        returned["up"] = time.time()

    watcher = threading.Thread(target=restart_after_outage, daemon=True)
    watcher.start()
    started = time.time()
    try:
        summary = run_training(
            cfg, step_callback=KillServerAt(args.kill_at, server.process.pid, str(timeline))
        )
        ended = time.time()
        watcher.join()
        rows = [line.split() for line in timeline.read_text().splitlines()]
        killed = next(float(t) for event, t in rows if event == "killed")
        steps = [(int(i), float(t)) for i, t in rows if i.isdigit()]
        before = [t for i, t in steps if i <= args.kill_at]
        during = [(i, t) for i, t in steps if killed <= t < returned["up"]]
        after = [t for i, t in steps if t >= returned["up"]]

        def rate(times: list[float]) -> float:
            return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")

        logged = [s for s, _ in RunTracker.attach(server.uri, summary.mlflow_run_id).metric_history("loss")]
        missing = sorted(set(range(1, args.iters + 1)) - set(logged))
        status = mlflow_client(server.uri).get_run(summary.mlflow_run_id).info.status
        print(
            f"outage of {args.outage:.0f} s after iteration {args.kill_at}, {args.iters} iterations, log_every 1"
        )
        print(f"  t={steps[0][1] - started:7.1f} s  iteration 1 (Ray and worker start-up before it)")
        print(f"  t={killed - started:7.1f} s  server killed after iteration {args.kill_at}")
        print(
            f"  t={returned['start'] - started:7.1f} s  server restarted (/health answered "
            f"{returned['health_s']:.1f} s later, at t={returned['up'] - started:.1f} s)"
        )
        print(f"  t={steps[-1][1] - started:7.1f} s  iteration {steps[-1][0]} (the last)")
        print(f"  t={ended - started:7.1f} s  run_training returned (queue flushed, model registered)")
        print(
            f"iterations while the server was down: {len(during)} "
            f"({during[0][0] if during else '-'}..{during[-1][0] if during else '-'})"
        )
        print(
            f"iterations/s: before the kill {rate(before):.2f}, while down "
            f"{rate([t for _, t in during]):.2f}, after it returned {rate(after):.2f}"
        )
        print(
            f"loss steps in MLflow: {len(logged)} of {args.iters}, missing {missing or 'none'}; run {status}"
        )
        print(f"registered: {summary.registered.uri if summary.registered else 'no'}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
