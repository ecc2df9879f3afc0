"""Exact binomial tools: Clopper–Pearson intervals, upper confidence bounds and tail p-values.

Used by the distribution-free guarantees (conformal coverage, selective risk). All three are
exact: they come from the binomial distribution itself, not a normal approximation, so they
are valid (conservative) at every n, including tiny ones and counts of 0 or n.
"""

from __future__ import annotations

import math

from scipy import special

from llmcal.errors import ConfigError

__all__ = ["binomial_cdf", "binomial_upper_bound", "clopper_pearson"]


def _check(k: int, n: int, level: float, name: str) -> None:
    if isinstance(k, bool) or isinstance(n, bool) or not (0 <= int(k) <= int(n)):
        raise ConfigError(f"need integer counts 0 <= k <= n, got k={k!r}, n={n!r}")
    if not 0.0 < float(level) < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {level!r}")


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) ``1 − alpha`` interval for a binomial proportion k/n.

    ``(nan, nan)`` when ``n == 0``.
    """
    _check(k, n, alpha, "alpha")
    k, n = int(k), int(n)
    if n == 0:
        return math.nan, math.nan
    lo = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, alpha / 2))
    hi = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, 1 - alpha / 2))
    return lo, hi


def binomial_upper_bound(k: int, n: int, delta: float = 0.05) -> float:
    """One-sided exact ``1 − delta`` upper confidence bound on p from k successes in n trials.

    The largest p with ``P(Bin(n, p) <= k) >= delta``; 1 when ``n == 0`` or ``k == n``.
    """
    _check(k, n, delta, "delta")
    k, n = int(k), int(n)
    if n == 0 or k == n:
        return 1.0
    return float(special.betaincinv(k + 1, n - k, 1 - delta))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Bin(n, p) <= k)``: the exact p-value of "rate > p" after k events in n trials."""
    if not 0 <= int(k) <= int(n):
        raise ConfigError(f"need integer counts 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0 or k == n:
        return 1.0
    return float(special.bdtr(int(k), int(n), float(p)))
