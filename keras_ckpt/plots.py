"""Plots of a checkpoint directory: the metric history by epoch, with the kept checkpoints marked.

Needs matplotlib (``pip install "keras-ckpt[plot]"``); no Keras import.

The history comes from the newest resume checkpoint (``ResumeFromLatest`` stores the ``History``
of the run, every epoch); without one, from the metrics of the checkpoints themselves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from keras_ckpt.records import BEST_ALIAS, CheckpointRecord, Manifest


def history_of(manifest: Manifest) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> (1-based epoch, value) pairs, the fullest history the directory holds."""
    for record in reversed(manifest.records):
        saved = (record.state or {}).get("history")
        if saved and saved.get("history"):
            epochs = [int(e) + 1 for e in saved.get("epoch", [])]
            return {
                name: [(e, float(v)) for e, v in zip(epochs, values, strict=False) if _finite(v)]
                for name, values in saved["history"].items()
            }
    history: dict[str, dict[int, float]] = {}
    for record in manifest.records:
        if record.batch is None:  # epoch-end checkpoints carry that epoch's logs
            for name, value in record.metrics.items():
                if _finite(value):
                    history.setdefault(name, {})[record.epoch] = float(value)
    return {name: sorted(points.items()) for name, points in history.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_directory(
    manifest: Manifest, output: str | os.PathLike[str], metrics: Sequence[str] | None = None
) -> None:
    """Writes a PNG with one panel per metric: the history as a line, each kept checkpoint as a
    dot, the ``best`` alias's checkpoint as a star.

    Raises:
        ValueError: If there is nothing to plot, or ``metrics`` names a metric not present.
        ImportError: Without matplotlib.
    """
    try:
        import matplotlib.ticker
        from matplotlib.figure import Figure  # no pyplot: the user's backend stays as it is
    except ImportError:
        raise ImportError('Plotting needs matplotlib: pip install "keras-ckpt[plot]"') from None
    history = history_of(manifest)
    names = sorted(history) if not metrics else list(metrics)
    unknown = [name for name in names if name not in history]
    if unknown:
        raise ValueError(f"no history of {unknown}; metrics present: {sorted(history)}")
    if not names:
        raise ValueError("the checkpoints record no metrics to plot")
    best_target = manifest.aliases.get(BEST_ALIAS)
    figure = Figure(figsize=(7, 2.4 * len(names) + 0.6))
    axes = figure.subplots(len(names), 1, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        epochs, values = zip(*history[name], strict=True) if history[name] else ((), ())
        ax.plot(epochs, values, color="tab:blue", label=name)
        kept = [r for r in manifest.records if _finite(r.metrics.get(name))]
        _mark(ax, [r for r in kept if r.filename != best_target], "o", "tab:orange", "kept", name)
        _mark(ax, [r for r in kept if r.filename == best_target], "*", "tab:red", "best", name)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    figure.suptitle(os.path.basename(os.path.dirname(manifest.records[0].path)) or "checkpoints")
    figure.tight_layout()
    figure.savefig(output, dpi=100)


def _mark(
    ax: Any, records: list[CheckpointRecord], marker: str, color: str, label: str, name: str
) -> None:
    if records:
        ax.scatter(
            [r.epoch for r in records],
            [r.metrics[name] for r in records],
            marker=marker,
            s=120 if marker == "*" else 30,
            color=color,
            label=label,
            zorder=3,
        )
