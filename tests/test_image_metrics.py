"""Image metrics (FID, FD-DINOv2, CLIP score, aesthetic, precision/recall) with tiny random models.

Every backbone is loaded through its real loading path from files written here; results are
checked against computations done independently in the tests. Offline: nothing may download.
"""
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from odebench.errors import OdebenchError  # noqa: E402
from odebench.metrics.fd import fd_features, frechet_distance
from odebench.metrics.registry import REGISTRY

from tiny_backbones import TINY_CLIP, TinyInception, write_tiny_clip  # noqa: E402,F401  (shared with test_sdxl)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network, an empty $ODEBENCH_WEIGHTS and an empty Hugging Face cache for every test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("ODEBENCH_WEIGHTS", str(weights))
    hf = tmp_path / "hf-cache"
    hf.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hc

        monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hf))
    except ImportError:
        pass
    return weights


def images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------- FD --

def test_fd_closed_form_gaussians():
    rng = np.random.default_rng(0)
    # commuting covariances S = Q diag(a) Q^T: FD = |dmu|^2 + sum (sqrt a - sqrt b)^2
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-10)
    # non-commuting 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2 (positive eigenvalues)
    s1, s2 = np.array([[2.0, 0.7], [0.7, 1.0]]), np.array([[0.5, -0.2], [-0.2, 3.0]])
    m = s1 @ s2
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))
    assert frechet_distance([0, 0], s1, [1, 0], s2) == pytest.approx(expected, rel=1e-12)
    # features whose sample mean and covariance are exactly (mu, L L^T): whitened draws, mapped
    def exact_gaussian_features(mu, chol, n):
        z = rng.standard_normal((n, len(mu)))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
        return z @ chol.T + mu
    la, lb = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
    fa, fb = exact_gaussian_features(np.zeros(2), la, 500), exact_gaussian_features(np.array([1.0, 0.0]), lb, 700)
    assert fd_features(fa, fb) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [64, 256])
def test_fd_agrees_with_clean_fid(d):
    cfid = pytest.importorskip("cleanfid.fid")
    rng = np.random.default_rng(d)
    mus = rng.standard_normal((2, d))
    covs = []
    for _ in range(2):
        a = rng.standard_normal((d, 2 * d)) @ np.diag(rng.uniform(0.2, 2, 2 * d))
        covs.append(a @ a.T / (2 * d))
    ours = frechet_distance(mus[0], covs[0], mus[1], covs[1])
    theirs = float(cfid.frechet_distance(mus[0], covs[0], mus[1], covs[1]))
    assert ours == pytest.approx(theirs, rel=1e-6)


# ------------------------------------------------------------------------------------- prdc --

def brute_precision_recall(real, fake, k):
    dist = lambda x, y: np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))  # noqa: E731
    r_real = np.sort(dist(real, real), axis=1)[:, k]
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)
    return (d <= r_real[:, None]).any(0).mean(), (d <= r_fake[None, :]).any(1).mean()


def test_prdc_identical_displaced_and_hand_checked():
    from odebench.metrics.prdc import precision_recall, prdc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16))
    m = prdc(x, x.copy(), "same set", "test features")
    assert m["precision"].value == 1.0 and m["recall"].value == 1.0
    assert m["precision"].higher_is_better and m["recall"].higher_is_better
    m = prdc(x + 1e3, x, "far set", "test features")
    assert m["precision"].value == 0.0 and m["recall"].value == 0.0

    # by hand, k = 1 on a line.  real -40,0,1,2,3,30,33 -> radii 40,1,1,1,1,3,3; fake 4,20,37 -> radii 16,16,17.
    # precision: fake 4 lies exactly on the ball of real 3 (distance 1 = radius; the boundary counts as
    # inside), fake 20 is 10 > 3 from real 30, fake 37 is 4 > 3 from real 33 -> 1/3.
    # recall: every real point is within 16 of fake 4 or fake 20 except -40 (44, 60, 77 away) -> 6/7.
    real = np.array([[-40.0, 0], [0, 0], [1, 0], [2, 0], [3, 0], [30, 0], [33, 0]])
    fake = np.array([[4.0, 0], [20, 0], [37, 0]])
    m = prdc(fake, real, "hand", "line", k=1)
    assert m["precision"].value == pytest.approx(1 / 3) and m["recall"].value == pytest.approx(6 / 7)
    assert m["precision"].n == 3

    # chunked computation agrees with a brute-force one, for tiny and default chunks
    real, fake = rng.standard_normal((150, 8)), rng.standard_normal((120, 8)) * 1.3 + 0.4
    p_ref, r_ref = brute_precision_recall(real, fake, 3)
    for chunk in (8 * 7, 1 << 27):
        pin, rin = precision_recall(real, fake, k=3, chunk_bytes=chunk)
        assert pin.mean() == pytest.approx(p_ref) and rin.mean() == pytest.approx(r_ref)
    assert 0 < p_ref < 1 and 0 < r_ref < 1


