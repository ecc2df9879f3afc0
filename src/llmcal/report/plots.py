"""Reliability diagrams, overlays, selective-accuracy and confidence-shift plots (matplotlib, lazily).

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
    "confidence_shift_plot",
    "figure_png",
    "grid_shape",
    "reliability_diagram",
    "reliability_figure",
    "reliability_overlay",
    "reliability_panels",
    "run_color",
    "run_style",
    "save_figure_png",
    "save_reliability_png",
    "selective_accuracy_plot",
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
#: Under-confident gaps (accuracy above confidence) are hatched in ink the other way.
UNDER_HATCH = "\\\\\\"
#: Extra width in inches a diagram gets for its legend, drawn outside the axes on the right.
LEGEND_WIDTH = 2.0
#: Size in inches of the one-axes comparison figures (overlay; selective accuracy is lower):
#: the width of a report page at its image resolution.
WIDE_SIZE = (11.0, 6.5)
_MARKERS = ("o", "s", "^", "D", "v", "P")
_LINESTYLES = ("-", "--", "-.", ":")

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
    over = conf >= acc
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
        left[over],
        (conf - acc)[over],
        width[over],
        bottom=acc[over],
        align="edge",
        facecolor=GAP_COLOR,
        alpha=0.3,
        edgecolor=GAP_COLOR,
        linewidth=0.7,
        hatch="///",
        zorder=3,
    )
    # an under-confident bin's gap lies inside its accuracy bar, from the confidence up
    ax.bar(
        left[~over],
        (acc - conf)[~over],
        width[~over],
        bottom=conf[~over],
        align="edge",
        facecolor="none",
        edgecolor=_INK,
        linewidth=0.7,
        hatch=UNDER_HATCH,
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
    _legend_right(
        ax,
        handles=_diagram_handles(color),
        title=f"n = {int(data.count.sum()):,}\nECE = {ece:.3f}",
        alignment="left",
    )
    if title:
        ax.set_title(_wrap(title))


def _diagram_handles(color: str) -> list[Any]:
    """Legend entries of a reliability diagram, both gap kinds always explained."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=color, edgecolor="white", label="Accuracy"),
        Patch(
            facecolor=mpl_rgba(GAP_COLOR, 0.3),
            edgecolor=GAP_COLOR,
            hatch="///",
            label="Gap, over-confident\n(confidence > accuracy)",
        ),
        Patch(
            facecolor=color,
            edgecolor=_INK,
            hatch=UNDER_HATCH,
            label="Gap, under-confident\n(accuracy > confidence)",
        ),
        Line2D([0], [0], linestyle="--", color=_INK, linewidth=1.1, label="Perfect calibration"),
    ]


def mpl_rgba(color: str, alpha: float) -> tuple[float, float, float, float]:
    """``color`` with transparency ``alpha`` as an RGBA tuple."""
    from matplotlib.colors import to_rgba

    return to_rgba(color, alpha)


def _legend_right(ax: Axes, **kwargs: Any) -> Any:
    """A legend outside the axes, to their right, so it never covers what they show."""
    return ax.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kwargs
    )


