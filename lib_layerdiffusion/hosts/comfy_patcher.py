"""What LayerDiffuse does with a ComfyUI-style model patcher, written once for every Forge generation.

Forge main (`backend/`), Forge Neo (`backend/`, re-based on ComfyUI 0.3.6x), old Forge and reForge
(`ldm_patched/` + `modules_forge/`) all keep the sampling's UNet patcher in `p.sd_model.forge_objects.unet`,
clone it, run conditioning modifiers `(model, x, timestep, uncond, cond, cond_scale, model_options, seed)`
before each step and take transformer options and object patches. The bridges pass in the few things that
differ (the patch value form, how a concat condition is carried, how a model is loaded); the rest is here.
"""
from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..errors import LayerDiffuseError
from ..networks.unet_patch_file import WeightPatch
from ..request.settings import decoder_dtype

log = logging.getLogger(__name__)


def device_and_dtype(memory_management, precision: str, prefer_bf16: bool = False
                     ) -> tuple[torch.device, torch.dtype]:
    """The host's compute device (memory_management.get_torch_device) and, on a GPU, the precision chosen in
    Settings or, for "Automatic", half precision where the host would use it (should_use_fp16); fp32 on the CPU.
    `prefer_bf16` (the FLUX.1 nets): "Automatic" is bf16 where the host says the device runs it
    (should_use_bf16; torch's own check on a host without it)."""
    device = memory_management.get_torch_device()
    supports_bf16 = None
    if prefer_bf16:
        supports_bf16 = getattr(memory_management, "should_use_bf16", None) or _torch_supports_bf16
    return device, decoder_dtype(device, precision, memory_management.should_use_fp16, supports_bf16)


def _torch_supports_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def clone_unet(p):
    """A clone of this sampling's UNet patcher: patches on it never reach the shared model, and Forge drops it
    when it rebuilds forge_objects for the next batch (modules/processing.py process_images_inner)."""
    return p.sd_model.forge_objects.unet.clone()


def install_unet(p, unet) -> None:
    """The UNet the sampler reads: sd_model.forge_objects.unet."""
    p.sd_model.forge_objects.unet = unet


def fail_sampling(p, error: LayerDiffuseError) -> None:
    """Stop from inside process_before_every_sampling (sampling has begun): the UNet installed for this
    sampling raises `error` at its first step, which the UI shows and the API answers."""
    unet = clone_unet(p)

    def raise_error(*args):
        raise error

    unet.add_conditioning_modifier(raise_error)
    install_unet(p, unet)


def set_transformer_option(unet, key: str, value) -> None:
    """UnetPatcher.set_transformer_option: reaches every attention call as transformer_options[key]."""
    unet.set_transformer_option(key, value)


def replace_modules_by_object_patches(unet, modules: dict) -> None:
    """Object patches on the clone (ModelPatcher.add_object_patch): swapped in when this patcher is loaded,
    moved with the UNet by the host's memory management, the originals restored when it is unloaded."""
    for name, module in modules.items():
        unet.add_object_patch("diffusion_model." + name, module)


def patch_values(patches: Mapping[str, WeightPatch], value: Callable[[WeightPatch], object]) -> dict:
    """{parameter: the host's patch value} for ModelPatcher.add_patches."""
    return {param: value(patch) for param, patch in patches.items()}


def slot_list(patch: WeightPatch) -> tuple[str, list]:
    """The (kind, 16 slots) form UnetPatcher.load_frozen_patcher builds, which Forge main and old Forge read."""
    return patch.kind, list(patch.slots)


def comfy_lora_weights(patch: WeightPatch) -> tuple:
    """The weights tuple of ComfyUI's weight_adapter LoRAAdapter: (up, down, alpha, mid, dora_scale, reshape);
    alpha None means a scale of 1, as the frozen-patcher files are trained."""
    return patch.up, patch.down, None, None, None, None


def padded_diff(patch: WeightPatch) -> tuple:
    """A diff that may grow the weight (the concat methods' 8/12-channel conv_in): ComfyUI's lora code pads the
    weight to the diff's shape only with this flag."""
    return "diff", (patch.diff, {"pad_weight": True})


def encode_images(vae, images: list[np.ndarray], process_in: Callable) -> torch.Tensor:
    """RGB float images in [0,1] (H×W×3) → their sampler-space latents concatenated on channels,
    (1, C·n, H/8, W/8): the host VAE's encode (B×H×W×3 in [0,1]) then the model's latent scaling."""
    latents = []
    for image in images:
        pixels = torch.from_numpy(np.ascontiguousarray(image[None], dtype=np.float32))
        latents.append(process_in(vae.encode(pixels)))
    return torch.cat(latents, dim=1)


