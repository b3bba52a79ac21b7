"""Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
2020) with k-NN manifolds.

Each set's manifold is the union of balls around its points, the radius of a point being the
distance to its k-th nearest neighbour within the set (itself excluded). Precision is the fraction
of generated points inside the real manifold; recall the fraction of real points inside the
generated manifold. Density (Naeem et al. eq. 2) counts how many real balls each generated point
lies in, divided by k and averaged over generated points (about 1 when the sets match; it rewards
samples in dense regions and is not bounded by 1); coverage (eq. 3) is the fraction of real points
whose own ball holds at least one generated point. Here "real" is the reference set.

Ball boundary: by default a point on a boundary counts as inside (d <= r, as in the StyleGAN2-ADA
reference code for precision/recall); `boundary="open"` counts only d < r, as the `prdc` package
(NAVER, the authors' code) does for all four. The two differ only on exact ties, which continuous
features do not produce. Argument order: `precision_recall_density_coverage(real, fake)` takes the
reference set first, like `prdc.compute_prdc(real_features, fake_features, nearest_k)`; `prdc(features,
ref_features, ...)` takes the samples first, like the other metrics here.

Distances are float64 squared Euclidean distances computed in row chunks, so N = 10,000 by
D = 2,048 needs a few hundred MB, never an N x N matrix at once.
"""
from __future__ import annotations

import math

import numpy as np

from odebench.metrics.registry import MetricValue, register, value

register("precision", True, "improved precision: fraction of samples inside the k-NN manifold of the reference set")
register("recall", True, "improved recall: fraction of reference points inside the k-NN manifold of the samples")
register("density", True, "density (Naeem et al. 2020): mean number of reference k-NN balls holding a sample, over k (about 1 when matched)")
register("coverage", True, "coverage (Naeem et al. 2020): fraction of reference points whose k-NN ball holds a sample")

DEFAULT_K = 3


def _sq_dists(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = a @ b.T  # in place from here on: one block of memory per chunk
    d *= -2.0
    d += a_sq[:, None]
    d += b_sq[None, :]
    return np.maximum(d, 0.0, out=d)


def _chunk_rows(n_cols: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (8 * max(n_cols, 1)))


def knn_radii_sq(x: np.ndarray, k: int = DEFAULT_K, chunk_bytes: int = 1 << 27) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour in x (itself excluded)."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k-NN radius needs 1 <= k < n, got k={k}, n={n}")
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(n)
    step = _chunk_rows(n, chunk_bytes)
    for s in range(0, n, step):
        d = _sq_dists(x[s:s + step], x, sq[s:s + step], sq)
        d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = 0.0  # self-distance exactly 0
        out[s:s + step] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return out


def _inside(d: np.ndarray, r: np.ndarray, boundary: str) -> np.ndarray:
    return d <= r if boundary == "closed" else d < r


def precision_recall_density_coverage(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K, chunk_bytes: int = 1 << 27,
                                      boundary: str = "closed") -> dict[str, np.ndarray]:
    """Per-point values: "precision" (fake point inside the real manifold), "recall" (real point inside
    the fake manifold), "density" (number of real balls holding each fake point, / k) and "coverage"
    (real point whose own ball holds a fake point). Their means are the four metrics."""
    if boundary not in ("closed", "open"):
        raise ValueError(f"boundary must be 'closed' (d <= r) or 'open' (d < r), got {boundary!r}")
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets of shapes {real.shape} and {fake.shape} cannot be compared")
    r_real = knn_radii_sq(real, k, chunk_bytes)
    r_fake = knn_radii_sq(fake, k, chunk_bytes)
    sq_real, sq_fake = np.einsum("ij,ij->i", real, real), np.einsum("ij,ij->i", fake, fake)
    balls_holding = np.zeros(len(fake), np.int64)
    real_in_fake = np.zeros(len(real), bool)
    covered = np.zeros(len(real), bool)
    step = _chunk_rows(len(fake), chunk_bytes)
    for s in range(0, len(real), step):
        d = _sq_dists(real[s:s + step], fake, sq_real[s:s + step], sq_fake)  # (real chunk, fake)
        in_real_ball = _inside(d, r_real[s:s + step, None], boundary)
        balls_holding += in_real_ball.sum(axis=0)
        covered[s:s + step] = in_real_ball.any(axis=1)  # the nearest fake point is inside iff any is
        real_in_fake[s:s + step] = _inside(d, r_fake[None, :], boundary).any(axis=1)
    return {"precision": balls_holding > 0, "recall": real_in_fake, "density": balls_holding / float(k), "coverage": covered}


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K,
                     chunk_bytes: int = 1 << 27, boundary: str = "closed") -> tuple[np.ndarray, np.ndarray]:
    """Per-point indicators: (fake point inside real manifold, real point inside fake manifold)."""
    out = precision_recall_density_coverage(real, fake, k, chunk_bytes, boundary)
    return out["precision"], out["recall"]


def prdc(features: np.ndarray, ref_features: np.ndarray, ref_set: str, feature_identity: str,
         k: int = DEFAULT_K, boundary: str = "closed") -> dict[str, MetricValue]:
    """{"precision", "recall", "density", "coverage"} of the samples' features against the reference
    set's (all higher is better; density is about 1 for matching sets and may exceed 1).

    Stderrs treat the manifolds as fixed: binomial sqrt(p (1 - p) / n) over the probe points for
    precision, recall and coverage, the standard error of the mean of the per-sample counts for density.
    """
    per = precision_recall_density_coverage(ref_features, features, k, boundary=boundary)
    p, r, c = (float(per[m].mean()) for m in ("precision", "recall", "coverage"))
    dens = per["density"]
    n_gen, n_ref = len(per["precision"]), len(per["recall"])
    rule = "d <= r inside" if boundary == "closed" else "d < r inside (as the prdc package)"
    base = (f"{feature_identity}; k={k} NN balls, float64 Euclidean, {rule}; vs {n_ref} {ref_set}; "
            f"manifolds held fixed for the stderr")
    d_err = float(dens.std(ddof=1) / math.sqrt(n_gen)) if n_gen > 1 else float("nan")
    return {
        "precision": value("precision", p, math.sqrt(p * (1 - p) / n_gen), f"fraction of {n_gen} samples in the reference manifold; binomial stderr; {base}", n_gen),
        "recall": value("recall", r, math.sqrt(r * (1 - r) / n_ref), f"fraction of {n_ref} reference points in the sample manifold; binomial stderr; {base}", n_gen),
        "density": value("density", float(dens.mean()), d_err, f"reference balls holding each of {n_gen} samples, / k, mean (Naeem et al. 2020); stderr of the mean; {base}", n_gen),
        "coverage": value("coverage", c, math.sqrt(c * (1 - c) / n_ref), f"fraction of {n_ref} reference points whose ball holds a sample (Naeem et al. 2020); binomial stderr; {base}", n_gen),
    }
