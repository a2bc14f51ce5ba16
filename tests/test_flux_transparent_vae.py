"""The native transparent VAE serving FLUX.1 (16 latent channels) against the Flux port's reference figures.

tests/fixtures/flux_transparent_vae.npz was computed by the Flux port's own code (RedAIGC/Flux-version-LayerDiffuse
d806a7fe, lib_layerdiffuse/vae.py with demo_t2i.py / demo_i2i.py glue) with seeded weights made from
tests/fixtures/manifest_flux_transparent_vae.json, keys as listed there (``decoder.`` / ``encoder.`` prefix
included in the seed). Everything goes through the public API: the Flux network works in RGBA order, the API
returns alpha first, so the figures are reordered here, never the results.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lib_layerdiffusion import load_transparent_decoder, load_transparent_encoder
from lib_layerdiffusion.errors import InvalidArgumentError, ModelFileError
from lib_layerdiffusion.images.color_padding import pad_rgb
from lib_layerdiffusion.images.outputs import rgba_image
from lib_layerdiffusion.networks.transparent_vae import FLUX_LATENT, SD_LATENT

try:  # tests/ may or may not be a package
    from tests.seeded_weights import FIXTURES, seeded_array
except ImportError:
    from seeded_weights import FIXTURES, seeded_array

FIXTURE_TOL = 1e-4
SAME_TOL = 1e-5
CASES = ["b2_256x384", "b1_192x320"]
# FLUX.1 VAE constants and the offset scale of the Flux port
SCALING, SHIFT, OFFSET_SCALE = 0.3611, 0.1159, 300.0
RGBA_TO_ALPHA_FIRST = [3, 0, 1, 2]


def flux_manifest() -> dict:
    with open(FIXTURES / "manifest_flux_transparent_vae.json") as f:
        return json.load(f)


def seeded_section(section: str) -> dict[str, torch.Tensor]:
    """Seeded tensors of one manifest section, keys as listed (prefixed)."""
    return {k: torch.from_numpy(seeded_array(k, s)) for k, s in sorted(flux_manifest()[section].items())}


def alpha_first(rgba: np.ndarray) -> np.ndarray:
    return rgba[:, RGBA_TO_ALPHA_FIRST]


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "flux_transparent_vae.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def flux_state() -> dict[str, torch.Tensor]:
    """The decoder and encoder sections of TransparentVAE.pth, seeded, with their prefixes (as in the file)."""
    return {**seeded_section("flux_transparent_decoder"), **seeded_section("flux_transparent_encoder")}


@pytest.fixture(scope="module")
def decoder(flux_state):
    return load_transparent_decoder(flux_state)


@pytest.fixture(scope="module")
def encoder(flux_state):
    return load_transparent_encoder(flux_state)


def _inputs(ref, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(ref[f"decoder_{name}_pixel"]), torch.from_numpy(ref[f"decoder_{name}_latent"])


@pytest.fixture(scope="module")
def eight_pass(decoder, ref):
    """decoder.decode(..., passes=8) of each case, computed once (the slowest step of this file)."""
    results = {}

    def get(name: str) -> torch.Tensor:
        if name not in results:
            results[name] = decoder.decode(*_inputs(ref, name), passes=8)
        return results[name]

    return get


# ----------------------------------------------------------------------------------- reference figures

def test_the_figures_are_what_they_claim(ref):
    # the FLUX.1 VAE stand-in's decode spans slightly beyond [0,1] on purpose: the input is not to be clipped
    for name in CASES:
        pixel = ref[f"decoder_{name}_pixel"]
        assert pixel.min() < -0.01 and pixel.max() > 1.01
    assert ref["decoder_b2_256x384_latent"].shape == (2, 16, 32, 48)


def test_loaded_as_flux(decoder, encoder):
    assert decoder.family is FLUX_LATENT and decoder.latent_channels == 16
    assert encoder.family is FLUX_LATENT and encoder.latent_channels == 16
    assert decoder.dtype == torch.float32 and decoder.device.type == "cpu"


@pytest.mark.parametrize("name", CASES)
def test_single_pass_matches_reference(decoder, ref, name):
    out = decoder.decode_single_pass(*_inputs(ref, name))
    assert out.dtype == torch.float32 and out.shape == ref[f"decoder_{name}_single_pass"].shape
    np.testing.assert_allclose(out.numpy(), alpha_first(ref[f"decoder_{name}_single_pass"]), atol=FIXTURE_TOL, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_eight_pass_median_matches_reference(eight_pass, ref, name):
    out = eight_pass(name)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_allclose(out.numpy(), alpha_first(ref[f"decoder_{name}_tta_median"]), atol=FIXTURE_TOL, rtol=0)


def test_pixel_input_is_not_clipped(decoder, ref):
    """The reference feeds the FLUX.1 VAE's decode unclipped: clipping it would change the figures."""
    pixel, latent = _inputs(ref, "b1_192x320")
    clipped = decoder.decode_single_pass(pixel.clamp(0, 1), latent).numpy()
    expected = alpha_first(ref["decoder_b1_192x320_single_pass"])
    assert np.abs(clipped - expected).max() > 100 * FIXTURE_TOL


