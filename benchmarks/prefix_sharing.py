"""What sharing prompt prefixes saves: letter batches and CAPE orderings, same outputs.

On one seeded subset, one torch thread, SmolLM2-135M-Instruct, daca1 template:

* letter mode with the batch's common prefix (the template instruction) run once vs every
  prompt run whole (``SHARED_PREFIX_MIN`` set out of reach);
* CAPE (4 cyclic orderings): ``HFScorer.score_permuted`` (each question's shared prefix run
  once) vs the generic loop of one full letter pass per ordering.

Times are CPU-seconds of this process (``time.process_time``): ratios stay meaningful on a
busy machine. Writes benchmarks/results/prefix_sharing.{json,md}.
Usage: OMP_NUM_THREADS=1 python benchmarks/prefix_sharing.py [--n 100] [--task mmlu]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import llmcal.models.hf as hf
from common import DATA_DIR, RESULTS, md_table, scorer, write_results
from llmcal._io import atomic_write_text
from llmcal.models import ALIGNED_MODEL
from llmcal.models.cape import score_cape
from llmcal.scores import Scores
from llmcal.tasks import load_task


class _PlainScorer:
    """The scorer without score_permuted: score_cape falls back to one pass per ordering."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def score(self, task: Any, **kwargs: Any) -> Scores:
        return self.inner.score(task, **kwargs)


def cpu_time(fn: Callable[[], Scores]) -> tuple[float, Scores]:
    """CPU-seconds of one call and its result."""
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def main() -> None:
    """Time both variants of letter scoring and of CAPE on the same questions."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--tasks", nargs="+", default=["mmlu", "boolq"])
    ap.add_argument("--render", action="store_true", help="only re-render the saved JSON")
    args = ap.parse_args()
    if args.render:
        payload = json.loads((RESULTS / "prefix_sharing.json").read_text())
        atomic_write_text(RESULTS / "prefix_sharing.md", render(payload) + "\n")
        return
    s = scorer(ALIGNED_MODEL)
    s.progress = False
    rows: list[dict[str, Any]] = []
    for name in args.tasks:
        task = load_task(name, data_dir=DATA_DIR).subset(args.n, seed=0)
        s.score(load_task(name, data_dir=DATA_DIR).subset(8, seed=1))  # warm-up
        shared_min = hf.SHARED_PREFIX_MIN
        t_shared, a = cpu_time(lambda t=task: s.score(t))
        hf.SHARED_PREFIX_MIN = 1 << 30
        try:
            t_whole, b = cpu_time(lambda t=task: s.score(t))
        finally:
            hf.SHARED_PREFIX_MIN = shared_min
        rows.append(
            _row(name, "letter: batch prefix once vs whole prompts", t_shared, t_whole, a, b)
        )
        t_perm, c = cpu_time(lambda t=task: score_cape(s, t))
        t_loop, d = cpu_time(lambda t=task: score_cape(_PlainScorer(s), t))
        rows.append(_row(name, "CAPE: score_permuted vs K letter passes", t_perm, t_loop, c, d))
        for r in rows[-2:]:
            print(f"{name} {r['what']}: {r['cpu_s_shared']:.1f} vs {r['cpu_s_plain']:.1f} CPU-s "
                  f"({r['speedup']:.2f}x), max |diff| {r['max_abs_diff']:.1e}", flush=True)  # fmt: skip
    payload = {"n": args.n, "model": ALIGNED_MODEL, "batch_size": s.batch_size, "rows": rows}
    payload["torch_threads"] = torch.get_num_threads()
    write_results("prefix_sharing", payload, render(payload))


def render(payload: dict[str, Any]) -> str:
    """The Markdown table of a results payload."""
    rows = payload["rows"]
    return "\n".join(
        [
            "# Prompt-prefix sharing: CPU time at identical outputs",
            "",
            f"{payload['model']}, {payload['n']} seeded questions per task, template daca1, "
            f"batch size {payload.get('batch_size', 8)}, {payload.get('torch_threads', 1)} torch "
            "thread(s); CPU-seconds of the scoring call (process_time). max \\|diff\\|: largest "
            "difference of a letter logit (letter) or averaged log-probability (CAPE) between the "
            "two variants; the argmax is identical (asserted).",
            "",
            md_table(
                ["task", "comparison", "shared CPU-s", "plain CPU-s", "speedup", "max \\|diff\\|"],
                [[r["task"], r["what"], f"{r['cpu_s_shared']:.1f}", f"{r['cpu_s_plain']:.1f}",
                  f"{r['speedup']:.2f}×", f"{r['max_abs_diff']:.1e}"] for r in rows],
            ),
        ]
    )  # fmt: skip


def _row(task: str, what: str, shared: float, plain: float, a: Scores, b: Scores) -> dict[str, Any]:
    finite = np.isfinite(a.logits)
    assert (finite == np.isfinite(b.logits)).all() and (a.predictions() == b.predictions()).all()
    diff = float(np.abs(a.logits[finite] - b.logits[finite]).max())
    return {"task": task, "what": what, "cpu_s_shared": shared, "cpu_s_plain": plain,
            "speedup": plain / shared, "max_abs_diff": diff}  # fmt: skip


if __name__ == "__main__":
    main()
