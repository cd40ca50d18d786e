"""Preparation: a video dataset -> Parquet shards of uint8 frame sequences + ``manifest.json``.

:func:`run_prepare` (``jobs/prepare_data.py``) is the stage and :func:`prepare_dataset` its work once
Ray runs (``run``); the steps live in ``discovery`` (what the source holds, probed in Ray tasks),
``plan`` (clips, splits, shards), ``stages`` (what is done to one clip), ``shards`` (the per-shard Ray
task, files and done-records) and ``records`` (the done-records -> the manifest).
"""

from pipelines.data.prepare.config import SAMPLE_OUTPUT, SAMPLE_SOURCE, PrepareConfig, SplitConfig
from pipelines.data.prepare.run import PrepareSummary, prepare_dataset, run_prepare

__all__ = [
    "SAMPLE_OUTPUT",
    "SAMPLE_SOURCE",
    "PrepareConfig",
    "PrepareSummary",
    "SplitConfig",
    "prepare_dataset",
    "run_prepare",
]
