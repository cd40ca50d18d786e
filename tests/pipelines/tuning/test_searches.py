"""Real searches on a local Ray cluster with a real MLflow SQLite store and the tiny prepared dataset:

- a token-scale training search (4 trials of a tiny TTVSR, ASHA) through the command line: nested MLflow
  runs with their status, what Tune saw, the results table and plots, the best trial registered as
  ``best-<name>`` (and, asked with ``--champion``, as champion);
- a frame-interval evaluation sweep over that search's best network: one evaluation per trial, each
  equal to scoring the network directly with the same key-frame stride;
- a sweep stopped mid-way (SIGTERM to the job) and run again: finished trials are not rerun, and the
  trials end as an uninterrupted sweep ends; a search run again after it finished adds nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs.tune_ttvsr import main
from pipelines.tracking import mlflow_client
from pipelines.tracking.runs import PARENT_RUN_TAG
from pipelines.tracking.tuning import SEARCH_ID_TAG, TRIAL_STATUS_TAG, TUNE_EXPERIMENT_TAG
from pipelines.tuning.state import STATE_FILE

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"
# Run one at a time in this order, ASHA stops at least the last: a single scale trails the others by
# about 1 dB after 2 iterations (its fusion convolution starts from other weights), below the median.
TOKEN_SCALES = [[4, 6, 8], [8, 12, 16], [4, 6], [4]]
STRIDES = [1, 2, 3]
REGISTERED = "ttvsr_tune_test"
EXPERIMENT = "tune-test"

pytestmark = pytest.mark.slow


def write_search(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump({"base": str(TEST_CONFIG), **fields}, sort_keys=False))
    return path


def run_main(argv: list[str]) -> str:
    """``jobs/tune_ttvsr.py``'s main in this process (its Ray: the shared local cluster); its stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return stdout.getvalue()


def search_runs(uri: str, name: str) -> tuple[object, list]:
    """The parent run of the search ``name`` and its trial runs."""
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.{TUNE_EXPERIMENT_TAG} = '{name}'")
    parents = [r for r in runs if "tune_trial_id" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in runs if r is not parents[0]]


def trial_results(folder: Path) -> list[dict]:
    """What Tune recorded for one trial (its result.json lines)."""
    text = (folder / "result.json").read_text() if (folder / "result.json").exists() else ""
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_prepared_dataset) -> dict:
    root = tmp_path_factory.mktemp("searches")
    return {
        "root": root,
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "data": tiny_prepared_dataset,
        "experiment": {
            "data": {"path": str(tiny_prepared_dataset)},
            "run": {"storage_path": str(root / "runs")},
            "tracking": {"experiment": EXPERIMENT, "registered_model": REGISTERED},
        },
    }


@pytest.fixture(scope="module")
def token_search(workdir) -> dict:
    """4 token-scale trials of 4 iterations, validated at 2 and 4, one at a time; ASHA's rung at 2."""
    experiment = workdir["experiment"] | {"train": {"total_iters": 4, "val_every": 2, "checkpoint_every": 2}}
    config = write_search(
        workdir["root"] / "token_scales.yaml",
        experiment=experiment,
        search={"model.token_scales": {"grid": TOKEN_SCALES}},
        name="token_scales",
        num_samples=1,
        scheduler={"name": "asha", "grace_validations": 1, "reduction_factor": 2},
        max_concurrent_trials=1,
    )
    start = time.monotonic()
    stdout = run_main(["--config", str(config), "--mlflow-uri", workdir["uri"], "--champion"])
    print(f"token-scale search: {time.monotonic() - start:.1f} s")
    parent, trials = search_runs(workdir["uri"], "token_scales")
    return {
        "stdout": stdout,
        "parent": parent,
        "trials": trials,
        "dir": workdir["root"] / "runs" / "token_scales",
    }


