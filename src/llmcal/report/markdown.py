"""The Markdown form of a report: GitHub-flavoured tables to paste into a pull request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmcal.report.tables import REPORT_COLUMNS, report_cell
from llmcal.report.tables import format_p as _p
from llmcal.report.tables import format_value as _f

__all__ = ["render_markdown"]


def _cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    """A pipe table; ``align`` has one letter per column, l or r."""
    rule = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _summary(data: Mapping[str, Any]) -> list[str]:
    header = ["run"] + [h for _, h, _ in REPORT_COLUMNS]
    rows = [
        [r["name"]] + [report_cell(r["metrics"], k, spec) for k, _, spec in REPORT_COLUMNS]
        for r in data["runs"]
    ]
    return _table(header, rows, "l" + "r" * len(REPORT_COLUMNS))


def _selective(data: Mapping[str, Any]) -> list[str]:
    coverages = list(data["runs"][0]["metrics"]["selective_accuracy"])
    header = ["run", "AURC"] + [f"acc @ {float(c):.0%} coverage" for c in coverages]
    rows = [
        [r["name"], _f(r["metrics"]["aurc"])]
        + [_f(r["metrics"]["selective_accuracy"][c]) for c in coverages]
        for r in data["runs"]
    ]
    return _table(header, rows, "l" + "r" * (len(coverages) + 1))


def _drift(data: Mapping[str, Any]) -> list[str]:
    entries = data["drift"]
    if not entries:
        return ["Only one run: nothing to compare."]
    level = data["settings"]["ci"]["level"]
    header = [
        "before → after",
        "n",
        "ECE before",
        "ECE after",
        f"ΔECE [{level} CI]",
        "p",
        "conf. up",
        "conf. down",
        "unchanged",
        "answer changed",
    ]
    rows, skipped = [], []
    for e in entries:
        pair = f"{e['before']} → {e['after']}"
        if "skipped" in e:
            skipped.append(f"- {pair}: not compared, {e['skipped']}")
            continue
        lo, hi = e["delta_ece_ci"]
        rows.append(
            [
                pair,
                e["n_common"],
                _f(e["ece_before"]),
                _f(e["ece_after"]),
                f"{e['delta_ece']:+.4f} [{lo:+.4f}, {hi:+.4f}]",
                _p(e["p_value"], e["n_resamples"]),
                e["moved_up"],
                e["moved_down"],
                e["unchanged"],
                e["answer_changed"],
            ]
        )
    d = data["settings"]["drift"]
    lines = _table(header, rows, "lrrrrrrrrr") if rows else []
    lines += ["", *skipped] if skipped else []
    lines += [
        "",
        f"_Matched by question id; {d['method']} ({d['n_resamples']} replicates, seed "
        f"{d['seed']}); p is {d['p_value']}; {d['moves']}._",
    ]
    return lines


def _subjects(data: Mapping[str, Any]) -> list[str]:
    table = data.get("subject_table") or {"rows": [], "hidden": [], "min_n": 0}
    runs = [r["name"] for r in data["runs"]]
    header = ["subject"] + [f"{name}: n, accuracy, ECE [CI], gap" for name in runs]
    rows = []
    for row in table["rows"]:
        cells = [row["subject"]]
        for name in runs:
            c = row["runs"].get(name)
            if c is None:
                cells.append(f"n < {table['min_n']}")
                continue
            lo, hi = c["ece_ci"]
            cells.append(
                f"{c['n']}, {c['accuracy']:.3f}, {c['ece']:.3f} [{lo:.3f}, {hi:.3f}], "
                f"{c['overconfidence']:+.3f}"
            )
        rows.append(cells)
    note = f"Subjects with at least {table['min_n']} questions"
    if table["hidden"]:
        note += f"; {len(table['hidden'])} smaller ones left out"
    return [
        "<details><summary>Per subject and run</summary>",
        "",
        f"_{note}._",
        "",
        *_table(header, rows, "l" + "r" * len(runs)),
        "",
        "</details>",
    ]


def _provenance(data: Mapping[str, Any]) -> list[str]:
    header = ["run", "file", "model", "task", "template", "mode", "logits", "calibration", "n"]
    rows = []
    for r in data["runs"]:
        p = r["provenance"]
        steps = " → ".join(str(c.get("kind")) for c in p.get("calibration") or []) or "none"
        mode = p.get("mode") or "—"
        if p.get("normalization"):
            mode += f" ({p['normalization']})"
        rows.append(
            [
                r["name"],
                p.get("file") or "—",
                p.get("model") or "—",
                p.get("task") or "—",
                p.get("template") or "—",
                mode,
                p.get("logit_kind") or "—",
                steps,
                p["n"],
            ]
        )
    s = data["settings"]
    ci = s["ci"]
    env = ", ".join(f"{k} {v}" for k, v in data["environment"].items() if v)
    return [
        *_table(header, rows, "llllllllr"),
        "",
        f"- ECE: {s['ece']}; {ci['level']} {ci['method']} interval ({ci['n_resamples']} "
        f"resamples, seed {ci['seed']})",
        f"- Smooth ECE: {s['smooth_ece']}",
        f"- Confidence: {s['confidence']}; Brier: {s['brier']}; NLL: {s['nll']}",
        f"- Generated {data['generated_at']} with {env}",
    ]


def render_markdown(data: Mapping[str, Any]) -> str:
    """The report data as Markdown: summary, selective accuracy, drift, subjects, provenance."""
    runs = data["runs"]
    lines = [
        f"## {data['title']}",
        "",
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} · {data['settings']['n_bins']} "
        f"{data['settings']['binning']} bins · llmcal {data['llmcal_version']}. Reliability "
        "diagrams are in the HTML form of this report (`llmcal report … --format html`).",
        "",
        "### Summary",
        "",
        *_summary(data),
        "",
        "Gap = mean confidence − accuracy (positive: over-confident).",
        "",
        "### Selective accuracy",
        "",
        *_selective(data),
        "",
        "### Calibration drift",
        "",
        *_drift(data),
        "",
    ]
    if data["has_subjects"]:
        lines += ["### Subjects", "", *_subjects(data), ""]
    if data.get("guarantees"):
        from llmcal.report.guarantees import render_guarantees_markdown

        lines += render_guarantees_markdown(data)
    lines += ["### Provenance", "", *_provenance(data), ""]
    return "\n".join(lines)
