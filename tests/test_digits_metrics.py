"""The shipped digits classifier and the metrics built on it: features, label adherence, confidence."""

import numpy as np
import pytest
import torch

from odebench.data.digits import digits_split
from odebench.errors import OdebenchError
from odebench.metrics import digits as dm
from odebench.metrics.fd import fd_features
from odebench.metrics.features import grey_to_rgb
from odebench.metrics.registry import REGISTRY


@pytest.fixture(scope="module")
def shipped():
    return dm.load_digits_net()


@pytest.fixture(scope="module")
def held_out():
    s = digits_split()
    return grey_to_rgb(s.test_images), s.test_labels


def test_shipped_classifier_held_out_accuracy(shipped, held_out):
    net, side = shipped
    images, labels = held_out
    with torch.no_grad():  # recomputed here from the held-out split, independent of the sidecar
        x = torch.from_numpy(images[..., 0].astype(np.float32)[:, None] / 255.0)
        acc = float((net(x).argmax(1).numpy() == labels).mean())
    assert acc >= 0.97
    assert acc == pytest.approx(side["held_out_accuracy"], abs=1e-9)
    assert sum(p.numel() for p in net.parameters()) == side["num_parameters"]
    assert not net.training


def test_label_adherence_and_confidence(shipped, held_out):
    net, side = shipped
    images, labels = held_out
    n = len(labels)
    with torch.no_grad():
        x = torch.from_numpy(images[..., 0].astype(np.float32)[:, None] / 255.0)
        acc = float((net(x).argmax(1).numpy() == labels).mean())
    m = dm.label_metrics(images, labels)
    la, conf = m["label_adherence"], m["confidence"]
    assert la.value == pytest.approx(acc, abs=1e-12)
    assert la.stderr == pytest.approx(np.sqrt(acc * (1 - acc) / n))
    assert la.n == n and la.higher_is_better and conf.higher_is_better
    assert side["weights_sha256"][:12] in la.identity and side["weights_sha256"][:12] in conf.identity
    assert 0.0 < conf.value <= 1.0 and conf.value > 0.9 and 0.0 < conf.stderr < 0.05
    assert REGISTRY["label_adherence"].higher_is_better and REGISTRY["confidence"].higher_is_better

    shifted = dm.label_metrics(images, (labels + 1) % 10)["label_adherence"].value  # always wrong
    assert shifted <= 1 - acc + 1e-12
    shuffled = dm.label_metrics(images, np.random.default_rng(0).permutation(labels))["label_adherence"].value
    assert shuffled <= 0.15

    with pytest.raises(ValueError):
        dm.label_metrics(images, labels[:-1])
    with pytest.raises(ValueError):
        dm.label_metrics(images, labels + 10)


def test_digits_features(held_out):
    images, _ = held_out
    feats = dm.DigitsFeatures()
    assert feats.name == "digits"
    for word in ("sha256:", "channel 0 /255 at 8x8, no resize", "penultimate"):
        assert word in feats.identity
    f1, f2 = feats(images), feats(images)
    assert f1.shape == (len(images), 64) and f1.dtype == np.float64
    assert np.array_equal(f1, f2)
    # another batch size may pick another conv kernel: equal to float32 round-off, not bitwise
    np.testing.assert_allclose(feats(images[:7]), f1[:7], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        feats(np.zeros((2, 16, 16, 3), np.uint8))  # no resize
    with pytest.raises(ValueError):
        feats(images[..., 0])  # not RGB


def test_fd_real_halves_vs_noise(held_out):
    images, _ = held_out
    feats = dm.DigitsFeatures()
    perm = np.random.default_rng(0).permutation(len(images))
    half = len(images) // 2
    a, b = feats(images[perm[:half]]), feats(images[perm[half:]])
    noise = grey_to_rgb(np.random.default_rng(1).integers(0, 256, (len(images), 8, 8), dtype=np.uint8))
    fd_real = fd_features(a, b)
    fd_noise = fd_features(feats(images), feats(noise))
    assert 0.0 <= fd_real < fd_noise / 10


def _copy_assets(tmp_path):
    src = dm.asset_dir()
    for name in (dm.WEIGHTS_NAME, dm.SIDECAR_NAME):
        (tmp_path / name).write_bytes(src.joinpath(name).read_bytes())
    return tmp_path


def test_copied_assets_load(tmp_path, monkeypatch):
    d = _copy_assets(tmp_path)
    monkeypatch.setattr(dm, "asset_dir", lambda: d)
    net, side = dm.load_digits_net()
    assert side["format"] == dm.SIDECAR_FORMAT


@pytest.mark.parametrize("missing", [dm.WEIGHTS_NAME, dm.SIDECAR_NAME])
def test_missing_file_names_it(tmp_path, monkeypatch, missing):
    d = _copy_assets(tmp_path)
    (d / missing).unlink()
    monkeypatch.setattr(dm, "asset_dir", lambda: d)
    with pytest.raises(OdebenchError) as e:
        dm.load_digits_net()
    msg = str(e.value)
    assert missing in msg and "\n" not in msg


def test_tampered_weights_fail_checksum(tmp_path, monkeypatch):
    d = _copy_assets(tmp_path)
    blob = bytearray((d / dm.WEIGHTS_NAME).read_bytes())
    blob[-5] ^= 0x01  # one bit in the last tensor's data
    (d / dm.WEIGHTS_NAME).write_bytes(bytes(blob))
    monkeypatch.setattr(dm, "asset_dir", lambda: d)
    with pytest.raises(OdebenchError, match="checksum"):
        dm.load_digits_net()


def test_shipped_asset_small():
    assert len(dm.asset_dir().joinpath(dm.WEIGHTS_NAME).read_bytes()) < 1_000_000
