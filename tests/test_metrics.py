"""Metrics against closed forms and independent implementations."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from odebench.metrics.fd import fd_features, frechet_distance, kid
from odebench.metrics.gmm_quality import mixture_quality
from odebench.metrics.ode_error import error_curve, ode_error_metrics
from odebench.mixture import GaussianMixture


def fd_sqrtm(mu1, s1, mu2, s2):
    """The classic pytorch-fid / clean-fid formula through scipy.linalg.sqrtm (an independent path)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_psd(d, rng):
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 0.01 * np.eye(d)


def test_fd_matches_sqrtm_formula():
    rng = np.random.default_rng(0)
    for d in (1, 5, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = random_psd(d, rng), random_psd(d, rng)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fd_sqrtm(mu1, s1, mu2, s2), rel=1e-9)


def test_fd_closed_form_for_commuting_covariances():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # and on samples of those Gaussians, within sampling error
    rng = np.random.default_rng(1)
    x = mu1 + np.sqrt(a) * rng.standard_normal((200_000, 3))
    y = mu2 + np.sqrt(b) * rng.standard_normal((200_000, 3))
    assert fd_features(x, y) == pytest.approx(expected, rel=0.01)


def test_kid_unbiased_and_matches_direct_computation():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((300, 4)), rng.standard_normal((300, 4))
    same, err = kid(x, y, subsets=30, subset_size=200)
    assert abs(same) < 4 * err + 1e-3  # unbiased: ~0 for the same distribution
    # one subset covering everything = the textbook unbiased MMD^2, computed by explicit sums here
    v, _ = kid(x + 1.0, y, subsets=1, subset_size=300)
    k = lambda p, q: (p @ q / 4 + 1) ** 3  # noqa: E731
    xs, ys = x + 1.0, y
    kxx = sum(k(xs[i], xs[j]) for i in range(300) for j in range(300) if i != j) / (300 * 299)
    kyy = sum(k(ys[i], ys[j]) for i in range(300) for j in range(300) if i != j) / (300 * 299)
    kxy = sum(k(xs[i], ys[j]) for i in range(300) for j in range(300)) / 300 ** 2
    assert v == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)


def test_paired_kid_is_unbiased_where_the_unpaired_estimate_is_not():
    """Students against the teacher's samples from the same noise: pairs (x_i, y_i) are correlated but
    both marginals are N(0, I). The paired U-statistic averages to 0 over independent draws; the
    unpaired estimate, whose cross term includes the matched pairs, is biased below zero (the
    negative KID@teacher values of earlier digits runs). The paired value also equals explicit sums."""
    rng = np.random.default_rng(11)
    n, d, rho = 60, 3, 0.9
    paired, unpaired = [], []
    for _ in range(60):
        x = rng.standard_normal((n, d))
        y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal((n, d))
        paired.append(kid(x, y, subsets=1, subset_size=n, paired=True)[0])
        unpaired.append(kid(x, y, subsets=1, subset_size=n)[0])
    se = np.std(paired, ddof=1) / np.sqrt(len(paired))
    assert abs(np.mean(paired)) < 3 * se
    assert np.mean(unpaired) < np.mean(paired) - 10 * se
    k = lambda p, q: (p @ q / d + 1) ** 3  # noqa: E731
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    h = sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i]) for i, j in pairs) / len(pairs)
    assert kid(x, y, subsets=1, subset_size=n, paired=True)[0] == pytest.approx(h, rel=1e-9)


@pytest.mark.parametrize("paired", [False, True])
def test_kid_gram_sums_match_per_subset_kernels(monkeypatch, paired):
    """Small sets sum each subset's kernel entries as 1_I^T K 1_J on the whole sets' kernel matrices;
    large sets build each subset's kernels: the two paths give the same values (same seeded subsets)."""
    import odebench.metrics.fd as fd

    rng = np.random.default_rng(7)
    x = rng.standard_normal((150, 5)) + 0.2
    y = rng.standard_normal((150 if paired else 130, 5))
    for m in (60, 130):
        gram = kid(x, y, subsets=12, subset_size=m, paired=paired)
        monkeypatch.setattr(fd, "GRAM_LIMIT", 0)
        direct = kid(x, y, subsets=12, subset_size=m, paired=paired)
        monkeypatch.undo()
        assert gram == pytest.approx(direct, rel=1e-10)


def test_fd_with_a_singular_covariance_matches_sqrtm():
    """Dead feature units (ReLU) make S1 singular: the symmetric-root fallback against scipy's sqrtm."""
    rng = np.random.default_rng(8)
    a = np.maximum(rng.standard_normal((400, 12)), 0.0)
    a[:, :3] = 0.0
    b = np.maximum(rng.standard_normal((400, 12)), 0.0)
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    assert fd_features(a, b) == pytest.approx(fd_sqrtm(mu1, s1, mu2, s2), rel=1e-7)


