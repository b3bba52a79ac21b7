"""Gaussian mixtures with diagonal covariances: exact densities, posterior means and samples.

Pure maths shared by the GMM teacher (its denoiser) and the GMM quality metrics (densities and
exact samples), so neither has to know about the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """p(x) = sum_k pi_k N(x; mu_k, diag(s_k^2)); tensors on CPU, any float dtype."""

    means: torch.Tensor  # (K, d)
    stds: torch.Tensor  # (K, d)
    weights: torch.Tensor  # (K,), sums to 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> "GaussianMixture":
        return GaussianMixture(*(t.to(dtype=dtype, device=device) for t in (self.means, self.stds, self.weights)))

    def component_log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
        """log pi_k + log N(x; mu_k, s_k^2 + sigma^2) for each component: (B, K).

        The noisy marginal of a mixture is the mixture of noisy components (EDM eq. 2 per component).
        `mask` (B, K) keeps only the components allowed for each row (a class's sub-mixture);
        the kept weights are renormalised so each row is a proper density.
        """
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma2 = sigma.reshape(-1, 1, 1) ** 2 if sigma.ndim else sigma ** 2
        var = self.stds.to(x) ** 2 + sigma2  # (B or 1, K, d)
        diff = x[:, None, :] - self.means.to(x)[None]
        log_n = -0.5 * ((diff ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        log_w = torch.log(self.weights.to(x))[None].expand_as(log_n)
        if mask is not None:
            log_w = log_w.masked_fill(~mask, float("-inf"))
            log_w = log_w - torch.logsumexp(log_w, dim=1, keepdim=True)
        return log_w + log_n

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p_sigma(x) = logsumexp_k(component_log_prob): (B,)."""
        return torch.logsumexp(self.component_log_prob(x, sigma, mask), dim=1)

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tweedie denoiser D(x, sigma) = E[x0 | x0 + sigma n = x] (EDM eq. 3), exact for a mixture.

        Per component E[x0 | x, k] = mu_k + s_k^2/(s_k^2 + sigma^2) (x - mu_k); the mixture mean
        weights these by the posterior responsibilities gamma_k(x).
        """
        gamma = torch.softmax(self.component_log_prob(x, sigma, mask), dim=1)  # (B, K)
        s2 = self.stds.to(x) ** 2
        shrink = s2 / (s2 + sigma.reshape(-1, 1, 1) ** 2)  # (B, K, d)
        mu = self.means.to(x)
        comp_mean = mu[None] + shrink * (x[:, None, :] - mu[None])
        return torch.einsum("bk,bkd->bd", gamma, comp_mean)

    def flow_posterior_mean(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_t] under the rectified-flow process x_t = (1 - t) x0 + t z, exact for a mixture, t in [0, 1].

        Per component x_t ~ N((1 - t) mu_k, (1 - t)^2 s_k^2 + t^2) and E[x0 | x_t, k] = mu_k + (1 - t) s_k^2
        ((1 - t)^2 s_k^2 + t^2)^-1 (x_t - (1 - t) mu_k), weighted by the responsibilities; finite at t = 1
        (pure noise: the prior mean of the allowed components), where the VE form x = x_t/(1 - t) is not."""
        a = (1 - t).reshape(-1, 1, 1)
        b2 = t.reshape(-1, 1, 1) ** 2
        s2 = self.stds.to(x) ** 2
        mu = self.means.to(x)
        var = a ** 2 * s2 + b2  # (B, K, d)
        diff = x[:, None, :] - a * mu[None]
        log_n = -0.5 * ((diff ** 2) / var + torch.log(2 * math.pi * var)).sum(-1)
        log_w = torch.log(self.weights.to(x))[None].expand_as(log_n)
        if mask is not None:
            log_w = log_w.masked_fill(~mask, float("-inf"))
        gamma = torch.softmax(log_w + log_n, dim=1)
        comp_mean = mu[None] + a * s2 / var * diff
        return torch.einsum("bk,bkd->bd", gamma, comp_mean)

    def responsibilities(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior component probabilities at sigma = 0: (B, K)."""
        return torch.softmax(self.component_log_prob(x, 0.0, mask), dim=1)

    def sample(self, component: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Exact samples x = mu_k + s_k * n for the given component indices."""
        n = torch.randn((component.shape[0], self.dim), generator=generator, dtype=torch.float64)
        return (self.means.double()[component] + self.stds.double()[component] * n).to(self.means.dtype)

    def total_variance(self) -> torch.Tensor:
        """Per-dimension variance of the mixture (law of total variance)."""
        w = self.weights[:, None]
        mean = (w * self.means).sum(0)
        return (w * (self.stds ** 2 + (self.means - mean) ** 2)).sum(0)
