"""The ODE error by spatial-frequency band, and the samples' high-frequency energy against the reference's.

For image-shaped ODE states (N, C, H, W) -- digits pixels, SDXL's scaled VAE latents: the space the
ODE error is measured in, never decoded -- each channel's 2-D DFT E(k) = sum_p e(p) exp(-2 pi i k.p)
of the error e = student - reference obeys Parseval: sum_p e(p)^2 = (1 / HW) sum_k |E(k)|^2. So the
per-element MSE (the paper's ODE error) splits exactly into bands of radial frequency

    ode_mse = sum_b  (1 / CHW) sum_c sum_{k in band b} |E_c(k)|^2 / HW,

rho(k) = sqrt(f_y^2 + f_x^2) / f_Nyquist with f = numpy.fft.fftfreq (cycles per pixel, Nyquist 1/2),
rho in [0, sqrt 2]. Bands: low rho < 1/3, mid 1/3 <= rho < 2/3, high rho >= 2/3 (up to the corners).
The radially averaged power spectrum (mean |E(k)|^2 / HW over each ring of width one cycle per image,
over channels and samples) is the curve those bands integrate.

A regression-trained student that cannot fit a multimodal target averages, and an average loses high
frequencies. `hf_energy_ratio` = mean over samples of the high-band energy of the student's samples
/ that of the reference samples from the same noise: 1 when they match, < 1 when high frequencies
are lost (blur), > 1 when there is excess (noise, artefacts). It has a target (1), not a direction:
reports show it but leave it out of the "better/worse" analysis (`is_diagnostic`).
"""
from __future__ import annotations

import math

import numpy as np

from odebench.metrics.registry import MetricValue, register, value
from odebench.metrics.stats import mean_stderr

BAND_NAMES = ("low", "mid", "high")
BAND_EDGES = (0.0, 1.0 / 3.0, 2.0 / 3.0, math.sqrt(2.0))  # fractions of the Nyquist frequency
DIAGNOSTIC_METRICS = ("hf_energy_ratio",)
_CHUNK_ELEMENTS = 1 << 22  # samples are transformed in chunks of about this many elements

register("hf_energy_ratio", True, "high-band (rho >= 2/3 Nyquist) spectral energy of the samples / the reference's "
         "from the same noise; 1 = matched, < 1 = lost high frequencies (blur), > 1 = excess (noise); a diagnostic")


def is_diagnostic(metric: str) -> bool:
    """Metrics with a target value instead of a direction: shown in reports, kept out of better/worse verdicts."""
    return metric.split("[", 1)[0].split("@", 1)[0] in DIAGNOSTIC_METRICS


def radial_frequency(h: int, w: int) -> np.ndarray:
    """rho(k) for every DFT bin of an h x w image: radial frequency as a fraction of Nyquist, in [0, sqrt 2]."""
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5


def band_index(h: int, w: int) -> np.ndarray:
    """Band number (0 = low, 1 = mid, 2 = high) of every DFT bin."""
    return np.searchsorted(np.asarray(BAND_EDGES[1:-1]), radial_frequency(h, w), side="right")


