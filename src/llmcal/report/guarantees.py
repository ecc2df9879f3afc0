"""The "Guarantees" section of a report: conformal coverage and the selective risk bound.

:func:`guarantees_data` applies a fitted :class:`~llmcal.calibrate.ConformalPredictor` and/or
:class:`~llmcal.calibrate.SelectiveRisk` to one run's (labelled, held-out) Scores and returns a
JSON-ready dict for ``build_report(..., guarantees=...)``; the HTML and Markdown renderers
below draw the coverage against its target, the set-size histogram and the risk–coverage curve
with the chosen operating point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError
from llmcal.scores import Scores

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from llmcal.calibrate.conformal import ConformalPredictor
    from llmcal.calibrate.selective_risk import SelectiveRisk
    from llmcal.report.data import Report

__all__ = [
    "guarantees_data",
    "render_guarantees_html",
    "render_guarantees_markdown",
    "risk_coverage_operating_plot",
    "set_size_plot",
]


def guarantees_data(
    run: str,
    scores: Scores,
    conformal: ConformalPredictor | None = None,
    selective: SelectiveRisk | None = None,
    conformal_file: str | None = None,
    selective_file: str | None = None,
) -> dict[str, Any]:
    """Coverage of the conformal sets and the selective rule's realised risk on ``scores``."""
    from llmcal.calibrate.conformal import set_coverage
    from llmcal.calibrate.selective_risk import selective_summary

    if conformal is None and selective is None:
        raise ConfigError("guarantees_data needs a conformal predictor, a selective rule or both")
    out: dict[str, Any] = {"run": run}
    if conformal is not None:
        sets = conformal.predict_sets(scores)
        out["conformal"] = {
            "file": conformal_file,
            "config": conformal.get_config(),
            "params": conformal.get_params(),
            "max_options": int(scores.n_options.max()),
            **set_coverage(sets),
        }
    if selective is not None:
        summary = selective_summary(selective.decide(scores))
        out["selective"] = {
            "file": selective_file,
            "config": selective.get_config(),
            "fit": {
                k: (selective.fit_info_ or {}).get(k)
                for k in ("n", "n_pilot", "risk_upper_bound", "calibration_coverage")
            },
            **summary,
        }
    return out


