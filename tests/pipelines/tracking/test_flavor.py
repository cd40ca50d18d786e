"""The registered model format (``ray_vsr`` flavor) on a real SQLite MLflow store: it round-trips, serves
``mlflow.pyfunc``, carries a signature and an input example, and a doctored registry runs no code.

The doctored models carry a payload that creates a marker file when unpickled; each test also checks that
the payload is live (the old loader, or a plain unpickling, does create the marker), so "no marker" means
the project's loader never unpickled it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT
from torch import nn

import vsr_models
from pipelines.common.errors import ModelLoadError
from pipelines.inference.loading import ModelRef
from pipelines.inference.loading import load_model as load_any_model
from pipelines.tracking import (
    FLAVOR_NAME,
    RunTracker,
    load_pyfunc_model,
    load_registered_model,
    mlflow_client,
    register_model,
)
from pipelines.tracking.flavor import ARTIFACT_DIGEST_TAG

REREGISTER = "jobs/register_model.py"
EXAMPLE = np.random.default_rng(0).random((1, 3, 3, 64, 64), dtype=np.float32)


def tiny_ttvsr(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return vsr_models.build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)


def register_tiny(mlflow_uri: str, name: str = "tiny", psnr: float = 27.0, **version_tags) -> nn.Module:
    model = tiny_ttvsr()
    tracker = RunTracker.start(mlflow_uri, "exp", f"train-{name}")
    register_model(
        tracker,
        model,
        registered_model=name,
        input_example=EXAMPLE,
        val_metrics={"psnr": psnr, "ssim": 0.8},
        version_tags=version_tags,
    )
    return model


def artifact_dir(mlflow_uri: str, name: str, version: str) -> Path:
    """Where the (local) store keeps a version's files: its LoggedModel's artifact location."""
    client = mlflow_client(mlflow_uri)
    source = client.get_model_version(name, version).source  # models:/<logged model id>
    model_id = source.removeprefix("models:/")
    return Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))


class _Plant:
    """Unpickling this creates ``marker`` (``Path.touch``): the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return Path.touch, (self.marker,)


class PlantingModule(nn.Module):
    """An ``nn.Module`` that pickles fine (logging creates nothing) and runs the payload when unpickled."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = Path(marker)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return x

    def __reduce__(self):
        return Path.touch, (self.marker,)


def frames() -> torch.Tensor:
    return torch.rand(1, 2, 3, 68, 72)  # not the example's shape: nothing is traced for one size


# -- the format -------------------------------------------------------------------------------------


def test_registered_model_loads_back_with_identical_outputs_and_holds_no_code(mlflow_uri):
    model = register_tiny(mlflow_uri)
    loaded = load_registered_model("models:/tiny@champion", mlflow_uri)
    lr = frames()
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr), model(lr), rtol=0, atol=0)
    assert not loaded.training

    files = {p.name for p in artifact_dir(mlflow_uri, "tiny", "1").iterdir()}
    assert {"MLmodel", "model.pt", "input_example.json", "serving_input_example.json"} <= files
    assert files <= {
        "MLmodel",
        "model.pt",
        "input_example.json",
        "serving_input_example.json",
        "registered_model_meta",
    }
    conf = yaml.safe_load((artifact_dir(mlflow_uri, "tiny", "1") / "MLmodel").read_text())
    assert set(conf["flavors"]) == {FLAVOR_NAME, "python_function"}
    assert conf["flavors"][FLAVOR_NAME]["arch"] == "ttvsr"
    pyfunc = conf["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "pipelines.tracking.flavor" and pyfunc["data"] == "model.pt"
    assert "code" not in pyfunc  # no code_paths: nothing from the artifact store goes on sys.path
    # model.pt is this project's checkpoint: tensors and plain values, readable with weights_only=True.
    raw = torch.load(artifact_dir(mlflow_uri, "tiny", "1") / "model.pt", weights_only=True)
    assert raw["arch"] == "ttvsr" and raw["config"]["mid_channels"] == 8


def test_pyfunc_load_model_predicts_like_the_network(mlflow_uri):
    model = register_tiny(mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    served = mlflow.pyfunc.load_model("models:/tiny@champion")
    lr = frames()
    predicted = served.predict(lr.numpy())
    assert isinstance(predicted, np.ndarray) and predicted.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_array_equal(predicted, model(lr).numpy())


def test_registered_version_has_a_signature_and_an_input_example(mlflow_uri, tmp_path):
    register_tiny(mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    info = mlflow.models.get_model_info("models:/tiny/1")
    (spec,) = info.signature.inputs.inputs
    assert spec.type == np.dtype(np.float32) and spec.shape == (-1, -1, 3, -1, -1)
    assert info.signature.outputs.inputs[0].shape == (-1, -1, 3, -1, -1)
    assert info.saved_input_example_info["type"] == "ndarray"

    local = mlflow.artifacts.download_artifacts("models:/tiny/1", dst_path=str(tmp_path / "dl"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    np.testing.assert_allclose(example, EXAMPLE, rtol=1e-6)


def test_version_tags_and_champion_rule_are_kept(mlflow_uri):
    register_tiny(mlflow_uri, psnr=27.0, iteration=6)
    register_tiny(mlflow_uri, psnr=26.0)  # worse: the alias stays on v1
    client = mlflow_client(mlflow_uri)
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"
    tags = client.get_model_version("tiny", "1").tags
    assert tags["val_psnr"] == "27.0" and tags["iteration"] == "6"


def test_nan_score_is_never_registered_and_a_nan_champion_can_be_replaced(mlflow_uri):
    from pipelines.common.errors import TrainingDiverged

    register_tiny(mlflow_uri, psnr=27.0)
    client = mlflow_client(mlflow_uri)
    with pytest.raises(TrainingDiverged, match="validation PSNR is nan"):
        register_tiny(mlflow_uri, psnr=float("nan"))
    assert [str(v.version) for v in client.search_model_versions("name='tiny'")] == ["1"]  # nothing logged

    client.set_model_version_tag("tiny", "1", "val_psnr", "nan")  # a champion scored NaN (an older release)
    register_tiny(mlflow_uri, psnr=20.0)
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "2"


# -- a doctored registry runs no code ---------------------------------------------------------------


def register_pickled(mlflow_uri: str, marker: Path, name: str = "tiny", **version_tags) -> str:
    """A version as an earlier release registered it: ``mlflow.pytorch`` (a pickle), with a payload."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    tracker = RunTracker.start(mlflow_uri, "exp", f"old-{name}")
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pytorch.log_model(
            PlantingModule(marker),
            name="model",
            registered_model_name=name,
            serialization_format="pickle",
            pip_requirements=["torch"],  # no requirement inference, which would load (unpickle) it
        )
    version = str(info.registered_model_version)
    client = mlflow_client(mlflow_uri)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_registered_model_alias(name, "champion", version)
    marker.unlink(missing_ok=True)  # whatever logging did: the loaders below start from no marker
    return version


