"""Transparent img2img and inpainting: carrying the init image's alpha into the latent, and back out.

The RGBA init image is flattened over mid-grey for the checkpoint's VAE; its transparency travels as the
latent-transparency encoder's offset, added to the VAE's posterior (mean + std · offset). Every step that
Forge applies to the image it encodes (resize mode, the crop of "inpaint only masked") is applied to the RGBA
too, so the offset lines up with the latent. After sampling, inpainting keeps the unmasked area of the input
(colour and alpha) and pastes the decoded crop back into the full canvas.

Facts of the hosts these functions follow (Forge `dfdcbab6`, the same in A1111):
  * modules/images.py `flatten(img, bgcolor)`: an RGBA image is pasted, with its own alpha as the mask, onto an
    opaque RGBA background of `bgcolor`, then converted to RGB. The original extension (b1e66511,
    scripts/forge_layerdiffusion.py `before_process_init_images`) flattens the init image with
    `images.flatten(image, (127, 127, 127))`; `grey_flattened` is exactly that.
  * modules/processing.py `StableDiffusionProcessingImg2Img.init`: with resize mode 3 ("Just resize (latent
    upscale)") and no inpaint crop the init image is encoded at its own size and the latent is resized to the
    generation size afterwards; backend/patcher/vae.py `encode_inner` gives a floor(H/8)×floor(W/8) latent.
  * modules/processing.py `apply_overlay(image, paste_loc, overlay)`: with overlay None (Settings →
    "overlay_inpaint" off) it returns the image unchanged, so for "inpaint only masked" the generated image
    (p.pixels_after_sampling[i]) is then the crop at the generation size; with the overlay it is the full canvas
    (`uncrop`: `resize_image(1, crop, w, h)` pasted at (x, y), then the unmasked original alpha-composited).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidArgumentError
from .conditioning_images import to_rgba_array

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitTransparency:
    """The init images' RGBA on Forge's canvas (resize mode applied, before any inpaint crop), one per init
    image, and the inpaint crop region (x1, y1, x2, y2) or None."""
    canvases: tuple[Image.Image, ...]
    crop_region: tuple[int, int, int, int] | None
    regulation_calls: list  # rows encoded with the offset, appended by the regulation (empty: never applied)


GREY_BACKGROUND = (127, 127, 127)  # the original's images.flatten(image, (127, 127, 127))
LATENT_UPSCALE = 3  # Forge's img2img resize mode "Just resize (latent upscale)"
LATENT_SCALE = 8  # pixels per latent cell of the SD / SDXL VAE


def grey_flattened(image: Image.Image) -> Image.Image:
    """The init image as the original extension hands it to the VAE: exactly A1111/Forge modules/images.py
    `flatten(image, (127, 127, 127))` (paste onto an opaque (127, 127, 127) background with the image's alpha as
    the mask, to RGB), so a transparent pixel is 127 and a half-transparent one PIL's rounded blend. Any mode is
    made RGBA first (16-bit greyscale scaled, a palette's or LA's transparency kept), where flatten would drop
    the transparency of a non-RGBA image."""
    rgba = Image.fromarray(to_rgba_array(image), "RGBA")
    background = Image.new("RGBA", rgba.size, GREY_BACKGROUND)
    background.paste(rgba, mask=rgba)
    return background.convert("RGB")


def init_canvas(image: Image.Image, resize_mode: int, crop_region, width: int, height: int, resize) -> Image.Image:
    """The init image's RGBA on Forge's canvas, as modules/processing.py StableDiffusionProcessingImg2Img.init
    places the flattened image before encoding: resized by the resize mode to width×height, except for an
    inpaint crop (the full image; the crop is taken later) and for latent upscale (the image at its own size).
    `resize(mode, image, width, height)` is the host's resize (Forge: modules/images.py resize_image with
    force_RGBA)."""
    image = Image.fromarray(to_rgba_array(image), "RGBA")
    if crop_region is None and resize_mode != LATENT_UPSCALE:
        return Image.fromarray(to_rgba_array(resize(resize_mode, image, width, height)), "RGBA")
    return image


def aligned_rgba(canvas: Image.Image, crop_region, width: int, height: int, resize,
                 resize_mode: int | None = None) -> np.ndarray:
    """The RGBA pixels exactly where Forge's encoded image has them, i.e. what the transparency encoder must be
    given for `canvas` (from `init_canvas`):
      * inpaint only masked: the crop resized with Forge's "resize and fill" (mode 2) to width×height;
      * latent upscale (resize_mode 3, no crop): the image at its own size, as Forge encodes it, cut at the right
        and bottom to whole latent cells (Forge's VAE makes a floor(H/8)×floor(W/8) latent, cell (i, j) from the
        8×8 pixels at (8i, 8j)), so the offset has the posterior's size and is not resampled;
      * otherwise the canvas, already width×height (resized with mode 0 if not).
    Without `resize_mode` (the former signature) a canvas of another size is resized to width×height."""
    if crop_region is not None:
        canvas = resize(2, canvas.crop(crop_region), width, height)
    elif resize_mode == LATENT_UPSCALE:
        return native_encode_rgba(canvas)
    elif canvas.size != (width, height):
        canvas = resize(0, canvas, width, height)
    return to_rgba_array(canvas)


def native_encode_rgba(image: Image.Image) -> np.ndarray:
    """Latent upscale: the RGBA at the image's own size, cut to whole latent cells at the right and bottom."""
    rgba = to_rgba_array(image)
    h, w = (rgba.shape[0] // LATENT_SCALE) * LATENT_SCALE, (rgba.shape[1] // LATENT_SCALE) * LATENT_SCALE
    if h == 0 or w == 0:
        raise InvalidArgumentError(
            f"[LayerDiffuse] The init image is {rgba.shape[1]}x{rgba.shape[0]}: with the latent upscale resize "
            f"mode it is encoded at its own size, which must be at least 8x8.")
    return np.ascontiguousarray(rgba[:h, :w])


def regulation_with_offsets(offsets: torch.Tensor, calls: list):
    """A VAE regulation adding the offsets row by row: mean + std · offset. Forge may encode the batch in chunks,
    so each call takes the next rows. A posterior of another size than the offsets (a tile of a tiled encode,
    which Forge falls back to when memory runs short) gets None: the offset of the whole image cannot be split
    into tiles, so the caller encodes that tile as usual. `calls` records each call's row count, 0 for a
    declined one, so that the user can be told the offset was not (or not wholly) applied."""
    start = [0]

    def regulation(posterior):
        mean = posterior.mean
        if tuple(offsets.shape[2:]) != tuple(mean.shape[2:]):
            calls.append(0)
            return None
        rows = mean.shape[0]
        index = [(start[0] + i) % offsets.shape[0] for i in range(rows)]
        start[0] += rows
        calls.append(rows)
        latent = mean + posterior.std * offsets[index].to(mean)
        # the figures a rig run compares with the host's init latent (its process_in of this)
        log.info("[LayerDiffuse] Init image transparency: posterior mean %.6f, std %.6f; offset mean %.6f, std "
                 "%.6f; latent %s: mean %.6f, std %.6f", mean.float().mean().item(), posterior.std.float().mean().item(),
                 offsets.float().mean().item(), offsets.float().std().item(), tuple(latent.shape),
                 latent.float().mean().item(), latent.float().std().item())
        return latent

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


def uncrop(decoded: Image.Image, canvas: Image.Image, paste_box: tuple[int, int, int, int], resize=None
           ) -> Image.Image:
    """Put a decoded crop (RGBA at the generation size) back at `paste_box` (x, y, w, h) of the canvas, fitted to
    w×h as Forge's modules/processing.py `uncrop` does (resize_image mode 1, "crop and resize"; Lanczos, the
    alpha resampled with the colour). `resize(mode, image, w, h)`: the host's resize; default a pure copy of
    modules/images.py resize_image(1, image, w, h, force_RGBA=True)."""
    x, y, w, h = paste_box
    decoded = Image.fromarray(to_rgba_array(decoded), "RGBA")
    fitted = resize(1, decoded, w, h) if resize is not None else cover_resize(decoded, w, h)
    full = Image.fromarray(to_rgba_array(canvas), "RGBA")
    full.paste(Image.fromarray(to_rgba_array(fitted), "RGBA"), (x, y))
    return full


def cover_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """modules/images.py resize_image(1, image, width, height, force_RGBA=True): scale to cover width×height
    (integer sizes as Forge computes them), Lanczos, centred on a transparent RGBA canvas of that size."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio > src_ratio else image.width * height // image.height
    src_h = height if ratio <= src_ratio else image.height * width // image.width
    out = Image.new("RGBA", (width, height))
    out.paste(image.convert("RGBA").resize((src_w, src_h), resample=Image.LANCZOS),
              box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out