def _ring_index(h: int, w: int) -> tuple[np.ndarray, int]:
    """Ring of every DFT bin (rings one cycle per image wide on the shorter side) and the ring count."""
    half = max(min(h, w) // 2, 1)
    ring = np.rint(radial_frequency(h, w) * half).astype(np.int64)
    return ring, half


def _power(x: np.ndarray) -> np.ndarray:
    """|X_c(k)|^2 / HW for every sample and channel: (N, C, H, W), summing over k gives sum_p x(p)^2."""
    h, w = x.shape[-2:]
    return np.abs(np.fft.fft2(x, axes=(-2, -1))) ** 2 / (h * w)


class SpectralStats:
    """Per-sample band energies (per element) and ring sums of the power spectrum, accumulated in chunks."""

    def __init__(self, shape: tuple[int, ...]):
        if len(shape) != 3:
            raise ValueError(f"spectral diagnostics need image-shaped states (C, H, W), got {tuple(shape)}")
        c, h, w = shape
        self.shape = (c, h, w)
        self.band = band_index(h, w)
        self.ring, self.half = _ring_index(h, w)
        self.rings = int(self.ring.max()) + 1
        self.ring_count = np.bincount(self.ring.ravel(), minlength=self.rings) * c  # bins per ring, over channels

    def bands(self, x: np.ndarray) -> np.ndarray:
        """(N, 3) per-element energy of each sample in each band; rows sum to mean_p x(p)^2 (Parseval)."""
        c, h, w = self.shape
        out = np.empty((len(x), len(BAND_NAMES)))
        step = max(1, _CHUNK_ELEMENTS // (c * h * w))
        for s in range(0, len(x), step):
            p = _power(np.asarray(x[s:s + step], np.float64)).sum(axis=1)  # over channels: (n, H, W)
            for b in range(len(BAND_NAMES)):
                out[s:s + step, b] = p[:, self.band == b].sum(axis=1) / (c * h * w)
        return out

    def ring_profile(self, x: np.ndarray) -> np.ndarray:
        """Radially averaged power spectrum: mean |X(k)|^2 / HW over each ring's bins, channels and samples."""
        c, h, w = self.shape
        total = np.zeros(self.rings)
        step = max(1, _CHUNK_ELEMENTS // (c * h * w))
        for s in range(0, len(x), step):
            p = _power(np.asarray(x[s:s + step], np.float64)).sum(axis=(0, 1))  # (H, W)
            total += np.bincount(self.ring.ravel(), weights=p.ravel(), minlength=self.rings)
        return total / (self.ring_count * len(x))


def _ratio_of_means(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a) / mean(b) of paired values, with its delta-method stderr sqrt(var(a - r b) / n) / mean(b)."""
    if not b.mean() > 0:  # a reference with no energy in the band: no ratio
        return float("nan"), float("nan")
    r = float(a.mean() / b.mean())
    n = len(a)
    se = float(np.std(a - r * b, ddof=1) / math.sqrt(n) / b.mean()) if n > 1 else float("nan")
    return r, se


def spectral_diagnostics(student, reference, identity: str) -> tuple[dict[str, MetricValue], dict, dict[str, np.ndarray]]:
    """(metrics, curve, per-sample values) for student samples and reference solutions from the same noise,
    both (N, C, H, W): the ODE error per band (`ode_mse@ref[band=...]`, summing to `ode_mse@ref`), the
    radially averaged spectra of the error, the samples and the reference, and `hf_energy_ratio`."""
    x = np.asarray(student.double().numpy() if hasattr(student, "double") else student, np.float64)
    y = np.asarray(reference.double().numpy() if hasattr(reference, "double") else reference, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"student and reference shapes differ: {x.shape} vs {y.shape}")
    st = SpectralStats(x.shape[1:])
    n = len(x)
    err_bands, x_bands, y_bands = st.bands(x - y), st.bands(x), st.bands(y)
    where = "ODE state space (pixels for pixel teachers, scaled VAE latents for latent teachers; never decoded)"
    metrics: dict[str, MetricValue] = {}
    band_mse, band_err = [], []
    for b, name in enumerate(BAND_NAMES):
        m, e = mean_stderr(err_bands[:, b]) if n > 1 else (float(err_bands[0, b]), float("nan"))
        band_mse.append(m)
        band_err.append(None if math.isnan(e) else e)
        lo, hi = BAND_EDGES[b], BAND_EDGES[b + 1]
        metrics[f"ode_mse@ref[band={name}]"] = value(
            "ode_mse@ref", m, e, f"{identity}; the part of ode_mse@ref at radial frequency {lo:.3g} <= rho < {hi:.3g} "
            f"x Nyquist (2-D DFT per channel, Parseval: the bands sum to ode_mse@ref); {where}", n)
    hf, hf_se = _ratio_of_means(x_bands[:, -1], y_bands[:, -1])
    metrics["hf_energy_ratio"] = value(
        "hf_energy_ratio", hf, hf_se, f"mean high-band (rho >= {BAND_EDGES[-2]:.3g} x Nyquist) energy of the samples / "
        f"of the reference solutions from the same noise; delta-method stderr over paired samples; {where}", n)
    freq = np.arange(st.rings) / st.half
    keep = st.ring_count > 0
    curve = {
        "space": where, "n": n, "frequency": freq[keep].tolist(),
        "error_power": st.ring_profile(x - y)[keep].tolist(),
        "sample_power": st.ring_profile(x)[keep].tolist(),
        "reference_power": st.ring_profile(y)[keep].tolist(),
        "bands": {"names": list(BAND_NAMES), "edges": list(BAND_EDGES), "ode_mse": band_mse, "stderr": band_err,
                  "sample_energy": x_bands.mean(axis=0).tolist(), "reference_energy": y_bands.mean(axis=0).tolist()},
        "definition": "radially averaged |DFT|^2 / HW per ring (one cycle per image wide), mean over channels and samples; "
                      "frequency as a fraction of Nyquist",
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        per_hf = np.where(y_bands[:, -1] > 0, x_bands[:, -1] / y_bands[:, -1], np.nan)
    per_sample = {"spectral.ode_se_high": err_bands[:, -1], "spectral.hf_energy_ratio": per_hf}
    return metrics, curve, per_sample
