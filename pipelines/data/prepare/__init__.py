"""Preparation: a video dataset -> Parquet shards of uint8 frame sequences + ``manifest.json``.

:func:`prepare_dataset` (``jobs/prepare_data.py``) is the entry point; the steps live in ``plan``
(clips, splits, shards), ``stages`` (what is done to one clip), ``shards`` (the per-shard Ray task, files and done-records) and
``job`` (orchestration, summary, command line).
"""

from pipelines.data.prepare.config import SAMPLE_OUTPUT, SAMPLE_SOURCE, PrepareConfig, SplitConfig
from pipelines.data.prepare.job import PrepareSummary, prepare_dataset

__all__ = [
    "SAMPLE_OUTPUT",
    "SAMPLE_SOURCE",
    "PrepareConfig",
    "PrepareSummary",
    "SplitConfig",
    "prepare_dataset",
]
