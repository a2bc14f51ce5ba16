"""Turning user images (any PIL mode, numpy arrays, base64 / data URLs) into conditioning images.

A conditioning image is RGB float32 in [0,1], transparent pixels shown as mid-grey (0.5 + (rgb - 0.5) * alpha),
resized to the generation size by one of the three resize modes users know from img2img and ControlNet.
"""
from __future__ import annotations

import base64
import binascii
import enum
import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidArgumentError


class ResizeMode(str, enum.Enum):
    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"


RESIZE_MODE_VALUES = tuple(m.value for m in ResizeMode)
DEFAULT_RESIZE_MODE = ResizeMode.CROP_AND_RESIZE


def resize_mode_by_name(name) -> ResizeMode:
    if isinstance(name, ResizeMode):
        return name
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(ResizeMode):
        return list(ResizeMode)[name]
    if isinstance(name, str):
        for mode in ResizeMode:
            if mode.value.casefold() == name.strip().casefold():
                return mode
    raise InvalidArgumentError(
        f"[LayerDiffuse] Unknown resize mode {name!r}. Choose one of: {', '.join(RESIZE_MODE_VALUES)}.")


def decode_base64_image(text: str, what: str = "image") -> Image.Image:
    """Decode a base64 PNG/JPEG/WebP, with or without a `data:image/...;base64,` prefix."""
    payload = text.strip()
    if payload.startswith("data:"):
        _, _, payload = payload.partition(",")
    try:
        raw = base64.b64decode(payload, validate=False)
        image = Image.open(io.BytesIO(raw))
        image.load()
        return image
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise InvalidArgumentError(
            f"[LayerDiffuse] The {what} could not be read: send a PNG as base64 or as a data URL "
            f"(data:image/png;base64,...).") from None


def to_pil(value, what: str = "image") -> Image.Image | None:
    """Accept what the UI, the API or a script hands over: PIL image, numpy array, base64 string, data URL,
    or a Gradio image-editor dict ({"background": ..., "composite": ...}). None / "" mean no image."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        for key in ("composite", "background", "image"):
            if value.get(key) is not None:
                return to_pil(value[key], what)
        return None
    if isinstance(value, str):
        return decode_base64_image(value, what)
    if isinstance(value, np.ndarray):
        return Image.fromarray(_array_to_rgba(value))
    raise InvalidArgumentError(
        f"[LayerDiffuse] The {what} must be an image (PNG as base64 or data URL over the API), "
        f"not {type(value).__name__}.")


def _array_to_rgba(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).round()
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels == 1:
        return np.concatenate([arr.repeat(3, axis=2), np.full_like(arr, 255)], axis=2)
    if channels == 2:
        return np.concatenate([arr[..., :1].repeat(3, axis=2), arr[..., 1:2]], axis=2)
    if channels == 3:
        return np.concatenate([arr, np.full_like(arr[..., :1], 255)], axis=2)
    return np.ascontiguousarray(arr[..., :4])


def to_rgba_array(image: Image.Image) -> np.ndarray:
    """H×W×4 uint8 of any PIL image. 16- and 32-bit greyscale are scaled to 8 bits instead of being
    clipped (PIL's own convert() would turn most of a 16-bit PNG white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _array_to_rgba(np.asarray(image).astype(np.uint16))
    if image.mode in ("I", "F"):
        arr = np.asarray(image).astype(np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return _array_to_rgba((np.clip(arr, 0, peak) / peak * 255.0).round().astype(np.uint8))
    return np.asarray(image.convert("RGBA")).copy()


def flatten_over_grey(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 → RGB float32 in [0,1] with transparent pixels mid-grey, as the models were trained."""
    rgba = rgba.astype(np.float32) / 255.0
    return 0.5 + (rgba[..., :3] - 0.5) * rgba[..., 3:4]


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    if arr.shape[0] == height and arr.shape[1] == width:
        return arr
    shrinking = width * height < arr.shape[0] * arr.shape[1]
    # area averaging avoids aliasing when shrinking; Lanczos keeps edges sharp when enlarging
    out = cv2.resize(arr, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
    return out.reshape(height, width, arr.shape[2])


def resize_image(arr: np.ndarray, mode: ResizeMode, height: int, width: int) -> np.ndarray:
    """Fit an H×W×C float image to height×width.

    Just Resize stretches; Crop and Resize scales to cover then crops the centre; Resize and Fill scales to
    fit inside and fills the rest with the median colour of the image's border.
    """
    mode = resize_mode_by_name(mode)
    if mode is ResizeMode.JUST_RESIZE:
        return _resize(arr, width, height)
    old_h, old_w = arr.shape[:2]
    scale_h, scale_w = height / old_h, width / old_w
    if mode is ResizeMode.CROP_AND_RESIZE:
        scale = max(scale_h, scale_w)
        new_w, new_h = max(width, round(old_w * scale)), max(height, round(old_h * scale))
        scaled = _resize(arr, new_w, new_h)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(scaled[top:top + height, left:left + width])
    scale = min(scale_h, scale_w)
    new_w, new_h = min(width, max(1, round(old_w * scale))), min(height, max(1, round(old_h * scale)))
    scaled = _resize(arr, new_w, new_h)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
    canvas = np.empty((height, width, arr.shape[2]), dtype=arr.dtype)
    canvas[:] = np.median(border, axis=0).astype(arr.dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = scaled
    return canvas


def conditioning_image(value, mode: ResizeMode, height: int, width: int, what: str = "image") -> np.ndarray:
    """Any accepted image value → H×W×3 float32 in [0,1] over mid-grey, at the generation size."""
    image = to_pil(value, what)
    if image is None:
        raise InvalidArgumentError(f"[LayerDiffuse] The {what} is missing.")
    return resize_image(flatten_over_grey(to_rgba_array(image)), mode, height, width)
