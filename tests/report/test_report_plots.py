"""The report's plots: panel grids, overlay, selective accuracy and confidence shifts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_runs import make_scores, perturbed

from llmcal.errors import ConfigError
from llmcal.metrics import ece, risk_coverage_curve
from llmcal.report import (
    confidence_shift_plot,
    reliability_overlay,
    reliability_panels,
    save_reliability_png,
    selective_accuracy_plot,
)
from llmcal.report.plots import COLUMN_SIZE, LEGEND_WIDTH, figure_png, grid_shape, run_color


def _runs(count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    base = make_scores(0, n=150, subjects=False)
    out = {}
    for i in range(count):
        s = perturbed(base, seed=i + 1, scale=0.6 + 0.2 * i)
        out[f"run {i}"] = (s.confidences(), s.correct())
    return out


@pytest.mark.parametrize(
    ("panels", "shape"),
    [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (5, (2, 3)), (7, (3, 3))],
)
def test_grid_shape(panels: int, shape: tuple[int, int]) -> None:
    assert grid_shape(panels) == shape


def test_four_runs_make_a_two_by_two_png(tmp_path: Path) -> None:
    from PIL import Image

    out = save_reliability_png(_runs(4), tmp_path / "grid.png", dpi=30)
    with Image.open(out) as img:
        assert img.size == (
            round(2 * (COLUMN_SIZE[0] + LEGEND_WIDTH) * 30),
            round(2 * COLUMN_SIZE[1] * 30),
        )
    fig = reliability_panels(_runs(5), dpi=30)
    assert len(fig.axes) == 10  # a diagram and a histogram per run, no empty panels
    assert [fig.axes[2 * i].get_title() for i in range(5)] == [f"run {i}" for i in range(5)]


def test_overlay_has_one_curve_per_run_with_its_ece() -> None:
    runs = _runs(3)
    ax, hist = reliability_overlay(runs, n_bins=10)
    assert hist is not None
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for i, (name, (conf, corr)) in enumerate(runs.items()):
        assert f"{name} (ECE {ece(conf, corr, n_bins=10):.3f})" in labels
        line = next(ln for ln in ax.get_lines() if ln.get_label().startswith(name))
        assert line.get_color() == run_color(i)
        # the curve's points are the non-empty bins' (mean confidence, accuracy)
        assert len(line.get_xdata()) == len(np.unique(np.ceil(conf * 10)))
    assert len(hist.patches) == 3  # one outline histogram per run
    ax2, none = reliability_overlay(runs, binning="mass", ax=ax.figure.add_subplot(3, 1, 3))
    assert none is None and ax2.get_xlabel() == "Confidence"


def test_selective_accuracy_curve_ends_at_accuracy() -> None:
    runs = _runs(2)
    ax = selective_accuracy_plot(runs, title="t")
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == 2 and ax.get_title() == "t"
    for line, (conf, corr) in zip(lines, runs.values(), strict=True):
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert x[-1] == 1.0 and y[-1] == pytest.approx(corr.mean(), abs=1e-12)
        coverage, risk, _ = risk_coverage_curve(conf, corr)
        np.testing.assert_allclose(x[1:], coverage)
        np.testing.assert_allclose(y[1:], 1.0 - risk)


def test_confidence_shift_plot() -> None:
    a = np.array([0.5, 0.6, 0.9, 0.7])
    b = np.array([0.6, 0.6, 0.5, 0.9])
    right = np.array([True, False, True, False])
    ax = confidence_shift_plot(a, b, right, labels=("x", "y"))
    assert ax.get_xlabel() == "Confidence: x" and ax.get_ylabel() == "Confidence: y"
    right_pts, wrong_pts = (c.get_offsets() for c in ax.collections[-2:])
    np.testing.assert_allclose(right_pts, [[0.5, 0.6], [0.9, 0.5]])
    np.testing.assert_allclose(wrong_pts, [[0.6, 0.6], [0.7, 0.9]])
    with pytest.raises(ConfigError, match="equal-length"):
        confidence_shift_plot(a, b[:3], right)


def test_figure_png_is_deterministic_and_errors() -> None:
    from PIL import Image

    runs = _runs(1)
    first = figure_png(reliability_panels(runs, dpi=40), dpi=40)
    second = figure_png(reliability_panels(runs, dpi=40), dpi=40)
    assert first == second and b"Software" not in first
    with Image.open(io.BytesIO(first)) as img:
        assert img.size == (round((COLUMN_SIZE[0] + LEGEND_WIDTH) * 40), round(COLUMN_SIZE[1] * 40))
    for plot in (reliability_panels, reliability_overlay, selective_accuracy_plot):
        with pytest.raises(ConfigError, match="at least one run"):
            plot({})
    with pytest.raises(ConfigError):
        grid_shape(0)


def _assert_legends_outside(fig: Any) -> int:
    """Every legend of ``fig`` lies outside every axes' drawing area; returns how many."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), legend.get_texts()[0]
    return len(legends)


def test_legends_never_cover_the_data() -> None:
    from llmcal.report.plots import confidence_shift_plot

    runs = _runs(3)
    assert _assert_legends_outside(reliability_panels(runs)) == 6  # diagram + histogram each
    assert _assert_legends_outside(reliability_overlay(runs)[0].figure) == 1
    assert _assert_legends_outside(selective_accuracy_plot(runs).figure) == 1
    (a, _), (b, corr) = list(runs.values())[:2]
    ax = confidence_shift_plot(a, b, corr, labels=("a long run name " * 3, "another " * 4))
    assert _assert_legends_outside(ax.figure) == 1


def test_under_confident_bins_are_hatched_and_explained() -> None:
    from llmcal.report.plots import UNDER_HATCH, reliability_diagram

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 0.6, 400)
    correct = rng.random(400) < 0.9  # far more accurate than confident in every bin
    ax, _ = reliability_diagram(conf, correct, n_bins=10)
    hatched = [p for p in ax.patches if p.get_hatch() == UNDER_HATCH]
    assert len(hatched) == len(np.unique(np.ceil(conf * 10)))  # every non-empty bin
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Gap, under-confident\n(accuracy > confidence)" in labels
