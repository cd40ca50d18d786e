"""Throughput of the preparation job (decode PNG, BI x4, compress, write shards) on the sample dataset,
with a local Ray of 1 and of 2 CPUs.

For each CPU count: a warm-up run (Ray starts its workers and they import torch), then a timed run into
a fresh output folder, as `jobs/prepare_data.py --dataset sample` would do it. Frames per second count
HR frames decoded, degraded, compressed and written.

    .venv/bin/python bench/bench_prepare.py [--cpus 1 2] [--cache data/sample_src] [--degradation BI]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from pipelines.common.ray_session import init_ray
from pipelines.data.prepare import PrepareConfig, prepare_dataset
from pipelines.data.sample import render_sample_dataset


def run(source: Path, num_cpus: int, degradation: str) -> tuple[float, float, int]:
    """(warm-up seconds, timed seconds, frames) of one CPU count."""
    init_ray(num_cpus=num_cpus)
    try:
        with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as timed:
            started = time.perf_counter()
            prepare_dataset(PrepareConfig(source=str(source), output=warm, degradation=degradation))
            warm_up = time.perf_counter() - started
            summary = prepare_dataset(
                PrepareConfig(source=str(source), output=timed, degradation=degradation)
            )
        return warm_up, summary.seconds, summary.frames_processed
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", default="data/sample_src", help="where the sample dataset is rendered")
    parser.add_argument("--degradation", choices=["BI", "BD"], default="BI")
    args = parser.parse_args()
    source = render_sample_dataset(Path(args.cache))
    print(f"sample dataset: {source}")
    print(f"{'Ray CPUs':>8}  {'frames':>6}  {'warm-up s':>9}  {'timed s':>7}  {'frames/s':>8}")
    for num_cpus in args.cpus:
        warm_up, seconds, frames = run(source, num_cpus, args.degradation)
        print(f"{num_cpus:>8}  {frames:>6}  {warm_up:>9.1f}  {seconds:>7.1f}  {frames / seconds:>8.1f}")


if __name__ == "__main__":
    main()
