"""Searches on Ray Tune: many training runs of one base config with drawn values, or many evaluations of
one trained network with drawn inference settings (``jobs/tune_ttvsr.py``, ``jobs/tune_vsrt.py``).

The search is a YAML file (``configs/search/*.yaml``, ``docs/tuning.md``) loaded into
:class:`SearchConfig`:

- ``base``: the training config every trial starts from (``configs/ttvsr_sample.yaml``);
  ``experiment``: a partial training config applied on top of it for every trial;
- ``search``: dotted training-config keys mapped to distributions, e.g.
  ``optim.lr: {loguniform: [1.0e-5, 1.0e-3]}`` (:mod:`pipelines.tuning.space`); a tied group, several
  keys separated by commas, draws them together (``model.num_frames, data.num_frames: {grid: [3, 5]}``);
- ``evaluate``: a model (``models:/ttvsr@champion``, a checkpoint): each trial then evaluates it on the
  base config's validation split with the drawn ``model.*`` settings (ones that keep the weights, such
  as ``model.key_frame_stride``) or ``val.*`` protocol keys, and nothing trains;
- ``num_samples``, ``metric`` (``val_psnr``, maximised), ``scheduler`` (ASHA or none),
  ``max_concurrent_trials`` (default: as many trials as the cluster holds, or can scale to:
  :mod:`pipelines.tuning.resources`), ``register_best`` and ``promote_champion``.

Every value a trial can draw is checked against the training config before anything starts
(:func:`pipelines.tuning.config.base_experiment`): a mistyped key, a wrong type, or a combination the
config refuses (a token size its token scales do not fit, a model frame count the data's differs from)
is one :class:`ConfigError` naming the key.

Training trials (:mod:`pipelines.tuning.trial`) follow the Train V2 pattern: the Tuner runs
:func:`run_trial`, a plain function that builds the trial's config and calls
:func:`pipelines.training.driver.run_training`, whose ``TorchTrainer`` is named after the trial id;
:class:`ValidationReportCallback` passes every validation up to Tune, and ASHA compares trials at
validations. Evaluation trials (:func:`run_evaluation_trial`)
call :func:`pipelines.evaluation.job.run_evaluation`, one Ray task each (a GPU when there is one).

The Tune experiment lives in ``<run.storage_path>/<name>/``, beside
:data:`pipelines.tuning.state.STATE_FILE`, which holds the search's id and what it was started with.
Running the same command again restores the experiment (``Tuner.restore``): finished trials are kept,
unfinished ones resume from their last checkpoint; running another search under a name in use is
refused. Tune's files are checked against the seal the last run left (:func:`pipelines.tuning.state.
verify_search`) before Tune reads them: a changed file, or a search killed before it could seal, is one
:class:`StateError` and nothing is unpickled. The MLflow parent run is found by the search's
id (tag :data:`SEARCH_ID_TAG`), never by its name, so a search never adopts another's parent run. Every
trial is a run nested under it (named after the trial id, tagged with its status: completed, stopped
early, errored). At the end the parent run gets the results table (CSV, Markdown) and plots
(:mod:`pipelines.tuning.results`); the best training trial is re-scored on the whole validation clips
and registered with the alias ``best-<name>``, and the ``champion`` alias moves to it only with
``promote_champion`` and only if it beats the champion (:func:`pipelines.tracking.promote_champion`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.common.cli import flag_overrides, job_parser, run_job
from pipelines.common.config import as_overrides, config_to_dict, dump_config, flatten, load_config
from pipelines.common.errors import ConfigError
from pipelines.common.ray_session import init_ray
from pipelines.data.manifest import check_dataset
from pipelines.evaluation.job import EvaluationConfig, run_evaluation
from pipelines.tracking import (
    RegisteredVersion,
    RunTracker,
    find_run,
    promote_champion,
    resolve_tracking_uri,
    set_alias,
)
from pipelines.training.driver import check_paths_reach_nodes, register_result
from pipelines.training.experiment import Experiment, resolve_paths
from pipelines.tuning.config import SearchConfig, base_experiment
from pipelines.tuning.resources import (
    autoscaler_maximum,
    concurrent_trials,
    largest,
    parse_resources,
    training_trial_resources,
)
from pipelines.tuning.results import (
    COMPLETED,
    ERRORED,
    SCORES,
    STOPPED_EARLY,
    TrialSummary,
    score,
    text_table,
    write_reports,
)
from pipelines.tuning.state import (
    SEAL_TAG,
    open_search,
    seal_search,
    search_fingerprint,
    verify_search,
    write_search_state,
)
from pipelines.tuning.trial import (
    LATEST_CHECKPOINT_KEY,
    SEARCH_ID_TAG,
    TUNE_EXPERIMENT_TAG,
    TrialPlan,
    run_evaluation_trial,
    run_trial,
    validation_evaluation,
)

logger = logging.getLogger("ray_vsr.tune")

TRIAL_STATUS_TAG = "tune_status"  # completed | stopped early | errored
SEARCH_PARENT_TAG = "tune_search_parent"  # on the parent run only: the search id (the trials have it too)
REGISTERED_TAG = "best_registered_version"  # on the parent run: the version registered as best-<name>
TRAIN_RUNS_DIR = "train"  # the trials' Train runs: <storage_path>/<search name>/train/<trial id>/
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes reserved for each trial's driver function (it holds no CPU)


# -- the search ------------------------------------------------------------------------------------------


def trial_resources(cfg: Experiment) -> dict[str, float]:
    """What one training trial holds: its Train workers, plus a CPU for its Ray Data tasks."""
    scaling = cfg.scaling
    return training_trial_resources(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu)


def evaluation_resources(device: str, cluster: Mapping[str, float]) -> dict[str, float]:
    """What one evaluation trial's Ray task holds: a GPU (``cuda``, or ``auto`` with GPUs), else a CPU."""
    on_gpu = device.startswith("cuda") or (device == "auto" and cluster.get("GPU", 0) >= 1)
    return {"GPU": 1.0} if on_gpu else {"CPU": 1.0}


