"""The command lines: one script a job, each declaring its options (:func:`pipelines.common.cli.option`).

``python jobs/<script>.py ARGS`` (also under ``ray job submit --working-dir . -- python jobs/...``) and the
installed command (``[project.scripts]`` in pyproject.toml) run the same ``main``:

=========================  ============================  =========================
command                    script                        stage
=========================  ============================  =========================
``ray-vsr-prepare``        ``jobs/prepare_data.py``      pipelines.data.prepare
``ray-vsr-train-ttvsr``    ``jobs/train_ttvsr.py``       pipelines.training
``ray-vsr-train-vsrt``     ``jobs/train_vsrt.py``        pipelines.training
``ray-vsr-tune-ttvsr``     ``jobs/tune_ttvsr.py``        pipelines.tuning
``ray-vsr-tune-vsrt``      ``jobs/tune_vsrt.py``         pipelines.tuning
``ray-vsr-evaluate``       ``jobs/evaluate.py``          pipelines.evaluation
``ray-vsr-infer``          ``jobs/infer.py``             pipelines.inference
``ray-vsr-profile``        ``jobs/profile_model.py``     pipelines.inference
``ray-vsr-register``       ``jobs/register_model.py``    pipelines.tracking
``ray-vsr-demo``           ``jobs/demo.py``              pipelines.demo
=========================  ============================  =========================

A script parses its options, loads its stage's typed config and calls the stage's one function
(``run_<stage>(cfg)``); its docstring is its ``--help``.
"""

COMMANDS = {
    "ray-vsr-prepare": "prepare_data",
    "ray-vsr-train-ttvsr": "train_ttvsr",
    "ray-vsr-train-vsrt": "train_vsrt",
    "ray-vsr-tune-ttvsr": "tune_ttvsr",
    "ray-vsr-tune-vsrt": "tune_vsrt",
    "ray-vsr-evaluate": "evaluate",
    "ray-vsr-infer": "infer",
    "ray-vsr-profile": "profile_model",
    "ray-vsr-register": "register_model",
    "ray-vsr-demo": "demo",
}
"""Installed command -> its script under ``jobs/`` (the same names as ``[project.scripts]``)."""
