"""Extras upscaling keeps transparency: the Extras script around a stand-in upscaler (colour only)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffusion.images.alpha_upscale import fit_alpha, restore_alpha, split_alpha

ROOT = Path(__file__).resolve().parents[1]


def rgba_shape(w=64, h=48):
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = (30, 200, 90)
    yy, xx = np.mgrid[:h, :w]
    arr[..., 3] = np.clip(255 - np.hypot(xx - w / 2, yy - h / 2) * 8, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGBA")


def test_split_and_restore_at_a_new_size():
    image = rgba_shape()
    rgb, alpha = split_alpha(image)
    assert rgb.mode == "RGB" and alpha.mode == "L"
    upscaled = rgb.resize((128, 96), Image.BICUBIC)
    out = restore_alpha(upscaled, alpha)
    assert out.mode == "RGBA" and out.size == (128, 96)
    expected = np.asarray(image.getchannel("A").resize((128, 96), Image.LANCZOS), np.float32)
    assert np.abs(np.asarray(out.getchannel("A"), np.float32) - expected).mean() < 0.5


def test_opaque_images_are_left_alone():
    rgb = Image.new("RGB", (8, 8))
    assert split_alpha(rgb) == (rgb, None)
    assert split_alpha(Image.new("RGBA", (8, 8), (1, 2, 3, 255)))[1] is None
    assert restore_alpha(rgb, None) is rgb


def test_cropped_upscale_crops_the_alpha_the_same_way():
    alpha = Image.new("L", (100, 50), 0)
    alpha.paste(255, (40, 0, 60, 50))  # a centred bar
    fitted = np.asarray(fit_alpha(alpha, (100, 100)))  # to a square: cover, then centre crop
    assert fitted.shape == (100, 100)
    assert fitted[:, 50].min() > 250 and fitted[:, 5].max() < 5


@pytest.fixture()
def extras_script(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_forge"))
    monkeypatch.syspath_prepend(str(ROOT))
    spec = importlib.util.spec_from_file_location("layerdiffuse_extras", ROOT / "scripts" / "layerdiffuse_extras.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LayerDiffuseKeepAlpha()


def test_extras_script_around_an_rgb_only_upscaler(extras_script):
    from modules.scripts_postprocessing import PostprocessedImage
    image = rgba_shape()
    pp = PostprocessedImage(image)
    extras_script.process_firstpass(pp)
    assert pp.image.mode == "RGB"  # what every upscaler gets
    pp.image = pp.image.resize((256, 192), Image.LANCZOS)  # the upscale operation (order 1000) runs here
    extras_script.process(pp)
    assert pp.image.mode == "RGBA" and pp.image.size == (256, 192)
    expected = np.asarray(image.getchannel("A").resize((256, 192), Image.LANCZOS), np.float32)
    assert np.abs(np.asarray(pp.image.getchannel("A"), np.float32) - expected).mean() < 0.5


def test_extras_setting_off_leaves_the_image_to_forge(extras_script):
    from modules.scripts_postprocessing import PostprocessedImage
    from modules.shared import opts
    opts.data["layerdiffuse_keep_alpha_upscaling"] = False
    try:
        pp = PostprocessedImage(rgba_shape())
        extras_script.process_firstpass(pp)
        assert pp.image.mode == "RGBA"
        extras_script.process(pp)
    finally:
        del opts.data["layerdiffuse_keep_alpha_upscaling"]
