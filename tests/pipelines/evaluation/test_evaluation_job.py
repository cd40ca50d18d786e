"""jobs/evaluate.py end to end: a Ray task, every model source, the per-clip tables and the MLflow run.

The Ray tests run the CPU path (``num_cpus=1``, the network on ``cpu``). On a cluster with a GPU,
:func:`task_options` (tested below with the resources such a cluster reports) schedules the same task
with ``num_gpus=1`` and the task loads the network on ``cuda``; a GPU run adds only that the scores come
from CUDA convolutions (equal to these up to float rounding).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from jobs.evaluate import main
from pipelines.common.errors import ConfigError
from pipelines.common.files import sha256_file
from pipelines.data.manifest import open_dataset
from pipelines.evaluation.config import EvaluationConfig
from pipelines.evaluation.run import run_evaluation, task_options
from pipelines.evaluation.scoring import CSV_COLUMNS, evaluate
from pipelines.tracking import RunTracker, example_input, mlflow_client, register_model, resolve_tracking_uri
from vsr_models import build_model, get_family, save_checkpoint

TINY_TTVSR = {"mid_channels": 8, "num_extract_blocks": 1, "num_propagation_blocks": 1}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("ttvsr", **TINY_TTVSR).eval()


@pytest.fixture(scope="module")
def direct(tiny_model, tiny_prepared_dataset):
    """The tiny model scored in this process by ``scoring.evaluate``, without Ray."""
    return evaluate(tiny_model, open_dataset(tiny_prepared_dataset))


def assert_same_scores(got, expected):
    # The task runs torch with one thread (Ray's OMP_NUM_THREADS=1): sums may round differently in the
    # last bits, far below the 2 / 4 decimals the tables print.
    assert got.metrics() == pytest.approx(expected.metrics(), rel=1e-9, abs=1e-6)
    assert list(got.model.clips) == list(expected.model.clips)


def per_clip_rows(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and tuple(rows[0]) == CSV_COLUMNS
    return rows


# -- pieces ------------------------------------------------------------------------------------------------


def test_the_task_takes_a_gpu_when_the_cluster_has_one_or_cuda_is_asked_for():
    gpu_cluster = {"CPU": 16.0, "GPU": 1.0, "memory": 1e11, "node:10.0.0.1": 1.0}
    assert task_options("auto", gpu_cluster) == ({"num_gpus": 1}, "cuda")
    assert task_options("cuda:1", gpu_cluster) == ({"num_gpus": 1}, "cuda")  # the task's GPU is cuda:0
    assert task_options("cpu", gpu_cluster) == ({"num_cpus": 1}, "cpu")
    assert task_options("auto", {"CPU": 4.0}) == ({"num_cpus": 1}, "cpu")
    with pytest.raises(ConfigError, match="no GPU.*--device auto or cpu"):
        task_options("cuda", {"CPU": 4.0})


def test_a_config_names_one_model_source_and_a_released_one_with_its_arch():
    assert EvaluationConfig().source == "models:/ttvsr@champion"
    assert EvaluationConfig(official="x.pth", arch="vsrt").source == "x.pth"
    with pytest.raises(ConfigError, match="either --model .* or --official"):
        EvaluationConfig(model="m.pt", official="x.pth", arch="ttvsr")
    with pytest.raises(ConfigError, match="applies only to a released checkpoint"):
        EvaluationConfig(model="m.pt", arch="ttvsr")
    with pytest.raises(ConfigError, match="device 'gpu'"):
        EvaluationConfig(device="gpu")


def test_an_unknown_arch_is_refused_listing_the_registry_families(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = ["--official", str(tmp_path / "TTVSR_REDS.pth"), "--data", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:  # --arch's choices are the registry's families
        main([*argv, "--arch", "ttvrs"])
    assert exit_.value.code == 2
    assert "argument --arch: invalid choice: 'ttvrs' (choose from 'ttvsr', 'vsrt')" in capsys.readouterr().err
    assert main([*argv, "--set", "arch=ttvrs"]) == 2  # a config's arch: one line
    err = capsys.readouterr().err
    assert (
        err == "error: EvaluationConfig: --arch 'ttvrs' is not a known architecture: use one of ttvsr, vsrt\n"
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_official_without_arch_is_one_error_line_before_any_ray_or_mlflow_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["--official", str(tmp_path / "TTVSR_REDS.pth"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "--official" in err and "--arch ttvsr|vsrt" in err
    assert not (tmp_path / "mlflow.db").exists()


# -- real Ray, real MLflow ---------------------------------------------------------------------------------


def test_a_checkpoint_scored_in_a_ray_task_matches_direct_scoring_and_is_logged_to_mlflow(
    tiny_model, direct, tiny_prepared_dataset, mlflow_uri, ray_local, tmp_path
):
    checkpoint = save_checkpoint(tiny_model, tmp_path / "run" / "checkpoint_00000002" / "model.pt")
    cfg = EvaluationConfig(
        model=str(checkpoint),
        data=str(tiny_prepared_dataset),
        tracking_uri=mlflow_uri,
        output=str(tmp_path / "out"),
    )
    result = run_evaluation(cfg)

    assert result.device == "cpu"  # no GPU in this cluster
    assert_same_scores(result.report, direct)
    assert result.files == (str(tmp_path / "out" / "per_clip.csv"), str(tmp_path / "out" / "per_clip.md"))
    assert (tmp_path / "out" / "per_clip.csv").read_text() == result.report.csv()
    assert (tmp_path / "out" / "per_clip.md").read_text() == result.report.markdown()
    assert result.run_id in result.describe() and "per_clip.csv" in result.describe()

    client = mlflow_client(resolve_tracking_uri(mlflow_uri))
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"eval-checkpoint_00000002-{tiny_prepared_dataset.name}"
    assert client.get_experiment(run.info.experiment_id).name == "ray-vsr-evaluation"
    assert run.data.metrics == result.metrics()  # psnr, ssim, bicubic_psnr, bicubic_ssim
    tags = run.data.tags
    assert tags["eval.model_path"] == str(checkpoint.resolve())
    assert tags["dataset.sha256"] == sha256_file(tiny_prepared_dataset / "manifest.json")
    assert tags["dataset.path"] == str(tiny_prepared_dataset.resolve()) and tags["dataset.split"] == "val"
    assert tags["protocol.channel"] == "rgb" and tags["protocol.mirror_times"] == "0"
    assert "mlflow.parentRunId" not in tags  # a plain checkpoint file has no run to link to
    assert run.data.params["channel"] == "rgb" and run.data.params["model"] == str(checkpoint.resolve())

    assert {a.path for a in client.list_artifacts(result.run_id)} == {"per_clip.csv", "per_clip.md"}
    downloaded = client.download_artifacts(result.run_id, "per_clip.csv", str(tmp_path / "downloaded"))
    with open(downloaded) as f:
        rows = per_clip_rows(f.read())
    assert [row["clip"] for row in rows] == list(result.report.model.clips)
    for row in rows:
        scores = result.report.model.clips[row["clip"]]
        assert (float(row["psnr"]), float(row["ssim"]), int(row["frames"])) == (
            scores.psnr,
            scores.ssim,
            scores.num_frames,
        )


def test_a_registered_version_is_logged_under_its_training_run_and_tagged_with_the_score(
    tiny_model, direct, tiny_prepared_dataset, mlflow_uri, ray_local
):
    uri = resolve_tracking_uri(mlflow_uri)
    training = RunTracker.start(uri, "ray-vsr", "train-tiny")
    register_model(
        training,
        tiny_model,
        registered_model="tiny",
        input_example=example_input(tiny_model),
        val_metrics={"psnr": 20.0},
        version_tags={"mlflow_run_id": training.run_id},
    )
    training.finish()

    result = run_evaluation(
        EvaluationConfig(model="models:/tiny@champion", data=str(tiny_prepared_dataset), tracking_uri=uri)
    )

    assert_same_scores(result.report, direct)
    client = mlflow_client(uri)
    run = client.get_run(result.run_id)
    assert run.info.run_name == f"eval-tiny-{tiny_prepared_dataset.name}"
    tags = run.data.tags
    assert (
        tags["eval.model_uri"] == "models:/tiny@champion"
        and tags["eval.model_uri_pinned"] == "models:/tiny/1"
    )
    assert (tags["eval.registered_model"], tags["eval.registered_version"]) == ("tiny", "1")
    assert tags["mlflow.parentRunId"] == tags["source_run_id"] == training.run_id
    version = client.get_model_version("tiny", "1")
    prefix = f"eval_{sha256_file(tiny_prepared_dataset / 'manifest.json')[:12]}"
    assert float(version.tags[f"{prefix}_psnr"]) == result.report.model.psnr
    assert version.tags[f"{prefix}_run_id"] == result.run_id and version.tags[f"{prefix}_channel"] == "rgb"


def test_a_released_checkpoint_is_evaluated_through_the_job(
    tiny_model, direct, tiny_prepared_dataset, mlflow_uri, ray_local, tmp_path, capsys
):
    # The mmediting layout of TTVSR's release; import_official infers this small config from the tensors.
    official = get_family("ttvsr").to_official(tiny_model.state_dict())
    released = tmp_path / "TTVSR_TINY.pth"
    torch.save({"state_dict": {f"generator.{k}": v for k, v in official.items()}}, released)
    argv = ["--official", str(released), "--arch", "ttvsr", "--data", str(tiny_prepared_dataset)]
    argv += ["--mlflow-uri", mlflow_uri, "--output", str(tmp_path / "out")]

    assert main(argv) == 0

    out, err = capsys.readouterr()
    header, _, clip, _, mean = out.strip().splitlines()  # stdout: the table, as before
    assert "(RGB)" in header and clip.split()[1] == "8"
    assert mean.split()[2:] == [
        f"{direct.bicubic.psnr:.2f}",
        "/",
        f"{direct.bicubic.ssim:.4f}",
        f"{direct.model.psnr:.2f}",
        "/",
        f"{direct.model.ssim:.4f}",
    ]
    client = mlflow_client(resolve_tracking_uri(mlflow_uri))
    experiment = client.get_experiment_by_name("ray-vsr-evaluation")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id in err.strip().splitlines()[-1]  # stderr: where the run and the files went
    assert run.info.run_name == f"eval-TTVSR_TINY-{tiny_prepared_dataset.name}"
    assert run.data.tags["eval.official"] == str(released.resolve()) and run.data.tags["eval.arch"] == "ttvsr"
    assert run.data.metrics["psnr"] == pytest.approx(direct.model.psnr, rel=1e-9, abs=1e-6)
    rows = per_clip_rows((tmp_path / "out" / "per_clip.csv").read_text())
    assert np.isclose(float(rows[0]["psnr"]), direct.model.clips[rows[0]["clip"]].psnr)


def test_model_settings_change_how_a_network_computes_and_keep_its_weights():
    from pipelines.inference.loading import with_model_settings

    torch.manual_seed(0)
    network = build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1).eval()
    strided = with_model_settings(network, {"key_frame_stride": 5})
    assert strided.config.key_frame_stride == 5 and network.config.key_frame_stride == 3
    assert all(
        torch.equal(a, b) for a, b in zip(network.state_dict().values(), strided.state_dict().values())
    )
    frames = torch.rand(1, 8, 3, 64, 64)
    with torch.no_grad():
        # the same weights: with stride 1 the 8 frames are all key frames, as opposed to 3 of them
        assert not torch.allclose(
            network(frames), with_model_settings(network, {"key_frame_stride": 1})(frames)
        )
    assert with_model_settings(network, {}) is network
    with pytest.raises(ConfigError, match="model.mid_channels=16 changes the network's tensors"):
        with_model_settings(network, {"mid_channels": 16})
    with pytest.raises(ConfigError, match="model.key_frame_stride=0: TTVSRConfig"):
        with_model_settings(network, {"key_frame_stride": 0})
