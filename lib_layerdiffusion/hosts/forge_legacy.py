"""The bridge to Forge's older generation: `ldm_patched/` (ComfyUI-derived) plus `modules_forge/`.

That is lllyasviel/stable-diffusion-webui-forge before the Aug 2024 `backend/` rework, and reForge
(Panchovix/stable-diffusion-webui-reForge), which kept it. The reference is Forge commit 4a9c8f32, the last one
before `backend/` was added. Each function names the file and function of that Forge it relies on; the
WebUI-layer ones, which both generations share, come from webui.py.

Where the generation changed within itself, the bridge looks before it leaps instead of assuming:
  * The VAE regulation and `resize_image(force_RGBA=)` arrived only in Forge e26abf87 (Jul 2024); reForge's
    current VAE no longer passes a regulation through. Without them the bridge carries on and says so.
  * reForge's newer ComfyUI weight code needs LoRA patches as `weight_adapter.LoRAAdapter` objects and reads a
    `pad_weight` flag for diffs that grow a weight (the extra input channels of the concat methods).
The rest of the package never imports Forge.
"""
from __future__ import annotations

import inspect
import logging

import numpy as np
import torch

from ldm_patched.modules import model_management  # ldm_patched/modules/model_management.py
from modules_forge.forge_sampler import sampling_prepare  # modules_forge/forge_sampler.py

from ..networks.attention_sharing import sd15_attention_modules
from ..errors import LayerDiffuseError, ModelFileError
from ..request.settings import decoder_dtype
from .webui import (  # noqa: F401  (part of this bridge's interface)
    base_model, default_models_folder, fail_before_sampling, install_api_middleware, on_image_saved,
    on_image_saving, output_format, read_option, register_settings, save_extra_image, stealth_infotext_mode,
    tell_user, vae_encode_is_full,
)

log = logging.getLogger(__name__)

NAME = "Forge (ldm_patched)"


def compute_device_and_dtype(precision: str = "Automatic") -> tuple[torch.device, torch.dtype]:
    """Where the transparent VAE runs (ldm_patched/modules/model_management.py get_torch_device): on a GPU the
    precision chosen in Settings or else the one model_management.should_use_fp16 picks; fp32 on the CPU."""
    device = model_management.get_torch_device()
    return device, decoder_dtype(device, precision, model_management.should_use_fp16)


def clone_unet(p):
    """A clone of this sampling's UNet patcher (modules_forge/unet_patcher.py UnetPatcher.clone). Patches on it
    stay off the shared model; modules/processing.py sample() rebuilds forge_objects from
    forge_objects_after_applying_lora before each sampling, so the clone is dropped afterwards."""
    return p.sd_model.forge_objects.unet.clone()


def install_unet(p, unet) -> None:
    """The UNet modules_forge/forge_sampler.py forge_sample reads: sd_model.forge_objects.unet."""
    p.sd_model.forge_objects.unet = unet


def _group_patch_file(filename: str, state_dict: dict) -> dict[str, tuple[str, list]]:
    """Keys `diffusion_model.<param>::<kind>::<index>` → {param: (kind, 16-slot list)}, the layout
    modules_forge/unet_patcher.py UnetPatcher.load_frozen_patcher builds."""
    grouped: dict[str, tuple[str, list]] = {}
    for key, tensor in state_dict.items():
        parts = key.split("::")
        if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) >= 16:
            raise ModelFileError(
                f"[LayerDiffuse] {filename} is not a LayerDiffuse UNet patch file (unexpected key {key!r}). "
                f"Delete it so that it is downloaded again.")
        param, kind, index = parts[0], parts[1], int(parts[2])
        slots = grouped.setdefault(param, (kind, [None] * 16))[1]
        slots[index] = tensor
    return grouped


def _lora_adapter_class():
    """reForge's newer ComfyUI code (ldm_patched/modules/weight_adapter/lora.py LoRAAdapter) only merges LoRA
    patches given as adapter objects; the old Forge has no such module."""
    try:
        from ldm_patched.modules.weight_adapter import LoRAAdapter
    except ImportError:
        return None
    return LoRAAdapter


def _patch_value(kind: str, slots: list):
    """One patch in the form ldm_patched/modules/model_patcher.py ModelPatcher.calculate_weight reads:
    (kind, values), values[0] first. A diff carries {'pad_weight': True}: old Forge grows a 4-D weight to the
    diff's shape on its own, reForge's ldm_patched/modules/lora.py calculate_weight only with that flag."""
    if kind == "diff":
        return "diff", (slots[0], {"pad_weight": True})
    if kind == "lora":
        adapter = _lora_adapter_class()
        if adapter is not None:
            return adapter(set(), tuple(slots))
    return kind, slots


