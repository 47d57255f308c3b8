"""Losses of the VAE v2 objective: a perceptual feature loss on a chest-X-ray network, and the PatchGAN terms.

MSE buys PSNR, not sharpness: a decoder trained on it alone smears lung markings and rib cortices. The
latent-diffusion autoencoders add a perceptual loss (LPIPS on VGG) and a patch adversarial loss whose weight adapts
to the reconstruction loss (Esser et al. 2021). LPIPS/VGG weights cannot be downloaded on these machines, so the
perceptual network here is one this project trains on radiographs: the backbone of the bundled pneumonia classifier
(`pretrained/pneumonia-classifier`, a `transformers` ResNet), frozen.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CXRInputError


class ClassifierPerceptualLoss(nn.Module):
    """
    LPIPS-style distance in the feature space of a frozen `transformers` ResNet image classifier.

    Each chosen stage's features are normalised to unit length over channels, squared differences are averaged over
    positions and summed over channels, and the stages are averaged (Zhang et al. 2018, without the learned linear
    heads). Images are grayscale in [-1, 1]; they are repeated to the classifier's channels and normalised with its
    image processor's mean and std, at their own size (the network is convolutional).

    Args:
        model: a `ResNetForImageClassification` (or `ResNetModel`).
        image_mean, image_std: the classifier's normalisation.
        layers: indices into the backbone's `hidden_states` (0 = stem, 1-4 = stages); the deepest stage is left out by
            default (at 128 px it is 4x4 and encodes the diagnosis, not the picture).
    """

    def __init__(self, model: nn.Module, image_mean, image_std, layers: tuple[int, ...] = (0, 1, 2, 3)):
        super().__init__()
        self.backbone = getattr(model, "resnet", model)
        self.backbone.eval().requires_grad_(False)
        self.layers = tuple(layers)
        channels = int(getattr(self.backbone.config, "num_channels", 3))
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        if self.mean.shape[1] != channels or self.std.shape[1] != channels:
            raise CXRInputError(f"image_mean/image_std must have {channels} values (the classifier's channels).")
        self.channels = channels

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> "ClassifierPerceptualLoss":
        """From a classifier folder saved by `train_classifier.py` (e.g. `pretrained/pneumonia-classifier`)."""
        from .classification.model import load_classifier

        model, processor = load_classifier(path)
        return cls(model, processor.image_mean, processor.image_std, **kwargs)

    def train(self, mode: bool = True) -> "ClassifierPerceptualLoss":
        super().train(mode)
        self.backbone.eval()  # frozen BatchNorm statistics, always
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images.float() + 1) / 2
        x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x
        x = (x - self.mean) / self.std
        hidden = self.backbone(pixel_values=x, output_hidden_states=True).hidden_states
        return [hidden[i] for i in self.layers]

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean perceptual distance (a scalar) between two batches of images."""
        if reconstruction.shape != target.shape:
            raise CXRInputError(f"shapes differ: {tuple(reconstruction.shape)} vs {tuple(target.shape)}.")
        distances = []
        for a, b in zip(self.features(reconstruction), self.features(target)):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            distances.append((a - b).pow(2).sum(dim=1).mean())
        return torch.stack(distances).mean()


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: push real logits above +1 and reconstructed ones below -1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's (decoder's) side of the hinge GAN: raise the discriminator's logits on reconstructions."""
    return -fake_logits.mean()


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """
    ||grad of the reconstruction loss|| / ||grad of the adversarial loss|| at the decoder's last layer (Esser et al.
    2021), detached and clamped to [0, max_weight]: the adversarial term then pulls about as hard as the
    reconstruction term whatever their scales.
    """
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
