import base64
import io

import pytest
from PIL import Image

from lib_layerdiffusion.request.args import ARG_NAMES, LayerDiffuseArgs
from lib_layerdiffusion.errors import InvalidArgumentError, UnsupportedModelError
from lib_layerdiffusion.request.infotext import infotext_fields, paste_readers
from lib_layerdiffusion.request.methods import (DEFAULT_METHOD, METHOD_VALUES, METHODS, BaseModel, Layer, PatchKind,
                                        method_by_name)
from lib_layerdiffusion.networks.model_store import MODEL_FILES
from lib_layerdiffusion.request.validation import check_request

SDXL_ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
FG2BLE = "(SDXL) From Foreground to Blending"


def png_b64(color=(255, 0, 0, 128)):
    buf = io.BytesIO()
    Image.new("RGBA", (16, 16), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_method_values_are_the_original_spelling_in_order():
    assert METHOD_VALUES == (
        "(SD1.5) Only Generate Transparent Image (Attention Injection)",
        "(SD1.5) From Foreground to Background (need batch size 2)",
        "(SD1.5) From Background to Foreground (need batch size 2)",
        "(SD1.5) Generate Everything Together (need batch size 3)",
        SDXL_ATTN,
        "(SDXL) Only Generate Transparent Image (Conv Injection)",
        FG2BLE,
        "(SDXL) From Foreground and Blending to Background",
        "(SDXL) From Background to Blending",
        "(SDXL) From Background and Blending to Foreground",
        "(FLUX.1) Only Generate Transparent Image",  # new: not in the original extension
    )
    assert DEFAULT_METHOD.value == SDXL_ATTN


def test_every_method_file_is_in_the_store_table():
    for m in METHODS:
        assert m.model_file in MODEL_FILES
        assert m.decoder_file in MODEL_FILES and m.encoder_file in MODEL_FILES


def test_legacy_names_resolve():
    assert method_by_name("From Background to Blending").value == "(SDXL) From Background to Blending"
    assert method_by_name("  only generate transparent image (attention injection) ").value == SDXL_ATTN
    with pytest.raises(InvalidArgumentError, match="Unknown method 'nope'.*Choose one of"):
        method_by_name("nope")


def test_frames_and_transparency():
    joint = method_by_name("(SD1.5) Generate Everything Together (need batch size 3)")
    assert joint.group_size == 3
    assert [joint.is_transparent_frame(i) for i in range(6)] == [True, False, False] * 2
    bgble2fg = method_by_name("(SDXL) From Background and Blending to Foreground")
    assert bgble2fg.inputs == (Layer.BACKGROUND, Layer.BLEND) and bgble2fg.makes_transparent
    assert not method_by_name(FG2BLE).makes_transparent
    assert all(m.patch_kind is PatchKind.WEIGHT_PATCH for m in METHODS if m.base is BaseModel.SDXL)


def test_positional_args_in_ui_order():
    args = LayerDiffuseArgs.from_script_args(True, FG2BLE, 0.5, 0.8, png_b64(), None, None, "Just Resize", False,
                                             "", "", "")
    assert args.enabled and args.method.value == FG2BLE and args.weight == 0.5 and args.ending_step == 0.8
    assert args.fg_image.mode == "RGBA" and args.fg_image.getpixel((0, 0)) == (255, 0, 0, 128)
    assert args.resize_mode.value == "Just Resize"


def test_short_positional_list_takes_defaults_and_null_prompts():
    args = LayerDiffuseArgs.from_script_args(True, SDXL_ATTN)
    assert args.weight == 1.0 and args.ending_step == 1.0 and args.resize_mode.value == "Crop and Resize"
    args = LayerDiffuseArgs.from_script_args(True, SDXL_ATTN, 1, 1, None, None, None, "Crop and Resize", False,
                                             None, None, None)
    assert args.fg_additional_prompt == ""


def test_named_args_dict():
    args = LayerDiffuseArgs.from_script_args({"enabled": True, "method": FG2BLE, "weight": 1,
                                              "fg_image": "data:image/png;base64," + png_b64(), "stop_at": 0.5})
    assert args.method.value == FG2BLE and args.ending_step == 0.5 and args.fg_image is not None


@pytest.mark.parametrize("bad, message", [
    ({"enabled": "maybe"}, "enabled must be true or false"),
    ({"enabled": True, "method": "Nope"}, "Unknown method"),
    ({"enabled": True, "weight": "heavy"}, "weight must be a number from 0 to 2"),
    ({"enabled": True, "weight": 3}, "weight must be a number from 0 to 2"),
    ({"enabled": True, "ending_step": -1}, "ending_step"),
    ({"enabled": True, "fg_image": "garbage!"}, "fg_image could not be read"),
    ({"enabled": True, "resize_mode": "Squash"}, "Unknown resize mode"),
    ({"enabled": True, "colour": 1}, "Unknown argument 'colour'"),
    ({"enabled": True, "fg_additional_prompt": 5}, "must be text"),
])
def test_bad_args_name_the_problem(bad, message):
    with pytest.raises(InvalidArgumentError, match=message):
        LayerDiffuseArgs.from_script_args(bad)


def test_disabled_reads_nothing_else():
    args = LayerDiffuseArgs.from_script_args(False, "garbage", "x", None, "not an image")
    assert args == LayerDiffuseArgs()


def test_validation_messages():
    attn = LayerDiffuseArgs.from_script_args(True, SDXL_ATTN)
    check_request(attn, BaseModel.SDXL, 2)
    with pytest.raises(UnsupportedModelError, match="needs an SDXL checkpoint.*is SD1.5"):
        check_request(attn, BaseModel.SD15, 1)
    with pytest.raises(UnsupportedModelError, match="not SDXL, SD1.5 or FLUX.1"):
        check_request(attn, None, 1)
    with pytest.raises(InvalidArgumentError, match="needs a foreground image"):
        check_request(LayerDiffuseArgs.from_script_args(True, FG2BLE), BaseModel.SDXL, 1)
    joint = LayerDiffuseArgs.from_script_args(True, "(SD1.5) Generate Everything Together (need batch size 3)")
    with pytest.raises(InvalidArgumentError, match="multiple of 3"):
        check_request(joint, BaseModel.SD15, 4)
    check_request(joint, BaseModel.SD15, 6)


def test_infotext_values_match_the_original_and_read_back():
    args = LayerDiffuseArgs.from_script_args(True, FG2BLE, 1.0, 1.0, png_b64(), None, None, "Crop and Resize",
                                             False, "", "", "")
    fields = infotext_fields(args)
    assert fields == {
        "layerdiffusion_enabled": True, "layerdiffusion_method": FG2BLE, "layerdiffusion_weight": 1.0,
        "layerdiffusion_ending_step": 1.0, "layerdiffusion_fg_image": True, "layerdiffusion_bg_image": False,
        "layerdiffusion_blend_image": False, "layerdiffusion_resize_mode": "Crop and Resize",
        "layerdiffusion_fg_additional_prompt": "", "layerdiffusion_bg_additional_prompt": "",
        "layerdiffusion_blend_additional_prompt": "",
    }
    # what Forge's infotext parser hands back is text
    parsed = {k: str(v) for k, v in fields.items()}
    readers = paste_readers()
    assert readers["enabled"](parsed) is True
    assert readers["method"](parsed) == FG2BLE
    assert readers["weight"](parsed) == 1.0
    assert readers["method"]({"layerdiffusion_method": "From Foreground to Blending"}) == FG2BLE
    assert readers["method"]({}) is None  # absent: leave the UI as it is
    assert set(readers) <= set(ARG_NAMES)


def parse_infotext_line(line: str) -> dict:
    """The `key: value, key: value` part of an infotext, split the way Forge's
    modules/infotext_utils.py parse_generation_parameters does for unquoted values."""
    import re
    return {k: v for k, v in re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)}


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
def test_infotext_round_trip_for_every_method(method):
    from lib_layerdiffusion.request.methods import Layer as L
    images = {f"{l.value}_image": png_b64() for l in method.inputs}
    prompts = {f"{l.value}_additional_prompt": f"extra {l.value}" for l in method.prompts}
    args = LayerDiffuseArgs.from_script_args({"enabled": True, "method": method.value, "weight": 0.5,
                                              "ending_step": 0.8, **images, **prompts})
    line = ", ".join(f"{k}: {v}" for k, v in infotext_fields(args).items())
    parsed = parse_infotext_line(line)
    readers = paste_readers()
    pasted = {name: read(parsed) for name, read in readers.items()}
    assert pasted["enabled"] is True and pasted["method"] == method.value
    assert pasted["weight"] == 0.5 and pasted["ending_step"] == 0.8
    for layer in L:
        assert pasted[f"{layer.value}_additional_prompt"] == (f"extra {layer.value}" if layer in method.prompts else "")
    # written back from the pasted values, the infotext is the same (images only say whether one was given)
    again = LayerDiffuseArgs.from_script_args({**{k: v for k, v in pasted.items() if v is not None}, **images})
    assert infotext_fields(again) == infotext_fields(args)
    for legacy in method.legacy_values:
        assert readers["method"](parse_infotext_line(line.replace(method.value, legacy))) == method.value