def test_token_scale_search_runs_every_scale_as_a_nested_run_and_asha_stops_some(token_search, workdir):
    parent, trials = token_search["parent"], token_search["trials"]
    assert len(trials) == len(TOKEN_SCALES)
    assert sorted(json.loads(r.data.params["model.token_scales"]) for r in trials) == sorted(TOKEN_SCALES)
    assert all(r.data.tags[PARENT_RUN_TAG] == parent.info.run_id for r in trials)
    assert all(r.data.tags[SEARCH_ID_TAG] == parent.data.tags[SEARCH_ID_TAG] for r in trials)
    statuses = {r.info.run_name: r.data.tags[TRIAL_STATUS_TAG] for r in trials}
    assert "stopped early" in statuses.values() and "completed" in statuses.values(), statuses
    client = mlflow_client(workdir["uri"])
    for run in trials:
        stopped = statuses[run.info.run_name] == "stopped early"
        assert run.info.status == "FINISHED"  # a trial ASHA stopped ran as it should: tune_status says why
        psnr = sorted(client.get_metric_history(run.info.run_id, "val/psnr"), key=lambda m: m.step)
        assert all(10 < m.value < 60 for m in psnr)
        # Tune saw the validations up to where ASHA stopped the trial, with the PSNR the trial logged
        # (a stopped trial may have validated once more before its actor was ended)
        tune_results = trial_results(token_search["dir"] / run.info.run_name)
        assert [r["iteration"] for r in tune_results] == ([2] if stopped else [2, 4])
        assert [r["val_psnr"] for r in tune_results] == pytest.approx(
            [m.value for m in psnr][: len(tune_results)]
        )
        assert (token_search["dir"] / "train" / run.info.run_name / "checkpoint_00000002").is_dir()