def _wrap(text: str, width: int = 38) -> str:
    """A plot title broken into lines, so a long run name is not cut at the figure edge."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


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
    # the marker lines stop just above the bars, leaving a band on top for the legend
    top = float(np.max(data.proportion)) * 1.08
    ax.vlines(
        mean_conf, 0.0, top, color=_INK, linewidth=1.2, label=f"Avg. confidence {mean_conf:.2f}"
    )
    ax.vlines(
        acc, 0.0, top, color=GAP_COLOR, linewidth=1.2, linestyle="--", label=f"Accuracy {acc:.2f}"
    )
    ax.set_xlim(0.0, 1.0)
    # histogram axes may share y: only ever raise the limit, never clip another panel's bars
    ax.set_ylim(0.0, max(ax.get_ylim()[1], top * 1.5))
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Share")
    ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.6, zorder=0)
    _legend_right(ax, fontsize=7, handlelength=1.6)


def grid_shape(n_panels: int, max_columns: int = 3) -> tuple[int, int]:
    """``(rows, columns)`` of a balanced grid of ``n_panels`` with at most ``max_columns``."""
    if n_panels < 1 or max_columns < 1:
        raise ConfigError(f"need at least one panel and one column, got {n_panels}, {max_columns}")
    rows = -(-n_panels // max_columns)
    return rows, -(-n_panels // rows)


def reliability_figure(
    n_columns: int,
    dpi: int = DEFAULT_DPI,
    with_hist: bool = True,
    n_rows: int = 1,
    n_panels: int | None = None,
) -> Figure:
    """An empty figure with, per panel, a diagram axes above a histogram axes.

    Panels fill an ``n_rows × n_columns`` grid row by row (``n_panels`` of them, all by
    default). ``fig.axes`` holds diagram, histogram for panel 0, then for panel 1, …; without
    histograms only the diagrams (and each row is 3/4 as tall).
    """
    import matplotlib as mpl
    from matplotlib.figure import Figure

    count = n_rows * n_columns if n_panels is None else n_panels
    if not 1 <= count <= n_rows * n_columns:
        raise ConfigError(f"{count} panels do not fit a {n_rows} × {n_columns} grid")
    row_height = COLUMN_SIZE[1] if with_hist else COLUMN_SIZE[1] * 0.75
    with mpl.rc_context(_STYLE):
        fig = Figure(
            figsize=((COLUMN_SIZE[0] + LEGEND_WIDTH) * n_columns, row_height * n_rows),
            dpi=dpi,
            layout="constrained",
        )
        if not with_hist:
            grid = fig.add_gridspec(n_rows, n_columns)
            for i in range(count):
                fig.add_subplot(grid[i // n_columns, i % n_columns])
            return fig
        grid = fig.add_gridspec(2 * n_rows, n_columns, height_ratios=(3.0, 1.0) * n_rows)
        first_hist = None
        for i in range(count):
            row, col = divmod(i, n_columns)
            top = fig.add_subplot(grid[2 * row, col])
            hist = fig.add_subplot(grid[2 * row + 1, col], sharex=top, sharey=first_hist)
            first_hist = first_hist or hist
    return fig


def reliability_panels(
    runs: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    n_bins: int = 15,
    binning: Binning = "width",
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
    max_columns: int = 3,
) -> Figure:
    """One reliability diagram with its confidence histogram per run, in a grid of panels.

    ``runs`` maps a label to ``(confidence, correct)``; panels fill rows of at most
    ``max_columns`` (4 runs make a 2 × 2 grid), each ``COLUMN_SIZE`` inches.
    """
    import matplotlib as mpl

    if not runs:
        raise ConfigError("a reliability figure needs at least one run")
    rows, cols = grid_shape(len(runs), max_columns)
    fig = reliability_figure(cols, dpi=dpi, n_rows=rows, n_panels=len(runs))
    with mpl.rc_context(_STYLE):
        for i, (name, (conf, corr)) in enumerate(runs.items()):
            reliability_diagram(
                conf,
                corr,
                n_bins,
                binning,
                ax=fig.axes[2 * i],
                title=name,
                color=run_color(i),
                hist_ax=fig.axes[2 * i + 1],
            )
        if title:
            fig.suptitle(title)
    return fig


def save_reliability_png(
    runs: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: str | os.PathLike[str],
    n_bins: int = 15,
    binning: Binning = "width",
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
    max_columns: int = 3,
) -> Path:
    """Write one reliability-diagram panel per run to a PNG (atomically); see reliability_panels.

    ``runs`` maps a label (e.g. ``"aligned"``, ``"base"``) to ``(confidence, correct)``. Up to
    ``max_columns`` runs sit side by side (``COLUMN_SIZE[0] * len(runs) × COLUMN_SIZE[1]``
    inches at ``dpi``); more wrap into a balanced grid.
    """
    if not runs:
        raise ConfigError("save_reliability_png needs at least one run")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(
            f"reliability plots are written as PNG; use a .png path, not {path.name!r}"
        )
    fig = reliability_panels(runs, n_bins, binning, title=title, dpi=dpi, max_columns=max_columns)
    return save_figure_png(fig, path, dpi=dpi)


def save_figure_png(fig: Figure, path: str | os.PathLike[str], dpi: int = DEFAULT_DPI) -> Path:
    """Write a figure to a PNG file atomically."""
    data = figure_png(fig, dpi=dpi)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def figure_png(fig: Figure, dpi: int = DEFAULT_DPI) -> bytes:
    """The figure as PNG bytes (no software tag, so equal figures give equal bytes)."""
    import io

    import matplotlib as mpl

    buf = io.BytesIO()
    with mpl.rc_context(_STYLE):
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def run_color(i: int) -> str:
    """The colour of the i-th run in every comparison plot."""
    return RUN_COLORS[i % len(RUN_COLORS)]


def run_style(i: int) -> dict[str, Any]:
    """Colour, marker and line style of the i-th run: runs stay apart without colour too."""
    return {
        "color": run_color(i),
        "marker": _MARKERS[i % len(_MARKERS)],
        "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
    }


def _diagonal(ax: Axes, label: str | None = "Perfect calibration") -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color=_INK, linewidth=1.0, label=label, zorder=1)


def reliability_overlay(
    runs: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    n_bins: int = 15,
    binning: Binning = "width",
    ax: Axes | None = None,
    hist_ax: Axes | None = None,
    title: str | None = None,
) -> tuple[Axes, Axes | None]:
    """All runs on one reliability diagram: per-bin accuracy against mean confidence.

    Marker area grows with the share of questions in the bin; with ``ax=None`` a new figure
    is made with the confidence histograms (as outlines) below. Returns ``(axes, hist_axes)``.
    """
    import matplotlib as mpl

    if not runs:
        raise ConfigError("a reliability overlay needs at least one run")
    data = {name: reliability_data(c, y, n_bins, binning) for name, (c, y) in runs.items()}
    with mpl.rc_context(_STYLE):
        if ax is None:
            fig = reliability_figure(1)
            fig.set_size_inches(*WIDE_SIZE)
            ax, hist_ax = fig.axes[0], fig.axes[1]
        ax.grid(True, color="#e5e5e5", linewidth=0.6, zorder=0)
        _diagonal(ax)
        for i, (name, d) in enumerate(data.items()):
            style = run_style(i)
            full = d.count > 0
            ece = d.ece()
            ax.plot(
                d.confidence[full],
                d.accuracy[full],
                color=style["color"],
                linestyle=style["linestyle"],
                linewidth=1.6,
                zorder=3,
                label=f"{name} (ECE {ece:.3f})",
            )
            ax.scatter(
                d.confidence[full],
                d.accuracy[full],
                s=12.0 + 250.0 * d.proportion[full],
                color=style["color"],
                marker=style["marker"],
                edgecolors="white",
                linewidths=0.6,
                zorder=4,
            )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_ylabel("Accuracy")
        _legend_right(ax, title="marker area ∝ share of questions", alignment="left")
        if title:
            ax.set_title(_wrap(title, 60))
        if hist_ax is None:
            ax.set_xlabel("Confidence")
            return ax, None
        ax.tick_params(labelbottom=False)
        for i, (c, y) in enumerate(runs.values()):
            # histograms always use equal-width bins: they show where the confidences lie
            h = reliability_data(c, y, n_bins) if binning != "width" else data[list(runs)[i]]
            style = run_style(i)
            hist_ax.stairs(
                h.proportion,
                h.edges,
                color=style["color"],
                linestyle=style["linestyle"],
                linewidth=1.4,
                zorder=2,
            )
        hist_ax.set_xlim(0.0, 1.0)
        hist_ax.set_xlabel("Confidence")
        hist_ax.set_ylabel("Share")
        hist_ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.6, zorder=0)
    return ax, hist_ax


def selective_accuracy_plot(
    runs: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Selective accuracy against coverage (1 − the risk–coverage curve), one line per run.

    Answering only the most confident questions should raise accuracy: a curve that falls
    to the left means confidence does not rank right above wrong answers.
    """
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from llmcal.metrics.selective import aurc, risk_coverage_curve

    if not runs:
        raise ConfigError("a selective-accuracy plot needs at least one run")
    with mpl.rc_context(_STYLE):
        if ax is None:
            fig = Figure(
                figsize=(WIDE_SIZE[0], 4.0),
                layout="constrained",
            )
            ax = fig.add_subplot()
        ax.grid(True, color="#e5e5e5", linewidth=0.6, zorder=0)
        for i, (name, (conf, corr)) in enumerate(runs.items()):
            coverage, risk, _ = risk_coverage_curve(conf, corr)
            style = run_style(i)
            ax.step(
                np.concatenate(([0.0], coverage)),
                np.concatenate(([1.0 - risk[0]], 1.0 - risk)),
                where="pre",
                color=style["color"],
                linestyle=style["linestyle"],
                linewidth=1.6,
                label=f"{name} (AURC {aurc(conf, corr):.3f})",
                zorder=3,
            )
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("Coverage (share of questions answered, most confident first)")
        ax.set_ylabel("Selective accuracy")
        _legend_right(ax)
        if title:
            ax.set_title(_wrap(title, 60))
    return ax


