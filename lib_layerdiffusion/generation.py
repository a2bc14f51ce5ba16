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
from .networks.attention_sharing import (COND_OVERWRITE_KEY, SD15_ATTENTION_LAYER_NAMES, SD15_CONFIGS,
                                build_attention_sharing)
from .images import layer_export
from .images.conditioning_images import conditioning_image, to_pil
from .errors import LayerDiffuseError, ModelFileError
from .request.infotext import infotext_fields
from .request.methods import LAYER_LABELS, PatchKind
from .networks.model_store import ModelStore, model_file
from .images.img2img import InitTransparency, aligned_rgba, grey_flattened, keep_unmasked, regulation_with_offsets, uncrop
from .images.outputs import checkerboard_preview_of, rgba_image
from .networks.transparent_vae import TransparentDecoder, load_transparent_decoder, load_transparent_encoder
from .request.settings import Settings
from .request.validation import check_request

log = logging.getLogger(__name__)

STATE_ATTR = "layerdiffuse_generation"  # the attribute of the processing object holding this request's state
INIT_ATTR = "layerdiffuse_init"  # img2img: the init images' transparency
DECODED_ATTR = "layerdiffuse_decoded_latents"  # latent batches the VAE decoded in the current sampling
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
    args = LayerDiffuseArgs.from_script_args(*script_args)
    if not args.enabled:
        return None
    method = args.method
    check_request(args, bridge.base_model(p.sd_model), int(p.batch_size))
    log.info("[LayerDiffuse] %s, weight %g, stop at %g", method.value, args.weight, args.ending_step)
    # fetch (and if need be download) every file now: a missing or damaged file stops the generation with its
    # message before any sampling, instead of failing half-way or silently giving an opaque image
    store.load(method.model_file)
    if method.makes_transparent:
        store.path(method.decoder_file)
    p.extra_generation_params.update(infotext_fields(args))
    if layer_export.names_layers(method):
        # per image (Forge calls it with the image's index): the caption of each result says which layer it is
        p.extra_generation_params[LAYER_INFOTEXT_KEY] = lambda index=0, **_: method.frame_of(int(index or 0)).value
    device, _ = bridge.compute_device_and_dtype(settings.decoder_precision)
    p.extra_generation_params.update(settings.infotext_fields(on_gpu=device.type != "cpu"))
    if method.makes_transparent and bridge.stealth_infotext_mode() == "RGB":
        raise LayerDiffuseError(
            "[LayerDiffuse] Forge's 'Stealth infotext mode' is RGB, which cannot save transparent images: set it to "
            "Alpha or None in Settings.")
    if method.makes_transparent and bridge.output_format() not in ("png", "webp"):
        bridge.tell_user(p, f"[LayerDiffuse] Images are saved as {bridge.output_format().upper()}, which has no "
                            f"transparency: set Settings → Saving images → File format to png.")
    return Generation(args=args, settings=settings)


def patch_unet(p, gen: Generation, bridge, store: ModelStore, noise_shape: tuple[int, ...]) -> None:
    """Install this sampling's patched clone of the UNet (called before every sampling, also the hires pass)."""
    args, method = gen.args, gen.args.method
    unpatched = bridge.clone_unet(p)
    unet = bridge.clone_unet(p)
    if method.patch_kind is PatchKind.ATTENTION_SHARING:
        _share_attention(p, gen, bridge, store, unet, noise_shape)
    else:
        _patch_weights(p, gen, bridge, store, unet, noise_shape)
    bridge.add_stop_at(unet, unpatched, args.ending_step)
    bridge.install_unet(p, unet)
    if method.makes_transparent:
        decoded: list = []  # this sampling's decoded latent batches, the final pass's last
        setattr(p, DECODED_ATTR, decoded)
        bridge.record_vae_decodes(p, decoded)


