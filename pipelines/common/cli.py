"""The pieces every command line shares: ``--config`` / ``--set``, flags as overrides, one error line.

- :func:`job_parser`: an ``ArgumentParser`` with the job's docstring as help and ``--config`` /
  ``--set KEY=VALUE`` (:func:`add_config_args`).
- :func:`flag_overrides`: direct flags (``--name run1``) become ``--set`` overrides applied after the
  config file and the user's own ``--set``; values are written as JSON, which YAML reads back unchanged
  (a name such as ``"001"`` or ``"true"`` stays a string).
- :func:`run_job`: runs a job's body; a :class:`~pipelines.common.errors.UserError` (also when Ray
  raised it in a task or a training worker) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pipelines.common.config import as_overrides
from pipelines.common.console import add_verbose_arg, quiet_logging
from pipelines.common.errors import ConfigError, find_user_error

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


def add_set_arg(parser: argparse.ArgumentParser, example: str = "optim.lr=1e-4") -> argparse.ArgumentParser:
    """Add the repeatable ``--set KEY=VALUE`` (collected in ``args.overrides``, parsed by the config loader).

    ``example`` must be a key of the job's own config: tests/test_help_examples.py runs every example.
    """
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config field, e.g. --set {example} (repeatable)",
    )
    return parser


def add_config_args(
    parser: argparse.ArgumentParser, set_example: str = "optim.lr=1e-4"
) -> argparse.ArgumentParser:
    """Add the ``--config`` and repeatable ``--set`` options every command shares."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see configs/)")
    add_verbose_arg(parser)
    return add_set_arg(parser, set_example)


def job_parser(
    description: str | None = None, prog: str | None = None, set_example: str = "optim.lr=1e-4"
) -> argparse.ArgumentParser:
    """A parser whose help is the job's docstring (examples kept as written), with ``--config``/``--set``
    (``set_example``: a ``KEY=VALUE`` of the job's own config, shown in ``--set``'s help)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return add_config_args(parser, set_example)


def check_arch(arch: str | None) -> None:
    """An ``--arch`` the model registry does not know: one line listing the ones it does."""
    from vsr_models import ARCHITECTURES

    if arch is not None and arch not in ARCHITECTURES:
        raise ConfigError(
            f"--arch {arch!r} is not a known architecture: use one of {', '.join(sorted(ARCHITECTURES))}"
        )


def flag_overrides(flags: Mapping[str, Any]) -> list[str]:
    """``{"run.name": "001", "optim.lr": None}`` -> ``['run.name="001"']``: the flags given, as overrides."""
    return as_overrides({key: value for key, value in flags.items() if value is not None})


def run_job(body: Callable[[], int | None]) -> int:
    """Run ``body``; a user error becomes ``error: <message>`` on stderr and exit status 2.

    Nothing is caught silently: an error that is not a user error keeps its traceback (a bug to report).
    The libraries' own messages stay off the console unless ``--verbose`` (:mod:`pipelines.common.console`).
    """
    quiet_logging()
    try:
        return body() or 0
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return USER_ERROR_EXIT
