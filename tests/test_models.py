"""Model classes: shapes, dtypes, save/load round trips, named configurations and published parameter counts."""

import json

import pytest
import torch

from cxr_diffusers import (
    CXRAutoencoderKL,
    CXRInputError,
    CXRTextEncoder,
    CXRUNet2DConditionModel,
    MODEL_CONFIGS,
    get_model_config,
)
from cxr_diffusers.models import offline_bert_path


def count(module, trainable=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


@pytest.fixture(scope="module")
def tiny():
    return get_model_config("tiny")


def test_vae_shapes_and_distribution(tiny):
    vae = CXRAutoencoderKL(**tiny["vae"]).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    posterior = vae.encode(x).latent_dist
    assert posterior.mean.shape == (2, 8, 8, 8)  # 8x downsampling, 8 latent channels
    z = posterior.sample(generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 8, 8, 8)
    assert posterior.kl().shape == (2,)
    assert vae.decode(z).sample.shape == (2, 1, 64, 64)
    assert vae(x).sample.shape == x.shape


def test_vae_attention_only_at_two_lowest_levels():
    vae = CXRAutoencoderKL()
    kinds = [type(b).__name__ for b in vae.encoder.down_blocks]
    assert kinds == ["DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    assert [type(b).__name__ for b in vae.decoder.up_blocks][:2] == ["AttnUpDecoderBlock2D"] * 2
    assert vae.config.latent_channels == 8 and vae.config.in_channels == 1
    assert "scaling_factor" in vae.config


def test_vae_rejects_bad_input(tiny):
    vae = CXRAutoencoderKL(**tiny["vae"])
    with pytest.raises(CXRInputError, match="shape"):
        vae.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(CXRInputError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 1, 60, 64))


def test_unet_forward_with_mask(tiny):
    unet = CXRUNet2DConditionModel(**tiny["unet"]).eval()
    sample = torch.randn(2, 8, 8, 8)
    states = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = unet(sample, torch.tensor([10, 500]), states, encoder_attention_mask=mask).sample
    assert out.shape == sample.shape and out.dtype == torch.float32
    # Padding tokens are masked out: changing them must not change the output of the first sample.
    states2 = states.clone()
    states2[0, 3:] = torch.randn(2, 32)
    out2 = unet(sample, torch.tensor([10, 500]), states2, encoder_attention_mask=mask).sample
    torch.testing.assert_close(out[0], out2[0], atol=1e-5, rtol=1e-5)
    # Cross-attention really uses the text.
    out3 = unet(sample, torch.tensor([10, 500]), torch.randn(2, 5, 32), encoder_attention_mask=mask).sample
    assert not torch.allclose(out, out3)


def test_unet_rejects_bad_input(tiny):
    unet = CXRUNet2DConditionModel(**tiny["unet"])
    with pytest.raises(CXRInputError, match="cross_attention_dim"):
        unet(torch.randn(1, 8, 8, 8), 1, torch.randn(1, 4, 16))
    with pytest.raises(CXRInputError, match="multiples of 2"):
        unet(torch.randn(1, 8, 7, 8), 1, torch.randn(1, 4, 32))


def test_text_encoder_outputs_and_freeze(tiny):
    enc = CXRTextEncoder(**tiny["text_encoder"]).eval()
    ids = torch.tensor([[101, 2000, 102, 0]])
    out = enc(ids, attention_mask=torch.tensor([[1, 1, 1, 0]]))
    assert out.last_hidden_state.shape == (1, 4, 32)
    assert out.attention_mask.tolist() == [[1, 1, 1, 0]]
    trainable = {n.split(".")[0] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"projection", "norm"}
    enc.freeze_body(False)
    assert all(p.requires_grad for p in enc.parameters())
    with pytest.raises(CXRInputError, match="vocabulary"):
        enc(torch.tensor([[10**6]]))


def test_text_encoder_from_offline_bert_keeps_weights():
    from transformers import BertModel

    enc = CXRTextEncoder.from_bert(None, projection_dim=64)
    reference = BertModel.from_pretrained(offline_bert_path(), add_pooling_layer=False)
    torch.testing.assert_close(
        enc.bert.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )
    assert enc.config.bert_config["hidden_size"] == 384
    assert count(enc, trainable=True) == 384 * 64 + 64 + 2 * 64


def test_text_encoder_from_bert_missing_checkpoint():
    from cxr_diffusers import ModelLoadingError

    with pytest.raises(ModelLoadingError, match="Could not load a BERT"):
        CXRTextEncoder.from_bert("/nonexistent/bert")


@pytest.mark.parametrize("cls", [CXRAutoencoderKL, CXRUNet2DConditionModel, CXRTextEncoder])
def test_save_load_round_trip_is_exact(tmp_path, tiny, cls):
    key = {CXRAutoencoderKL: "vae", CXRUNet2DConditionModel: "unet", CXRTextEncoder: "text_encoder"}[cls]
    model = cls(**tiny[key]).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = cls.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    def public(config):  # JSON view: tuples become lists on disk
        return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))

    assert public(loaded.config) == public(model.config)


