"""What the MLflow 3 UI shows, checked with the MLflow client on a real SQLite store: experiments open in
the model-training view, runs say who ran what from which commit, the LoggedModel carries the run's name
and its metrics name their dataset, evaluation runs link to the model they scored, a trial the scheduler
stopped is FINISHED, and validation image strips are labelled and listed in the run's image view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pipelines.evaluation.scoring import LABEL_BAND, image_strip
from pipelines.tracking import RunTracker, mlflow_client, register_model
from pipelines.tracking.evaluation import log_evaluation, resolve_model_version
from pipelines.tracking.runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from vsr_models import build_model

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_experiments_are_tagged_as_model_training_also_ones_made_before(mlflow_uri):
    client = mlflow_client(mlflow_uri)
    RunTracker.start(mlflow_uri, "fresh", "run")
    assert client.get_experiment_by_name("fresh").tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("from-an-earlier-release")  # untagged: MLflow may show it as GenAI
    RunTracker.start(mlflow_uri, "from-an-earlier-release", "run")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_runs_carry_user_command_and_git_commit(mlflow_uri, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / "jobs" / "train_ttvsr.py"), "--config", "x.yaml"])
    tracker = RunTracker.start(mlflow_uri, "exp", "run")
    tags = mlflow_client(mlflow_uri).get_run(tracker.run_id).data.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["mlflow.source.name"] == "jobs/train_ttvsr.py" and tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.user"]
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "ray-vsr-train-ttvsr")])
    installed = RunTracker.start(mlflow_uri, "exp", "run2")
    assert mlflow_client(mlflow_uri).get_run(installed.run_id).data.tags["mlflow.source.name"] == (
        "ray-vsr-train-ttvsr"
    )


def _register(mlflow_uri: str, run_name: str):
    torch.manual_seed(0)
    model = build_model("ttvsr", mid_channels=8, num_extract_blocks=1, num_propagation_blocks=1)
    tracker = RunTracker.start(mlflow_uri, "exp", run_name)
    example = np.random.default_rng(0).random((1, 3, 3, 64, 64), dtype=np.float32)
    registered = register_model(
        tracker,
        model,
        registered_model="tiny",
        input_example=example,
        val_metrics={"psnr": 28.5, "ssim": 0.8, "bicubic_psnr": 27.7, "bicubic_ssim": 0.77},
        version_tags={"iteration": 300, "dataset": "/data/sample", "val_dataset": "ab" * 32},
    )
    return tracker, registered


def test_logged_model_is_named_after_the_run_and_its_metrics_name_their_dataset(mlflow_uri):
    tracker, registered = _register(mlflow_uri, "ttvsr_sample")
    client = mlflow_client(mlflow_uri)
    model_id = resolve_model_version(mlflow_uri, f"models:/tiny/{registered.version}")["model_id"]
    logged = client.get_logged_model(model_id)
    assert logged.name == "ttvsr_sample" and logged.source_run_id == tracker.run_id
    metrics = {m.key: m for m in logged.metrics}
    assert metrics["best/psnr"].value == 28.5 and metrics["best/psnr"].step == 300
    assert (metrics["best/psnr"].dataset_name, metrics["best/psnr"].dataset_digest) == ("sample", "ab" * 16)
    assert "val/psnr" not in metrics  # the run's validation curve gets no extra point


def test_an_evaluation_run_links_to_the_model_it_scored(mlflow_uri):
    _, registered = _register(mlflow_uri, "ttvsr_sample")
    found = resolve_model_version(mlflow_uri, "models:/tiny@champion")
    assert found is not None and found["version"] == registered.version
    run_id = log_evaluation(
        mlflow_uri,
        "ray-vsr-evaluation",
        "eval-tiny-sample",
        tags={},
        params={"channel": "rgb"},
        metrics={"psnr": 28.4},
        texts={},
        model_id=found["model_id"],
        dataset=("sample", "cd" * 16),
    )
    client = mlflow_client(mlflow_uri)
    run = client.get_run(run_id)
    assert [m.model_id for m in run.inputs.model_inputs] == [found["model_id"]]
    scored = {m.key: m for m in client.get_logged_model(found["model_id"]).metrics if m.run_id == run_id}
    assert scored["psnr"].value == 28.4 and scored["psnr"].dataset_name == "sample"


def test_a_trial_the_scheduler_stopped_is_finished_with_its_status_tag(mlflow_uri):
    from pipelines.tracking.tuning import COMPLETED, ERRORED, STOPPED_EARLY, TRIAL_STATUS_TAG, record_statuses
    from pipelines.tuning.results import TrialSummary

    trials = []
    for name, status in (("stopped", STOPPED_EARLY), ("done", COMPLETED), ("broke", ERRORED)):
        run_id = RunTracker.start(mlflow_uri, "exp", name).run_id
        trials.append(TrialSummary(name, {}, status, 2, 25.0, 25.0, run_id, None))
    record_statuses(trials, mlflow_uri)
    client = mlflow_client(mlflow_uri)
    runs = {t.trial_id: client.get_run(t.mlflow_run_id) for t in trials}
    assert {name: run.info.status for name, run in runs.items()} == {
        "stopped": "FINISHED",
        "done": "FINISHED",
        "broke": "FAILED",
    }
    assert runs["stopped"].data.tags[TRIAL_STATUS_TAG] == STOPPED_EARLY


def test_labelled_image_strips_are_listed_in_the_runs_image_view(mlflow_uri):
    tracker = RunTracker.start(mlflow_uri, "exp", "run")
    strip = image_strip(*(torch.full((3, 32, 64), v) for v in (0.2, 0.5, 0.8)))
    for step in (100, 200):
        tracker.log_image(strip, key="val/clip_000", step=step)
    client = mlflow_client(mlflow_uri)
    # MLflow's image view reads images/<key>+step+<step>+... files (the key's "/" written as "~")
    files = [Path(f.path).name for f in client.list_artifacts(tracker.run_id, "images")]
    pngs = sorted(f for f in files if f.endswith(".png"))
    assert [f.split("+timestamp")[0] for f in pngs] == ["val~clip_000+step+100", "val~clip_000+step+200"]
    assert strip.shape == (LABEL_BAND + 32, 192, 3) and strip[:LABEL_BAND].max() == 255
