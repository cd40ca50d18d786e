"""The installed commands (``[project.scripts]``, the ``main`` of each jobs/ script): after ``pip install -e .``
every one is on the venv's PATH and its ``--help`` is its jobs/ script's, examples included."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from jobs import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def job_help(script: str) -> str:
    """The docstring of ``jobs/<script>.py`` (its ``--help`` text), parsed, not run."""
    return ast.get_docstring(ast.parse((REPO_ROOT / "jobs" / f"{script}.py").read_text()), clean=False)


def test_every_jobs_script_has_an_installed_command_declared_in_pyproject():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    scripts_here = sorted(p.stem for p in (REPO_ROOT / "jobs").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(COMMANDS.values()) == scripts_here
    assert all(scripts[name] == f"jobs.{script}:main" for name, script in COMMANDS.items())


def test_installed_commands_exist_and_show_their_scripts_help():
    missing = [name for name in COMMANDS if not (BIN / name).is_file()]
    assert not missing, f"not installed: {missing}; run: {BIN}/pip install -e '.[dev]'"
    # all at once: each imports torch / Ray, a few seconds apiece
    running = {
        name: subprocess.Popen(
            [str(BIN / name), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name in COMMANDS
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name} --help: {err}"
        first_line = job_help(COMMANDS[name]).strip().splitlines()[0]
        assert first_line in out, f"{name} --help does not show jobs/{COMMANDS[name]}.py's help"
        assert "Examples" in out or "python jobs/" in out, name
