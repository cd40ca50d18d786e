"""MLflow tracking and registry on a real SQLite store: run lookup by name, params, champion alias.

The registered model format and its refusals are in test_flavor.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.tracking import (
    RegisteredVersion,
    RunTracker,
    artifact_root,
    find_run,
    load_registered_model,
    mlflow_client,
    promote_champion,
    register_model,
    resolve_tracking_uri,
)
from vsr_models import build_model


def test_default_store_is_sqlite_in_the_working_folder_with_artifacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(None)
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # absolute: Ray workers run elsewhere
    assert artifact_root(uri) == str(tmp_path / "mlartifacts")
    assert artifact_root("http://head:5000") is None  # a server decides itself


def test_flag_beats_environment_beats_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri(None) == "http://tracking:5000"
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"


def test_a_run_is_found_again_by_name_and_keeps_its_first_params(mlflow_uri, tmp_path):
    first = RunTracker.start(mlflow_uri, "exp", "ttvsr_a", tags={"arch": "ttvsr"})
    first.log_params({"optim.lr": 2e-4, "schedule.periods": [10, 20]})
    first.log_metrics({"loss": 0.5}, step=1)
    first.finish("FAILED")
    assert RunTracker.start(mlflow_uri, "exp", "other").run_id != first.run_id

    again = RunTracker.start(mlflow_uri, "exp", "ttvsr_a")
    assert again.run_id == first.run_id == find_run(mlflow_uri, "exp", "ttvsr_a")
    again.log_params({"optim.lr": 1e-4, "train.total_iters": 6})  # a resumed run may not rewrite a param
    again.log_metrics({"loss": 0.25, "val/psnr": float("nan")}, step=2)

    run = mlflow_client(mlflow_uri).get_run(first.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"optim.lr": "0.0002", "schedule.periods": "[10, 20]", "train.total_iters": "6"}
    assert again.metric_history("loss") == [(1, 0.5), (2, 0.25)]
    assert again.metric_history("val/psnr") == []  # non-finite values are not logged
    experiment = mlflow_client(mlflow_uri).get_experiment_by_name("exp")
    assert Path(experiment.artifact_location.removeprefix("file://")) == tmp_path / "mlartifacts"


def test_inactive_tracker_logs_nothing(mlflow_uri):
    run_id = RunTracker.start(mlflow_uri, "exp", "quiet").run_id
    other_rank = RunTracker.attach(mlflow_uri, run_id, active=False)
    other_rank.log_metrics({"loss": 1.0}, step=1)
    other_rank.log_params({"a": 1})
    other_rank.finish("FAILED")
    run = mlflow_client(mlflow_uri).get_run(run_id)
    assert run.data.metrics == {} and run.data.params == {} and run.info.status == "RUNNING"


def test_champion_alias_moves_only_to_a_better_validation_psnr(mlflow_uri):
    client = mlflow_client(mlflow_uri)
    client.create_registered_model("ttvsr")
    versions = []
    for psnr in (30.0, 29.5, 30.5):
        version = client.create_model_version("ttvsr", source="file:///nowhere/model").version
        client.set_model_version_tag("ttvsr", version, "val_psnr", str(psnr))
        versions.append((version, promote_champion(mlflow_uri, "ttvsr", version, psnr, "champion")))
    (v1, first), (_, worse), (v3, better) = versions
    assert first.is_champion and first.champion_version == v1
    assert not worse.is_champion and worse.champion_version == v1 and worse.champion_psnr == 30.0
    assert better.is_champion and client.get_model_version_by_alias("ttvsr", "champion").version == v3


def test_champion_alias_is_not_moved_across_datasets_or_protocols(mlflow_uri):
    client = mlflow_client(mlflow_uri)
    client.create_registered_model("ttvsr")
    reds = {"val_dataset": "sha-of-reds4-manifest", "val_protocol": '{"channel": "rgb"}'}
    candidates = [
        (30.0, reds),
        (35.0, reds | {"val_dataset": "sha-of-sample-manifest"}),  # higher, but on other clips
        (36.0, reds | {"val_protocol": '{"channel": "rgb", "max_frames": 4}'}),  # on shortened clips
        (30.2, reds),  # the same data and protocol, and better: it wins
    ]
    results = []
    for psnr, lineage in candidates:
        version = client.create_model_version("ttvsr", source="file:///nowhere/model").version
        for key, value in {"val_psnr": str(psnr), **lineage}.items():
            client.set_model_version_tag("ttvsr", version, key, value)
        results.append(promote_champion(mlflow_uri, "ttvsr", version, psnr, "champion"))
    first, other_data, other_protocol, better = results
    assert first.is_champion
    assert not other_data.is_champion and other_data.incomparable == ["val_dataset"]
    assert not other_protocol.is_champion and other_protocol.incomparable == ["val_protocol"]
    assert "validated on another dataset: not comparable" in other_data.describe()
    assert (
        better.is_champion
        and client.get_model_version_by_alias("ttvsr", "champion").version == better.version
    )


def test_registered_model_loads_back_by_alias_and_runs_on_any_frame_size(mlflow_uri):
    torch.manual_seed(0)
    model = build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    tracker = RunTracker.start(mlflow_uri, "exp", "register")
    example = np.random.default_rng(0).random((1, 3, 3, 64, 64), dtype=np.float32)
    registered = register_model(
        tracker,
        model,
        registered_model="tiny",
        input_example=example,
        val_metrics={"psnr": 27.0, "ssim": 0.8},
    )
    assert registered.is_champion and registered.uri == "models:/tiny/1"
    version = mlflow_client(mlflow_uri).get_model_version("tiny", "1")
    assert version.tags["val_psnr"] == "27.0" and version.tags["val_ssim"] == "0.8"

    loaded = load_registered_model("models:/tiny@champion", mlflow_uri)
    lr = torch.rand(1, 2, 3, 68, 72)  # not the example's shape: the model is not traced for one size
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr), model(lr))


def test_a_model_that_does_not_beat_bicubic_is_registered_but_never_champion(mlflow_uri):
    from mlflow.exceptions import MlflowException

    torch.manual_seed(0)
    model = build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    tracker = RunTracker.start(mlflow_uri, "exp", "short")
    example = np.random.default_rng(0).random((1, 3, 3, 64, 64), dtype=np.float32)

    def register(psnr: float, **kwargs) -> RegisteredVersion:
        return register_model(
            tracker,
            model,
            registered_model="tiny",
            input_example=example,
            val_metrics={"psnr": psnr, "ssim": 0.8, "bicubic_psnr": 27.74, "bicubic_ssim": 0.77},
            **kwargs,
        )

    client = mlflow_client(mlflow_uri)
    short = register(27.18)  # the first version, yet below bicubic: no alias
    assert short.uri == "models:/tiny/1" and not short.is_champion and short.below_bicubic == (27.18, 27.74)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("tiny", "champion")
    assert short.describe() == (
        "registered models:/tiny/1, not champion: its validation PSNR 27.18 dB does not beat bicubic's "
        "27.74 dB (train longer; --champion makes it champion regardless)"
    )
    assert client.get_model_version("tiny", "1").tags["val_bicubic_psnr"] == "27.74"

    assert not register(27.74).is_champion  # a tie with bicubic is not better than bicubic
    forced = register(27.0, force_alias=True)  # --champion
    assert forced.is_champion and str(client.get_model_version_by_alias("tiny", "champion").version) == "3"
    better = register(28.1)  # beats bicubic and the (forced) champion
    assert better.is_champion and str(client.get_model_version_by_alias("tiny", "champion").version) == "4"
    assert not register(27.5).is_champion  # below bicubic, even though it is comparable


def test_loading_an_unregistered_model_names_it(mlflow_uri):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="nonexistent"):
        load_registered_model("models:/nonexistent@champion", mlflow_uri)


def test_registered_version_describes_its_alias():
    assert (
        RegisteredVersion("ttvsr", "3", True, "3", 30.0).describe() == "registered models:/ttvsr/3 (champion)"
    )
    stays = RegisteredVersion("ttvsr", "4", False, "3", 30.0)
    assert stays.describe() == "registered models:/ttvsr/4 (champion stays v3)"
    assert (
        RegisteredVersion("ttvsr", "5", False, None, None, alias=None).describe()
        == "registered models:/ttvsr/5"
    )


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "plain"])
def test_a_run_name_with_quotes_is_found_again(mlflow_uri, name):
    first = RunTracker.start(resolve_tracking_uri(mlflow_uri), "quotes", name)
    assert find_run(resolve_tracking_uri(mlflow_uri), "quotes", name) == first.run_id
    assert RunTracker.start(resolve_tracking_uri(mlflow_uri), "quotes", name).run_id == first.run_id


def test_a_run_name_with_both_quotes_is_a_config_error():
    from pipelines.common.config import load_config
    from pipelines.common.errors import ConfigError
    from pipelines.training.config import Experiment

    with pytest.raises(ConfigError, match="both quote characters"):
        load_config(Experiment, None, ['run.name="a\'b\\"c"'])


@pytest.mark.parametrize("clip_id", ["clip;1", "it's", 'say "hi"', "a(b)", "..", "a/../b", "caf\u00e9", ""])
def test_clip_ids_mlflow_cannot_name_become_distinct_valid_keys(clip_id):
    from mlflow.utils.validation import _validate_metric_name

    from pipelines.tracking.runs import metric_key

    _validate_metric_name(f"val/{metric_key(clip_id)}")  # raises for a key MLflow would refuse
    assert metric_key(clip_id) != metric_key(clip_id + "x")
    assert metric_key("000") == "000" and metric_key("clip_01/frame.png") == "clip_01/frame.png"
