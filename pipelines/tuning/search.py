"""Hyperparameter search on Ray Tune: many training runs of one base config, each with sampled values.

The search is a YAML file (``configs/tune_ttvsr_sample.yaml``) loaded into :class:`SearchConfig`:

- ``base``: the training config every trial starts from (``configs/ttvsr_sample.yaml``);
  ``experiment``: a partial training config applied on top of it for every trial;
- ``search``: dotted training-config keys mapped to distributions, e.g.
  ``optim.lr: {loguniform: [1.0e-5, 1.0e-3]}`` (see :data:`DISTRIBUTIONS`);
- ``num_samples``, ``metric`` (``val_psnr``, maximised), ``scheduler`` (ASHA or none) and
  ``max_concurrent_trials`` (default: as many trials as the cluster's CPUs/GPUs hold at once).

Ray Train V2 runs inside Tune as the Ray docs recommend: the Tuner runs :func:`run_trial`, a plain
function that builds the trial's experiment config (base + sampled values as ``--set`` overrides) and
calls :func:`pipelines.training.driver.run_training`, which starts a ``TorchTrainer`` named after the trial id.
:class:`ValidationReportCallback` passes each validation from the Train run up to Tune.

Every trial is its own MLflow run (named after the trial id, tagged ``tune_experiment=<name>``) nested
under one parent run named after the search. At the end the best trial's final network is registered,
and the ``champion`` alias moves to it if it beats the current champion (:mod:`pipelines.tracking`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.common.cli import flag_overrides, job_parser, run_job
from pipelines.common.config import as_overrides, config_to_dict, dump_config, flatten, load_config
from pipelines.common.errors import ConfigError
from pipelines.common.ray_session import init_ray
from pipelines.data.manifest import check_dataset
from pipelines.tracking import RegisteredVersion, RunTracker, find_run, resolve_tracking_uri
from pipelines.training.driver import register_result, run_training
from pipelines.training.experiment import EXPERIMENTS, Experiment, resolve_paths
from pipelines.tuning.space import Distribution, parse_search_space

logger = logging.getLogger("ray_vsr.tune")

TUNE_EXPERIMENT_TAG = "tune_experiment"
TUNE_TRIAL_TAG = "tune_trial_id"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the trial runs under the search
LATEST_CHECKPOINT_KEY = "latest_checkpoint"  # Tune result key: the trial's newest checkpoint folder
TRAIN_RUNS_DIR = "train"  # the trials' Train runs: <storage_path>/<search name>/train/<trial id>/
DATA_CPUS_PER_TRIAL = 1  # CPUs left to each trial's Ray Data crop tasks when sizing concurrency
TRIAL_DRIVER_MEMORY = 256 * 2**20  # bytes reserved for each trial's driver function (it holds no CPU)


# -- the search config -----------------------------------------------------------------------------------


@dataclass
class SchedulerSection:
    """Early stopping of poor trials: ASHA (Li et al., 2020) or none (every trial runs to the end)."""

    name: Literal["asha", "none"] = "asha"
    grace_validations: int = 1  # validations every trial gets before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the trials at each rung

    def __post_init__(self) -> None:
        if self.grace_validations < 1:
            raise ValueError(f"scheduler.grace_validations must be at least 1, got {self.grace_validations}")
        if self.reduction_factor < 2:
            raise ValueError(f"scheduler.reduction_factor must be at least 2, got {self.reduction_factor}")


@dataclass
class SearchConfig:
    """A Tune search (``jobs/tune_ttvsr.py --config``); see the module docstring."""

    base: str  # the training config every trial starts from
    experiment: dict[str, Any] = field(default_factory=dict)  # partial training config for every trial
    search: dict[str, Any] = field(default_factory=dict)  # dotted key -> {distribution: args}
    name: str = "tune"  # Tune experiment: <run.storage_path>/<name>/, MLflow parent run <name>
    num_samples: int = 8  # trials (with grid entries: samples per grid point)
    metric: Literal["val_psnr", "val_ssim"] = "val_psnr"  # the validation metric to maximise
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs / GPUs hold at once
    seed: int | None = 0  # seeds the sampling, so a search draws the same values again
    register_best: bool = True  # register the best trial's network (champion alias if it is the best)

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(
                f"max_concurrent_trials must be at least 1 (or null), got {self.max_concurrent_trials}"
            )
        self.search = {key: {d.kind: d.args} for key, d in parse_search_space(self.search).items()}

    def space(self) -> dict[str, Distribution]:
        return parse_search_space(self.search)


def base_experiment(spec: SearchConfig, cls: type[Experiment]) -> Experiment:
    """The base config with the shared ``experiment`` changes; every searched value is checked against it.

    Each searched key is applied at its extremes (both bounds, every option), so a typo, a wrong type or
    a value the config rejects (``data.lr_patch`` not a multiple of ``model.token_size``) is a
    :class:`ConfigError` before any trial starts.
    """
    if not Path(spec.base).is_file():
        raise ConfigError(
            f"base: training config {spec.base} not found (the YAML every trial starts from, "
            "e.g. configs/ttvsr_sample.yaml; relative paths are from the current folder)"
        )
    shared = as_overrides(flatten(spec.experiment))
    try:
        base = load_config(cls, spec.base, shared)
    except ConfigError as err:
        raise ConfigError(f"experiment: {err}") from None
    base_overrides = as_overrides(flatten(base))
    for key, distribution in spec.space().items():
        for value in distribution.extremes():
            try:
                load_config(cls, None, [*base_overrides, *as_overrides({key: value})])
            except ConfigError as err:
                raise ConfigError(f"search.{key} = {value!r}: {err}") from None
    return base


# -- one trial -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPlan:
    """What every trial shares: the resolved base config as overrides, and where results go."""

    arch: str
    base_overrides: list[str]  # the whole base experiment as --set overrides (absolute paths)
    tune_experiment: str
    parent_run_id: str
    metric: str

    def experiment(self, sampled: Mapping[str, Any], trial_id: str) -> Experiment:
        """The trial's training config: base + sampled values, its Train run named after the trial."""
        overrides = [*self.base_overrides, *as_overrides(sampled), *as_overrides({"run.name": trial_id})]
        return load_config(EXPERIMENTS[self.arch], None, overrides)


