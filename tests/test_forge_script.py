"""The Forge script's hooks against a small fake of Forge (tests/fake_forge, each call naming what it mirrors).

Real parts: the script, the library, real safetensors model files in a models folder, the real transparent
decoder (seeded weights). What the fake cannot prove is checked in the rig (tests/test_forge_integration.py).
"""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).parent / "fake_forge"

ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
FG2BLE = "(SDXL) From Foreground to Blending"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from seeded_weights import seeded_state_dict
    folder = tmp_path_factory.mktemp("models")
    layer = folder / "layer_model"
    layer.mkdir()
    save_file(seeded_state_dict("transparent_decoder"), str(layer / "vae_transparent_decoder.safetensors"))
    save_file(seeded_state_dict("transparent_encoder"), str(layer / "vae_transparent_encoder.safetensors"))
    # weight patches in the published key format, for the fake UNet's two parameters
    attn = {
        "diffusion_model.out.weight::lora::0": torch.full((8, 2), 0.01),
        "diffusion_model.out.weight::lora::1": torch.full((2, 8), 0.01),
    }
    save_file(attn, str(layer / "layer_xl_transparent_attn.safetensors"))
    save_file({"diffusion_model.input_blocks.0.0.weight::diff::0": torch.zeros(8, 8, 3, 3)},
              str(layer / "layer_xl_fg2ble.safetensors"))
    save_file({"diffusion_model.not_a_layer.weight::diff::0": torch.zeros(3)},
              str(layer / "layer_xl_transparent_conv.safetensors"))
    return folder


