"""Seeded, optionally stratified splits of Scores (``llmcal split``), written atomically.

Score a task once, then split the Scores into e.g. a calibration and a test part: the calibrator
is fitted on one and measured on the other. Without stratification the split is the one
:meth:`llmcal.tasks.Task.split` makes of the same questions in the same order (same seed, same
fractions: floor sizes, the remainder to the last split). Stratified by subject (the default when
the Scores have subjects) or by label, each stratum is shuffled and cut on its own: its share of
each split is rounded down or up, so that the split sizes are those of the whole set (rounded by
largest remainder) and every split gets each subject in the right proportion, to within one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_path
from llmcal.errors import ConfigError
from llmcal.scores import Scores

STRATIFY = ("auto", "subject", "label", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_fractions(text: str) -> dict[str, float]:
    """``"cal=0.3,test=0.7"`` → ``{"cal": 0.3, "test": 0.7}`` (validated)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(
                f"--fractions {text!r}: expected NAME=FRACTION pairs, e.g. cal=0.3,test=0.7"
            )
        try:
            out_value = float(value)
        except ValueError:
            raise ConfigError(f"--fractions {text!r}: {value.strip()!r} is not a number") from None
        if name in out:
            raise ConfigError(f"--fractions {text!r}: split name {name!r} appears twice")
        out[name] = out_value
    check_fractions(out)
    return out


def check_fractions(fractions: Mapping[str, float]) -> None:
    """Names safe as file names and unique; fractions positive and summing to 1."""
    if len(fractions) < 2:
        raise ConfigError(f"give at least two splits, got {dict(fractions)}")
    for name, value in fractions.items():
        if not _NAME.match(name) or name.endswith(".") or ".." in name:
            raise ConfigError(
                f"split name {name!r} is not a safe file name; use letters, digits, '_', '-', '.' "
                "(it becomes NAME.parquet in --out-dir)"
            )
        if not (np.isfinite(value) and value > 0.0):
            raise ConfigError(f"split {name!r}: fraction must be > 0, got {value}")
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must sum to 1, got {total:g} ({dict(fractions)}); every question "
            "goes to exactly one split"
        )


def _largest_remainder(n: int, fractions: list[float]) -> list[int]:
    exact = np.asarray(fractions) * n
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return [int(c) for c in counts]


def _stratified_counts(sizes: list[int], fractions: list[float]) -> npt.NDArray[np.int64]:
    """Rows per (stratum, split): each stratum's share rounded down or up, the split totals
    those of the whole set (largest remainder), so many small strata do not skew the sizes."""
    f = np.asarray(fractions)
    exact = np.asarray(sizes, dtype=np.float64)[:, None] * f[None, :]
    counts = np.floor(exact).astype(np.int64)
    left_s = np.asarray(sizes) - counts.sum(axis=1)  # rows of each stratum still to place
    left_j = np.asarray(_largest_remainder(int(sum(sizes)), fractions)) - counts.sum(axis=0)
    frac = exact - counts
    for flat in np.argsort(-frac, axis=None, kind="stable"):
        s, j = divmod(int(flat), len(fractions))
        if left_s[s] > 0 and left_j[j] > 0 and frac[s, j] > 0:
            counts[s, j] += 1
            left_s[s] -= 1
            left_j[j] -= 1
    for s_ in np.flatnonzero(left_s > 0):  # what rounding could not place: any split with room
        for j_ in np.flatnonzero(left_j > 0):
            s, j = int(s_), int(j_)
            take = min(int(left_s[s]), int(left_j[j]))
            counts[s, j] += take
            left_s[s] -= take
            left_j[j] -= take
    return counts


def split_indices(
    n: int,
    fractions: Mapping[str, float],
    seed: int = 0,
    strata: npt.ArrayLike | None = None,
) -> dict[str, npt.NDArray[np.int64]]:
    """Row indices (sorted) of each split; ``strata`` (one key per row) stratifies."""
    check_fractions(fractions)
    names = list(fractions)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[npt.NDArray[np.int64]]] = {name: [] for name in names}
    if strata is None:
        order = rng.permutation(n)
        start = 0
        for j, name in enumerate(names):
            stop = n if j == len(names) - 1 else start + int(np.floor(fractions[name] * n))
            parts[name].append(order[start:stop])
            start = stop
    else:
        keys = np.asarray(strata, dtype=object).astype(str)
        groups = [np.flatnonzero(keys == key) for key in sorted(set(keys.tolist()))]
        counts = _stratified_counts([len(g) for g in groups], [fractions[m] for m in names])
        for rows, row_counts in zip(groups, counts, strict=True):
            rows = rows[rng.permutation(len(rows))]
            start = 0
            for name, c in zip(names, row_counts, strict=True):
                parts[name].append(rows[start : start + int(c)])
                start += int(c)
    return {
        name: np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
        for name, p in parts.items()
    }


def split_scores(
    scores: Scores,
    fractions: Mapping[str, float],
    seed: int = 0,
    stratify: str = "auto",
) -> dict[str, Scores]:
    """Disjoint Scores covering every row; ``stratify`` is auto (subject if any), subject, label, none."""
    if stratify not in STRATIFY:
        raise ConfigError(f"stratify must be one of {', '.join(STRATIFY)}, got {stratify!r}")
    has_subjects = scores.subjects is not None and any(s is not None for s in scores.subjects)
    if stratify == "auto":
        stratify = "subject" if has_subjects else "none"
    if stratify == "subject" and not has_subjects:
        raise ConfigError(
            "--stratify subject: these Scores have no subjects; use --stratify label or none"
        )
    strata: Any = None
    if stratify == "subject":
        strata = scores.subjects
    elif stratify == "label":
        strata = scores.labels
    idx = split_indices(len(scores), fractions, seed, strata)
    empty = [name for name, rows in idx.items() if not len(rows)]
    if empty:
        raise ConfigError(
            f"split {empty[0]!r} would get no question of {len(scores)}; use a larger fraction "
            "or more questions"
        )
    record = {
        "fractions": dict(fractions),
        "seed": seed,
        "stratify": stratify,
        "n_total": len(scores),
    }
    return {
        name: scores.select(rows).replace(meta={"split": {"name": name, **record}})
        for name, rows in idx.items()
    }


def save_splits(parts: Mapping[str, Scores], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``out_dir/NAME.parquet`` for every split: all of them, or (on failure) none."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out-dir {str(out_dir)!r} is a file; give a folder")
    paths = [folder / f"{name}.parquet" for name in parts]
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        for tmp, part in zip(tmps, parts.values(), strict=True):
            tmp.unlink()
            part.save(tmp.with_suffix(".parquet"))
            tmp.with_suffix(".parquet").replace(tmp)
    return paths