def _patch_weights(p, gen: Generation, bridge, store: ModelStore, unet, noise_shape) -> None:
    """SDXL: the file's LoRA / weight offsets as weight patches, and the input images as concat condition."""
    args, method = gen.args, gen.args.method
    batch, _, latent_h, latent_w = noise_shape
    filename = model_file(method.model_file).filename
    matched, total = bridge.add_weight_patches(unet, filename, store.load(method.model_file), args.weight)
    if matched == 0:
        raise ModelFileError(
            f"[LayerDiffuse] None of the {total} weights in {filename} match the loaded UNet, so the image would "
            f"come out without transparency. Use a standard {method.base.value} checkpoint (not a merge with "
            f"renamed layers), or replace {filename} if it is damaged.")
    if matched < total:
        log.warning("[LayerDiffuse] Only %d of %d weights in %s match the loaded UNet.", matched, total, filename)
    if method.inputs:
        images = [conditioning_image(args.image(layer), args.resize_mode, latent_h * 8, latent_w * 8,
                                     what=f"{LAYER_LABELS[layer]} image") for layer in method.inputs]
        bridge.set_concat_condition(unet, bridge.encode_images(p, images), batch)


def _share_attention(p, gen: Generation, bridge, store: ModelStore, unet, noise_shape) -> None:
    """SD1.5: the 32 attention layers replaced by units that see every frame of a group; per-frame prompts as
    context overwrites; the fg / bg input image as control signal."""
    args, method = gen.args, gen.args.method
    _, _, latent_h, latent_w = noise_shape
    config = SD15_CONFIGS[method.model_file.removeprefix("layer_")]
    device, dtype = bridge.unet_device_and_dtype(unet)
    originals = bridge.attention_modules(unet, SD15_ATTENTION_LAYER_NAMES)
    model = build_attention_sharing(store.load(method.model_file), originals, config,
                                    store.local_path(method.model_file), dtype=dtype)
    model.to(device)
    if config.use_control:
        (layer,) = method.inputs
        image = conditioning_image(args.image(layer), args.resize_mode, latent_h * 8, latent_w * 8,
                                   what=f"{LAYER_LABELS[layer]} image")
        model.set_control(torch.from_numpy(image).permute(2, 0, 1)[None].to(device))
    main_prompt = p.prompts[0] if getattr(p, "prompts", None) else p.prompt
    overwrites = []
    for frame in method.frames:
        extra = args.additional_prompt(frame) if frame in method.prompts else ""
        overwrites.append(bridge.text_condition(p, f"{extra}, {main_prompt}") if extra else None)
    if any(o is not None for o in overwrites):
        bridge.set_transformer_option(unet, COND_OVERWRITE_KEY, overwrites)
    bridge.replace_modules(unet, dict(zip(SD15_ATTENTION_LAYER_NAMES, model.units)))


def prepare_init_images(p, gen: Generation, bridge, store: ModelStore, crop_region) -> None:
    """img2img / inpaint, before Forge encodes the init images: grey-flatten them for the VAE and install, on a
    clone of the VAE patcher, the regulation that adds each image's transparency offset to its latent."""
    method = gen.args.method
    if not method.makes_transparent:
        return
    if not bridge.vae_encode_is_full():
        bridge.tell_user(p, "[LayerDiffuse] The init image's transparency is not used: set 'VAE type for encode' "
                            "to Full in Settings (a TAESD encode cannot carry it).")
        return
    originals = [to_pil(image, "init image") for image in p.init_images]
    width, height = int(p.width), int(p.height)
    canvases = tuple(
        to_pil(bridge.resize_image(p.resize_mode, image, width, height))
        if crop_region is None and p.resize_mode != 3 else image.convert("RGBA")
        for image in originals)
    device, dtype = bridge.compute_device_and_dtype(gen.settings.decoder_precision)
    encoder = _built.get(store, method.encoder_file, device, dtype, load_transparent_encoder)
    offsets = torch.cat([
        encoder.encode(aligned_rgba(canvas, crop_region, width, height, bridge.resize_image)).float().cpu()
        for canvas in canvases])
    calls: list[int] = []
    bridge.set_vae_regulation(p, regulation_with_offsets(offsets, calls))
    p.init_images = [grey_flattened(image) for image in originals]
    setattr(p, INIT_ATTR, InitTransparency(canvases, tuple(crop_region) if crop_region else None, calls))
    if gen.args.output_origin:
        p.extra_result_images.extend(p.init_images)


