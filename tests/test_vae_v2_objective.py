"""The VAE v2 objective: PatchGAN discriminator, perceptual loss on the bundled classifier, adaptive weight."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cxr_diffusers import CXRAutoencoderKL, CXRInputError, CXRPatchDiscriminator
from cxr_diffusers.configs import get_model_config
from cxr_diffusers.losses import (
    ClassifierPerceptualLoss,
    adaptive_adversarial_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)

from conftest import REPO_ROOT

CLASSIFIER = REPO_ROOT / "pretrained" / "pneumonia-classifier"


def test_discriminator_scores_patches_and_round_trips(tmp_path):
    torch.manual_seed(0)
    disc = CXRPatchDiscriminator(base_channels=8, num_layers=3).eval()
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    logits = disc(x)
    assert logits.shape == (2, 1, 14, 14)  # 70x70 patches of a 128 px crop
    disc.save_pretrained(tmp_path)
    loaded = CXRPatchDiscriminator.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(x), logits)
    with pytest.raises(CXRInputError, match="shape"):
        disc(torch.zeros(1, 3, 64, 64))


def test_spectral_norm_discriminator_has_no_batchnorm_bounded_layers_and_round_trips(tmp_path):
    torch.manual_seed(0)
    disc = CXRPatchDiscriminator(base_channels=8, num_layers=3, norm="spectral")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules())
    x = torch.rand(2, 1, 128, 128) * 2 - 1
    for _ in range(20):  # power iterations (training mode) converge to the largest singular value
        disc(x)
    disc.eval()
    for conv in (m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)):
        sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, rel=0.05)
    # a patch's score does not depend on the other images of the batch (it would with BatchNorm in training mode)
    # (copies: each training-mode call also runs one power iteration)
    alone = copy.deepcopy(disc).train()(x[:1])
    together = copy.deepcopy(disc).train()(torch.cat([x[:1], -x[1:]]))[:1]
    torch.testing.assert_close(alone, together)
    batch_norm = CXRPatchDiscriminator(base_channels=8, num_layers=3).train()
    assert not torch.allclose(batch_norm(x[:1].repeat(2, 1, 1, 1))[:1], batch_norm(torch.cat([x[:1], -x[1:]]))[:1])
    logits = disc.eval()(x)
    assert logits.shape == (2, 1, 14, 14)
    disc.save_pretrained(tmp_path)
    loaded = CXRPatchDiscriminator.from_pretrained(tmp_path).eval()
    assert loaded.config.norm == "spectral"
    torch.testing.assert_close(loaded(x), logits)
    with pytest.raises(CXRInputError, match="norm"):
        CXRPatchDiscriminator(norm="instance")


def test_hinge_losses():
    assert hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)
    assert generator_adversarial_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_adaptive_weight_balances_gradient_norms():
    layer = torch.nn.Parameter(torch.ones(3))
    reconstruction = (layer * 2.0).sum()  # gradient norm 2 * sqrt(3)
    adversarial = (layer * 0.5).sum()  # gradient norm 0.5 * sqrt(3)
    weight = adaptive_adversarial_weight(reconstruction, adversarial, layer)
    assert weight.item() == pytest.approx(4.0, rel=1e-3)
    assert not weight.requires_grad


@pytest.mark.skipif(not (CLASSIFIER / "config.json").is_file(), reason="bundled classifier absent")
def test_perceptual_loss_is_zero_for_identical_images_and_grows_with_blur(fixtures_dir):
    from PIL import Image

    from cxr_diffusers.training_utils import image_to_tensor

    loss = ClassifierPerceptualLoss.from_pretrained(CLASSIFIER)
    files = sorted((fixtures_dir / "kermany").rglob("*.jpeg"))
    x = torch.stack([image_to_tensor(Image.open(f), 128) for f in files])
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    blurred_little = F.avg_pool2d(x, 3, 1, 1)
    blurred_more = F.avg_pool2d(x, 7, 1, 3)
    assert 0 < loss(blurred_little, x).item() < loss(blurred_more, x).item()
    # the backbone is frozen (no parameter gradients) but gradients reach the image
    y = blurred_more.clone().requires_grad_(True)
    loss(y, x).backward()
    assert y.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    loss.train()
    assert not loss.backbone.training  # BatchNorm statistics stay frozen


def test_vae_forward_returns_the_posterior_it_decoded():
    vae = CXRAutoencoderKL(**get_model_config("tiny")["vae"]).eval()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    output = vae(x)
    torch.testing.assert_close(output.sample, vae.decode(output.latent_dist.mode()).sample)
    assert vae(x, return_dict=False)[0].shape == x.shape
