"""Reliability plots: the PNG is written atomically, readable and of the expected pixel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmcal.errors import ConfigError, DataError
from llmcal.metrics import ece
from llmcal.report import reliability_diagram, save_reliability_png
from llmcal.report.plots import COLUMN_SIZE, LEGEND_WIDTH


def _run(seed: int, n: int = 500, power: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.25, 1.0, size=n)
    return conf, rng.random(n) < conf**power


def test_save_png_side_by_side(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    dpi = 40
    out = save_reliability_png(
        {"aligned": _run(0), "base": _run(1, power=1.0)},
        tmp_path / "sub" / "rel.png",
        title="aligned vs base",
        dpi=dpi,
    )
    assert out == tmp_path / "sub" / "rel.png"
    assert out.stat().st_size > 1000
    img = mpimg.imread(out)
    assert img.shape[:2] == (
        round(COLUMN_SIZE[1] * dpi),
        round(2 * (COLUMN_SIZE[0] + LEGEND_WIDTH) * dpi),
    )
    assert img.std() > 0.05  # something was drawn
    assert [p.name for p in out.parent.iterdir()] == ["rel.png"]  # no temp file left behind


def test_save_png_mass_binning_single_run(tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    out = save_reliability_png(
        {"m": _run(2, n=40)}, tmp_path / "m.png", n_bins=8, binning="mass", dpi=30
    )
    assert mpimg.imread(out).shape[:2] == (
        round(COLUMN_SIZE[1] * 30),
        round((COLUMN_SIZE[0] + LEGEND_WIDTH) * 30),
    )


def test_reliability_diagram_draws_bars_and_reports_ece() -> None:
    from matplotlib.figure import Figure

    conf, correct = _run(3)
    ax, hist = reliability_diagram(conf, correct, n_bins=10)
    assert hist is not None and hist.figure is ax.figure
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert f"ECE = {ece(conf, correct, 10):.3f}" in legend.get_title().get_text()
    assert any(t.startswith("Gap, over-confident") for t in labels)
    assert any(t.startswith("Gap, under-confident") for t in labels)
    # one accuracy bar and one gap bar (over- or under-confident) per non-empty bin
    n_full = len(np.unique(np.ceil(conf * 10)))
    assert len(ax.patches) == 2 * n_full

    ax0, hist0 = reliability_diagram(conf, correct, show_hist=False)
    assert hist0 is None and len(ax0.figure.axes) == 1 and ax0.get_xlabel() == "Confidence"

    fig = Figure()
    own = fig.add_subplot()
    ax2, hist2 = reliability_diagram(conf, correct, ax=own, title="t", show_hist=False)
    assert ax2 is own and hist2 is None and own.get_title() == "t"
    ax3, hist3 = reliability_diagram(conf, correct, ax=fig.add_subplot(2, 1, 2))
    assert hist3 is not None and hist3 is not ax3


def test_plot_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one run"):
        save_reliability_png({}, tmp_path / "x.png")
    with pytest.raises(ConfigError, match="\\.png"):
        save_reliability_png({"a": _run(0)}, tmp_path / "x.jpg")
    with pytest.raises(DataError, match="confidence must lie"):
        save_reliability_png({"a": ([1.5], [1])}, tmp_path / "x.png")
    assert not any(tmp_path.iterdir())