@pytest.mark.parametrize("subset_size", [100, 1000])
def test_kid_stderr_matches_the_spread_of_independent_draws(subset_size):
    """The reported stderr against the actual spread of KID over independent sample sets, also when
    the subsets take whole sets (subset_size >= n), where subset-to-subset spread is zero."""
    rng = np.random.default_rng(5)
    n, d = 200, 6
    vals, errs = [], []
    for _ in range(40):
        x = rng.standard_normal((n, d)) + 0.3
        y = rng.standard_normal((n, d))
        v, e = kid(x, y, subsets=20, subset_size=subset_size)
        vals.append(v)
        errs.append(e)
    actual = np.std(vals, ddof=1)
    assert 0.5 * actual < np.median(errs) < 2.0 * actual, (actual, np.median(errs))


def test_ode_error_metrics_against_numpy():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((50, 2, 3))
    stu = ref + 0.1 * rng.standard_normal((50, 2, 3))
    m = ode_error_metrics(torch.from_numpy(stu), torch.from_numpy(ref), "test")
    per = ((stu - ref) ** 2).reshape(50, -1).mean(1)
    assert m["ode_mse@ref"].value == pytest.approx(per.mean(), rel=1e-12)
    assert m["ode_mse@ref"].stderr == pytest.approx(per.std(ddof=1) / math.sqrt(50), rel=1e-12)
    assert m["ode_rmse@ref"].value == pytest.approx(math.sqrt(per.mean()), rel=1e-12)
    assert m["ode_rel@ref"].value == pytest.approx(np.linalg.norm(stu - ref) / np.linalg.norm(ref), rel=1e-12)
    assert m["ode_mse@ref"].higher_is_better is False and m["ode_mse@ref"].n == 50
    c = error_curve([torch.from_numpy(ref), torch.from_numpy(stu)], torch.from_numpy(ref), torch.tensor([2.0, 1.0]))
    assert c["ode_mse"][0] == 0 and c["ode_mse"][1] == pytest.approx(per.mean())


def test_mixture_quality_on_exact_samples_of_a_gaussian():
    """For exact samples of N(mu, s^2 I) in d dims: E log p = -d/2 (1 + log 2 pi s^2), 99% of samples
    fall in the chi2 99% ellipsoid, every mode is covered, and FD/KID to more exact samples ~ 0."""
    d, s = 4, 0.5
    mix = GaussianMixture(torch.zeros(1, d, dtype=torch.float64), torch.full((1, d), s, dtype=torch.float64),
                          torch.ones(1, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x = mix.sample(torch.zeros(4000, dtype=torch.long), g)
    exact = mix.sample(torch.zeros(4000, dtype=torch.long), g)
    m, extras, per_sample = mixture_quality(x, exact, mix, None, "exact")
    expected_ll = -d / 2 * (1 + math.log(2 * math.pi * s * s))
    assert abs(m["loglik"].value - expected_ll) < 4 * m["loglik"].stderr
    # per-sample log-density: the closed-form Gaussian log-density of each point
    xs = x.numpy()
    exact_ll = -0.5 * (xs ** 2).sum(1) / s ** 2 - d / 2 * math.log(2 * math.pi * s * s)
    np.testing.assert_allclose(per_sample["loglik"], exact_ll, rtol=1e-10, atol=1e-10)
    assert per_sample["mode_precision"].mean() == pytest.approx(m["mode_precision"].value)
    assert abs(m["mode_precision"].value - 0.99) < 4 * m["mode_precision"].stderr
    assert m["mode_coverage"].value == 1.0
    assert abs(m["fd_exact"].value) < 0.02 and abs(m["kid_exact"].value) < 4 * m["kid_exact"].stderr + 1e-4
    # a shifted sample set is clearly worse on every count
    bad, _, _ = mixture_quality(x + 3 * s, exact, mix, None, "exact")
    assert bad["loglik"].value < m["loglik"].value - 10
    assert bad["fd_exact"].value == pytest.approx(d * 9 * s * s, rel=0.05)
    assert bad["mode_precision"].value < 0.5


def test_mode_coverage_sees_a_missing_mode():
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    mix = GaussianMixture(means, torch.full((2, 2), 0.3, dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    only_left = mix.sample(torch.zeros(500, dtype=torch.long), g)
    exact = mix.sample(torch.arange(500) % 2, g)
    m, extras, _ = mixture_quality(only_left, exact, mix, None, "exact")
    assert m["mode_coverage"].value == 0.5 and extras["mode_counts"][1] == 0 and 480 < extras["mode_counts"][0] <= 500
    # samples stranded between the modes cover nothing, though each has a most likely mode
    between, _, _ = mixture_quality(torch.zeros(500, 2, dtype=torch.float64), exact, mix, None, "exact")
    assert between["mode_coverage"].value == 0.0 and between["mode_precision"].value == 0.0


def test_fd_singular_covariance_falls_back():
    """Fewer samples than dimensions: S1 is singular (no Cholesky) and FD still matches sqrtm."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((5, 12)), rng.standard_normal((40, 12))
    from odebench.metrics.fd import feature_stats

    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    assert np.linalg.matrix_rank(s1) < 12
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fd_sqrtm(mu1, s1, mu2, s2), rel=1e-6)
