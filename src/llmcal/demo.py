"""``llmcal demo``: measure two real LLMs, then repair the aligned one with and without labels.

1. Score the bundled aligned model (SmolLM2-135M-Instruct) and base model (Gemma-3-270M) on
   the synthetic task, offline.
2. Split the questions 30 % calibration / 70 % test (seeded).
3. Fit DACA on the calibration split *without labels* (the base model is the reference), and
   supervised temperature scaling on the same split *with* labels.
4. Print the test-split calibration of all four side by side and write a reliability diagram.
5. Free-form answers (``freeform_n`` synthetic questions asked without options): the aligned
   model answers greedily, exact match judges the answers, both models give P(True) of each
   answer, and DACA (no labels) and TS (labels) recalibrate the aligned model's P(True).

Options are scored by log-likelihood (cloze, summed over tokens): at 135M parameters the models
answer "A" to almost every question in letter mode, which measures letter bias, not knowledge.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from llmcal.models.base import Mode, Normalization
from llmcal.scores import Scores
from llmcal.tasks import synthetic_task

MODE: Mode = "cloze"
NORMALIZATION: Normalization = "sum"


def _say(text: str = "") -> None:
    print(text, flush=True)


def split_ids(ids: list[str], cal_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded calibration / test split of question ids."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_cal = round(cal_fraction * len(ids))
    cal = sorted(order[:n_cal].tolist())
    test = sorted(order[n_cal:].tolist())
    return [ids[i] for i in cal], [ids[i] for i in test]


def run_demo(
    out_dir: Path, n: int = 300, seed: int = 0, batch_size: int = 8, freeform_n: int = 40
) -> dict[str, Scores]:
    """Run the demo; returns the test-split Scores of each row of the printed table."""
    from llmcal.calibrate import DACA, TemperatureScaling
    from llmcal.metrics import evaluate
    from llmcal.models import ALIGNED_MODEL, BASE_MODEL, HFScorer
    from llmcal.report.plots import save_reliability_png
    from llmcal.report.tables import summary_table

    out_dir.mkdir(parents=True, exist_ok=True)
    task = synthetic_task(n=n, seed=seed)
    _say(
        f"llmcal demo: {len(task)} synthetic multiple-choice questions (seed {seed}); options "
        f"scored by log-likelihood ({MODE}, {NORMALIZATION})"
    )
    scored: dict[str, Scores] = {}
    scorers: dict[str, HFScorer] = {}
    for label, alias in (("aligned", ALIGNED_MODEL), ("base", BASE_MODEL)):
        _say(f"- {alias} ({label}): loading and scoring …")
        scorer = HFScorer(alias, batch_size=batch_size)
        scores = scorer.score(task, mode=MODE, normalization=NORMALIZATION)
        scored[alias] = scores
        scorers[alias] = scorer
        _say(f"  saved {scores.save(out_dir / f'{alias}.parquet')}")

    cal_ids, test_ids = split_ids(task.ids, 0.3, seed)
    polm, plm = scored[ALIGNED_MODEL], scored[BASE_MODEL]
    unlabelled = polm.by_ids(cal_ids).replace(labels=np.full(len(cal_ids), -1))
    daca = DACA().fit(target=unlabelled, reference=plm.by_ids(cal_ids))
    ts = TemperatureScaling().fit(polm.by_ids(cal_ids))
    daca.save(out_dir / "daca.json")
    ts.save(out_dir / "temperature.json")
    info = daca.fit_info_ or {}
    _say(
        f"- DACA (no labels): τ = {daca.temperature:.3f} from the {info.get('n_used')} of "
        f"{len(cal_ids)} calibration questions where both models agree"
    )
    _say(f"- temperature scaling (labels): τ = {ts.temperature:.3f}")

    test = polm.by_ids(test_ids)
    runs = {
        f"{ALIGNED_MODEL}": test,
        "+ DACA (no labels)": daca.transform(test),
        "+ TS (labels)": ts.transform(test),
        f"{BASE_MODEL} (reference)": plm.by_ids(test_ids),
    }
    results = {name: evaluate(s, n_bins=15, ci=True, seed=seed) for name, s in runs.items()}
    _say()
    _say(f"Test split ({len(test_ids)} questions):")
    _say(summary_table(results))
    png = save_reliability_png(
        {name: (s.confidences(), s.correct()) for name, s in runs.items()},
        out_dir / "reliability.png",
        n_bins=15,
        title="llmcal demo: synthetic task, test split",
    )
    _say()
    for name, r in results.items():
        gap = r["mean_confidence"] - r["accuracy"]
        verdict = "over-confident" if gap > 0 else "under-confident"
        _say(
            f"{name}: accuracy {r['accuracy']:.1%}, mean confidence {r['mean_confidence']:.1%} "
            f"→ {verdict} by {abs(gap):.1%}; ECE {r['ece']:.3f}"
        )
    _say(f"reliability diagram: {png}")
    _say(f"next: llmcal eval {out_dir / (ALIGNED_MODEL + '.parquet')} --plot diagram.png")
    if freeform_n:
        runs.update(run_freeform(out_dir, scorers, n=freeform_n, seed=seed))
    scorers.clear()
    return runs


def run_freeform(
    out_dir: Path, scorers: dict[str, Any], n: int = 40, seed: int = 0
) -> dict[str, Scores]:
    """Free-form answers: generate, judge, P(True) by both models, DACA vs TS on P(True)."""
    from llmcal.calibrate import DACA, TemperatureScaling
    from llmcal.confidence import ptrue, seqlik
    from llmcal.judge import judge_answers
    from llmcal.metrics import evaluate
    from llmcal.models import ALIGNED_MODEL, BASE_MODEL
    from llmcal.models.generate import GenerationConfig, HFGenerator, generate_answers
    from llmcal.report.tables import summary_table
    from llmcal.tasks import synthetic_open_task

    start = time.perf_counter()
    task = synthetic_open_task(n=n + 3, seed=seed)
    shots, task = task.shots_split(3, seed=seed)
    _say()
    _say(
        f"Free-form answers: {len(task)} synthetic questions asked without options; "
        f"{ALIGNED_MODEL} answers greedily (3-shot), judged by exact match against the "
        "accepted spellings"
    )
    answers, _ = generate_answers(
        HFGenerator(scorers[ALIGNED_MODEL]),
        task,
        GenerationConfig(max_new_tokens=8, seed=seed),
        shots=shots,
        progress=False,
    )
    answers = judge_answers(answers, "exact")
    answers.save(out_dir / "answers.parquet")
    for q, text, ok in list(zip(task, answers.texts, answers.correct, strict=True))[:3]:
        _say(
            f"  {q.question!r} → {text!r} ({'right' if ok == 1 else 'wrong'}; ref {q.reference!r})"
        )
    own = ptrue(scorers[ALIGNED_MODEL], answers)
    ref = ptrue(scorers[BASE_MODEL], answers)
    own.save(out_dir / "ptrue-aligned.parquet")
    ref.save(out_dir / "ptrue-base.parquet")
    cal_ids, test_ids = split_ids(list(answers.ids), 0.3, seed)
    unlabelled = own.by_ids(cal_ids).replace(labels=np.full(len(cal_ids), -1))
    daca = DACA().fit(target=unlabelled, reference=ref.by_ids(cal_ids))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ts = TemperatureScaling().fit(own.by_ids(cal_ids))
    test = own.by_ids(test_ids)
    runs = {
        "P(True) aligned": test,
        "+ DACA (no labels)": daca.transform(test),
        "+ TS (labels)": ts.transform(test),
        "P(True) base": ref.by_ids(test_ids),
        "seqlik aligned": seqlik(answers).by_ids(test_ids),
    }
    results = {name: evaluate(s, n_bins=10, ci=False) for name, s in runs.items()}
    note = " (diverged: the labels carry no signal)" if caught else ""
    _say(
        f"free-form section: {time.perf_counter() - start:.0f}s; accuracy "
        f"{answers.accuracy():.1%}; DACA τ = {daca.temperature:.3f}, TS τ = "
        f"{ts.temperature:.3f}{note} (calibration split {len(cal_ids)}); test split {len(test_ids)} "
        "answers (answer view: confidence = p(answer is right)):"
    )
    _say(summary_table(results))
    _say(
        f"next: llmcal confidence {out_dir / 'answers.parquet'} --method seqlik --out conf.parquet"
    )
    return {f"freeform {k}": v for k, v in runs.items()}