def test_named_configurations_exist_and_reject_typos():
    assert set(MODEL_CONFIGS) == {"tiny", "small", "base"}
    with pytest.raises(CXRInputError, match="tiny, small, base"):
        get_model_config("huge")


def test_base_reproduces_published_parameter_counts():
    """The seed's published sizes: VAE 3.25M, UNet 39.66M, BioBERT text encoder 108.9M with ~593K trainable."""
    config = get_model_config("base")
    with torch.device("meta"):
        vae = CXRAutoencoderKL(**config["vae"])
        unet = CXRUNet2DConditionModel(**config["unet"])
        text = CXRTextEncoder(**config["text_encoder"])
    assert text.bert.config.vocab_size == 28996 and text.bert.config.hidden_size == 768
    assert text.bert.config.num_hidden_layers == 12
    assert count(vae) == pytest.approx(3.25e6, rel=0.05)
    assert count(unet) == pytest.approx(39.66e6, rel=0.05)
    assert count(text) == pytest.approx(108.9e6, rel=0.05)
    assert count(text, trainable=True) == pytest.approx(593e3, rel=0.05)


def test_parameter_counts_grow_tiny_small_base():
    sizes = []
    for name in ("tiny", "small", "base"):
        config = get_model_config(name)
        with torch.device("meta"):
            sizes.append(count(CXRUNet2DConditionModel(**config["unet"])))
    assert sizes[0] < 2e6 < sizes[1] < sizes[2]


def test_deeper_decoder_starts_as_the_same_function_and_round_trips(tiny, tmp_path):
    torch.manual_seed(0)
    vae = CXRAutoencoderKL(**tiny["vae"]).eval()
    for parameter in vae.parameters():  # away from the default init, so that a wrong copy cannot pass by chance
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    deeper = vae.with_deeper_decoder(tiny["vae"]["layers_per_block"] + 1).eval()
    assert deeper.config.decoder_layers_per_block == tiny["vae"]["layers_per_block"] + 1
    assert count(deeper.decoder) > count(vae.decoder) and count(deeper.encoder) == count(vae.encoder)
    assert all(len(block.resnets) == tiny["vae"]["layers_per_block"] + 2 for block in deeper.decoder.up_blocks)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(deeper(x).sample, vae(x).sample, rtol=0, atol=1e-5)
        torch.testing.assert_close(deeper.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean, rtol=0, atol=0)
    deeper.save_pretrained(tmp_path)
    loaded = CXRAutoencoderKL.from_pretrained(tmp_path).eval()
    assert loaded.config.decoder_layers_per_block == deeper.config.decoder_layers_per_block
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).sample, deeper(x).sample, rtol=0, atol=0)
    with pytest.raises(CXRInputError, match="at least the current"):
        deeper.with_deeper_decoder(1)
    with pytest.raises(CXRInputError, match="at least 1"):
        CXRAutoencoderKL(**tiny["vae"], decoder_layers_per_block=0)


