"""Per-image metrics and distribution metrics: exact maths on toy data, sanity properties on real X-rays.

The real set is 64 px: Kermany test images from the shared data when present, otherwise 162 crops of the fixture
X-rays. Features come from randomly initialised networks built here (a tiny VAE and a tiny transformers ResNet), so
the tests need no trained weights.
"""

import glob
import itertools

import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR, shared_data_dir

from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.evaluation import image_quality as iq
from cxr_diffusers.evaluation.distribution import (
    density_coverage,
    distribution_metrics,
    frechet_distance,
    frechet_distance_from_statistics,
    kernel_distance,
    prdc,
    precision_recall,
)
from cxr_diffusers.evaluation.features import (
    ClassifierFeatureExtractor,
    FeatureExtractor,
    VAEFeatureExtractor,
    available_extractors,
    images_to_tensor,
)


# ----------------------------------------------------------------------------------------------------- helpers
def _fixture_patches():
    from PIL import Image, ImageOps

    from cxr_diffusers.data.transforms import resize_and_pad

    files = sorted(f for f in glob.glob(str(FIXTURES_DIR / "**" / "*"), recursive=True)
                   if f.lower().endswith((".png", ".jpeg", ".jpg")))
    patches = []
    for file in files:
        image = resize_and_pad(Image.open(file), 96)
        for flipped in (image, ImageOps.mirror(image)):
            for y in (0, 16, 32):
                for x in (0, 16, 32):
                    patches.append(flipped.crop((x, y, x + 64, y + 64)))
    return images_to_tensor(patches)


@pytest.fixture(scope="module")
def real():
    """(N, 1, 64, 64) real X-rays in [0, 1], N >= 120."""
    root = shared_data_dir() / "kermany_pneumonia_224" / "dataset" / "test"
    files = sorted(glob.glob(str(root / "*" / "*.jpeg")))
    if len(files) >= 120:
        from PIL import Image

        pick = np.random.default_rng(0).choice(len(files), 120, replace=False)
        return images_to_tensor([Image.open(files[i]).convert("L") for i in sorted(pick)], 64)
    return _fixture_patches()


@pytest.fixture(scope="module")
def vae_extractor():
    from cxr_diffusers import CXRAutoencoderKL, get_model_config

    torch.manual_seed(0)
    vae = CXRAutoencoderKL(**get_model_config("tiny")["vae"]).eval()
    return VAEFeatureExtractor(vae, image_size=64)


def tiny_resnet(num_channels=1):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                          num_labels=2, id2label={0: "NORMAL", 1: "PNEUMONIA"}, label2id={"NORMAL": 0, "PNEUMONIA": 1})
    return ResNetForImageClassification(config).eval()


@pytest.fixture(scope="module")
def classifier_extractor():
    return ClassifierFeatureExtractor(tiny_resnet(), image_size=64)


def _noisy(x, sigma, seed=1):
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def _blurred(x, sigma):
    import torchvision.transforms.functional as TF

    return x if sigma == 0 else TF.gaussian_blur(x, kernel_size=2 * int(3 * sigma) + 1, sigma=sigma)


# ------------------------------------------------------------------------------------------- per-image metrics
def test_intensity_statistics_and_image_statistics():
    a = np.zeros((32, 32))
    a[:, 16:] = 1.0
    assert iq.mean_intensity(a) == pytest.approx(0.5)
    assert iq.std_intensity(a) == pytest.approx(0.5)
    assert iq.mean_intensity((a * 255).astype(np.uint8)) == pytest.approx(0.5)
    stats = iq.image_statistics(a)
    assert {"mean_intensity", "std_intensity", "sharpness", "entropy", "contrast_ratio"} <= set(stats)
    # the colleague's quality_metrics keeps its exact keys
    assert "mean_intensity" not in iq.quality_metrics(a)


def test_ms_ssim_identity_noise_and_small_images(real):
    x = real[0, 0].numpy().astype(np.float64)
    assert iq.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    noisy = [_noisy(real[:1], s)[0, 0].numpy().astype(np.float64) for s in (0.05, 0.2)]
    values = [iq.ms_ssim(x, n) for n in noisy]
    assert 1.0 > values[0] > values[1] > 0
    assert iq.ms_ssim_window(256) == 11 and iq.ms_ssim_window(64) == 3
    with pytest.raises(CXRInputError, match="too small"):
        iq.ms_ssim(np.zeros((32, 32)), np.zeros((32, 32)))
    with pytest.raises(CXRInputError, match="same size"):
        iq.ms_ssim(x, x[:40])


