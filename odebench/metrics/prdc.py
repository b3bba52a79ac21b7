"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

Each set's manifold is the union of balls around its points, the radius of a point being the
distance to its k-th nearest neighbour within the set (itself excluded). Precision is the fraction
of generated points inside the real manifold; recall the fraction of real points inside the
generated manifold. A point on a ball's boundary counts as inside (d <= r, as in the StyleGAN2-ADA
reference code). Distances are float64 squared Euclidean distances computed in row chunks, so
N = 10,000 by D = 2,048 needs a few hundred MB, never an N x N matrix at once.
"""
from __future__ import annotations

import math

import numpy as np

from odebench.metrics.registry import MetricValue, register, value

register("precision", True, "improved precision: fraction of samples inside the k-NN manifold of the reference set")
register("recall", True, "improved recall: fraction of reference points inside the k-NN manifold of the samples")

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


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K,
                     chunk_bytes: int = 1 << 27) -> tuple[np.ndarray, np.ndarray]:
    """Per-point indicators: (fake point inside real manifold, real point inside fake manifold)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets of shapes {real.shape} and {fake.shape} cannot be compared")
    r_real = knn_radii_sq(real, k, chunk_bytes)
    r_fake = knn_radii_sq(fake, k, chunk_bytes)
    sq_real, sq_fake = np.einsum("ij,ij->i", real, real), np.einsum("ij,ij->i", fake, fake)
    fake_in_real = np.zeros(len(fake), bool)
    real_in_fake = np.zeros(len(real), bool)
    step = _chunk_rows(len(fake), chunk_bytes)
    for s in range(0, len(real), step):
        d = _sq_dists(real[s:s + step], fake, sq_real[s:s + step], sq_fake)  # (real chunk, fake)
        fake_in_real |= (d <= r_real[s:s + step, None]).any(axis=0)
        real_in_fake[s:s + step] = (d <= r_fake[None, :]).any(axis=1)
    return fake_in_real, real_in_fake


def prdc(features: np.ndarray, ref_features: np.ndarray, ref_set: str, feature_identity: str,
         k: int = DEFAULT_K) -> dict[str, MetricValue]:
    """{"precision", "recall"} of the samples' features against the reference set's (higher is better).

    The stderr is the binomial sqrt(p (1 - p) / n) over the probe points; it ignores the randomness
    of the manifold estimate itself.
    """
    inside_real, inside_fake = precision_recall(ref_features, features, k)
    p, r = float(inside_real.mean()), float(inside_fake.mean())
    n_gen, n_ref = len(inside_real), len(inside_fake)
    base = (f"{feature_identity}; k={k} NN balls, float64 Euclidean, d <= r inside; vs {n_ref} {ref_set}; "
            f"binomial stderr over probes")
    return {
        "precision": value("precision", p, math.sqrt(p * (1 - p) / n_gen), f"fraction of {n_gen} samples in the reference manifold; {base}", n_gen),
        "recall": value("recall", r, math.sqrt(r * (1 - r) / n_ref), f"fraction of {n_ref} reference points in the sample manifold; {base}", n_gen),
    }