class ValidationReportCallback(TuneReportCallback):
    """Passes the Train run's validations up to Tune, each with the newest checkpoint's folder.

    The training loop also reports the loss every ``log_every`` iterations; Tune rejects results
    without the searched metric, and ASHA should compare trials at validations only.
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric
        self.latest_checkpoint: str | None = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None:
            self.latest_checkpoint = checkpoint.path
        # rank 0's metrics, the ones the training loop logs; a checkpoint between validations has NaN
        if math.isfinite(metrics[0].get(self.metric, math.nan)):
            result = metrics[0] | {LATEST_CHECKPOINT_KEY: self.latest_checkpoint}
            super().after_report(run_context, [result, *metrics[1:]], checkpoint)


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """One Tune trial (runs in a Tune actor): train the base config with this trial's sampled values."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = plan.experiment(config, trial_id)
    # Created here so the tags are set from the start; run_training finds the run by its name.
    RunTracker.start(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        cfg.run.name,
        tags={
            "arch": cfg.arch,
            TUNE_EXPERIMENT_TAG: plan.tune_experiment,
            TUNE_TRIAL_TAG: trial_id,
            PARENT_RUN_TAG: plan.parent_run_id,
        },
    )
    run_training(cfg, callbacks=[ValidationReportCallback(plan.metric)], register=False)


# -- the search ------------------------------------------------------------------------------------------


def trial_resources(cfg: Experiment) -> dict[str, float]:
    """What one trial's Train run holds: its workers, plus a CPU for its Ray Data tasks."""
    workers = cfg.scaling.num_workers
    resources = {"CPU": workers * cfg.scaling.cpus_per_worker + DATA_CPUS_PER_TRIAL}
    if cfg.scaling.use_gpu:
        resources["GPU"] = float(workers)
    return resources


def concurrent_trials(per_trial: Mapping[str, float], cluster: Mapping[str, float]) -> int:
    """How many trials fit on the cluster at once (at least one).

    Each trial's driver function holds no resources (Train reserves its workers itself), so without
    this bound Tune would start every trial and leave all but a few waiting for workers.
    """
    fits = [math.floor(cluster.get(name, 0.0) / amount) for name, amount in per_trial.items() if amount > 0]
    return max(1, min(fits, default=1))


def asha_scheduler(spec: SearchConfig, base: Experiment) -> Any:
    """ASHA on the training iteration: rungs at multiples of ``val_every``, up to ``total_iters``."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "none":
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
        max_t=base.train.total_iters,
        reduction_factor=spec.scheduler.reduction_factor,
        # A trial at total_iters is finishing on its own; stopping it would cut its MLflow bookkeeping.
        stop_last_trials=False,
    )


@dataclass(frozen=True)
class TrialSummary:
    """One trial's outcome."""

    trial_id: str
    params: dict[str, Any]  # the sampled values
    status: str  # finished | stopped (by the scheduler) | error
    iteration: int  # last validated iteration
    last: float  # the metric at the trial's last validation (what its final network scores)
    best: float  # the best value over its validations
    mlflow_run_id: str | None
    checkpoint: str | None  # URI of its newest checkpoint folder
    error: str | None = None