def test_pairwise_ms_ssim_measures_diversity(real):
    same = [real[0, 0].numpy()] * 4
    varied = [a[0].numpy() for a in real[:6]]
    assert iq.pairwise_ms_ssim(same)["mean"] == pytest.approx(1.0, abs=1e-5)
    diverse = iq.pairwise_ms_ssim(varied, num_pairs=10, seed=0)
    assert diverse["pairs"] == 10 and diverse["mean"] < 0.95
    with pytest.raises(CXRInputError, match="at least 2"):
        iq.pairwise_ms_ssim(same[:1])


# --------------------------------------------------------------------------------------- Fréchet distance maths
def test_frechet_distance_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # shared eigenvectors: S1 S2 commute
    a, b = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_from_statistics(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_general_case_matches_eigen_formula():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = x @ x.T + np.eye(6), y @ y.T + np.eye(6)
    r = np.linalg.cholesky(s1)  # Tr sqrt(S1 S2) = sum sqrt(eig(L^T S2 L))
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(r.T @ s2 @ r)).sum()
    expected = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance_from_statistics(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_statistics(np.zeros(6), s1, np.zeros(6), s2) == pytest.approx(
        frechet_distance_from_statistics(np.zeros(6), s2, np.zeros(6), s1), rel=1e-8)


def test_frechet_distance_of_samples_estimates_mean_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.02)


def test_frechet_distance_edge_cases():
    rng = np.random.default_rng(3)
    few = rng.normal(size=(5, 20))  # singular covariances (N < D)
    assert np.isfinite(frechet_distance(few, rng.normal(size=(5, 20))))
    with pytest.raises(CXRInputError, match="widths"):
        frechet_distance(few, few[:, :10])
    with pytest.raises(CXRInputError, match="NaN"):
        frechet_distance(few, np.full((5, 20), np.nan))


# ------------------------------------------------------------------------------------------------ KID maths
def test_kid_is_the_unbiased_polynomial_mmd():
    from sklearn.metrics.pairwise import polynomial_kernel

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(40, 8)) + 0.3
    m = 30  # one subset of min(30, 40) rows, drawn as kernel_distance(seed=0) does: x first, then y
    draw = np.random.default_rng(0)
    xs, ys = x[draw.choice(30, m, replace=False)], y[draw.choice(40, m, replace=False)]
    kxx, kyy, kxy = (polynomial_kernel(p, q, degree=3, gamma=1 / 8, coef0=1) for p, q in ((xs, xs), (ys, ys), (xs, ys)))
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    mean, std = kernel_distance(x, y, num_subsets=1, subset_size=1000, seed=0)
    assert mean == pytest.approx(expected, rel=1e-10) and std == 0.0


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    mean, std = kernel_distance(a, b, num_subsets=50, subset_size=100)
    assert abs(mean) < 3 * std + 1e-3
    shifted, _ = kernel_distance(a, b + 0.5, num_subsets=50, subset_size=100)
    assert shifted > 10 * abs(mean) and shifted > 0


# ------------------------------------------------------------------------------------------- k-NN metrics maths
def test_prdc_on_a_hand_worked_example():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    # k=1: every real radius is 1; fake radii are 9.5
    assert prdc(real, fake, k=1) == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.5}
    assert precision_recall(real, fake, k=1) == {"precision": 0.5, "recall": 1.0}
    assert density_coverage(real, fake, k=1) == {"density": 1.0, "coverage": 0.5}
    with pytest.raises(CXRInputError, match="more than k"):
        prdc(real, fake, k=2)


def test_prdc_of_a_set_with_itself():
    x = np.random.default_rng(6).normal(size=(50, 4))
    out = prdc(x, x, k=5)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0 and out["density"] >= 1.0


# ---------------------------------------------------------------------------- sanity on real X-ray features
def test_extractors_return_n_by_d_and_follow_the_protocol(real, vae_extractor, classifier_extractor):
    assert isinstance(vae_extractor, FeatureExtractor) and isinstance(classifier_extractor, FeatureExtractor)
    f = vae_extractor(real[:5])
    assert f.shape == (5, 8 * (2 + 4)) and f.dtype == np.float64
    c = classifier_extractor(real[:5])
    assert c.shape == (5, 32)
    # PIL images, arrays and tensors give the same features
    from PIL import Image

    pil = [Image.fromarray((a[0].numpy() * 255).round().astype(np.uint8)) for a in real[:3]]
    q = torch.from_numpy(np.stack([np.asarray(p) for p in pil]).astype(np.float32) / 255)[:, None]
    np.testing.assert_allclose(classifier_extractor(pil), classifier_extractor(q), rtol=1e-5, atol=1e-6)
    assert classifier_extractor.predict(real[:4])[0] in ("NORMAL", "PNEUMONIA")
    assert classifier_extractor.predict_proba(real[:4]).sum(axis=1) == pytest.approx(np.ones(4), abs=1e-5)
    assert available_extractors()["vae"] is True and available_extractors("/nonexistent")["classifier"] is False


