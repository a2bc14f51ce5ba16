"""Mirrors modules/images.py for what LayerDiffuse uses: resize_image (mode 0 stretch, 1 cover then centre-crop,
2 fit then fill the bands by stretching the edge rows/columns) and flatten. Resampling is Lanczos, as Forge does
with force_RGBA or without an img2img upscaler."""
from PIL import Image


def _fitted_size(src_w, src_h, width, height, cover):
    # integer sizes as Forge computes them: one side exact, the other scaled with floor division
    wider = width / height > src_w / src_h
    if wider == cover:
        return width, src_h * width // src_w
    return src_w * height // src_h, height


def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
    if not force_RGBA and im.mode == "RGBA":
        im = im.convert("RGB")
    if resize_mode == 0:
        return im.resize((width, height), resample=Image.LANCZOS)
    w, h = _fitted_size(im.width, im.height, width, height, cover=(resize_mode == 1))
    scaled = im.resize((w, h), resample=Image.LANCZOS)
    out = Image.new("RGBA" if force_RGBA else "RGB", (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2
    out.paste(scaled, box=(left, top))
    if resize_mode == 2:
        if h < height and top > 0:  # bands above and below
            out.paste(scaled.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(scaled.resize((width, top), box=(0, h, width, h)), box=(0, top + h))
        elif w < width and left > 0:  # bands left and right
            out.paste(scaled.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(scaled.resize((left, height), box=(w, 0, w, height)), box=(left + w, 0))
    return out


def flatten(img, bgcolor):
    """Transparency replaced by bgcolor, RGB out."""
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, p=None, suffix="",
               **kwargs):
    """modules/images.py save_image: a numbered file name, before_image_saved may rename it, then the file is
    written and image_saved is called."""
    import os
    from modules import script_callbacks
    os.makedirs(path, exist_ok=True)
    number = len([f for f in os.listdir(path) if f.endswith("." + extension)])
    params = script_callbacks.ImageSaveParams(image, p, os.path.join(path, f"{number:05d}-{seed}{suffix}.{extension}"),
                                              {"parameters": info})
    from modules.shared import opts
    if opts.enable_pnginfo and opts.data.get("stealth_pnginfo_option", "Alpha") == "Alpha" and image.mode == "RGBA":
        image.putalpha(255)  # modules/stealth_infotext.py add_data: the infotext goes into the alpha bits, in place
    for callback in script_callbacks.callbacks["before_image_saved"]:
        callback(params)
    image.save(params.filename)
    for callback in script_callbacks.callbacks["image_saved"]:
        callback(params)
    return params.filename, None