def repeat_to_batch(latent: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Forge applies a concat condition only when its batch equals the sampler's (the original extension lost
    it for batch > 1), so it is repeated to the batch."""
    return latent.repeat(batch_size, 1, 1, 1)


def concat_modifier(latent: torch.Tensor, make_condition: Callable[[torch.Tensor], object]):
    """A conditioning modifier putting `latent` as every cond's and uncond's `c_concat` (for hosts whose sampler
    adds the UNet's concat condition only for inpainting checkpoints). The caller's lists and dicts are left
    alone."""
    def with_concat(conds):
        if conds is None:
            return None
        result = []
        for cond in conds:
            cond = dict(cond)
            cond["model_conds"] = {**cond.get("model_conds", {}), "c_concat": make_condition(latent)}
            result.append(cond)
        return result

    def add_concat(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        return model, x, timestep, with_concat(uncond), with_concat(cond), cond_scale, model_options, seed

    return add_concat


def drop_concat(conds):
    """The conds (dicts with 'model_conds') without c_concat; the caller's list and dicts are left alone."""
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


def without_wrapper(model_options: dict, unpatched_unet) -> dict:
    """The model options with the unpatched UNet's model function wrapper (or none) instead of this clone's,
    which may swap the SD1.5 units in around each call (replace_modules_during_calls)."""
    options = dict(model_options)
    wrapper = unpatched_unet.model_options.get("model_function_wrapper")
    if wrapper is None:
        options.pop("model_function_wrapper", None)
    else:
        options["model_function_wrapper"] = wrapper
    return options


def stop_at_modifier(unpatched_unet, sigma_end: float, is_loaded: Callable[[object], bool],
                     load: Callable[[object, torch.Tensor], None]):
    """A conditioning modifier that, once the sigma falls below `sigma_end`, samples with the unpatched UNet
    (loading its weights without the LayerDiffuse patches the first time) and without the concat condition."""
    def stop_at(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if timestep[0].item() >= sigma_end:
            return model, x, timestep, uncond, cond, cond_scale, model_options, seed
        if not is_loaded(unpatched_unet):
            load(unpatched_unet, x)
        return unpatched_unet.model, x, timestep, drop_concat(uncond), drop_concat(cond), \
            cond_scale, without_wrapper(model_options, unpatched_unet), seed

    return stop_at


def loaded_in(current_loaded_models) -> Callable[[object], bool]:
    """Whether a patcher is among the host's loaded models (memory_management.current_loaded_models)."""
    return lambda patcher: any(loaded.model is patcher for loaded in current_loaded_models)


def record_vae_decodes(p, sink: list) -> bool:
    """Append to `sink` every latent batch this sampling's VAE decodes, as the VAE receives it: the raw latent
    (process_out of the sampler's), which the transparent decoder was trained on. Works on every Forge: a shallow
    copy of the VAE object (all its attributes, unlike Neo's incomplete clone(), and no decode-wrapper option,
    which Neo and reForge lack) whose decode records its input first. Forge rebuilds forge_objects for the next
    batch, so the copy lives for this sampling only. Called again for the same sink (after a refiner switch put
    another model in place), a VAE that already records into it is left as it is."""
    if getattr(p.sd_model.forge_objects.vae.decode, "layerdiffuse_sink", None) is sink:
        return True
    source = p.sd_model.forge_objects.vae
    vae = copy.copy(source)
    pixels = getattr(sink, "pixels", None)  # apply_plan.RecordedDecodes: the decoded images too
    raw: list = []
    inner = getattr(source, "first_stage_model", None)
    class_decode = getattr(type(source), "decode", None)
    if "decode" not in vars(source) and callable(class_decode) and callable(getattr(inner, "decode", None)):
        # the host's decode run on the copy, whose autoencoder also keeps its outputs before the clip; the copy
        # through a weak reference: no cycle keeping the copy and `sink` alive past this sampling
        vae.first_stage_model = _RecordingAutoencoder(inner, raw)
        copy_ref = weakref.ref(vae)

        def decode(samples, *args, **kwargs):
            target = copy_ref()
            return class_decode(target if target is not None else source, samples, *args, **kwargs)
    else:
        decode = source.decode  # wrapped by someone else: theirs, as it is (the clipped output only)

    def recording_decode(samples, *args, **kwargs):
        sink.append(samples.detach().float().cpu())
        log.info("[LayerDiffuse] VAE decode input %s: mean %.6f, std %.6f", tuple(samples.shape),
                 sink[-1].mean().item(), sink[-1].std().item())
        raw.clear()
        decoded = decode(samples, *args, **kwargs)
        if pixels is not None:
            # every Forge's VAE.decode gives B×H×W×3 in [0, 1] (clipped), as float: the transparent decoder's
            # pixel input before Forge rounds it down to 8 bits; where the autoencoder's own output could be
            # taken, that output before the clip (the FLUX.1 port's decoder reads it unclipped)
            clipped = decoded.detach().float().cpu().movedim(-1, 1) if torch.is_tensor(decoded) else None
            pixels.append(unclipped_pixels(raw, clipped))
        raw.clear()
        return decoded

    recording_decode.layerdiffuse_sink = sink
    vae.decode = recording_decode
    p.sd_model.forge_objects.vae = vae
    return True


class _RecordingAutoencoder:
    """Stands in for the VAE's first_stage_model in a recording copy: the same model, whose decode outputs (the
    pixels in [-1, 1] before the host maps them to [0, 1] and clips) are also kept in `raw`, as float on the CPU."""

    def __init__(self, inner, raw: list):
        self._inner = inner
        self._raw = raw

    def decode(self, z, *args, **kwargs):
        out = self._inner.decode(z, *args, **kwargs)
        if torch.is_tensor(out):
            self._raw.append(out.detach().float().cpu())
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)


def unclipped_pixels(raw: list, clipped: torch.Tensor | None) -> torch.Tensor | None:
    """The decode's pixels (B×3×H×W, (x + 1) / 2 of the autoencoder's outputs, not clipped) when the recorded
    outputs are exactly this decode's, i.e. clipping them to [0, 1] gives the host's own result; else the host's
    clipped result. A tiled decode (Forge's fallback when memory runs short) records tiles: then the clipped one."""
    if clipped is None or not raw:
        return clipped
    try:
        pixels = (torch.cat(raw, dim=0) + 1.0) / 2.0
    except RuntimeError:  # tiles of different sizes
        return clipped
    if pixels.shape != clipped.shape or (pixels.clamp(0.0, 1.0) - clipped).abs().max().item() > 1e-3:
        return clipped
    return pixels


class _Posterior:
    """The VAE posterior as a LayerDiffuse regulation reads it: .mean and .std from the encoder's moments
    (mean and log-variance on channels, log-variance clamped to [-30, 20] as every Forge's
    DiagonalGaussianDistribution does)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))


class _RegulatedAutoencoder:
    """Stands in for the VAE's first_stage_model in VAE.encode: the same encoder, but the latent is
    `regulation(posterior)` (mean + std · offset) instead of a sample, unless the regulation declines (None: a
    tile of a tiled encode), when the real model encodes. Everything else is the real model's."""

    def __init__(self, inner, regulation: Callable):
        self._inner = inner
        self._regulation = regulation

    def encode(self, x, *args, **kwargs):
        moments = self._inner.encoder(x)
        quant_conv = getattr(self._inner, "quant_conv", None)
        if quant_conv is not None:
            moments = quant_conv(moments)
        latent = self._regulation(_Posterior(moments))
        return latent if latent is not None else self._inner.encode(x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def set_vae_regulation(p, regulation: Callable) -> bool:
    """Install `regulation` for this generation's init-image encode on every Forge: a shallow copy of the VAE
    object whose first_stage_model is the real autoencoder behind a _RegulatedAutoencoder. (Forge main's
    set_model_vae_regulation is gone from Neo, and reForge's VAE.encode no longer passes it on.) False where the
    autoencoder has no `encoder` module to take the moments from."""
    release_vae_regulation(p)  # never a regulation on top of another one
    vae = p.sd_model.forge_objects.vae
    inner = getattr(vae, "first_stage_model", None)
    if not isinstance(getattr(inner, "encoder", None), torch.nn.Module):
        return False
    regulated = copy.copy(vae)
    regulated.first_stage_model = _RegulatedAutoencoder(inner, regulation)
    regulated.layerdiffuse_unregulated = vae
    p.sd_model.forge_objects.vae = regulated
    return True


def release_vae_regulation(p) -> bool:
    """Put back the VAE that set_vae_regulation replaced, if the current one is such a regulated copy (of this
    request, once its init images are encoded, or of an earlier one that was interrupted or failed before Forge
    rebuilt forge_objects: the next img2img would otherwise encode with that request's offsets). True when one
    was released."""
    forge_objects = getattr(getattr(p, "sd_model", None), "forge_objects", None)
    vae = getattr(forge_objects, "vae", None)
    if not isinstance(getattr(vae, "first_stage_model", None), _RegulatedAutoencoder):
        return False
    forge_objects.vae = vae.layerdiffuse_unregulated
    log.info("[LayerDiffuse] Released the init image transparency regulation of the VAE.")
    return True


def swap_modules(root: torch.nn.Module, modules: dict) -> dict:
    """Put `modules` ({dotted name: module}) into `root`; returns the modules they replaced, by name."""
    replaced = {}
    for name, module in modules.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        replaced[name] = getattr(parent, leaf)
        setattr(parent, leaf, module)
    return replaced


def replace_modules_during_calls(unet, modules: dict, owner: torch.nn.Module) -> None:
    """For hosts whose object patches only take tensors (Neo wraps every object patch in a Parameter): the units
    are swapped into the diffusion model for each model call, by a model function wrapper on this clone
    (model_options['model_function_wrapper'], called by sampling_function with apply_model and its args), and
    put back after it; `owner` (the module holding them) is handed to the host's memory management so it is
    loaded with the UNet."""
    diffusion_model = unet.model.diffusion_model
    previous = unet.model_options.get("model_function_wrapper")
    unet.add_extra_torch_module_during_sampling(owner, cast_to_unet_dtype=False)

    def with_units(apply_model, args):
        replaced = swap_modules(diffusion_model, modules)
        try:
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            swap_modules(diffusion_model, replaced)

    unet.set_model_unet_function_wrapper(with_units)
