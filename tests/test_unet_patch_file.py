"""The UNet patch-file key format, parsed in one place for every host."""
import pytest
import torch

from lib_layerdiffusion.errors import ModelFileError
from lib_layerdiffusion.networks.unet_patch_file import parse_patch_file


def test_lora_and_diff_entries():
    up, down, diff = torch.ones(8, 2), torch.ones(2, 8), torch.zeros(320, 8, 3, 3)
    patches = parse_patch_file("f.safetensors", {
        "diffusion_model.out.weight::lora::0": up, "diffusion_model.out.weight::lora::1": down,
        "diffusion_model.input_blocks.0.0.weight::diff::0": diff})
    lora = patches["diffusion_model.out.weight"]
    assert lora.kind == "lora" and lora.up is up and lora.down is down and len(lora.slots) == 16
    assert patches["diffusion_model.input_blocks.0.0.weight"].diff is diff


@pytest.mark.parametrize("key, why", [
    ("diffusion_model.x::lora::16", "slot must be 0 to 15"),  # was a raw IndexError in one bridge
    ("diffusion_model.x::lora::-1", "slot must be 0 to 15"),  # was silently slot 15 in the other
    ("diffusion_model.x::lora", "unexpected key"),
    ("diffusion_model.x::loha::0", "unknown patch kind"),
])
def test_bad_keys_name_the_file(key, why):
    with pytest.raises(ModelFileError, match=why) as raised:
        parse_patch_file("layer_xl_transparent_attn.safetensors", {key: torch.zeros(1)})
    assert "layer_xl_transparent_attn.safetensors" in str(raised.value)


def test_a_lora_without_its_down_matrix_or_with_two_kinds_is_refused():
    with pytest.raises(ModelFileError, match="missing"):
        parse_patch_file("f", {"p::lora::0": torch.zeros(1)})
    with pytest.raises(ModelFileError, match="two patch kinds"):
        parse_patch_file("f", {"p::lora::0": torch.zeros(1), "p::lora::1": torch.zeros(1), "p::diff::0": torch.zeros(1)})
