"""Transitional: the names :mod:`pipelines.training.config` had before issue 20, for the modules not yet
moved to it (this module goes once nothing imports it)."""

from pipelines.training.config import DataSection, Experiment

TTVSRExperiment = Experiment

__all__ = ["DataSection", "Experiment", "TTVSRExperiment"]
