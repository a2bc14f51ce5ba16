"""Upscaling that keeps transparency: the colour goes through whatever upscaler the user chose (which may only
take RGB), the alpha is resampled on its own to the same final size and put back.
"""
from __future__ import annotations

from PIL import Image


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(RGB image, its alpha channel or None when the image has no transparency at all)."""
    if image.mode not in ("RGBA", "LA", "PA") and not (image.mode == "P" and "transparency" in image.info):
        return image, None
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return rgba.convert("RGB"), None
    return rgba.convert("RGB"), alpha


def fit_alpha(alpha: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The alpha resampled to `size`. Same aspect ratio: a plain Lanczos resize; otherwise the upscaler cropped
    to the new aspect, so scale to cover and crop the centre the same way."""
    if alpha.size == size:
        return alpha
    w, h = alpha.size
    tw, th = size
    if abs(w * th - h * tw) <= max(w, h, tw, th):  # same aspect up to one pixel of rounding
        return alpha.resize(size, Image.LANCZOS)
    scale = max(tw / w, th / h)
    sw, sh = max(tw, round(w * scale)), max(th, round(h * scale))
    scaled = alpha.resize((sw, sh), Image.LANCZOS)
    left, top = (sw - tw) // 2, (sh - th) // 2
    return scaled.crop((left, top, left + tw, top + th))


def restore_alpha(upscaled: Image.Image, alpha: Image.Image | None) -> Image.Image:
    """The upscaled colour with the original alpha fitted to its size (RGBA); unchanged when there was none."""
    if alpha is None:
        return upscaled
    rgba = upscaled.convert("RGBA")
    rgba.putalpha(fit_alpha(alpha, rgba.size))
    return rgba