def test_pickled_version_is_refused_with_how_to_reregister_and_runs_nothing(mlflow_uri, tmp_path):
    marker = tmp_path / "pwned"
    training = RunTracker.start(mlflow_uri, "exp", "ttvsr_reds4")
    training.log_params({"run.storage_path": "/mnt/shared/runs"})
    version = register_pickled(mlflow_uri, marker, mlflow_run_id=training.run_id, iteration=300000)

    for uri in ("models:/tiny@champion", f"models:/tiny/{version}"):
        with pytest.raises(ModelLoadError) as refused:
            load_registered_model(uri, mlflow_uri)
        message = str(refused.value)
        assert "refused" in message and "unpickle" in message and "re-register" in message.lower()
        assert (
            f"python {REREGISTER} /mnt/shared/runs/ttvsr_reds4/checkpoint_00300000 --name tiny --alias champion"
            in message
        )
        with pytest.raises(ModelLoadError, match="(?i)re-register"):
            load_any_model(ModelRef(uri, tracking_uri=mlflow_uri))
    assert not marker.exists()

    # The payload is live: MLflow's own loader of that version runs it.
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    with contextlib.suppress(Exception):  # the payload returns no module; it has run by then
        mlflow.pytorch.load_model(f"models:/tiny/{version}")
    assert marker.exists()


def test_pickled_version_without_training_tags_still_says_how_to_reregister(mlflow_uri, tmp_path):
    marker = tmp_path / "pwned"
    version = register_pickled(mlflow_uri, marker)
    with pytest.raises(ModelLoadError) as refused:
        load_any_model(ModelRef(f"models:/tiny/{version}", tracking_uri=mlflow_uri))
    message = str(refused.value)
    assert f"python {REREGISTER} <storage_path>/<run name>/checkpoint_<iteration> --name tiny" in message
    assert "mlflow_run_id" in message and "iteration" in message
    assert not marker.exists()


def test_ray_vsr_version_whose_model_pt_was_replaced_by_a_pickle_runs_nothing(mlflow_uri, tmp_path):
    marker = tmp_path / "pwned"
    register_tiny(mlflow_uri)
    model_pt = artifact_dir(mlflow_uri, "tiny", "1") / "model.pt"
    torch.save({"format": "ray-vsr", "format_version": 1, "state_dict": _Plant(marker)}, model_pt)
    assert not marker.exists()

    with pytest.raises(ModelLoadError) as refused:
        load_registered_model("models:/tiny@champion", mlflow_uri)
    assert "its file model.pt was changed in the artifact store after registration" in str(refused.value)
    assert "re-register" in str(refused.value).lower()
    client = mlflow_client(
        mlflow_uri
    )  # a version registered before files were hashed: the weights-only check
    client.delete_model_version_tag("tiny", "1", ARTIFACT_DIGEST_TAG)
    with pytest.raises(ModelLoadError, match="model.pt holds objects other than tensors and plain values"):
        load_registered_model("models:/tiny@champion", mlflow_uri)
    with pytest.raises(ModelLoadError):
        load_any_model(ModelRef("models:/tiny/1", tracking_uri=mlflow_uri))
    mlflow.set_tracking_uri(mlflow_uri)
    with pytest.raises(vsr_models.IncompatibleCheckpointError):  # pyfunc reads model.pt the same way
        mlflow.pyfunc.load_model("models:/tiny/1")
    assert not marker.exists()

    torch.load(model_pt, weights_only=False)  # the payload is live: a plain unpickling runs it
    assert marker.exists()


