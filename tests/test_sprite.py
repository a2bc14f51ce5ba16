"""Sprite-ready output: trimming to the visible pixels plus a margin (and undoing it), and bleeding colour into
fully transparent pixels, on small hand-made images, pixel for pixel."""
import numpy as np
import pytest
from PIL import Image

from lib_layerdiffusion.errors import InvalidArgumentError
from lib_layerdiffusion.images import sprite
from lib_layerdiffusion.images.sprite import TrimBox

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def canvas(width, height, colour=(7, 8, 9)):
    """A fully transparent image whose invisible pixels carry `colour`."""
    arr = np.zeros((height, width, 4), np.uint8)
    arr[..., :3] = colour
    return arr


def test_trim_to_the_visible_pixels():
    arr = canvas(10, 8)
    arr[2, 3] = (*RED, 255)
    arr[5, 6] = (*BLUE, 1)  # barely visible still counts
    image, box = sprite.trim(Image.fromarray(arr))
    assert box == TrimBox(3, 2, 7, 6, 10, 8) and str(box) == "3,2,7,6 of 10x8"
    assert image.size == (4, 4)
    np.testing.assert_array_equal(np.asarray(image), arr[2:6, 3:7])


def test_trim_margin_is_clamped_to_the_image():
    arr = canvas(10, 8)
    arr[1, 8] = (*GREEN, 200)
    image, box = sprite.trim(Image.fromarray(arr), margin=2)
    assert box == TrimBox(6, 0, 10, 4, 10, 8)
    np.testing.assert_array_equal(np.asarray(image), arr[0:4, 6:10])
    image, box = sprite.trim(Image.fromarray(arr), margin=100)
    assert box == TrimBox(0, 0, 10, 8, 10, 8) and image.size == (10, 8)


def test_fully_transparent_and_fully_opaque_images():
    empty = Image.fromarray(canvas(6, 4))
    image, box = sprite.trim(empty, margin=3)
    assert box is None and np.array_equal(np.asarray(image), np.asarray(empty))
    full = np.full((4, 6, 4), 255, np.uint8)
    image, box = sprite.trim(Image.fromarray(full))
    assert box == TrimBox(0, 0, 6, 4, 6, 4) and np.array_equal(np.asarray(image), full)


def test_untrim_undoes_trim_exactly_for_the_visible_pixels():
    rng = np.random.default_rng(0)
    arr = canvas(16, 12)
    arr[3:9, 4:11] = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    arr[3:9, 4:11, 3] = np.maximum(arr[3:9, 4:11, 3], 1)
    trimmed, box = sprite.trim(Image.fromarray(arr), margin=1)
    assert box == TrimBox(3, 2, 12, 10, 16, 12)
    restored = np.asarray(sprite.untrim(trimmed, TrimBox.parse(str(box))))
    assert restored.shape == arr.shape
    np.testing.assert_array_equal(restored[2:10, 3:12], arr[2:10, 3:12])
    outside = np.ones(arr.shape[:2], bool)
    outside[2:10, 3:12] = False
    assert not restored[outside].any()  # transparent black where the crop removed transparent pixels
    with pytest.raises(InvalidArgumentError):
        sprite.untrim(Image.new("RGBA", (3, 3)), box)


def test_trim_box_text_and_checks():
    assert TrimBox.parse(" 1,2,3,4 of 5x6 ") == TrimBox(1, 2, 3, 4, 5, 6)
    for bad in ("1,2,3 of 5x6", "1,2,3,4", "a,b,c,d of 5x6"):
        with pytest.raises(InvalidArgumentError):
            TrimBox.parse(bad)
    with pytest.raises(InvalidArgumentError):
        TrimBox(3, 0, 3, 4, 5, 6)  # empty
    with pytest.raises(InvalidArgumentError):
        TrimBox(0, 0, 6, 4, 5, 6)  # outside the image
    with pytest.raises(InvalidArgumentError):
        sprite.trim(Image.fromarray(canvas(4, 4)), margin=-1)