# -------------------------------------------------------------------------------- Inception --

def pil_clean_resize(img):
    """clean-fid's clean mode, written out: per-channel float32 PIL bicubic to 299, clip."""
    from PIL import Image

    chans = [np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC))
             for c in range(3)]
    return np.stack(chans, 0).clip(0, 255).astype(np.float32)


def test_inception_features_through_real_loading_path(offline):
    pytest.importorskip("cleanfid")
    from cleanfid.resize import build_resizer

    from odebench.metrics.inception import INCEPTION_FILE, InceptionFeatures, fid

    torch.manual_seed(0)
    scripted = torch.jit.script(TinyInception().eval())
    torch.jit.save(scripted, str(offline / INCEPTION_FILE))
    ext = InceptionFeatures(device="cpu", batch_size=3)
    assert ext.name == "inception" and INCEPTION_FILE in ext.identity and "sha256:" in ext.identity
    assert "clean-fid clean resize 299" in ext.identity and "pool3 2048" in ext.identity

    imgs = images(5, 37, 53)
    resized = ext.resize(imgs)
    clean = build_resizer("clean")
    for i, img in enumerate(imgs):
        theirs = clean(img).transpose(2, 0, 1)
        np.testing.assert_array_equal(resized[i], theirs)
        np.testing.assert_array_equal(pil_clean_resize(img), theirs)

    feats = ext(imgs)
    assert feats.dtype == np.float64 and feats.shape == (5, 2048)
    with torch.no_grad():
        x = torch.from_numpy(np.stack([pil_clean_resize(img) for img in imgs]))
        expected = scripted.layers((x - 128) / 128).double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)

    # the metric value (on a 16-d slice: a 2048-d FD costs seconds of eigendecomposition)
    ref = ext(images(6, 40, 40, seed=1))
    m = fid(feats[:, :16], ref[:, :16], "tiny ref set", ext.identity, stderr_reps=3)
    assert m.value == pytest.approx(fd_features(feats[:, :16], ref[:, :16]))
    assert m.value > 0 and m.stderr is not None and not m.higher_is_better
    assert "tiny ref set" in m.identity and INCEPTION_FILE in m.identity and m.n == 5


def test_inception_accepts_injected_callable():
    pytest.importorskip("cleanfid")
    from odebench.metrics.inception import InceptionFeatures

    seen = []

    def fake(x):
        seen.append(x)
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    ext = InceptionFeatures(model=fake, model_name="fake", device="cpu")
    f = ext(images(2, 299, 299))
    assert f.shape == (2, 2048) and seen[0].shape == (2, 3, 299, 299) and float(seen[0].max()) <= 255
    assert "injected model fake" in ext.identity


# ----------------------------------------------------------------------------------- DINOv2 --

def test_dinov2_features_through_real_loading_path(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch.nn.functional as F

    from odebench.metrics.dinov2 import DinoV2Features, fd_dinov2

    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=224)
    model = transformers.Dinov2Model(cfg).eval()
    folder = tmp_path / "tiny-dinov2"
    model.save_pretrained(folder)

    ext = DinoV2Features(folder, device="cpu", batch_size=2)
    assert ext.name == "dinov2" and "model.safetensors sha256:" in ext.identity and "224" in ext.identity
    imgs = images(3, 50, 70)
    feats = ext(imgs)
    assert feats.shape == (3, 32) and feats.dtype == np.float64

    x = torch.tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False) / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        expected = model(pixel_values=x).pooler_output.double().numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)

    m = fd_dinov2(feats, ext(images(4, 30, 30, seed=2)), "ref", ext.identity, stderr_reps=0)
    assert m.stderr is None and m.value > 0


# ------------------------------------------------------------------------ CLIP and aesthetic --

@pytest.fixture
def tiny_clip(tmp_path):
    """A tiny open_clip config (768-d embeddings, as the aesthetic MLP needs), random weights saved."""
    pytest.importorskip("open_clip")
    return write_tiny_clip(tmp_path)


def manual_embeddings(model, imgs, prompts):
    import open_clip
    from PIL import Image

    preprocess = open_clip.image_transform(32, is_train=False)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.fromarray(i)) for i in imgs])).double().numpy()
        txt = model.encode_text(open_clip.tokenize(prompts)).double().numpy()
    return img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)


PROMPTS = ["a photo of a cat", "a red car", "an astronaut riding a horse", "digits", "a bowl of fruit"]


