"""The one registry of model sizes: every named size configures every component, and every script reads it."""

import pytest

from cxr_diffusers.configs import MODEL_CONFIGS, get_model_config


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_every_named_size_configures_every_component(name):
    from diffusers import UNet2DModel

    from cxr_diffusers.classification.model import resolve_architecture

    config = get_model_config(name)
    assert set(config) == {"vae", "unet", "text_encoder", "tiny_autoencoder", "ddpm", "classifier"}
    assert config["tiny_autoencoder"]["latent_channels"] == config["vae"]["latent_channels"]
    assert resolve_architecture(name) == config["classifier"]["architecture"]
    unet = UNet2DModel(**config["ddpm"], sample_size=32, in_channels=1, out_channels=1)
    assert unet.config.block_out_channels == tuple(config["ddpm"]["block_out_channels"])
    config["vae"]["latent_channels"] = -1  # a copy: the registry itself is unchanged
    assert MODEL_CONFIGS[name]["vae"]["latent_channels"] == 8


def test_train_ddpm_builds_its_unet_from_the_registry():
    import importlib.util
    import sys

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("train_ddpm_registry", REPO_ROOT / "train_scripts" / "train_ddpm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    args = module.parse_args(["--train_data_dir", str(REPO_ROOT), "--model_config", "tiny", "--resolution", "32"])
    unet = module.build_unet(args)
    assert unet.config.block_out_channels == tuple(MODEL_CONFIGS["tiny"]["ddpm"]["block_out_channels"])
