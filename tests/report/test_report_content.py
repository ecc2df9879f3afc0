"""The report's data and its three renderings: JSON, Markdown and self-contained HTML."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from synthetic_runs import SUBJECTS, make_scores, perturbed

from llmcal.calibrate import TemperatureScaling
from llmcal.errors import ConfigError, ScoresError
from llmcal.metrics import evaluate, selective_accuracy
from llmcal.report import Report, ReportRun, build_report
from llmcal.report.data import COVERAGE_GRID, drift_pairs, format_for_path
from llmcal.report.tables import REPORT_COLUMNS, format_cell, report_cell
from llmcal.scores import Scores

RESAMPLES = 200


@pytest.fixture(scope="module")
def runs() -> dict[str, Scores]:
    base = make_scores(0, n=160)
    second = perturbed(base, seed=1).replace(meta={"model": "second-model"})
    ts = TemperatureScaling().fit(second)
    return {"base": base, "second": second, "second + ts": ts.transform(second)}


@pytest.fixture(scope="module")
def report(runs: dict[str, Scores]) -> Report:
    items = [
        ReportRun("base", runs["base"], file="base.parquet"),
        ReportRun("second", runs["second"], file="second.parquet"),
        ReportRun(
            "second + ts",
            runs["second + ts"],
            file="second.parquet",
            calibrator_file="ts.json",
            calibrated_from="second",
        ),
    ]
    return build_report(items, n_resamples=RESAMPLES, seed=3)


@pytest.fixture(scope="module")
def page(report: Report) -> str:
    return report.to_html()


class _Collect(HTMLParser):
    """Tags, attributes and the text of table cells keyed by (table id, data-run, data-key)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.table: str | None = None
        self.run: str | None = None
        self.key: str | None = None
        self.cells: dict[tuple[str, str, str], str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self.table = a.get("id") or ""
            self.rows.setdefault(self.table, [])
        elif tag == "tr" and self.table is not None:
            self.rows[self.table].append([])
        elif tag in ("td", "th") and self.table is not None:
            self.key = a.get("data-key")
            if a.get("data-run") is not None:
                self.run = a["data-run"]
            self.text = []

    def handle_data(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.text is not None and self.table is not None:
            text = "".join(self.text)
            self.rows[self.table][-1].append(text)
            if self.key and self.run is not None:
                self.cells[(self.table, self.run, self.key)] = text
            self.text = None
        elif tag == "tr":
            self.run = None
        elif tag == "table":
            self.table = None


def _parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


def test_data_holds_the_evaluate_numbers(report: Report, runs: dict[str, Scores]) -> None:
    data = report.data
    assert [r["name"] for r in data["runs"]] == ["base", "second", "second + ts"]
    for run in data["runs"]:
        s = runs[run["name"]]
        expected = evaluate(s, n_resamples=RESAMPLES, seed=3)
        for key in ("accuracy", "ece", "ece_ci", "mce", "smooth_ece", "brier", "nll", "auroc"):
            assert run["metrics"][key] == expected[key], key
        curve = run["selective_accuracy_curve"]
        assert curve["coverage"] == list(COVERAGE_GRID) and curve["coverage"][-1] == 1.0
        assert curve["accuracy"][-1] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert curve["accuracy"][9] == selective_accuracy(
            s.confidences(), s.correct(), coverage=0.5
        )
        assert set(run["metrics"]["subjects"]) == set(SUBJECTS)
    assert data["settings"]["n_bins"] == 15 and data["settings"]["ci"]["n_resamples"] == RESAMPLES
    assert data["has_subjects"] is True


def test_drift_pairs_rule() -> None:
    s = make_scores(1, n=10)
    names = ["a", "b", "b + cal", "c", "c + x", "c + y"]
    source = {"b + cal": "b", "c + x": "c", "c + y": "c"}
    items = [ReportRun(n, s, calibrated_from=source.get(n)) for n in names]
    # consecutive uncalibrated runs, and each calibrated run against its source
    assert drift_pairs(items) == [(0, 1), (1, 2), (1, 3), (3, 4), (3, 5)]
    with pytest.raises(ConfigError, match="not a run of this report"):
        drift_pairs([ReportRun("x", s, calibrated_from="nope")])


def test_drift_section_data(report: Report) -> None:
    entries = report.data["drift"]
    assert [(e["before"], e["after"]) for e in entries] == [
        ("base", "second"),
        ("second", "second + ts"),
    ]
    for e in entries:
        assert e["n_common"] == 160 and e["n_resamples"] == RESAMPLES
        lo, hi = e["delta_ece_ci"]
        assert lo <= hi and 0.0 <= e["p_value"] <= 1.0
        assert e["moved_up"] + e["moved_down"] + e["unchanged"] == 160
    # temperature scaling keeps every answer and moves confidences one way
    ts = entries[1]
    assert ts["answer_changed"] == 0 and min(ts["moved_up"], ts["moved_down"]) == 0


def test_runs_without_shared_questions_are_skipped_with_a_reason() -> None:
    a = make_scores(2, n=30, subjects=False)
    b = make_scores(3, n=30, ids=[f"other{i}" for i in range(30)], subjects=False)
    rep = build_report({"a": a, "b": b}, n_resamples=50)
    (entry,) = rep.data["drift"]
    assert "share no question id" in entry["skipped"] and "delta_ece" not in entry
    assert rep.data["has_subjects"] is False
    page = rep.to_html()
    assert "not compared" in page and "share no question id" in page
    assert 'id="subjects"' not in page and 'id="subject-table"' not in page
    md = rep.to_markdown()
    assert "- a → b: not compared" in md and "### Subjects" not in md


def test_json_is_the_data(report: Report) -> None:
    text = report.to_json()
    assert json.loads(text) == json.loads(json.dumps(report.data))
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded["format"] == "llmcal-report" and loaded["llmcal_version"]
    prov = loaded["runs"][2]["provenance"]
    assert prov["calibrator_file"] == "ts.json" and prov["calibrated_from"] == "second"
    assert prov["calibration"][0]["kind"] == "temperature"
    assert prov["calibration"][0]["temperature"] > 0
    assert loaded["runs"][0]["provenance"]["template"] == "daca1"


def test_markdown_tables(report: Report) -> None:
    md = report.to_markdown()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| run | n | Accuracy"))
    assert header.count("|") == len(REPORT_COLUMNS) + 2
    for run in report.data["runs"]:
        m = run["metrics"]
        row = next(line for line in lines if line.startswith(f"| {run['name']} | {m['n']} |"))
        for key, _, spec in REPORT_COLUMNS:
            assert f"| {report_cell(m, key, spec)} |" in row + " |", key
    assert "| second → second + ts | 160 |" in md
    assert "<details><summary>Per subject" in md
    assert (
        "| base | base.parquet | synthetic-model | synthetic | daca1 | letter | logits | none | 160 |"
        in md
    )


def test_markdown_escapes_pipes() -> None:
    rep = build_report({"a|b": make_scores(4, n=20, subjects=False)}, n_resamples=20)
    assert "| a\\|b | 20 |" in rep.to_markdown()


def test_html_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page and "file:" not in page
    parsed = _parse(page)
    tags = [t for t, _ in parsed.tags]
    hrefs = [a["href"] for _, a in parsed.tags if a.get("href") is not None]
    assert hrefs and all((h or "").startswith("#") for h in hrefs)  # in-page links only
    assert "link" not in tags and "iframe" not in tags and "object" not in tags
    csp = [a for t, a in parsed.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")
    assert all(a.get("src") is None for t, a in parsed.tags if t == "script")
    images = [a for t, a in parsed.tags if t == "img"]
    # overlay, panels, selective accuracy, and one confidence-shift plot per drift pair
    assert len(images) == 5
    from PIL import Image

    for a in images:
        src = a["src"] or ""
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.size == (int(a["width"] or 0), int(a["height"] or 0))
        assert min(img.size) > 100 and a.get("alt")


def test_html_summary_shows_the_eval_numbers(page: str, report: Report) -> None:
    cells = _parse(page).cells
    for run in report.data["runs"]:
        m = run["metrics"]
        for key, _, spec in REPORT_COLUMNS:
            assert cells[("summary-table", run["name"], key)] == report_cell(m, key, spec)
        assert cells[("summary-table", run["name"], "ece")] == format_cell(m, "ece", "{:.4f}")
        assert re.fullmatch(
            r"0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", cells[("summary-table", run["name"], "ece")]
        )


def test_html_subject_table_is_subject_by_run_with_cis(page: str, report: Report) -> None:
    rows = _parse(page).rows["subject-table"]
    groups, header, body = rows[0], rows[1], rows[2:]
    assert [g for g in groups if g] == ["base", "second", "second + ts"]
    assert header[:2] == ["Subject", "n"] and header.count("Gap") == 3
    assert len(body) == len(SUBJECTS)  # one row per subject, 40 questions each (>= 20)
    # sorted by the first run's ECE, each cell "value[lo, hi]" with the CI around the value
    col = header.index("ECE [95% CI]")
    eces = [float(r[col].split("[")[0]) for r in body]
    assert eces == sorted(eces, reverse=True)
    by_subject = {r[0]: r for r in body}
    s = report.runs[1].scores
    rows_bio = s.subjects == "biology"
    m = report.data["runs"][1]["metrics"]["subjects"]["biology"]
    acc_col, ece_col = 2 + 3, 2 + 3 + 1  # the "second" run's group
    acc_text = by_subject["biology"][acc_col]
    assert acc_text.startswith(f"{s.correct()[rows_bio].mean():.3f}[")
    assert by_subject["biology"][ece_col].startswith(f"{m['ece']:.3f}[")
    assert by_subject["biology"][1] == str(int(rows_bio.sum()))
    cell = report.data["subject_table"]["rows"][0]["runs"]["second"]
    assert cell["ece_ci"][0] <= cell["ece"] <= cell["ece_ci"][1]
    assert cell["accuracy_ci"][0] <= cell["accuracy"] <= cell["accuracy_ci"][1]


def test_subject_table_min_n_filter(report: Report) -> None:
    items = list(report.runs)
    small = build_report(items[:1], n_resamples=20, min_subject_n=41)
    table = small.data["subject_table"]
    assert table["rows"] == [] and sorted(table["hidden"]) == sorted(SUBJECTS)
    assert "4 smaller subjects hidden" in small.to_html()
    kept = build_report(items[:1], n_resamples=20, min_subject_n=40).data["subject_table"]
    assert len(kept["rows"]) == 4 and kept["hidden"] == []
    with pytest.raises(ConfigError, match="min_subject_n"):
        build_report(items[:1], n_resamples=20, min_subject_n=0)


def test_html_drift_and_provenance(page: str, report: Report) -> None:
    rows = _parse(page).rows
    drift = rows["drift-table"]
    assert [r[0] for r in drift[1:]] == ["base → second", "second → second + ts"]
    e = report.data["drift"][0]
    lo, hi = e["delta_ece_ci"]
    assert f"{e['delta_ece']:+.4f} [{lo:+.4f}, {hi:+.4f}]" in drift[1]
    assert str(e["moved_up"]) in drift[1] and str(e["moved_down"]) in drift[1]
    prov = {r[0]: r[1:] for r in rows["provenance-table"][1:]}
    assert prov["Model"] == ["synthetic-model", "second-model", "second-model"]
    assert prov["Scoring mode"] == ["letter"] * 3
    assert prov["What the logits are"][0].startswith("logits (raw next-token logits")
    assert prov["Calibration applied"][0] == "none"
    assert prov["Calibration applied"][2].startswith("temperature (τ = ")
    assert prov["Calibrator file"] == ["—", "—", "ts.json"]
    assert "Prompt template" in prov and "Questions (n)" in prov
    assert "paired bootstrap" in page and "seed 3" in page


def test_html_escapes_user_text() -> None:
    evil = '<script>alert("x")</script>'
    rep = build_report({evil: make_scores(5, n=20, subjects=False)}, n_resamples=20)
    page = rep.to_html()
    assert evil not in page and "&lt;script&gt;" in page
    assert page.count("<script>") == 1  # only the sorting script


def test_report_errors_and_formats(tmp_path: object) -> None:
    s = make_scores(6, n=10)
    with pytest.raises(ConfigError, match="at least one run"):
        build_report({})
    with pytest.raises(ScoresError, match="needs labelled Scores"):
        build_report({"u": s.replace(labels=np.full(10, -1))})
    with pytest.raises(ConfigError, match="unique"):
        build_report([ReportRun("x", s), ReportRun("x", s)])
    with pytest.raises(ConfigError, match="tolerance"):
        build_report({"a": s}, tolerance=2.0)
    assert [format_for_path(p) for p in ("r.html", "r.HTM", "r.json", "r.md")] == [
        "html",
        "html",
        "json",
        "md",
    ]
    with pytest.raises(ConfigError, match="cannot tell the report format"):
        format_for_path("r.pdf")
    one = build_report({"only": s}, n_resamples=20)
    assert one.data["drift"] == [] and "nothing to compare" in one.to_html()
    with pytest.raises(ConfigError, match="format"):
        one.render("pdf")


def test_the_definitions_follow_the_view_of_the_runs() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 200)
    free = Scores.from_confidence(p, (rng.uniform(size=200) < p).astype(int))
    data = build_report({"ptrue": free, "ptrue again": free}).data
    settings = data["settings"]
    assert settings["confidence"].startswith("p(answer is right)")
    assert (
        settings["brier"].startswith("binary Brier")
        and "p(answer is right)" in settings["drift"]["moves"]
    )
    mixed = build_report({"mc": make_scores(0, n=50), "free": free}).data["settings"]
    assert "multiple-choice runs" in mixed["confidence"]
    options = build_report({"mc": make_scores(0, n=50)}).data["settings"]
    assert options["confidence"].startswith("top-label confidence")