@dataclass(frozen=True)
class SearchSummary:
    """What :func:`run_search` produced; :meth:`describe` is what ``jobs/tune_ttvsr.py`` prints."""

    name: str
    metric: str
    trials: list[TrialSummary]
    best: TrialSummary
    best_config: Experiment  # the base config with the best trial's values
    parent_run_id: str
    tracking_uri: str
    registered: RegisteredVersion | None

    def table(self) -> str:
        keys = sorted({key for trial in self.trials for key in trial.params})
        header = ["trial", "status", *keys, "iters", self.metric, f"best {self.metric}"]
        rows = [
            [
                t.trial_id,
                t.status,
                *(_fmt(t.params.get(k)) for k in keys),
                str(t.iteration),
                _fmt(t.last),
                _fmt(t.best),
            ]
            for t in self.trials
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            for row in [header, *rows]
        ]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def describe(self) -> str:
        lines = [
            f"Tune search {self.name}: {len(self.trials)} trials, best {self.metric} is the highest",
            self.table(),
            "",
            f"best trial {self.best.trial_id}: {self.metric} {_fmt(self.best.last)}, "
            f"MLflow run {self.best.mlflow_run_id} (parent {self.parent_run_id} in {self.tracking_uri})",
        ]
        if self.registered is not None:
            lines.append(self.registered.describe())
        lines += ["", "best config:", dump_config(self.best_config)]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _start_parent_run(spec: SearchConfig, base: Experiment, tracking_uri: str, arch: str) -> RunTracker:
    """The search's MLflow parent run, with the search space as params and the search YAML."""
    parent = RunTracker.start(
        tracking_uri, base.tracking.experiment, spec.name, tags={TUNE_EXPERIMENT_TAG: spec.name, "arch": arch}
    )
    parent.log_params(
        {f"search.{key}": {d.kind: d.args} for key, d in spec.space().items()}
        | {"num_samples": spec.num_samples, "metric": spec.metric, "scheduler": spec.scheduler.name}
    )
    parent.log_dict(config_to_dict(spec), "search.yaml")
    return parent