@pytest.fixture(scope="module")
def script(models_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FAKE))
        mp.syspath_prepend(str(ROOT))
        mp.setenv("HF_HUB_OFFLINE", "1")
        import modules.paths
        mp.setattr(modules.paths, "models_path", str(models_dir))
        spec = importlib.util.spec_from_file_location("layerdiffuse_script", ROOT / "scripts" / "layerdiffuse.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module.LayerDiffuseScript()


def make_p(is_sdxl=True, batch_size=1, width=64, height=64, sd15_unet=False):
    from backend.patcher.unet import FakeKModel, FakeSD15KModel, UnetPatcher
    from backend.patcher.vae import VAE

    unet = UnetPatcher(FakeSD15KModel() if sd15_unet else FakeKModel())

    def get_learned_conditioning(texts):
        """backend/diffusion_engine/sd15.py get_learned_conditioning: (len(texts), 77, context dim)."""
        return torch.stack([torch.full((77, 12), float(len(t))) for t in texts])

    sd_model = SimpleNamespace(is_sdxl=is_sdxl, is_sd1=not is_sdxl, get_learned_conditioning=get_learned_conditioning,
                               forge_objects=SimpleNamespace(unet=unet, vae=VAE()))

    def decode_first_stage(x):
        """backend/diffusion_engine/sdxl.py:135 decode_first_stage: process_out, then the VAE, in [-1, 1]."""
        vae = sd_model.forge_objects.vae
        return vae.decode(vae.first_stage_model.process_out(x)).movedim(-1, 1) * 2.0 - 1.0

    sd_model.decode_first_stage = decode_first_stage

    def sample(*args, **kwargs):
        return "sampled"

    # modules/processing.py StableDiffusionProcessing: the fields the hooks use
    comments = {}
    return SimpleNamespace(sd_model=sd_model, batch_size=batch_size, width=width, height=height,
                           extra_generation_params={}, extra_result_images=[], latents_after_sampling=[],
                           pixels_after_sampling=[], sample=sample, comments=comments, prompts=["a cat"],
                           comment=lambda text: comments.__setitem__(text, 1),
                           close=lambda: None)  # modules/processing.py:384 StableDiffusionProcessing.close


def forge_after_sampling(script, p, script_args, latents=None, images=None):
    """modules/processing.py process_images_inner after sampling (Forge dfdcbab6): decode_latent_batch decodes
    each image's latent by itself through decode_first_stage (process_out, then VAE.decode); then, per image,
    postprocess_image gets the decoded image, apply_overlay composes it into pixels_after_sampling (no overlay
    here: the same image) and postprocess_image_after_composite gets that. Returns the final images."""
    from modules.scripts import PostprocessImageArgs
    vae = p.sd_model.forge_objects.vae
    latents = latents if latents is not None else torch.randn(p.batch_size, 4, 8, 8)
    decoded = [vae.decode(vae.first_stage_model.process_out(latents[i:i + 1]))[0] for i in range(p.batch_size)]
    results = []
    for i in range(p.batch_size):
        image = images[i] if images else Image.fromarray((decoded[i].numpy() * 255).astype(np.uint8))
        p.latents_after_sampling.append(latents[i])
        pp = PostprocessImageArgs(image, i)
        script.postprocess_image(p, pp, *script_args)
        p.pixels_after_sampling.append(pp.image)
        pp = PostprocessImageArgs(pp.image, i)
        script.postprocess_image_after_composite(p, pp, *script_args)
        results.append(pp.image)
    return results


def args(enabled=True, method=ATTN, weight=1.0, ending_step=1.0, fg=None, bg=None, blend=None):
    return (enabled, method, weight, ending_step, fg, bg, blend, "Crop and Resize", False, "", "", "")


def run_sampling_setup(script, p, script_args, batch=None, h=8, w=8):
    noise = torch.zeros((batch or p.batch_size, 4, h, w))
    script.process(p, *script_args)
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    return noise


def test_disabled_touches_nothing(script):
    p = make_p()
    unet = p.sd_model.forge_objects.unet
    run_sampling_setup(script, p, args(enabled=False, method="garbage"))
    assert p.sd_model.forge_objects.unet is unet and unet.lora_patches == {}
    assert p.extra_generation_params == {} and p.sample() == "sampled"
    assert not hasattr(p, "layerdiffuse_generation")


def test_attention_injection_patches_a_clone_and_decodes_rgba(script):
    from backend.sampling.sampling_function import sampling_step
    p = make_p(batch_size=2)
    shared = p.sd_model.forge_objects.unet
    noise = run_sampling_setup(script, p, args(weight=0.7))
    unet = p.sd_model.forge_objects.unet
    assert unet is not shared and shared.lora_patches == {}  # the shared patcher is never patched
    (identifier, patches), = unet.lora_patches.items()
    assert identifier[0] == "layer_xl_transparent_attn.safetensors" and identifier[1] == pytest.approx(0.7)
    kind, weights = patches["diffusion_model.out.weight"][0][1]
    assert kind == "lora" and weights[0].shape == (8, 2) and weights[1].shape == (2, 8)
    assert p.extra_generation_params["layerdiffusion_method"] == ATTN
    model, _, _ = sampling_step(unet, noise, 10.0, [{"model_conds": {}}], [{"model_conds": {}}])
    assert model is unet.model

    # after sampling: Forge decodes, then calls the hooks per image
    results = forge_after_sampling(script, p, args())
    assert all(image.mode == "RGBA" and image.size == (64, 64) for image in results)
    assert len(p.extra_result_images) == 2 and all(im.mode == "RGB" for im in p.extra_result_images)


def test_concat_condition_reaches_every_image_of_the_batch(script):
    from backend.sampling.sampling_function import sampling_step
    fg = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    p = make_p(batch_size=2, width=64, height=48)
    noise = run_sampling_setup(script, p, args(method=FG2BLE, fg=fg), h=6, w=8)
    unet = p.sd_model.forge_objects.unet
    assert unet.extra_concat_condition.shape == (2, 4, 6, 8)
    cond, uncond = [{"model_conds": {}}], [{"model_conds": {}}]
    sampling_step(unet, noise, 10.0, cond, uncond)
    assert cond[0]["model_conds"]["c_concat"].shape == (2, 4, 6, 8)
    # red foreground: the red channel's latent is high everywhere
    assert torch.all(unet.extra_concat_condition[:, 0] > unet.extra_concat_condition[:, 1])


def test_stop_at_switches_to_the_unpatched_unet_without_concat(script):
    from backend.sampling import sampling_function
    fg = Image.new("RGBA", (16, 16), (0, 255, 0, 255))
    p = make_p()
    noise = run_sampling_setup(script, p, args(method=FG2BLE, fg=fg, ending_step=0.5))
    unet = p.sd_model.forge_objects.unet
    sigma_end = unet.model.predictor.percent_to_sigma(0.5)
    cond = [{"model_conds": {}}]
    model, cond_used, _ = sampling_function.sampling_step(unet, noise, sigma_end * 2, cond, None)
    assert "c_concat" in cond_used[0]["model_conds"]
    sampling_function.prepared.clear()
    model, cond_used, _ = sampling_function.sampling_step(unet, noise, sigma_end / 2, [{"model_conds": {}}], None)
    assert "c_concat" not in cond_used[0]["model_conds"]
    unpatched = sampling_function.prepared[-1]
    assert unpatched.lora_patches == {} and unpatched.extra_concat_condition is None


class FakeControlNet:
    """backend/patcher/controlnet.py ControlNet as the sampler sees it: a linked list node (previous_controlnet)."""
    previous_controlnet = None


def controlnet_before_sampling(p):
    """The built-in ControlNet's process_before_every_sampling (modules_forge/supported_controlnet.py:143-160):
    apply_controlnet_advanced (backend/patcher/controlnet.py:83-85) clones forge_objects.unet, adds the unit with
    add_patched_controlnet, and the clone becomes forge_objects.unet."""
    cnet = FakeControlNet()
    unet = p.sd_model.forge_objects.unet.clone()
    unet.add_patched_controlnet(cnet)
    p.sd_model.forge_objects.unet = unet
    return cnet


@pytest.mark.parametrize("controlnet_first", [True, False])
def test_controlnet_and_layerdiffuse_both_stay_on_the_sampled_unet(script, controlnet_first):
    """ControlNet's script runs first in Forge (sorting_priority 10 < 15: modules/scripts.py:703); either order
    keeps both: ControlNet's unit on the patcher the sampler reads, LayerDiffuse's weight patches and stop-at
    modifier beside it, and the control still on the conds after stop-at switches to the unpatched UNet."""
    from backend.sampling import sampling_function
    p = make_p()
    noise = torch.zeros((1, 4, 8, 8))
    script_args = args(ending_step=0.5)
    script.process(p, *script_args)
    if controlnet_first:
        cnet = controlnet_before_sampling(p)
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    if not controlnet_first:
        cnet = controlnet_before_sampling(p)
    unet = p.sd_model.forge_objects.unet
    assert unet.list_controlnets() == [cnet]
    (identifier, _), = unet.lora_patches.items()
    assert identifier[0] == "layer_xl_transparent_attn.safetensors"
    sigma_end = unet.model.predictor.percent_to_sigma(0.5)
    for sigma in (sigma_end * 2, sigma_end / 2):  # before and after stop-at
        _, cond, uncond = sampling_function.sampling_step(unet, noise, sigma, [{"model_conds": {}}],
                                                          [{"model_conds": {}}])
        assert cond[0]["control"] is cnet and uncond[0]["control"] is cnet
    assert all(image.mode == "RGBA" for image in forge_after_sampling(script, p, script_args))


@pytest.mark.parametrize("setup, message", [
    (dict(is_sdxl=False), "needs an SDXL checkpoint"),
    (dict(method=FG2BLE), "needs a foreground image"),
    (dict(method="(SDXL) Made Up"), "Unknown method"),
    (dict(weight="x"), "weight must be a number"),
])
def test_bad_requests_stop_before_sampling_with_a_message(script, setup, message):
    from lib_layerdiffusion.errors import LayerDiffuseError
    p = make_p(is_sdxl=setup.pop("is_sdxl", True))
    shared = p.sd_model.forge_objects.unet
    run_sampling_setup(script, p, args(**setup))
    with pytest.raises(LayerDiffuseError, match=message) as raised:
        p.sample(conditioning=None)
    assert raised.value.status_code == 422 and message in raised.value.detail
    assert p.sd_model.forge_objects.unet is shared and shared.lora_patches == {}

    # the next generation on the same script is unaffected
    p2 = make_p()
    run_sampling_setup(script, p2, args())
    assert p2.sample() == "sampled" and p2.sd_model.forge_objects.unet.lora_patches


def test_patch_matching_nothing_fails_the_sampling_loudly(script):
    from backend.sampling.sampling_function import sampling_step
    from lib_layerdiffusion.errors import ModelFileError
    p = make_p()
    noise = run_sampling_setup(script, p, args(method="(SDXL) Only Generate Transparent Image (Conv Injection)"))
    with pytest.raises(ModelFileError, match="None of the 1 weights in layer_xl_transparent_conv.safetensors"):
        sampling_step(p.sd_model.forge_objects.unet, noise, 10.0, [{"model_conds": {}}], None)


def test_missing_model_file_offline_names_file_folder_and_url(script, models_dir):
    from lib_layerdiffusion.errors import ModelFileError
    p = make_p(batch_size=1)
    run_sampling_setup(script, p, args(method="(SDXL) From Background to Blending",
                                       bg=Image.new("RGB", (8, 8))))
    with pytest.raises(ModelFileError) as raised:
        p.sample()
    text = str(raised.value)
    assert "layer_xl_bg2ble.safetensors" in text and str(models_dir / "layer_model") in text
    assert "huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/layer_xl_bg2ble.safetensors" in text


def transparent_disc(size=64, centre=(20, 24), radius=14):
    yy, xx = np.mgrid[:size, :size]
    arr = np.zeros((size, size, 4), np.uint8)
    inside = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 < radius ** 2
    arr[inside] = (0, 0, 255, 255)
    return Image.fromarray(arr, "RGBA")


def img2img_p(init_images, batch_size=1, mask=None):
    p = make_p(batch_size=batch_size)
    p.init_images = list(init_images)
    p.resize_mode = 0
    p.mask_for_overlay = mask
    p.paste_to = None
    return p


def test_img2img_offsets_ride_on_a_vae_copy_per_image(script):
    from lib_layerdiffusion.images.img2img import InitTransparency
    a, b = transparent_disc(centre=(20, 24)), transparent_disc(centre=(44, 40))
    p = img2img_p([a, b], batch_size=2)
    shared_vae = p.sd_model.forge_objects.vae
    script_args = args()
    script.process(p, *script_args)
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *script_args)
    vae = p.sd_model.forge_objects.vae
    assert vae is not shared_vae and vae.first_stage_model is not shared_vae.first_stage_model
    assert all(im.mode == "RGB" for im in p.init_images)
    grey = np.asarray(p.init_images[0])
    assert tuple(grey[0, 0]) == (127, 127, 127) and tuple(grey[24, 20]) == (0, 0, 255)
    # Forge encodes the batch (here in two chunks); each row is the posterior mean + std · its own offset
    pixels = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255 for im in p.init_images]))
    moments = shared_vae.first_stage_model.encoder(2.0 * pixels.movedim(-1, 1) - 1.0)
    mean, std = moments[:, :4], torch.full((2, 4, 8, 8), 0.1)
    rows = torch.cat([vae.encode(pixels[:1]), vae.encode(pixels[1:])])
    offset = (rows - mean) / std
    assert offset.shape == (2, 4, 8, 8) and not torch.allclose(offset[0], offset[1])
    init = p.layerdiffuse_init
    assert isinstance(init, InitTransparency) and init.regulation_calls == [1, 1]
    # the offset is the encoder's, for each image's own alpha
    from lib_layerdiffusion.networks.transparent_vae import load_transparent_encoder
    from seeded_weights import seeded_state_dict
    encoder = load_transparent_encoder(seeded_state_dict("transparent_encoder"))
    torch.testing.assert_close(offset[1:], encoder.encode(np.asarray(b)), atol=1e-4, rtol=1e-4)
    noise = torch.zeros((2, 4, 8, 8))
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    assert p.comments == {}


