"""Colour padding of transparent pixels before the transparent encoder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lib_layerdiffusion.images.color_padding import pad_rgb
from lib_layerdiffusion.errors import InvalidArgumentError

FIXTURES = Path(__file__).parent / "fixtures"


def test_matches_reference():
    with np.load(FIXTURES / "transparent_vae.npz") as data:
        rgba, expected = data["encoder_rgba"], data["encoder_pad_rgb"]
    out = pad_rgb(rgba)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_opaque_pixels_keep_their_colour():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(33, 47, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    np.testing.assert_allclose(pad_rgb(rgba), rgba[..., :3] / 255.0, atol=1e-6)


def test_transparent_area_takes_the_visible_colour():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[20:40, 20:40] = (200, 100, 50, 255)  # one opaque colour; the rest is invisible
    out = pad_rgb(rgba)
    np.testing.assert_allclose(out, np.broadcast_to(np.array([200, 100, 50]) / 255.0, out.shape), atol=1e-5)


def test_fully_transparent_image_is_black():
    out = pad_rgb(np.zeros((16, 24, 4), np.uint8))
    assert out.shape == (16, 24, 3) and not out.any()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (3, 2), (2, 3), (17, 5)])
def test_tiny_and_thin_images(shape):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(*shape, 4), dtype=np.uint8)
    out = pad_rgb(rgba)
    assert out.shape == (*shape, 3) and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 3), np.uint8),
    np.zeros((8, 8), np.uint8),
    np.zeros((8, 8, 4), np.float32),
])
def test_refuses_non_rgba_uint8(bad):
    with pytest.raises(InvalidArgumentError):
        pad_rgb(bad)