def total_trials(spec: SearchConfig) -> int:
    """How many trials the search runs: ``num_samples`` for every point of the grid entries."""
    space = spec.space().values()
    return spec.num_samples * math.prod(len(d.args) for d in space if d.kind == "grid")


def asha_scheduler(spec: SearchConfig, base: Experiment) -> Any:
    """ASHA on the training iteration: rungs at multiples of ``val_every``, up to ``total_iters``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "none" or spec.evaluate is not None:  # an evaluation reports once
        return FIFOScheduler()
    grace = spec.scheduler.grace_validations * base.train.val_every
    if grace >= base.train.total_iters:
        raise ConfigError(
            f"scheduler.grace_validations ({spec.scheduler.grace_validations}) x train.val_every "
            f"({base.train.val_every}) leaves no room to stop a run of train.total_iters "
            f"({base.train.total_iters}); lower it or use scheduler.name=none"
        )
    return ASHAScheduler(
        time_attr="iteration",
        grace_period=grace,
        # Rungs at grace x reduction_factor^k below max_t; ASHA would also place one at max_t itself when
        # total_iters / grace is a power of the factor. A trial at total_iters is finishing on its own:
        # stopping it there would cut its MLflow bookkeeping, so the last rung stays below total_iters.
        max_t=base.train.total_iters - 1,
        reduction_factor=spec.scheduler.reduction_factor,
        stop_last_trials=False,
    )


@dataclass(frozen=True)
class SearchSummary:
    """What :func:`run_search` produced; :meth:`describe` is what ``jobs/tune_<arch>.py`` prints."""

    name: str
    metric: str
    trials: list[TrialSummary]
    best: TrialSummary
    best_config: Experiment  # the base config with the best trial's values
    parent_run_id: str
    tracking_uri: str
    registered: RegisteredVersion | None  # the best trial's version (alias best-<name>)
    champion: RegisteredVersion | None = None  # with promote_champion: the champion comparison
    reports: tuple[str, ...] = ()  # artifact paths on the parent run: results table and plots
    resumed: bool = False  # restored from an interrupted (or finished) run of the same search

    def table(self) -> str:
        return text_table(self.trials, self.metric)

    def describe(self) -> str:
        kind = "resumed, " if self.resumed else ""
        lines = [
            f"Tune search {self.name} ({kind}{len(self.trials)} trials), the highest {self.metric} wins:",
            self.table(),
            "",
            f"best trial {self.best.trial_id}: {self.metric} {score(self.best.last)}, "
            f"MLflow run {self.best.mlflow_run_id} (parent {self.parent_run_id} in {self.tracking_uri})",
            f"parent run artifacts: {', '.join(self.reports)}",
        ]
        if self.registered is not None:
            lines.append(self.registered.describe())
        if self.champion is not None:
            lines.append(self.champion.describe())
        lines += ["", "best config:", dump_config(self.best_config)]
        return "\n".join(lines)


def _pinned_model(model: str, tracking_uri: str) -> str:
    """``models:/ttvsr@champion`` -> ``models:/ttvsr/<its version>``: every trial scores the same weights,
    even if the alias moves meanwhile; a path becomes absolute (trials run in other folders)."""
    from pipelines.evaluation.job import resolve_source

    return resolve_source(EvaluationConfig(model=model, tracking_uri=tracking_uri), tracking_uri).spec


@contextlib.contextmanager
def _sigterm_stops_gracefully() -> Iterator[None]:
    """SIGTERM (``ray job stop``, a node being drained) stops the search as Ctrl-C does: Tune ends the
    trials and saves the experiment state, and the same command resumes it. Tune's handler for SIGUSR1
    does that; SIGTERM is passed on to it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_parent_run(
    spec: SearchConfig, base: Experiment, tracking_uri: str, arch: str, search_id: str
) -> RunTracker:
    """The search's MLflow parent run (found by the search id), with the space as params and the YAML.

    Found by :data:`SEARCH_PARENT_TAG`, which only the parent carries: the trial runs carry the search id
    too, and the newest of them is not the parent (whose tags hold the seal a resume checks)."""
    parent = RunTracker.start_tagged(
        tracking_uri,
        base.tracking.experiment,
        spec.name,
        SEARCH_PARENT_TAG,
        search_id,
        tags={TUNE_EXPERIMENT_TAG: spec.name, "arch": arch, SEARCH_ID_TAG: search_id},
    )
    settings = {"num_samples": spec.num_samples, "metric": spec.metric, "scheduler": spec.scheduler.name}
    if spec.evaluate is not None:
        settings |= {"evaluate": spec.evaluate, "scheduler": "none"}
    parent.log_params({f"search.{key}": {d.kind: d.args} for key, d in spec.space().items()} | settings)
    parent.log_dict(config_to_dict(spec), "search.yaml")
    return parent


