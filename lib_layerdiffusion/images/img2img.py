"""Transparent img2img and inpainting: carrying the init image's alpha into the latent, and back out.

The RGBA init image is flattened over mid-grey for the checkpoint's VAE; its transparency travels as the
latent-transparency encoder's offset, added to the VAE's posterior (mean + std · offset). Every step that
Forge applies to the image it encodes (resize mode, the crop of "inpaint only masked") is applied to the RGBA
too, so the offset lines up with the latent. After sampling, inpainting keeps the unmasked area of the input
(colour and alpha) and pastes the decoded crop back into the full canvas.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .conditioning_images import flatten_over_grey, to_rgba_array

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitTransparency:
    """The init images' RGBA on Forge's canvas (resize mode applied, before any inpaint crop), one per init
    image, and the inpaint crop region (x1, y1, x2, y2) or None."""
    canvases: tuple[Image.Image, ...]
    crop_region: tuple[int, int, int, int] | None
    regulation_calls: list  # rows encoded with the offset, appended by the regulation (empty: never applied)


def grey_flattened(image: Image.Image) -> Image.Image:
    """The init image as the VAE should see it: transparent parts mid-grey, as LayerDiffuse was trained."""
    rgb = flatten_over_grey(to_rgba_array(image))
    return Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")


def aligned_rgba(canvas: Image.Image, crop_region, width: int, height: int, resize) -> np.ndarray:
    """The RGBA pixels exactly where Forge's encoded image has them: the crop of "inpaint only masked" resized
    with Forge's "resize and fill", else the canvas (already at the generation size) — always width×height.
    `resize(mode, image, width, height)` is the host's resize (Forge: modules/images.py resize_image)."""
    if crop_region is not None:
        canvas = resize(2, canvas.crop(crop_region), width, height)
    elif canvas.size != (width, height):
        canvas = resize(0, canvas, width, height)
    return to_rgba_array(canvas)


def regulation_with_offsets(offsets: torch.Tensor, calls: list):
    """A Forge VAE regulation (backend/nn/vae.py encode(x, regulation)) adding the offsets row by row: Forge
    may encode the batch in chunks, so each call takes the next rows; an offset whose size differs from the
    posterior (latent-upscale resize mode) is resized to it. `calls` records each call's row count."""
    start = [0]

    def regulation(posterior):
        mean = posterior.mean
        rows = mean.shape[0]
        index = [(start[0] + i) % offsets.shape[0] for i in range(rows)]
        start[0] += rows
        offset = offsets[index].to(mean)
        if offset.shape[2:] != mean.shape[2:]:
            offset = F.interpolate(offset, size=mean.shape[2:], mode="bilinear", align_corners=False)
        calls.append(rows)
        return mean + posterior.std * offset

    return regulation


def keep_unmasked(result: Image.Image, original: Image.Image, mask: Image.Image | None) -> Image.Image:
    """Inpainting: the masked area from `result`, the rest (colour and alpha) from `original` (same size);
    `mask` is Forge's mask_for_overlay (white = repainted, soft edges kept)."""
    if mask is None:
        return result
    m = np.asarray(mask.convert("L").resize(result.size, Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
    a = np.asarray(result.convert("RGBA"), dtype=np.float32)
    b = np.asarray(original.convert("RGBA").resize(result.size, Image.LANCZOS), dtype=np.float32)
    return Image.fromarray(np.clip(a * m + b * (1.0 - m) + 0.5, 0, 255).astype(np.uint8), "RGBA")


def uncrop(decoded: Image.Image, canvas: Image.Image, paste_box: tuple[int, int, int, int]) -> Image.Image:
    """Put a decoded crop (RGBA at the generation size) back at `paste_box` (x, y, w, h) of the canvas."""
    x, y, w, h = paste_box
    full = canvas.convert("RGBA").copy()
    full.paste(decoded.resize((w, h), Image.LANCZOS), (x, y))
    return full
