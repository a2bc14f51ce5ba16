"""One LayerDiffuse generation, step by step, against a host bridge (see hosts/).

The Forge script calls these from its hooks; all per-request state lives in a frozen `Generation` stored on the
processing object, never on the script or in module globals, so concurrent or consecutive requests cannot
change each other.
"""
from __future__ import annotations

import hashlib
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
from .images import layer_export, psd_file, sprite
from .images.conditioning_images import to_pil
from .errors import LayerDiffuseError
from .hosts.apply_plan import UNITS_ATTR, apply_plan
from .plan import plan_sampling
from .request.infotext import infotext_fields
from .networks.model_store import ModelStore
from .images.img2img import (InitTransparency, aligned_rgba, grey_flattened, init_canvas, keep_unmasked,
                             regulation_with_offsets, uncrop)
from .images.outputs import checkerboard_preview_of, rgba_image
from .networks.transparent_vae import TransparentDecoder, load_transparent_decoder, load_transparent_encoder
from .request.methods import DECODER_READS_UNCLIPPED, BaseModel
from .request.settings import Settings
from .request.validation import check_request
from .request.xyz_axes import OVERRIDE_ATTR, with_override

log = logging.getLogger(__name__)

# formats that keep an alpha channel (Neo adds jxl, avif and heif to Forge's png and webp)
ALPHA_FORMATS = ("png", "webp", "jxl", "avif", "heif", "heic")
NOTED_FULL_DECODE_ATTR = "layerdiffuse_noted_full_decode"  # the TAESD-decode note was given for this request
STATE_ATTR = "layerdiffuse_generation"  # the attribute of the processing object holding this request's state
INIT_ATTR = "layerdiffuse_init"  # img2img: the init images' transparency
DECODED_ATTR = "layerdiffuse_decoded_latents"  # raw latent batches the VAE decoded in the current sampling
PIXELS_ATTR = "layerdiffuse_sampled_pixels"  # index -> the VAE's decoded image, before any inpaint overlay
LAYERS_ATTR = "layerdiffuse_layers"  # the per-request GroupCollector of saved images (layered files)
ALPHAS_ATTR = "layerdiffuse_alphas"  # id(RGBA image handed to Forge) -> its alpha channel
TRIMS_ATTR = "layerdiffuse_trims"  # index -> the trim box of a trimmed transparent image, as infotext text
LAYER_INFOTEXT_KEY = "layerdiffusion_layer"  # which layer (fg / bg / blend) an image of a layer method is
# everything a generation puts on the processing object, dropped when it ends (release)
REQUEST_ATTRS = (STATE_ATTR, INIT_ATTR, DECODED_ATTR, PIXELS_ATTR, LAYERS_ATTR, ALPHAS_ATTR, TRIMS_ATTR,
                 NOTED_FULL_DECODE_ATTR, UNITS_ATTR)


@dataclass(frozen=True)
class Generation:
    args: LayerDiffuseArgs
    settings: Settings = Settings()

    @property
    def decoder_passes(self) -> int:
        return self.settings.decoder_passes


def requested(p, script_args: tuple) -> bool:
    """Whether the request turns LayerDiffuse on, or an X/Y/Z cell sets its values (begin then says it is off);
    read before anything else: when neither, nothing else is."""
    return LayerDiffuseArgs.from_script_args(*script_args).enabled or getattr(p, OVERRIDE_ATTR, None) is not None


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
    _sprite_infotext(p, method, bridge, settings)
    if settings.save_psd_file and not psd_file.available():
        bridge.tell_user(p, f"[LayerDiffuse] No .psd file is saved: psd-tools is not installed; {psd_file.INSTALL_HINT}. "
                            f"The PNGs are saved as usual.")
    device, _ = _device_and_dtype(bridge, args, settings)
    p.extra_generation_params.update(settings.infotext_fields(on_gpu=device.type != "cpu"))
    if method.makes_transparent and bridge.stealth_infotext_mode() == "RGB":
        raise LayerDiffuseError(
            "[LayerDiffuse] Forge's 'Stealth infotext mode' is RGB, which cannot save transparent images: set it to "
            "Alpha or None in Settings.")
    if method.makes_transparent and bridge.output_format() not in ALPHA_FORMATS:
        bridge.tell_user(p, f"[LayerDiffuse] Images are saved as {bridge.output_format().upper()}, which has no "
                            f"transparency: set Settings → Saving images → File format to png.")
    return Generation(args=args, settings=settings)


