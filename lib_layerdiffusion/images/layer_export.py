"""Telling the images of a layer method apart on disk, and writing one layered file per group.

Each image LayerDiffuse hands to Forge is tagged (PIL `info`) with its place in the generation and its layer;
the save hooks then add "-fg" / "-bg" / "-blend" to its file name and, when the group is complete, write the
layered files (OpenRaster, Photoshop) beside it holding the group's layers (and the input images the method was
given).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import layered_file as ora
from . import psd_file, sprite
from .conditioning_images import resize_image, to_rgba_array
from ..request.methods import Layer, Method

log = logging.getLogger(__name__)

INDEX_KEY = "layerdiffuse_index"
LAYER_KEY = "layerdiffuse_layer"


def names_layers(method: Method) -> bool:
    """Layer methods say which layer each file is; the transparent-image methods make just "the image"."""
    return bool(method.inputs) or method.group_size > 1


def tag(image: Image.Image, index: int, layer: Layer) -> None:
    image.info[INDEX_KEY] = str(index)
    image.info[LAYER_KEY] = layer.value


def tagged(image: Image.Image) -> tuple[int, Layer] | None:
    try:
        return int(image.info[INDEX_KEY]), Layer(image.info[LAYER_KEY])
    except (KeyError, ValueError, AttributeError):
        return None


def with_layer_suffix(filename: str, layer: Layer) -> str:
    stem, ext = os.path.splitext(filename)
    return f"{stem}-{layer.value}{ext}"


# the layered file formats, by file extension: writer(path, layers, size, infotext) -> path
FORMATS = ("ora", "psd")


def _write_ora(path: str, layers, size, infotext) -> str:
    return ora.write_ora(path, layers, size=size)  # OpenRaster has no standard place for metadata


def _write_psd(path: str, layers, size, infotext) -> str:
    return psd_file.write_psd(path, layers, size=size, infotext=infotext)


_WRITERS = {"ora": _write_ora, "psd": _write_psd}


@dataclass
class GroupCollector:
    """Per-request (lives on the processing object): the saved images of each group until it is complete."""
    method: Method
    inputs: dict  # Layer -> the RGBA input image as given
    resize_mode: str = "Crop and Resize"  # how the generation fitted the inputs
    formats: tuple = ("ora",)  # which layered files to write (FORMATS)
    groups: dict = field(default_factory=dict)  # group number -> {Layer: (image, saved path, index, infotext)}
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in _WRITERS]
        if unknown:
            raise ValueError(f"[LayerDiffuse] Unknown layered file format(s) {unknown}; known: {FORMATS}.")

    def add(self, index: int, layer: Layer, image: Image.Image, path: str, infotext: str | None = None
            ) -> tuple[str, ...]:
        """Record a saved image; when its group is complete, write the group's layered files and return their
        paths (none while the group is incomplete)."""
        group = index // self.method.group_size
        with self.lock:
            members = self.groups.setdefault(group, {})
            members[layer] = (image, path, index, infotext)
            if len(members) < self.method.group_size:
                return ()
            del self.groups[group]
        return self._write(members)

    def layer_stack(self, images: dict) -> tuple[list, tuple[int, int]]:
        """The layers (bottom to top) and canvas size of one group: `images` maps each frame's Layer to the image
        saved for it. A trimmed transparent image is put back in place on the full canvas."""
        images = {layer: _untrimmed(img) for layer, img in images.items()}
        size = next(iter(images.values())).size
        for layer, given in self.inputs.items():
            if layer not in images:  # a method's input image is one of the group's layers
                images[layer] = _fitted_rgba(given, size, self.resize_mode)
        if self.method.makes_transparent and len(images) == 1:
            return ora.transparent_image_layers(images[Layer.FOREGROUND]), size
        return ora.group_layers(fg=images.get(Layer.FOREGROUND), bg=images.get(Layer.BACKGROUND),
                                blend=images.get(Layer.BLEND)), size

    def _write(self, members: dict) -> tuple[str, ...]:
        layers, size = self.layer_stack({layer: img for layer, (img, *_) in members.items()})
        last_path = max(path for _, path, _, _ in members.values())
        # one infotext for the file: the group's first image's (the others differ only in their layer and seed)
        infotext = min(members.values(), key=lambda m: m[2])[3]
        stem = os.path.splitext(last_path)[0]
        for layer in Layer:
            stem = stem.removesuffix(f"-{layer.value}")
        written, failures = [], []
        for fmt in self.formats:  # one failing format must not keep the others from being written
            try:
                written.append(_WRITERS[fmt](f"{stem}.{fmt}", layers, size, infotext))
                log.info("[LayerDiffuse] Wrote layered file %s", written[-1])
            except Exception as error:
                log.error("[LayerDiffuse] Could not write the layered .%s file for %s: %s", fmt, last_path, error)
                failures.append(error)
        if failures:
            raise failures[0]
        return tuple(written)


def _untrimmed(image: Image.Image) -> Image.Image:
    box = sprite.trim_box_of(image)
    return image if box is None else sprite.untrim(image, box)


def _fitted_rgba(image: Image.Image, size: tuple[int, int], resize_mode: str) -> Image.Image:
    """An input image at the output size, alpha kept, fitted the way the generation fitted it."""
    arr = to_rgba_array(image).astype(np.float32) / 255.0
    fitted = resize_image(arr, resize_mode, size[1], size[0])
    return Image.fromarray(np.clip(fitted * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGBA")