def test_img2img_offset_never_applied_is_reported(script):
    p = img2img_p([transparent_disc()])
    script_args = args()
    script.process(p, *script_args)
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *script_args)
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)  # Forge tiled: no regulation
    assert any("without the transparency offset" in text for text in p.comments)


def test_img2img_with_a_taesd_encode_still_flattens_over_grey(script, opts):
    opts.data["sd_vae_encode_method"] = "TAESD"
    opts.sd_vae_encode_method = "TAESD"
    try:
        p = img2img_p([transparent_disc()])
        script.process(p, *args())
        script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *args())
    finally:
        opts.sd_vae_encode_method = "Full"
    assert tuple(np.asarray(p.init_images[0])[0, 0]) == (127, 127, 127)
    assert any("VAE type for encode" in text for text in p.comments)


@pytest.mark.parametrize("overlay", [True, False])
def test_inpaint_keeps_the_unmasked_alpha_when_forge_overlays(script, opts, overlay):
    opts.data["overlay_inpaint"] = overlay
    init = transparent_disc()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # repaint the right half only
    p = img2img_p([init], mask=mask)
    script_args = args()
    script.process(p, *script_args)
    script.before_process_init_images(p, {"crop_region": None, "image_mask": mask}, *script_args)
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    (out,) = forge_after_sampling(script, p, script_args)
    left = np.asarray(out)[:, :30]
    if overlay:
        np.testing.assert_array_equal(left, np.asarray(init)[:, :30])  # left half: exactly the input
    else:  # Forge shows the generated image as it is; so does LayerDiffuse
        assert not np.array_equal(left, np.asarray(init)[:, :30])


