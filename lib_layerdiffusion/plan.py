"""LayerDiffuse's change to one sampling, as a value.

`plan_sampling` is pure: from the request, the settings and what the host reports about this sampling (the
noise shape, the main prompt) it computes a frozen `SamplingPlan` that says everything LayerDiffuse does to the
model: which weight-patch file at which strength, which images become the concat latent, the SD1.5 attention
units with their control image and per-frame prompts, where the patch stops, and which latents the transparent
decoder reads. A host applies the plan (hosts/comfy_patcher.py), and nothing else decides what to patch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .images.conditioning_images import conditioning_image
from .networks.attention_sharing import SD15_CONFIGS, AttentionSharingConfig
from .request.args import LayerDiffuseArgs
from .request.methods import LAYER_LABELS, Layer, PatchKind


@dataclass(frozen=True)
class ConcatCondition:
    """Input images (H×W×3 float in [0,1], at the generation size) whose latents, concatenated on channels in
    this order, are given to the UNet beside the noisy latent, for every image of the batch."""
    images: tuple[np.ndarray, ...] = field(compare=False)
    batch_size: int


@dataclass(frozen=True)
class AttentionSharingPlan:
    """SD1.5: the attention units of `model_file`, the control image (fg→bg / bg→fg) and, per frame of a group,
    the text whose embedding replaces the frame's prompt (None: the frame keeps the main prompt)."""
    model_file: str
    config: AttentionSharingConfig
    control_image: np.ndarray | None = field(compare=False)
    frame_prompts: tuple[str | None, ...]


@dataclass(frozen=True)
class SamplingPlan:
    weight_patch_file: str | None  # model-store name of the UNet patch file (SDXL), or None
    strength: float  # the user's Weight, scaling the weight patch
    concat: ConcatCondition | None
    attention_sharing: AttentionSharingPlan | None
    stop_at: float | None  # fraction of the schedule after which the unpatched model samples; None: never
    decoder_file: str | None  # the transparent decoder, when this sampling makes transparent images
    lora_file: str | None = None  # model-store name of a PEFT LoRA (FLUX.1), loaded by the host's LoRA mapping
    # The transparent decoder was trained on the raw VAE latent (what the VAE's decode receives, i.e.
    # process_out of the sampler's latent), so that is what the host records for it.
    decode_reads_raw_latent: bool = True


def _frame_prompts(args: LayerDiffuseArgs, main_prompt: str) -> tuple[str | None, ...]:
    """Each frame's additional prompt goes before the main prompt, as the original extension does."""
    method = args.method
    texts = []
    for frame in method.frames:
        extra = args.additional_prompt(frame) if frame in method.prompts else ""
        texts.append(f"{extra}, {main_prompt}" if extra else None)
    return tuple(texts)


def _input_image(args: LayerDiffuseArgs, layer: Layer, height: int, width: int) -> np.ndarray:
    return conditioning_image(args.image(layer), args.resize_mode, height, width, what=f"{LAYER_LABELS[layer]} image")


def plan_sampling(args: LayerDiffuseArgs, noise_shape: tuple[int, ...], main_prompt: str) -> SamplingPlan:
    """The plan for one sampling whose noise has `noise_shape` (B, C, H/8, W/8): also the hires pass, which
    samples at another size, so the input images are fitted to each sampling's own size."""
    method = args.method
    batch, _, latent_h, latent_w = noise_shape
    height, width = latent_h * 8, latent_w * 8
    stop_at = float(args.ending_step) if args.ending_step < 1.0 else None
    decoder = method.decoder_file if method.makes_transparent else None
    if method.patch_kind is PatchKind.ATTENTION_SHARING:
        config = SD15_CONFIGS[method.model_file.removeprefix("layer_")]
        control = _input_image(args, method.inputs[0], height, width) if config.use_control else None
        sharing = AttentionSharingPlan(method.model_file, config, control, _frame_prompts(args, main_prompt))
        return SamplingPlan(weight_patch_file=None, strength=float(args.weight), concat=None,
                            attention_sharing=sharing, stop_at=stop_at, decoder_file=decoder)
    if method.patch_kind is PatchKind.PEFT_LORA:
        return SamplingPlan(weight_patch_file=None, strength=float(args.weight), concat=None, attention_sharing=None,
                            stop_at=stop_at, decoder_file=decoder, lora_file=method.model_file)
    concat = None
    if method.inputs:
        images = tuple(_input_image(args, layer, height, width) for layer in method.inputs)
        concat = ConcatCondition(images=images, batch_size=int(batch))
    return SamplingPlan(weight_patch_file=method.model_file, strength=float(args.weight), concat=concat,
                        attention_sharing=None, stop_at=stop_at, decoder_file=decoder)