def test_decoder_dtype_from_the_precision_setting():
    import torch
    from lib_layerdiffusion.request.settings import decoder_dtype
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert decoder_dtype(cpu, "fp16", lambda d: True) is torch.float32  # the CPU always decodes in fp32
    assert decoder_dtype(gpu, "bf16", lambda d: True) is torch.bfloat16
    assert decoder_dtype(gpu, "fp32", lambda d: True) is torch.float32
    assert decoder_dtype(gpu, "Automatic", lambda d: True) is torch.float16
    assert decoder_dtype(gpu, "Automatic", lambda d: False) is torch.float32


def forge_slots(api_args, defaults=(False, SDXL_ATTN, 1.0, 1.0, None, None, None, "Crop and Resize", False, "", "",
                                    "")):
    """modules/api/api.py init_script_args: args[i] copied into slot i, as far as both go."""
    slots = list(defaults)
    for i in range(min(len(slots), len(api_args))):
        slots[i] = api_args[i]
    return slots


@pytest.mark.parametrize("text", ["yes please", "true", "ab"])
def test_args_given_as_one_string_ask_for_a_list_or_an_object(text):
    with pytest.raises(InvalidArgumentError, match=r"must be a list .* or an object \(dict\).*not a string"):
        LayerDiffuseArgs.from_script_args(*forge_slots(text))


