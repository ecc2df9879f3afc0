"""``llmcal import lm-eval``: lm-evaluation-harness --log_samples output becomes Scores.

The fixture is a real lm-eval 0.4.13 run on the bundled SmolLM2 (tests/fixtures/lm_eval/README.md);
the imported numbers are checked against llmcal's own HFScorer on the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmcal.cli import main
from llmcal.errors import DataError
from llmcal.interop.lm_eval import read_lm_eval_samples, redact_model_args
from llmcal.scores import Scores, log_softmax

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lm_eval" / "smollm2"
CLOZE = next(FIXTURES.glob("samples_llmcal_arc_easy_cloze_*.jsonl"))
LETTER = next(FIXTURES.glob("samples_llmcal_arc_easy_letter_*.jsonl"))


def raw_samples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_import_reads_the_numbers_labels_and_provenance_lm_eval_wrote() -> None:
    s = read_lm_eval_samples(CLOZE)
    raw = sorted(raw_samples(CLOZE), key=lambda r: r["doc_id"])
    assert len(s) == len(raw) == 12
    assert s.ids.tolist() == [r["doc"]["id"] for r in raw]  # doc.id: joins llmcal's own runs
    for i, r in enumerate(raw):
        assert s.logits[i].tolist() == [float(v[0]) for v in r["filtered_resps"]]
        assert s.labels[i] == int(r["target"]) == r["doc"]["answer"]
    # lm-eval's own per-sample acc is our argmax == label
    assert s.correct().tolist() == [bool(r["acc"]) for r in raw]
    meta = s.meta
    assert meta["task"] == "llmcal_arc_easy_cloze" and meta["backend"] == "lm-eval"
    assert meta["mode"] == "cloze" and meta["logit_kind"] == "loglikelihood"
    assert meta["model"].split("/")[-1].startswith("SmolLM2-135M-Instruct")
    lm = meta["lm_eval"]
    assert lm["version"] == "0.4.13" and lm["model"] == "hf"
    assert lm["model_args"]["dtype"] == "float32"
    assert lm["output_type"] == "multiple_choice" and lm["target_delimiter"] == ""
    assert lm["results_file"].startswith("results_") and lm["num_fewshot"] == 0
    assert meta["example_prompt"].startswith("Question: ") and meta["example_prompt"].endswith(
        "\nAnswer:"
    )
    letter = read_lm_eval_samples(LETTER)
    assert letter.meta["mode"] == "letter" and letter.ids.tolist() == s.ids.tolist()


@pytest.mark.model
def test_imported_scores_equal_llmcals_own_scoring_of_the_same_prompts(
    smol: Any, data_dir: Path
) -> None:
    from llmcal.tasks import get_template, load_task

    cloze, letter = read_lm_eval_samples(CLOZE), read_lm_eval_samples(LETTER)
    task = load_task("arc_easy", data_dir=data_dir).select(cloze.ids.tolist())
    tmpl = get_template("daca1")
    by_id = {r["doc"]["id"]: r for r in raw_samples(CLOZE)}
    by_id_letter = {r["doc"]["id"]: r for r in raw_samples(LETTER)}
    for q in task:  # lm-eval saw exactly llmcal's prompt strings
        context, conts = tmpl.cloze(q)
        args = by_id[q.id]["arguments"]
        assert [args[f"gen_args_{j}"]["arg_0"] for j in range(len(conts))] == [context] * len(conts)
        assert [args[f"gen_args_{j}"]["arg_1"] for j in range(len(conts))] == conts
        assert by_id_letter[q.id]["arguments"]["gen_args_0"]["arg_0"] == tmpl.letter_prompt(q)

    ours = smol.score(task, mode="cloze", template=tmpl, normalization="sum")
    diff = float(np.max(np.abs(ours.logits - cloze.logits)))
    print(f"cloze: max |lm-eval - llmcal| = {diff:.2e}")
    assert diff < 1e-4
    assert np.array_equal(ours.predictions(), cloze.predictions())

    # letter: llmcal keeps raw option logits, lm-eval full-vocabulary log-probs of " A" … " D";
    # they differ by one constant per row, so compare the log-softmax over the options
    ours_l = smol.score(task, mode="letter", template=tmpl)
    diff_l = float(np.max(np.abs(log_softmax(ours_l.logits) - log_softmax(letter.logits))))
    print(f"letter: max |lm-eval - llmcal| after normalising = {diff_l:.2e}")
    assert diff_l < 1e-4
    assert np.array_equal(ours_l.predictions(), letter.predictions())


def test_acc_norm_divides_by_the_choice_length() -> None:
    s = read_lm_eval_samples(LETTER, normalization="acc_norm")
    raw = sorted(raw_samples(LETTER), key=lambda r: r["doc_id"])
    # letter task: continuation " A", delimiter " ": lm-eval's acc_norm length is len("A") = 1
    assert s.logits[0].tolist() == [float(v[0]) for v in raw[0]["filtered_resps"]]
    c = read_lm_eval_samples(CLOZE, normalization="acc_norm")
    raw_c = sorted(raw_samples(CLOZE), key=lambda r: r["doc_id"])
    for i, r in enumerate(raw_c):
        conts = [r["arguments"][f"gen_args_{j}"]["arg_1"] for j in range(len(r["filtered_resps"]))]
        want = [float(v[0]) / len(t) for v, t in zip(r["filtered_resps"], conts, strict=True)]
        np.testing.assert_allclose(c.logits[i], want, rtol=1e-15)
    assert c.meta["normalization"] == "acc_norm"


def test_cli_import_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.parquet"
    assert main(["import", "lm-eval", str(CLOZE), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "imported 12 questions (lm-eval 0.4.13, results file results_" in text
    assert "accuracy 0.5833" in text  # lm-eval reported acc 0.5833 for this run
    s = Scores.load(out)
    assert s.meta["lm_eval"]["version"] == "0.4.13"
    assert main(["eval", str(out), "--no-ci"]) == 0
    assert "accuracy" in capsys.readouterr().out


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_without_the_results_file_and_with_doc_id_ids(tmp_path: Path) -> None:
    rows = raw_samples(CLOZE)
    f = _write(tmp_path / "samples.jsonl", rows)
    s = read_lm_eval_samples(f, id_field="doc_id", task="arc")
    assert s.ids.tolist() == [str(i) for i in range(12)]
    assert s.meta["lm_eval"]["results_file"] is None and s.meta["model"] is None
    assert s.meta["task"] == "arc" and s.meta["id_source"] == "doc_id"


def test_text_targets_several_filters_and_bad_samples(tmp_path: Path) -> None:
    rows = raw_samples(CLOZE)[:3]
    for r in rows:  # target given as the right choice's text
        idx = int(r["target"])
        r["target"] = r["arguments"][f"gen_args_{idx}"]["arg_1"].strip()
    s = read_lm_eval_samples(_write(tmp_path / "a.jsonl", rows))
    assert s.labels.tolist() == [r["doc"]["answer"] for r in rows]

    two = [*rows, {**rows[0], "filter": "other"}]
    with pytest.raises(DataError, match=r"several filters \['none', 'other'\]; pick one"):
        read_lm_eval_samples(_write(tmp_path / "b.jsonl", two))
    assert len(read_lm_eval_samples(tmp_path / "b.jsonl", filter_name="other")) == 1

    gen = {"doc_id": 0, "doc": {}, "target": "x", "arguments": {"gen_args_0": {
        "arg_0": "Q?", "arg_1": {"until": ["\n"]}}}, "filtered_resps": ["answer"]}  # fmt: skip
    with pytest.raises(DataError, match=r"c\.jsonl:1: .*not a multiple-choice task"):
        read_lm_eval_samples(_write(tmp_path / "c.jsonl", [gen]))
    bad = {**rows[0], "filtered_resps": rows[0]["filtered_resps"][:2]}
    with pytest.raises(DataError, match="one response per option"):
        read_lm_eval_samples(_write(tmp_path / "d.jsonl", [bad]))
    worse = {**rows[0], "target": "9"}
    with pytest.raises(DataError, match=r"target 9 is outside 0\.\.3"):
        read_lm_eval_samples(_write(tmp_path / "e.jsonl", [worse]))
    (tmp_path / "f.jsonl").write_text('{"doc_id": 0\n')
    with pytest.raises(DataError, match=r"f\.jsonl:1: not valid JSON"):
        read_lm_eval_samples(tmp_path / "f.jsonl")
    with pytest.raises(DataError, match="no such lm-eval samples file"):
        read_lm_eval_samples(tmp_path / "missing.jsonl")


def test_cli_errors_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _write(tmp_path / "bad.jsonl", [{"doc_id": 0, "doc": {}, "target": "0"}])
    out = tmp_path / "run.parquet"
    assert main(["import", "lm-eval", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmcal: error: ") and err.count("\n") == 1 and "bad.jsonl:1" in err
    assert not out.exists()


def test_secrets_in_model_args_are_not_kept() -> None:
    assert redact_model_args("pretrained=org/m,token=hf_abc,dtype=float32") == (
        "pretrained=org/m,token=***,dtype=float32"
    )
    assert redact_model_args({"pretrained": "m", "api_key": "sk-1"}) == {
        "pretrained": "m",
        "api_key": "***",
    }
