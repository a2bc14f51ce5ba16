"""The bridge to Forge's current generation (lllyasviel/stable-diffusion-webui-forge, `backend/`).

Each function names the Forge file and function it relies on; the WebUI-layer ones, which both Forge generations
share, come from webui.py. The rest of the package never imports Forge.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from backend import memory_management  # backend/memory_management.py
from backend.sampling.sampling_function import sampling_prepare  # backend/sampling/sampling_function.py

from ..networks.attention_sharing import sd15_attention_modules
from ..errors import LayerDiffuseError, ModelFileError
from ..request.settings import decoder_dtype
from .webui import (  # noqa: F401  (part of this bridge's interface)
    base_model, default_models_folder, fail_before_sampling, install_api_middleware, on_image_saved,
    on_image_saving, output_format, read_option, register_settings, save_extra_image, stealth_infotext_mode,
    tell_user, vae_encode_is_full,
)

log = logging.getLogger(__name__)

NAME = "Forge (backend)"


def compute_device_and_dtype(precision: str = "Automatic") -> tuple[torch.device, torch.dtype]:
    """Where the transparent VAE runs: memory_management.get_torch_device; on a GPU the precision set in
    Settings, or Forge's own choice (should_use_fp16); always fp32 on the CPU."""
    device = memory_management.get_torch_device()
    return device, decoder_dtype(device, precision, memory_management.should_use_fp16)


def clone_unet(p):
    """A clone of the UNet patcher of this generation (backend/patcher/unet.py UnetPatcher.clone): patches on it
    never reach the shared model object, and Forge drops it when the next sampling resets forge_objects."""
    return p.sd_model.forge_objects.unet.clone()


def install_unet(p, unet) -> None:
    p.sd_model.forge_objects.unet = unet


def add_weight_patches(unet, filename: str, state_dict: dict, weight: float) -> tuple[int, int]:
    """Add a LayerDiffuse weight-patch file (keys `diffusion_model.<param>::<lora|diff>::<i>`) as Forge weight
    patches (backend/patcher/base.py ModelPatcher.add_patches, the format UnetPatcher.load_frozen_patcher reads).
    Returns (parameters matched, parameters in the file)."""
    grouped: dict[str, tuple[str, list]] = {}
    for key, tensor in state_dict.items():
        try:
            param, patch_type, index = key.split("::")
            index = int(index)
        except ValueError:
            raise ModelFileError(
                f"[LayerDiffuse] {filename} is not a LayerDiffuse UNet patch file (unexpected key {key!r}). "
                f"Delete it so that it is downloaded again.") from None
        kind, weights = grouped.setdefault(param, (patch_type, [None] * 16))
        weights[index] = tensor
    patches = {param: (kind, weights) for param, (kind, weights) in grouped.items()}
    matched = unet.add_patches(filename=filename, patches=patches, strength_patch=float(weight), strength_model=1.0)
    return len(matched), len(patches)


def encode_images(p, images: list[np.ndarray]) -> torch.Tensor:
    """RGB float images in [0,1] (H×W×3) → their latents concatenated on channels, (1, 4·n, H/8, W/8), through
    the checkpoint's VAE (backend/patcher/vae.py VAE.encode, then first_stage_model.process_in)."""
    vae = p.sd_model.forge_objects.vae
    latents = []
    for image in images:
        pixels = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))
        latents.append(vae.first_stage_model.process_in(vae.encode(pixels)))
    return torch.cat(latents, dim=1)


def set_concat_condition(unet, latent: torch.Tensor, batch_size: int) -> None:
    """backend/sampling/sampling_function.py sampling_function applies `extra_concat_condition` only when its
    batch equals the sampler's, so repeat it to the batch (the original extension lost it for batch > 1)."""
    unet.extra_concat_condition = latent.repeat(batch_size, 1, 1, 1)


