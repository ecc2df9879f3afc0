"""The HTML form of a report: one self-contained file, nothing loaded from anywhere.

Images are PNG data URIs, styles and the table-sorting script are inline, and a
Content-Security-Policy forbids every other source, so the page renders offline and cannot
reach the network even when opened in a browser.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from llmcal.report.tables import REPORT_COLUMNS, report_cell
from llmcal.report.tables import format_p as _p
from llmcal.report.tables import format_value as _f

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from llmcal.report.data import Report

__all__ = ["HTML_DPI", "render_html"]

#: Resolution of the inline images (inches come from the plot functions).
HTML_DPI = 110

_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)

_CSS = """
:root { --ink: #222; --muted: #5f5f5f; --rule: #d9d9d9; --accent: #0072B2; --bg-head: #f6f6f6; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
header h1 { font-size: 26px; margin: 0 0 2px; }
header p { margin: 0; color: var(--muted); }
nav { margin: 14px 0 4px; font-size: 14px; }
nav a { color: var(--accent); margin-right: 16px; text-decoration: none; }
nav a:hover { text-decoration: underline; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--rule); }
h3 { font-size: 16px; margin: 22px 0 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; margin: 6px 0; }
th, td { padding: 5px 9px; text-align: right; white-space: nowrap; border-bottom: 1px solid #ececec; }
th:first-child, td:first-child, th.text, td.text { text-align: left; }
thead th { background: var(--bg-head); border-bottom: 2px solid #9a9a9a; font-weight: 600;
  white-space: normal; vertical-align: bottom; min-width: 4.5em; }
tbody tr:hover { background: #fbf7ea; }
table.sortable thead th { cursor: pointer; user-select: none; }
table.sortable thead th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
table.sortable thead th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.wrap { white-space: normal; text-align: left; max-width: 380px; overflow-wrap: anywhere; }
td.pair { min-width: 170px; max-width: 260px; }
td span.ci { display: block; color: var(--muted); font-size: 12px; }
td details summary { cursor: pointer; color: var(--accent); }
td pre.prompt { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; max-height: 28em;
  overflow-y: auto; background: #fafafa; border: 1px solid #eee; padding: 6px; margin: 4px 0 0; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  margin-right: 7px; vertical-align: -1px; }
.over { color: #a84300; } .under { color: #005a8c; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; max-width: 900px; }
figure { margin: 14px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figure img.wide { width: 100%; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; max-width: 900px; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; font-size: 14px; }
dl.settings dt { font-weight: 600; } dl.settings dd { margin: 0; }
.skipped { color: #a84300; }
.muted { color: var(--muted); }
thead th.group { text-align: center; border-bottom: 1px solid #9a9a9a; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

# Click (or Enter on) a header to sort; numeric cells sort by their data-value.
_JS = """
(function () {
  function key(cell, numeric) {
    if (!numeric) { return cell.textContent.trim().toLowerCase(); }
    var v = parseFloat(cell.getAttribute("data-value"));
    return isNaN(v) ? -Infinity : v;
  }
  function sortBy(table, th, col) {
    var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" : "descending";
    var numeric = th.getAttribute("data-type") === "num";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
      var c = numeric ? (x === y ? 0 : (x < y ? -1 : 1)) : String(x).localeCompare(String(y));
      return dir === "ascending" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var head = table.tHead.rows[table.tHead.rows.length - 1];
    Array.prototype.forEach.call(head.cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by " + th.textContent;
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""

_READING = """
<p>Each bar is one confidence bin. Its height is the <em>accuracy</em> of the answers in that
bin; the shaded part up to the diagonal is the <em>gap</em> between the confidence the model
stated and the accuracy it achieved. A calibrated model's bars reach the diagonal. Bars below
the diagonal mean over-confidence (the usual case for instruction-tuned models; the gap is
shaded orange, hatched ///), bars above it under-confidence (the part of the bar above the
diagonal is hatched \\\\\\ in dark ink). The numbers at the foot of the bars are the questions per bin, and the
histogram below shows where the confidences lie: a large gap in a nearly empty bin matters
little, which is why ECE weights each bin's gap by its share of the questions.</p>
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num_attr(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return ""
    return repr(float(value))


def _img(fig: Figure | SubFigure, alt: str, dpi: int = HTML_DPI, wide: bool = False) -> str:
    from llmcal.report.plots import figure_png

    root = cast("Figure", fig)  # plots draw on their own top-level figures
    data = base64.b64encode(figure_png(root, dpi=dpi)).decode("ascii")
    w, h = (round(x * dpi) for x in root.get_size_inches())
    cls = ' class="wide"' if wide else ""
    return f'<img{cls} src="data:image/png;base64,{data}" width="{w}" height="{h}" alt="{_e(alt)}">'


def _figure(img: str, caption: str) -> str:
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _th(label: str, numeric: bool = True, sort: str | None = None) -> str:
    attrs = ' data-type="num"' if numeric else ' class="text"'
    if sort:
        attrs += f' aria-sort="{sort}"'
    return f"<th{attrs}>{_e(label)}</th>"


def _td(text: str, value: Any = None, key: str | None = None, cls: str | None = None) -> str:
    attrs = ""
    if key:
        attrs += f' data-key="{_e(key)}"'
    if value is not None:
        attrs += f' data-value="{_num_attr(value)}"'
    if cls:
        attrs += f' class="{cls}"'
    return f"<td{attrs}>{_e(text)}</td>"


def _table(
    header: Iterable[str], rows: Iterable[Iterable[str]], sortable: bool = False, id_: str = ""
) -> str:
    cls = ' class="sortable"' if sortable else ""
    ident = f' id="{id_}"' if id_ else ""
    head = "".join(header)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return (
        f'<div class="scroll"><table{ident}{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _run_cell(name: str, index: int) -> str:
    from llmcal.report.plots import run_color

    return (
        f'<td class="text" data-run="{_e(name)}"><span class="swatch" '
        f'style="background:{run_color(index)}"></span>{_e(name)}</td>'
    )


# -- sections -----------------------------------------------------------------------------------
def _summary(data: Mapping[str, Any]) -> str:
    s = data["settings"]
    header = [_th("Run", numeric=False)] + [_th(h) for _, h, _ in REPORT_COLUMNS]
    rows = []
    for i, run in enumerate(data["runs"]):
        m = run["metrics"]
        cells = [_run_cell(run["name"], i)]
        for key, _, spec in REPORT_COLUMNS:
            cls = None
            if key == "overconfidence" and m.get(key):
                cls = "over" if m[key] > 0 else "under"
            cells.append(_td(report_cell(m, key, spec), m.get(key), key=key, cls=cls))
        rows.append(cells)
    ci = s["ci"]
    note = (
        f"ECE: {_e(s['ece'])}; {ci['level']} {_e(ci['method'])} interval "
        f"({ci['n_resamples']} resamples, seed {_e(ci['seed'])}). MCE, smooth ECE, Brier, NLL "
        "and AUROC are defined under <a href='#provenance'>Provenance</a>. Gap = mean "
        "confidence − accuracy: positive is over-confident."
    )
    return (
        '<section id="summary"><h2>Summary</h2>'
        + _table(header, rows, sortable=True, id_="summary-table")
        + f'<p class="note">{note}</p></section>'
    )


def _reliability(report: Report) -> str:
    from llmcal.report.data import confidences_and_correct
    from llmcal.report.plots import reliability_overlay, reliability_panels

    s = report.data["settings"]
    runs = confidences_and_correct(report)
    b, binning = s["n_bins"], s["binning"]
    parts = ['<section id="reliability"><h2>Reliability diagrams</h2>']
    if len(runs) > 1:
        ax, _ = reliability_overlay(runs, n_bins=b, binning=binning, title="All runs")
        parts.append(
            _figure(
                _img(ax.figure, "Reliability overlay of all runs", wide=True),
                "All runs on one diagram: per-bin accuracy against mean confidence (marker "
                "area ∝ share of questions); below, where each run's confidences lie.",
            )
        )
    # two panels a row: three would shrink their text below reading size at the page width
    fig = reliability_panels(runs, n_bins=b, binning=binning, dpi=HTML_DPI, max_columns=2)
    parts.append(
        _figure(
            _img(
                fig, "Reliability diagram and confidence histogram of each run", wide=len(runs) > 1
            ),
            f"One panel per run: accuracy per confidence bin ({b} {binning} bins) with the "
            "question count at the foot of each bar, the gap to the diagonal shaded; below, "
            "the confidence histogram with the mean confidence and the accuracy.",
        )
    )
    parts.append("<h3>Reading a reliability diagram</h3>" + _READING + "</section>")
    return "".join(parts)


def _selective(report: Report) -> str:
    from llmcal.report.data import confidences_and_correct
    from llmcal.report.plots import selective_accuracy_plot

    data = report.data
    ax = selective_accuracy_plot(confidences_and_correct(report))
    coverages = list(data["runs"][0]["metrics"]["selective_accuracy"])
    header = [_th("Run", numeric=False), _th("AURC")] + [
        _th(f"Accuracy at {float(c):.0%} coverage") for c in coverages
    ]
    rows = []
    for i, run in enumerate(data["runs"]):
        m = run["metrics"]
        sel = m["selective_accuracy"]
        rows.append(
            [_run_cell(run["name"], i), _td(_f(m["aurc"]), m["aurc"])]
            + [_td(_f(sel[c]), sel[c]) for c in coverages]
        )
    return (
        '<section id="selective"><h2>Selective accuracy</h2>'
        + _figure(
            _img(ax.figure, "Selective accuracy against coverage", wide=True),
            "Answer only the most confident questions: accuracy on the kept share (the "
            "risk–coverage curve, as 1 − risk). Higher and flatter to the left is better; AURC "
            "is the area under the risk–coverage curve (lower is better).",
        )
        + _table(header, rows, sortable=True, id_="selective-table")
        + "</section>"
    )


def _ci_cell(value: float, ci: Sequence[float]) -> str:
    """A value with its interval on a second, smaller line (keeps the wide table narrow)."""
    lo, hi = ci
    interval = "" if lo != lo or hi != hi else f"[{lo:.3f}, {hi:.3f}]"  # NaN: no interval
    return (
        f'<td data-value="{_num_attr(value)}">{value:.3f}'
        f'<span class="ci">{_e(interval)}</span></td>'
    )


def _subjects(data: Mapping[str, Any]) -> str:
    table = data.get("subject_table") or {}
    if not data.get("has_subjects") or not table:
        return ""
    runs = [r["name"] for r in data["runs"]]
    min_n, hidden = table["min_n"], table["hidden"]
    level = data["settings"]["ci"]["level"]
    group = ['<th class="text"></th><th></th>'] + [
        f'<th class="text group" colspan="3">{_e(name)}</th>' for name in runs
    ]
    header = [_th("Subject", numeric=False), _th("n")]
    for i in range(len(runs)):
        header += [
            _th(f"Accuracy [{level} CI]"),
            _th(f"ECE [{level} CI]", sort="descending" if i == 0 else None),
            _th("Gap"),
        ]
    rows = []
    first = runs[0]

    def first_ece(row: Mapping[str, Any]) -> float:
        cell = row["runs"].get(first)
        return -1.0 if cell is None else float(cell["ece"])

    for row in sorted(table["rows"], key=lambda r: -first_ece(r)):
        sizes = [c["n"] for c in row["runs"].values() if c is not None]
        n_text = str(sizes[0]) if len(set(sizes)) == 1 else " / ".join(map(str, sizes))
        cells = [_td(row["subject"], cls="text"), _td(n_text, max(sizes))]
        for name in runs:
            c = row["runs"].get(name)
            if c is None:
                cells += [_td(f"n < {min_n}", cls="muted")] + [_td("")] * 2
                continue
            gap = c["overconfidence"]
            cells += [
                _ci_cell(c["accuracy"], c["accuracy_ci"]),
                _ci_cell(c["ece"], c["ece_ci"]),
                _td(f"{gap:+.3f}", gap, cls="over" if gap > 0 else "under"),
            ]
        rows.append(cells)
    note = (
        f"One row per subject, one column group per run, sorted by the ECE of {_e(first)} "
        f"(click a header to sort). Only subjects with at least {min_n} questions are shown "
        "(<code>--min-subject-n</code>): ECE of a small subject is noisy and biased upwards."
    )
    if hidden:
        note += f" {len(hidden)} smaller subject{'s' if len(hidden) != 1 else ''} hidden: "
        note += _e(", ".join(hidden)) + "."
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return (
        '<section id="subjects"><h2>Subjects</h2>'
        f'<p class="note">{note}</p>'
        '<div class="scroll"><table id="subject-table" class="sortable"><thead>'
        f"<tr>{''.join(group)}</tr><tr>{''.join(header)}</tr></thead>"
        f"<tbody>{body}</tbody></table></div></section>"
    )


def _drift(report: Report) -> str:
    from llmcal.report.plots import confidence_shift_plot

    data = report.data
    entries = data["drift"]
    d_settings = data["settings"]["drift"]
    parts = ['<section id="drift"><h2>Calibration drift</h2>']
    if not entries:
        parts.append('<p class="note">Only one run: nothing to compare.</p></section>')
        return "".join(parts)
    level = data["settings"]["ci"]["level"]
    header = [
        _th("Before → after", numeric=False),
        _th("Questions"),
        _th("ECE before"),
        _th("ECE after"),
        _th(f"ΔECE [{level} CI]"),
        _th("p"),
        _th("Confidence up"),
        _th("Confidence down"),
        _th("Unchanged"),
        _th("Answer changed"),
        _th("Δ accuracy"),
    ]
    rows, skipped, plots = [], [], []
    by_name = {r.name: r for r in report.runs}
    for e in entries:
        if "skipped" in e:
            skipped.append(
                f"<li><b>{_e(e['before'])}</b> → <b>{_e(e['after'])}</b>: not compared, "
                f"{_e(e['skipped'])}</li>"
            )
            continue
        lo, hi = e["delta_ece_ci"]
        rows.append(
            [
                _td(f"{e['before']} → {e['after']}", cls="wrap pair"),
                _td(str(e["n_common"]), e["n_common"]),
                _td(_f(e["ece_before"]), e["ece_before"]),
                _td(_f(e["ece_after"]), e["ece_after"]),
                _td(f"{e['delta_ece']:+.4f} [{lo:+.4f}, {hi:+.4f}]", e["delta_ece"]),
                _td(_p(e["p_value"], e["n_resamples"]), e["p_value"]),
                _td(str(e["moved_up"]), e["moved_up"]),
                _td(str(e["moved_down"]), e["moved_down"]),
                _td(str(e["unchanged"]), e["unchanged"]),
                _td(str(e["answer_changed"]), e["answer_changed"]),
                _td(_f(e["accuracy_after"] - e["accuracy_before"], "{:+.4f}")),
            ]
        )
        plots.append(
            _shift_image(by_name[e["before"]], by_name[e["after"]], e, confidence_shift_plot)
        )
    if rows:
        parts.append(_table(header, rows, id_="drift-table"))
    parts.append(
        f'<p class="note">Runs are matched by question id. {_e(d_settings["statistic"])}; '
        f"{_e(d_settings['method'])} ({d_settings['n_resamples']} replicates, seed "
        f"{_e(d_settings['seed'])}); p is {_e(d_settings['p_value'])}. "
        f"{_e(d_settings['moves'].capitalize())}.</p>"
    )
    if skipped:
        parts.append(f'<ul class="skipped">{"".join(skipped)}</ul>')
    if plots:
        parts.append(f'<div class="row">{"".join(plots)}</div>')
    parts.append("</section>")
    return "".join(parts)


def _shift_image(before: Any, after: Any, entry: Mapping[str, Any], plot: Any) -> str:
    from llmcal.scores import align

    a, b = align(before.scores, after.scores)
    ax = plot(
        a.confidences(),
        b.confidences(),
        b.correct(),
        tolerance=entry["tolerance"],
        labels=(before.name, after.name),
        title=f"{before.name} → {after.name}",
    )
    caption = (
        f"Each point is a question: above the grey band its confidence rose by more than "
        f"{entry['tolerance']:g} ({entry['moved_up']}), below it fell ({entry['moved_down']})."
    )
    img = _img(ax.figure, f"Confidence of each question, {before.name} against {after.name}")
    return f'<figure style="max-width:460px">{img}<figcaption>{_e(caption)}</figcaption></figure>'


def _guarantees(report: Report) -> str:
    from llmcal.report.guarantees import render_guarantees_html

    return render_guarantees_html(report)


_PROVENANCE_ROWS: tuple[tuple[str, str], ...] = (
    ("file", "Scores file"),
    ("model", "Model"),
    ("task", "Task"),
    ("template", "Prompt template"),
    ("mode", "Scoring mode"),
    ("normalization", "Cloze normalisation"),
    ("n_shots", "Few-shot examples"),
    ("logit_kind", "What the logits are"),
    ("backend", "Backend"),
    ("device", "Device"),
    ("dtype", "Weights dtype"),
    ("seconds", "Scoring time"),
    ("prompt", "Prompt (first question)"),
    ("adapter", "Adapter"),
    ("calibration", "Calibration applied"),
    ("calibrator_file", "Calibrator file"),
    ("calibrated_from", "Calibrated from run"),
    ("n", "Questions (n)"),
    ("k", "Options (K)"),
    ("scores_llmcal_version", "Scored with llmcal"),
)


def _prov_value(key: str, prov: Mapping[str, Any]) -> str:
    value = prov.get(key)
    if key == "logit_kind" and value is not None:
        text = prov.get("logit_kind_text")
        return f"{value} ({text})" if text else str(value)
    if key == "calibration":
        steps = []
        for c in value or []:
            step = str(c.get("kind"))
            if "temperature" in c:
                step += f" (τ = {c['temperature']:.4g})"
            fitted = c.get("fitted_on") or {}
            if fitted.get("model") or fitted.get("n_used"):
                step += (
                    f", fitted on {fitted.get('model') or '?'} (n = {fitted.get('n_used', '?')})"
                )
            steps.append(step)
        return " → ".join(steps) if steps else "none"
    if key == "seconds" and isinstance(value, int | float):
        return f"{value:,.1f} s"
    if value is None:
        return "—"
    return str(value)


def _prompt_cell(prompt: Any) -> str:
    """The rendered prompt of a run, folded: its first line opens the whole text."""
    if prompt is None:
        return "<td>—</td>"
    text = prompt if isinstance(prompt, str) else str(prompt)
    first = text.strip().splitlines()[0] if text.strip() else ""
    summary = first if len(first) <= 60 else first[:57] + "…"
    return (
        f'<td class="wrap"><details><summary>{_e(summary)} ({len(text):,} characters)</summary>'
        f'<pre class="prompt">{_e(text)}</pre></details></td>'
    )


def _provenance(data: Mapping[str, Any]) -> str:
    runs: Sequence[Mapping[str, Any]] = data["runs"]
    header = [_th("", numeric=False)] + [_th(r["name"], numeric=False) for r in runs]
    rows = []
    for key, label in _PROVENANCE_ROWS:
        values = [_prov_value(key, r["provenance"]) for r in runs]
        if key in (
            "normalization",
            "adapter",
            "calibrator_file",
            "calibrated_from",
            "n_shots",
            "device",
            "dtype",
            "seconds",
            "prompt",
        ) and all(v in ("—", "0") for v in values):
            continue
        if key == "prompt":
            cells = [_prompt_cell(r["provenance"].get("prompt")) for r in runs]
        else:
            cells = [_td(v, cls="wrap") for v in values]
        rows.append([_td(label, cls="text"), *cells])
    s = data["settings"]
    settings = {
        "Confidence": s["confidence"],
        "ECE": s["ece"],
        "MCE": s["mce"],
        "Smooth ECE": s["smooth_ece"],
        "Brier": s["brier"],
        "NLL": s["nll"],
        "AUROC": s["auroc"],
        "Gap": s["gap"],
        "Confidence interval": f"{s['ci']['level']} {s['ci']['method']}, "
        f"{s['ci']['n_resamples']} resamples, seed {s['ci']['seed']}",
        "Drift": f"{s['drift']['method']}; {s['drift']['statistic']}; p-value "
        f"{s['drift']['p_value']}; {s['drift']['moves']}",
        "Generated": data["generated_at"],
        "Software": ", ".join(f"{k} {v}" for k, v in data["environment"].items() if v),
    }
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in settings.items())
    return (
        '<section id="provenance"><h2>Provenance</h2>'
        + _table(header, rows, id_="provenance-table")
        + f'<h3>How the numbers were computed</h3><dl class="settings">{dl}</dl></section>'
    )


def render_html(report: Report) -> str:
    """The whole report as one HTML document (images inline as PNG data URIs)."""
    data = report.data
    runs = data["runs"]
    sections = [
        _summary(data),
        _reliability(report),
        _selective(report),
        _subjects(data),
        _drift(report),
        _guarantees(report),
        _provenance(data),
    ]
    nav = [
        ("summary", "Summary"),
        ("reliability", "Reliability"),
        ("selective", "Selective accuracy"),
    ]
    if data["has_subjects"]:
        nav.append(("subjects", "Subjects"))
    nav.append(("drift", "Drift"))
    if data.get("guarantees"):
        nav.append(("guarantees", "Guarantees"))
    nav.append(("provenance", "Provenance"))
    links = "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in nav)
    names = ", ".join(r["name"] for r in runs)
    subtitle = (
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({names}) · {data['settings']['n_bins']} "
        f"{data['settings']['binning']} bins · generated {data['generated_at']} · llmcal "
        f"{data['llmcal_version']}"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="llmcal">'
        f"<title>{_e(data['title'])}</title><style>{_CSS}</style></head>\n"
        f"<body><main><header><h1>{_e(data['title'])}</h1><p>{_e(subtitle)}</p></header>"
        f"<nav>{links}</nav>\n"
        + "\n".join(s for s in sections if s)
        + f"\n<footer>Written by llmcal {_e(data['llmcal_version'])}. The same content as data: "
        "<code>llmcal report … --format json</code>.</footer></main>"
        f"<script>{_JS}</script></body></html>\n"
    )
