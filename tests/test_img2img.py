"""Transparent img2img: the offset lines up with what Forge encodes; regulation; inpaint merge."""
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lib_layerdiffusion.errors import InvalidArgumentError
from lib_layerdiffusion.images.img2img import (aligned_rgba, cover_resize, grey_flattened, init_canvas, keep_unmasked,
                                               native_encode_rgba, regulation_with_offsets, uncrop)

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


@pytest.mark.parametrize("resize_mode, crop_region, size, init_size", [
    (0, None, (64, 64), (96, 64)), (1, None, (64, 64), (96, 64)), (2, None, (64, 64), (96, 64)),
    (1, None, (128, 48), (96, 64)), (2, None, (48, 128), (96, 64)), (3, None, (64, 48), (96, 64)),
    (3, None, (64, 48), (100, 70)), (0, (8, 4, 60, 40), (64, 64), (96, 64)), (0, (0, 0, 96, 64), (96, 64), (96, 64)),
])
def test_offset_input_lines_up_with_the_encoded_image(resize_mode, crop_region, size, init_size):
    width, height = size
    init = shape_image(*init_size)
    encoded = forge_encoded_image(init, resize_mode, crop_region, width, height).astype(int)
    canvas = init_canvas(init, resize_mode, crop_region, width, height, resize)
    assert canvas.size == np.asarray(canvas_for(init, resize_mode, crop_region, width, height)).shape[1::-1]
    alpha = aligned_rgba(canvas, crop_region, width, height, resize, resize_mode=resize_mode)[..., 3].astype(int)
    if resize_mode == 3:  # latent upscale: Forge encodes at the init image's own size (whole latent cells)
        width, height = init_size[0] // 8 * 8, init_size[1] // 8 * 8
        encoded = encoded[:height, :width]
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
    # a tile of a tiled encode: the whole image's offset cannot be split, so it is declined and recorded as 0
    assert regulate(SimpleNamespace(mean=torch.zeros(1, 4, 4, 4), std=torch.ones(1, 4, 4, 4))) is None
    assert calls == [2, 1, 0]


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


# ---- grey level: A1111's flatten over (127, 127, 127) ------------------------------------------------------

def test_grey_flattened_is_a1111_flatten_over_127():
    arr = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [255, 0, 0, 128], [0, 0, 255, 64], [200, 100, 50, 1],
                     [10, 20, 30, 254]]], np.uint8)
    out = grey_flattened(Image.fromarray(arr, "RGBA"))
    assert out.mode == "RGB"
    assert np.asarray(out).tolist() == [[[127, 127, 127], [255, 0, 0], [191, 63, 63], [95, 95, 159],
                                         [127, 127, 127], [10, 20, 30]]]
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (37, 23, 4), dtype=np.uint8), "RGBA")
    assert np.array_equal(np.asarray(grey_flattened(noisy)), np.asarray(forge_images.flatten(noisy, (127, 127, 127))))
    opaque = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), "RGB")
    assert np.array_equal(np.asarray(grey_flattened(opaque)), np.asarray(opaque))
    # a greyscale-with-alpha PNG keeps its transparency (flatten alone would drop it: it only handles RGBA)
    la = Image.fromarray(np.array([[[255, 0], [0, 255]]], np.uint8), "LA")
    assert np.asarray(grey_flattened(la)).tolist() == [[[127, 127, 127], [0, 0, 0]]]


# ---- latent upscale: the offset from the init image's own size ---------------------------------------------

def test_latent_upscale_encodes_the_init_image_at_its_own_size():
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 256, (70, 100, 4), dtype=np.uint8), "RGBA")
    canvas = init_canvas(init, 3, None, 64, 48, resize)
    assert canvas.size == (100, 70)  # not resized to the generation size
    rgba = aligned_rgba(canvas, None, 64, 48, resize, resize_mode=3)
    assert rgba.shape == (64, 96, 4) and np.array_equal(rgba, np.asarray(init)[:64, :96])
    # other modes: resized to the generation size first
    assert init_canvas(init, 0, None, 64, 48, resize).size == (64, 48)
    assert aligned_rgba(init_canvas(init, 1, None, 64, 48, resize), None, 64, 48, resize, 1).shape == (48, 64, 4)
    # an inpaint crop wins over latent upscale, as in Forge
    assert init_canvas(init, 3, (0, 0, 50, 40), 64, 48, resize).size == (100, 70)
    assert aligned_rgba(init, (0, 0, 50, 40), 64, 48, resize, resize_mode=3).shape == (48, 64, 4)
    with pytest.raises(InvalidArgumentError, match="at least 8x8"):
        native_encode_rgba(Image.new("RGBA", (7, 30)))


def test_latent_upscale_offset_has_the_posterior_size_of_forges_vae():
    # backend/nn/vae.py Downsample: pad (0, 1, 0, 1), 3x3 conv, stride 2 -> floor(H/2); three of them: floor(H/8)
    x = torch.zeros(1, 1, 70, 100)
    conv = torch.nn.Conv2d(1, 1, 3, stride=2)
    for _ in range(3):
        x = conv(F.pad(x, (0, 1, 0, 1)))
    rgba = aligned_rgba(Image.new("RGBA", (100, 70)), None, 64, 48, resize, resize_mode=3)
    offset_hw = (rgba.shape[0] // 8, rgba.shape[1] // 8)
    assert tuple(x.shape[2:]) == offset_hw == (8, 12)
    offsets = torch.randn(1, 4, *offset_hw)
    calls = []
    z = regulation_with_offsets(offsets, calls)(SimpleNamespace(mean=torch.zeros(1, 4, 8, 12),
                                                                std=torch.ones(1, 4, 8, 12)))
    assert torch.equal(z, offsets)  # added as is, not resampled


# ---- inpaint only masked: the decoded crop into the canvas ---------------------------------------------------

def test_cover_resize_is_forges_mode_1():
    rng = np.random.default_rng(2)
    crop = Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA")
    for w, h in [(30, 20), (20, 30), (32, 24), (64, 48), (100, 40)]:
        ours = cover_resize(crop, w, h)
        assert ours.size == (w, h)
        assert np.array_equal(np.asarray(ours), np.asarray(forge_images.resize_image(1, crop, w, h, force_RGBA=True)))
