"""Layered OpenRaster (.ora) files: the transparent result (or the layers of a layer method) as one file that
Krita, GIMP, MyPaint and other OpenRaster readers open as a layered image.

Only the standard library, Pillow and numpy are used. The file follows the OpenRaster baseline layout:

* ``mimetype`` first, STORED, no extra field, containing exactly ``image/openraster`` (so the name sits at byte 30
  and the content right after it, which is how file sniffers recognise the format);
* ``stack.xml``, one ``<stack>`` listing the layers TOP FIRST (the document order of OpenRaster);
* ``data/<name>.png``, one PNG per layer, at x=0, y=0;
* ``mergedimage.png``, the visible layers composited (RGBA, full canvas size);
* ``Thumbnails/thumbnail.png``, the merged image scaled to at most 256x256.

The Python API takes and returns layers BOTTOM TO TOP, the natural painting order.
"""
from __future__ import annotations

import io
import math
import os
import re
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image

from .atomic_file import write_atomically
from .outputs import checkerboard

MIMETYPE = b"image/openraster"
ORA_VERSION = "0.0.3"
THUMBNAIL_MAX = 256

_MAX_FILE_STEM = 64
# Names Windows refuses as file names, whatever the extension (matters when someone unzips the file).
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
# Characters XML 1.0 cannot carry at all (C0 controls other than tab/newline/CR, surrogates, U+FFFE/U+FFFF).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Layer:
    """One raster layer of a layered file, placed at the canvas origin."""
    name: str
    image: Image.Image
    visible: bool = True
    opacity: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise TypeError(f"[LayerDiffuse] A layer name must be a string, got {type(self.name).__name__}.")
        if not isinstance(self.image, Image.Image):
            raise TypeError(f"[LayerDiffuse] Layer {self.name!r} needs a PIL image, got {type(self.image).__name__}.")
        if self.image.width < 1 or self.image.height < 1:
            raise ValueError(f"[LayerDiffuse] Layer {self.name!r} is empty ({self.image.width}x{self.image.height}).")
        try:
            opacity = float(self.opacity)
        except (TypeError, ValueError):
            raise TypeError(f"[LayerDiffuse] Layer {self.name!r} opacity must be a number, got {self.opacity!r}.")
        if not (math.isfinite(opacity) and 0.0 <= opacity <= 1.0):
            raise ValueError(f"[LayerDiffuse] Layer {self.name!r} opacity must be within 0..1, got {self.opacity!r}.")
        object.__setattr__(self, "opacity", opacity)
        object.__setattr__(self, "visible", bool(self.visible))


class ReadLayer(NamedTuple):
    """A layer as read back from a file (a plain tuple: name, visible, opacity, image)."""
    name: str
    visible: bool
    opacity: float
    image: Image.Image


# ----------------------------------------------------------------------------------------------- writing


def _storable(image: Image.Image) -> Image.Image:
    """The image in an 8-bit mode every OpenRaster reader takes: RGBA or RGB kept as is, others converted."""
    if image.mode in ("RGBA", "RGB"):
        return image
    has_alpha = image.mode in ("LA", "PA", "La", "RGBa") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # Pillow never interlaces unless asked, as OpenRaster requires
    return buffer.getvalue()


def _clean_name(name: str) -> str:
    return _XML_INVALID.sub("", name)


def _file_stems(names: Sequence[str]) -> list[str]:
    """Safe, unique (case-insensitively, for case-insensitive file systems) ASCII file stems for layer names."""
    used: set[str] = set()
    stems = []
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:_MAX_FILE_STEM].rstrip("_-") or "layer"
        if stem.lower() in _WINDOWS_RESERVED:
            stem += "_"
        candidate, n = stem, 2
        while candidate.lower() in used:
            candidate, n = f"{stem}_{n}", n + 1
        used.add(candidate.lower())
        stems.append(candidate)
    return stems


