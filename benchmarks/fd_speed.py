"""Time odebench's eigen-trace Frechet distance against the scipy.linalg.sqrtm path (clean-fid's).

Run:  python benchmarks/fd_speed.py [--d 2048] [--n 10000] [--repeats 3] [--seed 0]

Two feature sets of N vectors in d dimensions are drawn as softplus(z M + b) with z ~ N(0, I) and a
random mixing matrix M whose singular values decay as i^-1 (non-negative features with a
covariance spectrum spanning several decades, like Inception pool3 features); the second set uses
a perturbed M and b. Both FD implementations get the same (mu, sigma) in float64, in this one
process, alternately, `--repeats` times each; we print every time, the medians, their ratio, and
the relative difference of the two FD values. BLAS threading is whatever numpy picked up (set
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to pin it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import scipy.linalg

from odebench.metrics.fd import feature_stats, frechet_distance


def sqrtm_fd(mu1, sigma1, mu2, sigma2):
    """clean-fid's frechet_distance (scipy.linalg.sqrtm of sigma1 sigma2); a local copy if clean-fid is absent."""
    try:
        from cleanfid.fid import frechet_distance as cfid
    except ImportError:
        cfid = None
    if cfid is not None:
        return float(cfid(mu1, sigma1, mu2, sigma2)), "cleanfid.fid.frechet_distance"
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)), "scipy sqrtm (local copy)"


def make_features(n: int, d: int, rng: np.random.Generator, mixing: np.ndarray, bias: np.ndarray) -> np.ndarray:
    z = rng.standard_normal((n, d))
    return np.logaddexp(0.0, z @ mixing + bias)  # softplus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # scipy's sqrtm(disp=...) in clean-fid

    rng = np.random.default_rng(args.seed)
    d = args.d
    q1, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s = 1.0 / np.arange(1, d + 1)
    mixing = (q1 * s) @ q2.T * np.sqrt(d)
    mixing2 = mixing + 0.1 * rng.standard_normal((d, d)) / np.sqrt(d)
    bias = rng.standard_normal(d) * 0.5
    t0 = time.perf_counter()
    fa = make_features(args.n, d, rng, mixing, bias)
    fb = make_features(args.n, d, rng, mixing2, bias + 0.05 * rng.standard_normal(d))
    mu1, s1 = feature_stats(fa)
    mu2, s2 = feature_stats(fb)
    t_stats = time.perf_counter() - t0
    ev = np.linalg.eigvalsh(s1)
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    print(f"d={d} N={args.n} repeats={args.repeats} seed={args.seed} cpus={os.cpu_count()} threads={threads or 'default'}")
    print(f"features + covariances: {t_stats:.2f} s; sigma1 eigenvalues {ev.max():.3g} .. {ev.min():.3g} "
          f"(condition {ev.max() / max(ev.min(), 1e-300):.3g})")

    t_eig, t_sqrtm = [], []
    for r in range(args.repeats):
        t = time.perf_counter()
        fd_eig = frechet_distance(mu1, s1, mu2, s2)
        t_eig.append(time.perf_counter() - t)
        t = time.perf_counter()
        fd_sq, which = sqrtm_fd(mu1, s1, mu2, s2)
        t_sqrtm.append(time.perf_counter() - t)
        print(f"  repeat {r}: eigen-trace {t_eig[-1]:.3f} s   {which} {t_sqrtm[-1]:.3f} s")
    me, ms = statistics.median(t_eig), statistics.median(t_sqrtm)
    print(f"odebench eigen-trace FD : median {me:.3f} s (min {min(t_eig):.3f})  FD = {fd_eig:.10g}")
    print(f"{which}: median {ms:.3f} s (min {min(t_sqrtm):.3f})  FD = {fd_sq:.10g}")
    print(f"speed-up (sqrtm / eigen-trace, medians): {ms / me:.2f}x")
    print(f"relative difference |FD_eig - FD_sqrtm| / |FD_sqrtm|: {abs(fd_eig - fd_sq) / abs(fd_sq):.3e}")


if __name__ == "__main__":
    main()
