"""Applying a SamplingPlan (plan.py) through any host (protocol.Host): the one place where LayerDiffuse's change
to a sampling reaches the model. The bridges only translate each step into their host's API."""
from __future__ import annotations

import logging

import torch

from ..errors import ModelFileError
from ..networks.attention_sharing import COND_OVERWRITE_KEY, SD15_ATTENTION_LAYER_NAMES, build_attention_sharing
from ..networks.model_store import ModelStore, model_file
from ..networks.unet_patch_file import parse_patch_file
from ..plan import AttentionSharingPlan, SamplingPlan
from . import flux_lora

log = logging.getLogger(__name__)

UNITS_ATTR = "layerdiffuse_attention_units"  # the processing object's built SD1.5 units (once per generation)


def apply_plan(p, plan: SamplingPlan, host, store: ModelStore, base_name: str) -> list | None:
    """Install this sampling's patched clone of the UNet. Returns the list the VAE's decodes are recorded into
    when the plan decodes transparency (else None)."""
    unpatched = host.clone_unet(p)
    unet = host.clone_unet(p)
    if plan.weight_patch_file is not None:
        _add_weight_patches(unet, plan, host, store, base_name)
    if plan.lora_file is not None:
        _add_peft_lora(p, unet, plan, host, store)
    if plan.concat is not None:  # before stop-at, whose modifier takes the concat condition out again
        latent = host.encode_images(p, list(plan.concat.images))
        host.set_concat_condition(unet, latent, plan.concat.batch_size)
    if plan.attention_sharing is not None:
        _share_attention(p, unet, plan.attention_sharing, host, store)
    if plan.stop_at is not None:
        host.add_stop_at(unet, unpatched, plan.stop_at)
    host.install_unet(p, unet)
    if plan.decoder_file is None:
        return None
    decoded = RecordedDecodes()
    host.record_vae_decodes(p, decoded)
    return decoded


class RecordedDecodes(list):
    """The latent batches this sampling's VAE decoded (the list), and beside them in `pixels` each decode's
    images as floats (B×3×H×W in [0, 1]; None where the host's decode gave something else)."""

    def __init__(self):
        super().__init__()
        self.pixels: list = []


def _add_weight_patches(unet, plan: SamplingPlan, host, store: ModelStore, base_name: str) -> None:
    filename = model_file(plan.weight_patch_file).filename
    patches = parse_patch_file(filename, store.load(plan.weight_patch_file))
    matched = host.add_weight_patches(unet, filename, patches, plan.strength)
    if matched == 0:
        raise ModelFileError(
            f"[LayerDiffuse] None of the {len(patches)} weights in {filename} match the loaded UNet, so the image "
            f"would come out without transparency. Use a standard {base_name} checkpoint (not a refiner, or a merge "
            f"with renamed layers), or replace {filename} if it is damaged.")
    if matched < len(patches):
        log.warning("[LayerDiffuse] Only %d of %d weights in %s match the loaded UNet.", matched, len(patches),
                    filename)


def _add_peft_lora(p, unet, plan: SamplingPlan, host, store: ModelStore) -> None:
    """A diffusers/PEFT LoRA through the host's own key mapping. Keys that land on no weight of the loaded model
    are reported to the user; if none lands, the image would come out opaque, so the generation stops."""
    filename = model_file(plan.lora_file).filename
    state_dict = store.load(plan.lora_file)
    unmatched = host.add_peft_lora(unet, filename, state_dict, plan.strength)
    if not unmatched:
        return
    message = flux_lora.unmatched_message(filename, unmatched, len(state_dict))
    if len(unmatched) >= len(state_dict):
        raise ModelFileError(message + " Nothing of it applies, so the image would not come out transparent.")
    host.tell_user(p, message)


def _units(p, sharing: AttentionSharingPlan, unet, host, store: ModelStore):
    """The attention units, built once per generation (the hires pass reuses them) on the processing object."""
    built = getattr(p, UNITS_ATTR, None)
    if built is not None and built[0] == sharing.model_file:
        return built[1]
    _, dtype = host.unet_device_and_dtype(unet)
    originals = host.attention_modules(unet, SD15_ATTENTION_LAYER_NAMES)
    model = build_attention_sharing(store.load(sharing.model_file), originals, sharing.config,
                                    store.local_path(sharing.model_file), dtype=dtype)
    setattr(p, UNITS_ATTR, (sharing.model_file, model))
    return model


def _share_attention(p, unet, sharing: AttentionSharingPlan, host, store: ModelStore) -> None:
    """SD1.5: the 32 attention layers replaced by units that see every frame of a group; per-frame prompts as
    context overwrites; the fg / bg input image as control signal."""
    model = _units(p, sharing, unet, host, store)
    if sharing.control_image is not None:
        model.set_control(torch.from_numpy(sharing.control_image).permute(2, 0, 1)[None])
    overwrites = [host.text_condition(p, text) if text else None for text in sharing.frame_prompts]
    if any(o is not None for o in overwrites):
        host.set_transformer_option(unet, COND_OVERWRITE_KEY, overwrites)
    host.replace_modules(unet, dict(zip(SD15_ATTENTION_LAYER_NAMES, model.installed_units())), model)
