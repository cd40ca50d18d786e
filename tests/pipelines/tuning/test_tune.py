"""Tune searches without running one: the YAML search space (tied groups included) and its validation
before any trial starts, trial sizing from per-trial and autoscaler resources, ASHA's rungs, the shipped
search configs, the results table and plots. Real searches: test_searches.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs._tuning import parser, search_config
from jobs.tune_ttvsr import main
from pipelines.common.config import ConfigError, load_config
from pipelines.tracking.tuning import COMPLETED, STOPPED_EARLY
from pipelines.training.config import load_experiment
from pipelines.tuning.config import SearchConfig, base_experiment
from pipelines.tuning.resources import (
    autoscaler_maximum,
    concurrent_trials,
    largest,
    parse_resources,
    trial_resources,
)
from pipelines.tuning.results import TrialSummary, markdown_table, write_reports
from pipelines.tuning.run import asha_scheduler
from pipelines.tuning.space import Distribution, assign, drawn_values, parse_search_space
from pipelines.tuning.state import search_fingerprint
from pipelines.tuning.trial import TrialPlan

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"
SAMPLE_CONFIG = REPO_ROOT / "configs" / "ttvsr_sample.yaml"
LR_BOUNDS = (1e-4, 1e-2)


def write_search(path: Path, **fields) -> Path:
    fields = {"search": {"optim.lr": {"loguniform": list(LR_BOUNDS)}}} | fields
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
    # a tied group: its name lists its keys (spaces as written or not), nested by --set like any key
    tied = {"model.num_frames, data.num_frames": Distribution("grid", [3, 5])}
    assert parse_search_space({"model.num_frames,data.num_frames": {"grid": [3, 5]}}) == tied
    assert parse_search_space({"model": {"num_frames, data": {"num_frames": {"grid": [3, 5]}}}}) == tied
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
    base = base_experiment(spec)
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
        ({"search": {}}, "search: no key to search"),
        ({"name": "a/b"}, "name must be letters, digits"),
        (
            {"search": {"model.num_frames, model.num_frames": {"grid": [3]}}},
            "a tied group lists distinct config keys",
        ),
        (
            {
                "search": {
                    "model.num_frames": {"grid": [3]},
                    "model.num_frames, data.num_frames": {"grid": [3]},
                }
            },
            "search: model.num_frames is drawn by two entries",
        ),
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
    ("arch", "fields", "message"),
    [
        # a key the training config does not have: config.py's message, prefixed by the search entry
        (
            "ttvsr",
            {"search": {"optim.lrr": {"loguniform": [1e-5, 1e-3]}}},
            "search.optim.lrr = 1e-05: unknown config key 'optim.lrr'. Did you mean 'lr'?",
        ),
        # a value the training config rejects: crops must be a multiple of TTVSR's 4x4 tokens
        (
            "ttvsr",
            {"search": {"data.lr_patch": {"choice": [64, 66]}}},
            "search.data.lr_patch = 66: Experiment: data.lr_patch (66) must be a multiple of 4",
        ),
        (
            "ttvsr",
            {"search": {"train.precision": {"choice": ["fp32", "fp8"]}}},
            "search.train.precision = 'fp8'",
        ),
        (
            "ttvsr",
            {"experiment": {"trian": {"total_iters": 4}}},
            "experiment: unknown config key 'trian'. Did you mean 'train'?",
        ),
        (
            "ttvsr",
            {"base": "configs/no_such.yaml"},
            "base: training config configs/no_such.yaml not found",
        ),
        # an untied key: the frame count of the model without the data's, named with the fix
        (
            "vsrt",
            {
                "base": str(REPO_ROOT / "configs" / "vsrt_sample.yaml"),
                "search": {"model.num_frames": {"grid": [3, 5]}},
            },
            "search.model.num_frames = 3: Experiment: data.num_frames (5) must equal model.num_frames (3); "
            "draw them together in a tied group, e.g. 'model.num_frames, data.num_frames: {grid: [...]}'",
        ),
        # two entries that are fine alone but not together: every combination is checked
        (
            "ttvsr",
            {
                "search": {
                    "model.token_size": {"choice": [4, 8]},
                    "model.token_scales": {"choice": [[4, 6, 8], [8, 12, 16]]},
                },
                "experiment": {"model": {"token_scales": [8, 12, 16]}},
            },
            "search.model.token_size = 8 with search.model.token_scales = [4, 6, 8]: model: TTVSRConfig: "
            "token scale 4 must be >= token_size 8",
        ),
        # the paper's (6, 9, 12) row: a 9-pixel window cannot be centred on a 4-pixel token
        (
            "ttvsr",
            {"search": {"model.token_scales": {"grid": [[4, 6, 8], [6, 9, 12]]}}},
            "search.model.token_scales = [6, 9, 12]: model: TTVSRConfig: token scale 9",
        ),
        # evaluation sweeps train nothing: no recipe keys, no settings that change the weights
        (
            "ttvsr",
            {"evaluate": "models:/ttvsr@champion", "search": {"optim.lr": {"grid": [1e-4]}}},
            "search.optim.lr: an evaluation sweep (evaluate: / --evaluate) trains nothing",
        ),
        (
            "ttvsr",
            {"evaluate": "models:/ttvsr@champion", "search": {"model.mid_channels": {"grid": [8, 16]}}},
            "search.model.mid_channels = 16: model.mid_channels=16 changes the network's tensors",
        ),
    ],
)
def test_search_that_does_not_fit_the_training_config_fails_before_any_trial(tmp_path, arch, fields, message):
    spec = load_config(SearchConfig, write_search(tmp_path / "search.yaml", **fields), [f"arch={arch}"])
    with pytest.raises(ConfigError) as error:
        base_experiment(spec)
    assert message in str(error.value)


def test_typo_is_one_line_error_before_ray_mlflow_or_tune_start(tmp_path, capsys):
    config = write_search(
        tmp_path / "s.yaml",
        search={"model.token_scale": {"grid": [[4], [4, 6]]}},
        experiment={"run": {"storage_path": str(tmp_path / "runs")}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["--config", str(config), "--mlflow-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: search.model.token_scale = [4]: unknown config key 'model.token_scale'")
    assert "Did you mean 'token_scales'?" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_evaluation_sweep_may_draw_settings_that_keep_the_weights(tmp_path):
    spec = load_config(
        SearchConfig,
        write_search(
            tmp_path / "s.yaml",
            evaluate="models:/ttvsr@champion",
            num_samples=1,
            search={
                "model.key_frame_stride": {"grid": [1, 2, 5]},
                "model.implementation, val.chunk": {"grid": [["fast", None], ["reference", 4]]},
            },
        ),
    )
    assert base_experiment(spec).model.key_frame_stride == 3  # the base keeps its own
    assert spec.total_trials() == 6
    assert asha_scheduler(spec, base_experiment(spec)).__class__.__name__ == "FIFOScheduler"


def test_tied_group_gives_one_value_to_every_key_or_one_per_key():
    assert assign("model.num_frames, data.num_frames", 3) == {"model.num_frames": 3, "data.num_frames": 3}
    assert assign("model.token_size, model.token_scales", [8, [8, 12, 16]]) == {
        "model.token_size": 8,
        "model.token_scales": [8, 12, 16],
    }
    assert assign("model.token_scales", [4, 6]) == {"model.token_scales": [4, 6]}  # one key: the value


SHIPPED = sorted((REPO_ROOT / "configs" / "search").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs").glob("tune_*.yaml")
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_search_configs_load_against_their_base_configs(monkeypatch, path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    monkeypatch.chdir(REPO_ROOT)  # their base paths are relative to the repository root
    arch = "vsrt" if path.stem.startswith("vsrt") else "ttvsr"
    spec = load_config(SearchConfig, path, [f"arch={arch}"])
    base = base_experiment(spec)
    assert spec.name == path.stem and base.arch == arch
    sample = path.stem.endswith("_sample")
    assert base.data.path == ("data/sample" if sample else "data/reds_bi")
    if spec.evaluate is None:
        assert base.scaling.num_workers == (1 if sample else 2)
        scheduler = AsyncHyperBandScheduler if spec.scheduler.name == "asha" else FIFOScheduler
        assert type(asha_scheduler(spec, base)) is scheduler
        assert spec.total_trials() >= 3


def test_the_family_given_by_the_job_leaves_the_searchs_fingerprint_as_before(monkeypatch):
    """A search started before the family was a config field resumes: the ``arch`` the job gives is not
    part of what identifies the search (pipelines/tuning/state.py), what defines it is."""
    monkeypatch.chdir(REPO_ROOT)
    path = REPO_ROOT / "configs" / "search" / "ttvsr_token_scales_sample.yaml"
    spec = load_config(SearchConfig, path, ["arch=ttvsr"])
    base = base_experiment(spec)
    fingerprint = search_fingerprint(spec, base)
    assert search_fingerprint(dataclasses.replace(spec, arch=None), base) == fingerprint
    assert search_fingerprint(dataclasses.replace(spec, num_samples=2), base) != fingerprint


def test_shipped_searches_are_the_papers_ablations(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    search = {p.stem: load_config(SearchConfig, p) for p in SHIPPED}
    assert search["ttvsr_token_scales"].search == {
        "model.token_scales": {"grid": [[4], [4, 6], [4, 6, 8], [8, 12, 16]]}
    }
    strides = search["ttvsr_frame_interval"].search["model.key_frame_stride"]["grid"]
    assert [len(range(0, 99, s)) for s in strides] == [5, 10, 20, 33, 50]  # key frames of a 100-frame clip
    assert search["ttvsr_frame_interval"].evaluate == "models:/ttvsr@champion"
    assert "model.num_frames, data.num_frames, model.depth" in search["vsrt_patch_frames_lr"].search


def test_trial_config_is_the_base_with_the_sampled_values_and_the_trial_id_as_run_name(tmp_path):
    base = load_experiment(TEST_CONFIG, [f"run.storage_path={tmp_path}"])
    plan = TrialPlan(base, "search", "parent", "val_psnr")
    cfg = plan.experiment({"optim.lr": 3.5e-4, "model.token_scales": [4, 8]}, "a1b2c_00001")
    assert cfg.optim.lr == 3.5e-4 and cfg.model.token_scales == (4, 8)
    assert cfg.run.name == "a1b2c_00001"  # the Train run (and MLflow run) is named after the trial
    assert cfg.run.storage_path == str(tmp_path) and cfg.model.mid_channels == 8
    assert cfg.data is base.data  # merged into the typed base: the sections no value changed are the base's
    assert plan.trial_tags("a1b2c_00001")["arch"] == "ttvsr"
    # a tied group's draw sets each of its keys
    tied = {"model.token_size, model.token_scales": [8, [8, 12, 16]], "data.lr_patch": 64}
    assert drawn_values(tied) == {
        "model.token_size": 8,
        "model.token_scales": [8, 12, 16],
        "data.lr_patch": 64,
    }
    assert plan.experiment(tied, "t").model.token_size == 8


def test_concurrency_is_bounded_by_what_one_trial_holds():
    sample = load_experiment(SAMPLE_CONFIG)
    per_trial = trial_resources(sample)
    assert per_trial == {"CPU": 2.0}  # one 1-CPU worker + one CPU for its Ray Data crop tasks
    assert concurrent_trials(per_trial, {"CPU": 2.0}) == 1  # a 2-core laptop: one trial at a time
    assert concurrent_trials(per_trial, {"CPU": 9.0}) == 4
    gpus = load_experiment(SAMPLE_CONFIG, ["scaling.num_workers=2", "scaling.use_gpu=true"])
    assert trial_resources(gpus) == {"CPU": 3.0, "GPU": 2.0}
    assert concurrent_trials(trial_resources(gpus), {"CPU": 64.0, "GPU": 8.0}) == 4  # GPUs bound it
    assert concurrent_trials(trial_resources(gpus), {"CPU": 64.0}) == 1  # never zero


def test_concurrency_counts_what_the_autoscaler_can_add():
    # the KubeRay cluster: a CPU-less head, GPU workers scaled from 0 to 4 x (32 CPUs, 4 GPUs), CPU
    # workers 0 to 8 x 16 CPUs; while every GPU pod is scaled down the cluster itself shows no GPU
    maximum = autoscaler_maximum(REPO_ROOT / "infra" / "kuberay" / "raycluster.yaml")
    assert maximum == {"CPU": 4 * 32 + 8 * 16, "GPU": 16.0}
    assert autoscaler_maximum(REPO_ROOT / "infra" / "kuberay" / "rayjob-tune.yaml") == {
        "CPU": 48.0,
        "GPU": 8.0,
    }
    two_gpus = {"CPU": 9.0, "GPU": 2.0}
    now = {"CPU": 8.0}
    assert concurrent_trials(two_gpus, now) == 1
    assert concurrent_trials(two_gpus, largest(now, maximum)) == 8
    assert parse_resources("GPU=8, CPU=96") == {"GPU": 8.0, "CPU": 96.0}
    with pytest.raises(ConfigError, match="NAME=AMOUNT"):
        parse_resources("GPU8")
    # the launcher config lets Ray detect the GPU nodes' resources: no maximum to read, and it says so
    with pytest.raises(ConfigError, match="node type ray.worker.gpu declares no resources"):
        autoscaler_maximum(REPO_ROOT / "ray_cluster.yaml")


def test_max_cluster_resources_and_cluster_config_flags_reach_the_search():
    def parse(*flags: str) -> SearchConfig:
        config = str(REPO_ROOT / "configs" / "tune_ttvsr_sample.yaml")
        return search_config("ttvsr", parser().parse_args(["--config", config, *flags]))

    assert parse().max_cluster_resources is None and not parse().promote_champion
    assert parse().arch == "ttvsr"  # the job's family
    assert parse("--max-cluster-resources", "GPU=4").max_cluster_resources == {"GPU": 4.0}
    kuberay = str(REPO_ROOT / "infra" / "kuberay" / "rayjob-tune.yaml")
    assert parse("--cluster-config", kuberay).max_cluster_resources == {"CPU": 48.0, "GPU": 8.0}
    evaluation = parse("--champion", "--evaluate", "models:/ttvsr@champion")
    assert evaluation.promote_champion and evaluation.evaluate == "models:/ttvsr@champion"


def test_asha_compares_trials_at_validations(tmp_path):
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    spec = load_config(
        SearchConfig,
        write_search(tmp_path / "s.yaml", scheduler={"grace_validations": 2, "reduction_factor": 3}),
        ["experiment.train.val_every=5", "experiment.train.total_iters=100"],
    )
    base = base_experiment(spec)
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


@pytest.mark.parametrize(
    ("job", "words"),
    [
        (
            "tune_ttvsr.py",
            ["--config", "--set", "--num-samples", "--evaluate", "--champion", "--cluster-config"],
        ),
        (
            "tune_vsrt.py",
            ["--evaluate", "--max-cluster-resources", "VSR-Transformer", "vsrt_patch_frames_lr_sample"],
        ),
    ],
)
def test_job_help_lists_its_options(job, words):
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "jobs" / job), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for word in words:
        assert word in done.stdout


def test_results_table_and_plots_from_trial_summaries(tmp_path):
    def trial(i, scales, status, history):
        return TrialSummary(
            f"t_{i}", {"model.token_scales": scales, "optim.lr": 1e-4 * (i + 1)}, status, history[-1][0],
            history[-1][1], max(v for _, v in history), None, None,
            {"val_psnr": history[-1][1], "val_ssim": 0.7}, history,
        )  # fmt: skip

    trials = [
        trial(0, [4, 6, 8], COMPLETED, [(2, 24.0), (4, 25.0)]),
        trial(1, [4], STOPPED_EARLY, [(2, 22.5)]),
    ]
    markdown = markdown_table(trials, "val_psnr")
    assert markdown.splitlines()[0] == (
        "| trial | status | model.token_scales | optim.lr | iterations | val_psnr | val_ssim | best val_psnr |"
    )
    assert "| t_1 | stopped early | (4) | 0.0002 | 2 | 22.5000 | 0.7000 | 22.5000 |" in markdown
    written = {p.relative_to(tmp_path).as_posix() for p in write_reports(trials, "val_psnr", tmp_path)}
    assert written == {
        "results.csv",
        "results.md",
        "plots/val_psnr_vs_model.token_scales.png",
        "plots/val_psnr_vs_optim.lr.png",
        "plots/val_psnr_vs_iteration.png",
    }
    assert all((tmp_path / p).stat().st_size > 1000 for p in written if p.endswith(".png"))