def test_token_scale_search_logs_the_table_and_plots_to_its_parent_run(token_search, workdir):
    client = mlflow_client(workdir["uri"])
    parent = token_search["parent"]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "plots", "search.yaml", "trials.json", "best_config.yaml"} <= names
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/val_psnr_vs_model.token_scales.png", "plots/val_psnr_vs_iteration.png"}
    local = Path(client.download_artifacts(parent.info.run_id, "", str(workdir["root"] / "artifacts")))
    for plot in plots:
        assert (local / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (local / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["trial", "status", "model.token_scales"]
    assert len(rows) == 1 + len(TOKEN_SCALES)
    markdown = (local / "results.md").read_text()
    assert markdown.startswith("| trial | status | model.token_scales |") and "(4, 6, 8)" in markdown
    # the printed table: one row per trial with its scales and PSNR at its last validation Tune saw
    for run in token_search["trials"]:
        row = next(line for line in token_search["stdout"].splitlines() if line.startswith(run.info.run_name))
        assert "(" + ", ".join(map(str, json.loads(run.data.params["model.token_scales"]))) + ")" in row
        assert f"{trial_results(token_search['dir'] / run.info.run_name)[-1]['val_psnr']:.4f}" in row


def test_best_trial_is_rescored_and_registered_as_best_of_the_search_and_champion(token_search, workdir):
    from pipelines.data.manifest import open_dataset
    from pipelines.evaluation.protocol import ValidationProtocol
    from pipelines.evaluation.scoring import evaluate
    from pipelines.inference.loading import load_model

    client = mlflow_client(workdir["uri"])
    completed = [r for r in token_search["trials"] if r.data.tags[TRIAL_STATUS_TAG] == "completed"]
    best = max(completed, key=lambda r: r.data.metrics["val/psnr"])
    parent = token_search["parent"]
    assert parent.data.tags["best_mlflow_run_id"] == best.info.run_id
    version = client.get_model_version_by_alias(REGISTERED, "best-token_scales")
    assert version.run_id == best.info.run_id and str(version.version) == "1"  # only the best was registered
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == version.version  # --champion
    assert json.loads(version.tags["val_protocol"])["max_frames"] is None  # re-scored on the whole clips
    checkpoint = token_search["dir"] / "train" / best.info.run_name / "checkpoint_00000004"
    full = evaluate(load_model(checkpoint), open_dataset(workdir["data"]), ValidationProtocol(channel="rgb"))
    assert float(version.tags["val_psnr"]) == pytest.approx(full.model.psnr)
    best_config = yaml.safe_load(token_search["stdout"].split("best config:\n", 1)[1])
    assert best_config["model"]["token_scales"] == json.loads(best.data.params["model.token_scales"])
    assert best_config["run"]["name"] == "ttvsr_test"  # the base's run name: ready for jobs/train_ttvsr.py


# -- evaluation sweeps ---------------------------------------------------------------------------------


def sweep_config(workdir: dict, name: str, strides: list[int]) -> Path:
    return write_search(
        workdir["root"] / f"{name}.yaml",
        experiment=workdir["experiment"],
        search={"model.key_frame_stride": {"grid": strides}},
        evaluate=f"models:/{REGISTERED}@best-token_scales",
        name=name,
        num_samples=1,
        max_concurrent_trials=1,
    )


@pytest.fixture(scope="module")
def frame_interval_sweep(workdir, token_search) -> dict:
    config = sweep_config(workdir, "frame_interval", STRIDES)
    start = time.monotonic()
    stdout = run_main(["--config", str(config), "--mlflow-uri", workdir["uri"]])
    print(f"frame-interval sweep: {time.monotonic() - start:.1f} s")
    parent, trials = search_runs(workdir["uri"], "frame_interval")
    return {"stdout": stdout, "parent": parent, "trials": trials}


def psnr_by_stride(trials: list) -> dict[int, float]:
    return {int(r.data.params["model.key_frame_stride"]): r.data.metrics["val/psnr"] for r in trials}


def test_frame_interval_sweep_evaluates_without_training_and_matches_direct_scoring(
    frame_interval_sweep, workdir
):
    import vsr_models
    from pipelines.data.manifest import open_dataset
    from pipelines.evaluation.protocol import ValidationProtocol
    from pipelines.evaluation.scoring import evaluate
    from pipelines.inference.loading import ModelRef, load_model

    trials = frame_interval_sweep["trials"]
    assert all(r.data.tags[PARENT_RUN_TAG] == frame_interval_sweep["parent"].info.run_id for r in trials)
    assert all(r.data.tags[TRIAL_STATUS_TAG] == "completed" for r in trials)
    assert not (workdir["root"] / "runs" / "frame_interval" / "train").exists()  # no trial trained
    client = mlflow_client(workdir["uri"])
    version = client.get_model_version_by_alias(REGISTERED, "best-token_scales").version
    assert {r.data.params["evaluate"] for r in trials} == {f"models:/{REGISTERED}/{version}"}  # pinned
    trained = load_model(ModelRef(f"models:/{REGISTERED}/{version}", tracking_uri=workdir["uri"]))
    config = vsr_models.model_config(trained)
    swept = psnr_by_stride(trials)
    assert sorted(swept) == STRIDES
    for stride in STRIDES:
        network = vsr_models.build_model("ttvsr", **(config | {"key_frame_stride": stride}))
        network.load_state_dict(trained.state_dict())
        direct = evaluate(network.eval(), open_dataset(workdir["data"]), ValidationProtocol(channel="rgb"))
        assert swept[stride] == pytest.approx(direct.model.psnr, abs=1e-4)
    artifacts = {a.path for a in client.list_artifacts(frame_interval_sweep["parent"].info.run_id, "plots")}
    assert artifacts == {"plots/val_psnr_vs_model.key_frame_stride.png"}  # one validation each: no curves


def test_sweep_stopped_mid_way_resumes_without_rerunning_finished_trials(frame_interval_sweep, workdir):
    import ray

    strides = [*STRIDES, 4]
    config = sweep_config(workdir, "frame_interval_resumed", strides)
    folder = workdir["root"] / "runs" / "frame_interval_resumed"
    args = ["--config", str(config), "--mlflow-uri", workdir["uri"]]
    job = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "jobs" / "tune_ttvsr.py"), *args],
        env=os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not any(trial_results(d) for d in folder.glob("*_0000*")) and time.monotonic() < deadline:
            assert job.poll() is None, job.stderr.read()
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)  # as `ray job stop` does
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr
    assert "interrupted: re-run the same command to resume" in stderr
    done_before = {d.name for d in folder.glob("*_0000*") if trial_results(d)}
    assert 1 <= len(done_before) < len(strides)

    run_main(args)  # the same command again
    parent, trials = search_runs(workdir["uri"], "frame_interval_resumed")
    assert len(trials) == len(strides)  # one MLflow run per trial: none was run twice
    for name in done_before:
        assert len(trial_results(folder / name)) == 1
    assert all(len(trial_results(folder / r.info.run_name)) == 1 for r in trials)
    resumed = psnr_by_stride(trials)
    assert sorted(resumed) == strides
    uninterrupted = psnr_by_stride(frame_interval_sweep["trials"])
    assert {s: resumed[s] for s in STRIDES} == pytest.approx(uninterrupted, abs=1e-4)
    assert json.loads((folder / STATE_FILE).read_text())["search_id"] == parent.data.tags[SEARCH_ID_TAG]

    # run again once finished: nothing reruns, and the trials stay under the same parent run
    run_main(args)
    again_parent, again = search_runs(workdir["uri"], "frame_interval_resumed")
    assert again_parent.info.run_id == parent.info.run_id
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in trials)


def test_another_search_under_a_name_in_use_is_refused_before_any_trial(
    frame_interval_sweep, workdir, capsys
):
    config = sweep_config(workdir, "frame_interval", [5, 6])  # same name, other strides
    assert main(["--config", str(config), "--mlflow-uri", workdir["uri"]]) == 2
    err = capsys.readouterr().err
    assert "a different Tune search already ran as frame_interval" in err and err.count("\n") == 1
    _, trials = search_runs(workdir["uri"], "frame_interval")
    assert len(trials) == len(STRIDES)
