"""Searches on Ray Tune: many training runs of one base config with drawn values, or many evaluations of
one trained network with drawn inference settings: :func:`run_search` (``jobs/tune_ttvsr.py``,
``jobs/tune_vsrt.py``, which differ by the model family they give the search, ``arch``).

The search is a YAML file (``configs/search/*.yaml``, ``docs/tuning.md``) loaded into
:class:`~pipelines.tuning.config.SearchConfig`:

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
:func:`~pipelines.tuning.trial.run_trial`, a plain function that builds the trial's config and calls
:func:`pipelines.training.run.run_training`, whose ``TorchTrainer`` is named after the trial id;
:class:`~pipelines.tuning.trial.ValidationReportCallback` passes every validation up to Tune, and ASHA compares trials at
validations. Evaluation trials (:func:`~pipelines.tuning.trial.run_evaluation_trial`)
call :func:`pipelines.evaluation.run.run_evaluation`, one Ray task each (a GPU when there is one).

The Tune experiment lives in ``<run.storage_path>/<name>/``, beside
:data:`pipelines.tuning.state.STATE_FILE`, which holds the search's id and what it was started with.
Running the same command again restores the experiment (``Tuner.restore``): finished trials are kept,
unfinished ones resume from their last checkpoint; running another search under a name in use is
refused. Tune's files are checked against the seal the last run left (:func:`pipelines.tuning.state.
verify_search`) before Tune reads them: a changed file, or a search killed before it could seal, is one
:class:`StateError` and nothing is unpickled. The MLflow parent run is found by the search's
id (tag :data:`~pipelines.tracking.tuning.SEARCH_ID_TAG`), never by its name, so a search never adopts another's parent run. Every
trial is a run nested under it (named after the trial id, tagged with its status: completed, stopped
early, errored). At the end the parent run (:mod:`pipelines.tracking.tuning`) gets the results table (CSV, Markdown) and plots
(:mod:`pipelines.tuning.results`); the best training trial is re-scored on the whole validation clips
and registered with the alias ``best-<name>``, and the ``champion`` alias moves to it only with
``promote_champion`` and only if it beats the champion (:func:`pipelines.tracking.promote_champion`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from pipelines.common.config import config_to_dict, dump_config
from pipelines.common.errors import ConfigError
from pipelines.common.ray_session import init_ray
from pipelines.common.storage import check_storage_uri
from pipelines.data.manifest import PreparedDataset, open_dataset
from pipelines.tracking import RegisteredVersion, RunTracker, find_run, resolve_tracking_uri
from pipelines.tracking.tuning import (
    COMPLETED,
    ERRORED,
    STOPPED_EARLY,
    log_reports,
    record_statuses,
    start_parent_run,
)
from pipelines.training.config import Experiment, resolve_paths
from pipelines.training.run import check_paths_reach_nodes
from pipelines.tuning.best import register_best
from pipelines.tuning.config import SearchConfig, base_experiment
from pipelines.tuning.resources import concurrent_trials, evaluation_resources, largest, trial_resources
from pipelines.tuning.results import SCORES, TrialSummary, score, text_table, write_reports
from pipelines.tuning.state import (
    SEAL_TAG,
    open_search,
    seal_search,
    search_fingerprint,
    verify_search,
    write_search_state,
)
from pipelines.tuning.trial import LATEST_CHECKPOINT_KEY, TrialPlan, run_evaluation_trial, run_trial

logger = logging.getLogger("ray_vsr.tune")

TRAIN_RUNS_DIR = "train"  # the trials' Train runs: <storage_path>/<search name>/train/<trial id>/
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes reserved for each trial's driver function (it holds no CPU)


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


def run_search(spec: SearchConfig) -> SearchSummary:
    """Run (or resume) the search ``spec``: module docstring."""
    base = resolve_paths(base_experiment(spec))
    dataset = _check_before_trials(spec, base)
    tracking_uri = resolve_tracking_uri(base.tracking.uri)
    experiment_path = f"{base.run.storage_path.rstrip('/')}/{spec.name}"
    state, restoring = open_search(experiment_path, search_fingerprint(spec, base))
    evaluate = None
    if spec.evaluate is not None:  # pinned when the search started: a resumed one scores the same version
        evaluate = state.get("pinned") or _pinned_model(spec.evaluate, tracking_uri)
        write_search_state(experiment_path, state | {"pinned": evaluate})
    parent = start_parent_run(spec, base, tracking_uri, state["search_id"])
    if restoring:  # before Tune reads anything: Tuner.restore unpickles the storage (docs/security.md)
        verify_search(experiment_path, state, parent.tags().get(SEAL_TAG))
    plan = TrialPlan(
        _trial_base(base, experiment_path, tracking_uri),
        spec.name,
        parent.run_id,
        spec.metric,
        state["search_id"],
        evaluate,
        spec.device,
    )
    tuner = _tuner(spec, base, plan, experiment_path, restoring)
    try:
        try:
            with _sigterm_stops_gracefully():
                results = tuner.fit()
        finally:  # what fit left, Ctrl-C, SIGTERM or an error included, is what the next run may restore
            _, seal = seal_search(experiment_path, state)
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
    record_statuses(trials, tracking_uri)
    return _conclude(spec, base, plan, trials, parent, restoring, dataset)


def _check_before_trials(spec: SearchConfig, base: Experiment) -> PreparedDataset:
    """The dataset (and its checksums with ``data.verify``) and the paths every node must see, checked
    before any state is written; Ray is started here. Returns the dataset as opened (the lineage of the
    version the search registers)."""
    for where in (base.data.path, base.run.storage_path):  # a missing filesystem package: before Ray starts
        check_storage_uri(where)
    splits = (
        [base.data.val_split] if spec.evaluate is not None else [base.data.train_split, base.data.val_split]
    )
    if base.data.verify:
        init_ray(base.run.address)  # the checksums are computed in Ray tasks, where the data is
    dataset = open_dataset(base.data.path, splits=splits, verify=base.data.verify)  # before any trial starts
    init_ray(base.run.address)
    check_paths_reach_nodes(base)  # every node sees the storage and data, before any state is written
    return dataset


def _trial_base(base: Experiment, experiment_path: str, tracking_uri: str) -> Experiment:
    """Every trial's config before its drawn values. Trials run in Tune actors whose working folder is
    their trial folder: every path is absolute. Tune keeps <storage>/<name>/<trial id>/; the trials'
    Train runs go to <storage>/<name>/train/<trial id>/."""
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, verify=False),  # checked once, before the trials
        run=dataclasses.replace(base.run, storage_path=f"{experiment_path}/{TRAIN_RUNS_DIR}"),
        tracking=dataclasses.replace(base.tracking, uri=tracking_uri),
    )


def _tuner(
    spec: SearchConfig, base: Experiment, plan: TrialPlan, experiment_path: str, restoring: bool
) -> Any:
    """The Tuner of the search (restored from ``experiment_path`` when ``restoring``), as many trials at
    once as the cluster holds (:mod:`pipelines.tuning.resources`)."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cluster = largest(ray.cluster_resources(), spec.max_cluster_resources)
    evaluation = plan.evaluate is not None
    per_trial = evaluation_resources(spec.device, cluster) if evaluation else trial_resources(base)
    max_concurrent = spec.max_concurrent_trials or concurrent_trials(per_trial, cluster)
    logger.info(
        "Tune search %s: %d samples, at most %d trials at once%s",
        spec.name, spec.num_samples, max_concurrent, " (resumed)" if restoring else "",
    )  # fmt: skip
    # The trial function only waits on its Train run or evaluation task, which reserve their own
    # resources; Tune needs some resource per trial, and a CPU here would starve them on a 2-core machine.
    trainable = tune.with_resources(
        tune.with_parameters(run_evaluation_trial if evaluation else run_trial, plan=plan),
        {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    if restoring:
        return tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True)
    return tune.Tuner(
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


def _conclude(
    spec: SearchConfig,
    base: Experiment,
    plan: TrialPlan,
    trials: list[TrialSummary],
    parent: RunTracker,
    restoring: bool,
    dataset: PreparedDataset,
) -> SearchSummary:
    """The best trial (registered as ``best-<name>`` for a training search), the parent run's results."""
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
    if plan.evaluate is None and spec.register_best:
        registered, champion = register_best(spec, best, best_trial_cfg, parent, dataset)

    parent.log_metrics({f"best_{spec.metric}": best.last}, step=0)
    parent.set_tags({"best_trial_id": best.trial_id, "best_mlflow_run_id": best.mlflow_run_id})
    parent.log_dict({"trials": [dataclasses.asdict(t) for t in trials]}, "trials.json")
    best_config = dataclasses.replace(best_trial_cfg, run=base.run, tracking=base.tracking)
    parent.log_dict(config_to_dict(best_config), "best_config.yaml")
    reports = log_reports(parent, lambda folder: write_reports(trials, spec.metric, folder))
    parent.finish("FINISHED")
    return SearchSummary(
        spec.name,
        spec.metric,
        trials,
        best,
        best_config,
        parent.run_id,
        plan.base.tracking.uri,
        registered,
        champion,
        reports,
        restoring,
    )


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


def _pinned_model(model: str, tracking_uri: str) -> str:
    """``models:/ttvsr@champion`` -> ``models:/ttvsr/<its version>``: every trial scores the same weights,
    even if the alias moves meanwhile; a path becomes absolute (trials run in other folders)."""
    from pipelines.evaluation.run import resolve_source
    from pipelines.inference.loading import ModelRef

    return resolve_source(ModelRef(model, tracking_uri=tracking_uri)).ref.spec


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


def _interrupted(experiment_path: str, spec: SearchConfig) -> bool:
    """Whether the search stopped before every trial ended. Read from the experiment state Tune saved:
    after an interruption Tune also ends the trials that were running, so the ones ``fit`` returns look
    ended; the saved state still has them running, and ``Tuner.restore`` resumes them."""
    from ray.tune import ExperimentAnalysis

    saved = ExperimentAnalysis(experiment_path).trials
    ended = [t for t in saved if t.status in ("TERMINATED", "ERROR")]
    return len(ended) < len(saved) or len(saved) < spec.total_trials()


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
