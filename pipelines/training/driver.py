"""Transitional: :func:`pipelines.training.run.run_training` under its old module, for the modules not
yet moved to it (this module goes once nothing imports it)."""

from pipelines.training.run import run_training

__all__ = ["run_training"]