def add_stop_at(unet, unpatched_unet, ending_step: float) -> None:
    """From `ending_step` of the schedule on, sample with the unpatched UNet and without the concat condition,
    through a conditioning modifier (sampling_function: model_options['conditioning_modifiers'])."""
    if ending_step >= 1.0:
        return
    sigma_end = unet.model.predictor.percent_to_sigma(ending_step)  # backend/modules/k_prediction.py

    def without_concat(conds):
        if conds is None:
            return None
        conds = copy.copy(conds)
        for i, cond in enumerate(conds):
            if "c_concat" in cond.get("model_conds", {}):
                cond = dict(cond)
                cond["model_conds"] = {k: v for k, v in cond["model_conds"].items() if k != "c_concat"}
                conds[i] = cond
        return conds

    def stop_at(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if timestep[0].item() < sigma_end:
            if not any(m.model is unpatched_unet for m in memory_management.current_loaded_models):
                sampling_prepare(unpatched_unet, x)  # reloads the weights without the LayerDiffuse patches
            return unpatched_unet.model, x, timestep, without_concat(uncond), without_concat(cond), \
                cond_scale, model_options, seed
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed

    unet.add_conditioning_modifier(stop_at)


def fail_sampling(p, error: LayerDiffuseError) -> None:
    """Like fail_before_sampling, from inside process_before_every_sampling (sampling has begun): the UNet
    installed for this sampling raises the error at its first step."""
    unet = clone_unet(p)

    def raise_error(*args):
        raise error

    unet.add_conditioning_modifier(raise_error)
    install_unet(p, unet)


def attention_modules(unet, names: tuple[str, ...]) -> list:
    """The UNet's own attention modules at `names` (of backend/nn/unet.py's UNet, the KModel's diffusion_model);
    units an earlier generation left patched in are unwrapped."""
    return sd15_attention_modules(unet.model.diffusion_model, names)


def replace_modules(unet, modules: dict) -> None:
    """Object patches on the clone (backend/patcher/base.py ModelPatcher.add_object_patch): Forge swaps them in
    when it loads this patcher and restores the originals when it unloads it."""
    for name, module in modules.items():
        unet.add_object_patch("diffusion_model." + name, module)


def set_transformer_option(unet, key: str, value) -> None:
    """backend/patcher/unet.py UnetPatcher.set_transformer_option: reaches every attention call."""
    unet.set_transformer_option(key, value)


def text_condition(p, text: str) -> torch.Tensor:
    """The cross-attention context of `text` (backend/diffusion_engine/sd15.py get_learned_conditioning)."""
    cond = p.sd_model.get_learned_conditioning([text])
    if isinstance(cond, dict):
        cond = cond["crossattn"]
    return cond.to(memory_management.get_torch_device())


def resize_image(mode: int, image, width: int, height: int):
    """modules/images.py resize_image, keeping the alpha channel (force_RGBA)."""
    from modules import images
    return images.resize_image(mode, image.convert("RGBA"), width, height, force_RGBA=True)


def set_vae_regulation(p, regulation) -> None:
    """Install `regulation` on a clone of this generation's VAE patcher (backend/patcher/base.py
    set_model_vae_regulation, read by backend/patcher/vae.py encode_inner). Forge resets forge_objects for each
    batch, so the clone is gone after the init images are encoded."""
    vae = p.sd_model.forge_objects.vae.clone()
    vae.patcher.set_model_vae_regulation(regulation)
    p.sd_model.forge_objects.vae = vae


def unet_device_and_dtype(unet) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision the attention-sharing units run: half precision where Forge would use it
    (memory_management.should_use_fp16), as the reference does."""
    device = memory_management.get_torch_device()
    return device, torch.float16 if memory_management.should_use_fp16(device) else torch.float32


def record_vae_decodes(p, sink: list) -> None:
    """Append to `sink` every latent batch this generation's VAE decodes, in the sampler's latent space, through a
    decode wrapper on a clone of the VAE patcher (backend/patcher/base.py set_model_vae_decode_wrapper, read by
    backend/patcher/vae.py VAE.decode). Hires fix hands the scripts already-decoded pixels instead of latents
    (modules/processing.py sample_hr_pass), so this is where the final pass's latents can still be seen."""
    vae = p.sd_model.forge_objects.vae.clone()
    process_in = vae.first_stage_model.process_in  # decode receives process_out(latent); undo it

    def wrapper(decode, samples):
        sink.append(process_in(samples.detach().float()).cpu())
        return decode(samples)

    vae.patcher.set_model_vae_decode_wrapper(wrapper)
    p.sd_model.forge_objects.vae = vae