def add_weight_patches(unet, filename: str, state_dict: dict, weight: float) -> tuple[int, int]:
    """Add a LayerDiffuse weight-patch file as weight patches on `unet` (ldm_patched/modules/model_patcher.py
    ModelPatcher.add_patches(patches, strength_patch, strength_model), which has no filename argument and
    returns the keys it matched). Returns (parameters matched, parameters in the file)."""
    grouped = _group_patch_file(filename, state_dict)
    patches = {param: _patch_value(kind, slots) for param, (kind, slots) in grouped.items()}
    matched = unet.add_patches(patches, strength_patch=float(weight), strength_model=1.0)
    return len(set(matched)), len(patches)


def encode_images(p, images: list[np.ndarray]) -> torch.Tensor:
    """RGB float images in [0,1] (H×W×3) → their latents concatenated on channels, (1, 4·n, H/8, W/8): the
    checkpoint's VAE (ldm_patched/modules/sd.py VAE.encode takes B×H×W×3) then the UNet's latent scaling
    (ldm_patched/modules/model_base.py BaseModel.latent_format.process_in), as the original extension did."""
    vae = p.sd_model.forge_objects.vae
    latent_format = p.sd_model.forge_objects.unet.model.latent_format
    latents = []
    for image in images:
        pixels = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))
        latents.append(latent_format.process_in(vae.encode(pixels)))
    return torch.cat(latents, dim=1)


def set_concat_condition(unet, latent: torch.Tensor, batch_size: int) -> None:
    """modules_forge/forge_sampler.py forge_sample uses UnetPatcher.extra_concat_condition as c_concat only when
    its batch equals x's, so it is repeated to the batch (the original extension lost it for batch > 1)."""
    unet.extra_concat_condition = latent.repeat(batch_size, 1, 1, 1)


def _drop_concat(conds):
    """The conds (modules_forge/forge_sampler.py: dicts with 'model_conds') without c_concat; the caller's
    list and dicts are left alone."""
    if conds is None:
        return None
    result = []
    for cond in conds:
        model_conds = cond.get("model_conds", {})
        if "c_concat" in model_conds:
            cond = dict(cond)
            cond["model_conds"] = {k: v for k, v in model_conds.items() if k != "c_concat"}
        result.append(cond)
    return result