def set_size_plot(c: Mapping[str, Any], ax: Axes | None = None) -> Axes:
    """Share of questions per prediction-set size, with the coverage of each size above."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from llmcal.report.plots import _STYLE, COLUMN_SIZE, OKABE_ITO

    counts = {int(k): int(v) for k, v in c["size_counts"].items()}
    sizes = np.arange(0, max(c.get("max_options", 0), *counts) + 1)
    share = np.array([counts.get(int(s), 0) for s in sizes], dtype=np.float64) / max(c["n"], 1)
    cov = {b["size"]: b["coverage"] for b in c.get("by_size", [])}
    with mpl.rc_context(_STYLE):
        if ax is None:
            fig = Figure(figsize=(COLUMN_SIZE[0] * 1.1, COLUMN_SIZE[1] * 0.7), layout="constrained")
            ax = fig.add_subplot()
        ax.grid(True, axis="y", color="#e5e5e5", linewidth=0.6, zorder=0)
        ax.bar(sizes, share, width=0.7, color=OKABE_ITO["blue"], alpha=0.85, zorder=2)
        for s, h in zip(sizes.tolist(), share.tolist(), strict=True):
            if s in cov:
                ax.text(s, h + 0.01, f"cov. {cov[s]:.2f}", ha="center", va="bottom", fontsize=7.5)
        ax.set_xticks(sizes)
        ax.set_ylim(0.0, min(1.0, float(share.max()) * 1.25 + 0.05))
        ax.set_xlabel("Prediction-set size (options)")
        ax.set_ylabel("Share of questions")
        title = f"Set sizes (mean {c['mean_size']:.2f})"
        if c.get("coverage") is not None and c.get("target_coverage") is not None:
            lo, hi = c["coverage_ci"]
            title += (
                f"\ncoverage {c['coverage']:.3f} [{lo:.3f}, {hi:.3f}] vs target "
                f"≥ {c['target_coverage']:.3f}"
            )
        ax.set_title(title)
    return ax


def risk_coverage_operating_plot(
    conf: npt.ArrayLike, correct: npt.ArrayLike, s: Mapping[str, Any], ax: Axes | None = None
) -> Axes:
    """The risk–coverage curve of a run with the bound r and the selective rule's point marked."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    from llmcal.metrics.selective import risk_coverage_curve
    from llmcal.report.plots import _INK, _STYLE, COLUMN_SIZE, GAP_COLOR, OKABE_ITO

    coverage, risk, _ = risk_coverage_curve(conf, correct)
    with mpl.rc_context(_STYLE):
        if ax is None:
            fig = Figure(figsize=(COLUMN_SIZE[0] * 1.3, COLUMN_SIZE[1] * 0.7), layout="constrained")
            ax = fig.add_subplot()
        ax.grid(True, color="#e5e5e5", linewidth=0.6, zorder=0)
        ax.step(
            np.concatenate(([0.0], coverage)),
            np.concatenate(([risk[0]], risk)),
            where="pre",
            color=OKABE_ITO["blue"],
            linewidth=1.6,
            label="Error rate among answered (test)",
            zorder=3,
        )
        ax.axhline(
            s["risk"], color=GAP_COLOR, linestyle="--", linewidth=1.2,
            label=f"Bound r = {s['risk']:g} (w.p. ≥ {1 - s['delta']:g})", zorder=2,
        )  # fmt: skip
        if s.get("answers_nothing"):
            ax.text(0.03, 0.72, "No threshold met the bound: the rule answers nothing",
                    transform=ax.transAxes, color=GAP_COLOR, fontsize=8.5, va="top",
                    bbox={"facecolor": "white", "edgecolor": GAP_COLOR, "pad": 3})  # fmt: skip
        elif s.get("realised_risk") is not None:
            ax.plot(
                [s["coverage"]], [s["realised_risk"]], marker="o", markersize=8,
                color=_INK, markerfacecolor=OKABE_ITO["orange"], linestyle="none", zorder=5,
                label=f"Operating point: conf ≥ {s['threshold']:.3g}, coverage "
                f"{s['coverage']:.2f}, risk {s['realised_risk']:.3f}",
            )  # fmt: skip
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, max(float(risk.max()), s["risk"]) * 1.15 + 0.01)
        ax.set_xlabel("Coverage (share of questions answered, most confident first)")
        ax.set_ylabel("Error rate among answered")
        ax.legend(loc="upper left", frameon=False)
        ax.set_title("Risk–coverage with the selective rule")
    return ax


