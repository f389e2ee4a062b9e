"""The charts as a reader sees them: the latency figure's own title keeps clear of its subplots' titles (a
headless-browser screenshot of report.html once showed them on top of each other)."""

import json
from pathlib import Path

import pytest

from phase2_ray.report.plots import latency_figure
from phase2_ray.report.schema import Report

GOLDEN = Path(__file__).parent / "fixtures" / "golden"


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_the_latency_title_does_not_overlap_the_subplot_titles(name):
    import matplotlib.pyplot as plt

    inference = Report.model_validate(json.loads((GOLDEN / name / "report.json").read_text())).inference
    fig = latency_figure(inference)
    try:
        fig.canvas.draw()  # lays it out (constrained layout runs at draw time)
        r = fig.canvas.get_renderer()
        title = fig.get_suptitle() and fig._suptitle.get_window_extent(r)
        assert title, "the figure has no title"
        for ax in fig.axes:
            assert ax.get_title(), "a subplot lost its title"
            sub = ax.title.get_window_extent(r)
            assert not title.overlaps(sub), (ax.get_title(), title, sub)
            assert title.y0 >= sub.y1  # above it
    finally:
        plt.close(fig)
