"""The released optimisation recipe, without Ray: parameter groups, SPyNet freezing, cosine restarts,
and the checkpoint round trip a resumed worker relies on."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from pipelines.training.config import OptimSection, ScheduleSection
from pipelines.training.recipe import CosineRestartFactor, build_optimizer, lr_schedule, set_spynet_trainable
from pipelines.training.state import (
    TrainingState,
    latest_checkpoint_iteration,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from vsr_models import build_model
from vsr_models.losses import charbonnier_loss

TINY = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}


@pytest.fixture
def tiny_ttvsr():
    torch.manual_seed(0)
    return build_model("ttvsr", **TINY)


def test_cosine_restarts_follow_the_basicsr_formula():
    base, eta_min = 2e-4, 1e-7
    factor = CosineRestartFactor(base, [10, 20], [1.0, 0.5], eta_min)
    lr = [base * factor(i) for i in range(35)]
    assert lr[0] == pytest.approx(base)
    assert lr[5] == pytest.approx(eta_min + (base - eta_min) / 2)  # half way down the first period
    assert lr[10] == pytest.approx(eta_min + 0.5 * (base - eta_min))  # restart at weight 0.5
    assert lr[20] == pytest.approx(eta_min + 0.5 * (base - eta_min) / 2)
    assert lr[29] == pytest.approx(eta_min + 0.5 * (base - eta_min) * (1 + math.cos(math.pi * 19 / 20)) / 2)
    assert lr[30:] == pytest.approx([eta_min] * 5)  # after the last period
    assert all(a >= b for a, b in zip(lr[:10], lr[1:10]))  # monotone within a period


def test_spynet_group_gets_an_eighth_of_the_lr_and_both_anneal_to_the_same_eta_min(tiny_ttvsr):
    optimizer = build_optimizer(tiny_ttvsr, OptimSection(lr=2e-4))
    network, spynet = optimizer.param_groups
    assert (network["name"], spynet["name"]) == ("network", "spynet")
    spynet_ids = {id(p) for p in tiny_ttvsr.spynet.parameters()}
    assert {id(p) for p in spynet["params"]} == spynet_ids
    assert len(network["params"]) + len(spynet["params"]) == len(list(tiny_ttvsr.parameters()))
    assert optimizer.defaults["betas"] == (0.9, 0.99)

    scheduler = lr_schedule(optimizer, ScheduleSection(periods=[4], restart_weights=[1.0], eta_min=1e-7))
    assert (network["lr"], spynet["lr"]) == pytest.approx((2e-4, 2.5e-5))
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert network["lr"] == pytest.approx(1e-7 + (2e-4 - 1e-7) / 2)
    assert spynet["lr"] == pytest.approx(1e-7 + (2.5e-5 - 1e-7) / 2)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert (network["lr"], spynet["lr"]) == pytest.approx((1e-7, 1e-7))


def test_frozen_spynet_is_not_updated_and_the_rest_is(tiny_ttvsr):
    optimizer = build_optimizer(tiny_ttvsr, OptimSection(lr=1e-3))
    before = {k: v.clone() for k, v in tiny_ttvsr.state_dict().items()}
    lr, gt = torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 3, 256, 256)

    def step():
        optimizer.zero_grad(set_to_none=True)
        charbonnier_loss(tiny_ttvsr(lr), gt).backward()
        optimizer.step()

    set_spynet_trainable(tiny_ttvsr, False)
    step()
    after = tiny_ttvsr.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith("spynet.") for k in changed)
    assert not any(p.grad is not None for p in tiny_ttvsr.spynet.parameters())

    set_spynet_trainable(tiny_ttvsr, True)
    frozen_spynet = {k: v.clone() for k, v in tiny_ttvsr.spynet.state_dict().items()}
    step()
    assert any(not torch.equal(v, tiny_ttvsr.spynet.state_dict()[k]) for k, v in frozen_spynet.items())


def test_checkpoint_round_trip_restores_weights_optimizer_schedule_and_rng(tiny_ttvsr, tmp_path):
    optim, schedule = OptimSection(lr=1e-3), ScheduleSection(periods=[10], restart_weights=[1.0])
    optimizer = build_optimizer(tiny_ttvsr, optim)
    scheduler = lr_schedule(optimizer, schedule)
    lr, gt = torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 3, 256, 256)
    for _ in range(3):
        optimizer.zero_grad()
        charbonnier_loss(tiny_ttvsr(lr), gt).backward()
        optimizer.step()
        scheduler.step()
    state = TrainingState(iteration=3, mlflow_run_id="abc", val_metrics={"psnr": 25.0})
    save_training_checkpoint(tmp_path, 0, tiny_ttvsr, optimizer, scheduler, state)
    expected_draws = (torch.rand(3), np.random.rand(3), random.random())

    torch.manual_seed(123)
    fresh = build_model("ttvsr", **TINY)
    fresh_optimizer = build_optimizer(fresh, optim)
    fresh_scheduler = lr_schedule(fresh_optimizer, schedule)
    restored = restore_training_checkpoint(tmp_path, 0, fresh, fresh_optimizer, fresh_scheduler)

    assert restored == state
    for key, value in tiny_ttvsr.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    assert fresh_scheduler.last_epoch == 3
    assert [g["lr"] for g in fresh_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]
    first = next(iter(optimizer.state.values()))
    torch.testing.assert_close(next(iter(fresh_optimizer.state.values()))["exp_avg"], first["exp_avg"])
    # the RNG continues where the checkpointed worker's stopped
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert np.array_equal(np.random.rand(3), expected_draws[1])
    assert random.random() == expected_draws[2]


def test_a_resumed_run_numbers_its_crop_epochs_past_its_last_checkpoint(tiny_ttvsr, tmp_path):
    optimizer = build_optimizer(tiny_ttvsr, OptimSection())
    scheduler = lr_schedule(optimizer, ScheduleSection(periods=[10], restart_weights=[1.0]))
    run_dir = tmp_path / "run"
    assert latest_checkpoint_iteration(run_dir) == 0  # a new run
    for iteration in (4, 8):
        folder = run_dir / f"checkpoint_{iteration:08d}"
        folder.mkdir(parents=True)
        save_training_checkpoint(
            folder, 0, tiny_ttvsr, optimizer, scheduler, TrainingState(iteration=iteration)
        )
    (run_dir / "checkpoint_tmp_partial").mkdir()  # no training_state.pt: not a complete checkpoint
    assert latest_checkpoint_iteration(run_dir) == 8


# -- the schedule follows the run (docs/models.md#the-schedule-follows-the-run) -----------------------------

SAMPLE_CONFIG = "configs/ttvsr_sample.yaml"  # periods [300] for total_iters 300


def _lrs(cfg, iterations: list[int]) -> list[float]:
    """The network group's learning rate at each of ``iterations`` under ``cfg``'s resolved schedule."""
    factor = CosineRestartFactor(
        cfg.optim.lr, cfg.schedule.periods, cfg.schedule.restart_weights, cfg.schedule.eta_min
    )
    return [cfg.optim.lr * factor(i) for i in iterations]


def test_more_iterations_on_the_command_line_stretch_the_configs_schedule():
    from jobs._training import experiment, parser
    from pipelines.training.recipe import describe_schedule

    args = parser(None).parse_args(["--config", SAMPLE_CONFIG, "--set", "train.total_iters=500"])
    cfg = experiment("ttvsr", args)
    assert cfg.schedule.periods == [500]
    lr_300, lr_400, lr_499 = _lrs(cfg, [300, 400, 499])
    # half way through the stretched cosine at 250, still well above eta_min at 300 and 400
    assert lr_300 > 0.3 * cfg.optim.lr and lr_400 > 0.09 * cfg.optim.lr
    assert lr_499 == pytest.approx(cfg.schedule.eta_min, abs=1e-7)
    assert describe_schedule(cfg) == (
        "cosine annealing with restarts, lr 0.001 -> 1e-06: periods [500], restart weights [1.0], "
        "covering 500 of train.total_iters=500 iterations"
    )
    shorter = experiment(
        "ttvsr",
        parser(None).parse_args(["--config", SAMPLE_CONFIG, "--set", "train.total_iters=100"]),
    )
    assert shorter.schedule.periods == [100]  # anneals within the shorter run too


def test_restart_periods_keep_their_proportions_when_scaled():
    from pipelines.training.config import load_experiment, scaled_periods

    cfg = load_experiment(None, ["train.total_iters=600000"], arch="vsrt")
    assert cfg.schedule.periods == [150_000] * 4 and cfg.schedule.restart_weights == [1.0, 0.5, 0.5, 0.5]
    assert scaled_periods([3, 3, 4], 7) == [2, 2, 3]
    assert scaled_periods([1, 1, 1], 2) == [1, 1, 1]  # every period keeps an iteration: covers the run
    # periods that cover the run, neither changed on the command line: the config's own choice
    assert load_experiment(None, arch="vsrt").schedule.periods == [300_000] * 4
    assert sum(load_experiment(None, ["train.total_iters=10"], arch="vsrt").schedule.periods) == 10


def test_periods_given_with_the_command_that_stop_short_of_the_run_are_refused(capsys):
    from jobs._training import main

    code = main(
        "ttvsr",
        ["--config", SAMPLE_CONFIG, "--set", "train.total_iters=500", "--set", "schedule.periods=[300]"],
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "schedule.periods [300] cover 300 iterations but train.total_iters is 500" in err
