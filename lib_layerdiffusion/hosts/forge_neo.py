"""Host: Forge Neo (Haoming02/sd-webui-forge-classic, branch `neo`; read at the nolanlane mirror 6e1e0d5).

Neo keeps Forge's WebUI layer and `backend/` names but re-based the patchers on ComfyUI 0.3.6x, so four
things differ from Forge main:
  * weight patches (backend/patcher/lora.py merge_lora_to_weight) are adapter objects or ("diff", (t, flags)):
    a LoRA goes in as weight_adapter.LoRAAdapter, a diff with {'pad_weight': True} (it grows conv_in);
  * sampling_function applies extra_concat_condition only for inpainting checkpoints, so the concat latent is
    put into the conds by a conditioning modifier as backend/sampling/condition.py Condition;
  * object patches are set with utils.set_attr, which wraps the value in a Parameter (modules cannot be object
    patches), so the SD1.5 units are swapped in around each model call;
  * there is no VAE regulation or decode wrapper (comfy_patcher does both on a copy of the VAE, as for all).
"""
from __future__ import annotations

from backend.sampling.condition import Condition  # backend/sampling/condition.py
from modules_forge.packages.comfy.weight_adapter import LoRAAdapter  # .../weight_adapter/lora.py

from . import comfy_patcher, flux_lora
from .forge_backend import (  # noqa: F401  (what Neo shares with Forge main's backend)
    add_stop_at, attention_modules, compute_device_and_dtype, encode_images, latent_channels, text_condition,
    unet_device_and_dtype,
)
from .comfy_patcher import (  # noqa: F401  (part of this host's interface)
    clone_unet, fail_sampling, install_unet, record_vae_decodes, release_vae_regulation, set_transformer_option,
    set_vae_regulation,
)
from .webui import (  # noqa: F401  (part of this host's interface)
    base_model, decode_with_full_vae, default_models_folder, fail_after_sampling, fail_before_sampling,
    has_init_images_hook, image_index,
    infotext_takes_callables, install_api_middleware, on_image_saved, on_image_saving, output_format, read_option,
    register_settings, resize_image, save_extra_image, stealth_infotext_mode, tell_user,
    vae_decode_is_full, vae_encode_is_full,
)
from .webui import register_xyz_axes  # noqa: F401  (part of this host's interface: the X/Y/Z plot axes)

NAME = "Forge Neo"


def _patch_value(patch):
    if patch.kind == "lora":
        return LoRAAdapter(set(), comfy_patcher.comfy_lora_weights(patch))
    return comfy_patcher.padded_diff(patch)


def add_weight_patches(unet, filename, patches, strength) -> int:
    """backend/patcher/base.py ModelPatcher.add_patches(patches, strength_patch, strength_model) (no filename:
    with one it would need online_mode). Returns how many parameters it matched."""
    values = comfy_patcher.patch_values(patches, _patch_value)
    return len(unet.add_patches(values, strength_patch=float(strength), strength_model=1.0))


def add_peft_lora(unet, filename, state_dict, strength):
    """The FLUX.1 port's PEFT LoRA through Neo's key map (backend/patcher/lora.py re-exports
    modules_forge/packages/comfy/lora.py) and Neo's own LoRA loading (named patches merged or, on quantised
    weights, applied online by the LoraLoader; see flux_lora.neo_add_flux_lora); returns the file's keys that land
    nowhere."""
    from backend.patcher import lora
    return flux_lora.neo_add_flux_lora(unet, filename, state_dict, strength, lora)


def set_concat_condition(unet, latent, batch_size) -> None:
    """A conditioning modifier adding c_concat to every cond (KModel.apply_model concatenates it to x)."""
    unet.add_conditioning_modifier(
        comfy_patcher.concat_modifier(comfy_patcher.repeat_to_batch(latent, batch_size), Condition))


def replace_modules(unet, modules, owner) -> None:
    comfy_patcher.replace_modules_during_calls(unet, modules, owner)