def test_postprocessed_png_matches_reference(eight_pass, ref):
    """demo_t2i.py: (clamp(0,1) * 255) truncated to uint8, RGBA; here through images.outputs.rgba_image."""
    figure = torch.from_numpy(alpha_first(ref["decoder_b2_256x384_tta_median"])[0])
    png = np.asarray(rgba_image(figure))
    assert png.shape == (256, 384, 4)
    np.testing.assert_array_equal(png, ref["postprocess_png_uint8"])
    # from this package's own decode: equal but where a value sits within rounding of a level boundary
    ours = np.asarray(rgba_image(eight_pass("b2_256x384")[0])).astype(int)
    diff = np.abs(ours - ref["postprocess_png_uint8"])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_colour_padding_matches_reference(ref):
    """The Flux copy of pad_rgb takes ToTensor's uint8 / 255 floats: the same as this package's pad_rgb."""
    padded = pad_rgb(ref["encoder_rgba"])
    np.testing.assert_allclose(padded, ref["encoder_pad_rgb"], atol=1e-6, rtol=0)
    # what the host hands to the FLUX.1 VAE encoder: (rgb * 2 - 1) * alpha of the image's own (unpadded) colour
    image = ref["encoder_rgba"].astype(np.float32) / np.float32(255)
    feed = ((image[..., :3] * 2 - 1) * image[..., 3:]).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(feed, ref["encoder_vae_feed"], atol=1e-6, rtol=0)


def test_encoder_offset_matches_reference(encoder, ref):
    offset = encoder.encode(ref["encoder_rgba"])
    assert offset.shape == (1, 16, 16, 24) and offset.dtype == torch.float32
    # encode() returns the offset as it goes into mean + std * offset: the network's output times 300
    np.testing.assert_allclose(offset.numpy() / OFFSET_SCALE, ref["encoder_offset"], atol=FIXTURE_TOL, rtol=0)


def test_encoder_latent_matches_reference(encoder, ref):
    moments = torch.from_numpy(ref["encoder_moments"])
    mean, logvar = moments[:, :16], moments[:, 16:].clamp(-30.0, 20.0)
    std = torch.exp(0.5 * logvar)
    offset = encoder.encode(ref["encoder_rgba"])
    latent = SCALING * ((mean + std * offset) - SHIFT)
    np.testing.assert_allclose(latent.numpy(), ref["encoder_latent"], atol=FIXTURE_TOL, rtol=0)


# ----------------------------------------------------------------------------------- sizes and inputs

def test_odd_size_is_padded_and_cropped_back(decoder):
    gen = torch.Generator().manual_seed(4)
    pixel = torch.rand(1, 3, 48, 40, generator=gen) * 1.1 - 0.05
    latent = torch.randn(1, 16, 6, 5, generator=gen)
    out = decoder.decode_single_pass(pixel, latent)
    assert out.shape == (1, 4, 48, 40)
    padded_pixel = torch.nn.functional.pad(pixel, (8, 16, 8, 8), mode="replicate")
    padded_latent = torch.nn.functional.pad(latent, (1, 2, 1, 1), mode="replicate")
    with torch.no_grad():
        full = decoder.model(padded_pixel, padded_latent)  # the network itself: RGBA, unclipped input
    torch.testing.assert_close(out, full[:, RGBA_TO_ALPHA_FIRST, 8:56, 8:48], atol=SAME_TOL, rtol=0)
    four = decoder.decode(pixel, latent, passes=4)
    assert four.shape == (1, 4, 48, 40) and float(four.min()) >= 0 and float(four.max()) <= 1


def test_a_four_channel_latent_is_refused(decoder):
    with pytest.raises(InvalidArgumentError, match=r"\(B,16,H/8,W/8\) for this FLUX\.1 decoder"):
        decoder.decode(torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 8, 8))


def test_encoder_any_multiple_of_eight(encoder):
    assert encoder.encode(np.zeros((24, 40, 4), np.uint8)).shape == (1, 16, 3, 5)


# ----------------------------------------------------------------------------------- loading

