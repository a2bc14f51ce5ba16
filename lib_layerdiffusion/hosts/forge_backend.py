"""Host: Forge main (lllyasviel/stable-diffusion-webui-forge, the `backend/` generation; verified at dfdcbab6).

Only what differs from the shared layers is here: Forge main reads weight patches as (kind, 16 slots), takes
the concat condition as UnetPatcher.extra_concat_condition for any checkpoint, and samples through
backend/sampling/sampling_function.py. The WebUI layer is webui.py, the patcher work comfy_patcher.py.
"""
from __future__ import annotations

from backend import memory_management  # backend/memory_management.py
from backend.sampling.sampling_function import sampling_prepare  # backend/sampling/sampling_function.py

from . import comfy_patcher, flux_lora
from ..networks.attention_sharing import sd15_attention_modules
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

NAME = "Forge"


def latent_channels(sd_model) -> int | None:
    """backend/patcher/vae.py VAE.latent_channels (from the VAE's config)."""
    return getattr(sd_model.forge_objects.vae, "latent_channels", None)


def compute_device_and_dtype(precision: str = "Automatic", prefer_bf16: bool = False):
    """Where the transparent VAE runs and in which precision (backend/memory_management.py get_torch_device, should_use_fp16)."""
    return comfy_patcher.device_and_dtype(memory_management, precision, prefer_bf16)


def unet_device_and_dtype(unet):
    """The SD1.5 units' device and precision: half where the host would use it, as the original extension."""
    return comfy_patcher.device_and_dtype(memory_management, "Automatic")


def add_weight_patches(unet, filename, patches, strength) -> int:
    """backend/patcher/base.py ModelPatcher.add_patches(patches, strength_patch, strength_model, filename=...) in
    the (kind, 16 slots) form UnetPatcher.load_frozen_patcher builds, which backend/patcher/lora.py merges.
    Returns how many parameters it matched."""
    values = comfy_patcher.patch_values(patches, comfy_patcher.slot_list)
    return len(unet.add_patches(filename=filename, patches=values, strength_patch=float(strength),
                                strength_model=1.0))


def add_peft_lora(unet, filename, state_dict, strength):
    """The FLUX.1 port's PEFT LoRA through Forge's own key map and LoRA loading (backend/patcher/lora.py: merged,
    or online on GGUF / bnb 4-bit weights; see flux_lora.forge_add_flux_lora); returns
    the file's keys that land nowhere (key -> why). Imported here: only Forge's full tree has that module."""
    from backend.patcher import lora  # backend/patcher/lora.py
    return flux_lora.forge_add_flux_lora(unet, filename, state_dict, strength, lora)


def encode_images(p, images):
    """backend/patcher/vae.py VAE.encode, then the VAE's own latent scaling (first_stage_model.process_in)."""
    vae = p.sd_model.forge_objects.vae
    return comfy_patcher.encode_images(vae, images, vae.first_stage_model.process_in)


def set_concat_condition(unet, latent, batch_size) -> None:
    """sampling_function applies UnetPatcher.extra_concat_condition as c_concat when its batch is the sampler's."""
    unet.extra_concat_condition = comfy_patcher.repeat_to_batch(latent, batch_size)


def add_stop_at(unet, unpatched_unet, ending_step) -> None:
    """The sigma from backend/modules/k_prediction.py percent_to_sigma; the unpatched weights loaded with
    sampling_prepare when first needed."""
    sigma_end = unet.model.predictor.percent_to_sigma(ending_step)
    unet.add_conditioning_modifier(comfy_patcher.stop_at_modifier(
        unpatched_unet, sigma_end, comfy_patcher.loaded_in(memory_management.current_loaded_models),
        sampling_prepare))


def attention_modules(unet, names):
    """The attention modules of backend/nn/unet.py's UNet (units an earlier generation left in are unwrapped)."""
    return sd15_attention_modules(unet.model.diffusion_model, names)


def replace_modules(unet, modules, owner) -> None:
    """Object patches (backend/patcher/base.py add_object_patch): the units live in the UNet while it is
    loaded and move with it."""
    comfy_patcher.replace_modules_by_object_patches(unet, modules)


def text_condition(p, text):
    """The cross-attention context of `text` (backend/diffusion_engine/sd15.py get_learned_conditioning)."""
    cond = p.sd_model.get_learned_conditioning([text])
    if isinstance(cond, dict):
        cond = cond["crossattn"]
    return cond.to(memory_management.get_torch_device())
