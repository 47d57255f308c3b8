"""`CXRSuperResolutionModel`: an untrained model is exactly bicubic upsampling, shapes, input checks, diffusers
save/load (safetensors, fp16), determinism and gradient checkpointing."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from cxr_diffusers import CXRInputError, CXRSuperResolutionModel


def small_model(seed: int = 0, **kwargs) -> CXRSuperResolutionModel:
    torch.manual_seed(seed)
    return CXRSuperResolutionModel(block_out_channels=8, num_blocks=2, **kwargs).eval()


def trained_looking(model: CXRSuperResolutionModel, seed: int = 1) -> CXRSuperResolutionModel:
    """Give the zero-initialised heads random weights, as training would (so outputs differ from bicubic)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in model.heads.values():
            head.conv_out.weight.copy_(torch.randn(head.conv_out.weight.shape, generator=generator) * 0.05)
            head.conv_out.bias.copy_(torch.randn(head.conv_out.bias.shape, generator=generator) * 0.05)
    return model


def images(*shape, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("scale", [2, 3])
def test_an_untrained_model_is_exactly_torch_bicubic(scale):
    x = images(2, 1, 20, 20)
    with torch.no_grad():
        out = CXRSuperResolutionModel().eval()(x, scale).sample
    expected = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("scale", [2, 3])
def test_output_shapes(scale):
    model = trained_looking(small_model())
    with torch.no_grad():
        out = model(images(3, 1, 17, 23), scale=scale)
        as_tuple = model(images(3, 1, 17, 23), scale, return_dict=False)
    assert out.sample.shape == (3, 1, 17 * scale, 23 * scale)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.sample)


@pytest.mark.parametrize("scale", [4, 1, 0, True, 2.0, "2", None])
def test_an_unsupported_scale_is_an_input_error(scale):
    with pytest.raises(CXRInputError, match="upscales by 2, 3, not"):
        small_model()(images(1, 1, 8, 8), scale)


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 8, 8), (2, 2, 8, 8)])
def test_wrong_channels_or_dimensions_are_an_input_error(shape):
    with pytest.raises(CXRInputError, match=r"Expected images of shape \(batch, 1, height, width\)"):
        small_model()(images(*shape), 2)


@pytest.mark.parametrize("kwargs", [{"scale_factors": (1, 2)}, {"scale_factors": (2, 2)}, {"scale_factors": ()},
                                    {"num_blocks": 0}])
def test_bad_configurations_are_input_errors(kwargs):
    with pytest.raises(CXRInputError):
        CXRSuperResolutionModel(**kwargs)


def test_save_pretrained_round_trip_is_identical(tmp_path):
    model = trained_looking(small_model(scale_factors=(2, 3, 4)))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CXRSuperResolutionModel.from_pretrained(tmp_path).eval()
    assert loaded.scale_factors == (2, 3, 4) and loaded.config.block_out_channels == 8
    x = images(2, 1, 16, 16)
    with torch.no_grad():
        for scale in (2, 3, 4):
            assert torch.equal(loaded(x, scale).sample, model(x, scale).sample)


def test_fp16_round_trip_loads_as_fp32_with_the_rounded_weights(tmp_path):
    model = trained_looking(small_model())
    rounded = {k: v.half().float() for k, v in model.state_dict().items()}
    model.half().save_pretrained(tmp_path)
    stored = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float16 for t in stored.values())
    loaded = CXRSuperResolutionModel.from_pretrained(tmp_path).eval()
    assert loaded.dtype == torch.float32
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, rounded[key]), key
    reference = small_model()
    reference.load_state_dict(rounded)
    x = images(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x, 3).sample, reference.eval()(x, 3).sample)


def test_outputs_are_deterministic():
    first, second = trained_looking(small_model(seed=5)), trained_looking(small_model(seed=5))
    x = images(2, 1, 16, 16)
    with torch.no_grad():
        a, b, c = first(x, 2).sample, first(x, 2).sample, second(x, 2).sample
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, F.interpolate(x, scale_factor=2, mode="bicubic"))


def test_gradient_checkpointing_gives_the_same_gradients():
    x, target = images(2, 1, 12, 12), images(2, 1, 24, 24, seed=1)
    grads = []
    for checkpointing in (False, True):
        model = trained_looking(small_model()).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        F.l1_loss(model(x, 2).sample, target).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "blocks.0.conv1.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)
    assert not any(name.startswith("heads.3.") for name in grads[0])  # one scale per call: the other head is unused