@pytest.mark.parametrize("overlay", [True, False])
def test_inpaint_only_masked_decodes_the_generated_crop_and_places_it(script, opts, monkeypatch, overlay):
    """modules/processing.py (Forge dfdcbab6): postprocess_image gets the generation-size crop; apply_overlay
    uncrops it into the canvas only when overlay_inpaint is on. The decoder must read the crop and its own latent
    in both cases, and the result is the full canvas with the crop at paste_to."""
    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    opts.data["overlay_inpaint"] = overlay
    seen = []
    decode = TransparentDecoder.decode
    monkeypatch.setattr(TransparentDecoder, "decode",
                        lambda self, pixel, latent, passes=8: seen.append((pixel, latent)) or
                        decode(self, pixel, latent, passes))
    canvas = transparent_disc(size=128)
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (64, 64, 96, 96))
    p = img2img_p([canvas], mask=mask)
    crop = (48, 48, 112, 112)
    p.paste_to = (48, 48, 64, 64)
    script_args = args()
    script.process(p, *script_args)
    script.before_process_init_images(p, {"crop_region": crop, "image_mask": mask}, *script_args)
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    latent = torch.randn(1, 4, 8, 8)
    crop_image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (out,) = forge_after_sampling(script, p, script_args, latents=latent, images=[crop_image])
    (pixel, decoder_latent), = seen
    np.testing.assert_array_equal((pixel[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                                  np.asarray(crop_image))
    torch.testing.assert_close(decoder_latent, latent / 0.125)  # the raw latent: process_out(latent)
    assert out.size == (128, 128) and out.mode == "RGBA"
    if overlay:  # outside the mask the canvas is kept exactly
        np.testing.assert_array_equal(np.asarray(out)[:40], np.asarray(canvas)[:40])


def test_output_original_mat_adds_each_results_plain_decode(script):
    p = img2img_p([transparent_disc()])
    script_args = args()[:8] + (True,) + args()[9:]
    script.process(p, *script_args)
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *script_args)
    assert p.extra_result_images == []
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    crop_image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    forge_after_sampling(script, p, script_args, images=[crop_image])
    mat, preview = p.extra_result_images
    np.testing.assert_array_equal(np.asarray(mat), np.asarray(crop_image))


def test_old_forge_without_the_init_images_hook_refuses_transparent_img2img(script, monkeypatch):
    from lib_layerdiffusion.errors import LayerDiffuseError
    from modules import scripts
    monkeypatch.delattr(scripts.ScriptRunner, "before_process_init_images")
    p = img2img_p([transparent_disc()])
    run_sampling_setup(script, p, args())
    with pytest.raises(LayerDiffuseError, match="Transparent img2img needs a newer Forge"):
        p.sample()


@pytest.fixture(scope="module")
def sd15_files(models_dir):
    """Attention-sharing files shaped for the tiny SD1.5 UNet, in the published key layout."""
    from backend.patcher.unet import FakeSD15KModel
    from lib_layerdiffusion.networks.attention_sharing import (SD15_CONFIGS, AttentionSharingModel,
                                                      sd15_attention_modules)
    layer = models_dir / "layer_model"
    modules = sd15_attention_modules(FakeSD15KModel().diffusion_model)
    gen = torch.Generator().manual_seed(0)
    for stem in ("sd15_joint", "sd15_fg2bg", "sd15_bg2fg", "sd15_transparent_attn"):
        with torch.device("meta"):
            shapes = AttentionSharingModel(modules, SD15_CONFIGS[stem]).expected_shapes()
        save_file({k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()},
                  str(layer / f"layer_{stem}.safetensors"))
    decoder = layer / "layer_sd15_vae_transparent_decoder.safetensors"
    if not decoder.exists():
        import os
        os.link(layer / "vae_transparent_decoder.safetensors", decoder)
    return layer


JOINT = "(SD1.5) Generate Everything Together (need batch size 3)"
FG2BG = "(SD1.5) From Foreground to Background (need batch size 2)"


def sd15_args(method, fg=None, prompts=("", "", "")):
    return (True, method, 1.0, 1.0, fg, None, None, "Crop and Resize", False, *prompts)


def test_sd15_joint_replaces_the_32_attention_layers_on_a_clone(script, sd15_files):
    from lib_layerdiffusion.networks.attention_sharing import SD15_ATTENTION_LAYER_NAMES, InstalledUnit
    from modules.scripts import PostprocessImageArgs
    p = make_p(is_sdxl=False, batch_size=6, sd15_unet=True)
    shared = p.sd_model.forge_objects.unet
    script_args = sd15_args(JOINT, prompts=("glass", "", "on a table"))
    run_sampling_setup(script, p, script_args)
    unet = p.sd_model.forge_objects.unet
    assert unet is not shared and shared.object_patches == {}
    assert sorted(unet.object_patches) == sorted("diffusion_model." + n for n in SD15_ATTENTION_LAYER_NAMES)
    assert all(isinstance(u, InstalledUnit) and u.unit.frames == 3 for u in unet.object_patches.values())
    fg, bg, blend = unet.model_options["transformer_options"]["cond_overwrite"]
    # the additional prompt goes before the main prompt, for its own frame only
    assert fg[0, 0, 0].item() == len("glass, a cat") and bg is None
    assert blend[0, 0, 0].item() == len("on a table, a cat")
    # a unit runs on a batch of 2 groups of 3 frames (cond and uncond rows) as Forge calls it
    unit = unet.object_patches["diffusion_model." + SD15_ATTENTION_LAYER_NAMES[1]]
    x = torch.randn(12, 4, 8)
    options = {"cond_mark": torch.tensor([0.0] * 6 + [1.0] * 6), "cond_overwrite": [fg, bg, blend]}
    assert unit(x, context=torch.randn(12, 77, 12), transformer_options=options).shape == x.shape

    # only the foreground frame of each group is decoded
    modes = [image.mode for image in forge_after_sampling(script, p, script_args)]
    assert modes == ["RGBA", "RGB", "RGB"] * 2 and len(p.extra_result_images) == 2
    layer_of = p.extra_generation_params["layerdiffusion_layer"]
    assert [layer_of(index=i, p=p) for i in range(6)] == ["fg", "bg", "blend"] * 2


SD15_METHODS = (  # method, its frames (the batch size), which control image it takes
    ("(SD1.5) Only Generate Transparent Image (Attention Injection)", 1, None),
    (FG2BG, 2, "fg"),
    ("(SD1.5) From Background to Foreground (need batch size 2)", 2, "bg"),
    (JOINT, 3, None),
)


@pytest.mark.parametrize("method, frames, control", SD15_METHODS)
def test_sd15_units_keep_a_users_lora_and_leave_nothing_patched(script, sd15_files, method, frames, control):
    """A user's LoRA on attn1, attn2, ff and conv layers stays active under every SD1.5 method (the layers compute
    otherwise than at <lora:x:0>), also when the previous generation's units are still in the UNet as its LoRA is
    added; a plain generation after it finds the UNet's own modules and weights again. Forge main merges the LoRA
    after putting the object patches in (memory_management.py :467 then :518), by the modules' paths."""
    from backend import memory_management
    from backend.sampling.sampling_function import sampling_prepare
    from lib_layerdiffusion.networks.attention_sharing import SD15_ATTENTION_LAYER_NAMES, InstalledUnit
    from user_lora import LAYERS, differing, layer_outputs, lora_deltas, weights
    memory_management.current_loaded_models.clear()
    shared = make_p(is_sdxl=False, sd15_unet=True).sd_model.forge_objects.unet
    diffusion_model = shared.model.diffusion_model
    before = weights(diffusion_model)
    originals = {name: diffusion_model.get_submodule(name) for name in SD15_ATTENTION_LAYER_NAMES}
    # backend/patcher/lora.py load_lora's form: ("lora", (up, down, alpha, mid, dora_scale))
    patches = {key: ("lora", (up, down, None, None, None)) for key, (up, down) in lora_deltas(diffusion_model).items()}
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    script_args = (True, method, 1.0, 1.0, image if control == "fg" else None, image if control == "bg" else None,
                   None, "Crop and Resize", False, "", "", "")

    def generate_with_lora(strength):
        p = make_p(is_sdxl=False, batch_size=frames, sd15_unet=True)
        # extensions-builtin/sd_forge_lora/networks.py load_lora_for_models :34/:37: a clone with the LoRA
        lora = shared.clone()
        matched = lora.add_patches(filename="user_lora.safetensors", patches=patches, strength_patch=strength)
        assert sorted(matched) == sorted(patches)
        p.sd_model.forge_objects.unet = lora
        noise = run_sampling_setup(script, p, script_args)
        unet = p.sd_model.forge_objects.unet
        sampling_prepare(unet, noise)
        assert all(isinstance(diffusion_model.get_submodule(n), InstalledUnit) for n in SD15_ATTENTION_LAYER_NAMES)
        return layer_outputs(diffusion_model, frames, unet.model_options["transformer_options"])

    at_zero = generate_with_lora(0.0)
    at_one = generate_with_lora(1.0)
    assert differing(at_one, at_zero) == list(LAYERS)

    sampling_prepare(shared.clone(), torch.zeros(1, 4, 8, 8))  # the next, plain generation
    assert all(diffusion_model.get_submodule(name) is module for name, module in originals.items())
    after = weights(diffusion_model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_sd15_wrong_batch_size_says_which_to_set(script, sd15_files):
    from lib_layerdiffusion.errors import InvalidArgumentError
    p = make_p(is_sdxl=False, batch_size=4, sd15_unet=True)
    run_sampling_setup(script, p, sd15_args(JOINT))
    with pytest.raises(InvalidArgumentError, match="set Batch size to a multiple of 3"):
        p.sample()


def test_sd15_fg2bg_encodes_the_foreground_as_control(script, sd15_files):
    p = make_p(is_sdxl=False, batch_size=2, sd15_unet=True)
    fg = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    run_sampling_setup(script, p, sd15_args(FG2BG, fg=fg))
    units = list(p.sd_model.forge_objects.unet.object_patches.values())
    assert units and all(u.unit.control_signals is not None for u in units)
    assert sorted(units[0].unit.control_signals) == [1, 4, 16, 64]  # 1/8 .. 1/64 of 64x64


def test_sdxl_checkpoint_with_sd15_method_is_refused(script, sd15_files):
    from lib_layerdiffusion.errors import UnsupportedModelError
    p = make_p(is_sdxl=True, batch_size=3)
    run_sampling_setup(script, p, sd15_args(JOINT))
    with pytest.raises(UnsupportedModelError, match="needs an SD1.5 checkpoint"):
        p.sample()


@pytest.fixture()
def opts():
    from modules.shared import opts
    saved = dict(opts.data)
    yield opts
    opts.data.clear()
    opts.data.update(saved)


def saving_p(tmp_path, **kwargs):
    p = make_p(**kwargs)
    p.outpath_samples = str(tmp_path)
    p.seeds = [100 + i for i in range(p.batch_size)]
    p.prompts = ["a cat"] * p.batch_size
    p.save_samples = lambda: True
    return p


def forge_saves(script, p, script_args):
    """modules/processing.py after sampling: per image, postprocess_image_after_composite then save_image."""
    from modules import images
    saved = []
    for i, image in enumerate(forge_after_sampling(script, p, script_args)):
        saved.append(images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], "png", p=p)[0])
    return saved


