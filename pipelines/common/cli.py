"""The one way a command line is made: options declared in ``jobs/``, parsed here, run with one error line.

A job in ``jobs/`` lists its options with :func:`option` (flags, the config key the value sets, argparse's
settings) and builds its parser with :func:`command_parser`, the only place that calls ``add_argument``:

- every parser has ``--verbose``; a job with a typed config also has ``--config FILE`` and the
  repeatable ``--set KEY=VALUE`` (:data:`CONFIG_OPTION`, :func:`set_option`);
- :func:`config_overrides`: the user's ``--set`` first, then every option given that names a config key
  (``--name run1`` -> ``run.name="run1"``), written as JSON, which YAML reads back unchanged (a name
  such as ``"001"`` or ``"true"`` stays a string);
- :func:`run_job`: runs a job's body; a :class:`~pipelines.common.errors.UserError` (also when Ray
  raised it in a task or a training worker) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.common.config import as_overrides
from pipelines.common.console import LIBRARY_LOG_NAME, VerboseAction, quiet_logging
from pipelines.common.errors import find_user_error

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130


@dataclass(frozen=True)
class Option:
    """One command-line option: its flags, the config key its value sets (if any), argparse's settings."""

    names: tuple[str, ...]
    key: str | None = None  # "run.name": the value becomes the override run.name=<value>
    settings: Mapping[str, Any] = field(default_factory=dict)
    section: str | None = None  # a titled section of --help ("output video (docs/video.md)")
    exclusive: str | None = None  # options naming the same group exclude each other ("model")

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value."""
        if "dest" in self.settings:
            return self.settings["dest"]
        longest = max(self.names, key=len)
        return longest.lstrip("-").replace("-", "_")


def option(
    *names: str,
    key: str | None = None,
    section: str | None = None,
    exclusive: str | None = None,
    **settings: Any,
) -> Option:
    """An option of a job: ``option("--name", key="run.name", help=...)``.

    ``key`` names the config field the value overrides (applied after ``--config`` and ``--set``); an
    option without one is read by the job itself. ``section`` lists it under that title in ``--help``;
    options with the same ``exclusive`` name exclude each other. ``settings`` are
    ``ArgumentParser.add_argument``'s.
    """
    return Option(tuple(names), key, settings, section, exclusive)


def set_option(example: str) -> Option:
    """The repeatable ``--set KEY=VALUE`` (collected in ``args.overrides``, parsed by the config loader).

    ``example`` must be a key of the job's own config: tests/test_help_examples.py runs every example.
    """
    return option(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config field, e.g. --set {example} (repeatable)",
    )


VERBOSE_OPTION = option(
    "--verbose",
    action=VerboseAction,
    help="also print Ray's, Ray Data's and MLflow's own messages and progress bars (default: in "
    f"<Ray session>/logs/{LIBRARY_LOG_NAME})",
)
CONFIG_OPTION = option("--config", metavar="FILE", help="YAML config file (see configs/)")


def command_parser(
    description: str | None,
    options: Sequence[Option],
    *,
    set_example: str | None = "optim.lr=1e-4",
    config: bool = True,
    prog: str | None = None,
    required: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """The parser of one job: its docstring as help (examples kept as written), then ``options``.

    ``config``: add ``--config FILE``; ``set_example``: add ``--set`` with this ``KEY=VALUE`` of the
    job's own config in its help (``None``: no ``--set``); ``required``: the ``exclusive`` groups of which
    one option must be given. Every parser has ``--verbose``.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = [CONFIG_OPTION] if config else []
    common += [VERBOSE_OPTION] + ([set_option(set_example)] if set_example else [])
    sections: dict[str | None, Any] = {None: parser}
    exclusive: dict[tuple[str | None, str], Any] = {}
    for item in [*common, *options]:
        if item.section not in sections:
            sections[item.section] = parser.add_argument_group(item.section)
        target = sections[item.section]
        if item.exclusive is not None:
            group = (item.section, item.exclusive)
            if group not in exclusive:
                exclusive[group] = target.add_mutually_exclusive_group(required=item.exclusive in required)
            target = exclusive[group]
        target.add_argument(*item.names, **item.settings)
    return parser


def config_overrides(args: argparse.Namespace, options: Sequence[Option]) -> list[str]:
    """The user's ``--set`` overrides, then the given options that name a config key, as overrides."""
    given = {item.key: getattr(args, item.dest) for item in options if item.key is not None}
    return [*getattr(args, "overrides", []), *flag_overrides(given)]


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
