"""Tune searches: the YAML search space and its validation, trial sizing, and a real two-trial search
(Ray Tune running Ray Train runs of a tiny TTVSR, a real MLflow SQLite store) through the command line."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.common.config import ConfigError, as_overrides, flatten, load_config
from pipelines.tracking import mlflow_client
from pipelines.training.experiment import TTVSRExperiment
from pipelines.tuning.search import (
    PARENT_RUN_TAG,
    TUNE_EXPERIMENT_TAG,
    SearchConfig,
    TrialPlan,
    asha_scheduler,
    base_experiment,
    concurrent_trials,
    main,
    trial_resources,
)
from pipelines.tuning.space import Distribution, parse_search_space

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"
SAMPLE_CONFIG = REPO_ROOT / "configs" / "ttvsr_sample.yaml"
LR_BOUNDS = (1e-4, 1e-2)


def write_search(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump({"base": str(TEST_CONFIG), **fields}, sort_keys=False))
    return path


# -- the search space and its validation (no Ray) ------------------------------------------------------


def test_search_space_accepts_dotted_and_nested_keys_alike():
    dotted = parse_search_space(
        {"optim.lr": {"loguniform": [1e-5, 1e-3]}, "data.lr_patch": {"choice": [32, 64]}}
    )
    nested = parse_search_space(
        {"optim": {"lr": {"loguniform": [1e-5, 1e-3]}}, "data": {"lr_patch": {"choice": [32, 64]}}}
    )
    assert (
        dotted
        == nested
        == {
            "optim.lr": Distribution("loguniform", [1e-5, 1e-3]),
            "data.lr_patch": Distribution("choice", [32, 64]),
        }
    )
    assert Distribution("randint", [2, 5]).extremes() == [2, 4]  # tune.randint excludes the upper bound
    # YAML reads 1e-5 (no dot) as a string: bounds still become numbers
    assert parse_search_space(yaml.safe_load("optim.lr: {loguniform: [1e-5, 1e-3]}")) == {
        "optim.lr": Distribution("loguniform", [1e-5, 1e-3])
    }


def test_set_overrides_reach_the_search_space_and_the_shared_experiment(tmp_path):
    path = write_search(tmp_path / "search.yaml", search={"optim.lr": {"uniform": [1e-4, 1e-3]}})
    spec = load_config(
        SearchConfig,
        path,
        [
            "search.optim.spynet_lr_mult={choice: [0.125, 0.25]}",
            "experiment.train.total_iters=4",
            "num_samples=3",
        ],
    )
    assert spec.search == {
        "optim.lr": {"uniform": [1e-4, 1e-3]},
        "optim.spynet_lr_mult": {"choice": [0.125, 0.25]},
    }
    assert spec.num_samples == 3
    base = base_experiment(spec, TTVSRExperiment)
    assert base.train.total_iters == 4 and base.model.mid_channels == 8  # the rest comes from the base file


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"search": {"optim.lr": {"loguniformm": [1e-5, 1e-3]}}},
            "unknown distribution 'loguniformm'. Did you mean 'loguniform'",
        ),
        (
            {"search": {"optim.lr": {"loguniform": [1e-3, 1e-5]}}},
            "search.optim.lr: {loguniform: [0.001, 1e-05]}: low must be below high",
        ),
        ({"search": {"optim.lr": {"loguniform": [0, 1e-3]}}}, "bounds must be positive"),
        ({"search": {"train.seed": {"randint": [0, 2.5]}}}, "takes two integers"),
        ({"search": {"optim.lr": 1e-4}}, "search.optim.lr: expected a distribution such as {loguniform"),
        ({"search": {"optim.lr": {"choice": []}}}, "takes a non-empty list"),
        ({"num_sample": 2}, "unknown config key 'num_sample'. Did you mean 'num_samples'?"),
        ({"metric": "val_lpips"}, "metric: 'val_lpips' is not one of ['val_psnr', 'val_ssim']"),
        ({"scheduler": {"name": "pbt"}}, "scheduler.name: 'pbt' is not one of ['asha', 'none']"),
    ],
)
def test_bad_search_file_is_a_config_error_naming_the_key(tmp_path, fields, message):
    path = write_search(tmp_path / "search.yaml", **fields)
    with pytest.raises(ConfigError) as error:
        load_config(SearchConfig, path)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # a key the training config does not have: config.py's message, prefixed by the search entry
        (
            {"search": {"optim.lrr": {"loguniform": [1e-5, 1e-3]}}},
            "search.optim.lrr = 1e-05: unknown config key 'optim.lrr'. Did you mean 'lr'?",
        ),
        # a value the training config rejects: crops must be a multiple of TTVSR's 4x4 tokens
        (
            {"search": {"data.lr_patch": {"choice": [64, 66]}}},
            "search.data.lr_patch = 66: TTVSRExperiment: data.lr_patch (66) must be a multiple",
        ),
        ({"search": {"train.precision": {"choice": ["fp32", "fp8"]}}}, "search.train.precision = 'fp8'"),
        (
            {"experiment": {"trian": {"total_iters": 4}}},
            "experiment: unknown config key 'trian'. Did you mean 'train'?",
        ),
        ({"base": "configs/no_such.yaml"}, "base: training config configs/no_such.yaml not found"),
    ],
)
def test_search_that_does_not_fit_the_training_config_fails_before_any_trial(tmp_path, fields, message):
    spec = load_config(SearchConfig, write_search(tmp_path / "search.yaml", **fields))
    with pytest.raises(ConfigError) as error:
        base_experiment(spec, TTVSRExperiment)
    assert message in str(error.value)


def test_shipped_search_configs_load_against_their_base_configs(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # their base paths are relative to the repository root
    sample = load_config(SearchConfig, REPO_ROOT / "configs" / "tune_ttvsr_sample.yaml")
    base = base_experiment(sample, TTVSRExperiment)
    assert base.train.total_iters == 200 and base.data.path == "data/sample"
    assert set(sample.search) == {"optim.lr", "optim.spynet_lr_mult"}
    reds = load_config(SearchConfig, REPO_ROOT / "configs" / "tune_ttvsr_reds4.yaml")
    assert base_experiment(reds, TTVSRExperiment).scaling.num_workers == 2


def test_trial_config_is_the_base_with_the_sampled_values_and_the_trial_id_as_run_name(tmp_path):
    base = load_config(TTVSRExperiment, TEST_CONFIG, [f"run.storage_path={tmp_path}"])
    plan = TrialPlan("ttvsr", as_overrides(flatten(base)), "search", "parent", "val_psnr")
    cfg = plan.experiment({"optim.lr": 3.5e-4, "model.token_scales": [4, 8]}, "a1b2c_00001")
    assert cfg.optim.lr == 3.5e-4 and cfg.model.token_scales == (4, 8)
    assert cfg.run.name == "a1b2c_00001"  # the Train run (and MLflow run) is named after the trial
    assert cfg.run.storage_path == str(tmp_path) and cfg.data == base.data and cfg.model.mid_channels == 8


def test_concurrency_is_bounded_by_what_one_trial_holds():
    sample = load_config(TTVSRExperiment, SAMPLE_CONFIG)
    per_trial = trial_resources(sample)
    assert per_trial == {"CPU": 2.0}  # one 1-CPU worker + one CPU for its Ray Data crop tasks
    assert concurrent_trials(per_trial, {"CPU": 2.0}) == 1  # a 2-core laptop: one trial at a time
    assert concurrent_trials(per_trial, {"CPU": 9.0}) == 4
    gpus = load_config(TTVSRExperiment, SAMPLE_CONFIG, ["scaling.num_workers=2", "scaling.use_gpu=true"])
    assert trial_resources(gpus) == {"CPU": 3.0, "GPU": 2.0}
    assert concurrent_trials(trial_resources(gpus), {"CPU": 64.0, "GPU": 8.0}) == 4  # GPUs bound it
    assert concurrent_trials(trial_resources(gpus), {"CPU": 64.0}) == 1  # never zero


def test_asha_compares_trials_at_validations(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    spec = load_config(
        SearchConfig,
        write_search(tmp_path / "s.yaml", scheduler={"grace_validations": 2, "reduction_factor": 3}),
        ["experiment.train.val_every=5", "experiment.train.total_iters=100"],
    )
    base = base_experiment(spec, TTVSRExperiment)
    asha = asha_scheduler(spec, base)
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert asha._time_attr == "iteration"
    # ASHA keeps no public view of its rungs: (milestone, recorded) tuples at 2 validations x 3^k iterations
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [90, 30, 10]
    assert isinstance(
        asha_scheduler(
            load_config(SearchConfig, write_search(tmp_path / "n.yaml", scheduler={"name": "none"})), base
        ),
        FIFOScheduler,
    )
    spec.scheduler.grace_validations = 20
    with pytest.raises(ConfigError, match="leaves no room"):
        asha_scheduler(spec, base)


def test_job_help_lists_its_options():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / "tune_ttvsr.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for word in ["--config", "--set", "--num-samples", "--address", "--mlflow-uri", "tune_ttvsr_sample.yaml"]:
        assert word in done.stdout


# -- a real search -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dataset(tiny_prepared_dataset) -> Path:
    return tiny_prepared_dataset


@pytest.fixture(scope="module")
def two_trial_search(tiny_dataset, tmp_path_factory):
    """``jobs/tune_ttvsr.py``'s main: 2 trials of lr ~ loguniform(1e-4, 1e-2), 3 iterations each, one at a time."""
    workdir = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    config = write_search(
        workdir / "search.yaml",
        experiment={
            "data": {"path": str(tiny_dataset)},
            # loss-only report at iteration 1, validations at 2 and 3, one checkpoint at 3
            "train": {"total_iters": 3, "val_every": 2, "checkpoint_every": 3},
            "run": {"storage_path": str(workdir / "runs")},
            "tracking": {"experiment": "tune-test", "registered_model": "ttvsr_tune_test"},
        },
        search={"optim.lr": {"loguniform": list(LR_BOUNDS)}},
        name="lr_search",
        scheduler={"name": "none"},  # ASHA could stop the second trial: this test wants both to finish
        max_concurrent_trials=1,
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(TTVSRExperiment, ["--config", str(config), "--num-samples", "2", "--mlflow-uri", uri])
    assert status == 0
    return uri, workdir, stdout.getvalue()


@pytest.mark.slow
def test_each_trial_trains_with_its_own_sampled_lr_and_is_its_own_mlflow_run(two_trial_search):
    uri, workdir, _ = two_trial_search
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name("tune-test")
    trials = client.search_runs([experiment.experiment_id], f"tags.{TUNE_EXPERIMENT_TAG} = 'lr_search'")
    parent = next(r for r in trials if r.info.run_name == "lr_search")
    children = [r for r in trials if r is not parent]
    assert len(children) == 2  # one MLflow run per trial ...
    assert all(
        r.data.tags[PARENT_RUN_TAG] == parent.info.run_id for r in children
    )  # ... nested under the search
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    lrs = [float(r.data.params["optim.lr"]) for r in children]
    assert lrs[0] != lrs[1]
    assert all(LR_BOUNDS[0] <= lr <= LR_BOUNDS[1] for lr in lrs)
    for run in children:
        # each Train run is named after its trial, checkpointed and validated at iterations 2 and 3
        trial_id = run.data.tags["tune_trial_id"]
        assert run.info.run_name == trial_id
        search_dir = workdir / "runs" / "lr_search"
        assert (search_dir / "train" / trial_id / "checkpoint_00000003").is_dir()
        psnr = client.get_metric_history(run.info.run_id, "val/psnr")
        assert sorted(m.step for m in psnr) == [2, 3]
        assert all(10 < m.value < 60 for m in psnr)
        # Tune saw the validations only (not the loss-only report of iteration 1), with the same PSNR
        tune_results = [
            json.loads(line) for line in (search_dir / trial_id / "result.json").read_text().splitlines()
        ]
        assert [r["iteration"] for r in tune_results] == [2, 3]
        assert [r["val_psnr"] for r in tune_results] == pytest.approx(
            [m.value for m in sorted(psnr, key=lambda m: m.step)]
        )


@pytest.mark.slow
def test_best_trial_has_the_highest_final_psnr_and_is_registered_as_champion(two_trial_search, tiny_dataset):
    uri, workdir, stdout = two_trial_search
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name("tune-test")
    children = client.search_runs([experiment.experiment_id], "tags.tune_trial_id != ''")
    final_psnr = {
        r.info.run_id: max(client.get_metric_history(r.info.run_id, "val/psnr"), key=lambda m: m.step).value
        for r in children
    }
    best_run = max(final_psnr, key=final_psnr.get)
    parent = client.search_runs([experiment.experiment_id], "attributes.run_name = 'lr_search'")[0]
    assert parent.data.tags["best_mlflow_run_id"] == best_run
    assert parent.data.metrics["best_val_psnr"] == pytest.approx(max(final_psnr.values()))

    champion = client.get_model_version_by_alias("ttvsr_tune_test", "champion")
    assert champion.run_id == best_run and str(champion.version) == "1"  # only the best trial was registered
    # registered with its score on the whole validation clips (trials validate on capped clips)
    assert float(client.get_run(best_run).data.tags["trial_val_psnr"]) == pytest.approx(
        max(final_psnr.values())
    )
    assert json.loads(champion.tags["val_protocol"])["max_frames"] is None
    from pipelines.evaluation.scoring import evaluate
    from pipelines.inference.loading import load_model as load_any_model

    trial = client.get_run(best_run).info.run_name
    checkpoint = workdir / "runs" / "lr_search" / "train" / trial / "checkpoint_00000003"
    full = evaluate(load_any_model(checkpoint), tiny_dataset, channel="rgb")
    assert float(champion.tags["val_psnr"]) == pytest.approx(full.model.psnr)

    # the printed table: one row per trial with its lr and PSNR, then the best config
    for run in children:
        row = next(line for line in stdout.splitlines() if line.startswith(run.info.run_name))
        assert f"{float(run.data.params['optim.lr']):.4g}" in row
        assert f"{final_psnr[run.info.run_id]:.4g}" in row
    best_config = yaml.safe_load(stdout.split("best config:\n", 1)[1])
    best_lr = float(client.get_run(best_run).data.params["optim.lr"])
    assert best_config["optim"]["lr"] == pytest.approx(best_lr)
    assert best_config["run"]["name"] == "ttvsr_test"  # the base's run name: ready for jobs/train_ttvsr.py
