"""``llmcal demo``: measure two real LLMs, then repair the aligned one with and without labels.

1. Score the bundled aligned model (SmolLM2-135M-Instruct) and base model (Gemma-3-270M) on
   the synthetic task, offline.
2. Split the questions 30 % calibration / 70 % test (seeded).
3. Fit DACA on the calibration split *without labels* (the base model is the reference), and
   supervised temperature scaling on the same split *with* labels.
4. Print the test-split calibration of all four side by side and write a reliability diagram.

Options are scored by log-likelihood (cloze, summed over tokens): at 135M parameters the models
answer "A" to almost every question in letter mode, which measures letter bias, not knowledge.
"""

from __future__ import annotations

from pathlib import Path

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


def run_demo(out_dir: Path, n: int = 300, seed: int = 0, batch_size: int = 8) -> dict[str, Scores]:
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
    for label, alias in (("aligned", ALIGNED_MODEL), ("base", BASE_MODEL)):
        _say(f"- {alias} ({label}): loading and scoring …")
        scorer = HFScorer(alias, batch_size=batch_size)
        scores = scorer.score(task, mode=MODE, normalization=NORMALIZATION)
        scored[alias] = scores
        _say(f"  saved {scores.save(out_dir / f'{alias}.parquet')}")
        del scorer

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
    return runs
