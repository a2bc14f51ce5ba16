"""Mirrors modules/shared.py opts and OptionInfo (Forge Neo 6e1e0d5), with the defaults of the options
LayerDiffuse reads (modules/shared_options.py). Neo has no stealth infotext option."""
from modules import options

OptionInfo = options.OptionInfo  # shared.py:69

opts = options.Options({
    "samples_save": OptionInfo(True, "Automatically save every generated image"),  # shared_options.py:43
    "samples_format": OptionInfo("png", "Image Format"),  # shared_options.py:44 (jpg jpeg png webp jxl avif heif)
    "sd_vae_encode_method": OptionInfo("Full", "VAE for Encoding"),  # shared_options.py:265
    "sd_vae_decode_method": OptionInfo("Full", "VAE for Decoding"),  # shared_options.py:266
    "overlay_inpaint": OptionInfo(True, "For inpainting, overlay the resulting image back"),  # shared_options.py:289
    "enable_pnginfo": OptionInfo(True, "Write infotext to metadata of generated images"),  # shared_options.py:475
    "upscaler_for_img2img": OptionInfo(None, "Upscaler for img2img"),
})