def test_vae_keeps_its_weight_names_and_loads_the_shipped_vae():
    """Slicing and tiling add no parameters: the shipped v1 VAE (and any VAE v2 checkpoint) loads strictly."""
    vae, info = CXRAutoencoderKL.from_pretrained("pretrained/cxr-ldm-small/vae", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert vae.use_slicing is False and vae.use_tiling is False  # off by default: forward() maths unchanged


def test_vae_slicing_gives_the_batched_result(tiny):
    """One image at a time through the same layers: equal to batched encode/decode up to float rounding (batched
    convolutions block their loops differently; measured differences are ~1e-6)."""
    torch.manual_seed(0)
    vae = CXRAutoencoderKL(**tiny["vae"]).eval()
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        moments = vae.encode(x).latent_dist.parameters
        decoded = vae.decode(moments[:, :8]).sample
        vae.enable_slicing()
        sliced_moments = vae.encode(x).latent_dist.parameters
        sliced = vae.decode(moments[:, :8]).sample
        vae.disable_slicing()
    torch.testing.assert_close(sliced_moments, moments, rtol=0, atol=1e-5)
    torch.testing.assert_close(sliced, decoded, rtol=0, atol=1e-5)


def test_vae_tiled_decode_of_a_768px_latent_is_close_bounded_and_matches_diffusers(tiny):
    """
    A 96x96 latent (768 px) in 256 px tiles (32 latent pixels, the small/base VAE's tile), stride 24, blended over 64 px:
    - the same numbers as diffusers' `AutoencoderKL.tiled_decode` run on this decoder (the reference algorithm);
    - close to the untiled decode: each tile normalises (GroupNorm) and self-attends on its own 256 px, so tiling is
      not exact; measured 26-27 dB PSNR on this random VAE and latent (20 dB without overlap), bound 23 dB;
    - no seams: the error next to the tile borders is no larger than 1.5x the average (without blending it is 5x);
    - bounded memory: the decoder never sees more than one 32x32 tile.
    """
    import types

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = CXRAutoencoderKL(**tiny["vae"]).eval()
    z = torch.randn(1, 8, 96, 96, generator=torch.Generator().manual_seed(0))
    seen = []
    hook = vae.decoder.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        full = vae.decode(z).sample
        seen.clear()
        vae.enable_tiling(tile_sample_min_size=256)
        assert (vae.tile_latent_min_size, vae.tile_overlap_factor) == (32, 0.25)
        tiled = vae.decode(z).sample
        tile_inputs = list(seen)
        reference = types.SimpleNamespace(
            tile_latent_min_size=32, tile_sample_min_size=256, tile_overlap_factor=0.25,
            config=types.SimpleNamespace(use_post_quant_conv=True), post_quant_conv=vae.post_quant_conv,
            decoder=vae.decoder)
        reference.blend_v = lambda a, b, extent: AutoencoderKL.blend_v(reference, a, b, extent)
        reference.blend_h = lambda a, b, extent: AutoencoderKL.blend_h(reference, a, b, extent)
        expected = AutoencoderKL.tiled_decode(reference, z).sample
    hook.remove()
    vae.disable_tiling()
    assert tiled.shape == full.shape == (1, 1, 768, 768)
    torch.testing.assert_close(tiled, expected, rtol=0, atol=1e-6)
    psnr = 10 * torch.log10(4 / ((tiled - full) ** 2).mean()).item()  # pixel range [-1, 1]
    assert psnr > 23, psnr
    error = (tiled - full).abs()[0, 0].mean(dim=0)  # per column
    seams = [192 * k + offset for k in (1, 2, 3) for offset in range(-4, 4)]
    assert error[seams].mean() < 1.5 * error.mean(), (error[seams].mean(), error.mean())
    assert len(tile_inputs) == 16 and max(max(size) for size in tile_inputs) == 32, tile_inputs


def test_vae_tiled_encode_covers_the_image_and_matches_diffusers(tiny):
    """Tiled encoding of an image that is not a multiple of the tile stride: every latent pixel is covered, with the
    numbers of diffusers' `AutoencoderKL._tiled_encode` on this encoder (closeness to the untiled encoding is not
    asserted: on random weights each 64 px tile's GroupNorm statistics differ a lot from the whole image's)."""
    import types

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = CXRAutoencoderKL(**tiny["vae"]).eval()
    x = torch.rand(1, 1, 320, 192, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        vae.enable_tiling()  # sample_size 64 px: tiles of 64 px, stride 48 px
        tiled = vae.encode(x).latent_dist.parameters
        vae.disable_tiling()
        reference = types.SimpleNamespace(
            tile_latent_min_size=8, tile_sample_min_size=64, tile_overlap_factor=0.25,
            config=types.SimpleNamespace(use_quant_conv=True), quant_conv=vae.quant_conv, encoder=vae.encoder)
        reference.blend_v = lambda a, b, extent: AutoencoderKL.blend_v(reference, a, b, extent)
        reference.blend_h = lambda a, b, extent: AutoencoderKL.blend_h(reference, a, b, extent)
        expected = AutoencoderKL._tiled_encode(reference, x)
    assert tiled.shape == (1, 16, 40, 24)
    torch.testing.assert_close(tiled, expected, rtol=0, atol=1e-6)
    with pytest.raises(CXRInputError, match="multiple of 8"):
        vae.enable_tiling(tile_sample_min_size=100)
    with pytest.raises(CXRInputError, match=r"tile_overlap_factor must be in \[0, 1\)"):
        vae.enable_tiling(tile_overlap_factor=1.0)


def test_unet_gradient_checkpointing_gives_the_same_gradients(tiny):
    """`train_ldm.py --gradient_checkpointing`: diffusers' blocks recompute their activations, same gradients."""
    torch.manual_seed(0)
    unet = CXRUNet2DConditionModel(**tiny["unet"]).train()
    sample, states = torch.randn(2, 8, 8, 8), torch.randn(2, 5, 32)

    def gradients():
        unet.zero_grad()
        unet(sample, torch.tensor([10, 500]), states).sample.square().mean().backward()
        return {name: p.grad.clone() for name, p in unet.named_parameters()}

    plain = gradients()
    unet.enable_gradient_checkpointing()
    assert unet.is_gradient_checkpointing
    checkpointed = gradients()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