def test_settings_are_registered_in_their_section(script):
    from modules import script_callbacks
    from modules.shared import opts
    for callback in script_callbacks.callbacks["ui_settings"]:
        callback()
    from lib_layerdiffusion.request.settings import OPTIONS
    for option in OPTIONS:
        info = opts.data_labels[option.key]
        assert info.section == ("layerdiffuse", "LayerDiffuse") and info.label == option.label
        assert info.default == option.default


def test_decoder_passes_setting_reaches_the_infotext(script, opts):
    opts.data["layerdiffuse_decoder_passes"] = 2
    p = make_p()
    run_sampling_setup(script, p, args())
    assert p.layerdiffuse_generation.decoder_passes == 2
    assert p.extra_generation_params["layerdiffusion_decoder_passes"] == 2
    opts.data["layerdiffuse_decoder_passes"] = 3
    p = make_p()
    run_sampling_setup(script, p, args())
    with pytest.raises(Exception, match="decoder passes must be one of 1, 2, 4, 8"):
        p.sample()


def test_model_folder_setting_and_no_download(script, opts, tmp_path):
    opts.data["layerdiffuse_models_folder"] = str(tmp_path / "elsewhere")
    opts.data["layerdiffuse_allow_download"] = False
    p = make_p()
    run_sampling_setup(script, p, args())
    with pytest.raises(Exception) as raised:
        p.sample()
    assert str(tmp_path / "elsewhere") in str(raised.value) and "layer_xl_transparent_attn" in str(raised.value)


def test_layer_files_are_named_and_grouped_in_a_layered_file(script, opts, tmp_path):
    from lib_layerdiffusion.images.layered_file import read_ora
    opts.data["layerdiffuse_save_layered_file"] = True
    fg = transparent_disc()
    p = saving_p(tmp_path, batch_size=2)
    script_args = args(method=FG2BLE, fg=fg)
    run_sampling_setup(script, p, script_args)
    saved = forge_saves(script, p, script_args)
    assert all(path.endswith("-blend.png") for path in saved)
    layer_of = p.extra_generation_params["layerdiffusion_layer"]  # per image, as create_infotext calls it
    assert [layer_of(index=i, p=p) for i in range(2)] == ["blend", "blend"]
    oras = sorted(tmp_path.glob("*.ora"))
    assert len(oras) == 2
    size, layers = read_ora(oras[0])
    assert size == (64, 64)
    assert [(l.name, l.visible) for l in layers] == [("blended", False), ("foreground", True)]
    assert np.asarray(layers[1].image)[24, 20, 3] == 255 and np.asarray(layers[1].image)[0, 0, 3] == 0


def test_transparent_image_layered_file_and_saved_preview(script, opts, tmp_path):
    from lib_layerdiffusion.images.layered_file import read_ora
    opts.data["layerdiffuse_save_layered_file"] = True
    opts.data["layerdiffuse_save_preview"] = True
    p = saving_p(tmp_path)
    script_args = args()
    run_sampling_setup(script, p, script_args)
    saved = forge_saves(script, p, script_args)
    assert not saved[0].endswith("-fg.png")  # a transparent image is just "the image"
    on_disk = Image.open(saved[0])
    assert on_disk.mode == "RGBA" and on_disk.getchannel("A").getextrema()[0] < 255  # stealth infotext undone
    assert len(list(tmp_path.glob("*-preview.png"))) == 1
    (ora_path,) = tmp_path.glob("*.ora")
    _, layers = read_ora(ora_path)
    assert [(l.name, l.visible) for l in layers] == [("checkerboard", False), ("transparent image", True)]
    np.testing.assert_array_equal(np.asarray(layers[1].image), np.asarray(Image.open(saved[0])))


def test_stealth_infotext_rgb_mode_is_refused_before_sampling(script, opts):
    opts.data["stealth_pnginfo_option"] = "RGB"
    p = make_p()
    run_sampling_setup(script, p, args())
    with pytest.raises(Exception, match="Stealth infotext mode"):
        p.sample()


@pytest.mark.parametrize("api_said_no_saving", [False, True])
def test_rgba_saved_when_forge_saves_only_grids(script, opts, tmp_path, api_said_no_saving):
    opts.data["layerdiffuse_save_rgba_when_grid_only"] = True
    opts.samples_save = False
    try:
        p = saving_p(tmp_path)
        p.save_samples = lambda: False  # StableDiffusionProcessing.save_samples with samples_save off
        p.do_not_save_samples = api_said_no_saving
        script_args = args()
        run_sampling_setup(script, p, script_args)
        forge_after_sampling(script, p, script_args)
    finally:
        opts.samples_save = True
    saved = list(tmp_path.glob("*.png"))
    if api_said_no_saving:
        assert saved == []
    else:
        assert len(saved) == 1 and Image.open(saved[0]).mode == "RGBA"