def test_fd_of_a_set_with_itself_is_zero(real, vae_extractor, classifier_extractor):
    for extractor in (vae_extractor, classifier_extractor):
        f = extractor(real)
        assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_fd_grows_monotonically_with_degradation(real, vae_extractor, classifier_extractor, kind):
    subset = real[:64]
    levels = (0.05, 0.1, 0.2, 0.4) if kind == "noise" else (0.5, 1.0, 2.0, 3.0)
    degrade = _noisy if kind == "noise" else _blurred
    for extractor in (vae_extractor, classifier_extractor):
        f = extractor(subset)
        fds = [frechet_distance(f, f)] + [frechet_distance(f, extractor(degrade(subset, level))) for level in levels]
        assert fds[0] == pytest.approx(0.0, abs=1e-9)
        assert all(b > a for a, b in itertools.pairwise(fds)), (extractor.name, kind, fds)


def test_kid_of_two_halves_of_a_real_set_is_near_zero(real, classifier_extractor):
    f = classifier_extractor(real)
    halves = kernel_distance(f[0::2], f[1::2], num_subsets=50, subset_size=50)
    noise = kernel_distance(f, classifier_extractor(torch.rand(real.shape, generator=torch.Generator().manual_seed(0))),
                            num_subsets=50, subset_size=50)
    assert abs(halves[0]) < 3 * halves[1] + 1e-4
    assert noise[0] > 20 * max(abs(halves[0]), halves[1])


def test_precision_recall_drop_when_a_set_is_replaced_by_noise(real, classifier_extractor):
    f = classifier_extractor(real)
    halves = prdc(f[0::2], f[1::2], k=5)
    noise = prdc(f, classifier_extractor(torch.rand(real.shape, generator=torch.Generator().manual_seed(0))), k=5)
    assert halves["precision"] >= 0.8 and halves["recall"] >= 0.8 and halves["coverage"] >= 0.8
    assert noise["precision"] <= 0.1 and noise["recall"] <= 0.1 and noise["coverage"] <= 0.1


def test_distribution_metrics_bundle(real, vae_extractor):
    f = vae_extractor(real[:60])
    out = distribution_metrics(f[:40], f[40:60], k=5, kid_subsets=5, kid_subset_size=20)
    assert {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage", "k"} <= set(out)
    assert out["n_real"] == 40 and out["n_generated"] == 20 and out["feature_dim"] == f.shape[1]
    small = distribution_metrics(f[:3], f[3:6])  # k shrinks to fit tiny sets
    assert small["k"] == 2


def test_images_to_tensor_accepts_common_inputs(real):
    from PIL import Image

    arr = (real[:2, 0].numpy() * 255).astype(np.uint8)
    assert images_to_tensor(arr).shape == (2, 1, 64, 64)
    assert images_to_tensor(real[:2, 0].numpy()[..., None]).shape == (2, 1, 64, 64)
    assert images_to_tensor([Image.fromarray(arr[0]).resize((80, 50))], 32).shape == (1, 1, 32, 32)
    assert images_to_tensor(real[:2], (32, 48)).shape == (2, 1, 32, 48)
    with pytest.raises(CXRInputError, match="shape"):
        images_to_tensor(torch.zeros(2, 3, 8, 8))
    with pytest.raises(CXRInputError, match="different sizes"):
        images_to_tensor([np.zeros((8, 8)), np.zeros((9, 9))])


def test_classifier_extractor_reads_a_saved_image_processor(tmp_path, real):
    """A folder like the project classifier's (3-channel ResNet + ViTImageProcessor with ImageNet mean/std) gives the
    pooled features of the model applied to the processor's own pixel values."""
    from PIL import Image
    from transformers import ViTImageProcessor

    model = tiny_resnet(num_channels=3)
    model.save_pretrained(tmp_path)
    processor = ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    processor.save_pretrained(tmp_path)
    extractor = ClassifierFeatureExtractor.from_pretrained(tmp_path)
    assert extractor.image_size == (64, 64) and extractor.num_channels == 3 and extractor.labels == ["NORMAL", "PNEUMONIA"]
    images = [Image.fromarray((a[0].numpy() * 255).round().astype(np.uint8)) for a in real[:3]]
    pixel_values = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.resnet(pixel_values).pooler_output.flatten(1).numpy()
        expected_proba = torch.softmax(model(pixel_values).logits, dim=1).numpy()
    calls = []
    hook = extractor.model.resnet.register_forward_hook(lambda *args: calls.append(1))
    np.testing.assert_allclose(extractor(images), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(extractor.predict_proba(images), expected_proba, rtol=1e-4, atol=1e-5)
    hook.remove()
    assert len(calls) == 2  # one backbone pass per batch gives both features and logits
    with pytest.raises(CXRInputError, match="config.json"):
        ClassifierFeatureExtractor.from_pretrained(tmp_path / "missing")
