"""The Guarantees section of the report: conformal coverage and the selective risk bound."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from synthetic_runs import make_scores

from cli_helpers import assert_user_error, run
from llmcal.calibrate import ConformalPredictor, SelectiveRisk
from llmcal.calibrate.conformal import set_coverage
from llmcal.calibrate.selective_risk import selective_summary
from llmcal.errors import ConfigError
from llmcal.report.data import build_report
from llmcal.report.guarantees import guarantees_data

FAST = ("--resamples", "100")


@pytest.fixture(scope="module")
def fitted() -> tuple[ConformalPredictor, SelectiveRisk, SelectiveRisk]:
    cal = make_scores(10, n=600, sharpness=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nothing = SelectiveRisk(0.001, 0.05).fit(cal)
    return ConformalPredictor(0.2).fit(cal), SelectiveRisk(0.3, 0.1).fit(cal), nothing


def test_section_numbers_match_the_library(
    fitted: tuple[ConformalPredictor, SelectiveRisk, SelectiveRisk],
) -> None:
    cp, sel, _ = fitted
    test = make_scores(11, n=300, sharpness=1.0)
    g = guarantees_data("test", test, cp, sel)
    report = build_report({"test": test}, n_resamples=50, guarantees=g)
    data = json.loads(report.to_json())["guarantees"]
    assert data["conformal"]["coverage"] == set_coverage(cp.predict_sets(test))["coverage"]
    assert data["selective"]["coverage"] == selective_summary(sel.decide(test))["coverage"]
    html = report.to_html()
    section = html[html.index('<section id="guarantees">') :]
    section = section[: section.index("</section>")]
    assert len(re.findall(r'<img src="data:image/png;base64,', section)) == 2
    assert f"{data['conformal']['coverage']:.4f}" in section
    assert f"{data['selective']['threshold']:.4g}" in section
    assert '<a href="#guarantees">Guarantees</a>' in html
    md = report.to_markdown()
    assert "### Guarantees" in md and f"{data['conformal']['mean_size']:.3f}" in md
    with pytest.raises(ConfigError, match="not in the report"):
        build_report({"other": test}, n_resamples=50, guarantees=g)


def test_no_guarantees_no_section() -> None:
    html = build_report({"a": make_scores(1, n=60)}, n_resamples=20).to_html()
    assert 'id="guarantees"' not in html and "#guarantees" not in html


def test_cli_report_and_answers_nothing(
    fitted: tuple[ConformalPredictor, SelectiveRisk, SelectiveRisk],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cp, _, nothing = fitted
    run_path = tmp_path / "test.parquet"
    make_scores(12, n=200, sharpness=1.0).save(run_path)
    cp.save(tmp_path / "cp.json")
    nothing.save(tmp_path / "sel.json")
    out = tmp_path / "r.html"
    code, _, err = run(capsys, "report", str(run_path), "--conformal", str(tmp_path / "cp.json"),
                       "--selective", str(tmp_path / "sel.json"), *FAST, "--out", str(out))  # fmt: skip
    assert code == 0, err
    html = out.read_text()
    assert "none (answers nothing)" in html and "Conformal prediction sets" in html
    # a conformal artefact passed as --selective is refused in one line, with no report written
    bad = tmp_path / "bad.html"
    code, _, err = run(capsys, "report", str(run_path), "--selective", str(tmp_path / "cp.json"),
                       *FAST, "--out", str(bad))  # fmt: skip
    assert_user_error(code, err, "holds a 'conformal' guarantee")
    assert not bad.exists()
