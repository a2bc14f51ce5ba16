"""One LayerDiffuse generation, step by step, against a host bridge (see hosts/).

The Forge script calls these from its hooks; all per-request state lives in a frozen `Generation` stored on the
processing object, never on the script or in module globals, so concurrent or consecutive requests cannot
change each other.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .request.args import LayerDiffuseArgs
from .images import layer_export
from .images.conditioning_images import to_pil
from .errors import LayerDiffuseError
from .hosts.apply_plan import apply_plan
from .plan import plan_sampling
from .request.infotext import infotext_fields
from .networks.model_store import ModelStore
from .images.img2img import (InitTransparency, aligned_rgba, grey_flattened, init_canvas, keep_unmasked,
                             regulation_with_offsets, uncrop)
from .images.outputs import checkerboard_preview_of, rgba_image
from .networks.transparent_vae import TransparentDecoder, load_transparent_decoder, load_transparent_encoder
from .request.settings import Settings
from .request.validation import LATENT_CHANNELS, check_request
from .request.xyz_axes import with_override

log = logging.getLogger(__name__)

# formats that keep an alpha channel (Neo adds jxl, avif and heif to Forge's png and webp)
ALPHA_FORMATS = ("png", "webp", "jxl", "avif", "heif", "heic")
STATE_ATTR = "layerdiffuse_generation"  # the attribute of the processing object holding this request's state
INIT_ATTR = "layerdiffuse_init"  # img2img: the init images' transparency
DECODED_ATTR = "layerdiffuse_decoded_latents"  # raw latent batches the VAE decoded in the current sampling
PIXELS_ATTR = "layerdiffuse_sampled_pixels"  # index -> the VAE's decoded image, before any inpaint overlay
LAYERS_ATTR = "layerdiffuse_layers"  # the per-request GroupCollector of saved images (layered files)
ALPHAS_ATTR = "layerdiffuse_alphas"  # id(RGBA image handed to Forge) -> its alpha channel
LAYER_INFOTEXT_KEY = "layerdiffusion_layer"  # which layer (fg / bg / blend) an image of a layer method is


@dataclass(frozen=True)
class Generation:
    args: LayerDiffuseArgs
    settings: Settings = Settings()

    @property
    def decoder_passes(self) -> int:
        return self.settings.decoder_passes


def begin(p, script_args: tuple, bridge, store: ModelStore, settings: Settings = Settings()) -> Generation | None:
    """Parse and check the arguments and fetch the model files, before anything is sampled. Returns None when
    LayerDiffuse is off (then nothing else happens). Raises LayerDiffuseError for anything the user must fix."""
    # an X/Y/Z plot cell's values over the request's (request/xyz_axes.py)
    args = with_override(p, LayerDiffuseArgs.from_script_args(*script_args))
    if not args.enabled:
        return None
    method = args.method
    check_request(args, bridge.base_model(p.sd_model), int(p.batch_size), bridge.latent_channels(p.sd_model))
    if getattr(p, "init_images", None) and method.makes_transparent and not bridge.has_init_images_hook():
        raise LayerDiffuseError(
            "[LayerDiffuse] Transparent img2img needs a newer Forge: this one has no hook where the init image's "
            "transparency can reach the sampler (before_process_init_images, missing in old Forge 'previous' and "
            "other A1111 1.8-based builds). Use txt2img, or update to Forge, Forge Neo or reForge.")
    log.info("[LayerDiffuse] %s, weight %g, stop at %g", method.value, args.weight, args.ending_step)
    # fetch (and if need be download) every file now: a missing or damaged file stops the generation with its
    # message before any sampling, instead of failing half-way or silently giving an opaque image
    store.load(method.model_file)
    if method.makes_transparent:
        store.path(method.decoder_file)
    p.extra_generation_params.update(infotext_fields(args))
    if layer_export.names_layers(method) and bridge.infotext_takes_callables():
        # per image (Forge calls it with the image's index): the caption of each result says which layer it is
        p.extra_generation_params[LAYER_INFOTEXT_KEY] = lambda index=0, **_: method.frame_of(int(index or 0)).value
    else:
        # the X/Y/Z plot's cells share one extra_generation_params dict (a shallow copy of p per cell): a layer
        # method's caption in an earlier cell must not label this one
        p.extra_generation_params.pop(LAYER_INFOTEXT_KEY, None)
    device, _ = bridge.compute_device_and_dtype(settings.decoder_precision)
    p.extra_generation_params.update(settings.infotext_fields(on_gpu=device.type != "cpu"))
    if method.makes_transparent and bridge.stealth_infotext_mode() == "RGB":
        raise LayerDiffuseError(
            "[LayerDiffuse] Forge's 'Stealth infotext mode' is RGB, which cannot save transparent images: set it to "
            "Alpha or None in Settings.")
    if method.makes_transparent and bridge.output_format() not in ALPHA_FORMATS:
        bridge.tell_user(p, f"[LayerDiffuse] Images are saved as {bridge.output_format().upper()}, which has no "
                            f"transparency: set Settings → Saving images → File format to png.")
    return Generation(args=args, settings=settings)


def patch_unet(p, gen: Generation, bridge, store: ModelStore, noise_shape: tuple[int, ...]) -> None:
    """Install this sampling's patched clone of the UNet (called before every sampling, also the hires pass)."""
    main_prompt = p.prompts[0] if getattr(p, "prompts", None) else p.prompt
    plan = plan_sampling(gen.args, noise_shape, main_prompt)
    decoded = apply_plan(p, plan, bridge, store, gen.args.method.base.value)
    if decoded is not None:
        setattr(p, DECODED_ATTR, decoded)


