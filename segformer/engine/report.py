"""Evaluation output: TAO's text tables and a confusion-matrix figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from segformer.fileio import atomic_write
from segformer.text import pad, width
from .metrics import Scores


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100.0 * value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(width(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def row(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {pad(str(c), w)} " for c, w in zip(cells, widths)) + "|"

    return "\n".join([line, row(header), line, *(row(r) for r in rows), line])


def format_tables(scores: Scores, class_names: Sequence[str]) -> str:
    """The per-class "Class | IoU | Acc" table and the "Scope | mIoU | mAcc | aAcc" summary,
    values in percent with two decimals, as TAO prints them; "nan" for undefined classes."""
    names = list(class_names) or [str(i) for i in range(len(scores.iou))]
    per_class = _table(["Class", "IoU", "Acc"],
                       [[name, _percent(iou), _percent(acc)] for name, iou, acc in zip(names, scores.iou, scores.acc)])
    summary = _table(["Scope", "mIoU", "mAcc", "aAcc"],
                     [["global", _percent(scores.miou), _percent(scores.macc), _percent(scores.aacc)]])
    return f"{per_class}\nSummary:\n\n{summary}"


def save_confusion_matrix(matrix: Tensor | np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Row-normalized confusion matrix (rows: ground truth, columns: prediction) as a PNG."""
    figure = confusion_figure(matrix, class_names)
    return atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))


def confusion_figure(matrix: Tensor | np.ndarray, class_names: Sequence[str]) -> Any:
    """The matplotlib Figure of `save_confusion_matrix`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    counts = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
    k = counts.shape[0]
    names = list(class_names) or [str(i) for i in range(k)]
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(max(4.0, 2.0 + 0.6 * k), 24.0)  # 4 in at least: the title fits above two classes
    figure = Figure(figsize=(side, side))
    axes = figure.subplots()
    image = axes.imshow(normalized, vmin=0.0, vmax=1.0, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(k), names, rotation=45, ha="right")
    axes.set_yticks(range(k), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title("Confusion matrix (row-normalized)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                axes.text(j, i, f"{normalized[i, j]:.2f}", ha="center", va="center", fontsize=8,
                          color="white" if normalized[i, j] > 0.5 else "black")
    figure.tight_layout()
    return figure
