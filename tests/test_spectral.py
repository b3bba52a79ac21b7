"""Spectral diagnostics: the band split of the ODE error sums to the ODE error (Parseval), a pure
cosine lands in its band, a blurred copy of the reference loses high frequencies, and a digits run
stores all of it in result.json and per_sample.safetensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from odebench.metrics.ode_error import ode_error_metrics, per_sample_se
from odebench.metrics.spectral import BAND_NAMES, SpectralStats, is_diagnostic, radial_frequency, spectral_diagnostics


@pytest.mark.parametrize("shape", [(3, 8, 8), (4, 7, 10), (1, 16, 12)])
def test_bands_sum_to_the_ode_error_parseval(shape):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn((6, *shape), generator=g, dtype=torch.float64)
    student = ref + 0.3 * torch.randn((6, *shape), generator=g, dtype=torch.float64).cumsum(-1)  # coloured error
    metrics, curve, per = spectral_diagnostics(student, ref, "test")
    total = ode_error_metrics(student, ref, "test")["ode_mse@ref"].value
    bands = [metrics[f"ode_mse@ref[band={b}]"].value for b in BAND_NAMES]
    assert sum(bands) == pytest.approx(total, rel=1e-12)
    assert all(b > 0 for b in bands) and curve["bands"]["ode_mse"] == pytest.approx(bands)
    # per sample too: each sample's bands sum to its squared error
    st = SpectralStats(shape)
    np.testing.assert_allclose(st.bands((student - ref).numpy()).sum(1), per_sample_se(student, ref), rtol=1e-12)
    # the ring profile integrates to the same total: sum over rings of (mean power x bins) / CHW
    c, h, w = shape
    profile = np.asarray(curve["error_power"])
    assert (profile * st.ring_count[st.ring_count > 0]).sum() / (c * h * w) == pytest.approx(total, rel=1e-12)
    assert metrics["ode_mse@ref[band=high]"].stderr > 0 and metrics["ode_mse@ref[band=high]"].n == 6


@pytest.mark.parametrize("cycles,band", [(1, "low"), (4, "mid"), (7, "high")])
def test_a_cosine_lands_in_its_band(cycles, band):
    """cos(2 pi c x / 16) on a 16 x 16 image: rho = (c/16) / (1/2); its mean square is A^2 / 2 (closed form)."""
    x = np.arange(16)
    img = 0.7 * np.cos(2 * math.pi * cycles * x / 16)[None, :].repeat(16, 0)
    ref = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    student = torch.from_numpy(np.stack([img[None], img[None]]))
    metrics, _, _ = spectral_diagnostics(student, ref, "cosine")
    for b in BAND_NAMES:
        expect = 0.7 ** 2 / 2 if b == band else 0.0
        assert metrics[f"ode_mse@ref[band={b}]"].value == pytest.approx(expect, abs=1e-14)
    assert radial_frequency(16, 16)[0, cycles] == pytest.approx(cycles / 8)


def digits_images(n: int) -> torch.Tensor:
    """Real 8x8 digits in [-1, 1] as (n, 1, 8, 8): an image domain's reference samples."""
    from sklearn.datasets import load_digits

    x = load_digits().images[:n] / 16.0 * 2 - 1
    return torch.from_numpy(x[:, None])


def test_blurred_copy_loses_high_frequencies_and_a_noisy_one_gains_them():
    ref = digits_images(200)
    blurred = torch.from_numpy(scipy.ndimage.gaussian_filter(ref.numpy(), sigma=(0, 0, 0.8, 0.8), mode="nearest"))
    m_blur, curve, per = spectral_diagnostics(blurred, ref, "blur")
    hf = m_blur["hf_energy_ratio"]
    assert hf.value < 0.5 and hf.value + 4 * hf.stderr < 1.0  # clearly below 1: lost high frequencies
    assert np.nanmean(per["spectral.hf_energy_ratio"] < 1) > 0.95  # sample by sample too
    # the blur's error sits at high frequency, not in the smooth part of the image
    assert m_blur["ode_mse@ref[band=high]"].value > m_blur["ode_mse@ref[band=low]"].value
    # the samples' spectrum falls below the reference's at the top ring
    assert curve["sample_power"][-1] < 0.5 * curve["reference_power"][-1]
    same, _, _ = spectral_diagnostics(ref.clone(), ref, "same")
    assert same["hf_energy_ratio"].value == 1.0 and same["ode_mse@ref[band=high]"].value == 0.0
    g = torch.Generator().manual_seed(0)
    noisy, _, _ = spectral_diagnostics(ref + 0.3 * torch.randn(ref.shape, generator=g, dtype=torch.float64), ref, "noise")
    assert noisy["hf_energy_ratio"].value - 4 * noisy["hf_energy_ratio"].stderr > 1.0
    assert is_diagnostic("hf_energy_ratio") and not is_diagnostic("ode_mse@ref[band=high]")


def test_non_image_states_are_refused():
    with pytest.raises(ValueError, match="image-shaped"):
        SpectralStats((2,))


def test_digits_run_stores_the_spectral_split(tmp_path, one_torch_thread):
    from odebench.bench import RunConfig, run
    from odebench.report.runs import find_runs

    out = run(RunConfig(teacher="digits", students=("ddim:2", "ref"), samples=12, curve_points=0, floor_samples=0,
                        ksteps=(), out=tmp_path / "runs"))
    res = out[0].result
    m = res["metrics"]
    bands = sum(m[f"ode_mse@ref[band={b}]"]["value"] for b in BAND_NAMES)
    assert bands == pytest.approx(m["ode_mse@ref"]["value"], rel=1e-9)
    spec = res["curves"]["spectrum"]
    assert len(spec["frequency"]) == len(spec["error_power"]) == len(spec["sample_power"]) and spec["n"] == 12
    assert 0 < m["hf_energy_ratio"]["value"]
    ps = find_runs([str(out[0].path)], tmp_path)[0].per_sample()
    assert ps["spectral.hf_energy_ratio"].shape == (12,) and ps["spectral.ode_se_high"].shape == (12,)
    oracle = out[1].result["metrics"]
    assert oracle["hf_energy_ratio"]["value"] == 1.0 and oracle["ode_mse@ref[band=high]"]["value"] == 0.0
