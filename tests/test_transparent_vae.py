"""The native transparent VAE decoder/encoder against the reference figures, and their loading rules."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lib_layerdiffusion.errors import InvalidArgumentError, ModelFileError
from lib_layerdiffusion.networks.transparent_decoder_net import GroupNorm
from lib_layerdiffusion.networks.transparent_vae import (
    AUGMENTATIONS,
    SD_LATENT,
    load_transparent_decoder,
    load_transparent_encoder,
)

try:  # tests/ may or may not be a package
    from tests.seeded_weights import FIXTURES, seeded_state_dict
except ImportError:
    from seeded_weights import FIXTURES, seeded_state_dict

FIXTURE_TOL = 1e-4
SAME_TOL = 1e-5


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "transparent_vae.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def decoder_state() -> dict[str, torch.Tensor]:
    return seeded_state_dict("transparent_decoder")


@pytest.fixture(scope="module")
def decoder(decoder_state):
    return load_transparent_decoder(decoder_state)


@pytest.fixture(scope="module")
def encoder_state() -> dict[str, torch.Tensor]:
    return seeded_state_dict("transparent_encoder")


def _inputs(ref, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(ref[f"decoder_{name}_pixel"]), torch.from_numpy(ref[f"decoder_{name}_latent"])


def _random_inputs(batch: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=gen), torch.randn(batch, 4, h // 8, w // 8, generator=gen)


def _reference_passes(decoder, pixel, latent) -> list[torch.Tensor]:
    """The reference procedure, written out: each of the 8 augmented copies decoded alone, clipped, undone."""
    outs = []
    for flip, turns in AUGMENTATIONS[8]:
        p, lat = (pixel.flip(3), latent.flip(3)) if flip else (pixel, latent)
        y = decoder.decode_single_pass(torch.rot90(p, turns, (2, 3)), torch.rot90(lat, turns, (2, 3)))
        y = torch.rot90(y.clip(0, 1), -turns, (2, 3))
        outs.append(y.flip(3) if flip else y)
    return outs


def _reference_median(passes: list[torch.Tensor], subset) -> torch.Tensor:
    chosen = [passes[AUGMENTATIONS[8].index(aug)] for aug in subset]
    return torch.median(torch.stack(chosen), dim=0).values


@pytest.fixture(scope="module")
def rect_case(decoder):
    """A non-square input (two shape groups under quarter turns) and its 8 sequential reference passes."""
    pixel, latent = _random_inputs(1, 64, 128, seed=1)
    return pixel, latent, _reference_passes(decoder, pixel, latent)


# ----------------------------------------------------------------------------------- reference figures

@pytest.mark.parametrize("name", ["sq128", "rect64x192"])
def test_single_pass_matches_reference(decoder, ref, name):
    out = decoder.decode_single_pass(*_inputs(ref, name))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref[f"decoder_{name}_single_pass"], atol=FIXTURE_TOL, rtol=0)


@pytest.mark.parametrize("name", ["sq128", "rect64x192"])
def test_eight_pass_median_matches_reference(decoder, ref, name):
    out = decoder.decode(*_inputs(ref, name))  # passes=8 is the default
    np.testing.assert_allclose(out.numpy(), ref[f"decoder_{name}_tta_median"], atol=FIXTURE_TOL, rtol=0)


def test_encoder_offset_matches_reference(encoder_state, ref):
    offset = load_transparent_encoder(encoder_state).encode(ref["encoder_rgba"])
    assert offset.shape == (1, 4, 16, 16) and offset.dtype == torch.float32
    np.testing.assert_allclose(offset.numpy(), ref["encoder_offset"], atol=FIXTURE_TOL, rtol=0)


# ----------------------------------------------------------------------------------- batching

@pytest.mark.parametrize("passes", [1, 2, 4, 8])
def test_batched_passes_equal_sequential_reference(decoder, rect_case, passes):
    pixel, latent, reference = rect_case
    out = decoder.decode(pixel, latent, passes=passes)
    assert out.shape == (1, 4, 64, 128) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(out, _reference_median(reference, AUGMENTATIONS[passes]), atol=SAME_TOL, rtol=0)


@pytest.mark.parametrize("passes, max_batch", [(8, 3), (2, 1)])
def test_tiny_chunks_give_the_same_output(decoder, rect_case, passes, max_batch):
    pixel, latent, reference = rect_case
    chunked = decoder.decode(pixel, latent, passes=passes, max_batch=max_batch)
    torch.testing.assert_close(chunked, _reference_median(reference, AUGMENTATIONS[passes]), atol=SAME_TOL, rtol=0)


def test_two_passes_are_the_lower_median_that_is_the_minimum(rect_case):
    _, _, reference = rect_case
    lower = _reference_median(reference, AUGMENTATIONS[2])
    torch.testing.assert_close(lower, torch.minimum(reference[0], reference[4]), atol=0, rtol=0)


def test_batch_of_two_equals_each_alone(decoder):
    pixel, latent = _random_inputs(2, 64, 64, seed=3)
    both = decoder.decode(pixel, latent, passes=4)
    for i in range(2):
        alone = decoder.decode(pixel[i:i + 1], latent[i:i + 1], passes=4)
        torch.testing.assert_close(both[i:i + 1], alone, atol=SAME_TOL, rtol=0)


def test_pass_subsets_keep_the_image_shape():
    # So the smaller sets always run as one batch, whatever the aspect ratio.
    for passes in (1, 2, 4):
        assert len(AUGMENTATIONS[passes]) == passes
        assert all(turns % 2 == 0 for _, turns in AUGMENTATIONS[passes])
    assert AUGMENTATIONS[8] == tuple((flip, k) for flip in (False, True) for k in range(4))


@pytest.mark.parametrize("passes", [0, 3, 16, "8"])
def test_unsupported_pass_count_is_refused(decoder, passes):
    pixel, latent = _random_inputs(1, 64, 64)
    with pytest.raises(InvalidArgumentError, match="passes"):
        decoder.decode(pixel, latent, passes=passes)


def test_cpu_chunks_follow_the_pixel_budget(decoder):
    assert decoder._chunk_size(512, 512, None) == 4
    assert decoder._chunk_size(1024, 1024, None) == 1
    assert decoder._chunk_size(2048, 2048, None) == 1
    assert decoder._chunk_size(512, 512, 3) == 3


def test_cuda_chunks_follow_free_memory(decoder, monkeypatch):
    monkeypatch.setattr(type(decoder), "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(type(decoder), "dtype", property(lambda self: torch.float16))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * 2**30)
    # 8 GiB usable * 0.8 over 1024*1024 px * 500 B * 2 bytes per element
    assert decoder._chunk_size(1024, 1024, None) == int(8 * 2**30 * 0.8) // (1024 * 1024 * 1000)
    assert decoder._chunk_size(8192, 8192, None) == 1


def test_decode_leaves_its_inputs_alone(decoder):
    pixel, latent = _random_inputs(1, 64, 64, seed=7)
    pixel = pixel.contiguous(memory_format=torch.channels_last)
    before = pixel.clone(), latent.clone()
    decoder.decode(pixel, latent, passes=2)
    decoder.decode_single_pass(pixel, latent)
    assert torch.equal(pixel, before[0]) and torch.equal(latent, before[1])


@pytest.mark.parametrize("inplace", [False, True])
def test_channels_last_group_norm_is_as_accurate_as_nchw(inplace):
    torch.manual_seed(0)
    norm = GroupNorm(num_groups=4, num_channels=64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        x = (torch.randn(2, 64, 96, 80) * 3 + 2).contiguous(memory_format=torch.channels_last)
        exact = torch.nn.functional.group_norm(x.double().contiguous(), 4, norm.weight.double(),
                                               norm.bias.double(), 1e-5)
        source = x.clone()
        out = norm(source, inplace=inplace)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.data_ptr() == source.data_ptr()) == inplace
    torch.testing.assert_close(out.double(), exact, atol=2e-6, rtol=0)
    if not inplace:
        assert torch.equal(source, x)
    # With autograd recording, nothing is overwritten.
    kept = x.clone()
    norm(kept, inplace=True)
    assert torch.equal(kept, x)


# ----------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("height, width, passes", [(200, 136, 1), (72, 40, 8)])
def test_odd_size_decodes_to_the_same_size(decoder, height, width, passes):
    pixel, latent = _random_inputs(1, height, width, seed=5)
    out = decoder.decode(pixel, latent, passes=passes)
    assert out.shape == (1, 4, height, width)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()


def test_odd_size_single_pass_is_a_crop_of_the_padded_decode(decoder):
    pixel, latent = _random_inputs(1, 48, 40, seed=6)
    out = decoder.decode_single_pass(pixel, latent)
    assert out.shape == (1, 4, 48, 40)
    # 48x40 is padded to 64x64 with 1 latent cell on top (8 px) and 1+2 cells left/right (8 px left).
    padded_pixel = torch.nn.functional.pad(pixel, (8, 16, 8, 8), mode="replicate")
    padded_latent = torch.nn.functional.pad(latent, (1, 2, 1, 1), mode="replicate")
    with torch.no_grad():
        full = decoder.model(padded_pixel, padded_latent)
    torch.testing.assert_close(out, full[:, :, 8:56, 8:48], atol=SAME_TOL, rtol=0)


def test_smallest_size(decoder):
    pixel, latent = _random_inputs(1, 8, 8)
    assert decoder.decode(pixel, latent, passes=2).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("pixel_shape, latent_shape", [
    ((1, 3, 64, 64), (1, 4, 8, 9)),     # not 8x the latent
    ((1, 3, 60, 64), (1, 4, 8, 8)),
    ((2, 3, 64, 64), (1, 4, 8, 8)),     # batch mismatch
    ((1, 4, 64, 64), (1, 4, 8, 8)),     # RGBA instead of RGB
    ((3, 64, 64), (4, 8, 8)),           # unbatched
])
def test_mismatched_inputs_are_refused(decoder, pixel_shape, latent_shape):
    with pytest.raises(InvalidArgumentError):
        decoder.decode(torch.zeros(pixel_shape), torch.zeros(latent_shape))


def test_sd_pixel_input_is_clipped_as_the_reference_does(decoder):
    # the reference clips the VAE decode to [0,1] before the transparent decoder (FLUX.1's does not)
    assert decoder.family is SD_LATENT and decoder.latent_channels == 4
    pixel, latent = _random_inputs(1, 64, 64, seed=8)
    wide = pixel * 1.4 - 0.2
    torch.testing.assert_close(decoder.decode_single_pass(wide, latent),
                               decoder.decode_single_pass(wide.clamp(0, 1), latent), atol=0, rtol=0)
    assert wide.min() < 0 and wide.max() > 1  # the input itself is left alone


def test_output_follows_the_input_and_is_float32(decoder):
    pixel, latent = _random_inputs(1, 64, 64)
    out = decoder.decode(pixel.double(), latent.double(), passes=1)
    assert out.dtype == torch.float32 and out.device == pixel.device


# ----------------------------------------------------------------------------------- loading

def test_decoder_loads_from_fp32_and_fp16_files(decoder_state, ref, tmp_path):
    pixel, latent = _inputs(ref, "sq128")
    path32 = tmp_path / "vae_transparent_decoder.safetensors"
    save_file(decoder_state, str(path32))
    dec32 = load_transparent_decoder(str(path32))
    assert dec32.dtype == torch.float32 and dec32.device.type == "cpu"
    np.testing.assert_allclose(dec32.decode_single_pass(pixel, latent).numpy(),
                               ref["decoder_sq128_single_pass"], atol=FIXTURE_TOL, rtol=0)
    del dec32
    path32.unlink()

    path16 = tmp_path / "vae_transparent_decoder_fp16.safetensors"
    save_file({k: v.half() for k, v in decoder_state.items()}, str(path16))
    dec16 = load_transparent_decoder(path16)  # os.PathLike works too
    assert dec16.dtype == torch.float32  # converted to the target dtype
    loaded = dec16.model.state_dict()
    for key in ("conv_in.weight", "mid_block.attentions.0.to_q.weight", "up_blocks.6.resnets.2.norm1.bias"):
        torch.testing.assert_close(loaded[key], decoder_state[key].half().float(), atol=0, rtol=0)


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("target_dtype", [None, torch.float32, torch.bfloat16])
def test_encoder_loads_any_float_file_into_the_target_dtype(encoder_state, tmp_path, file_dtype, target_dtype):
    path = tmp_path / "vae_transparent_encoder.safetensors"
    save_file({k: v.to(file_dtype) for k, v in encoder_state.items()}, str(path))
    enc = load_transparent_encoder(str(path), device="cpu", dtype=target_dtype)
    assert enc.dtype == (target_dtype or torch.float32)
    got = enc.model.state_dict()["blocks.14.weight"]
    torch.testing.assert_close(got, encoder_state["blocks.14.weight"].to(file_dtype).to(got.dtype), atol=0, rtol=0)


def test_encoder_offset_from_file_matches_reference(encoder_state, ref, tmp_path):
    path = tmp_path / "enc.safetensors"
    save_file(encoder_state, str(path))
    offset = load_transparent_encoder(str(path)).encode(ref["encoder_rgba"])
    np.testing.assert_allclose(offset.numpy(), ref["encoder_offset"], atol=FIXTURE_TOL, rtol=0)


def test_decoder_missing_key_is_a_model_file_error(decoder_state):
    state = dict(decoder_state)
    del state["mid_block.attentions.0.to_k.weight"]
    state["mid_block.attentions.0.to_k.scale"] = torch.ones(1)
    with pytest.raises(ModelFileError) as info:
        load_transparent_decoder(state)
    message = str(info.value)
    assert "mid_block.attentions.0.to_k.weight" in message and "to_k.scale" in message
    assert "vae_transparent_decoder.safetensors" in message and "replace it" in message


def test_decoder_wrong_shape_is_a_model_file_error(decoder_state):
    state = dict(decoder_state)
    state["conv_out.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(ModelFileError, match=r"conv_out\.weight has shape \(3, 32, 3, 3\), expected \(4, 32, 3, 3\)"):
        load_transparent_decoder(state)


def test_encoder_file_given_as_decoder_names_the_file(encoder_state, tmp_path):
    path = tmp_path / "vae_transparent_encoder.safetensors"
    save_file(encoder_state, str(path))
    with pytest.raises(ModelFileError) as info:
        load_transparent_decoder(str(path))
    message = str(info.value)
    assert str(path) in message and "not the LayerDiffuse transparent VAE decoder" in message
    assert "missing tensors" in message and "unexpected tensors: blocks.0.bias" in message


def test_encoder_wrong_key_or_shape_is_a_model_file_error(encoder_state, tmp_path):
    state = dict(encoder_state)
    state["blocks.16.weight"] = torch.zeros(4, 256, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match="vae_transparent_encoder.safetensors or is damaged"):
        load_transparent_encoder(str(path))
    state = {("x" + k if k == "blocks.0.bias" else k): v for k, v in encoder_state.items()}
    with pytest.raises(ModelFileError, match="blocks.0.bias"):
        load_transparent_encoder(state)


def test_non_float_tensor_is_refused(encoder_state):
    state = dict(encoder_state)
    state["blocks.0.bias"] = torch.zeros(32, dtype=torch.int64)
    with pytest.raises(ModelFileError, match="blocks.0.bias is not a floating-point tensor"):
        load_transparent_encoder(state)


def test_damaged_file_is_a_model_file_error(encoder_state, tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(encoder_state, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_transparent_encoder(str(path))
    with pytest.raises(ModelFileError, match="does not exist"):
        load_transparent_encoder(str(tmp_path / "absent.safetensors"))


def test_bad_source_type_is_refused():
    with pytest.raises(InvalidArgumentError):
        load_transparent_encoder(42)


# ----------------------------------------------------------------------------------- encoder inputs

def test_encoder_refuses_bad_images(encoder_state):
    enc = load_transparent_encoder(encoder_state)
    with pytest.raises(InvalidArgumentError):
        enc.encode(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InvalidArgumentError):
        enc.encode(np.zeros((64, 60, 4), np.uint8))
    with pytest.raises(InvalidArgumentError):
        enc.encode(np.zeros((64, 64, 4), np.float32))
    assert enc.encode(np.zeros((24, 40, 4), np.uint8)).shape == (1, 4, 3, 5)


def test_package_has_no_host_or_diffusers_import():
    package = Path(__file__).resolve().parent.parent / "lib_layerdiffusion"
    for name in ("networks/transparent_vae.py", "networks/transparent_decoder_net.py",
                 "networks/offset_encoder_net.py", "networks/pickle_conversion.py", "images/color_padding.py",
                 "images/outputs.py"):
        tree = ast.parse((package / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        roots = {module.split(".")[0] for module in imported}
        assert not roots & {"diffusers", "backend", "modules", "ldm_patched"}, (name, roots)