def test_clip_torchmetrics_form_equals_torchmetrics(tiny_clip):
    """torchmetrics' own clip_score, fed the same tiny open_clip weights and preprocessing through its
    `model_name_or_path` callable, equals the torchmetrics form: it clamps after averaging."""
    import open_clip
    from PIL import Image
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score

    from odebench.metrics.clip import ClipScorer

    model, path = tiny_clip
    preprocess = open_clip.image_transform(32, is_train=False)

    class Processor:  # the slice of transformers' CLIPProcessor that torchmetrics calls
        def __call__(self, images=None, text=None, **_):
            if images is not None:
                return {"pixel_values": torch.stack([preprocess(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])}
            ids = open_clip.tokenize(text)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    class Model(torch.nn.Module):  # ... and of CLIPModel
        config = object()

        def get_image_features(self, pixel_values):
            return model.encode_image(pixel_values)

        def get_text_features(self, input_ids, attention_mask):
            return model.encode_text(input_ids)

    scorer = ClipScorer(TINY_CLIP, pretrained=str(path), device="cpu", batch_size=2)
    for seed in range(4):  # random tiny weights: some sets have a negative mean cosine, some not
        imgs = images(5, 40, 48, seed=seed)
        with torch.no_grad():
            ref = float(tm_clip_score([torch.from_numpy(i).permute(2, 0, 1) for i in imgs], PROMPTS,
                                      lambda: (Model(), Processor())))
        ours = scorer.clip_score(imgs, PROMPTS, torchmetrics_form=True)
        assert ours.value == pytest.approx(ref, abs=1e-3)
    cos = scorer.cosines(imgs, PROMPTS)
    assert (cos < 0).any()  # where clamping before averaging (the old form) would differ


def test_clip_score_through_real_loading_path(tiny_clip):
    from odebench.metrics.clip import ClipScorer

    model, path = tiny_clip
    scorer = ClipScorer(TINY_CLIP, pretrained=str(path), device="cpu", batch_size=2)
    imgs = images(5, 40, 48)
    img, txt = manual_embeddings(model, imgs, PROMPTS)
    cos = (img * txt).sum(1)
    m = scorer.clip_score(imgs, PROMPTS)
    assert m.value == pytest.approx(cos.mean(), abs=1e-6)
    assert m.stderr == pytest.approx(cos.std(ddof=1) / math.sqrt(5), rel=1e-4)
    assert m.higher_is_better and m.n == 5 and "tiny_clip.bin sha256:" in m.identity and "raw cosine" in m.identity
    t = scorer.clip_score(imgs, PROMPTS, torchmetrics_form=True)
    assert t.value == pytest.approx(max(100 * cos.mean(), 0), abs=1e-4) and "torchmetrics" in t.identity
    # as a FeatureExtractor: raw image embeddings
    f = scorer(imgs)
    assert scorer.name == "clip" and f.shape == (5, 768) and f.dtype == np.float64
    np.testing.assert_allclose(f / np.linalg.norm(f, axis=1, keepdims=True), img, atol=1e-6)
    with pytest.raises(OdebenchError, match="one prompt per image"):
        scorer.clip_score(imgs, PROMPTS[:2])


def test_clip_loads_openai_style_torchscript_archive(tiny_clip, tmp_path):
    """OpenAI's ViT-L-14.pt is a TorchScript archive: its state dict is loaded into the open_clip model."""
    from odebench.metrics.clip import ClipScorer

    model, _ = tiny_clip
    traced = torch.jit.trace_module(model, {"encode_image": torch.zeros(1, 3, 32, 32)}, check_trace=False)
    archive = tmp_path / "ViT-L-14.pt"
    traced.save(str(archive))
    scorer = ClipScorer(TINY_CLIP, pretrained=str(archive), device="cpu")
    imgs = images(3, 32, 32, seed=5)
    img, txt = manual_embeddings(model, imgs, PROMPTS[:3])
    np.testing.assert_allclose(scorer.image_embeddings(imgs), img, atol=1e-6)
    np.testing.assert_allclose(scorer.text_embeddings(PROMPTS[:3]), txt, atol=1e-6)


def collapse_affine(sd):
    w = np.eye(768)
    b = np.zeros(768)
    for i in (0, 2, 4, 6, 7):
        wi, bi = sd[f"layers.{i}.weight"].double().numpy(), sd[f"layers.{i}.bias"].double().numpy()
        w, b = wi @ w, wi @ b + bi
    return w, b  # score = w @ e + b, shapes (1, 768), (1,)


def test_aesthetic_score_is_the_collapsed_affine_map(tiny_clip, tmp_path):
    from odebench.metrics.aesthetic import AESTHETIC_FILE, AestheticScorer, build_mlp
    from odebench.metrics.clip import ClipScorer

    model, path = tiny_clip
    torch.manual_seed(1)
    sd = {k: torch.randn_like(v) * 0.1 for k, v in build_mlp().state_dict().items()}
    assert sorted(sd) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    weights = tmp_path / AESTHETIC_FILE
    torch.save(sd, weights)

    scorer = AestheticScorer(weights, clip=ClipScorer(TINY_CLIP, pretrained=str(path), device="cpu"))
    imgs = images(4, 32, 32, seed=3)
    emb, _ = manual_embeddings(model, imgs, PROMPTS[:4])
    w, b = collapse_affine(sd)
    expected = emb @ w[0] + b[0]
    m = scorer.aesthetic_score(imgs)
    assert m.value == pytest.approx(expected.mean(), rel=1e-6, abs=1e-9)
    assert m.stderr == pytest.approx(expected.std(ddof=1) / 2, rel=1e-4)
    assert m.higher_is_better and AESTHETIC_FILE in m.identity and "sha256:" in m.identity


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_aesthetic_refuses_pickled_code(tmp_path):
    from odebench.metrics.aesthetic import AestheticScorer, build_mlp, load_aesthetic_mlp

    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pth"
    torch.save({"layers.0.weight": Exploit(marker)}, bad)
    with pytest.raises(OdebenchError, match="refusing") as e:
        load_aesthetic_mlp(bad)
    assert not marker.exists()
    assert "weights_only=False" not in str(e.value) and len(str(e.value)) < 250  # one short line, never the unsafe advice
    whole = tmp_path / "module.pth"
    torch.save(build_mlp(), whole)  # a pickled module (code references), not a state dict
    with pytest.raises(OdebenchError, match="refusing"):
        AestheticScorer(whole, clip=object())
    wrong = tmp_path / "wrong.pth"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(OdebenchError, match="keys"):
        load_aesthetic_mlp(wrong)


# ------------------------------------------------------------------------- missing weights --

def test_missing_weights_name_the_file_and_download_nothing(offline, tmp_path):
    import huggingface_hub.constants as hc

    checks = []
    if _has("cleanfid"):
        from odebench.metrics.inception import InceptionFeatures
        checks.append((lambda: InceptionFeatures(device="cpu"), "inception-2015-12-05.pt"))
    if _has("transformers"):
        from odebench.metrics.dinov2 import DinoV2Features
        checks.append((lambda: DinoV2Features(device="cpu"), "facebook/dinov2-large"))
    if _has("open_clip"):
        from odebench.metrics.clip import ClipScorer
        checks.append((lambda: ClipScorer(device="cpu"), "open_clip_pytorch_model.bin"))
    from odebench.metrics.aesthetic import AestheticScorer
    checks.append((lambda: AestheticScorer(clip=object()), "sac+logos+ava1-l14-linearMSE.pth"))
    for make, expected in checks:
        with pytest.raises(OdebenchError) as e:
            make()
        msg = str(e.value)
        assert expected in msg and "ODEBENCH_WEIGHTS" in msg and "\n" not in msg, msg
    assert list(offline.iterdir()) == [] and list(__import__("pathlib").Path(hc.HF_HUB_CACHE).iterdir()) == []

    from odebench.weights import resolve_weights
    with pytest.raises(OdebenchError, match="does not exist"):
        resolve_weights(str(tmp_path / "nope.pt"), "FID", flag="--fid-weights")


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def test_weights_found_in_env_dir_and_hf_cache(offline):
    from odebench.weights import file_sha256, resolve_weights, weights_tag
    import hashlib

    (offline / "w.pt").write_bytes(b"abc")
    p = resolve_weights("w.pt", "test")
    assert p == offline / "w.pt"
    assert file_sha256(p) == hashlib.sha256(b"abc").hexdigest()
    assert weights_tag(p) == f"w.pt sha256:{hashlib.sha256(b'abc').hexdigest()[:12]}"
    (offline / "some-model").mkdir()
    assert resolve_weights("org/some-model", "test") == offline / "some-model"


def test_metrics_registered():
    import odebench.metrics.aesthetic  # noqa: F401
    import odebench.metrics.clip  # noqa: F401
    import odebench.metrics.dinov2  # noqa: F401
    import odebench.metrics.inception  # noqa: F401
    import odebench.metrics.prdc  # noqa: F401

    for name, hib in [("fid", False), ("fd_dinov2", False), ("clip_score", True), ("aesthetic", True),
                      ("precision", True), ("recall", True), ("fd_clip", False)]:
        assert REGISTRY[name].higher_is_better is hib
