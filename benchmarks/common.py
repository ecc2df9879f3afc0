"""Shared benchmark plumbing: data location, a Scores cache on disk, result writers."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmcal._io import atomic_write_text
from llmcal.scores import Scores

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LLMCAL_DATA_DIR", ROOT.parent / "shared" / "data"))
CACHE = ROOT / "benchmarks" / "cache"
RESULTS = ROOT / "benchmarks" / "results"

_scorers: dict[str, Any] = {}


def scorer(model: str, batch_size: int = 8) -> Any:
    """One HFScorer per model for the whole benchmark process."""
    if model not in _scorers:
        from llmcal.models import HFScorer

        _scorers[model] = HFScorer(model, batch_size=batch_size, progress=True)
    return _scorers[model]


def cached_scores(
    model: str,
    task: str,
    mode: str,
    limit: int | None,
    seed: int = 0,
    template: str = "daca1",
    normalization: str = "mean",
    adapter: str | None = None,
    permutations: str | None = None,
    compute: bool = True,
) -> Scores | None:
    """Scores of ``model`` on a seeded subset of ``task``, computed once and cached as Parquet.

    ``meta["seconds"]`` holds the scoring wall time of the run that produced the file (None when
    sliced from a larger cached run or extended from a smaller one). Speed figures come from
    throughput.py, not from here.
    With ``compute=False`` a run that is not in the cache gives None instead of being scored.
    """
    from llmcal.tasks import load_task

    tag = "-".join(
        str(p)
        for p in (
            model,
            task,
            mode,
            normalization if mode == "cloze" else "",
            template,
            limit,
            seed,
        )
        if p != ""
    )
    if adapter:
        tag += "-" + Path(adapter).name
    if permutations:
        tag += f"-cape-{permutations}"
    path = CACHE / f"{tag}.parquet"
    if path.is_file():
        return Scores.load(path)
    t = load_task(task, data_dir=DATA_DIR).subset(limit, seed=seed)
    wanted = set(t.ids)
    # subset(limit, seed) is a prefix of one seeded shuffle, so a cached run with a larger limit
    # holds exactly these questions (slice it) and one with a smaller limit holds a prefix of
    # them (score only the rest)
    head: Scores | None = None
    head_ids: set[str] = set()
    for other in sorted(
        CACHE.glob(f"{tag.replace(f'-{limit}-{seed}', '-*-' + str(seed))}.parquet")
    ):
        cached = Scores.load(other)
        ids = set(cached.ids.tolist())
        if wanted <= ids:
            return cached.by_ids(t.ids).replace(meta={"seconds": None, "sliced_from": other.name})
        if ids <= wanted and len(ids) > len(head_ids):
            head, head_ids = cached.replace(meta={"extended_from": other.name}), ids
    if not compute:
        return None
    rest = t.select([i for i in t.ids if i not in head_ids])
    s = scorer(model) if adapter is None else _adapter_scorer(model, adapter)
    start = time.perf_counter()
    kwargs = {"mode": mode, "template": template, "normalization": normalization}
    if permutations:
        from llmcal.models.cape import score_cape

        scores = score_cape(s, rest, permutations=permutations, **kwargs)  # type: ignore[arg-type]
    else:
        scores = s.score(rest, **kwargs)
    elapsed = time.perf_counter() - start
    if head is None:
        scores = scores.replace(meta={"seconds": elapsed})
    else:
        scores = Scores.concat([head, scores], meta={**head.meta, "seconds": None})
        scores = scores.by_ids(t.ids)
    scores.save(path)
    return scores


def _adapter_scorer(model: str, adapter: str) -> Any:
    from llmcal.models import HFScorer

    key = f"{model}+{adapter}"
    if key not in _scorers:
        _scorers[key] = HFScorer(model, adapter=adapter, batch_size=8, progress=True)
    return _scorers[key]


def environment() -> dict[str, Any]:
    """Where a figure was measured."""
    import numpy as np
    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = [
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/NAME.json and NAME.md, written atomically."""
    payload = {"benchmark": name, "environment": environment(), **payload}
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", markdown.rstrip() + "\n")
    print(markdown)
