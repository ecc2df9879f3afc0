"""Fill the Scores cache for one model, so scoring.py and posthoc.py only read it.

Run one process per model with one torch thread each (two processes × one thread use a 2-core
machine fully and, unlike two × two threads, do not thrash when something else runs):
    OMP_NUM_THREADS=1 python benchmarks/warm_cache.py smollm2-135m-instruct --limit 1000 &
    OMP_NUM_THREADS=1 python benchmarks/warm_cache.py gemma3-270m --limit 1000 &
Letter mode for every task comes first, then cloze, then CAPE (aligned model only), so an
interrupted run has the cheapest complete results (``--modes`` with no mode: CAPE only).
``--adapter DIR`` scores a LoRA fine-tune (the within-family PoLM of posthoc.py).
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
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--adapter", help="LoRA adapter directory to score on top of the model")
    ap.add_argument("--no-cape", action="store_true")
    args = ap.parse_args()
    for mode in args.modes:
        for task in args.tasks:
            cached_scores(
                args.model,
                task,
                mode,
                args.limit,
                normalization=NORMALIZATION,
                adapter=args.adapter,
            )
            print(f"\ncached {args.model} {task} {mode}", flush=True)
    if args.model == ALIGNED_MODEL and args.adapter is None and not args.no_cape:
        for task in args.tasks:
            cached_scores(args.model, task, "letter", args.limit, permutations="cyclic")
            print(f"\ncached {args.model} {task} CAPE", flush=True)


if __name__ == "__main__":
    main()
