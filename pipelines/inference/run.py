"""``jobs/infer.py``: one video streamed window by window, or a folder of videos on Ray Data.

:func:`run_inference` refuses what the actors of a folder of videos would each fail on before Ray starts
(:func:`check_before_workers`), then runs :func:`pipelines.inference.video.super_resolve_video` on one
video or :func:`pipelines.inference.batch.super_resolve_many` on a folder of them, and checks each
output's frames and size when asked (``scale_check``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines.common.errors import ConfigError
from pipelines.common.ray_session import init_ray
from pipelines.inference.batch import format_table, super_resolve_many
from pipelines.inference.config import InferenceConfig
from pipelines.inference.video import InferSummary, check_output, check_tile, describe, super_resolve_video


@dataclass(frozen=True)
class InferenceSummary:
    """What a ``jobs/infer.py`` run wrote: one summary per video, and whether it was a folder of videos."""

    videos: tuple[InferSummary, ...]
    many: bool = False

    def describe(self) -> str:
        """A line per video (with its notes), then for a folder of videos the table of all."""
        lines = [describe(summary) for summary in self.videos]
        if self.many:
            lines.append(format_table(self.videos))
        return "\n".join(lines)


def check_before_workers(cfg: InferenceConfig) -> None:
    """What the actors of a folder of videos would each fail on, refused in one line before Ray starts:
    the pool's size and, when ``tile`` is given, the tile against the network (loaded here on the CPU)."""
    if cfg.num_workers < 1:
        raise ConfigError(
            f"--num-workers must be at least 1 (actors for a folder of videos), got {cfg.num_workers}"
        )
    if not cfg.gpus_per_worker >= 0:
        raise ConfigError(f"--gpus-per-worker must be 0 or more, got {cfg.gpus_per_worker}")
    if cfg.video.tile is not None:
        check_tile(cfg.model.load(), cfg.video.tile)


def run_inference(cfg: InferenceConfig) -> InferenceSummary:
    """Super-resolve ``cfg.input`` into ``cfg.output`` (module docstring)."""
    if cfg.many:
        check_before_workers(cfg)
        init_ray(cfg.address)
        videos = super_resolve_many(
            cfg.input,
            cfg.output,
            cfg.model,
            cfg.num_workers,
            config=cfg.video,
            suffix=cfg.suffix,
            num_gpus_per_worker=cfg.gpus_per_worker,
            overwrite=cfg.overwrite,
        )
    else:
        videos = [
            super_resolve_video(
                cfg.model,
                cfg.input,
                cfg.output,
                **asdict(cfg.video),
                progress=cfg.progress,
                overwrite=cfg.overwrite,
            )
        ]
    if cfg.scale_check:
        for summary in videos:
            check_output(summary)
    return InferenceSummary(tuple(videos), cfg.many)
