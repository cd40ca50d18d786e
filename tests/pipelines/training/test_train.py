"""Training on real Ray clusters with a real MLflow SQLite store: a tiny TTVSR on a tiny prepared dataset.

Scenarios (each a real ``TorchTrainer.fit``): a run stopped by an error and re-run under the same name
(resume + end to end: loss, validation, registry), a worker killed mid-run (automatic recovery), and
two workers on a simulated two-node cluster (DDP keeps the weights identical).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from pipelines.common.config import load_config
from pipelines.tracking import RunTracker, find_run, mlflow_client
from pipelines.tracking import load_registered_model as load_model
from pipelines.training.config import Experiment
from pipelines.training.recipe import CosineRestartFactor
from pipelines.training.run import run_training
from pipelines.training.state import read_training_state

REPO_ROOT = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO_ROOT / "configs" / "ttvsr_test.yaml"

pytestmark = pytest.mark.slow


def _pickle_this_module_by_value() -> None:
    # The step callbacks below travel to Ray workers, which cannot import this test module by name.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclasses.dataclass
class StopAt:
    """Raise at ``iteration`` (a user stopping the job, or a crash with no retries left)."""

    iteration: int

    def __call__(self, iteration, model, rank):
        if iteration == self.iteration:
            raise RuntimeError(f"stopped at iteration {iteration}")


@dataclasses.dataclass
class KillOnceAt:
    """SIGKILL this worker process at ``iteration``, once: the marker file remembers it happened."""

    iteration: int
    marker: str

    def __call__(self, iteration, model, rank):
        if iteration == self.iteration and rank == 0 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


MANIFEST_READS_ENV = "RAY_VSR_TEST_MANIFEST_READS"


def count_manifest_reads() -> None:
    """Record every read of a dataset's manifest.json in this process (one JSON line each, in the file
    $RAY_VSR_TEST_MANIFEST_READS): run in the driver and, as Ray's worker_process_setup_hook, in every
    Ray worker process of the cluster (training workers, Ray Data and other tasks)."""
    import json
    import traceback

    from pipelines.common import storage

    original = storage.Location.read_bytes
    if getattr(original, "counted", False):
        return

    def read_bytes(self, *args, **kwargs):
        if self.uri.endswith("/manifest.json"):
            stack = "".join(traceback.format_stack())
            where = "worker" if "train_loop_per_worker" in stack else f"pid {os.getpid()}"
            with open(os.environ[MANIFEST_READS_ENV], "a") as log:
                log.write(json.dumps(where) + "\n")
        return original(self, *args, **kwargs)

    read_bytes.counted = True
    storage.Location.read_bytes = read_bytes
    with open(os.environ[MANIFEST_READS_ENV] + ".processes", "a") as log:  # the counter is in place here
        log.write(f"{os.getpid()}\n")


@dataclasses.dataclass
class RecordWeights:
    """Append ``iteration sha256(weights) node_id pid`` to ``<folder>/rank<r>.txt`` after every step."""

    folder: str

    def __call__(self, iteration, model, rank):
        import ray

        digest = hashlib.sha256()
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        node = ray.get_runtime_context().get_node_id()
        with open(Path(self.folder) / f"rank{rank}.txt", "a") as file:
            file.write(f"{iteration} {digest.hexdigest()} {node} {os.getpid()}\n")


@dataclasses.dataclass
class WreckWeightsAt:
    """Add unit Gaussian noise to every weight at ``iteration``: every later validation is far worse."""

    iteration: int

    def __call__(self, iteration, model, rank):
        if iteration == self.iteration:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(torch.randn_like(parameter))


@pytest.fixture(scope="module")
def tiny_dataset(tiny_prepared_dataset) -> Path:
    return tiny_prepared_dataset


def tiny_config(data: Path, workdir: Path, name: str, *overrides: str) -> Experiment:
    return load_config(
        Experiment,
        TEST_CONFIG,
        [
            f"data.path={data}",
            f"run.storage_path={workdir / 'runs'}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
            f"run.name={name}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def stopped_then_resumed(tiny_dataset, tmp_path_factory):
    """Run ``resume`` is stopped by an error at iteration 3 (checkpoint at 2), then run again by name."""
    import ray.train

    _pickle_this_module_by_value()
    workdir = tmp_path_factory.mktemp("resume")
    cfg = tiny_config(tiny_dataset, workdir, "resume", "run.max_failures=0")
    with pytest.raises(ray.train.TrainingFailedError, match="stopped at iteration 3"):
        run_training(cfg, step_callback=StopAt(3))
    stopped = RunTracker.attach(
        cfg.tracking.uri, find_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.run.name)
    )
    assert mlflow_client(cfg.tracking.uri).get_run(stopped.run_id).info.status == "FAILED"
    stopped_history = stopped.metric_history("loss")
    summary = run_training(cfg)
    return cfg, stopped_history, summary


def test_stopped_run_resumes_from_its_checkpoint_in_the_same_mlflow_run(stopped_then_resumed):
    cfg, stopped_history, summary = stopped_then_resumed
    assert [step for step, _ in stopped_history] == [1, 2]  # the stop came before iteration 3 was logged
    tracker = RunTracker.attach(summary.tracking_uri, summary.mlflow_run_id)
    assert tracker.metric_history("resumed_from_iteration") == [(2, 2.0)]
    # one MLflow run, iterations 1..6 each logged once: 1-2 before the stop, 3-6 after the resume
    assert [step for step, _ in tracker.metric_history("loss")] == [1, 2, 3, 4, 5, 6]
    assert stopped_history == tracker.metric_history("loss")[:2]
    assert summary.iteration == 6
    assert Path(summary.checkpoint_path).name == "checkpoint_00000006"
    # 6 sequences consumed, 2 before the stop and 4 after: where a later resume's crop plan starts
    assert read_training_state(summary.checkpoint_path)["samples"] == 6


def test_training_end_to_end_logs_validation_and_registers_a_loadable_champion(
    stopped_then_resumed, tiny_dataset
):
    cfg, _, summary = stopped_then_resumed
    tracker = RunTracker.attach(summary.tracking_uri, summary.mlflow_run_id)
    losses = [value for _, value in tracker.metric_history("loss")]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # lr 1e-3 from scratch: the loss falls within 6 steps

    # validation every 3 iterations and at the end, on the benchmark convention (RGB), against bicubic
    val_psnr = tracker.metric_history("val/psnr")
    assert [step for step, _ in val_psnr] == [3, 6]
    assert val_psnr[-1][1] == pytest.approx(summary.val_metrics["psnr"])
    assert 10 < summary.val_metrics["psnr"] < 60
    assert 20 < summary.val_metrics["bicubic_psnr"] < 60
    tags = tracker.tags()
    assert tags["registered_iteration"] == "6"

    client = mlflow_client(summary.tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.mid_channels"] == "8"
    assert run.data.params["optim.spynet_lr_mult"] == "0.125"
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id)}
    assert {"config.yaml", "dataset", "images"} <= artifacts
    # lineage: the prepared dataset is the run's input, identified by its manifest's digest
    (dataset_input,) = run.inputs.dataset_inputs
    manifest_digest = hashlib.sha256((tiny_dataset / "manifest.json").read_bytes()).hexdigest()
    assert dataset_input.dataset.digest == manifest_digest[:32]
    assert json.loads(dataset_input.dataset.profile)["clips"] == 3
    # system metrics of the (one) node, from its first worker
    assert any(key.startswith("system/node0/cpu_utilization_percentage") for key in run.data.metrics)

    assert summary.registered is not None and summary.registered.is_champion
    model = load_model(f"models:/{cfg.tracking.registered_model}@champion", summary.tracking_uri)
    from vsr_models import load_checkpoint

    trained = load_checkpoint(Path(summary.checkpoint_path) / "model.pt")
    for (name, loaded), expected in zip(
        model.state_dict().items(), trained.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(loaded, expected, msg=name)
    lr = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        sr = model(lr)
    assert sr.shape == (1, 2, 3, 256, 256) and torch.isfinite(sr).all()


def test_evaluate_job_scores_the_registered_champion_like_its_checkpoint(
    stopped_then_resumed, tiny_dataset, capsys
):
    from jobs.evaluate import main as evaluate_main
    from pipelines.data.manifest import open_dataset
    from pipelines.evaluation.scoring import evaluate
    from pipelines.inference.loading import load_model as load_any_model

    cfg, _, summary = stopped_then_resumed
    model_uri = f"models:/{cfg.tracking.registered_model}@champion"
    assert (
        evaluate_main(["--model", model_uri, "--data", str(tiny_dataset), "--mlflow-uri", cfg.tracking.uri])
        == 0
    )
    header, _, clip, _, mean = capsys.readouterr().out.strip().splitlines()
    assert "(RGB)" in header and clip.split()[1] == "8"  # the whole 8-frame validation clip
    direct = evaluate(load_any_model(summary.checkpoint_path), open_dataset(tiny_dataset))
    assert mean.split()[2:] == [
        f"{direct.bicubic.psnr:.2f}",
        "/",
        f"{direct.bicubic.ssim:.4f}",
        f"{direct.model.psnr:.2f}",
        "/",
        f"{direct.model.ssim:.4f}",
    ]


def test_killed_worker_is_recovered_from_the_last_checkpoint(tiny_dataset, tmp_path, ray_local):
    _pickle_this_module_by_value()
    marker = tmp_path / "killed"
    cfg = tiny_config(tiny_dataset, tmp_path, "recover", "run.max_failures=1")
    # Killed at 4: the validation report at 3 only returns once Ray Train's controller has taken the
    # checkpoint of iteration 2 (a worker's report queue holds one report), so that one is registered.
    summary = run_training(cfg, step_callback=KillOnceAt(4, str(marker)))

    assert marker.is_file()  # the worker really was killed at iteration 4 ...
    tracker = RunTracker.attach(summary.tracking_uri, summary.mlflow_run_id)
    assert tracker.metric_history("resumed_from_iteration") == [(2, 2.0)]  # ... replaced, resumed at 2
    assert [step for step, _ in tracker.metric_history("loss")] == [1, 2, 3, 4, 5, 6]  # re-done 3: once
    assert summary.iteration == cfg.train.total_iters == 6
    assert summary.registered is not None and summary.registered.version == "1"
    assert summary.registered.is_champion


def test_two_workers_on_two_nodes_keep_identical_weights_and_read_the_manifest_once(
    tiny_dataset, tmp_path, monkeypatch
):
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.common import storage

    ray.shutdown()  # leave the shared local cluster; the next test that needs one starts it again
    # 3 logical CPUs per node: one 2-CPU worker fits per node, leaving a CPU on each for Ray Data.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    cluster.add_node(num_cpus=3)
    reads = tmp_path / "manifest_reads.jsonl"
    reads.touch()
    monkeypatch.setenv(MANIFEST_READS_ENV, str(reads))
    monkeypatch.setattr(storage.Location, "read_bytes", storage.Location.read_bytes)  # undone after
    try:
        _pickle_this_module_by_value()  # before ray.init: the setup hook travels in the runtime env
        count_manifest_reads()
        ray.init(
            address=cluster.address,
            runtime_env={
                "worker_process_setup_hook": count_manifest_reads,
                "env_vars": {MANIFEST_READS_ENV: str(reads)},
            },
        )
        records = tmp_path / "weights"
        records.mkdir()
        cfg = tiny_config(
            tiny_dataset,
            tmp_path,
            "two_nodes",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=2",
            "train.total_iters=4",
            "train.val_every=2",  # two validations, each on both workers
            "train.checkpoint_every=4",
            "scaling.recipe_global_batch=1",  # the config's lr was set for one sequence per step ...
            "scaling.lr_rule=linear",  # ... so two workers train at twice it
        )
        summary = run_training(cfg, step_callback=RecordWeights(str(records)))
    finally:
        ray.shutdown()
        cluster.shutdown()

    rank0 = [line.split() for line in (records / "rank0.txt").read_text().splitlines()]
    rank1 = [line.split() for line in (records / "rank1.txt").read_text().splitlines()]
    assert [r[0] for r in rank0] == [r[0] for r in rank1] == ["1", "2", "3", "4"]
    assert [r[1] for r in rank0] == [r[1] for r in rank1]  # bit-identical weights after every step
    assert len({r[1] for r in rank0}) == 4  # and they did change every step (SPyNet unfrozen at 2)
    assert rank0[0][2] != rank1[0][2]  # the two workers ran on different nodes
    assert summary.iteration == 4 and summary.val_metrics["psnr"] > 0
    params = mlflow_client(summary.tracking_uri).get_run(summary.mlflow_run_id).data.params
    assert (params["global_batch"], float(params["effective_lr"])) == ("2", 2 * cfg.optim.lr)
    assert read_training_state(summary.checkpoint_path)["samples"] == 8  # 4 steps x 2 workers
    # the workers stepped with the scaled rate: lr after step 1 of the cosine from 2 x optim.lr
    schedule = cfg.schedule
    stepped = CosineRestartFactor(
        2 * cfg.optim.lr, schedule.periods, schedule.restart_weights, schedule.eta_min
    )
    lr_history = RunTracker.attach(summary.tracking_uri, summary.mlflow_run_id).metric_history("lr")
    assert lr_history[0] == (1, pytest.approx(2 * cfg.optim.lr * stepped(1)))
    # The dataset is opened once, on the driver: the Ray Data plan, both workers' two validations and the
    # registered version's lineage all use what that one read gave (docs/data_format.md).
    assert [json.loads(line) for line in reads.read_text().splitlines()] == [f"pid {os.getpid()}"]
    counted = set(Path(f"{reads}.processes").read_text().split())
    assert {r[3] for r in rank0 + rank1} <= counted and len(
        {r[3] for r in rank0 + rank1}
    ) == 2  # workers counted
    assert len(RunTracker.attach(summary.tracking_uri, summary.mlflow_run_id).metric_history("val/psnr")) == 2


def test_the_best_checkpoint_is_kept_and_registered_when_a_later_validation_is_worse(tiny_dataset, tmp_path):
    _pickle_this_module_by_value()
    cfg = tiny_config(
        tiny_dataset, tmp_path, "best", "train.checkpoint_every=3", "run.num_to_keep=1", "run.max_failures=0"
    )
    summary = run_training(cfg, step_callback=WreckWeightsAt(4))

    tracker = RunTracker.attach(summary.tracking_uri, summary.mlflow_run_id)
    (_, psnr_3), (_, psnr_6) = tracker.metric_history("val/psnr")
    assert psnr_6 < psnr_3 - 1  # the wrecked weights validate worse
    assert (summary.iteration, summary.best_iteration) == (6, 3)
    assert summary.val_metrics["psnr"] == pytest.approx(psnr_3)
    # num_to_keep=1 keeps the best by val_psnr, and Ray always keeps the latest to resume from
    run_dir = Path(cfg.run.storage_path) / cfg.run.name
    assert sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()) == [
        "checkpoint_00000003",
        "checkpoint_00000006",
    ]
    assert Path(summary.best_checkpoint_path).name == "checkpoint_00000003"
    version = mlflow_client(summary.tracking_uri).get_model_version(
        cfg.tracking.registered_model, summary.registered.version
    )
    assert version.tags["iteration"] == "3" and float(version.tags["val_psnr"]) == pytest.approx(psnr_3)
    from vsr_models import load_checkpoint

    best = load_checkpoint(Path(summary.best_checkpoint_path) / "model.pt")
    registered = load_model(
        f"models:/{cfg.tracking.registered_model}/{summary.registered.version}", summary.tracking_uri
    )
    for loaded, expected in zip(registered.state_dict().values(), best.state_dict().values(), strict=True):
        torch.testing.assert_close(loaded, expected)
