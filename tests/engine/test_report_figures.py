"""The evaluate action's figures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("classes", [2, 3, 12])
def test_the_confusion_matrix_title_fits_the_figure(classes):
    """At two classes the figure was 3.2 in wide and its title was cut ("Confusion matrix (row-normalize")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from segformer.engine.report import confusion_figure

    figure = confusion_figure(np.eye(classes) * 5 + 1, [f"class {i}" for i in range(classes)])
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    title = figure.axes[0].title
    box = title.get_window_extent(canvas.get_renderer())
    assert title.get_text() == "Confusion matrix (row-normalized)"
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1
