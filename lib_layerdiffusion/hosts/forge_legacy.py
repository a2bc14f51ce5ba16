"""Host: the `ldm_patched/` + `modules_forge/` generation: old Forge (lllyasviel/stable-diffusion-webui-forge
before the Aug 2024 `backend/` rework; the tag `previous`, bfee03d8, A1111 1.8) and reForge
(Panchovix/stable-diffusion-webui-reForge main, 3b56b268, A1111 1.10).

What differs from Forge main: the latent scaling and the sigma schedule live on the UNet's BaseModel
(latent_format, model_sampling), the text encoder is sd_model.forge_objects.clip, add_patches takes no file
name, and reForge's newer ComfyUI weight code merges a LoRA only as a weight_adapter.LoRAAdapter (it skips
other "lora" patches with a log line, which would give an opaque image). What old Forge's WebUI lacks (the
image index, pixels_after_sampling, callables in the infotext, the init-images hook) webui.py handles.
"""
from __future__ import annotations

from ldm_patched.modules import model_management  # ldm_patched/modules/model_management.py
from modules_forge.forge_sampler import sampling_prepare  # modules_forge/forge_sampler.py

from . import comfy_patcher
from ..errors import UnsupportedModelError
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

NAME = "Forge (ldm_patched: old Forge / reForge)"


def latent_channels(sd_model) -> int | None:
    """ldm_patched/modules/latent_formats.py LatentFormat.latent_channels of the UNet's BaseModel."""
    return getattr(sd_model.forge_objects.unet.model.latent_format, "latent_channels", None)


def compute_device_and_dtype(precision: str = "Automatic", prefer_bf16: bool = False):
    """Where the transparent VAE runs and in which precision (ldm_patched/modules/model_management.py get_torch_device, should_use_fp16)."""
    return comfy_patcher.device_and_dtype(model_management, precision, prefer_bf16)


def unet_device_and_dtype(unet):
    """The SD1.5 units' device and precision: half where the host would use it, as the original extension."""
    return comfy_patcher.device_and_dtype(model_management, "Automatic")


def _lora_adapter_class():
    """reForge: ldm_patched/modules/weight_adapter/lora.py LoRAAdapter; old Forge has no such module."""
    try:
        from ldm_patched.modules.weight_adapter import LoRAAdapter
    except ImportError:
        return None
    return LoRAAdapter


def _patch_value(patch, adapter_class):
    """A diff carries {'pad_weight': True}: old Forge grows a 4-D weight to the diff's shape on its own,
    reForge's ldm_patched/modules/lora.py calculate_weight only with that flag."""
    if patch.kind == "diff":
        return comfy_patcher.padded_diff(patch)
    if adapter_class is not None:
        return adapter_class(set(), comfy_patcher.comfy_lora_weights(patch))
    return comfy_patcher.slot_list(patch)


def add_weight_patches(unet, filename, patches, strength) -> int:
    """ldm_patched/modules/model_patcher.py ModelPatcher.add_patches(patches, strength_patch, strength_model)."""
    adapter_class = _lora_adapter_class()
    values = comfy_patcher.patch_values(patches, lambda patch: _patch_value(patch, adapter_class))
    return len(set(unet.add_patches(values, strength_patch=float(strength), strength_model=1.0)))


def add_peft_lora(unet, filename, state_dict, strength):
    """FLUX.1 runs in Forge main and Forge Neo (backend/diffusion_engine/flux.py), not in this bridge."""
    raise UnsupportedModelError(f"[LayerDiffuse] The FLUX.1 method needs Forge (main) or Forge Neo; {NAME} is "
                                f"not supported for it.")


def encode_images(p, images):
    """ldm_patched/modules/sd.py VAE.encode, then the UNet's latent scaling (BaseModel.latent_format.process_in)."""
    latent_format = p.sd_model.forge_objects.unet.model.latent_format
    return comfy_patcher.encode_images(p.sd_model.forge_objects.vae, images, latent_format.process_in)


def set_concat_condition(unet, latent, batch_size) -> None:
    """modules_forge/forge_sampler.py forge_sample uses UnetPatcher.extra_concat_condition as c_concat."""
    unet.extra_concat_condition = comfy_patcher.repeat_to_batch(latent, batch_size)


def add_stop_at(unet, unpatched_unet, ending_step) -> None:
    """The sigma from ldm_patched/modules/model_sampling.py percent_to_sigma on the BaseModel."""
    sigma_end = unet.model.model_sampling.percent_to_sigma(ending_step)
    unet.add_conditioning_modifier(comfy_patcher.stop_at_modifier(
        unpatched_unet, sigma_end, comfy_patcher.loaded_in(model_management.current_loaded_models),
        sampling_prepare))


def attention_modules(unet, names):
    """Old Forge swaps object patches into the shared model while a clone is loaded, so
    ldm_patched/modules/model_management.py unload_model_clones first puts the originals back (reForge lacks it); a unit still in
    place is unwrapped to the module it wraps."""
    unload_clones = getattr(model_management, "unload_model_clones", None)
    if unload_clones is not None:
        unload_clones(unet)
    return sd15_attention_modules(unet.model.diffusion_model, names)


def replace_modules(unet, modules, owner) -> None:
    """Object patches (ldm_patched/modules/model_patcher.py add_object_patch, set with a plain setattr)."""
    comfy_patcher.replace_modules_by_object_patches(unet, modules)


def text_condition(p, text):
    """ldm_patched/modules/sd.py CLIP.tokenize / encode_from_tokens on sd_model.forge_objects.clip."""
    clip = p.sd_model.forge_objects.clip
    cond = clip.encode_from_tokens(clip.tokenize(text))
    if isinstance(cond, tuple):  # (cond, pooled) where a build returns both
        cond = cond[0]
    return cond.to(model_management.get_torch_device())
