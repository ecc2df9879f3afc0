"""Tables of evaluation results: plain text for the terminal, and the cells the reports share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: (key in evaluate()'s dict, label, format) in display order.
SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("n", "questions", "{:d}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("mean_confidence", "mean confidence", "{:.4f}"),
    ("ece", "ECE", "{:.4f}"),
    ("mce", "MCE", "{:.4f}"),
    ("smooth_ece", "smooth ECE", "{:.4f}"),
    ("brier", "Brier", "{:.4f}"),
    ("nll", "NLL", "{:.4f}"),
    ("auroc", "AUROC", "{:.4f}"),
)


_SPECS = {key: spec for key, _, spec in SUMMARY_ROWS}

#: (key in evaluate()'s dict, header, format) of the per-run summary in reports; the formats
#: are those of SUMMARY_ROWS, so a report shows the numbers ``llmcal eval`` prints.
REPORT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("n", "n", _SPECS["n"]),
    ("accuracy", "Accuracy", _SPECS["accuracy"]),
    ("ece", "ECE [95% CI]", _SPECS["ece"]),
    ("mce", "MCE", _SPECS["mce"]),
    ("smooth_ece", "Smooth ECE", _SPECS["smooth_ece"]),
    ("brier", "Brier", _SPECS["brier"]),
    ("nll", "NLL", _SPECS["nll"]),
    ("auroc", "AUROC", _SPECS["auroc"]),
    ("mean_confidence", "Mean confidence", _SPECS["mean_confidence"]),
    ("overconfidence", "Gap (conf − acc)", "{:+.4f}"),
)


def gap_text(gap: float | None) -> str:
    """Mean confidence − accuracy, signed, with which way the model is off."""
    if gap is None or gap != gap:
        return "n/a"
    side = "over" if gap > 0 else "under" if gap < 0 else ""
    return f"{gap:+.4f} {side}".rstrip()


def report_cell(result: Mapping[str, Any], key: str, spec: str) -> str:
    """One summary cell of a report, formatted as ``llmcal eval`` prints it."""
    if key == "overconfidence":
        return gap_text(result.get(key))
    return format_cell(result, key, spec)


def format_value(value: Any, spec: str = "{:.4f}") -> str:
    """``spec.format(value)``, or ``n/a`` for a missing or NaN value."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return spec.format(value)


def format_p(value: Any, n_resamples: int) -> str:
    """A bootstrap p-value; 0 (no replicate crossed) is shown as ``< 1/R``."""
    if value is None or value != value:
        return "n/a"
    return f"< {1 / n_resamples:.3g}" if value == 0 else f"{value:.3f}"


def format_cell(result: Mapping[str, Any], key: str, spec: str) -> str:
    """One value of ``result``, with its bootstrap CI for ECE when present."""
    text = format_value(result.get(key), spec)
    if key == "ece" and result.get("ece_ci") is not None:
        lo, hi = result["ece_ci"]
        text += f" [{lo:.4f}, {hi:.4f}]"
    return text


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A metric × run table; ``results`` maps a run name to ``evaluate()``'s dict."""
    names = list(results)
    first = next(iter(results.values()), {})
    ece_label = f"ECE ({first.get('n_bins', '?')} bins, {first.get('binning', '?')})"
    if first.get("ece_ci") is not None:
        ece_label += " [95% CI]"
    labels = [ece_label if key == "ece" else label for key, label, _ in SUMMARY_ROWS]
    cells = [[format_cell(results[n], key, spec) for n in names] for key, _, spec in SUMMARY_ROWS]
    return render(["metric", *names], [[lab, *row] for lab, row in zip(labels, cells, strict=True)])


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, a rule under the header."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

    def line(r: Sequence[str]) -> str:
        first = str(r[0]).ljust(widths[0])
        rest = [str(v).rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
