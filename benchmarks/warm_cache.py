"""Fill the Scores cache for one model, so scoring.py and posthoc.py only read it.

Run one process per model with one torch thread each (two processes × one thread use a 2-core
machine fully and, unlike two × two threads, do not thrash when something else runs):
    OMP_NUM_THREADS=1 python benchmarks/warm_cache.py smollm2-135m-instruct &
    OMP_NUM_THREADS=1 python benchmarks/warm_cache.py gemma3-270m &
"""

from __future__ import annotations

import argparse

from common import cached_scores
from llmcal.models import ALIGNED_MODEL
from posthoc import MODES, NORMALIZATION, TASKS


def main() -> None:
    """Score every task and mode the benchmarks use (CAPE for the aligned model)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    args = ap.parse_args()
    for task in args.tasks:
        for mode in MODES:
            cached_scores(args.model, task, mode, args.limit, normalization=NORMALIZATION)
            print(f"cached {args.model} {task} {mode}", flush=True)
    if args.model == ALIGNED_MODEL:
        for task in args.tasks:
            cached_scores(args.model, task, "letter", args.limit, permutations="cyclic")
            print(f"cached {args.model} {task} CAPE", flush=True)


if __name__ == "__main__":
    main()
