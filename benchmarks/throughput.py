"""Scoring throughput of HFScorer on the bundled models (questions/s), letter and cloze.

Run it on a quiet machine: absolute times on a shared 2-core box are noise, so each cell is the
best of ``--repeats`` runs. Writes benchmarks/results/throughput.{json,md}.
Usage: python benchmarks/throughput.py [--n 200] [--batch-sizes 1 8 16]
"""

from __future__ import annotations

import argparse
import time

from common import DATA_DIR, md_table, scorer, write_results
from llmcal.models import ALIGNED_MODEL, BASE_MODEL
from llmcal.tasks import get_template, load_task


def main() -> None:
    """Time scoring of a fixed MMLU subset per model, mode and batch size."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--task", default="mmlu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    task = load_task(args.task, data_dir=DATA_DIR).subset(args.n, seed=0)
    template = get_template("daca1")
    runs = []
    for model in (ALIGNED_MODEL, BASE_MODEL):
        s = scorer(model)
        s.progress = False
        tokens = sum(len(s._encode(s.render_letter(q, template), False)) for q in task)
        for mode in ("letter", "cloze"):
            for bs in args.batch_sizes:
                s.batch_size = bs
                best = min(_time(s, task, mode) for _ in range(args.repeats))
                runs.append(
                    {"model": model, "mode": mode, "batch_size": bs, "n": len(task),
                     "seconds": best, "questions_per_s": len(task) / best,
                     "letter_prompt_tokens_per_s": tokens / best if mode == "letter" else None}
                )  # fmt: skip
                print(runs[-1], flush=True)
    rows = [
        [r["model"], r["mode"], r["batch_size"], f"{r['questions_per_s']:.2f}",
         f"{r['letter_prompt_tokens_per_s']:.0f}" if r["letter_prompt_tokens_per_s"] else "–"]
        for r in runs
    ]  # fmt: skip
    md = "# Scoring throughput (CPU, float32)\n\n"
    md += (
        f"{len(task)} {args.task} questions (seed 0), template daca1, cloze = summed "
        f"log-likelihood of each option (K sequences per question). Best of {args.repeats} runs; "
        "model loading excluded.\n\n"
    )
    md += md_table(["model", "mode", "batch", "questions/s", "prompt tokens/s"], rows)
    write_results("throughput", {"task": args.task, "runs": runs}, md)


def _time(s, task, mode: str) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    s.score(task, mode=mode, normalization="sum")
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
