"""plan_sampling: LayerDiffuse's change to one sampling as a plain value, computed without any host."""
import numpy as np
import pytest
from PIL import Image

from lib_layerdiffusion.networks.attention_sharing import SD15_CONFIGS
from lib_layerdiffusion.plan import plan_sampling
from lib_layerdiffusion.request.args import LayerDiffuseArgs


def request(method, **values):
    return LayerDiffuseArgs.from_script_args({"enabled": True, "method": method, **values})


def test_sdxl_attention_injection_is_a_weight_patch_and_a_decode():
    plan = plan_sampling(request("(SDXL) Only Generate Transparent Image (Attention Injection)", weight=0.7),
                         (2, 4, 16, 12), "a cat")
    assert plan.weight_patch_file == "layer_xl_transparent_attn" and plan.strength == pytest.approx(0.7)
    assert plan.concat is None and plan.attention_sharing is None and plan.stop_at is None
    assert plan.decoder_file == "vae_transparent_decoder" and plan.decode_reads_raw_latent


def test_concat_inputs_in_the_methods_order_at_each_samplings_size():
    fg = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    blend = Image.new("RGB", (10, 10), (0, 0, 255))
    args = request("(SDXL) From Foreground and Blending to Background", fg_image=fg, blend_image=blend,
                   ending_step=0.4)
    first = plan_sampling(args, (3, 4, 16, 12), "x")
    hires = plan_sampling(args, (3, 4, 24, 18), "x")
    assert first.weight_patch_file == "layer_xl_fgble2bg" and first.decoder_file is None  # background: opaque
    assert first.stop_at == pytest.approx(0.4) and first.concat.batch_size == 3
    (fg_pixels, blend_pixels) = first.concat.images
    assert fg_pixels.shape == (128, 96, 3) and hires.concat.images[0].shape == (192, 144, 3)
    assert fg_pixels[64, 48, 0] > 0.99 and blend_pixels[64, 48, 2] > 0.99  # foreground first, then blended


def test_sd15_joint_plans_units_and_per_frame_prompts():
    args = request("(SD1.5) Generate Everything Together (need batch size 3)", fg_additional_prompt="glass",
                   blend_additional_prompt="on a table")
    plan = plan_sampling(args, (6, 4, 8, 8), "a cat")
    sharing = plan.attention_sharing
    assert plan.weight_patch_file is None and plan.concat is None
    assert sharing.model_file == "layer_sd15_joint" and sharing.config == SD15_CONFIGS["sd15_joint"]
    assert sharing.control_image is None
    assert sharing.frame_prompts == ("glass, a cat", None, "on a table, a cat")
    assert plan.decoder_file == "layer_sd15_vae_transparent_decoder"


def test_sd15_fg2bg_has_its_control_image_and_no_decode():
    fg = Image.new("RGBA", (8, 8), (0, 255, 0, 255))
    plan = plan_sampling(request("(SD1.5) From Foreground to Background (need batch size 2)", fg_image=fg),
                         (2, 4, 8, 8), "p")
    assert plan.attention_sharing.control_image.shape == (64, 64, 3)
    assert np.allclose(plan.attention_sharing.control_image[..., 1], 1.0)
    assert plan.decoder_file is None  # background and blended frames are opaque


def test_the_plan_is_a_frozen_value():
    plan = plan_sampling(request("(SDXL) Only Generate Transparent Image (Conv Injection)"), (1, 4, 8, 8), "")
    with pytest.raises(AttributeError):
        plan.strength = 2.0
    assert plan == plan_sampling(request("(SDXL) Only Generate Transparent Image (Conv Injection)"), (1, 4, 8, 8), "")


def test_flux_plans_its_lora_through_the_host_and_the_16_channel_decoder():
    plan = plan_sampling(request("(FLUX.1) Only Generate Transparent Image", weight=0.8, ending_step=0.9),
                         (1, 16, 32, 32), "a glass")
    assert plan.lora_file == "layerlora" and plan.weight_patch_file is None
    assert plan.strength == pytest.approx(0.8) and plan.stop_at == pytest.approx(0.9)
    assert plan.decoder_file == "TransparentVAE" and plan.concat is None and plan.attention_sharing is None