def run_search(spec: SearchConfig, cls: type[Experiment]) -> SearchSummary:
    """Run the search ``spec`` over the training config class ``cls``; see the module docstring."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = resolve_paths(base_experiment(spec, cls))
    check_dataset(base.data.path, [base.data.train_split, base.data.val_split])  # before any trial starts
    tracking_uri = resolve_tracking_uri(base.tracking.uri)
    # Trials run in Tune actors whose working folder is their trial folder: every path is absolute.
    # Tune keeps <storage>/<name>/<trial id>/; the trials' Train runs go to <storage>/<name>/train/<trial id>/.
    storage = f"{base.run.storage_path.rstrip('/')}/{spec.name}/{TRAIN_RUNS_DIR}"
    trial_base = dataclasses.replace(
        base,
        run=dataclasses.replace(base.run, storage_path=storage),
        tracking=dataclasses.replace(base.tracking, uri=tracking_uri),
    )
    space = spec.space()
    parent = _start_parent_run(spec, base, tracking_uri, cls.arch)
    plan = TrialPlan(cls.arch, as_overrides(flatten(trial_base)), spec.name, parent.run_id, spec.metric)

    init_ray(base.run.address)
    max_concurrent = spec.max_concurrent_trials or concurrent_trials(
        trial_resources(base), ray.cluster_resources()
    )
    logger.info(
        "Tune search %s: %d samples, at most %d trials at once", spec.name, spec.num_samples, max_concurrent
    )
    tuner = tune.Tuner(
        # The trial function only waits on its Train run, which reserves the workers' resources itself;
        # Tune needs some resource per trial, and a CPU here would starve Ray Data on a 2-core machine.
        tune.with_resources(
            tune.with_parameters(run_trial, plan=plan), {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}
        ),
        param_space={key: d.to_tune() for key, d in space.items()},
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
        results = tuner.fit()
        trials = [_summarise_trial(result, plan, spec) for result in results]
    except BaseException:
        parent.finish("FAILED")
        raise
    _close_stopped_runs(trials, tracking_uri)
    finished = [t for t in trials if t.status != "error" and math.isfinite(t.last)]
    if not finished:
        parent.finish("FAILED")
        errors = (
            "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error) or "no validation was reported"
        )
        raise RuntimeError(f"every trial of Tune search {spec.name} failed ({errors})")
    best = max(finished, key=lambda t: t.last)
    best_trial_cfg = plan.experiment(best.params, best.trial_id)
    registered = _register_best(best, best_trial_cfg) if spec.register_best else None

    parent.log_metrics({f"best_{spec.metric}": best.last}, step=0)
    parent.set_tags({"best_trial_id": best.trial_id, "best_mlflow_run_id": best.mlflow_run_id})
    parent.log_dict({"trials": [dataclasses.asdict(t) for t in trials]}, "trials.json")
    best_config = dataclasses.replace(best_trial_cfg, run=base.run, tracking=base.tracking)
    parent.log_dict(config_to_dict(best_config), "best_config.yaml")
    parent.finish("FINISHED")
    return SearchSummary(
        spec.name, spec.metric, trials, best, best_config, parent.run_id, tracking_uri, registered
    )


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _summarise_trial(result: Any, plan: TrialPlan, spec: SearchConfig) -> TrialSummary:
    trial_id = PurePosixPath(result.path).name  # see _trial_dirname
    params = dict(result.config)
    cfg = plan.experiment(params, trial_id)
    history = result.metrics_dataframe
    values = [] if history is None or spec.metric not in history else history[spec.metric].dropna().tolist()
    iteration = int(result.metrics.get("iteration", 0))
    if result.error is not None:
        status = "error"
    else:
        status = "finished" if iteration == cfg.train.total_iters else "stopped"
    latest = result.metrics.get(LATEST_CHECKPOINT_KEY)
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
        error=None if result.error is None else str(result.error).strip().splitlines()[-1],
    )


def _close_stopped_runs(trials: list[TrialSummary], tracking_uri: str) -> None:
    """Mark the MLflow runs of trials the scheduler stopped early as KILLED (their actor was ended)."""
    for trial in trials:
        if trial.status == "stopped" and trial.mlflow_run_id:
            tracker = RunTracker.attach(tracking_uri, trial.mlflow_run_id)
            tracker.set_tags({"tune_stopped_early": "true"})
            tracker.finish("KILLED")


def _register_best(best: TrialSummary, cfg: Experiment) -> RegisteredVersion | None:
    """Re-score the best trial's final network on the whole validation clips, then register it.

    Trials validate on capped clips (``val.max_clips`` / ``val.max_frames``) to stay cheap; the
    registered version carries the full score, measured as ``jobs/evaluate.py`` measures it (a Ray task,
    on a GPU when there is one), so the ``champion`` alias compares it with training runs validated on
    the same dataset and protocol. The trial's own score is kept as the ``trial_val_psnr`` tag.
    """
    import ray.train

    from pipelines.evaluation.job import EvaluationConfig, run_evaluation

    if best.checkpoint is None or best.mlflow_run_id is None:
        logger.warning("best trial %s left no checkpoint: nothing to register", best.trial_id)
        return None
    full = dataclasses.replace(cfg, val=dataclasses.replace(cfg.val, max_clips=None, max_frames=None))
    val = full.val
    rescored = run_evaluation(
        EvaluationConfig(
            model=best.checkpoint,
            data=cfg.data.path,
            split=cfg.data.val_split,
            channel=val.channel,
            crop_border=val.crop_border,
            centre_frame_only=val.centre_frame_only,
            mirror_times=val.mirror_times,
            chunk=val.chunk,
            tracking_uri=cfg.tracking.uri,
            log_to_mlflow=False,
        )
    ).report.metrics()
    logger.info(
        "best trial %s: %s %.4g on capped validation, PSNR %.2f dB on the whole clips",
        best.trial_id, "val", best.last, rescored["psnr"],
    )  # fmt: skip
    tracker = RunTracker.attach(cfg.tracking.uri, best.mlflow_run_id)
    tracker.set_tags({"trial_val_psnr": best.last})
    summary = register_result(full, tracker, ray.train.Checkpoint(best.checkpoint), val_metrics=rescored)
    return summary.registered


# -- command line ----------------------------------------------------------------------------------------


def search_from_args(args) -> SearchConfig:
    """Load ``--config`` with ``--set`` overrides, then the shared flags on top."""
    flags = {
        "num_samples": args.num_samples,
        "experiment.run.address": args.address,
        "experiment.tracking.uri": args.mlflow_uri,
    }
    return load_config(SearchConfig, args.config, [*args.overrides, *flag_overrides(flags)])


def main(cls: type[Experiment], argv: list[str] | None = None, description: str | None = None) -> int:
    """Command-line entry of ``jobs/tune_<arch>.py``: parse, load the search, run it, print the results."""
    parser = job_parser(description)
    parser.add_argument("--num-samples", type=int, help="trials to sample (num_samples)")
    parser.add_argument(
        "--address", help="Ray cluster address (experiment.run.address); default: a local Ray"
    )
    parser.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (experiment.tracking.uri); default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    )
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error("--config is required (e.g. configs/tune_ttvsr_sample.yaml)")
    return run_job(lambda: print(run_search(search_from_args(args), cls).describe()))
