"""Sample quality on Gaussian-mixture domains, where the true density is known exactly."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import chi2

from odebench.metrics.fd import fd_bootstrap_stderr, fd_features, kid
from odebench.metrics.prdc import DEFAULT_K, prdc
from odebench.metrics.registry import MetricValue, value
from odebench.metrics.stats import bootstrap_stderr, mean_stderr
from odebench.mixture import GaussianMixture


def mixture_quality(samples: torch.Tensor, exact: torch.Tensor, mixture: GaussianMixture,
                    mask: torch.Tensor | None, ref_set: str) -> tuple[dict[str, MetricValue], dict, dict[str, np.ndarray]]:
    """Log-likelihood, FD/KID to exact samples, mode coverage and precision, k-NN precision, recall,
    density and coverage in data space against the exact samples; also the per-sample log-likelihood
    and in-mode indicator (for per-sample ODE-error-vs-quality plots).

    `mask` (n, K) restricts each sample to its class's sub-mixture (None: the full mixture);
    `exact` are exact draws from the same (conditional) data distribution.
    """
    x = samples.double()
    n = x.shape[0]
    mix = mixture.to(torch.float64)
    ll = mix.log_prob(x, 0.0, mask).numpy()
    ll_mean, ll_err = mean_stderr(ll)
    a, b = x.numpy(), exact.double().numpy()
    fd = fd_features(a, b)
    fd_err = fd_bootstrap_stderr(a, b)
    kid_v, kid_err = kid(a, b, subsets=20, subset_size=min(500, n))

    # modes: each sample's most likely component; inside its 99% ellipsoid counts for precision
    resp = mix.responsibilities(x, mask)
    k_hat = resp.argmax(dim=1)
    maha = (((x - mix.means[k_hat]) / mix.stds[k_hat]) ** 2).sum(dim=1).numpy()
    inside = maha <= chi2.ppf(0.99, df=mix.dim)
    # a mode counts as covered by samples that actually landed in it, not by far-away stragglers
    # whose most likely component it merely is
    counts = np.bincount(k_hat.numpy()[inside], minlength=mix.num_components)
    expected = (mask.double() * mix.weights / (mask.double() * mix.weights).sum(1, keepdim=True)).sum(0).numpy() \
        if mask is not None else mix.weights.numpy() * n
    k_hat_np = k_hat.numpy()

    def coverage(idx: np.ndarray) -> float:
        c = np.bincount(k_hat_np[idx][inside[idx]], minlength=mix.num_components)
        return float((c >= 0.25 * expected).mean())

    cov = coverage(np.arange(n))
    prec = float(inside.mean())
    per_mode_precision = [float(inside[k_hat_np == k].mean()) if counts[k] else None for k in range(mix.num_components)]
    ident = f"exact mixture density; {ref_set}; n={n}"
    metrics = {
        "loglik": value("loglik", ll_mean, ll_err, f"mean log p(x) under the true mixture ({'class sub-mixture' if mask is not None else 'full mixture'}), nats, sigma=0", n),
        "fd_exact": value("fd_exact", fd, fd_err, f"Frechet distance in data space (d={mix.dim}), scale: squared data units, vs {len(b)} {ref_set}; float64 eigen-trace; bootstrap stderr", n),
        "kid_exact": value("kid_exact", kid_v, kid_err, f"KID, scale: raw unbiased MMD^2 (x1), kernel (x.y/d+1)^3, 20 seeded subsets of {min(500, n)} vs {ref_set}", n),
        "mode_coverage": value("mode_coverage", cov, bootstrap_stderr(coverage, n, reps=100), f"modes holding >= 1/4 of their expected share of in-mode samples (99% ellipsoid); {ident}", n),
        "mode_precision": value("mode_precision", prec, math.sqrt(prec * (1 - prec) / n), f"inside chi2(d) 99% ellipsoid of argmax-responsibility mode; {ident}", n),
    }
    if min(len(a), len(b)) > DEFAULT_K:  # k-NN balls need more than k points a side
        for kind, m in prdc(a, b, ref_set, f"data space (d={mix.dim})").items():
            metrics[f"{kind}_exact"] = value(f"{kind}_exact", m.value, m.stderr, m.identity, n)
    extras = {"per_mode_precision": per_mode_precision, "mode_counts": counts.tolist(),
              "expected_mode_counts": [float(e) for e in expected]}
    return metrics, extras, {"loglik": ll, "mode_precision": inside.astype(np.float64)}
