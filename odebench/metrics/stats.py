"""Uncertainties: standard errors and seeded bootstrap."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def mean_stderr(x: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error std/sqrt(n) (ddof = 1)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def bootstrap_stderr(stat: Callable[[np.ndarray], float], n: int, reps: int = 200, seed: int = 0) -> float:
    """Std of `stat(idx)` over `reps` resamples idx of range(n) with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(reps)]
    return float(np.std(vals, ddof=1))