def test_args_shape_error_names_what_was_sent():
    from lib_layerdiffusion.request.args import args_shape_error
    assert args_shape_error([True, SDXL_ATTN]) is None and args_shape_error({"enabled": True}) is None
    assert args_shape_error([]) is None
    for value, kind in [("yes please", "a string"), (5, "a number"), (0.5, "a number"), (None, "null"),
                        (True, "a boolean")]:
        error = args_shape_error(value)
        assert isinstance(error, InvalidArgumentError) and error.status_code == 422
        assert str(error).startswith("[LayerDiffuse]") and str(error).endswith(f"not {kind}.")
        assert "must be a list" in error.detail and "object (dict)" in error.detail


def test_lists_of_short_values_are_still_lists():
    # a one-character first slot alone is an ordinary (bad) value, not a split string
    with pytest.raises(InvalidArgumentError, match="enabled must be true or false, not 'y'"):
        LayerDiffuseArgs.from_script_args(*forge_slots("y"))
    assert LayerDiffuseArgs.from_script_args(*forge_slots([True, SDXL_ATTN, 0.5])).weight == 0.5
    assert LayerDiffuseArgs.from_script_args(*forge_slots(["1", SDXL_ATTN])).enabled


def test_flux_method_and_checkpoint_families_refuse_each_other():
    flux = LayerDiffuseArgs.from_script_args(True, "(FLUX.1) Only Generate Transparent Image")
    assert flux.method.base is BaseModel.FLUX and flux.method.makes_transparent
    assert flux.method.decoder_file == flux.method.encoder_file == "TransparentVAE"
    check_request(flux, BaseModel.FLUX, 2, latent_channels=16)
    with pytest.raises(UnsupportedModelError, match="needs a FLUX.1 checkpoint.*is SDXL.*choose an \\(SDXL\\) method"):
        check_request(flux, BaseModel.SDXL, 1)
    with pytest.raises(UnsupportedModelError, match="needs an SDXL checkpoint.*is FLUX.1.*choose a \\(FLUX.1\\) method"):
        check_request(LayerDiffuseArgs.from_script_args(True, SDXL_ATTN), BaseModel.FLUX, 1)
    with pytest.raises(UnsupportedModelError, match="16 latent channels; the loaded one has 4"):
        check_request(flux, BaseModel.FLUX, 1, latent_channels=4)
    with pytest.raises(UnsupportedModelError, match="4 latent channels; the loaded one has 32"):
        check_request(LayerDiffuseArgs.from_script_args(True, SDXL_ATTN), BaseModel.SDXL, 1, latent_channels=32)


def test_flux_nets_take_bf16_for_automatic_where_the_device_has_it():
    """The FLUX.1 transparent VAE reads unclipped pixels and its activations outgrow fp16; the Flux port runs it
    in bf16. "Automatic" picks bf16 for it when the host says the GPU supports bf16; fp16 stays selectable."""
    from types import SimpleNamespace

    import torch

    from lib_layerdiffusion.hosts.comfy_patcher import device_and_dtype
    from lib_layerdiffusion.request.settings import decoder_dtype
    gpu = torch.device("cuda", 0)
    assert decoder_dtype(gpu, "Automatic", lambda d: True, lambda d: True) is torch.bfloat16
    assert decoder_dtype(gpu, "Automatic", lambda d: True, lambda d: False) is torch.float16  # e.g. a Turing card
    assert decoder_dtype(gpu, "fp16", lambda d: True, lambda d: True) is torch.float16
    assert decoder_dtype(torch.device("cpu"), "Automatic", lambda d: True, lambda d: True) is torch.float32
    host = SimpleNamespace(get_torch_device=lambda: gpu, should_use_fp16=lambda d: True,
                           should_use_bf16=lambda d: d.type == "cuda")
    assert device_and_dtype(host, "Automatic", prefer_bf16=True) == (gpu, torch.bfloat16)
    assert device_and_dtype(host, "Automatic") == (gpu, torch.float16)  # SD / SDXL nets: as before
    old_forge = SimpleNamespace(get_torch_device=lambda: gpu, should_use_fp16=lambda d: True)  # no should_use_bf16
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    assert device_and_dtype(old_forge, "Automatic", prefer_bf16=True) == (gpu, expected)
