"""llmcal.serve without a server: the selective rule, answers, request parsing, CalibratedModel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from cli_helpers import assert_user_error, run, temperature_artefact
from llmcal.calibrate import TemperatureScaling, load_calibrator
from llmcal.errors import ConfigError
from llmcal.scores import Scores
from llmcal.serve import (
    CalibratedModel,
    SelectiveRule,
    answers_from_scores,
    free_answers_from_scores,
    load_selective,
)
from llmcal.serve.app import RequestError, is_free_form, parse_free_spec, parse_spec, scrub
from llmcal.serve.core import fitted_view
from llmcal.tasks import get_template, synthetic_task

TAU = 2.0


def temperature(tau: float = TAU) -> TemperatureScaling:
    fit = {"n": 3, "n_used": 3, "task": "t", "model": "m", "template": "daca2"}
    return temperature_artefact(tau, **fit)


def test_selective_rule_loads_from_files_dicts_and_numbers(tmp_path: Path) -> None:
    f = tmp_path / "sel.json"
    f.write_text(json.dumps({"kind": "selective", "params": {"threshold": 0.7, "other": 1}}))
    rule = load_selective(f)
    assert rule.threshold == 0.7 and rule.describe()["file"] == "sel.json"
    assert rule.abstains(0.699) and not rule.abstains(0.7)
    assert load_selective({"threshold": 0.25}).threshold == 0.25
    assert load_selective(0.5).threshold == 0.5
    for bad, words in [
        ({"params": {}}, "no threshold"),
        ({"threshold": 1.5}, r"in \[0, 1\]"),
        ({"threshold": "high"}, r"in \[0, 1\]"),
        (True, "expected a threshold"),
        (tmp_path / "missing.json", "no such file"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_selective(bad)  # type: ignore[arg-type]
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_selective(tmp_path / "bad.json")


def test_answers_are_softmax_of_scaled_logits_with_padding_and_abstention() -> None:
    logits = np.array([[2.0, 1.0, 0.0, -1.0], [0.1, 0.3, -np.inf, -np.inf]])
    raw = Scores(ids=np.array(["a", "b"], dtype=object), logits=logits, labels=[-1, -1])
    answers = answers_from_scores(raw, temperature(), SelectiveRule(0.45))
    ref0 = softmax(logits[0] / TAU)
    ref1 = softmax(logits[1, :2] / TAU)
    np.testing.assert_allclose(answers[0].probs, ref0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(answers[1].probs, ref1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(answers[0].raw_probs, softmax(logits[0]), rtol=0, atol=1e-15)
    assert (answers[0].index, answers[0].letter) == (0, "A")
    assert (answers[1].index, answers[1].letter) == (1, "B") and len(answers[1].probs) == 2
    assert answers[0].confidence == pytest.approx(ref0.max(), abs=1e-15)
    assert answers[0].abstain is bool(ref0.max() < 0.45)
    assert answers[1].abstain is False  # σ(0.1) = 0.525 ≥ 0.45
    assert answers[1].confidence == pytest.approx(ref1.max())
    assert answers[0].calibrator["fit"]["template"] == "daca2"


def test_parse_spec_builds_the_question_and_rejects_bad_fields() -> None:
    q, tmpl = parse_spec(
        {"question": "2+2?", "choices": ["3", "4"], "context": "maths", "template": "daca3"},
        get_template("daca1"),
    )
    assert q.choices == ("3", "4") and q.context == "maths" and tmpl.name == "daca3"
    _, tmpl = parse_spec({"question": "x", "choices": ["a", "b"]}, get_template("daca5"))
    assert tmpl.name == "daca5"
    with pytest.raises(RequestError) as err:
        parse_spec({"question": "x", "choices": []}, get_template("daca1"))
    assert err.value.status == 422 and "at least 2" in err.value.message


def test_scrub_removes_keys_and_bearer_tokens() -> None:
    text = "upstream said: bad key sk-abc123 (header Bearer sk-abc123)"
    out = scrub(text, ["sk-abc123"])
    assert "sk-abc123" not in out and "***" in out
    assert scrub("Authorization: Bearer xyz.123", []) == "Authorization: Bearer ***"


def test_calibrated_model_uses_the_calibrator_template_and_checks_its_model() -> None:
    class Echo:
        name = "echo"

        def score(self, task, *, mode, template):  # type: ignore[no-untyped-def]
            self.template = template
            z = np.array([[float(len(c)) for c in q.choices] for q in task])
            return Scores(ids=np.array(task.ids, dtype=object), logits=z, labels=[-1] * len(task))

    echo = Echo()
    model = CalibratedModel(echo, temperature(), selective=0.9)
    a = model.ask("Which is longest?", ["a", "bbb", "cc"])
    assert echo.template.name == "daca2"  # from the calibrator's fit record
    np.testing.assert_allclose(a.probs, softmax(np.array([1.0, 3.0, 2.0]) / TAU), atol=1e-15)
    assert a.letter == "B" and a.abstain and not a.answered
    with pytest.raises(ConfigError, match=r"scorer with \.score"):
        CalibratedModel(object(), temperature())
    with pytest.raises(ConfigError, match="few-shot"):
        CalibratedModel(echo, temperature(), template="fewshot")


def test_import_llmcal_stays_light() -> None:
    code = (
        "import sys, llmcal; llmcal.CalibratedModel; import llmcal.serve; "
        "print(sorted(m for m in ('torch', 'transformers', 'starlette', 'uvicorn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_cli_reports_bad_artefacts_as_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "serve", "--upstream", "http://127.0.0.1:9/v1", "--calibrator", "nope.json"
    )
    assert_user_error(code, err, "nope.json")
    cal = temperature().save(tmp_path / "cal.json")
    code, _, err = run(
        capsys, "serve", "--upstream", "http://127.0.0.1:9/v1", "--calibrator", str(cal),
        "--selective", str(tmp_path / "sel.json"),
    )  # fmt: skip
    assert_user_error(code, err, "sel.json", "no such file")
    code, _, err = run(capsys, "serve", "--upstream", "ftp://x", "--calibrator", str(cal))
    assert_user_error(code, err, "--upstream 'ftp://x' is not an http")


@pytest.mark.model
def test_calibrated_model_equals_llmcal_score_then_apply(
    smol: object, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    task = synthetic_task(n=3, seed=9)
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in task))
    raw_path, out_path = tmp_path / "raw.parquet", tmp_path / "cal.parquet"
    code, _, err = run(
        capsys, "score", "--model", "smollm2-135m-instruct", "--task", str(data),
        "--no-shuffle", "--out", str(raw_path),
    )  # fmt: skip
    assert code == 0, err
    cal = TemperatureScaling().fit(Scores.load(raw_path))
    cal_path = cal.save(tmp_path / "cal.json")
    code, _, err = run(capsys, "apply", str(cal_path), str(raw_path), "--out", str(out_path))
    assert code == 0, err
    applied = Scores.load(out_path)
    model = CalibratedModel(smol, cal_path, selective=0.6)
    answers = model.ask_many(list(task))
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a.probs, applied.probs()[i], rtol=0, atol=1e-9)
        assert a.index == int(applied.predictions()[i])
        assert a.abstain is bool(applied.confidences()[i] < 0.6)
    assert answers[0].calibrator["file"] == "cal.json"
    assert load_calibrator(cal_path).kind == answers[0].calibrator["kind"] == "temperature"


def test_selective_artefacts_from_llmcal_fit_selective_drive_the_rule(tmp_path: Path) -> None:
    from llmcal import Scores
    from llmcal.calibrate import SelectiveRisk

    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.0, 3000)
    cal = Scores.from_confidence(c, correct=rng.random(3000) >= 1.2 * (1 - c))
    fitted = SelectiveRisk(risk=0.15, delta=0.05).fit(cal)
    fitted.save(tmp_path / "sel.json")
    rule = load_selective(tmp_path / "sel.json")
    assert fitted.threshold is not None and rule.threshold == pytest.approx(fitted.threshold)
    assert rule.abstains(fitted.threshold - 1e-9) and not rule.abstains(fitted.threshold)
    with pytest.warns(UserWarning, match="answers nothing"):
        none = SelectiveRisk(risk=0.001, delta=0.05).fit(cal)
    none.save(tmp_path / "none.json")
    nothing = load_selective(tmp_path / "none.json")
    assert nothing.threshold is None and nothing.abstains(1.0)  # a rule that answers nothing


def answer_view_temperature(tau: float = TAU) -> TemperatureScaling:
    return temperature_artefact(tau, n=3, n_used=3, model="m", view="answer")


def test_free_answers_are_scaled_p_true_with_abstention() -> None:
    lf, lt = np.array([0.0, -1.0, 2.0]), np.array([1.5, 0.5, -2.0])
    raw = Scores(
        ids=np.array(["a", "b", "c"], dtype=object),
        logits=np.stack([lf, lt], axis=1),
        labels=[-1, -1, -1],
        meta={"view": "answer"},
    )
    out = free_answers_from_scores(
        raw, ["x", "y", ""], answer_view_temperature(), SelectiveRule(0.6)
    )
    want = 1.0 / (1.0 + np.exp(-(lt - lf) / TAU))
    np.testing.assert_allclose([a.confidence for a in out], want, rtol=0, atol=1e-15)
    np.testing.assert_allclose([a.raw_confidence for a in out], 1 / (1 + np.exp(lf - lt)))
    assert [a.abstain for a in out] == [bool(w < 0.6) for w in want]
    assert out[2].answer == "" and out[0].to_dict()["kind"] == "free-form"


def test_parse_free_spec_and_the_view_of_a_calibrator() -> None:
    assert is_free_form({"question": "q"}) and not is_free_form({"question": "q", "choices": []})
    assert parse_free_spec({"question": "Capital?", "answer": "Paris", "id": "7"}) == (
        "7",
        "Capital?",
        None,
        "Paris",
    )
    with pytest.raises(RequestError, match="multiple-choice requests"):
        parse_free_spec({"question": "q", "template": "daca1"})
    assert fitted_view(answer_view_temperature()) == "answer"
    assert fitted_view(temperature()) is None  # an older artefact: no view recorded, allowed
    fitted = TemperatureScaling().fit(
        Scores(
            ids=np.array(["a", "b", "c"], dtype=object),
            logits=[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
            labels=[1, 0, 0],
        )
    )
    assert fitted_view(fitted) == "options"  # every fit now records its view
    with pytest.raises(ConfigError, match="ask_open"):
        CalibratedModel(_Echo(), answer_view_temperature()).ask("q", ["a", "b"])
    with pytest.raises(ConfigError, match="multiple-choice Scores"):
        CalibratedModel(_Echo(), fitted).ask_open("q", "a")


class _Echo:
    name = "echo"

    def score(self, task, *, mode, template):  # type: ignore[no-untyped-def]
        z = np.zeros((len(task), 2))
        return Scores(ids=np.array(task.ids, dtype=object), logits=z, labels=[-1] * len(task))


@pytest.mark.model
def test_ask_open_in_process_equals_generate_confidence_apply(
    smol: object, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from llmcal.tasks import save_open_jsonl, synthetic_open_task

    task = synthetic_open_task(n=3, seed=4)
    data = save_open_jsonl(task, tmp_path / "open.jsonl")
    ans, raw, out = tmp_path / "a.parquet", tmp_path / "p.parquet", tmp_path / "c.parquet"
    model = ["--model", "smollm2-135m-instruct"]
    code, _, err = run(capsys, "generate", *model, "--task", str(data), "--out", str(ans))
    assert code == 0, err
    code, _, err = run(
        capsys, "confidence", str(ans), "--method", "ptrue", *model, "--out", str(raw)
    )
    assert code == 0, err
    cal = answer_view_temperature(1.3).save(tmp_path / "ptrue-cal.json")
    code, _, err = run(capsys, "apply", str(cal), str(raw), "--out", str(out))
    assert code == 0, err
    from llmcal.answers import Answers

    answers, applied = Answers.load(ans), Scores.load(out)
    row = {qid: j for j, qid in enumerate(answers.ids)}
    cm = CalibratedModel(smol, cal, selective=0.5)
    for q in task:
        got = cm.ask_open(q.question)  # generated in-process, then judged
        i = row[q.id]
        assert got.answer == answers.texts[i]
        # one question alone vs a left-padded batch of three: float32 rounding only
        assert got.confidence == pytest.approx(applied.confidences()[i], abs=1e-5)
        assert got.abstain is (got.confidence < 0.5)