def run_search(spec: SearchConfig, cls: type[Experiment]) -> SearchSummary:
    """Run (or resume) the search ``spec`` over the training config class ``cls``: module docstring."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = resolve_paths(base_experiment(spec, cls))
    splits = (
        [base.data.val_split] if spec.evaluate is not None else [base.data.train_split, base.data.val_split]
    )
    if base.data.verify:
        init_ray(base.run.address)  # the checksums are computed in Ray tasks, where the data is
    check_dataset(base.data.path, splits, verify=base.data.verify)  # before any trial starts
    init_ray(base.run.address)
    check_paths_reach_nodes(base)  # every node sees the storage and data, before any state is written
    tracking_uri = resolve_tracking_uri(base.tracking.uri)
    experiment_path = f"{base.run.storage_path.rstrip('/')}/{spec.name}"
    state, restoring = open_search(experiment_path, search_fingerprint(spec, base))
    evaluate = None
    if spec.evaluate is not None:  # pinned when the search started: a resumed one scores the same version
        evaluate = state.get("pinned") or _pinned_model(spec.evaluate, tracking_uri)
        write_search_state(experiment_path, state | {"pinned": evaluate})
    # Trials run in Tune actors whose working folder is their trial folder: every path is absolute.
    # Tune keeps <storage>/<name>/<trial id>/; the trials' Train runs go to <storage>/<name>/train/<trial id>/.
    trial_base = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, verify=False),  # checked once, above
        run=dataclasses.replace(base.run, storage_path=f"{experiment_path}/{TRAIN_RUNS_DIR}"),
        tracking=dataclasses.replace(base.tracking, uri=tracking_uri),
    )
    parent = _start_parent_run(spec, base, tracking_uri, cls.arch, state["search_id"])
    if restoring:  # before Tune reads anything: Tuner.restore unpickles the storage (docs/security.md)
        verify_search(experiment_path, state, parent.tags().get(SEAL_TAG))
    plan = TrialPlan(
        cls.arch,
        as_overrides(flatten(trial_base)),
        spec.name,
        parent.run_id,
        spec.metric,
        state["search_id"],
        evaluate,
        spec.device,
    )

    cluster = largest(ray.cluster_resources(), spec.max_cluster_resources)
    per_trial = trial_resources(base) if evaluate is None else evaluation_resources(spec.device, cluster)
    max_concurrent = spec.max_concurrent_trials or concurrent_trials(per_trial, cluster)
    logger.info(
        "Tune search %s: %d samples, at most %d trials at once%s",
        spec.name, spec.num_samples, max_concurrent, " (resumed)" if restoring else "",
    )  # fmt: skip
    # The trial function only waits on its Train run or evaluation task, which reserve their own
    # resources; Tune needs some resource per trial, and a CPU here would starve them on a 2-core machine.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial if evaluate is None else run_evaluation_trial, plan=plan),
        {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    if restoring:
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: d.to_tune() for key, d in spec.space().items()},
            tune_config=tune.TuneConfig(
                metric=spec.metric,
                mode="max",
                num_samples=spec.num_samples,
                scheduler=asha_scheduler(spec, base),
                search_alg=BasicVariantGenerator(max_concurrent=max_concurrent, random_state=spec.seed),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(name=spec.name, storage_path=base.run.storage_path),
        )
    try:
        try:
            with _sigterm_stops_gracefully():
                results = tuner.fit()
        finally:  # what fit left, Ctrl-C, SIGTERM or an error included, is what the next run may restore
            state, seal = seal_search(experiment_path, state)
            parent.set_tags({SEAL_TAG: seal})
        if _interrupted(experiment_path, spec):  # Ctrl-C / SIGTERM: Tune saved the state to resume from
            raise KeyboardInterrupt
        trials = [_summarise_trial(result, plan, spec) for result in results]
    except KeyboardInterrupt:
        parent.finish("KILLED")
        raise
    except BaseException:
        parent.finish("FAILED")
        raise
    _record_statuses(trials, tracking_uri)
    finished = [t for t in trials if t.status != ERRORED and math.isfinite(t.last)]
    if not finished:
        parent.finish("FAILED")
        errors = (
            "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error) or "no validation was reported"
        )
        raise RuntimeError(f"every trial of Tune search {spec.name} failed ({errors})")
    best = max(finished, key=lambda t: t.last)
    best_trial_cfg = plan.experiment(best.params, best.trial_id)
    registered = champion = None
    if evaluate is None and spec.register_best:
        registered, champion = _register_best(spec, best, best_trial_cfg, parent)

    parent.log_metrics({f"best_{spec.metric}": best.last}, step=0)
    parent.set_tags({"best_trial_id": best.trial_id, "best_mlflow_run_id": best.mlflow_run_id})
    parent.log_dict({"trials": [dataclasses.asdict(t) for t in trials]}, "trials.json")
    best_config = dataclasses.replace(best_trial_cfg, run=base.run, tracking=base.tracking)
    parent.log_dict(config_to_dict(best_config), "best_config.yaml")
    reports = _log_reports(parent, trials, spec.metric)
    parent.finish("FINISHED")
    return SearchSummary(
        spec.name,
        spec.metric,
        trials,
        best,
        best_config,
        parent.run_id,
        tracking_uri,
        registered,
        champion,
        reports,
        restoring,
    )


def _interrupted(experiment_path: str, spec: SearchConfig) -> bool:
    """Whether the search stopped before every trial ended. Read from the experiment state Tune saved:
    after an interruption Tune also ends the trials that were running, so the ones ``fit`` returns look
    ended; the saved state still has them running, and ``Tuner.restore`` resumes them."""
    from ray.tune import ExperimentAnalysis

    saved = ExperimentAnalysis(experiment_path).trials
    ended = [t for t in saved if t.status in ("TERMINATED", "ERROR")]
    return len(ended) < len(saved) or len(saved) < total_trials(spec)


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _summarise_trial(result: Any, plan: TrialPlan, spec: SearchConfig) -> TrialSummary:
    trial_id = PurePosixPath(result.path).name  # see _trial_dirname
    params = {key: value for key, value in result.config.items() if key in spec.search}
    cfg = plan.experiment(params, trial_id)
    history = result.metrics_dataframe
    rows = [] if history is None or spec.metric not in history else history.dropna(subset=[spec.metric])
    values = [] if len(rows) == 0 else rows[spec.metric].tolist()
    metrics = result.metrics or {}
    if plan.evaluate is not None:
        iteration, steps = None, []
        status = ERRORED if result.error is not None else COMPLETED
    else:
        iteration = int(metrics.get("iteration", 0))
        steps = [] if len(rows) == 0 else [int(i) for i in rows["iteration"].tolist()]
        if result.error is not None:
            status = ERRORED
        else:
            status = COMPLETED if iteration == cfg.train.total_iters else STOPPED_EARLY
    latest = metrics.get(LATEST_CHECKPOINT_KEY)
    return TrialSummary(
        trial_id=trial_id,
        params=params,
        status=status,
        iteration=iteration,
        last=float(values[-1]) if values else math.nan,
        best=float(max(values)) if values else math.nan,
        mlflow_run_id=find_run(cfg.tracking.uri, cfg.tracking.experiment, trial_id),
        # URI, not the filesystem path Train reported: the storage may be s3://, gs://, ...
        checkpoint=f"{cfg.run.storage_path}/{trial_id}/{PurePosixPath(latest).name}" if latest else None,
        scores={s: float(metrics[s]) for s in SCORES if s in metrics},
        history=list(zip(steps, values, strict=False)),
        error=None if result.error is None else str(result.error).strip().splitlines()[-1],
    )


def _record_statuses(trials: list[TrialSummary], tracking_uri: str) -> None:
    """Tag every trial run with its status; close the runs of trials stopped early (FINISHED: the
    scheduler ended a trial that ran as it should; ``tune_status`` says it stopped early) or errored
    (FAILED)."""
    for trial in trials:
        if not trial.mlflow_run_id:
            continue
        tracker = RunTracker.attach(tracking_uri, trial.mlflow_run_id)
        tracker.set_tags({TRIAL_STATUS_TAG: trial.status})
        if trial.status == ERRORED:
            tracker.finish("FAILED")
        elif trial.status == STOPPED_EARLY or tracker.status() == "RUNNING":
            # RUNNING: its actor ended with its last result, before closing it
            tracker.finish("FINISHED")


def _log_reports(parent: RunTracker, trials: list[TrialSummary], metric: str) -> tuple[str, ...]:
    """The results table and plots, as artifacts of the parent run; their artifact paths."""
    with tempfile.TemporaryDirectory() as folder:
        written = write_reports(trials, metric, Path(folder))
        for path in written:
            parent.log_artifact(path, None if path.parent == Path(folder) else path.parent.name)
        return tuple(str(path.relative_to(folder)) for path in written)


def _register_best(
    spec: SearchConfig, best: TrialSummary, cfg: Experiment, parent: RunTracker
) -> tuple[RegisteredVersion | None, RegisteredVersion | None]:
    """Re-score the best trial's final network on the whole validation clips, register it with the alias
    ``best-<name>`` and, with ``promote_champion``, offer it to the champion alias.

    Trials validate on capped clips (``val.max_clips`` / ``val.max_frames``) to stay cheap; the
    registered version carries the full score, measured as ``jobs/evaluate.py`` measures it (a Ray task,
    on a GPU when there is one), so the ``champion`` alias compares it with training runs validated on
    the same dataset and protocol. The trial's own score is kept as the ``trial_val_psnr`` tag. A search
    run again after it finished registers nothing new (the parent's :data:`REGISTERED_TAG`).
    """
    import ray.train

    if best.checkpoint is None or best.mlflow_run_id is None:
        logger.warning("best trial %s left no checkpoint: nothing to register", best.trial_id)
        return None, None
    if parent.tags().get(REGISTERED_TAG):
        logger.info("search %s registered %s before", spec.name, parent.tags()[REGISTERED_TAG])
        return None, None
    full = dataclasses.replace(
        cfg,
        val=dataclasses.replace(cfg.val, max_clips=None, max_frames=None),
        tracking=dataclasses.replace(cfg.tracking, champion_alias=spec.best_alias),
    )
    rescored = run_evaluation(validation_evaluation(full, best.checkpoint, max_clips=None)).metrics()
    logger.info(
        "best trial %s: %s %.4g on capped validation, PSNR %.2f dB on the whole clips",
        best.trial_id, spec.metric, best.last, rescored["psnr"],
    )  # fmt: skip
    tracker = RunTracker.attach(cfg.tracking.uri, best.mlflow_run_id)
    tracker.set_tags({"trial_val_psnr": best.last})
    summary = register_result(full, tracker, ray.train.Checkpoint(best.checkpoint), val_metrics=rescored)
    registered = summary.registered
    if registered is None:  # registered when an interrupted run of this search got that far
        return None, None
    name, version = registered.name, registered.version
    set_alias(cfg.tracking.uri, name, spec.best_alias, version)  # this search's own alias: always its best
    registered = RegisteredVersion(name, version, True, version, rescored["psnr"], spec.best_alias)
    parent.set_tags({REGISTERED_TAG: f"{name}/{version}"})
    champion = None
    if spec.promote_champion:
        champion = promote_champion(
            cfg.tracking.uri,
            name,
            version,
            rescored["psnr"],
            cfg.tracking.champion_alias,
            bicubic_psnr=rescored["bicubic_psnr"],
            force=cfg.tracking.force_champion,
        )
    return registered, champion


# -- command line ----------------------------------------------------------------------------------------


def search_from_args(args) -> SearchConfig:
    """Load ``--config`` with ``--set`` overrides, then the shared flags on top."""
    maximum = None
    if args.cluster_config is not None:
        maximum = autoscaler_maximum(args.cluster_config)
    if args.max_cluster_resources is not None:
        maximum = parse_resources(args.max_cluster_resources)
    flags = {
        "num_samples": args.num_samples,
        "evaluate": args.evaluate,
        "promote_champion": True if args.champion else None,
        "max_cluster_resources": maximum,
        "experiment.run.address": args.address,
        "experiment.tracking.uri": args.mlflow_uri,
        "experiment.data.verify": args.verify_data,
    }
    return load_config(SearchConfig, args.config, [*args.overrides, *flag_overrides(flags)])


def search_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of ``jobs/tune_<arch>.py``: ``--config`` / ``--set`` and the flags below."""
    parser = job_parser(description, set_example="experiment.optim.lr=1e-4")
    parser.add_argument("--num-samples", type=int, help="trials to draw (num_samples)")
    parser.add_argument(
        "--evaluate",
        metavar="MODEL",
        help="evaluate MODEL (models:/ttvsr@champion, a checkpoint) in every trial instead of training",
    )
    parser.add_argument(
        "--champion",
        action="store_true",
        help="move the champion alias to the best trial if it beats the champion (promote_champion)",
    )
    parser.add_argument(
        "--max-cluster-resources",
        metavar="NAME=N,...",
        help="the most the autoscaler can add up to, e.g. GPU=8,CPU=96: sizes how many trials run at once",
    )
    parser.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="read that maximum from a ray_cluster.yaml or KubeRay RayCluster / RayJob manifest",
    )
    parser.add_argument(
        "--address", help="Ray cluster address (experiment.run.address); default: a local Ray"
    )
    parser.add_argument(
        "--verify-data",
        action="store_true",
        default=None,
        help="check every shard's sha256 once before the first trial (experiment.data.verify)",
    )
    parser.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (experiment.tracking.uri); default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    return parser


def main(cls: type[Experiment], argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/tune_<arch>.py``: parse, load the search, run it, print the results."""
    parser = search_parser(description)
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error(f"--config is required (e.g. configs/search/{cls.arch}_*_sample.yaml)")
    return run_job(lambda: print(run_search(search_from_args(args), cls).describe()))
