"""Calibration of the two bundled models on real tasks, letter and cloze.

Writes benchmarks/results/scoring.{json,md}. Scores are cached in benchmarks/cache/ so the
post-hoc benchmark reuses them. Usage: python benchmarks/scoring.py [--limit 500]
"""

from __future__ import annotations

import argparse

from common import cached_scores, md_table, write_results
from llmcal.metrics import evaluate
from llmcal.models import ALIGNED_MODEL, BASE_MODEL

TASKS = ("arc_easy", "openbook_qa", "mmlu")


def main() -> None:
    """Score, evaluate, write the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--models", nargs="+", default=[ALIGNED_MODEL, BASE_MODEL])
    args = ap.parse_args()
    runs = []
    for model in args.models:
        for task in args.tasks:
            for mode in ("letter", "cloze"):
                s = cached_scores(model, task, mode, args.limit, normalization="sum")
                assert s is not None  # computed when missing
                r = evaluate(s, n_bins=15, ci=True, seed=0)
                r10 = evaluate(s, n_bins=10, ci=False)
                runs.append(
                    {
                        "model": model,
                        "task": task,
                        "mode": mode,
                        "n": len(s),
                        "accuracy": r["accuracy"],
                        "mean_confidence": r["mean_confidence"],
                        "ece15": r["ece"],
                        "ece15_ci": r["ece_ci"],
                        "ece10": r10["ece"],
                        "brier": r["brier"],
                        "nll": r["nll"],
                        "auroc": r["auroc"],
                    }
                )
    rows = [
        [
            r["model"],
            r["task"],
            r["mode"],
            r["n"],
            f"{r['accuracy']:.3f}",
            f"{r['mean_confidence']:.3f}",
            f"{r['ece15']:.3f} [{r['ece15_ci'][0]:.3f}, {r['ece15_ci'][1]:.3f}]",
            f"{r['ece10']:.3f}",
            f"{r['brier']:.3f}",
            f"{r['auroc']:.3f}",
        ]
        for r in runs
    ]
    md = "# Bundled models on real tasks (CPU, 2 cores)\n\n"
    md += (
        f"Seeded subsets (seed 0, at most {args.limit} questions per task), template daca1, "
        "cloze = summed log-likelihood of the option text, batch size 8, float32 on CPU. ECE with 15 "
        "equal-width bins and its 95 % bootstrap CI (1000 resamples); ECE10 = 10 bins. "
        "Scoring speed: see throughput.md.\n\n"
    )
    md += md_table(
        [
            "model",
            "task",
            "mode",
            "n",
            "acc",
            "conf",
            "ECE15 [95% CI]",
            "ECE10",
            "Brier",
            "AUROC",
        ],
        rows,
    )
    write_results("scoring", {"limit": args.limit, "runs": runs}, md)


if __name__ == "__main__":
    main()
