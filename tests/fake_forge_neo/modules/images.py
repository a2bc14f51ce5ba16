"""Mirrors modules/images.py (Forge Neo 6e1e0d5) for what LayerDiffuse uses: resize_image (with force_RGBA; no
upscaler configured, so every resize is Lanczos), save_image (a numbered file, the before_image_saved / image_saved
callbacks around the write; no stealth infotext in Neo) and flatten."""
import os

from PIL import Image

from modules import script_callbacks
from modules.shared import opts

LANCZOS = Image.Resampling.LANCZOS


def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):  # images.py:256
    if not force_RGBA and im.mode == "RGBA":
        im = im.convert("RGB")
    upscaler_name = upscaler_name or opts.upscaler_for_img2img

    def resize(im, w, h):
        if upscaler_name is None or upscaler_name == "None" or im.mode == "L" or force_RGBA:
            return im.resize((w, h), resample=LANCZOS)
        raise NotImplementedError("no upscalers in the fake")

    if resize_mode == 0:
        res = resize(im, width, height)
    elif resize_mode == 1:
        ratio = width / height
        src_ratio = im.width / im.height
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = resize(im, src_w, src_h)
        res = Image.new("RGB" if not force_RGBA else "RGBA", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    else:
        ratio = width / height
        src_ratio = im.width / im.height
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
        resized = resize(im, src_w, src_h)
        res = Image.new("RGB" if not force_RGBA else "RGBA", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        if ratio < src_ratio:
            fill_height = height // 2 - src_h // 2
            if fill_height > 0:
                res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)), box=(0, fill_height + src_h))
        elif ratio > src_ratio:
            fill_width = width // 2 - src_w // 2
            if fill_width > 0:
                res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)), box=(fill_width + src_w, 0))
    return res


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    """images.py:629: `<number>-<seed><suffix>.<ext>` here; before_image_saved may change the file name."""
    os.makedirs(path, exist_ok=True)
    number = len([f for f in os.listdir(path) if f.endswith("." + extension)])
    fullfn = os.path.join(path, f"{number:05d}-{seed}{suffix}.{extension}")
    pnginfo = existing_info or {}
    if info is not None:
        pnginfo[pnginfo_section_name] = info
    params = script_callbacks.ImageSaveParams(image, p, fullfn, pnginfo)
    for callback in script_callbacks.callbacks["before_image_saved"]:
        callback(params)
    image = params.image
    params.image.save(params.filename)
    for callback in script_callbacks.callbacks["image_saved"]:
        callback(params)
    return params.filename, None


def flatten(img, bgcolor):  # images.py:860
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")
