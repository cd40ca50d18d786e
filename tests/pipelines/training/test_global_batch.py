"""The recipe's global batch when the worker count changes (``docs/cluster.md#global-batch-and-learning-rate-rules``).

The global batch is ``data.batch_size`` x ``scaling.num_workers``: ``--gpus 16`` with a REDS recipe
written for 8 GPUs doubles it. The run says so in one line, and ``scaling.lr_rule`` (none, linear,
sqrt) scales ``optim.lr`` by the ratio to ``scaling.recipe_global_batch``, also after a resume on
another layout.
"""

from __future__ import annotations

import math

import pytest
import torch

from jobs._training import experiment, main, parser
from pipelines.training.config import (
    OptimSection,
    ScheduleSection,
)
from pipelines.training.recipe import (
    CosineRestartFactor,
    build_optimizer,
    describe_global_batch,
    lr_schedule,
    with_batch_lr,
)
from pipelines.training.state import TrainingState, restore_training_checkpoint, save_training_checkpoint
from tests.conftest import REPO_ROOT
from vsr_models import build_model

REDS = str(REPO_ROOT / "configs" / "ttvsr_reds4.yaml")  # batch 1 per GPU on 8 GPUs, lr 2e-4
TEST_CONFIG = str(REPO_ROOT / "configs" / "ttvsr_test.yaml")  # no recipe batch
TINY = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}


def _reds(*args: str, config: str = REDS, arch="ttvsr"):
    return experiment(arch, parser(None).parse_args(["--config", config, *args]))


def test_16_gpus_with_the_reds_recipe_double_its_global_batch_and_say_so_in_one_line():
    cfg = _reds("--gpus", "16")
    line, warning = describe_global_batch(cfg)
    assert cfg.global_batch == 16
    assert line == "16 sequences per step (data.batch_size 1 x scaling.num_workers 16)"
    assert warning == (
        "global batch 16 differs from the recipe's 8 (scaling.recipe_global_batch): optim.lr 0.0002 is kept "
        "(scaling.lr_rule none); set scaling.lr_rule to linear or sqrt to scale it, or data.batch_size to match"
    )
    assert "\n" not in warning
    assert with_batch_lr(cfg).optim.lr == 2e-4  # the default rule changes nothing
    assert describe_global_batch(_reds("--gpus", "8")) == (
        "8 sequences per step (data.batch_size 1 x scaling.num_workers 8)",
        None,
    )
    vsrt = _reds("--gpus", "8", config=str(REPO_ROOT / "configs" / "vsrt_reds4.yaml"), arch="vsrt")
    assert (vsrt.global_batch, describe_global_batch(vsrt)[1]) == (32, None)  # 4 per GPU on 8 GPUs


@pytest.mark.parametrize(
    ("gpus", "rule", "factor"),
    [
        (16, "linear", 2.0),
        (16, "sqrt", math.sqrt(2)),
        (4, "linear", 0.5),
        (16, "none", 1.0),
        (8, "sqrt", 1.0),
    ],
)
def test_the_lr_rule_scales_optim_lr_by_the_global_batch_ratio(gpus, rule, factor):
    cfg = _reds("--gpus", str(gpus), "--set", f"scaling.lr_rule={rule}")
    trained = with_batch_lr(cfg)
    assert trained.optim.lr == pytest.approx(2e-4 * factor, rel=1e-12)
    assert with_batch_lr(trained).optim.lr == trained.optim.lr  # applied once
    assert trained.schedule.eta_min == cfg.schedule.eta_min  # absolute, not scaled
    if factor != 1.0:
        assert (
            f"scaling.lr_rule {rule} scales optim.lr 0.0002 -> {2e-4 * factor:g}"
            in describe_global_batch(cfg)[1]
        )
    network, spynet = build_optimizer(build_model("ttvsr", **TINY), trained.optim).param_groups
    assert (network["lr"], spynet["lr"]) == pytest.approx((2e-4 * factor, 2e-4 * factor * 0.125))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scaling.lr_rule=cubic"], "scaling.lr_rule: 'cubic' is not one of ['none', 'linear', 'sqrt']"),
        (
            ["scaling.lr_rule=linear"],
            "scaling.lr_rule linear scales optim.lr from the recipe's global batch: set ",
        ),
        (["scaling.recipe_global_batch=0"], "scaling.recipe_global_batch must be at least 1"),
    ],
)
def test_a_bad_lr_rule_is_refused_before_ray_in_one_line(capsys, overrides, message):
    import ray

    started = ray.is_initialized()
    argv = ["--config", TEST_CONFIG]
    for override in overrides:
        argv += ["--set", override]
    assert main("ttvsr", argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert ray.is_initialized() == started


def test_a_run_resumed_at_another_global_batch_follows_the_lr_rule_from_its_iteration(tmp_path):
    """8 workers trained 3 iterations at lr 2e-4; 16 workers with lr_rule linear resume at 4e-4's schedule."""
    schedule = ScheduleSection(periods=[10], restart_weights=[1.0], eta_min=1e-7)

    def objects(lr: float):
        torch.manual_seed(0)
        model = build_model("ttvsr", **TINY)
        optimizer = build_optimizer(model, OptimSection(lr=lr))
        return model, optimizer, lr_schedule(optimizer, schedule)

    model, optimizer, scheduler = objects(2e-4)
    lr_frames, gt_frames = torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 3, 256, 256)
    for _ in range(3):
        optimizer.zero_grad()
        (model(lr_frames) - gt_frames).abs().mean().backward()
        optimizer.step()
        scheduler.step()
    save_training_checkpoint(tmp_path, 0, model, optimizer, scheduler, TrainingState(iteration=3))

    def lr_at(base: float, iteration: int) -> float:
        return base * CosineRestartFactor(base, [10], [1.0], 1e-7)(iteration)

    resumed = objects(4e-4)
    restore_training_checkpoint(tmp_path, 0, *resumed)
    _, optimizer2, scheduler2 = resumed
    assert scheduler2.last_epoch == 3
    assert [g["lr"] for g in optimizer2.param_groups] == pytest.approx([lr_at(4e-4, 3), lr_at(5e-5, 3)])
    torch.testing.assert_close(  # Adam's moments are the checkpoint's
        next(iter(optimizer2.state.values()))["exp_avg"], next(iter(optimizer.state.values()))["exp_avg"]
    )
    scheduler2.step()
    assert [g["lr"] for g in optimizer2.param_groups] == pytest.approx([lr_at(4e-4, 4), lr_at(5e-5, 4)])

    same = objects(2e-4)  # the same layout: exactly the checkpoint's learning rates
    restore_training_checkpoint(tmp_path, 0, *same)
    assert [g["lr"] for g in same[1].param_groups] == [g["lr"] for g in optimizer.param_groups]
