import base64
import io

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffusion.images.conditioning_images import (ResizeMode, conditioning_image, decode_base64_image,
                                                    flatten_over_grey, resize_image, to_pil, to_rgba_array)
from lib_layerdiffusion.errors import InvalidArgumentError


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_flatten_over_grey_uses_alpha():
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]], dtype=np.uint8)
    rgb = flatten_over_grey(rgba)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(rgb[0, 1], [0.5, 0.5, 0.5])
    a = 128 / 255
    np.testing.assert_allclose(rgb[0, 2], [0.5 - 0.5 * a, 0.5 - 0.5 * a, 0.5 + 0.5 * a], atol=1e-6)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "1", "CMYK"])
def test_any_pil_mode_becomes_rgba(mode):
    image = Image.new(mode, (10, 6))
    arr = to_rgba_array(image)
    assert arr.shape == (6, 10, 4) and arr.dtype == np.uint8


def test_16_bit_grey_is_scaled_not_clipped():
    data = np.full((4, 4), 32768, dtype=np.uint16)
    image = Image.fromarray(data, mode="I;16")
    arr = to_rgba_array(image)
    assert 125 <= arr[0, 0, 0] <= 130  # mid grey, where a plain convert() would give white
    assert arr[0, 0, 3] == 255


def test_palette_transparency_kept():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    image.info["transparency"] = 0
    assert to_rgba_array(image)[0, 0, 3] == 0


def test_base64_and_data_url_keep_alpha():
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 40))
    for text in (png_b64(image), "data:image/png;base64," + png_b64(image)):
        decoded = to_pil(text)
        assert decoded.mode == "RGBA" and decoded.getpixel((0, 0)) == (10, 20, 30, 40)


def test_bad_base64_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="fg_image could not be read"):
        decode_base64_image("not an image at all", "fg_image")


def test_numpy_inputs():
    assert to_pil(np.zeros((5, 7, 3), np.uint8)).size == (7, 5)
    assert to_pil(np.zeros((5, 7, 4), np.uint8)).mode == "RGBA"
    assert to_pil(np.zeros((5, 7), np.uint16)).size == (7, 5)
    assert to_pil(None) is None and to_pil("") is None


def test_unknown_type_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="must be an image"):
        to_pil(12, "bg_image")


def stripes(h, w):
    arr = np.zeros((h, w, 3), np.float32)
    arr[:, : w // 2] = 1.0
    return arr


def test_just_resize_stretches():
    out = resize_image(stripes(10, 20), ResizeMode.JUST_RESIZE, 40, 30)
    assert out.shape == (40, 30, 3)
    assert out[:, :10].mean() > 0.95 and out[:, -10:].mean() < 0.05


def test_crop_and_resize_covers_and_crops_centre():
    src = np.zeros((10, 40, 3), np.float32)
    src[:, 18:22] = 1.0  # a bar in the centre; the outer 15 columns each side are cropped away
    out = resize_image(src, ResizeMode.CROP_AND_RESIZE, 20, 20)
    assert out.shape == (20, 20, 3)
    assert out[:, 8:12].mean() > 0.9 and out[:, :3].mean() < 0.1 and out[:, -3:].mean() < 0.1


def test_resize_and_fill_pads_with_border_colour():
    src = np.full((10, 40, 3), 0.25, np.float32)
    out = resize_image(src, ResizeMode.RESIZE_AND_FILL, 40, 40)
    assert out.shape == (40, 40, 3)
    np.testing.assert_allclose(out[0, 0], [0.25] * 3, atol=1e-6)  # filled area
    np.testing.assert_allclose(out[20, 20], [0.25] * 3, atol=1e-3)


@pytest.mark.parametrize("mode", list(ResizeMode))
@pytest.mark.parametrize("size", [(744, 1000), (64, 64), (136, 200)])
def test_any_generation_size(mode, size):
    image = Image.new("RGBA", (33, 17), (200, 100, 50, 128))
    out = conditioning_image(image, mode, *size)
    assert out.shape == (*size, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