def _canvas_size(layers: Sequence[Layer], size) -> tuple[int, int]:
    if size is None:
        return max(l.image.width for l in layers), max(l.image.height for l in layers)
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"[LayerDiffuse] The canvas size must be (width, height), got {size!r}.")
    if w < 1 or h < 1:
        raise ValueError(f"[LayerDiffuse] The canvas size must be positive, got {w}x{h}.")
    return w, h


def composite(layers: Sequence[Layer], size: tuple[int, int]) -> Image.Image:
    """The visible layers composited source-over onto a transparent RGBA canvas, each at the origin."""
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    for layer in layers:
        if not layer.visible or layer.opacity == 0.0:
            continue
        im = layer.image.convert("RGBA")
        if layer.opacity < 1.0:
            arr = np.array(im)
            arr[..., 3] = np.round(arr[..., 3].astype(np.float32) * np.float32(layer.opacity)).astype(np.uint8)
            im = Image.fromarray(arr, "RGBA")
        if im.size != size:
            placed = Image.new("RGBA", size, (0, 0, 0, 0))
            placed.paste(im, (0, 0))  # a plain copy (no mask): larger layers are cropped, smaller ones padded
            im = placed
        canvas = Image.alpha_composite(canvas, im)
    return canvas


def thumbnail(image: Image.Image) -> Image.Image:
    """At most THUMBNAIL_MAX on each side, aspect ratio kept, never upscaled."""
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_MAX, THUMBNAIL_MAX), Image.Resampling.LANCZOS)
    return thumb


def _stack_xml(layers: Sequence[Layer], srcs: Sequence[str], size: tuple[int, int]) -> bytes:
    root = ET.Element("image", {"version": ORA_VERSION, "w": str(size[0]), "h": str(size[1])})
    stack = ET.SubElement(root, "stack")
    for layer, src in reversed(list(zip(layers, srcs))):  # OpenRaster lists the top layer first
        ET.SubElement(stack, "layer", {
            "name": _clean_name(layer.name),
            "src": src,
            "x": "0",
            "y": "0",
            "visibility": "visible" if layer.visible else "hidden",
            "opacity": repr(layer.opacity),
            "composite-op": "svg:src-over",
        })
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8")


def _zip_info(name: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def write_ora(path, layers: Sequence[Layer], size: Optional[tuple[int, int]] = None) -> str:
    """Write `layers` (bottom to top) as an OpenRaster file at `path`, atomically; returns the path.

    `size` is the canvas (width, height); by default the largest layer width and height. Layers sit at the
    origin; a layer larger than the canvas is kept whole in its PNG and cropped only in the merged image."""
    layers = list(layers)
    if not layers:
        raise ValueError("[LayerDiffuse] An OpenRaster file needs at least one layer.")
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"[LayerDiffuse] write_ora takes Layer objects, got {type(layer).__name__}.")
    size = _canvas_size(layers, size)
    srcs = [f"data/{stem}.png" for stem in _file_stems([l.name for l in layers])]
    merged = composite(layers, size)

    def write(raw):
        with zipfile.ZipFile(raw, "w") as zf:
            # first entry, stored, no extra field: the 30-byte local header is followed directly by the
            # name "mimetype" and the content "image/openraster"
            zf.writestr(_zip_info("mimetype", zipfile.ZIP_STORED), MIMETYPE)
            zf.writestr(_zip_info("stack.xml", zipfile.ZIP_DEFLATED), _stack_xml(layers, srcs, size))
            # PNG data is already deflated: storing it again compressed would only cost time
            for layer, src in zip(layers, srcs):
                zf.writestr(_zip_info(src, zipfile.ZIP_STORED), _png_bytes(_storable(layer.image)))
            zf.writestr(_zip_info("mergedimage.png", zipfile.ZIP_STORED), _png_bytes(merged))
            zf.writestr(_zip_info("Thumbnails/thumbnail.png", zipfile.ZIP_STORED), _png_bytes(thumbnail(merged)))

    return write_atomically(path, write)


