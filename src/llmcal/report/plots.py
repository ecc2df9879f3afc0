"""Reliability diagrams (matplotlib, imported only when a plot is drawn).

Figures are built as ``matplotlib.figure.Figure`` objects, never through pyplot, so no global
backend or figure state is touched; PNGs are rendered by Agg. Colours come from the Okabe–Ito
palette, which stays distinguishable under the common colour-vision deficiencies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_write
from llmcal.errors import ConfigError
from llmcal.metrics.calibration import Binning, ReliabilityData, reliability_data

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COLUMN_SIZE",
    "DEFAULT_DPI",
    "OKABE_ITO",
    "RUN_COLORS",
    "reliability_diagram",
    "reliability_figure",
    "save_reliability_png",
]

#: The Okabe–Ito colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
#: Colours given to successive runs in a comparison figure.
RUN_COLORS = tuple(
    OKABE_ITO[c] for c in ("blue", "bluish_green", "reddish_purple", "sky_blue", "orange")
)
GAP_COLOR = OKABE_ITO["vermillion"]
_INK = "#333333"

#: Size in inches of one run's column (diagram + histogram) in a saved figure.
COLUMN_SIZE = (4.0, 5.0)
DEFAULT_DPI = 150

_STYLE: dict[Any, Any] = {
    "font.size": 9.0,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.0,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _compact(count: int) -> str:
    if count < 1000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.3g}k"
    return f"{count / 1_000_000:.3g}M"


def reliability_diagram(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    n_bins: int = 15,
    binning: Binning = "width",
    ax: Axes | None = None,
    title: str | None = None,
    color: str = OKABE_ITO["blue"],
    hist_ax: Axes | None = None,
    show_hist: bool = True,
) -> tuple[Axes, Axes | None]:
    """Draw a reliability diagram: accuracy bars, gaps to the diagonal, counts, ECE, histogram.

    With ``ax=None`` a new figure is made (diagram above, confidence histogram below).
    With an ``ax`` and no ``hist_ax`` the histogram is appended below ``ax``. Returns
    ``(diagram_axes, histogram_axes or None)``.
    """
    import matplotlib as mpl

    data = reliability_data(confidence, correct, n_bins, binning)
    with mpl.rc_context(_STYLE):
        if ax is None:
            fig = reliability_figure(1, with_hist=show_hist)
            ax, hist_ax = fig.axes[0], (fig.axes[1] if show_hist else None)
        elif hist_ax is None and show_hist:
            from mpl_toolkits.axes_grid1 import make_axes_locatable

            hist_ax = make_axes_locatable(ax).append_axes("bottom", size="30%", pad=0.3, sharex=ax)
        _draw_diagram(ax, data, color, title, with_xlabel=not show_hist)
        if show_hist and hist_ax is not None:
            # the histogram shows the confidence distribution, so its bins are always equal-width
            hist = data if binning == "width" else reliability_data(confidence, correct, n_bins)
            _draw_histogram(hist_ax, hist, color)
    return ax, hist_ax


def _draw_diagram(
    ax: Axes, data: ReliabilityData, color: str, title: str | None, with_xlabel: bool
) -> None:
    full = data.count > 0
    # equal-mass groups can span a single confidence value: keep such bars visible
    width = np.maximum(np.diff(data.edges)[full], 0.008)
    left = np.minimum(data.edges[:-1][full], 1.0 - width)
    acc, conf, count = data.accuracy[full], data.confidence[full], data.count[full]
    ece = data.ece()
    ax.grid(True, color="#e5e5e5", linewidth=0.6, zorder=0)
    ax.bar(
        left,
        acc,
        width,
        align="edge",
        color=color,
        edgecolor="white",
        linewidth=0.7,
        label="Accuracy",
        zorder=2,
    )
    ax.bar(
        left,
        conf - acc,
        width,
        bottom=acc,
        align="edge",
        facecolor=GAP_COLOR,
        alpha=0.3,
        edgecolor=GAP_COLOR,
        linewidth=0.7,
        hatch="///",
        label=f"Gap (ECE = {ece:.3f})",
        zorder=3,
    )
    ax.plot(
        [0, 1],
        [0, 1],
        linestyle="--",
        color=_INK,
        linewidth=1.1,
        label="Perfect calibration",
        zorder=4,
    )
    # counts sit at the foot of each bar, clear of the diagonal and the gap shading
    rotate = data.n_bins > 10
    for x, w, a, c in zip(left, width, acc, count, strict=True):
        inside = a >= (0.16 if rotate else 0.07)
        ax.text(
            x + w / 2,
            0.012,
            _compact(int(c)),
            ha="center",
            va="bottom",
            fontsize=6.5 if rotate else 7.5,
            rotation=90 if rotate else 0,
            color="white" if inside else _INK,
            zorder=5,
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("Accuracy")
    if with_xlabel:
        ax.set_xlabel("Confidence")
    else:
        ax.tick_params(labelbottom=False)
    ax.legend(
        loc="upper left", frameon=False, title=f"n = {int(data.count.sum()):,}", alignment="left"
    )
    if title:
        ax.set_title(title)


def _draw_histogram(ax: Axes, data: ReliabilityData, color: str) -> None:
    full = data.weight > 0
    total = float(data.weight.sum())
    mean_conf = float((data.confidence[full] * data.weight[full]).sum() / total)
    acc = float((data.accuracy[full] * data.weight[full]).sum() / total)
    ax.bar(
        data.edges[:-1],
        data.proportion,
        np.diff(data.edges),
        align="edge",
        color=color,
        edgecolor="white",
        linewidth=0.5,
        alpha=0.85,
        zorder=2,
    )
    ax.axvline(mean_conf, color=_INK, linewidth=1.2, label=f"Avg. confidence {mean_conf:.2f}")
    ax.axvline(acc, color=GAP_COLOR, linewidth=1.2, linestyle="--", label=f"Accuracy {acc:.2f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Share")
    ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.6, zorder=0)
    ax.legend(loc="upper left", frameon=False, fontsize=7)


def reliability_figure(n_columns: int, dpi: int = DEFAULT_DPI, with_hist: bool = True) -> Figure:
    """An empty figure with, per column, a diagram axes above a histogram axes.

    ``fig.axes`` holds diagram, histogram for column 0, then for column 1, …; without
    histograms only the diagrams (and the figure is 3/4 as tall).
    """
    import matplotlib as mpl
    from matplotlib.figure import Figure

    height = COLUMN_SIZE[1] if with_hist else COLUMN_SIZE[1] * 0.75
    with mpl.rc_context(_STYLE):
        fig = Figure(figsize=(COLUMN_SIZE[0] * n_columns, height), dpi=dpi, layout="constrained")
        if not with_hist:
            fig.subplots(1, n_columns, squeeze=False)
            return fig
        grid = fig.add_gridspec(2, n_columns, height_ratios=(3.0, 1.0))
        first_hist = None
        for col in range(n_columns):
            top = fig.add_subplot(grid[0, col])
            hist = fig.add_subplot(grid[1, col], sharex=top, sharey=first_hist)
            first_hist = first_hist or hist
    return fig


def save_reliability_png(
    runs: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: str | os.PathLike[str],
    n_bins: int = 15,
    binning: Binning = "width",
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> Path:
    """Write one reliability-diagram column per run, side by side, to a PNG (atomically).

    ``runs`` maps a label (e.g. ``"aligned"``, ``"base"``) to ``(confidence, correct)``. The
    image is ``COLUMN_SIZE[0] * len(runs) × COLUMN_SIZE[1]`` inches at ``dpi``.
    """
    import matplotlib as mpl

    if not runs:
        raise ConfigError("save_reliability_png needs at least one run")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(
            f"reliability plots are written as PNG; use a .png path, not {path.name!r}"
        )
    fig = reliability_figure(len(runs), dpi=dpi)
    with mpl.rc_context(_STYLE):
        for col, (name, (conf, corr)) in enumerate(runs.items()):
            reliability_diagram(
                conf,
                corr,
                n_bins,
                binning,
                ax=fig.axes[2 * col],
                title=name,
                color=RUN_COLORS[col % len(RUN_COLORS)],
                hist_ax=fig.axes[2 * col + 1],
            )
        if title:
            fig.suptitle(title)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path
