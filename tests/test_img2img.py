"""Transparent img2img: the offset lines up with what Forge encodes; regulation; inpaint merge."""
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lib_layerdiffusion.images.img2img import (aligned_rgba, grey_flattened, keep_unmasked, regulation_with_offsets,
                                        uncrop)

sys.path.insert(0, str(Path(__file__).parent / "fake_forge"))
from modules import images as forge_images  # noqa: E402  (the fake of modules/images.py)


def shape_image(w=96, h=64):
    """Transparent background, an opaque red rectangle off-centre."""
    arr = np.zeros((h, w, 4), np.uint8)
    arr[10:30, 12:50] = (255, 0, 0, 255)
    return Image.fromarray(arr, "RGBA")


def forge_encoded_image(init: Image.Image, resize_mode, crop_region, width, height):
    """What modules/processing.py StableDiffusionProcessingImg2Img.init does to an init image before encoding."""
    image = forge_images.flatten(grey_flattened(init), "#ffffff")
    if crop_region is None and resize_mode != 3:
        image = forge_images.resize_image(resize_mode, image, width, height)
    if crop_region is not None:
        image = forge_images.resize_image(2, image.crop(crop_region), width, height)
    return np.asarray(image)


def canvas_for(init, resize_mode, crop_region, width, height):
    if crop_region is None and resize_mode != 3:
        return forge_images.resize_image(resize_mode, init, width, height, force_RGBA=True)
    return init


def resize(mode, image, w, h):
    return forge_images.resize_image(mode, image.convert("RGBA"), w, h, force_RGBA=True)


@pytest.mark.parametrize("resize_mode, crop_region, size", [
    (0, None, (64, 64)), (1, None, (64, 64)), (2, None, (64, 64)), (1, None, (128, 48)), (2, None, (48, 128)),
    (3, None, (64, 48)), (0, (8, 4, 60, 40), (64, 64)), (0, (0, 0, 96, 64), (96, 64)),
])
def test_offset_input_lines_up_with_the_encoded_image(resize_mode, crop_region, size):
    width, height = size
    init = shape_image()
    encoded = forge_encoded_image(init, resize_mode, crop_region, width, height).astype(int)
    if resize_mode == 3:  # latent upscale: Forge encodes at the original size, the latent is resized after
        encoded = np.asarray(Image.fromarray(encoded.astype(np.uint8)).resize((width, height), Image.LANCZOS))
    alpha = aligned_rgba(canvas_for(init, resize_mode, crop_region, width, height), crop_region, width, height,
                         resize)[..., 3].astype(int)
    assert alpha.shape == (height, width)
    # away from the shape's edge (resampling blurs a pixel or two there)
    solid = cv2.erode((alpha > 230).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    clear = cv2.erode((alpha < 20).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert solid.sum() > 20 and clear.sum() > 20
    red = (encoded[..., 0] > 200) & (encoded[..., 1] < 60)
    grey = (np.abs(encoded - 128) < 20).all(axis=2)
    assert red[solid].mean() > 0.99  # where the RGBA is opaque, Forge encodes the red shape
    assert grey[clear].mean() > 0.99  # where it is transparent, Forge encodes mid-grey


def test_regulation_adds_offsets_row_by_row_across_chunks():
    offsets = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 4, 2, 2).clone()
    calls = []
    regulate = regulation_with_offsets(offsets, calls)
    posterior = SimpleNamespace(mean=torch.zeros(2, 4, 2, 2), std=torch.full((2, 4, 2, 2), 2.0))
    first = regulate(posterior)
    second = regulate(SimpleNamespace(mean=torch.zeros(1, 4, 2, 2), std=torch.ones(1, 4, 2, 2)))
    assert first[:, 0, 0, 0].tolist() == [0.0, 2.0] and second[:, 0, 0, 0].tolist() == [2.0]
    assert calls == [2, 1]
    resized = regulate(SimpleNamespace(mean=torch.zeros(1, 4, 4, 4), std=torch.ones(1, 4, 4, 4)))
    assert resized.shape == (1, 4, 4, 4)


def test_keep_unmasked_takes_colour_and_alpha_outside_the_mask():
    result = Image.new("RGBA", (8, 8), (0, 255, 0, 255))
    original = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))
    out = np.asarray(keep_unmasked(result, original, mask))
    assert tuple(out[0, 0]) == (0, 255, 0, 255) and tuple(out[0, 7]) == (255, 0, 0, 0)


def test_uncrop_pastes_back_at_the_crop():
    canvas = Image.new("RGBA", (40, 30), (1, 2, 3, 0))
    crop = Image.new("RGBA", (16, 16), (9, 9, 9, 255))
    out = np.asarray(uncrop(crop, canvas, (10, 5, 8, 8)))
    assert out[5, 10, 3] == 255 and out[12, 17, 3] == 255 and out[4, 10, 3] == 0 and out[5, 18, 3] == 0
