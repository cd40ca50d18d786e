"""A storage URI whose filesystem package is not installed is one line naming the package, before Ray
starts, in every job that takes one (pyarrow serves s3:// and gs:// itself; fsspec's other schemes
need their own package: az:// needs adlfs)."""

from __future__ import annotations

import importlib.util

import pytest

from jobs.evaluate import main as evaluate_main
from jobs.prepare_data import main as prepare_main
from jobs.train_ttvsr import main as train_main
from jobs.tune_ttvsr import main as tune_main

TEST_CONFIG = "configs/ttvsr_test.yaml"

# The job, its arguments ({tmp}: this test's folder) and the URI it must name.
JOBS = {
    "train data, verified": (
        train_main,
        ["--config", TEST_CONFIG, "--storage-path", "{tmp}/runs", "--set", "data.path=az://box/reds"]
        + ["--verify-data", "--mlflow-uri", "sqlite:///{tmp}/m.db"],
        "az://box/reds",
    ),
    "train storage": (
        train_main,
        ["--config", TEST_CONFIG, "--storage-path", "az://box/runs", "--mlflow-uri", "sqlite:///{tmp}/m.db"],
        "az://box/runs",
    ),
    "search storage": (
        tune_main,
        ["--config", "configs/search/ttvsr_token_scales_sample.yaml", "--mlflow-uri", "sqlite:///{tmp}/m.db"]
        + ["--set", "experiment.run.storage_path=az://box/runs"],
        "az://box/runs",
    ),
    "search data": (
        tune_main,
        ["--config", "configs/search/ttvsr_token_scales_sample.yaml", "--mlflow-uri", "sqlite:///{tmp}/m.db"]
        + ["--set", "experiment.data.path=az://box/reds", "--set", "experiment.run.storage_path={tmp}/runs"],
        "az://box/reds",
    ),
    "prepare output": (
        prepare_main,
        ["--output", "az://box/prepared", "--num-cpus", "1"],
        "az://box/prepared",
    ),
    "evaluate data, verified": (
        evaluate_main,
        ["--model", "{tmp}/model.pt", "--data", "az://box/reds", "--verify-data", "--no-mlflow"],
        "az://box/reds",
    ),
}


@pytest.mark.parametrize("job", list(JOBS))
def test_a_uri_without_its_filesystem_package_is_one_line_naming_it_before_ray_starts(job, tmp_path, capsys):
    import ray

    if importlib.util.find_spec("adlfs") is not None:
        pytest.skip("adlfs is installed here: az:// has its filesystem")
    ray.shutdown()  # so that "before Ray starts" is observable; the next test needing Ray starts it again
    run, argv, uri = JOBS[job]
    assert run([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {uri}: az:// needs a filesystem package"), err
    assert "pip install adlfs" in err
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()
