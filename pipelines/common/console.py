"""A quiet console: the project's lines and progress on the terminal, the libraries' chatter in log files.

Without ``--verbose`` (every job has it; it sets ``RAY_VSR_VERBOSE=1``):

- MLflow's INFO lines (database migrations, "Successfully registered model", system-metrics notes) and
  its artifact-download bars, Ray Train / Data / Tune INFO lines and deprecation warnings are not
  printed (:func:`quiet_logging`, in the driver and in the training workers);
- the output Ray forwards from its own actors (Ray Train's controller, Ray Data's coordinators and their
  progress bars, which are line noise off a terminal) goes to ``<Ray session>/logs/ray-vsr-libraries.log``
  instead of the console (:func:`route_worker_output`); what the project's code prints in Ray Train
  workers, Tune trials and Ray tasks still reaches the console. The dashboard line printed when Ray
  starts says where that file is.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

VERBOSE_ENV = "RAY_VSR_VERBOSE"
LIBRARY_LOG_NAME = "ray-vsr-libraries.log"
QUIET_LOGGERS = ("mlflow", "alembic", "ray.train", "ray.data", "ray.tune", "ray.air")
# Ray's own actors: their output is the libraries' chatter, not the project's.
LIBRARY_ACTORS = (
    "TrainController",
    "DatasetManager",
    "SplitCoordinator",
    "PreemptionWatcher",
    "AutoscalingCoordinator",
    "PlacementGroupCleaner",
    "TrainStateActor",
    "_StatsActor",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class VerboseAction(argparse.Action):
    """``--verbose``: sets ``RAY_VSR_VERBOSE=1`` as soon as it is parsed (workers started later inherit it)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[VERBOSE_ENV] = "1"  # Ray workers started from now on inherit it
        setattr(namespace, self.dest, True)


class _LibraryLog:
    """A text stream appending to the libraries' log file (:func:`library_log_path` once Ray runs)."""

    path: Path | None = None

    def write(self, text: str) -> int:
        import tempfile

        path = self.path or Path(tempfile.gettempdir()) / LIBRARY_LOG_NAME
        with open(path, "a") as sink:
            return sink.write(text)

    def flush(self) -> None:
        pass


LIBRARY_LOG = _LibraryLog()


def quiet_logging() -> None:
    """Keep the libraries' INFO lines and deprecation warnings off the console (not with ``--verbose``).

    In this process and, through the environment, in the Ray processes it starts: MLflow's loggers at
    WARNING (``MLFLOW_LOGGING_LEVEL``) and its direct prints ("Successfully registered model") in the
    libraries' log file; the loggers of Ray's libraries (some named by file path) at WARNING.
    """
    if verbose():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in list(logging.Logger.manager.loggerDict):
        if f"{os.sep}ray{os.sep}" in name:  # Ray Train's loggers named after their files
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from mlflow.utils import logging_utils
    except ImportError:
        return
    logging_utils.MLFLOW_LOGGING_STREAM = LIBRARY_LOG
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # importing mlflow set it from the environment


def library_log_path() -> Path:
    """``<Ray session>/logs/ray-vsr-libraries.log`` of the Ray this process is connected to."""
    import tempfile

    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    folder = Path(node.get_logs_dir_path()) if node is not None else Path(tempfile.gettempdir())
    return folder / LIBRARY_LOG_NAME


def route_worker_output() -> Path | None:
    """Send what Ray's own actors print to :func:`library_log_path` instead of the console; the file, or
    None with ``--verbose`` (everything printed) or when this Ray version has no dispatcher to hook."""
    if verbose():
        return None
    import functools

    import ray._private.worker as ray_worker

    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    if dispatcher is None or not hasattr(ray_worker, "print_worker_logs"):
        return None
    path = library_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    LIBRARY_LOG.path = path
    sink = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's lifetime
    to_console = functools.partial(
        ray_worker.print_to_stdstream,
        ignore_prefix=ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker),
    )

    def dispatch(data: dict) -> None:
        origin = data.get("actor_name") or data.get("task_name") or ""
        if origin.startswith(LIBRARY_ACTORS) or not origin:  # no name: Ray Data's executor, the raylet
            ray_worker.print_worker_logs(data, sink, ignore_prefix=False)
        else:
            to_console(data)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", dispatch)
    return path
