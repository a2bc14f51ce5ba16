"""Turning a decoded transparent image (alpha, R, G, B in [0,1]) into the pictures shown to the user.

``rgba_image`` gives the straight-alpha RGBA PNG; ``checkerboard_preview`` composes the colour over a grey
checkerboard of 64-pixel squares so transparency is visible in an ordinary image viewer.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgumentError

CHECKER_SQUARE = 64
# The two grey levels as the reference computes them (0.5 -/+ 0.05), rounded to float32 the same way.
CHECKER_DARK = np.float32(0.5 + (0.0 - 0.5) * 0.1)
CHECKER_LIGHT = np.float32(0.5 + (1.0 - 0.5) * 0.1)

Decoded = torch.Tensor | np.ndarray


def _as_hwc(decoded: Decoded) -> np.ndarray:
    """Return the decoded image as an HxWx4 float32 array (alpha first).

    Accepted: (4,H,W) or (H,W,4), optionally with a leading batch of one. When both ends are 4, tensors are
    read channel-first (as the decoder returns them) and arrays channel-last (as images are stored)."""
    is_tensor = isinstance(decoded, torch.Tensor)
    arr = decoded.detach().float().cpu().numpy() if is_tensor else np.asarray(decoded, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or 4 not in (arr.shape[0], arr.shape[-1]):
        raise InvalidArgumentError(
            f"[LayerDiffuse] A decoded transparent image must have shape (4,H,W) or (H,W,4), got {arr.shape}."
        )
    channels_first = arr.shape[0] == 4 and (arr.shape[-1] != 4 or is_tensor)
    return np.ascontiguousarray(arr.transpose(1, 2, 0) if channels_first else arr, dtype=np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    # Truncation (not rounding) matches the reference output byte for byte.
    return (values * np.float32(255.0)).clip(0, 255).astype(np.uint8)


def checkerboard(height: int, width: int) -> np.ndarray:
    """HxWx1 float32 grey levels: 64-pixel squares, the top-left one dark; edge squares are cut, not stretched."""
    rows = (np.arange(height) // CHECKER_SQUARE)[:, None]
    cols = (np.arange(width) // CHECKER_SQUARE)[None, :]
    return np.where((rows + cols) % 2 == 0, CHECKER_DARK, CHECKER_LIGHT).astype(np.float32)[..., None]


def rgba_image(decoded: Decoded) -> Image.Image:
    """Straight-alpha RGBA picture: RGB from channels 1..3, alpha from channel 0."""
    hwc = _as_hwc(decoded).clip(0.0, 1.0)
    rgba = np.concatenate([hwc[..., 1:], hwc[..., :1]], axis=2)
    return Image.fromarray(_to_uint8(rgba))  # HxWx4 uint8 -> RGBA


def checkerboard_preview(decoded: Decoded) -> Image.Image:
    """RGB picture of the colour composed over the checkerboard with the decoded alpha."""
    hwc = _as_hwc(decoded).clip(0.0, 1.0)
    alpha, colour = hwc[..., :1], hwc[..., 1:]
    board = checkerboard(*hwc.shape[:2])
    vis = colour * alpha + board * (np.float32(1.0) - alpha)
    return Image.fromarray(_to_uint8(vis))  # HxWx3 uint8 -> RGB


def checkerboard_preview_of(rgba: Image.Image) -> Image.Image:
    """The checkerboard preview of an RGBA picture (e.g. after inpainting merged it with its input)."""
    arr = np.asarray(rgba.convert("RGBA"), dtype=np.float32) / np.float32(255.0)
    return checkerboard_preview(np.concatenate([arr[..., 3:], arr[..., :3]], axis=2))