def test_the_decoder_reads_the_raw_latent_of_the_final_decode(script, monkeypatch):
    """The transparent decoder was trained on the raw VAE latent: it gets what the VAE's decode received
    (process_out of the sampler's latent), also after hires fix, where Forge decodes the first pass too and
    stores decoded pixels in latents_after_sampling (modules/processing.py sample_hr_pass)."""
    from modules.scripts import PostprocessImageArgs
    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    seen = []
    decode = TransparentDecoder.decode
    monkeypatch.setattr(TransparentDecoder, "decode",
                        lambda self, pixel, latent, passes=8: seen.append(latent) or decode(self, pixel, latent, passes))
    latent = torch.randn(1, 4, 8, 8)
    pixel = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    results = []
    for hires in (True, False):
        p = make_p()
        run_sampling_setup(script, p, args())
        vae = p.sd_model.forge_objects.vae
        if hires:
            vae.decode(vae.first_stage_model.process_out(torch.randn(1, 4, 4, 4)))  # the first pass
        vae.decode(vae.first_stage_model.process_out(latent))  # the final pass
        p.latents_after_sampling.append(torch.rand(3, 64, 64) if hires else latent[0])
        pp = PostprocessImageArgs(pixel, 0)
        script.postprocess_image(p, pp, *args())
        p.pixels_after_sampling.append(pp.image)
        script.postprocess_image_after_composite(p, pp, *args())
        results.append(np.asarray(pp.image))
    assert results[0].shape == (64, 64, 4)
    np.testing.assert_array_equal(results[0], results[1])
    for received in seen:
        torch.testing.assert_close(received, latent / 0.125)  # process_out, not the sampler's scaled latent


def test_sd15_units_are_built_once_per_generation_and_reused_by_the_hires_pass(script, sd15_files, monkeypatch):
    from lib_layerdiffusion.hosts import apply_plan
    built = []
    build = apply_plan.build_attention_sharing
    monkeypatch.setattr(apply_plan, "build_attention_sharing", lambda *a, **k: built.append(1) or build(*a, **k))
    p = make_p(is_sdxl=False, batch_size=3, sd15_unet=True)
    script_args = sd15_args(JOINT)
    run_sampling_setup(script, p, script_args)
    first = dict(p.sd_model.forge_objects.unet.object_patches)
    noise = torch.zeros((3, 4, 10, 10))  # the hires pass: another size, the same generation
    script.process_before_every_sampling(p, *script_args, x=noise, noise=noise)
    second = p.sd_model.forge_objects.unet.object_patches
    assert built == [1] and all(second[name] is unit for name, unit in first.items())
    # the units were left where they were built: Forge's memory management moves them with the UNet
    assert all(next(u.parameters()).device.type == "cpu" for u in second.values())


# --- never a silently wrong alpha ------------------------------------------------------------------------------

def test_taesd_decode_setting_decodes_with_the_full_vae_in_post_sample(script, opts):
    """modules/processing.py:999-1010: post_sample, then Forge decodes unless the samples are already decoded;
    with 'VAE type for decode' = TAESD it would never call the checkpoint's VAE."""
    from modules.scripts import PostSampleArgs
    opts.sd_vae_decode_method = "TAESD"
    try:
        p = make_p(batch_size=2)
        run_sampling_setup(script, p, args())
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        ps = PostSampleArgs(latents)
        script.post_sample(p, ps, *args())
    finally:
        opts.sd_vae_decode_method = "Full"
    assert getattr(ps.samples, "already_decoded", False) and len(ps.samples) == 2
    recorded = torch.cat(p.layerdiffuse_decoded_latents)
    torch.testing.assert_close(recorded, latents / 0.125)  # the raw latent, recorded at the full VAE's decode
    full = p.sd_model.forge_objects.vae.decode(latents / 0.125).movedim(-1, 1) * 2 - 1
    torch.testing.assert_close(torch.stack(list(ps.samples)), full)  # the checkpoint VAE's own pixels
    assert any("VAE type for decode" in text for text in p.comments)


def test_the_full_vae_decode_is_left_alone_when_forge_decodes_fully(script):
    from modules.scripts import PostSampleArgs
    p = make_p()
    run_sampling_setup(script, p, args())
    latents = torch.randn(1, 4, 8, 8)
    ps = PostSampleArgs(latents)
    script.post_sample(p, ps, *args())
    assert ps.samples is latents and p.layerdiffuse_decoded_latents == []


def test_an_image_no_vae_decoded_stops_instead_of_decoding_from_the_pixels(script):
    from modules.scripts import PostprocessImageArgs
    from lib_layerdiffusion.errors import LayerDiffuseError
    p = make_p()
    run_sampling_setup(script, p, args())
    pp = PostprocessImageArgs(Image.new("RGB", (64, 64), (9, 99, 199)), 0)  # no VAE decode was recorded
    script.postprocess_image(p, pp, *args())
    script.postprocess_image_after_composite(p, pp, *args())
    assert pp.image.mode == "RGB"  # not given an alpha guessed from the pixels
    with pytest.raises(LayerDiffuseError, match="did not decode this image's latent"):
        p.close()
    with pytest.raises(LayerDiffuseError, match="did not decode this image's latent"):
        p.sample()  # a later batch of the request does not sample either


def test_an_unexpected_error_in_process_stops_before_sampling(script, monkeypatch):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError

    def broken(*a, **k):
        raise AttributeError("'Options' object has no attribute 'sd_model_checkpoint'")  # a host API changed

    monkeypatch.setattr(generation, "check_request", broken)
    p = make_p()
    script.process(p, *args())
    with pytest.raises(HookError, match="Preparing the generation failed.*AttributeError"):
        p.sample()


def test_each_sampling_starts_with_nothing_recorded_by_the_previous_one(script, monkeypatch):
    """Batch count 2: the second patch fails with a foreign error; the first batch's recorded latents are gone,
    and the sampling stops at its first step."""
    from backend.sampling.sampling_function import sampling_step
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError
    p = make_p()
    run_sampling_setup(script, p, args())
    vae = p.sd_model.forge_objects.vae
    vae.decode(vae.first_stage_model.process_out(torch.randn(1, 4, 8, 8)))
    assert len(p.layerdiffuse_decoded_latents) == 1
    monkeypatch.setattr(generation, "apply_plan", lambda *a, **k: (_ for _ in ()).throw(KeyError("input_blocks")))
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *args(), x=noise, noise=noise)
    assert p.layerdiffuse_decoded_latents is None
    with pytest.raises(HookError, match="Patching the model failed.*KeyError"):
        sampling_step(p.sd_model.forge_objects.unet, noise, 10.0, [{"model_conds": {}}], [{"model_conds": {}}])


def test_img2img_regulation_is_released_before_sampling_and_by_the_next_request(script):
    from lib_layerdiffusion.hosts.comfy_patcher import _RegulatedAutoencoder
    p = img2img_p([transparent_disc()])
    shared_vae = p.sd_model.forge_objects.vae
    script.process(p, *args())
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *args())
    assert isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)
    p.sd_model.forge_objects.vae.encode(torch.rand(1, 64, 64, 3))  # Forge encodes the init image
    noise = torch.zeros((1, 4, 8, 8))
    script.process_before_every_sampling(p, *args(), x=noise, noise=noise)
    assert not isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)

    # interrupted after the encode: nothing of ours ran again, the regulated copy stayed on forge_objects
    p = img2img_p([transparent_disc()])
    script.process(p, *args())
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *args())
    nxt = img2img_p([Image.new("RGB", (64, 64), (1, 2, 3))])
    nxt.sd_model = p.sd_model
    script.process(nxt, *args(enabled=False))  # the next request, LayerDiffuse off
    assert not isinstance(nxt.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)
    assert type(nxt.sd_model.forge_objects.vae) is type(shared_vae)