def record_decodes_on_current_model(p, gen: Generation, bridge) -> None:
    """post_sample (after sampling, before Forge decodes): a refiner switch (modules/sd_samplers_common.py
    apply_refiner on every Forge) loads the refiner checkpoint as a new model in the middle of sampling, and
    p.sd_model (shared.sd_model) is then that model, whose VAE does not record for us: without this the
    transparent decoder would get no latent. Record on whichever model decodes now (a no-op without a switch).
    LayerDiffuse's patches live on the base model's UNet clone, so they applied to the steps before the switch,
    as Stop At would."""
    sink = getattr(p, DECODED_ATTR, None)
    if sink is None or not gen.args.method.makes_transparent:
        return
    bridge.record_vae_decodes(p, sink)


def prepare_init_images(p, gen: Generation, bridge, store: ModelStore, crop_region) -> None:
    """img2img / inpaint, before Forge encodes the init images: grey-flatten them for the VAE and install, on a
    copy of the VAE, the regulation that adds each image's transparency offset to its latent."""
    method = gen.args.method
    if not method.makes_transparent:
        return
    originals = [to_pil(image, "init image") for image in p.init_images]
    # flattened over grey whatever the encoder: Forge would flatten transparent parts with its background colour
    p.init_images = [grey_flattened(image) for image in originals]
    if not bridge.vae_encode_is_full():
        bridge.tell_user(p, "[LayerDiffuse] The init image's transparency is not used: set 'VAE type for encode' "
                            "to Full in Settings (a TAESD encode cannot carry it).")
        return
    width, height = int(p.width), int(p.height)
    canvases = tuple(init_canvas(image, p.resize_mode, crop_region, width, height, bridge.resize_image)
                     for image in originals)
    device, dtype = bridge.compute_device_and_dtype(gen.settings.decoder_precision)
    encoder = _built.get(store, method.encoder_file, device, dtype, load_transparent_encoder)
    offsets = torch.cat([
        encoder.encode(aligned_rgba(canvas, crop_region, width, height, bridge.resize_image, p.resize_mode)).float().cpu()
        for canvas in canvases])
    calls: list[int] = []
    if not bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls)):
        raise LayerDiffuseError(
            f"[LayerDiffuse] Transparent img2img is not available here: the VAE of this checkpoint in "
            f"{bridge.NAME} cannot take the init image's transparency. Use txt2img, or an opaque init image.")
    setattr(p, INIT_ATTR, InitTransparency(canvases, tuple(crop_region) if crop_region else None, calls))


