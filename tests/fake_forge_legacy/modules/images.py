"""modules/images.py of both hosts, lines as (bfee03d8 / 3b56b268): resize_image (force_RGBA in reForge only),
flatten and save_image (reForge writes the stealth infotext first when enable_pnginfo; bfee03d8 has none)."""
import os

from PIL import Image

import fake_host
from modules import script_callbacks
from modules.shared import opts

REFORGE = fake_host.is_reforge()


def _resize(resize_mode, im, width, height, mode):
    """The body both share (no upscaler set: every resize is a Lanczos resize): 0 stretch, 1 cover then
    centre-crop, 2 fit then fill the bands from the edge rows/columns."""
    if resize_mode == 0:
        return im.resize((width, height), resample=Image.LANCZOS)
    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=Image.LANCZOS)
    res = Image.new(mode, (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if resize_mode == 2:
        if ratio < src_ratio:
            fill_height = height // 2 - src_h // 2
            if fill_height > 0:
                res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                          box=(0, fill_height + src_h))
        elif ratio > src_ratio:
            fill_width = width // 2 - src_w // 2
            if fill_width > 0:
                res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                          box=(fill_width + src_w, 0))
    return res


if REFORGE:
    def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):  # :264 (3b56b268)
        if not force_RGBA and im.mode == 'RGBA':
            im = im.convert('RGB')
        return _resize(resize_mode, im, width, height, "RGBA" if force_RGBA else "RGB")
else:
    def resize_image(resize_mode, im, width, height, upscaler_name=None):  # :247 (bfee03d8): no force_RGBA
        return _resize(resize_mode, im, width, height, "RGB")  # modes 1 and 2 paste into an RGB canvas


def flatten(img, bgcolor):  # :790 / :888
    if img.mode == "RGBA":
        background = Image.new('RGBA', img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert('RGB')


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, p=None, suffix="",
               **kwargs):  # :575 / :659 (file name: a number, the seed, the suffix)
    os.makedirs(path, exist_ok=True)
    number = len([f for f in os.listdir(path) if f.endswith("." + extension)])
    pnginfo = {} if info is None else {"parameters": info}
    params = script_callbacks.ImageSaveParams(image, p, os.path.join(path, f"{number:05d}-{seed}{suffix}.{extension}"),
                                              pnginfo)
    if REFORGE and opts.enable_pnginfo:  # :741 (3b56b268)
        from modules import stealth_infotext
        stealth_infotext.add_stealth_pnginfo(params)
    script_callbacks.before_image_saved_callback(params)  # :657 / :744
    params.image.save(params.filename)
    script_callbacks.image_saved_callback(params)
    return params.filename, None