def test_bleed_two_columns():
    arr = canvas(10, 3)
    arr[:, 0] = (*RED, 255)
    arr[:, 9] = (*BLUE, 128)
    out = np.asarray(sprite.bleed_colour(Image.fromarray(arr)))
    expected = arr.copy()
    expected[:, 1:5, :3] = RED  # x = 1..4 is nearer to column 0, x = 5..8 to column 9
    expected[:, 5:9, :3] = BLUE
    np.testing.assert_array_equal(out, expected)


def test_bleed_single_pixel_fills_everything_and_keeps_alpha():
    arr = canvas(7, 5)
    arr[4, 6] = (*GREEN, 3)
    out = np.asarray(sprite.bleed_colour(Image.fromarray(arr)))
    assert np.all(out[..., :3] == GREEN)
    np.testing.assert_array_equal(out[..., 3], arr[..., 3])


def test_bleed_quadrants():
    """Four visible pixels in the corners of a 9x9 image: each transparent pixel strictly nearer to one corner
    takes its colour; visible and semi-transparent pixels keep theirs."""
    colours = {(0, 0): RED, (0, 8): GREEN, (8, 0): BLUE, (8, 8): (10, 20, 30)}
    arr = canvas(9, 9)
    for (y, x), colour in colours.items():
        arr[y, x] = (*colour, 255)
    arr[4, 4] = (200, 100, 50, 0)  # the centre is equidistant from all: only checked to be one of them
    out = np.asarray(sprite.bleed_colour(Image.fromarray(arr)))
    for y in range(9):
        for x in range(9):
            distances = {c: np.hypot(y - cy, x - cx) for (cy, cx), c in colours.items()}
            ranked = sorted(distances.values())
            if ranked[0] < ranked[1]:
                assert tuple(out[y, x, :3]) == min(distances, key=distances.get), (y, x)
            else:
                assert tuple(out[y, x, :3]) in [c for c, d in distances.items() if d == ranked[0]], (y, x)
    np.testing.assert_array_equal(out[..., 3], arr[..., 3])


def test_bleed_random_image_matches_brute_force_nearest():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (24, 31, 4), dtype=np.uint8)
    arr[..., 3] = np.where(rng.random((24, 31)) < 0.93, 0, arr[..., 3] | 1)
    out = np.asarray(sprite.bleed_colour(Image.fromarray(arr)))
    vy, vx = np.nonzero(arr[..., 3] > 0)
    for y, x in zip(*np.nonzero(arr[..., 3] == 0)):
        d = np.hypot(vy - y, vx - x)
        chosen = [i for i in range(len(vy)) if np.array_equal(arr[vy[i], vx[i], :3], out[y, x, :3])]
        assert chosen, (y, x)
        # OpenCV's 5x5-mask Euclidean distance is within 2% of the true one
        assert min(d[chosen]) <= d.min() * 1.02 + 1e-9, (y, x)
    visible = arr[..., 3] > 0
    np.testing.assert_array_equal(out[visible], arr[visible])
    np.testing.assert_array_equal(out[..., 3], arr[..., 3])


def test_bleed_leaves_an_empty_image_alone():
    arr = canvas(5, 5, colour=(1, 2, 3))
    np.testing.assert_array_equal(np.asarray(sprite.bleed_colour(Image.fromarray(arr))), arr)


def test_sprite_ready_trims_then_bleeds_and_tags_the_box():
    arr = canvas(12, 10)
    arr[3, 4] = (*RED, 255)
    arr[6, 8] = (*BLUE, 255)
    image, box = sprite.sprite_ready(Image.fromarray(arr), trim_margins=True, margin=1, bleed=True)
    assert box == TrimBox(3, 2, 10, 8, 12, 10) and sprite.trim_box_of(image) == box
    # the same as bleeding the whole image and cropping it
    full = np.asarray(sprite.bleed_colour(Image.fromarray(arr)))
    np.testing.assert_array_equal(np.asarray(image), full[2:8, 3:10])
    image, box = sprite.sprite_ready(Image.fromarray(arr), trim_margins=False, margin=1, bleed=True)
    assert box is None and sprite.trim_box_of(image) is None and image.size == (12, 10)
    untouched = Image.fromarray(arr)
    image, box = sprite.sprite_ready(untouched, trim_margins=False, margin=0, bleed=False)
    assert image is untouched and box is None