def check_init_offsets_applied(p, bridge) -> None:
    """After Forge encoded the init images: if the regulation never ran (tiled VAE encode, e.g. after running out
    of memory), the result would be silently opaque, so tell the user."""
    init = getattr(p, INIT_ATTR, None)
    if init is not None and (not init.regulation_calls or 0 in init.regulation_calls):
        bridge.tell_user(p, "[LayerDiffuse] Forge encoded the init image without the transparency offset (tiled "
                            "VAE encode); the result's alpha will not follow the input. Use a smaller image or "
                            "free some memory.")


def record_pixels(p, gen: Generation, bridge, pp) -> None:
    """postprocess_image: keep the image the VAE decoded (generation size, before any inpaint overlay), which is
    what the transparent decoder reads with its latent."""
    if not gen.args.method.makes_transparent:
        return
    pixels = getattr(p, PIXELS_ATTR, None)
    if pixels is None:
        pixels = {}
        setattr(p, PIXELS_ATTR, pixels)
    pixels[bridge.image_index(p, pp, "postprocess_image")] = pp.image.copy()


def decode_transparent(p, gen: Generation, bridge, store: ModelStore, index: int, composed: Image.Image
                       ) -> tuple[Image.Image, Image.Image] | None:
    """The RGBA image and its checkerboard preview for the image at `index` of this generation, or None when
    that image is not a transparent one (blend / background frames stay as they are). `composed` is what Forge
    made of it (the full canvas after an inpaint overlay)."""
    method = gen.args.method
    if not method.is_transparent_frame(index):
        return None
    pixel = (getattr(p, PIXELS_ATTR, None) or {}).get(index, composed).convert("RGB")
    latent = _final_latent(p, index, pixel.size, LATENT_CHANNELS[method.base])
    log.info("[LayerDiffuse] Image %d: transparent decode from latent %s: mean %.6f, std %.6f", index,
             tuple(latent.shape), latent.mean().item(), latent.std().item())
    device, dtype = bridge.compute_device_and_dtype(gen.settings.decoder_precision)
    decoder = _built.get(store, method.decoder_file, device, dtype, load_transparent_decoder)
    rgba = rgba_image(_decode(decoder, pixel, latent, gen))
    init = getattr(p, INIT_ATTR, None)
    if init is not None:
        # img2img: this image's own init image (one init image serves the whole batch)
        canvas = init.canvases[(index % int(p.batch_size)) % len(init.canvases)]
        paste_to = getattr(p, "paste_to", None)
        if init.crop_region is not None and paste_to is not None:
            rgba = uncrop(rgba, canvas, paste_to, bridge.resize_image)  # inpaint only masked: the crop back into the full canvas
        if bridge.read_option("overlay_inpaint", True) and getattr(p, "mask_for_overlay", None) is not None:
            rgba = keep_unmasked(rgba, canvas, p.mask_for_overlay)  # as Forge's overlay keeps it
    return rgba, checkerboard_preview_of(rgba)


