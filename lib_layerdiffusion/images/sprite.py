"""Sprite-ready transparent images: trimmed to what is visible, and with colour bled into invisible pixels.

* Trimming crops an RGBA image to the bounding box of its non-zero alpha plus a margin (clamped to the image).
  The crop box is kept as a `TrimBox` and written to the infotext as ``x0,y0,x1,y1 of WxH``: the box in the
  generated W x H image, left/top inclusive and right/bottom exclusive (PIL's crop convention). Pasting the
  trimmed PNG at (x0, y0) on a transparent W x H canvas gives the untrimmed image back (`untrim`).
* Bleeding gives every fully transparent pixel (alpha 0) the colour of the nearest pixel that is not fully
  transparent, so that texture filtering and mipmaps in game engines mix in the object's colours rather than
  black at its edges. Alpha is unchanged, so the picture looks the same everywhere.

Pure functions on PIL images; the generation applies them to the RGBA it saves and returns.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..errors import InvalidArgumentError

INFO_KEY = "layerdiffuse_trim"  # PIL info key of a trimmed image: its TrimBox as text
INFOTEXT_KEY = "layerdiffusion_trim"  # the infotext field
_BOX_TEXT = re.compile(r"\s*(\d+),(\d+),(\d+),(\d+) of (\d+)x(\d+)\s*")


@dataclass(frozen=True)
class TrimBox:
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    width: int  # the untrimmed image
    height: int

    def __post_init__(self):
        if not (0 <= self.x0 < self.x1 <= self.width and 0 <= self.y0 < self.y1 <= self.height):
            raise InvalidArgumentError(f"[LayerDiffuse] {self} is not a crop box inside its image.")

    def __str__(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1} of {self.width}x{self.height}"

    @classmethod
    def parse(cls, text: str) -> "TrimBox":
        match = _BOX_TEXT.fullmatch(str(text))
        if match is None:
            raise InvalidArgumentError(f"[LayerDiffuse] {text!r} is not a trim box (x0,y0,x1,y1 of WxH).")
        return cls(*(int(v) for v in match.groups()))


def _rgba(image: Image.Image, what: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"[LayerDiffuse] The {what} must be a PIL image, got {type(image).__name__}.")
    return image if image.mode == "RGBA" else image.convert("RGBA")


def trim_box(alpha: np.ndarray, margin: int) -> TrimBox | None:
    """The bounding box of alpha > 0 grown by `margin` pixels on each side (within the image); None when
    nothing is visible."""
    if margin < 0:
        raise InvalidArgumentError(f"[LayerDiffuse] The trim margin must be 0 or more pixels, not {margin}.")
    height, width = alpha.shape[:2]
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return None
    return TrimBox(max(int(cols[0]) - margin, 0), max(int(rows[0]) - margin, 0),
                   min(int(cols[-1]) + 1 + margin, width), min(int(rows[-1]) + 1 + margin, height), width, height)


def trim(image: Image.Image, margin: int = 0) -> tuple[Image.Image, TrimBox | None]:
    """The image cropped to its visible pixels plus `margin`, and the crop box. A fully transparent image is
    returned as it is, with no box."""
    image = _rgba(image, "image to trim")
    box = trim_box(np.asarray(image)[..., 3], int(margin))
    if box is None:
        return image, None
    return image.crop((box.x0, box.y0, box.x1, box.y1)), box


def untrim(image: Image.Image, box: TrimBox) -> Image.Image:
    """Undo `trim`: the trimmed image placed back on a transparent canvas of the original size."""
    image = _rgba(image, "trimmed image")
    if image.size != (box.x1 - box.x0, box.y1 - box.y0):
        raise InvalidArgumentError(f"[LayerDiffuse] A {image.width}x{image.height} image does not fit the trim box "
                                   f"{box}.")
    canvas = Image.new("RGBA", (box.width, box.height), (0, 0, 0, 0))
    canvas.paste(image, (box.x0, box.y0))  # a plain copy, no mask: the pixels arrive unchanged
    return canvas


def bleed_colour(image: Image.Image) -> Image.Image:
    """A copy where every pixel with alpha 0 has the RGB of the nearest pixel with alpha > 0 (OpenCV's distance
    transform, Euclidean with a 5x5 mask; equidistant candidates are chosen by OpenCV). Alpha is unchanged;
    an image with no visible pixel is returned unchanged."""
    arr = np.array(_rgba(image, "image to bleed"))
    transparent = arr[..., 3] == 0
    if not transparent.any() or transparent.all():
        return Image.fromarray(arr, "RGBA")
    # distanceTransform measures to the nearest ZERO pixel: the visible pixels are the zeros, and with
    # DIST_LABEL_PIXEL each of them gets its own label, which every other pixel inherits from its nearest one
    _, labels = cv2.distanceTransformWithLabels(transparent.astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    visible_flat = np.flatnonzero(~transparent)
    source_of_label = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    source_of_label[labels.reshape(-1)[visible_flat]] = visible_flat
    rgb = arr[..., :3].reshape(-1, 3)  # a copy (the slice is not contiguous)
    flat_transparent = np.flatnonzero(transparent)
    rgb[flat_transparent] = rgb[source_of_label[labels.reshape(-1)[flat_transparent]]]
    arr[..., :3] = rgb.reshape(arr.shape[0], arr.shape[1], 3)
    return Image.fromarray(arr, "RGBA")


def sprite_ready(image: Image.Image, trim_margins: bool, margin: int, bleed: bool
                 ) -> tuple[Image.Image, TrimBox | None]:
    """Apply the sprite settings to a transparent result: trim (then bleed, which gives the same colours in the
    crop as bleeding first, since every visible pixel is inside it). Returns the image and its trim box (None
    when not trimmed). A trimmed image carries its box in `info[INFO_KEY]`."""
    box = None
    if trim_margins:
        image, box = trim(image, margin)
    if bleed:
        image = bleed_colour(image)
    if box is not None:
        image.info[INFO_KEY] = str(box)
    return image, box


def trim_box_of(image: Image.Image) -> TrimBox | None:
    """The trim box a sprite_ready image carries, if it was trimmed."""
    text = getattr(image, "info", {}).get(INFO_KEY)
    return TrimBox.parse(text) if text else None