def _device_and_dtype(bridge, args: LayerDiffuseArgs, settings: Settings):
    """Where and in which precision the transparent VAE runs (the FLUX.1 nets prefer bf16 on a GPU)."""
    return bridge.compute_device_and_dtype(settings.decoder_precision,
                                           prefer_bf16=args.method.base is BaseModel.FLUX)


def begin_sampling(p, bridge) -> None:
    """Before every sampling (also the hires pass): the init images are encoded by now, so the VAE regulation
    is put back (it belongs to that encode only), and nothing an earlier sampling recorded can be read by this
    one (a failed patch would otherwise leave the previous batch's latents to decode from)."""
    check_init_offsets_applied(p, bridge)
    bridge.release_vae_regulation(p)
    for name in (DECODED_ATTR, PIXELS_ATTR, ALPHAS_ATTR):
        setattr(p, name, None)


def decode_with_full_vae(p, gen: Generation, bridge, ps) -> None:
    """post_sample: with 'VAE type for decode' set to TAESD (or an approximation) Forge would never run the
    checkpoint's VAE, so there would be no raw latent to decode the alpha from and the pixels would not be the
    ones the transparent decoder was trained on. Decode them with the full VAE here instead (recorded like any
    other decode); Forge takes the result as already decoded."""
    if not gen.args.method.makes_transparent or bridge.vae_decode_is_full():
        return
    if getattr(ps.samples, "already_decoded", False):
        return  # another script decoded them: its decode went through the recorded VAE or is reported later
    ps.samples = bridge.decode_with_full_vae(p, ps.samples)
    if not getattr(p, NOTED_FULL_DECODE_ATTR, False):
        setattr(p, NOTED_FULL_DECODE_ATTR, True)
        bridge.tell_user(p, "[LayerDiffuse] 'VAE type for decode' is not Full: the transparent images were decoded "
                            "with the checkpoint's full VAE, which the transparent decoder needs.")


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
    flattened = [grey_flattened(image) for image in originals]
    if not bridge.vae_encode_is_full():
        p.init_images = flattened
        bridge.tell_user(p, "[LayerDiffuse] The init image's transparency is not used: set 'VAE type for encode' "
                            "to Full in Settings (a TAESD encode cannot carry it).")
        return
    width, height = int(p.width), int(p.height)
    canvases = tuple(init_canvas(image, p.resize_mode, crop_region, width, height, bridge.resize_image)
                     for image in originals)
    device, dtype = _device_and_dtype(bridge, gen.args, gen.settings)
    encoder = _built.get(store, method.encoder_file, device, dtype, load_transparent_encoder)
    offsets = torch.cat([
        encoder.encode(aligned_rgba(canvas, crop_region, width, height, bridge.resize_image, p.resize_mode)).float().cpu()
        for canvas in canvases])
    calls: list[int] = []
    if not bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls)):
        raise LayerDiffuseError(
            f"[LayerDiffuse] Transparent img2img is not available here: the VAE of this checkpoint in "
            f"{bridge.NAME} cannot take the init image's transparency. Use txt2img, or an opaque init image.")
    # only now that the offsets are in place: the flattened images and the offsets go together or not at all
    p.init_images = flattened
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
    latent, decoded = _final_decode(p, index)
    image = _decoder_image(p, index, composed)
    pixel, exact = _decoder_pixels(image, decoded, DECODER_READS_UNCLIPPED[method.base])
    log.info("[LayerDiffuse] Image %d: transparent decode from latent %s: mean %.6f, std %.6f; from pixels %s "
             "sha256 %s (%s)", index, tuple(latent.shape), latent.mean().item(), latent.std().item(), image.size,
             hashlib.sha256(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest(),
             ("the VAE's float output, unclipped" if pixel.min().item() < 0.0 or pixel.max().item() > 1.0
              else "the VAE's float output") if exact else "the 8-bit image")
    device, dtype = _device_and_dtype(bridge, gen.args, gen.settings)
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


def _decoder_image(p, index: int, composed: Image.Image) -> Image.Image:
    """The RGB image the transparent decoder reads with the latent: the image as Forge composed it, so that what
    other scripts did to it after sampling (ADetailer, face restoration, ...) is in the transparent result whatever
    the order of their hooks; for inpainting, where Forge pastes and overlays the generated image, the generated
    image itself as the VAE decoded it (at the generation size, before the overlay)."""
    inpainting = getattr(p, "mask_for_overlay", None) is not None or getattr(p, "paste_to", None) is not None
    recorded = (getattr(p, PIXELS_ATTR, None) or {}).get(index)
    image = recorded if inpainting and recorded is not None else composed
    return image.convert("RGB")


def _decoder_pixels(image: Image.Image, decoded: torch.Tensor | None, unclipped: bool = False
                    ) -> tuple[torch.Tensor, bool]:
    """(1,3,H,W): the VAE's float output for this image where Forge's 8-bit image is just that output clipped
    and rounded down (nothing edited it), as the reference decoders read it (clipped to [0, 1], or as the VAE
    gave it with `unclipped`, where it was recorded so); else the 8-bit image, edits included. Also whether it is
    the float output."""
    eight_bit = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if decoded is None or tuple(decoded.shape[1:]) != tuple(eight_bit.shape[2:]) or decoded.shape[0] != 3:
        return eight_bit, False
    clipped = decoded.clamp(0.0, 1.0)[None]
    # Forge: 255 · x cast to uint8 (rounded down); one level of slack for float noise on the way
    if (eight_bit * 255.0 - torch.floor(clipped * 255.0)).abs().max().item() > 1.0:
        return eight_bit, False
    return (decoded[None] if unclipped else clipped), True


def _final_decode(p, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The raw latent (what the VAE's decode received) of the image at `index` of the current batch, and the
    VAE's float output for it where recorded: the last batch_size rows the VAE decoded in this sampling (Forge
    decodes the final latents last, after any hires first pass or preview). Without a latent the alpha could only
    be guessed from the pixels, so that stops the generation."""
    records = getattr(p, DECODED_ATTR, None) or []
    outputs = list(getattr(records, "pixels", ()))
    outputs += [None] * (len(records) - len(outputs))
    rows: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    batch = int(p.batch_size)
    for latents, images in reversed(list(zip(records, outputs))):  # the last `batch` rows, newest last
        images = list(images) if images is not None and len(images) == len(latents) else [None] * len(latents)
        rows[:0] = list(zip(latents, images))
        if len(rows) >= batch:
            return rows[len(rows) - batch + index % batch]
    raise LayerDiffuseError(
        f"[LayerDiffuse] Image {index}: the checkpoint's VAE did not decode this image's latent, so its "
        f"transparency cannot be decoded. Another script may have decoded it another way; disable it, or set "
        f"'VAE type for decode' to Full in Settings.")


def _decode(decoder: TransparentDecoder, pixel: torch.Tensor, latent: torch.Tensor, gen: Generation) -> torch.Tensor:
    """(4,H,W) alpha-first in [0,1] from a (1,3,H,W) picture in [0,1] and its (C,H/8,W/8) latent."""
    height, width = pixel.shape[2:]
    latent_t = latent[None]
    if height % 8 or width % 8 or latent_t.shape[2:] != (height // 8, width // 8):
        # the pixels are not this latent's decode (another script resized the image after sampling)
        raise LayerDiffuseError(
            f"[LayerDiffuse] The image is {width}x{height} but its latent is {latent_t.shape[3] * 8}x"
            f"{latent_t.shape[2] * 8}: something resized it after sampling, so its transparency cannot be decoded. "
            f"Upscale after generating (Extras keeps the alpha) instead.")
    return decoder.decode(pixel, latent_t, passes=gen.decoder_passes)[0].float().cpu()


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
        if gen.settings.trim_margins or gen.settings.bleed_colour:
            pp.image, preview = _sprite_ready(p, gen, index, pp.image)
        # Forge's stealth infotext (Alpha mode) overwrites the alpha of the image it saves; keep it to restore
        alphas = getattr(p, ALPHAS_ATTR, None)
        if alphas is None:
            alphas = {}
            setattr(p, ALPHAS_ATTR, alphas)
        alphas[id(pp.image)] = (pp.image, pp.image.getchannel("A"))  # the image kept: its id is never reused
        p.extra_result_images.append(preview)
        if gen.settings.save_preview:
            bridge.save_extra_image(p, preview, index, "-preview")
        if gen.settings.save_rgba_when_grid_only and not p.save_samples():
            bridge.save_extra_image(p, pp.image, index, "", even_if_grid_only=True)
    if layer_export.names_layers(gen.args.method) or gen.settings.layered_formats:
        layer_export.tag(pp.image, index, gen.args.method.frame_of(index))


def before_save(p, image, filename: str) -> str | None:
    """Forge is about to save `image` (after its stealth infotext step): give a transparent image its alpha back,
    and return the file name for the layer methods' files, which say which layer they hold."""
    kept = (getattr(p, ALPHAS_ATTR, None) or {}).get(id(image)) if p is not None else None
    if kept is not None and kept[0] is image and image.mode == "RGBA":
        image.putalpha(kept[1])
    gen, tagged = getattr(p, STATE_ATTR, None), layer_export.tagged(image)
    if gen is None or tagged is None or not layer_export.names_layers(gen.args.method):
        return None
    return layer_export.with_layer_suffix(filename, tagged[1])


def image_saved(p, image, filename: str, infotext: str | None = None) -> None:
    """Forge saved `image` (with `infotext`): collect it, and write the group's layered files once the group is
    complete."""
    gen, tagged = getattr(p, STATE_ATTR, None), layer_export.tagged(image)
    if gen is None or tagged is None or not gen.settings.layered_formats:
        return
    collector = getattr(p, LAYERS_ATTR, None)
    if collector is None:
        inputs = {layer: gen.args.image(layer) for layer in gen.args.method.inputs}
        # without psd-tools no .psd (begin told the user), the other files still
        formats = tuple(f for f in gen.settings.layered_formats if f != "psd" or psd_file.available())
        collector = layer_export.GroupCollector(gen.args.method, inputs, gen.args.resize_mode.value, formats)
        setattr(p, LAYERS_ATTR, collector)
    if collector.formats:
        collector.add(tagged[0], tagged[1], image, filename, infotext)


def _sprite_infotext(p, method, bridge, settings: Settings) -> None:
    """Trimming: each image's infotext gets its crop box (recorded by _sprite_ready), so the trim can be undone."""
    if not (settings.trim_margins and method.makes_transparent):
        return
    if not bridge.infotext_takes_callables():
        bridge.tell_user(p, f"[LayerDiffuse] This Forge cannot write per-image infotext fields: the trim box "
                            f"({sprite.INFOTEXT_KEY}) of trimmed images is not recorded.")
        return
    trims: dict[int, str] = {}
    setattr(p, TRIMS_ATTR, trims)

    def trim_field(p=None, index=0, **_):
        # Forge passes the position in the current batch (modules/processing.py infotext(i))
        batch = int(getattr(p, "batch_size", 1) or 1)
        return trims.get(int(getattr(p, "iteration", 0) or 0) * batch + int(index or 0))

    p.extra_generation_params[sprite.INFOTEXT_KEY] = trim_field


def _sprite_ready(p, gen: Generation, index: int, rgba: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The transparent result trimmed and/or colour-bled as the settings say, and its preview."""
    image, box = sprite.sprite_ready(rgba, gen.settings.trim_margins, gen.settings.trim_margin,
                                     gen.settings.bleed_colour)
    trims = getattr(p, TRIMS_ATTR, None)
    if box is not None and trims is not None:
        trims[index] = str(box)
    return image, checkerboard_preview_of(image)


def release(p) -> None:
    """The generation is over (the script's postprocess, after every image was saved): drop what it put on the
    processing object. Forge's finished sampler and its CFG denoiser reference each other and the processing
    object, so that lives on until Python's cyclic collector next runs (big tensors never trigger it); the SD1.5
    attention units (hundreds of MB), recorded latents and pixels on it would pile up with every request."""
    for name in REQUEST_ATTRS:
        vars(p).pop(name, None)
