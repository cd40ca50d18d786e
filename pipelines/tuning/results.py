"""What a search produced: one :class:`TrialSummary` per trial, the results table and the plots.

The table (``results.csv``, ``results.md``) has one row per trial: its status, the value drawn for
each searched entry, the iterations it trained and its final validation scores. The plots (PNG, drawn
with matplotlib's Agg canvas, no display needed) are the searched metric against each searched entry,
one point per trial (stopped and errored trials marked apart), and, for training searches, the metric
against the training iteration, one line per trial. :func:`write_reports` writes them all to a folder
that the search logs to its MLflow parent run.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.tracking.tuning import COMPLETED, STOPPED_EARLY

SCORES = ("val_psnr", "val_ssim")  # the columns every row has, whichever metric the search maximises


@dataclass(frozen=True)
class TrialSummary:
    """One trial's outcome."""

    trial_id: str
    params: dict[str, Any]  # search entry -> the value drawn (a tied group's value as written)
    status: str  # COMPLETED | STOPPED_EARLY | ERRORED
    iteration: int | None  # last validated iteration; None for an evaluation (nothing trains)
    last: float  # the metric at the trial's last validation (what its final network scores)
    best: float  # the best value over its validations
    mlflow_run_id: str | None
    checkpoint: str | None  # URI of its newest checkpoint folder (training searches)
    scores: dict[str, float] = field(default_factory=dict)  # SCORES at the last validation
    history: list[tuple[int, float]] = field(default_factory=list)  # (iteration, metric) per validation
    error: str | None = None


def fmt(value: Any) -> str:
    """A table cell: 4 significant digits, ``(4, 6, 8)`` for lists, ``-`` for nothing."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return "-" if value is None else str(value)


def score(value: float) -> str:
    """A PSNR / SSIM cell: 4 decimals, since settings of one network differ by hundredths of a dB."""
    return "-" if math.isnan(value) else f"{value:.4f}"


def table_rows(trials: list[TrialSummary], metric: str) -> tuple[list[str], list[list[str]]]:
    """The header and one row of cells per trial."""
    entries = list(dict.fromkeys(key for trial in trials for key in trial.params))
    header = ["trial", "status", *entries, "iterations", *SCORES, f"best {metric}"]
    rows = [
        [
            t.trial_id,
            t.status,
            *(fmt(t.params.get(k)) for k in entries),
            fmt(t.iteration),
            *(score(t.scores.get(s, math.nan)) for s in SCORES),
            score(t.best),
        ]
        for t in trials
    ]
    return header, rows


def text_table(trials: list[TrialSummary], metric: str) -> str:
    header, rows = table_rows(trials, metric)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(trials: list[TrialSummary], metric: str) -> str:
    header, rows = table_rows(trials, metric)
    lines = [header, ["---"] * len(header), *rows]
    return (
        "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in lines) + "\n"
    )


def csv_table(trials: list[TrialSummary], metric: str) -> str:
    header, rows = table_rows(trials, metric)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue()


def _file_stem(name: str) -> str:
    """``"model.token_size, model.token_scales"`` -> ``"model.token_size_model.token_scales"``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_")


def _canvas(width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def plot_against_entry(trials: list[TrialSummary], entry: str, metric: str, path: Path) -> Path:
    """The final ``metric`` of each trial against the value it drew for ``entry``; numbers on a numeric
    axis (log-scaled when they span more than a decade), anything else one tick per value."""
    figure, axes = _canvas()
    values = [t.params.get(entry) for t in trials]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    labels = list(dict.fromkeys(fmt(v) for v in values))
    for status, marker in ((COMPLETED, "o"), (STOPPED_EARLY, "x")):
        chosen = [t for t in trials if t.status == status and math.isfinite(t.last)]
        xs = [t.params.get(entry) if numeric else labels.index(fmt(t.params.get(entry))) for t in chosen]
        axes.scatter(xs, [t.last for t in chosen], marker=marker, label=status)
    if numeric and values and min(values) > 0 and max(values) / min(values) > 10:
        axes.set_xscale("log")
    if not numeric:
        axes.set_xticks(range(len(labels)), labels, rotation=20)
    axes.set_xlabel(entry)
    axes.set_ylabel(f"{metric} (last validation)")
    axes.set_title(f"{metric} against {entry}")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def plot_against_iteration(trials: list[TrialSummary], metric: str, path: Path) -> Path:
    """``metric`` at every validation of every trial: one line per trial, labelled with its values."""
    figure, axes = _canvas(7.0, 4.5)
    for trial in trials:
        if trial.history:
            steps, values = zip(*trial.history, strict=True)
            label = ", ".join(fmt(v) for v in trial.params.values()) or trial.trial_id
            style = "--" if trial.status == STOPPED_EARLY else "-"
            axes.plot(steps, values, style, marker=".", label=f"{label} ({trial.status})")
    axes.set_xlabel("iteration")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per validation, one line per trial")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def write_reports(trials: list[TrialSummary], metric: str, folder: Path) -> list[Path]:
    """``results.csv``, ``results.md`` and the plots (``plots/*.png``) in ``folder``; the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plots").mkdir(exist_ok=True)
    (folder / "results.csv").write_text(csv_table(trials, metric))
    (folder / "results.md").write_text(markdown_table(trials, metric))
    written = [folder / "results.csv", folder / "results.md"]
    for entry in dict.fromkeys(key for trial in trials for key in trial.params):
        written.append(
            plot_against_entry(
                trials, entry, metric, folder / "plots" / f"{metric}_vs_{_file_stem(entry)}.png"
            )
        )
    if any(len(trial.history) > 1 for trial in trials):
        written.append(
            plot_against_iteration(trials, metric, folder / "plots" / f"{metric}_vs_iteration.png")
        )
    return written