def add_stop_at(unet, unpatched_unet, ending_step: float) -> None:
    """From `ending_step` of the schedule on, sample with the unpatched UNet and without the concat condition:
    a conditioning modifier (UnetPatcher.add_conditioning_modifier, run by forge_sample with the sigma as
    timestep). The sigma comes from ldm_patched/modules/model_sampling.py percent_to_sigma, reached through
    the BaseModel's model_sampling; the unpatched weights are loaded with forge_sampler.sampling_prepare."""
    if ending_step >= 1.0:
        return
    sigma_end = unet.model.model_sampling.percent_to_sigma(ending_step)

    def stop_at(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if timestep[0].item() >= sigma_end:
            return model, x, timestep, uncond, cond, cond_scale, model_options, seed
        if not any(loaded.model is unpatched_unet for loaded in model_management.current_loaded_models):
            sampling_prepare(unpatched_unet, x)
        return unpatched_unet.model, x, timestep, _drop_concat(uncond), _drop_concat(cond), \
            cond_scale, model_options, seed

    unet.add_conditioning_modifier(stop_at)


def fail_sampling(p, error: LayerDiffuseError) -> None:
    """Like fail_before_sampling, from process_before_every_sampling: a conditioning modifier on the installed
    UNet clone raises the error at the first step (modules_forge/forge_sampler.py forge_sample)."""
    unet = clone_unet(p)

    def raise_error(*args):
        raise error

    unet.add_conditioning_modifier(raise_error)
    install_unet(p, unet)


def attention_modules(unet, names: tuple[str, ...]) -> list:
    """The UNet's own attention modules at `names` (ldm_patched/ldm/modules/diffusionmodules/openaimodel.py
    UNetModel). Old Forge swaps object patches into the shared model while a clone is loaded, so first
    model_management.unload_model_clones puts the originals back, as the original extension did (reForge
    lacks that function); a LayerDiffuse unit still in place is unwrapped to the module it wraps."""
    unload_clones = getattr(model_management, "unload_model_clones", None)
    if unload_clones is not None:
        unload_clones(unet)
    return sd15_attention_modules(unet.model.diffusion_model, names)


def replace_modules(unet, modules: dict) -> None:
    """Object patches on the clone (ldm_patched/modules/model_patcher.py ModelPatcher.add_object_patch):
    patch_model swaps them in when this patcher is loaded, unpatch_model restores the originals."""
    for name, module in modules.items():
        unet.add_object_patch("diffusion_model." + name, module)


def set_transformer_option(unet, key: str, value) -> None:
    """modules_forge/unet_patcher.py UnetPatcher.set_transformer_option: reaches every attention call."""
    unet.set_transformer_option(key, value)


def text_condition(p, text: str) -> torch.Tensor:
    """The cross-attention context of `text` from the checkpoint's text encoder (ldm_patched/modules/sd.py
    CLIP.tokenize and CLIP.encode_from_tokens on sd_model.forge_objects.clip), as the original extension's
    forge_clip_encode did."""
    clip = p.sd_model.forge_objects.clip
    cond = clip.encode_from_tokens(clip.tokenize(text))
    if isinstance(cond, tuple):  # (cond, pooled) where a build returns both
        cond = cond[0]
    return cond.to(model_management.get_torch_device())


def _accepts(function, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def resize_image(mode: int, image, width: int, height: int):
    """modules/images.py resize_image keeping the alpha channel. Its force_RGBA argument exists only from
    Forge e26abf87 on; before that, colour and alpha are resized apart, the same way, and joined again."""
    from modules import images
    rgba = image.convert("RGBA")
    if _accepts(images.resize_image, "force_RGBA"):
        return images.resize_image(mode, rgba, width, height, force_RGBA=True)
    colour = images.resize_image(mode, rgba.convert("RGB"), width, height).convert("RGBA")
    alpha = images.resize_image(mode, rgba.getchannel("A").convert("RGB"), width, height)
    colour.putalpha(alpha.convert("L"))
    return colour


def _vae_takes_regulation(vae) -> bool:
    """ldm_patched/modules/sd.py VAE.encode_inner hands model_options['model_vae_regulation'] to
    first_stage_model.encode(x, regulation) (ldm_patched/ldm/models/autoencoder.py) only in Forge builds since
    e26abf87; earlier ones and reForge's current autoencoder have no such parameter."""
    patcher = getattr(vae, "patcher", None)
    first_stage = getattr(vae, "first_stage_model", None)
    return hasattr(patcher, "set_model_vae_regulation") and first_stage is not None \
        and _accepts(first_stage.encode, "regulation")


def set_vae_regulation(p, regulation) -> None:
    """Install `regulation` on a clone of the VAE (ldm_patched/modules/sd.py VAE.clone, ModelPatcher
    set_model_vae_regulation); forge_objects is rebuilt per batch, so the clone is gone afterwards.

    This generation calls the regulation with the raw moments (mean and log-variance on channels) and wants
    (latent, log) back (autoencoder.py AutoencodingEngineLegacy.encode), while LayerDiffuse's regulation takes
    a posterior with .mean and .std and returns the latent: the posterior is built with Forge's own
    ldm_patched/ldm/modules/distributions/distributions.py DiagonalGaussianDistribution.

    Where the VAE takes no regulation nothing is installed (the regulation then never runs, which
    generation.check_init_offsets_applied reports to the user)."""
    vae = p.sd_model.forge_objects.vae
    if not _vae_takes_regulation(vae):
        log.warning("[LayerDiffuse] This Forge's VAE takes no encode regulation; the init image's transparency "
                    "cannot be passed to the sampler.")
        return
    from ldm_patched.ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    def on_moments(moments):
        return regulation(DiagonalGaussianDistribution(moments)), {}

    vae = vae.clone()
    vae.patcher.set_model_vae_regulation(on_moments)
    p.sd_model.forge_objects.vae = vae


def unet_device_and_dtype(unet) -> tuple[torch.device, torch.dtype]:
    """Where and in which precision the attention-sharing units run: half precision where
    model_management.should_use_fp16 says so (the original extension's AttentionSharingPatcher did this)."""
    device = model_management.get_torch_device()
    return device, torch.float16 if model_management.should_use_fp16(device) else torch.float32


def record_vae_decodes(p, sink: list) -> None:
    """Not available on this generation (its VAE takes no decode wrapper): nothing is recorded, and a hires-fix
    image is decoded from its pixels alone, as the original extension does."""
    return None