def _same_weights(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_keys_without_prefix_load_the_same(flux_state, decoder, encoder):
    bare_decoder = {k[len("decoder."):]: v for k, v in flux_state.items() if k.startswith("decoder.")}
    bare_encoder = {k[len("encoder."):]: v for k, v in flux_state.items() if k.startswith("encoder.")}
    _same_weights(load_transparent_decoder(bare_decoder), decoder)
    _same_weights(load_transparent_encoder(bare_encoder), encoder)
    assert load_transparent_decoder(bare_decoder).family is FLUX_LATENT


def test_sd_vae_section_is_passed_over(flux_state, decoder, encoder):
    state = dict(flux_state)
    for key, shape in list(flux_manifest()["flux_vae"].items())[:6]:
        state[key] = torch.zeros(shape)
    state["sd_vae.something.new"] = torch.zeros(3)
    _same_weights(load_transparent_decoder(state), decoder)
    _same_weights(load_transparent_encoder(state), encoder)


def test_converted_safetensors_file_serves_both(flux_state, decoder, encoder, ref, tmp_path):
    path = tmp_path / "TransparentVAE.safetensors"
    save_file(flux_state, str(path))
    dec = load_transparent_decoder(str(path))
    enc = load_transparent_encoder(path)
    _same_weights(dec, decoder)
    _same_weights(enc, encoder)
    offset = enc.encode(ref["encoder_rgba"])
    np.testing.assert_allclose(offset.numpy() / OFFSET_SCALE, ref["encoder_offset"], atol=FIXTURE_TOL, rtol=0)


def test_bf16_file_loads_into_the_target_dtype(flux_state, tmp_path):
    path = tmp_path / "TransparentVAE.safetensors"
    save_file({k: v.bfloat16() for k, v in flux_state.items() if k.startswith("encoder.")}, str(path))
    enc = load_transparent_encoder(str(path), dtype=torch.float32)
    got = enc.model.state_dict()["blocks.16.weight"]
    assert got.dtype == torch.float32 and got.shape == (16, 256, 3, 3)
    torch.testing.assert_close(got, flux_state["encoder.blocks.16.weight"].bfloat16().float(), atol=0, rtol=0)


def test_missing_flux_key_is_a_model_file_error_naming_it(flux_state, tmp_path):
    state = {k: v for k, v in flux_state.items() if k != "decoder.mid_block.attentions.0.to_k.weight"}
    with pytest.raises(ModelFileError) as info:
        load_transparent_decoder(state)
    message = str(info.value)
    assert "missing tensors: decoder.mid_block.attentions.0.to_k.weight" in message
    assert "TransparentVAE" in message and "replace it" in message
    path = tmp_path / "TransparentVAE.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelFileError, match=str(path)):
        load_transparent_decoder(str(path))


def test_wrong_flux_shape_is_a_model_file_error(flux_state):
    state = dict(flux_state)
    state["encoder.blocks.14.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(ModelFileError, match=r"encoder\.blocks\.14\.weight has shape \(256, 256, 1, 1\), "
                                             r"expected \(256, 256, 3, 3\)"):
        load_transparent_encoder(state)
    bare = {k[len("decoder."):]: v for k, v in flux_state.items() if k.startswith("decoder.")}
    bare["conv_out.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(ModelFileError, match=r"conv_out\.weight has shape \(3, 32, 3, 3\)"):
        load_transparent_decoder(bare)


def test_unknown_latent_width_is_a_model_file_error(flux_state):
    state = dict(flux_state)
    state["decoder.latent_conv_in.weight"] = torch.zeros(64, 8, 1, 1)
    with pytest.raises(ModelFileError, match=r"decoder\.latent_conv_in\.weight .* 8 latent channels"):
        load_transparent_decoder(state)


def test_stray_keys_beside_the_sections_are_refused(flux_state):
    state = dict(flux_state)
    state["transformer.x.weight"] = torch.zeros(2, 2)
    with pytest.raises(ModelFileError, match=r"unexpected tensors: transformer\.x\.weight"):
        load_transparent_decoder(state)


def test_encoder_section_alone_is_not_a_decoder(flux_state):
    encoder_only = {k: v for k, v in flux_state.items() if k.startswith("encoder.")}
    with pytest.raises(ModelFileError, match=r"missing tensors: decoder\.conv_in\.bias.*TransparentVAE"):
        load_transparent_decoder(encoder_only)


def test_sd_state_dicts_still_load_as_sd(flux_state):
    # a 4-channel encoder in the unprefixed layout is SDXL / SD1.5's
    bare = {k[len("encoder."):]: v for k, v in flux_state.items() if k.startswith("encoder.")}
    bare["blocks.16.weight"] = bare["blocks.16.weight"][:4].clone()
    bare["blocks.16.bias"] = bare["blocks.16.bias"][:4].clone()
    enc = load_transparent_encoder(bare)
    assert enc.family is SD_LATENT
    assert enc.encode(np.zeros((16, 16, 4), np.uint8)).shape == (1, 4, 2, 2)
