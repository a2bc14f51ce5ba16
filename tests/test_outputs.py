"""The RGBA picture and the checkerboard preview made from a decoded transparent image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lib_layerdiffusion.errors import InvalidArgumentError
from lib_layerdiffusion.images.outputs import checkerboard, checkerboard_preview, rgba_image

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "transparent_vae.npz") as data:
        return {k: data[k] for k in ("decoder_sq128_tta_median", "postprocess_png_uint8", "postprocess_vis_uint8")}


def test_png_matches_reference_exactly(ref):
    image = rgba_image(torch.from_numpy(ref["decoder_sq128_tta_median"][0]))
    assert image.mode == "RGBA" and image.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(image), ref["postprocess_png_uint8"])


def test_preview_matches_reference_exactly(ref):
    image = checkerboard_preview(torch.from_numpy(ref["decoder_sq128_tta_median"][0]))
    assert image.mode == "RGB" and image.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(image), ref["postprocess_vis_uint8"])


def test_layouts_give_the_same_picture(ref):
    chw = ref["decoder_sq128_tta_median"][0]
    expected = ref["postprocess_png_uint8"]
    for decoded in (chw, chw.transpose(1, 2, 0), torch.from_numpy(chw)[None], torch.from_numpy(chw).half()):
        got = np.asarray(rgba_image(decoded))
        # fp16 input may move a value across an integer boundary.
        assert np.abs(got.astype(int) - expected).max() <= (1 if decoded.dtype == torch.float16 else 0)


def test_values_are_clipped_and_truncated():
    decoded = np.zeros((4, 2, 2), np.float32)
    decoded[0] = [[1.5, -0.5], [0.999, 0.5]]  # alpha
    decoded[1] = [[0.2, 0.2], [2.0, -1.0]]  # red
    png = np.asarray(rgba_image(decoded))
    np.testing.assert_array_equal(png[..., 3], [[255, 0], [254, 127]])
    np.testing.assert_array_equal(png[..., 0], [[51, 51], [255, 0]])


def test_checkerboard_squares_stay_64_pixels_on_odd_sizes():
    board = checkerboard(100, 150)[..., 0]
    dark, light = board[0, 0], board[0, 64]
    assert np.isclose(dark, 0.45) and np.isclose(light, 0.55)
    assert board[63, 63] == dark and board[64, 0] == light and board[64, 64] == dark
    assert board[99, 149] == light and board[0, 149] == dark  # partial squares at the edges


def test_preview_on_an_odd_size_shows_the_board_where_transparent():
    decoded = np.zeros((72, 130, 4), np.float32)  # fully transparent, channel-last
    vis = np.asarray(checkerboard_preview(decoded))
    assert vis.shape == (72, 130, 3)
    np.testing.assert_array_equal(vis[..., 0], (checkerboard(72, 130)[..., 0] * 255).astype(np.uint8))
    assert vis[0, 0, 0] == 114 and vis[0, 64, 0] == 140 and vis[71, 64, 0] == 114 and vis[71, 129, 0] == 140


def test_opaque_preview_is_the_colour():
    decoded = np.ones((4, 8, 8), np.float32)
    decoded[1:] = 0.5
    np.testing.assert_array_equal(np.asarray(checkerboard_preview(decoded)), 127)


@pytest.mark.parametrize("shape", [(3, 8, 8), (8, 8, 3), (2, 4, 8, 8), (8, 8)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(InvalidArgumentError):
        rgba_image(np.zeros(shape, np.float32))