# ----------------------------------------------------------------------------------------------- reading


def _read_image(zf: zipfile.ZipFile, src: str) -> Image.Image:
    with zf.open(src) as f:
        image = Image.open(io.BytesIO(f.read()))
        image.load()
    return image


def _float_attr(elem: ET.Element, name: str, default: float) -> float:
    try:
        value = float(elem.get(name, default))
    except ValueError:
        return default
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else default


def read_ora(path) -> tuple[tuple[int, int], list[ReadLayer]]:
    """Read an OpenRaster file: ((width, height), layers bottom to top as (name, visible, opacity, image)).

    Nested stacks (groups, written by other programs) are flattened: a layer counts as visible only when all its
    groups are, and its opacity is multiplied by theirs. A layer with a non-zero offset is returned placed on a
    transparent RGBA canvas of the image size; other layers come back exactly as stored."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if not names or names[0] != "mimetype" or zf.read("mimetype") != MIMETYPE:
            raise ValueError(f"[LayerDiffuse] {os.fspath(path)!r} is not an OpenRaster file (no leading mimetype).")
        root = ET.fromstring(zf.read("stack.xml"))
        if root.tag != "image":
            raise ValueError(f"[LayerDiffuse] {os.fspath(path)!r}: stack.xml has no <image> root.")
        size = (int(root.get("w")), int(root.get("h")))
        top_first: list[ReadLayer] = []

        def walk(stack: ET.Element, visible: bool, opacity: float):
            for elem in stack:
                vis = visible and elem.get("visibility", "visible") != "hidden"
                op = opacity * _float_attr(elem, "opacity", 1.0)
                if elem.tag == "stack":
                    walk(elem, vis, op)
                elif elem.tag == "layer":
                    image = _read_image(zf, elem.get("src"))
                    x, y = int(float(elem.get("x", 0))), int(float(elem.get("y", 0)))
                    if (x, y) != (0, 0):
                        placed = Image.new("RGBA", size, (0, 0, 0, 0))
                        placed.paste(image.convert("RGBA"), (x, y))
                        image = placed
                    top_first.append(ReadLayer(elem.get("name", ""), vis, op, image))

        for stack in root.findall("stack"):
            walk(stack, stack.get("visibility", "visible") != "hidden", _float_attr(stack, "opacity", 1.0))
    return size, top_first[::-1]


# ----------------------------------------------------------------------------------------------- builders


def _as_pil(image, mode: str, what: str) -> Image.Image:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"[LayerDiffuse] The {what} must be a PIL image or an array, got {type(image).__name__}.")
    return image if image.mode == mode else image.convert(mode)


def checkerboard_image(width: int, height: int) -> Image.Image:
    """The grey checkerboard of the preview as an RGB image (64-px squares, the top-left one dark)."""
    grey = (checkerboard(height, width) * np.float32(255.0)).astype(np.uint8)  # truncated, as the preview is
    return Image.fromarray(np.repeat(grey, 3, axis=2), "RGB")


def transparent_image_layers(rgba) -> list[Layer]:
    """A transparent result as layers: a hidden checkerboard to switch on for viewing, the image on top."""
    image = _as_pil(rgba, "RGBA", "transparent image")
    return [
        Layer("checkerboard", checkerboard_image(image.width, image.height), visible=False),
        Layer("transparent image", image),
    ]


def group_layers(fg=None, bg=None, blend=None) -> list[Layer]:
    """The images of a layer method, bottom to top: blended (hidden), background, foreground; missing ones skipped."""
    layers = []
    if blend is not None:
        layers.append(Layer("blended", _as_pil(blend, "RGB", "blended image"), visible=False))
    if bg is not None:
        layers.append(Layer("background", _as_pil(bg, "RGB", "background image")))
    if fg is not None:
        layers.append(Layer("foreground", _as_pil(fg, "RGBA", "foreground image")))
    return layers
