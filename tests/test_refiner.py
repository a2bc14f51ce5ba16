"""SDXL refiner switch (modules/sd_samplers_common.py apply_refiner, every Forge): mid-sampling the refiner
checkpoint is loaded as a new model and p.sd_model (a property returning shared.sd_model, modules/processing.py
:262 in Forge main) becomes it, so Forge decodes with the refiner's VAE, not the base model's VAE copy that records
the latent for the transparent decoder. Our post_sample hook (modules/processing.py:1000 calls it between
sampling and decode_latent_batch) records on the model that decodes."""
import numpy as np
import pytest
import torch
from PIL import Image

from test_forge_script import args, make_p, models_dir, run_sampling_setup, script  # noqa: F401


@pytest.fixture()
def decoder_latents(monkeypatch):
    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    seen = []
    decode = TransparentDecoder.decode
    monkeypatch.setattr(TransparentDecoder, "decode",
                        lambda self, pixel, latent, passes=8: seen.append(latent) or decode(self, pixel, latent, passes))
    return seen


def refined_generation(script, post_sample: bool):  # noqa: F811
    """Base sampling set up by our hooks, the refiner switch replacing the model, then (optionally) post_sample,
    Forge's decode with the model now in place, and the postprocess hooks. Returns the final image and the
    latent the refiner's VAE decoded."""
    from modules.scripts import PostprocessImageArgs
    p = make_p()
    run_sampling_setup(script, p, args())
    base_unet = p.sd_model.forge_objects.unet
    p.sd_model = make_p().sd_model  # apply_refiner: forge_model_reload, shared.sd_model is the refiner now
    assert p.sd_model.forge_objects.unet is not base_unet
    final = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    if post_sample:
        script.post_sample(p, None, *args())
        script.post_sample(p, None, *args())  # twice: still one recording copy
    vae = p.sd_model.forge_objects.vae
    decoded = vae.decode(vae.first_stage_model.process_out(final))[0]
    pixel = Image.fromarray((decoded.numpy() * 255).astype(np.uint8))
    pp = PostprocessImageArgs(pixel, 0)
    script.postprocess_image(p, pp, *args())
    p.pixels_after_sampling.append(pp.image)
    script.postprocess_image_after_composite(p, pp, *args())
    pp.image.layerdiffuse_p = p  # for the test that closes the request
    return pp.image, final / 0.125  # process_out of the fake VAE


def test_the_alpha_is_decoded_from_the_refined_final_latent(script, decoder_latents):  # noqa: F811
    image, raw = refined_generation(script, post_sample=True)
    assert image.mode == "RGBA"
    (latent,) = decoder_latents
    torch.testing.assert_close(latent[0], raw[0])


def test_without_the_hook_the_refiner_switch_stops_the_request(script, decoder_latents):  # noqa: F811
    """Without post_sample recording on the refiner's VAE no latent of the image exists: the request stops with
    the message instead of decoding the alpha from the pixels alone (as it once did, silently)."""
    from lib_layerdiffusion.errors import LayerDiffuseError
    image, _ = refined_generation(script, post_sample=False)
    assert image.mode == "RGB" and decoder_latents == []
    with pytest.raises(LayerDiffuseError, match="did not decode this image's latent"):
        image.layerdiffuse_p.close()


def test_without_a_switch_post_sample_changes_nothing(script):  # noqa: F811
    p = make_p()
    run_sampling_setup(script, p, args())
    vae = p.sd_model.forge_objects.vae
    script.post_sample(p, None, *args())
    assert p.sd_model.forge_objects.vae is vae
    disabled = make_p()
    script.process(disabled, *args(enabled=False))
    before = disabled.sd_model.forge_objects.vae
    script.post_sample(disabled, None, *args(enabled=False))
    assert disabled.sd_model.forge_objects.vae is before
