"""Telling the images of a layer method apart on disk, and writing one layered file per group.

Each image LayerDiffuse hands to Forge is tagged (PIL `info`) with its place in the generation and its layer;
the save hooks then add "-fg" / "-bg" / "-blend" to its file name and, when the group is complete, write an
OpenRaster file beside it holding the group's layers (and the input images the method was given).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import layered_file as ora
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


@dataclass
class GroupCollector:
    """Per-request (lives on the processing object): the saved images of each group until it is complete."""
    method: Method
    inputs: dict  # Layer -> the RGBA input image as given
    resize_mode: str = "Crop and Resize"  # how the generation fitted the inputs
    groups: dict = field(default_factory=dict)  # group number -> {Layer: (image, saved path)}
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, index: int, layer: Layer, image: Image.Image, path: str) -> str | None:
        """Record a saved image; when its group is complete, write the group's .ora and return its path."""
        group = index // self.method.group_size
        with self.lock:
            members = self.groups.setdefault(group, {})
            members[layer] = (image, path)
            if len(members) < self.method.group_size:
                return None
            del self.groups[group]
        return self._write(members)

    def _write(self, members: dict) -> str:
        size = next(iter(members.values()))[0].size
        images = {layer: img for layer, (img, _) in members.items()}
        for layer, given in self.inputs.items():
            if layer not in images:  # a method's input image is one of the group's layers
                images[layer] = _fitted_rgba(given, size, self.resize_mode)
        if self.method.makes_transparent and len(images) == 1:
            layers = ora.transparent_image_layers(images[Layer.FOREGROUND])
        else:
            layers = ora.group_layers(fg=images.get(Layer.FOREGROUND), bg=images.get(Layer.BACKGROUND),
                                      blend=images.get(Layer.BLEND))
        last_path = max(path for _, path in members.values())
        stem = os.path.splitext(last_path)[0]
        for layer in Layer:
            stem = stem.removesuffix(f"-{layer.value}")
        path = ora.write_ora(stem + ".ora", layers, size=size)
        log.info("[LayerDiffuse] Wrote layered file %s", path)
        return path


def _fitted_rgba(image: Image.Image, size: tuple[int, int], resize_mode: str) -> Image.Image:
    """An input image at the output size, alpha kept, fitted the way the generation fitted it."""
    arr = to_rgba_array(image).astype(np.float32) / 255.0
    fitted = resize_image(arr, resize_mode, size[1], size[0])
    return Image.fromarray(np.clip(fitted * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGBA")