def test_img2img_encoder_failure_leaves_the_init_images_and_the_vae_alone(script, monkeypatch):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.errors import HookError
    from lib_layerdiffusion.hosts.comfy_patcher import _RegulatedAutoencoder
    monkeypatch.setattr(generation._built, "get", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    disc = transparent_disc()
    p = img2img_p([disc])
    script.process(p, *args())
    script.before_process_init_images(p, {"crop_region": None, "image_mask": None}, *args())
    assert p.init_images[0] is disc and not hasattr(p, "layerdiffuse_init")
    assert not isinstance(p.sd_model.forge_objects.vae.first_stage_model, _RegulatedAutoencoder)
    with pytest.raises(HookError, match="Preparing the init images failed.*Out of memory"):
        p.sample()


@pytest.mark.parametrize("edit", [None, "before", "after"])
def test_the_decoder_reads_the_vaes_float_output_unless_a_script_edited_the_image(script, monkeypatch, edit):
    """Unedited: the VAE's float output (what Forge rounds down to 8 bits), as the reference decoders read it.
    Edited after sampling by another script's postprocess_image (ADetailer and the like), whether that hook runs
    before or after LayerDiffuse's: the edited 8-bit image, which is what Forge saves."""
    from modules.scripts import PostprocessImageArgs
    from lib_layerdiffusion.networks.transparent_vae import TransparentDecoder
    seen = []
    decode = TransparentDecoder.decode
    monkeypatch.setattr(TransparentDecoder, "decode",
                        lambda self, pixel, latent, passes=8: seen.append(pixel) or decode(self, pixel, latent, passes))
    p = make_p()
    run_sampling_setup(script, p, args())
    vae = p.sd_model.forge_objects.vae
    decoded = vae.decode(vae.first_stage_model.process_out(torch.randn(1, 4, 8, 8)))[0]  # H×W×3 in [0, 1]
    image = Image.fromarray((decoded.clamp(0, 1) * 255).numpy().astype(np.uint8))  # Forge: 255 · x as uint8

    def paint(pp):
        pp.image = pp.image.copy()
        pp.image.paste((255, 0, 255), (8, 8, 24, 24))

    pp = PostprocessImageArgs(image, 0)
    if edit == "before":
        paint(pp)
    script.postprocess_image(p, pp, *args())
    if edit == "after":
        paint(pp)
    p.pixels_after_sampling.append(pp.image)
    final = pp.image
    script.postprocess_image_after_composite(p, PostprocessImageArgs(final, 0), *args())
    (pixel,) = seen
    if edit is None:
        torch.testing.assert_close(pixel[0], decoded.movedim(-1, 0).clamp(0, 1))  # not rounded to 8 bits
        assert not torch.equal(pixel[0] * 255, torch.round(pixel[0] * 255))
    else:
        expected = torch.from_numpy(np.asarray(final, np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(pixel[0], expected)
        assert tuple((pixel[0][:, 10, 10] * 255).round().tolist()) == (255.0, 0.0, 255.0)  # the edit is in


def forge_saves_with_infotext(script, p, script_args):
    """As forge_saves, with each image's infotext as modules/processing.py passes it (info=infotext(i), i the
    position in the batch; create_infotext calls the callables of extra_generation_params)."""
    from modules import images
    from modules.processing import create_infotext
    saved, infotexts, results = [], [], forge_after_sampling(script, p, script_args)
    for i, image in enumerate(results):
        info = create_infotext(p, p.prompts, p.seeds, p.seeds, index=i)
        infotexts.append(info)
        saved.append(images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], "png", info=info,
                                       p=p)[0])
    return saved, infotexts, results


def test_layered_psd_file_beside_the_pngs(script, opts, tmp_path):
    psd_tools = pytest.importorskip("psd_tools")
    from lib_layerdiffusion.images.psd_file import read_psd_infotext
    opts.data["layerdiffuse_save_psd_file"] = True
    fg = transparent_disc()
    p = saving_p(tmp_path, batch_size=2)
    script_args = args(method=FG2BLE, fg=fg)
    run_sampling_setup(script, p, script_args)
    saved, infotexts, _ = forge_saves_with_infotext(script, p, script_args)
    assert p.comments == {}
    psds = sorted(tmp_path.glob("*.psd"))
    assert [f.stem + "-blend.png" for f in psds] == sorted(Path(s).name for s in saved)
    assert list(tmp_path.glob("*.ora")) == []  # the OpenRaster setting is separate
    document = psd_tools.PSDImage.open(psds[0])
    assert document.size == (64, 64)
    layers = list(document)
    assert [(l.name, l.visible) for l in layers] == [("blended", False), ("foreground", True)]
    np.testing.assert_array_equal(np.asarray(layers[0].topil().convert("RGB")),
                                  np.asarray(Image.open(sorted(saved)[0]).convert("RGB")))
    np.testing.assert_array_equal(np.asarray(layers[1].topil())[..., 3], np.asarray(fg)[..., 3])
    assert read_psd_infotext(psds[0]) == infotexts[0] and "layerdiffusion_layer: blend" in infotexts[0]


def test_transparent_image_psd_and_ora_hold_the_saved_rgba(script, opts, tmp_path):
    psd_tools = pytest.importorskip("psd_tools")
    opts.data["layerdiffuse_save_psd_file"] = True
    opts.data["layerdiffuse_save_layered_file"] = True
    p = saving_p(tmp_path)
    script_args = args()
    run_sampling_setup(script, p, script_args)
    saved, _, _ = forge_saves_with_infotext(script, p, script_args)
    on_disk = np.asarray(Image.open(saved[0]))
    (psd_path,) = tmp_path.glob("*.psd")
    (ora_path,) = tmp_path.glob("*.ora")
    assert psd_path.stem == ora_path.stem == Path(saved[0]).stem
    checker, image = list(psd_tools.PSDImage.open(psd_path))
    assert (checker.name, checker.visible, image.name, image.visible) == (
        "checkerboard", False, "transparent image", True)
    got = np.asarray(image.topil())
    np.testing.assert_array_equal(got[..., 3], on_disk[..., 3])
    visible = on_disk[..., 3] > 0
    np.testing.assert_array_equal(got[visible], on_disk[visible])


def test_without_psd_tools_the_user_is_told_and_the_pngs_are_saved(script, opts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psd_tools", None)  # not installed: import psd_tools raises ImportError
    opts.data["layerdiffuse_save_psd_file"] = True
    opts.data["layerdiffuse_save_layered_file"] = True
    p = saving_p(tmp_path)
    script_args = args()
    run_sampling_setup(script, p, script_args)
    saved, _, _ = forge_saves_with_infotext(script, p, script_args)
    (note,) = p.comments
    assert "psd-tools is not installed" in note and 'pip install "psd-tools' in note and "PNGs are saved" in note
    assert Image.open(saved[0]).mode == "RGBA"
    assert list(tmp_path.glob("*.psd")) == [] and len(list(tmp_path.glob("*.ora"))) == 1


def test_trim_and_bleed_apply_to_the_saved_and_the_returned_image(script, opts, tmp_path, monkeypatch):
    from lib_layerdiffusion import generation
    from lib_layerdiffusion.images.layered_file import read_ora
    from lib_layerdiffusion.images.outputs import checkerboard_preview_of
    from lib_layerdiffusion.images.sprite import TrimBox
    decoded = np.asarray(transparent_disc()).copy()  # the disc: x 7..33, y 11..37
    decoded[0, 0] = (9, 9, 9, 0)
    # a known decode, so that the margins to trim are known; the rest of the flow is the real one
    monkeypatch.setattr(generation, "decode_transparent", lambda p, gen, bridge, store, index, composed: (
        Image.fromarray(decoded, "RGBA"), checkerboard_preview_of(Image.fromarray(decoded, "RGBA"))))
    opts.data.update({"layerdiffuse_trim_margins": True, "layerdiffuse_trim_margin": 2.0,
                      "layerdiffuse_bleed_colour": True, "layerdiffuse_save_layered_file": True})
    p = saving_p(tmp_path, batch_size=2)
    script_args = args()
    run_sampling_setup(script, p, script_args)
    saved, infotexts, results = forge_saves_with_infotext(script, p, script_args)
    box = TrimBox(5, 9, 36, 40, 64, 64)
    assert all(f"layerdiffusion_trim: {box}" in text for text in infotexts)
    for path, returned in zip(saved, results):
        on_disk = np.asarray(Image.open(path))
        assert on_disk.shape == (31, 31, 4)
        np.testing.assert_array_equal(on_disk, np.asarray(returned))  # saved = returned
        np.testing.assert_array_equal(on_disk[..., 3], decoded[9:40, 5:36, 3])  # alpha unchanged
        assert np.all(on_disk[..., :3] == (0, 0, 255))  # the disc's blue everywhere, also where invisible
    previews = [im for im in p.extra_result_images if im.mode == "RGB"]
    assert [im.size for im in previews] == [(31, 31)] * 2
    # the layered file puts the trimmed image back where it was
    _, layers = read_ora(sorted(tmp_path.glob("*.ora"))[0])
    placed = np.asarray(layers[1].image)
    assert placed.shape == (64, 64, 4)
    np.testing.assert_array_equal(placed[9:40, 5:36], np.asarray(results[0]))
    assert not placed[:9].any() and not placed[40:].any()


def test_trim_margin_setting_is_checked(script, opts):
    opts.data.update({"layerdiffuse_trim_margins": True, "layerdiffuse_trim_margin": -3})
    p = make_p()
    run_sampling_setup(script, p, args())
    with pytest.raises(Exception, match="trim margin must be a whole number of pixels"):
        p.sample()


def test_a_bad_trim_margin_stops_nothing_while_trimming_is_off(script, opts):
    from lib_layerdiffusion.request.settings import Settings
    for value in (None, "", -3, "abc", 2.5):
        opts.data.update({"layerdiffuse_trim_margins": False, "layerdiffuse_trim_margin": value})
        assert Settings.from_values(opts.data.get).trim_margin == 0
    opts.data.update({"layerdiffuse_trim_margins": True, "layerdiffuse_trim_margin": None})
    assert Settings.from_values(opts.data.get).trim_margin == 0  # never saved: the default
    opts.data["layerdiffuse_trim_margin"] = "8"
    assert Settings.from_values(opts.data.get).trim_margin == 8
    opts.data["layerdiffuse_trim_margin"] = 2.5
    with pytest.raises(Exception, match="whole number of pixels"):
        Settings.from_values(opts.data.get)


def test_disabled_is_not_stopped_by_a_bad_layerdiffuse_setting(script, opts):
    """A bad saved setting stops only the requests that turn LayerDiffuse on."""
    opts.data["layerdiffuse_decoder_passes"] = 3
    p = make_p()
    script.process(p, *args(enabled=False))
    assert p.sample() == "sampled"
    p = make_p()
    script.process(p, *args())
    with pytest.raises(Exception, match="decoder passes must be one of 1, 2, 4, 8"):
        p.sample()


def test_forge_main_records_the_vae_output_before_its_clip(script, monkeypatch):
    """backend/patcher/vae.py:142 decode_inner clamps (decode(z) + 1) / 2 to [0, 1]; the recording copy keeps the
    autoencoder's output before that clip beside the host's clipped image (the FLUX.1 decoder's input)."""
    from backend.patcher.vae import IntegratedAutoencoderKL
    from lib_layerdiffusion.generation import DECODED_ATTR
    plain_decode = IntegratedAutoencoderKL.decode
    monkeypatch.setattr(IntegratedAutoencoderKL, "decode", lambda self, z: plain_decode(self, z) * 1.6)
    p = make_p()
    shared = p.sd_model.forge_objects.vae
    run_sampling_setup(script, p, args())
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    image = p.sd_model.forge_objects.vae.decode(z)
    expected = (shared.first_stage_model.decode(z) + 1.0) / 2.0
    (pixels,) = getattr(p, DECODED_ATTR).pixels
    assert pixels.min() < 0.0 and pixels.max() > 1.0
    torch.testing.assert_close(pixels, expected)
    torch.testing.assert_close(image, expected.clamp(0, 1).movedim(1, -1))


@pytest.mark.parametrize("unclipped", [False, True])
def test_decoder_pixels_clip_unless_the_base_models_reference_reads_them_unclipped(unclipped):
    """SD/SDXL: the clipped float image (as DiffusersCLI); FLUX.1: the VAE's output as it is (the Flux port). Either
    way only where Forge's 8-bit image is that output clipped and rounded down; an edited image is read as it is."""
    from lib_layerdiffusion.generation import _decoder_pixels
    from lib_layerdiffusion.request.methods import DECODER_READS_UNCLIPPED, BaseModel
    assert DECODER_READS_UNCLIPPED == {BaseModel.SDXL: False, BaseModel.SD15: False, BaseModel.FLUX: True}
    decoded = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7)) * 1.4 - 0.2
    eight_bit = Image.fromarray((decoded.clamp(0, 1) * 255).movedim(0, -1).numpy().astype(np.uint8))
    pixel, exact = _decoder_pixels(eight_bit, decoded, unclipped)
    assert exact
    torch.testing.assert_close(pixel[0], decoded if unclipped else decoded.clamp(0, 1))
    edited = eight_bit.copy()
    edited.paste((255, 0, 255), (0, 0, 8, 8))
    pixel, exact = _decoder_pixels(edited, decoded, unclipped)
    assert not exact and 0.0 <= pixel.min() and pixel.max() <= 1.0
