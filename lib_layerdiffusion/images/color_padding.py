"""Colour padding for the transparent encoder: give fully/partly transparent pixels a plausible colour.

The encoder was trained on RGB whose invisible pixels carry colour bled in from the visible ones, so the
same bleeding has to happen before encoding. Alpha-premultiplied colour and alpha are shrunk level by level
(factor 1.2, area averaging) down to a one-pixel side; starting from the alpha-weighted mean colour at the
coarsest level, each finer level keeps its own premultiplied colour and fills what its alpha leaves
uncovered with the coarser estimate, bilinearly enlarged.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidArgumentError

SHRINK_FACTOR = 1.2


def _pyramid(premultiplied: np.ndarray, alpha: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Levels from finest to coarsest; alpha stays HxWx1 at every level."""
    levels = [(premultiplied, alpha)]
    while min(alpha.shape[:2]) > 1:
        h, w = alpha.shape[:2]
        size = (int(w / SHRINK_FACTOR), int(h / SHRINK_FACTOR))  # cv2 takes (width, height)
        premultiplied = cv2.resize(premultiplied, size, interpolation=cv2.INTER_AREA)
        # cv2 drops a trailing single channel; put it back.
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], 1)
        levels.append((premultiplied, alpha))
    return levels


def pad_rgb(rgba: np.ndarray) -> np.ndarray:
    """rgba: HxWx4 uint8 (straight alpha) -> HxWx3 float32 in [0,1] with transparent areas colour-filled."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
        raise InvalidArgumentError(
            f"[LayerDiffuse] The image to encode must be an RGBA uint8 array of shape HxWx4, "
            f"got {rgba.dtype} {tuple(rgba.shape)}."
        )
    values = rgba.astype(np.float32) / np.float32(255.0)
    colour, alpha = values[..., :3], values[..., 3:]
    levels = _pyramid(colour * alpha, alpha)

    coarse_colour, coarse_alpha = levels[-1]
    total_alpha = np.clip(coarse_alpha.sum(axis=(0, 1), keepdims=True), 1e-8, 1e32)
    fg = coarse_colour.sum(axis=(0, 1), keepdims=True) / total_alpha  # (1,1,3): the mean visible colour

    for level_colour, level_alpha in reversed(levels):
        h, w = level_alpha.shape[:2]
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
        fg = level_colour + fg * (1.0 - level_alpha)
    return fg.astype(np.float32, copy=False)
