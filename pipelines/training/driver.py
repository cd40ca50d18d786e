"""Transitional: :mod:`pipelines.training.run` under its old name, for the modules not yet moved to it."""

from pipelines.training.run import (  # noqa: F401
    REGISTER_PATIENCE_S,
    REGISTERED_ITERATION_TAG,
    TrainingSummary,
    best_checkpoint,
    check_paths_reach_nodes,
    check_training_inputs,
    end_unfinished_run,
    fitting_clips,
    register_command,
    register_result,
    run_training,
    training_crops,
    validation_lineage,
)