def check_init_offsets_applied(p, bridge) -> None:
    """After Forge encoded the init images: if the regulation never ran (tiled VAE encode, e.g. after running out
    of memory), the result would be silently opaque, so tell the user."""
    init = getattr(p, INIT_ATTR, None)
    if init is not None and not init.regulation_calls:
        bridge.tell_user(p, "[LayerDiffuse] Forge encoded the init image without the transparency offset (tiled "
                            "VAE encode); the result's alpha will not follow the input. Use a smaller image or "
                            "free some memory.")


def decode_transparent(p, gen: Generation, bridge, store: ModelStore, index: int
                       ) -> tuple[Image.Image, Image.Image] | None:
    """The RGBA image and its checkerboard preview for the image at `index` of this generation, or None when
    that image is not a transparent one (blend / background frames stay as they are)."""
    method = gen.args.method
    if not method.is_transparent_frame(index):
        return None
    pixel = p.pixels_after_sampling[index].convert("RGB")
    latent = _final_latent(p, index, pixel.size)
    init = getattr(p, INIT_ATTR, None)
    paste_to = getattr(p, "paste_to", None)
    device, dtype = bridge.compute_device_and_dtype(gen.settings.decoder_precision)
    decoder = _built.get(store, method.decoder_file, device, dtype, load_transparent_decoder)
    # img2img: this image's own init image (one init image serves the whole batch)
    canvas = init.canvases[(index % int(p.batch_size)) % len(init.canvases)] if init is not None else None
    if canvas is not None and init.crop_region is not None and paste_to is not None:
        # inpaint only masked: the latent is the crop's; decode the crop, then paste it back into the canvas
        x, y, w, h = paste_to
        crop = pixel.crop((x, y, x + w, y + h)).resize((latent.shape[2] * 8, latent.shape[1] * 8), Image.LANCZOS)
        rgba = uncrop(rgba_image(_decode(decoder, crop, latent, gen)), canvas, paste_to)
    else:
        rgba = rgba_image(_decode(decoder, pixel, latent, gen))
    if canvas is not None and getattr(p, "mask_for_overlay", None) is not None:
        rgba = keep_unmasked(rgba, canvas, p.mask_for_overlay)
    return rgba, checkerboard_preview_of(rgba)


def _final_latent(p, index: int, size: tuple[int, int]) -> torch.Tensor:
    """The latent the image at `index` was decoded from. Forge keeps it in latents_after_sampling, except after
    hires fix, which stores decoded pixels there; then it is the last batch the VAE decoded."""
    latent = p.latents_after_sampling[index].detach().float().cpu()
    if latent.ndim == 3 and latent.shape[0] == 4:
        return latent
    decoded = getattr(p, DECODED_ATTR, None)
    position = index % int(p.batch_size)
    if decoded and decoded[-1].shape[0] > position and decoded[-1].shape[1] == 4:
        return decoded[-1][position]
    return torch.zeros((4, size[1] // 8, size[0] // 8))  # unknown: decode from the pixels alone


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
        latent_t = torch.zeros((1, 4, height // 8, width // 8))
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
        key = (path, st.st_size, st.st_mtime_ns, str(device), dtype)
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
    """After Forge composed the image at pp.index: put the RGBA in its place (what Forge saves and shows first),
    queue the preview, and tag the image with its layer for naming and layered files."""
    index = pp.index
    result = decode_transparent(p, gen, bridge, store, index)
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