def confidence_shift_plot(
    conf_from: npt.ArrayLike,
    conf_to: npt.ArrayLike,
    correct_to: npt.ArrayLike,
    tolerance: float = 0.01,
    ax: Axes | None = None,
    title: str | None = None,
    labels: tuple[str, str] = ("before", "after"),
) -> Axes:
    """Per-question top-label confidence in two runs (same questions, same order).

    Points above the band (|Δ| > ``tolerance``) moved up in confidence, below it down; filled
    circles are answered correctly in the second run, crosses wrongly.
    """
    import matplotlib as mpl
    from matplotlib.figure import Figure

    a = np.asarray(conf_from, dtype=np.float64)
    b = np.asarray(conf_to, dtype=np.float64)
    right = np.asarray(correct_to, dtype=bool)
    if a.shape != b.shape or a.shape != right.shape or a.ndim != 1:
        raise ConfigError(
            f"confidence_shift_plot needs three equal-length 1-D arrays, got shapes "
            f"{a.shape}, {b.shape}, {right.shape}"
        )
    own = ax is None
    with mpl.rc_context(_STYLE):
        if ax is None:
            fig = Figure(figsize=(COLUMN_SIZE[0], COLUMN_SIZE[0] + 0.5), layout="constrained")
            ax = fig.add_subplot()
        ax.grid(True, color="#e5e5e5", linewidth=0.6, zorder=0)
        ax.fill_between(
            [0, 1], [-tolerance, 1 - tolerance], [tolerance, 1 + tolerance], color="#dddddd",
            zorder=1, linewidth=0,
        )  # fmt: skip
        _diagonal(ax, label=None)
        size = float(np.clip(3000.0 / max(a.shape[0], 1), 4.0, 30.0))
        ax.scatter(
            a[right], b[right], s=size, color=OKABE_ITO["blue"], alpha=0.6, linewidths=0,
            label=f"right in {labels[1]}", zorder=3,
        )  # fmt: skip
        ax.scatter(
            a[~right], b[~right], s=size, color=GAP_COLOR, marker="x", alpha=0.7,
            linewidths=0.9, label=f"wrong in {labels[1]}", zorder=3,
        )  # fmt: skip
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_aspect("equal")
        ax.set_ylabel(_wrap(f"Confidence: {labels[1]}", 45))
        ax.set_xlabel(_wrap(f"Confidence: {labels[0]}", 45))
        # outside the axes: the points may fill any corner of the square
        if own:
            ax.figure.legend(loc="outside lower center", frameon=False)
        else:
            _legend_right(ax)
        if title:
            ax.set_title(_wrap(title))
    return ax