def test_mlmodel_that_is_not_yaml_data_is_refused_without_reading_anything_else(mlflow_uri, tmp_path):
    marker = tmp_path / "pwned"
    register_tiny(mlflow_uri)
    folder = artifact_dir(mlflow_uri, "tiny", "1")
    # A Python-object YAML tag: yaml.safe_load refuses it rather than building the object.
    (folder / "MLmodel").write_text(f"flavors: !!python/object/apply:pathlib.Path.touch [{marker}]\n")
    with pytest.raises(ModelLoadError, match="not valid YAML"):
        load_registered_model("models:/tiny/1", mlflow_uri)
    assert not marker.exists()


def test_doctored_mlmodel_naming_a_module_beside_it_is_refused_by_every_project_loader(mlflow_uri, tmp_path):
    marker = tmp_path / "pwned"
    register_tiny(mlflow_uri)
    folder = artifact_dir(mlflow_uri, "tiny", "1")
    (folder / "evil_loader.py").write_text(f"open({str(marker)!r}, 'w')\ndef _load_pyfunc(path):\n    pass\n")
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"]["python_function"] |= {"loader_module": "evil_loader", "code": "."}
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))

    for load in (load_registered_model, load_pyfunc_model):
        with pytest.raises(ModelLoadError) as refused:
            load("models:/tiny@champion", mlflow_uri)
        message = str(refused.value)
        assert "\n" not in message and "was changed in the artifact store after registration" in message
    with pytest.raises(ModelLoadError, match="was changed"):
        load_any_model(ModelRef("models:/tiny/1", tracking_uri=mlflow_uri))
    assert not marker.exists() and "evil_loader" not in sys.modules

    # The doctored MLmodel is live: MLflow's own pyfunc loader imports the module it names.
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_registry_uri(mlflow_uri)
    with contextlib.suppress(Exception):
        mlflow.pyfunc.load_model("models:/tiny/1")
    assert marker.exists()
    sys.modules.pop("evil_loader", None)


def test_module_added_beside_an_intact_mlmodel_is_refused_by_the_pyfunc_loader(mlflow_uri):
    register_tiny(mlflow_uri)
    (artifact_dir(mlflow_uri, "tiny", "1") / "evil_loader.py").write_text("raise SystemExit\n")
    with pytest.raises(ModelLoadError, match="its file evil_loader.py was added"):
        load_pyfunc_model("models:/tiny/1", mlflow_uri)


def test_project_pyfunc_loader_predicts_like_the_network(mlflow_uri):
    model = register_tiny(mlflow_uri)
    served = load_pyfunc_model("models:/tiny@champion", mlflow_uri)
    lr = frames()
    with torch.no_grad():
        np.testing.assert_array_equal(served.predict(lr.numpy()), model(lr).numpy())


# -- jobs/register_model.py -------------------------------------------------------------------------


def run_register_job(args: list[str], mlflow_uri: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_uri)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, REREGISTER, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_register_job_registers_a_checkpoint_folder_that_loads_back(mlflow_uri, tmp_path):
    marker = tmp_path / "pwned"
    register_pickled(mlflow_uri, marker)  # v1: the old pickled champion the job replaces
    model = tiny_ttvsr(seed=1)
    folder = tmp_path / "runs" / "ttvsr_a" / "checkpoint_00000006"
    vsr_models.save_checkpoint(model, folder / "model.pt")
    torch.save(
        {"iteration": 6, "mlflow_run_id": "abc123", "val_metrics": {"psnr": 25.5, "ssim": 0.75}},
        folder / "training_state.pt",
    )

    result = run_register_job([str(folder), "--name", "tiny", "--alias", "champion"], mlflow_uri)
    assert result.returncode == 0, result.stderr
    assert "registered models:/tiny/2 (champion)" in result.stdout

    loaded = load_registered_model("models:/tiny@champion", mlflow_uri)
    lr = frames()
    with torch.no_grad():
        torch.testing.assert_close(loaded(lr), model(lr), rtol=0, atol=0)
    client = mlflow_client(mlflow_uri)
    version = client.get_model_version("tiny", "2")
    assert version.tags["val_psnr"] == "25.5" and version.tags["iteration"] == "6"
    assert version.tags["mlflow_run_id"] == "abc123"
    assert client.get_run(version.run_id).info.run_name == "register-tiny"
    assert not marker.exists()


def test_register_job_with_a_missing_folder_is_one_error_line(mlflow_uri, tmp_path):
    result = run_register_job([str(tmp_path / "nowhere"), "--name", "tiny"], mlflow_uri)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
    assert "Traceback" not in result.stderr
