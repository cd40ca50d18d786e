"""The option helper every job builds its parser with (pipelines/common/cli.py)."""

from __future__ import annotations

import pytest

from pipelines.common.cli import command_parser, config_overrides, option

OPTIONS = [
    option("--model", exclusive="model", help="a model"),
    option("--official", exclusive="model", help="a released file"),
    option("--name", key="run.name", help="the run"),
    option("--crf", key="crf", type=int, section="output video", help="quality"),
    option("--quiet", action="store_true", help="no progress"),
]


def test_options_become_overrides_after_the_users_set_and_only_when_given():
    parser = command_parser("a job", OPTIONS, required=["model"])
    args = parser.parse_args(["--model", "m", "--name", "001", "--set", "optim.lr=1e-4", "--crf", "12"])
    assert config_overrides(args, OPTIONS) == ["optim.lr=1e-4", 'run.name="001"', "crf=12"]
    args = parser.parse_args(["--official", "o"])
    assert config_overrides(args, OPTIONS) == [] and args.config is None and args.verbose is False


def test_exclusive_and_required_groups_and_sections_show_in_usage_and_help(capsys):
    parser = command_parser("a job", OPTIONS, required=["model"], prog="job")
    text = parser.format_help()
    assert "(--model MODEL | --official OFFICIAL)" in text
    assert "output video:\n  --crf CRF" in text
    for argv, message in (
        (["--model", "m", "--official", "o"], "argument --official: not allowed with argument --model"),
        ([], "one of the arguments --model --official is required"),
    ):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_job_without_a_config_has_no_config_or_set_option():
    parser = command_parser("a job", [option("checkpoint")], config=False, set_example=None)
    assert parser.parse_args(["ckpt"]).checkpoint == "ckpt"
    with pytest.raises(SystemExit):
        parser.parse_args(["ckpt", "--set", "a=1"])
