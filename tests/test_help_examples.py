"""Every example a user may copy runs: the commands and ``--set KEY=VALUE`` examples of every job's
``--help``, of README.md, docs/*.md and the configs' comments.

Each command goes through its real job script (``runpy``, as ``python jobs/<script>.py`` runs it): the
real parser, config file, ``--set`` overrides and flag checks, up to the call that would start the work
(training, a search, preparation, evaluation, inference, registration), which is replaced by a stub that
stops there: the work needs Ray, datasets and paths of a cluster (``/mnt/shared/...``) that are not here.
A search's stub still loads its base experiment (:func:`pipelines.tuning.config.base_experiment`), which
checks every ``experiment.*`` key. A ``--set`` example outside a command must be a key of some job's config.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from jobs import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (REPO_ROOT / "jobs").glob("*.py") if not path.stem.startswith("_"))
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))

# The arguments that make a job reach its work, for trying a --set example of its --help alone.
MINIMAL_ARGS = {
    "train_ttvsr": [],
    "train_vsrt": [],
    "demo": [],
    "tune_ttvsr": ["--config", "configs/search/ttvsr_token_scales_sample.yaml"],
    "tune_vsrt": ["--config", "configs/search/vsrt_patch_frames_lr_sample.yaml"],
    "evaluate": [],
    "prepare_data": ["--dataset", "sample"],
    "infer": ["in.mp4", "out.mp4", "--model", "models:/ttvsr@champion"],
    "profile_model": ["--arch", "ttvsr"],
}
COMMAND = re.compile(r"(?:python[0-9.]*\s+(?:\S*/)?jobs/(\w+)\.py|\b(ray-vsr-[\w-]+))((?:\s+\S+)*)")
SET_EXAMPLE = re.compile(r"--set\s+('[^']*'|\"[^\"]*\"|[^\s`'\")]+=[^\s`'\")]*)")


PLACEHOLDERS = {"KEY=VALUE", "key=value", "a.b=value", "key.path=value", "section.key=value"}


def set_examples(text: str) -> list[str]:
    """The ``KEY=VALUE`` of every ``--set`` example in ``text`` (placeholders such as ``KEY=VALUE`` left out)."""
    examples = [e for e in SET_EXAMPLE.findall(text) if e.strip("'\"") not in PLACEHOLDERS]
    return [e for e in examples if not e.split("=", 1)[0].isupper()]  # usage lines: [--set KEY=VALUE]


class Reached(Exception):
    """Raised by the stubs: the command got through parsing and config loading to its work."""


def _stop(*args, **kwargs):
    raise Reached()


@pytest.fixture
def dry_run(monkeypatch):
    """Stub out the work of every job (see the module docstring); run from the repository root."""
    import pipelines.data.prepare.run as prepare_run
    import pipelines.demo as demo
    import pipelines.evaluation.run as evaluation_run
    import pipelines.inference.profiling as profiling
    import pipelines.inference.run as inference_run
    import pipelines.tracking as tracking
    import pipelines.training.run as training_run
    import pipelines.tuning.run as tuning_run
    from pipelines.tuning.config import base_experiment
    from vsr_models import get_family

    def search_stub(spec):
        base_experiment(spec)  # checks every experiment.* key and every value a trial can draw
        raise Reached()

    def profile_stub(arch, size, frames, overrides, *args):
        get_family(arch).config_class(**overrides)  # an unknown field: TypeError, a one-line error
        raise Reached()

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(training_run, "run_training", _stop)
    monkeypatch.setattr(demo, "run_demo", _stop)
    monkeypatch.setattr(tuning_run, "run_search", search_stub)
    monkeypatch.setattr(evaluation_run, "run_evaluation", _stop)
    monkeypatch.setattr(prepare_run, "run_prepare", _stop)
    monkeypatch.setattr(inference_run, "run_inference", _stop)
    monkeypatch.setattr(profiling, "profile_report", profile_stub)
    monkeypatch.setattr(tracking, "register_checkpoint", _stop)
    return run_script


def run_script(script: str, argv: list[str]) -> tuple[int | None, str, str]:
    """``python jobs/<script>.py ARGV`` in this process: (exit status or None if it reached its work,
    stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = [f"jobs/{script}.py", *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(REPO_ROOT / "jobs" / f"{script}.py"), run_name="__main__")
        code = 0
    except Reached:
        code = None
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def _lines(text: str, comment: str = "") -> list[str]:
    """Lines with their ``\\`` continuations joined (and a comment prefix such as ``#`` dropped)."""
    joined, pending = [], ""
    for line in text.splitlines():
        line = line.strip()
        if comment and line.startswith(comment):
            line = line[len(comment) :].strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return joined


def commands_in(text: str, comment: str = "") -> list[tuple[str, list[str]]]:
    """``(script, argv)`` of every ``python jobs/<script>.py ...`` / ``ray-vsr-... ...`` command in ``text``."""
    found = []
    for line in _lines(text, comment):
        for match in COMMAND.finditer(line):
            script = match.group(1) or COMMANDS.get(match.group(2))
            if script is None:
                continue
            rest = re.split(r"`|\s#|\s\||&&|;|\)\s", match.group(3) + " ")[0]
            try:
                argv = shlex.split(rest)
            except ValueError:  # an unbalanced quote: prose, not a command
                continue
            if match.group(2) and not argv:  # `ray-vsr-infer` named in a sentence, not an example
                continue
            found.append((script, argv))
    return found


def help_text(script: str) -> str:
    code, out, _ = run_script(script, ["--help"])
    assert code == 0
    return out


def documented_examples() -> list[tuple[str, str, list[str]]]:
    examples = []
    for path in DOCUMENTS:
        for script, argv in commands_in(path.read_text()):
            examples.append((path.relative_to(REPO_ROOT).as_posix(), script, argv))
    for path in CONFIGS:
        for script, argv in commands_in(path.read_text(), comment="#"):
            examples.append((path.relative_to(REPO_ROOT).as_posix(), script, argv))
    return examples


def _id(example) -> str:
    where, script, argv = example
    return f"{where}:{script} {' '.join(argv)}"[:120]


def test_the_documents_hold_examples_of_every_job():
    scripts = {script for _, script, _ in documented_examples()}
    assert {"train_ttvsr", "train_vsrt", "tune_ttvsr", "evaluate", "infer", "prepare_data"} <= scripts


@pytest.mark.parametrize("example", documented_examples(), ids=_id)
def test_every_documented_command_parses_and_loads_its_config(example, dry_run):
    where, script, argv = example
    code, _, err = dry_run(script, argv)
    assert code is None, f"{where}: python jobs/{script}.py {shlex.join(argv)} exits {code}: {err}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_example_in_a_jobs_help_runs(script, dry_run):
    text = help_text(script)
    commands = [(s, argv) for s, argv in commands_in(text) if argv != ["--help"]]
    for job, argv in commands:
        code, _, err = dry_run(job, argv)
        assert code is None, (
            f"--help of {script}: python jobs/{job}.py {shlex.join(argv)} exits {code}: {err}"
        )
    # --set examples of the options' help, alone on top of the job's minimal arguments
    in_commands = {example for _, argv in commands for example in set_examples(shlex.join(argv))}
    for example in set_examples(text):
        if example in in_commands:
            continue
        if script not in MINIMAL_ARGS:
            pytest.fail(f"{script} shows --set {example} but has no --set option")
        code, _, err = dry_run(script, [*MINIMAL_ARGS[script], "--set", example.strip("'\"")])
        assert code is None, f"--help of {script}: --set {example} exits {code}: {err}"


def test_set_examples_in_prose_are_keys_of_a_config(dry_run):
    """``--set`` examples written outside a whole command (``--set optim.lr=1e-4`` in a sentence)."""
    checked = 0
    for path in DOCUMENTS:
        text = path.read_text()
        in_commands = {example for _, argv in commands_in(text) for example in set_examples(shlex.join(argv))}
        for example in set_examples(text):
            value = re.sub(
                r"=(\.\.\.|<[^>]*>)$", "=x", example.strip("'\"")
            )  # name=...: the key still counts
            if example in in_commands or value in {v.strip("'\"") for v in in_commands}:
                continue
            jobs = ["train_ttvsr", "train_vsrt", "tune_ttvsr", "evaluate", "prepare_data", "infer"]
            # alone on a job's defaults; a value that needs another key (scaling.lr_rule needs the recipe's
            # batch) still counts: the key is real, and whole commands are checked whole above
            results = [dry_run(job, [*MINIMAL_ARGS[job], "--set", value]) for job in jobs]
            known = [code is None or "unknown config key" not in err for code, _, err in results]
            assert any(known), f"{path.name}: --set {value} is a key of no job's config"
            checked += 1
    assert checked >= 1


def test_the_old_train_lr_example_is_refused_and_names_optim_lr(dry_run):
    code, _, err = dry_run("train_ttvsr", ["--set", "train.lr=1e-4"])
    assert code == 2 and "unknown config key 'train.lr'" in err
    assert "optim.lr=1e-4" in help_text("train_ttvsr")