def _final_latent(p, index: int, size: tuple[int, int], channels: int) -> torch.Tensor:
    """The raw latent (what the VAE's decode received) of the image at `index` of the current batch: the last
    batch_size rows the VAE decoded in this sampling (Forge decodes the final latents last, after any hires
    first pass or preview)."""
    rows: list[torch.Tensor] = []
    batch = int(p.batch_size)
    for decoded in reversed(getattr(p, DECODED_ATTR, None) or []):  # the last `batch` rows, newest last
        rows[:0] = list(decoded)
        if len(rows) >= batch:
            return rows[len(rows) - batch + index % batch]
    log.warning("[LayerDiffuse] No decoded latent was seen for image %d; decoding from the image alone.", index)
    return torch.zeros((channels, size[1] // 8, size[0] // 8))  # unknown: decode from the pixels alone


def _decode(decoder: TransparentDecoder, pixel: Image.Image, latent: torch.Tensor, gen: Generation) -> torch.Tensor:
    """(4,H,W) alpha-first in [0,1] from an RGB picture and its (C,H/8,W/8) latent."""
    pixel_t = torch.from_numpy(np.asarray(pixel, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    height, width = pixel_t.shape[2:]
    if height % 8 or width % 8:
        raise LayerDiffuseError(f"[LayerDiffuse] Image size {width}x{height} is not a multiple of 8.")
    latent_t = latent[None]
    if latent_t.shape[2:] != (height // 8, width // 8):
        # the pixels are not this latent's decode: decode from the pixels alone
        log.warning("[LayerDiffuse] Latent %s does not match image %dx%d; decoding from the image alone.",
                    tuple(latent_t.shape[2:]), width, height)
        latent_t = torch.zeros((1, latent_t.shape[1], height // 8, width // 8))
    return decoder.decode(pixel_t, latent_t, passes=gen.decoder_passes)[0].float().cpu()


class _BuiltModels:
    """Built transparent decoders / encoders kept between generations, keyed by file identity, device and dtype
    (a replaced file is rebuilt). Bounded and thread-safe; holds no per-request state."""

    def __init__(self, size: int = 2):
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, store: ModelStore, name: str, device, dtype, loader):
        path = store.path(name)
        st = os.stat(path)
        key = (loader.__name__, path, st.st_size, st.st_mtime_ns, str(device), dtype)  # one file may hold both nets
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        # built from the file, not through the store's cache, which is kept for the big UNet patch files
        model = loader(path, device=device, dtype=dtype)
        with self._lock:
            self._items[key] = model
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return model


_built = _BuiltModels(size=3)


def finish_image(p, gen: Generation, bridge, store: ModelStore, pp) -> None:
    """After Forge composed an image: put the RGBA in its place (what Forge saves and shows first), queue the
    preview, and tag the image with its layer for naming and layered files."""
    index = bridge.image_index(p, pp, "postprocess_image_after_composite")
    result = decode_transparent(p, gen, bridge, store, index, pp.image)
    mat = (getattr(p, PIXELS_ATTR, None) or {}).get(index)
    if gen.args.output_origin and mat is not None:
        # as the first version did: each result's plain VAE decode, the RGB "mat" its alpha is decoded from
        p.extra_result_images.append(mat.convert("RGB"))
    if result is not None:
        pp.image, preview = result
        # Forge's stealth infotext (Alpha mode) overwrites the alpha of the image it saves; keep it to restore
        alphas = getattr(p, ALPHAS_ATTR, None)
        if alphas is None:
            alphas = {}
            setattr(p, ALPHAS_ATTR, alphas)
        alphas[id(pp.image)] = pp.image.getchannel("A")
        p.extra_result_images.append(preview)
        if gen.settings.save_preview:
            bridge.save_extra_image(p, preview, index, "-preview")
        if gen.settings.save_rgba_when_grid_only and not p.save_samples():
            bridge.save_extra_image(p, pp.image, index, "", even_if_grid_only=True)
    if layer_export.names_layers(gen.args.method) or gen.settings.save_layered_file:
        layer_export.tag(pp.image, index, gen.args.method.frame_of(index))


def before_save(p, image, filename: str) -> str | None:
    """Forge is about to save `image` (after its stealth infotext step): give a transparent image its alpha back,
    and return the file name for the layer methods' files, which say which layer they hold."""
    alpha = (getattr(p, ALPHAS_ATTR, None) or {}).get(id(image)) if p is not None else None
    if alpha is not None and image.mode == "RGBA":
        image.putalpha(alpha)
    gen, tagged = getattr(p, STATE_ATTR, None), layer_export.tagged(image)
    if gen is None or tagged is None or not layer_export.names_layers(gen.args.method):
        return None
    return layer_export.with_layer_suffix(filename, tagged[1])


def image_saved(p, image, filename: str) -> None:
    """Forge saved `image`: collect it, and write the group's layered file once the group is complete."""
    gen, tagged = getattr(p, STATE_ATTR, None), layer_export.tagged(image)
    if gen is None or tagged is None or not gen.settings.save_layered_file:
        return
    collector = getattr(p, LAYERS_ATTR, None)
    if collector is None:
        inputs = {layer: gen.args.image(layer) for layer in gen.args.method.inputs}
        collector = layer_export.GroupCollector(gen.args.method, inputs, gen.args.resize_mode.value)
        setattr(p, LAYERS_ATTR, collector)
    collector.add(tagged[0], tagged[1], image, filename)
