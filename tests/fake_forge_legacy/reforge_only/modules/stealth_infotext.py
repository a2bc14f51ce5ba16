"""modules/stealth_infotext.py (3b56b268 only; bfee03d8 has no such file). The option key is
'stealth_pnginfo_opt' (Forge main's is 'stealth_pnginfo_option'). "RGB" mode unpacks three values per pixel,
so it raises on an RGBA image; "Alpha" overwrites the alpha channel."""
from modules import shared


def add_stealth_pnginfo(params):  # :7
    stealth_pnginfo_opt = shared.opts.data.get('stealth_pnginfo_opt', 'Alpha')
    if not stealth_pnginfo_opt or stealth_pnginfo_opt == 'None':
        return
    if not params.filename.endswith(('.png', '.webp')) or params.pnginfo is None:
        return
    if 'parameters' not in params.pnginfo:
        return
    add_data(params, str(stealth_pnginfo_opt), True)


def add_data(params, mode='Alpha', compressed=True):  # :25 (only how it touches the pixels)
    if mode == 'Alpha':
        params.image.putalpha(255)  # :28, then the infotext goes into the alpha bits
        return
    r, g, b = params.image.load()[0, 0]  # :46 `r, g, b = values`: ValueError on an RGBA image