def render_guarantees_html(report: Report) -> str:
    """The Guarantees section (empty string when the report has none)."""
    from llmcal.report.html import _e, _figure, _img, _table, _td, _th

    g = report.data.get("guarantees")
    if not g:
        return ""
    parts = [
        '<section id="guarantees"><h2>Guarantees</h2>'
        f'<p class="note">Distribution-free guarantees fitted on a calibration split and '
        f"checked here on run <b>{_e(g['run'])}</b> (its questions must not be in the "
        "calibration split).</p>"
    ]
    c = g.get("conformal")
    if c:
        lo, hi = c.get("coverage_ci") or (None, None)
        cov = c.get("coverage")
        ok = cov is not None and lo is not None and hi is not None and hi >= c["target_coverage"]
        rows = [
            [
                _td(f"{c['score']}{' (randomised)' if c['config']['randomized'] else ''}", cls="text"),
                _td(f"{c['target_coverage']:.3f}", c["target_coverage"]),
                _td("n/a" if cov is None else f"{cov:.4f} [{lo:.4f}, {hi:.4f}]", cov,
                    cls=None if ok else "over"),
                _td(f"{c['mean_size']:.3f}", c["mean_size"]),
                _td(f"{c['empty_share']:.1%}", c["empty_share"]),
                _td(str(c["n_labelled"]), c["n_labelled"]),
                _td(str(c.get("n_calibration")), c.get("n_calibration")),
            ]
        ]  # fmt: skip
        header = [
            _th("Conformal score", numeric=False),
            _th("Target coverage (≥)"),
            _th("Coverage [95% Clopper–Pearson]"),
            _th("Mean set size"),
            _th("Empty sets"),
            _th("Test questions"),
            _th("Calibration questions"),
        ]
        parts.append(
            "<h3>Conformal prediction sets</h3>" + _table(header, rows, id_="conformal-table")
        )
        size_rows = [
            [_td(str(b["size"]), b["size"]), _td(str(b["n"]), b["n"]),
             _td(f"{b['coverage']:.4f}", b["coverage"])]
            for b in c.get("by_size", [])
        ]  # fmt: skip
        subj = c.get("by_subject") or {}
        subj_rows = [
            [_td(k, cls="text"), _td(str(v["n"]), v["n"]), _td(f"{v['coverage']:.4f}", v["coverage"]),
             _td(f"{v['mean_size']:.3f}", v["mean_size"])]
            for k, v in subj.items()
        ]  # fmt: skip
        ax = set_size_plot(c)
        tables = _table(
            [_th("Set size"), _th("n"), _th("Coverage")], size_rows, id_="set-size-table"
        )
        if subj_rows:
            tables += _table(
                [_th("Subject", numeric=False), _th("n"), _th("Coverage"), _th("Mean size")],
                subj_rows, sortable=True, id_="conformal-subject-table",
            )  # fmt: skip
        caption = (
            "Share of test questions per set size; above each bar the coverage of the sets of "
            "that size. Large sets mark the questions the model is unsure of."
        )
        img = _img(ax.figure, "Histogram of prediction-set sizes")
        parts.append(
            '<div class="row">'
            f'<figure style="max-width:500px">{img}<figcaption>{caption}</figcaption></figure>'
            f"<div>{tables}</div></div>"
            + '<p class="note">Split conformal: coverage ≥ 1 − α holds on average over '
            "calibration splits (exchangeable questions), and is at most 1 − α + 1/(n+1) with "
            "untied scores; a single test split varies around it (see the interval).</p>"
        )
    s = g.get("selective")
    if s:
        run = next(r for r in report.runs if r.name == g["run"])
        ax = risk_coverage_operating_plot(run.scores.confidences(), run.scores.correct(), s)
        realised = s.get("realised_risk")
        rr_lo, rr_hi = s.get("realised_risk_ci") or (None, None)
        rows = [
            [
                _td(str(s["method"]).replace("_", "-"), cls="text"),
                _td(f"{s['risk']:g}", s["risk"]),
                _td(f"{s['delta']:g}", s["delta"]),
                _td("none (answers nothing)" if s["threshold"] is None else f"{s['threshold']:.4g}",
                    s["threshold"]),
                _td(f"{s['coverage']:.4f}", s["coverage"]),
                _td("n/a" if realised is None else f"{realised:.4f} [{rr_lo:.4f}, {rr_hi:.4f}]",
                    realised, cls=None if realised is None or realised <= s["risk"] else "over"),
                _td(str(s["n_answered"]), s["n_answered"]),
            ]
        ]  # fmt: skip
        header = [
            _th("Testing", numeric=False),
            _th("Risk bound r"),
            _th("δ"),
            _th("Threshold (answer if conf ≥)"),
            _th("Coverage"),
            _th("Realised risk [95% CI]"),
            _th("Answered"),
        ]
        parts.append(
            "<h3>Selective answering</h3>"
            + _table(header, rows, id_="selective-risk-table")
            + f'<p class="note">{_e(s["guarantee"][:1].upper() + s["guarantee"][1:])}.</p>'
            + _figure(
                _img(ax.figure, "Risk–coverage curve with the selective operating point"),
                "Error rate among the answered questions of this run as more of them are "
                "answered (most confident first); dashed: the bound r certified on the "
                "calibration split; the dot: where the fitted threshold lands on this run.",
            )
        )
    parts.append("</section>")
    return "".join(parts)


def render_guarantees_markdown(data: Mapping[str, Any]) -> list[str]:
    """The Guarantees section as Markdown lines (none when the report has none)."""
    g = data.get("guarantees")
    if not g:
        return []
    lines = ["### Guarantees", "", f"Checked on run {g['run']}.", ""]
    c = g.get("conformal")
    if c:
        cov = c.get("coverage")
        ci = c.get("coverage_ci") or (0.0, 0.0)
        lines += [
            "| conformal score | target coverage | coverage [95% CP] | mean set size | n |",
            "|---|--:|--:|--:|--:|",
            f"| {c['score']} | ≥ {c['target_coverage']:.3f} | "
            + ("n/a" if cov is None else f"{cov:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]")
            + f" | {c['mean_size']:.3f} | {c['n_labelled']} |",
            "",
        ]
    s = g.get("selective")
    if s:
        rr = s.get("realised_risk")
        lines += [
            f"- Selective answering: {s['guarantee']}.",
            f"- On this run: coverage {s['coverage']:.4f}, realised risk "
            + ("n/a" if rr is None else f"{rr:.4f}")
            + f" ({s['n_answered']} answered).",
            "",
        ]
    return lines
