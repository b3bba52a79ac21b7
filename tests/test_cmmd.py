"""CMMD: the estimator against independent computations on fixed features (sklearn's RBF kernel, the
reference code's biased formula, brute-force leave-one-out), the published scale against the closed
form for Gaussian sets, and the embedding through open_clip's real loading path on a tiny model."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics.pairwise import rbf_kernel

from odebench.errors import OdebenchError
from odebench.metrics.cmmd import SCALE, SIGMA, cmmd_value, mmd2_rbf

GAMMA = 1.0 / (2 * SIGMA ** 2)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_mmd2(x, y, estimator):
    kxx, kyy, kxy = rbf_kernel(x, x, gamma=GAMMA), rbf_kernel(y, y, gamma=GAMMA), rbf_kernel(x, y, gamma=GAMMA)
    m, n = len(x), len(y)
    if estimator == "biased":  # the reference code: means of the full matrices
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_mmd_matches_independent_kernel_sums_and_leave_one_out(estimator):
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((40, 16)))
    y = unit(rng.standard_normal((33, 16)) + 0.4)
    est, se = mmd2_rbf(x, y, estimator=estimator)
    assert est == pytest.approx(brute_mmd2(x, y, estimator), rel=1e-9, abs=1e-15)
    chunked, chunked_se = mmd2_rbf(x, y, estimator=estimator, chunk_bytes=8 * 5)
    assert chunked == pytest.approx(est, rel=1e-12) and chunked_se == pytest.approx(se, rel=1e-9)
    # the two-sample jackknife, recomputed by dropping each point in turn
    m, n = len(x), len(y)
    loo_x = np.array([brute_mmd2(np.delete(x, i, 0), y, estimator) for i in range(m)])
    loo_y = np.array([brute_mmd2(x, np.delete(y, j, 0), estimator) for j in range(n)])
    var = (m - 1) / m * ((loo_x - loo_x.mean()) ** 2).sum() + (n - 1) / n * ((loo_y - loo_y.mean()) ** 2).sum()
    assert se == pytest.approx(math.sqrt(var), rel=1e-6)
    # metric: x1000, lower is better, named identity
    v = cmmd_value(y, x, "test embeddings", "ref set", estimator)
    assert v.value == pytest.approx(SCALE * est) and v.stderr == pytest.approx(SCALE * mmd2_rbf(y, x, estimator=estimator)[1])
    assert not v.higher_is_better and v.n == 33 and "sigma = 10" in v.identity and "x1000" in v.identity
    assert estimator in v.identity


def gaussian_mmd2(d, s1, s2, delta_sq):
    """MMD^2 between N(0, s1^2 I_d) and N(mu, s2^2 I_d), |mu|^2 = delta_sq, for the kernel
    exp(-|x - y|^2 / (2 sigma^2)): E k over z = x - y ~ N(m, v I) is (sigma^2/(sigma^2 + v))^(d/2) exp(-|m|^2 / (2 (sigma^2 + v)))."""
    def ek(v, msq):
        return (SIGMA ** 2 / (SIGMA ** 2 + v)) ** (d / 2) * math.exp(-msq / (2 * (SIGMA ** 2 + v)))
    return ek(2 * s1 ** 2, 0.0) + ek(2 * s2 ** 2, 0.0) - 2 * ek(s1 ** 2 + s2 ** 2, delta_sq)


def test_published_scale_against_the_gaussian_closed_form():
    """Unit-scale embeddings (|x| about 1, as CLIP's normalised ones) with sigma = 10 and x1000: the
    unbiased estimate is within 4 jackknife errors of the closed form, and a set against a second
    draw of its own distribution gives 0 within its error (the biased form does not: it is positive)."""
    rng = np.random.default_rng(1)
    d, s1, s2, shift = 64, 1 / 8, 1.3 / 8, 0.3
    mu = np.full(d, shift / math.sqrt(d))
    x = rng.standard_normal((1500, d)) * s1
    y = rng.standard_normal((1200, d)) * s2 + mu
    truth = SCALE * gaussian_mmd2(d, s1, s2, shift ** 2)
    v = cmmd_value(x, y, "gaussian", "gaussian")
    assert 0.5 < truth < 5  # the paper's range for real image sets
    assert abs(v.value - truth) < 4 * v.stderr and v.stderr < 0.1 * truth
    same = cmmd_value(x, rng.standard_normal((1200, d)) * s1, "gaussian", "gaussian")
    assert abs(same.value) < 4 * same.stderr
    biased = cmmd_value(x, rng.standard_normal((1200, d)) * s1, "gaussian", "gaussian", estimator="biased")
    # the V-statistic's bias: (1 - E k(x, x'))(1/m + 1/n) x 1000 for a shared distribution
    bias = SCALE * (1 - (SIGMA ** 2 / (SIGMA ** 2 + 2 * s1 ** 2)) ** (d / 2)) * (1 / 1500 + 1 / 1200)
    assert biased.value == pytest.approx(bias, rel=0.1)


def test_bad_inputs():
    with pytest.raises(ValueError, match="estimator"):
        mmd2_rbf(np.zeros((3, 2)), np.zeros((3, 2)), estimator="x")
    with pytest.raises(ValueError, match="shapes"):
        mmd2_rbf(np.zeros((3, 2)), np.zeros((3, 4)))


# ------------------------------------------------------------------- the embedding, tiny CLIP --

@pytest.fixture
def tiny_clip(tmp_path):
    pytest.importorskip("open_clip")
    from tiny_backbones import write_tiny_clip

    return write_tiny_clip(tmp_path)


def test_cmmd_embeddings_through_real_loading_path(tiny_clip):
    """Tiny open_clip (32 px) loaded from a file: the embedding is the reference code's preprocessing
    (centre crop, PIL bicubic resize, /255, CLIP mean/std) through encode_image, L2-normalised."""
    import torch
    from PIL import Image

    from odebench.metrics.cmmd import OPENAI_MEAN, OPENAI_STD, CMMDEmbeddings
    from tiny_backbones import TINY_CLIP

    model, path = tiny_clip
    emb = CMMDEmbeddings(str(path), TINY_CLIP, device="cpu", batch_size=3)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)  # not square: crop first, then resize
    got = emb(imgs)
    manual = []
    for img in imgs:
        crop = Image.fromarray(img).crop((8, 0, 48, 40)).resize((32, 32), Image.BICUBIC)
        a = (np.asarray(crop, np.float32) / 255 - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)
        manual.append(torch.from_numpy(a.transpose(2, 0, 1).copy()))
    with torch.no_grad():
        want = model.encode_image(torch.stack(manual)).double().numpy()
    np.testing.assert_allclose(got, unit(want), atol=1e-6)
    assert got.shape == (5, 768) and np.allclose(np.linalg.norm(got, axis=1), 1.0)
    assert "tiny_clip.bin sha256:" in emb.identity and "centre crop" in emb.identity and emb.name == "cmmd"


def test_missing_cmmd_weights_name_the_336_model(monkeypatch, tmp_path):
    pytest.importorskip("open_clip")
    import huggingface_hub.constants as hc

    from odebench.metrics.cmmd import CMMDEmbeddings

    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(OdebenchError) as e:
        CMMDEmbeddings(device="cpu")
    msg = str(e.value)
    assert msg.startswith("CMMD") and "vit_large_patch14_clip_336.openai" in msg and "--cmmd-weights" in msg
