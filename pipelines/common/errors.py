"""The errors a user can cause and fix, in one place.

Every one derives from :class:`UserError`: its message names the input and the fix. A job turns it into
one line on stderr and exit status 2 (:func:`pipelines.common.cli.run_job`); anything else is a bug and
keeps its traceback. The second base class of each keeps ``except ValueError`` / ``FileNotFoundError``
callers working.
"""

from __future__ import annotations

from pathlib import Path

from vsr_models import IncompatibleCheckpointError


class UserError(Exception):
    """A problem with what the user gave (a path, a config, a dataset, a model); the message says the fix."""


class ConfigError(UserError, ValueError):
    """A configuration a user wrote is invalid; the message says which key and how to fix it."""


class DataError(UserError, ValueError):
    """A dataset (source or prepared) is not usable as given; the message names the path and the fix."""


class UnreadableInput(DataError):
    """One input file (an image or a video) cannot be decoded; preparation quarantines it."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # Ray pickles exceptions raised in tasks; keep both fields
        return type(self), (self.path, self.reason)


class VideoError(UserError, ValueError):
    """An input or output video that cannot be used; the message names the path and the fix."""


class StateError(UserError, ValueError):
    """Saved state (a search's Tune files, a run's checkpoints) that is damaged or cannot be verified;
    the message names the path and the fix."""


class TrainingDiverged(UserError, ArithmeticError):
    """The loss became NaN or infinite; the message names the iteration and the last good checkpoint."""


class ModelLoadError(UserError, ValueError):
    """A model specification that names no loadable network; the message says what was tried."""


class MissingInputError(UserError, FileNotFoundError):
    """A path the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output would replace something that exists, and the user did not say to replace it."""


class InferError(UserError, RuntimeError):
    """Some videos of a batch failed (each named with its reason); the others were written."""


# Errors of the layers below that are user errors too (vsr_models cannot import this module).
_FOREIGN_USER_ERRORS: tuple[type[BaseException], ...] = (IncompatibleCheckpointError,)


def find_user_error(error: BaseException) -> BaseException | None:
    """The user error inside ``error``, unwrapped from Ray's task and Train wrappers, or None.

    Ray re-raises a task's exception as ``RayTaskError`` (the original in ``.cause``); Ray Train raises
    ``WorkerGroupError`` with each worker's exception in ``.worker_failures`` and ``ControllerError``
    with ``.controller_failure``. Their messages repeat remote tracebacks, so jobs print the original.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        # RayTaskError(X) subclasses X itself; its message repeats the remote traceback, its cause does not.
        cause = getattr(current, "cause", None)
        if isinstance(cause, (UserError, *_FOREIGN_USER_ERRORS)):
            return cause
        if isinstance(current, (UserError, *_FOREIGN_USER_ERRORS)):
            return current
        stack.extend([current.__cause__, current.__context__, cause])
        stack.append(getattr(current, "controller_failure", None))
        stack.extend((getattr(current, "worker_failures", None) or {}).values())
    return None
