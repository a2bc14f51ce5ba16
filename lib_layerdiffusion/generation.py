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

from .args import LayerDiffuseArgs
from .conditioning_images import conditioning_image
from .errors import LayerDiffuseError, ModelFileError
from .infotext import infotext_fields
from .methods import LAYER_LABELS, PatchKind
from .model_store import ModelStore, model_file
from .outputs import checkerboard_preview, rgba_image
from .transparent_vae import TransparentDecoder, load_transparent_decoder
from .validation import check_request

log = logging.getLogger(__name__)

STATE_ATTR = "layerdiffuse_generation"  # the attribute of the processing object holding this request's state


@dataclass(frozen=True)
class Generation:
    args: LayerDiffuseArgs
    decoder_passes: int = 8


def begin(p, script_args: tuple, bridge, store: ModelStore) -> Generation | None:
    """Parse and check the arguments and fetch the model files, before anything is sampled. Returns None when
    LayerDiffuse is off (then nothing else happens). Raises LayerDiffuseError for anything the user must fix."""
    args = LayerDiffuseArgs.from_script_args(*script_args)
    if not args.enabled:
        return None
    method = args.method
    check_request(args, bridge.base_model(p.sd_model), int(p.batch_size))
    if method.patch_kind is PatchKind.ATTENTION_SHARING:
        raise LayerDiffuseError(
            f"[LayerDiffuse] '{method.value}' is not available in this version yet; the SDXL methods are.")
    log.info("[LayerDiffuse] %s, weight %g, stop at %g", method.value, args.weight, args.ending_step)
    # fetch (and if need be download) every file now: a missing or damaged file stops the generation with its
    # message before any sampling, instead of failing half-way or silently giving an opaque image
    store.load(method.model_file)
    if method.makes_transparent:
        store.path(method.decoder_file)
    p.extra_generation_params.update(infotext_fields(args))
    return Generation(args=args)


def patch_unet(p, gen: Generation, bridge, store: ModelStore, noise_shape: tuple[int, ...]) -> None:
    """Install this sampling's patched clone of the UNet (called before every sampling, also the hires pass)."""
    args, method = gen.args, gen.args.method
    batch, _, latent_h, latent_w = noise_shape
    unpatched = bridge.clone_unet(p)
    unet = bridge.clone_unet(p)
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
    bridge.add_stop_at(unet, unpatched, args.ending_step)
    bridge.install_unet(p, unet)


def decode_transparent(p, gen: Generation, bridge, store: ModelStore, index: int
                       ) -> tuple[Image.Image, Image.Image] | None:
    """The RGBA image and its checkerboard preview for the image at `index` of this generation, or None when
    that image is not a transparent one (blend / background frames stay as they are)."""
    method = gen.args.method
    if not method.is_transparent_frame(index):
        return None
    latent = p.latents_after_sampling[index]
    pixel = p.pixels_after_sampling[index]
    device, dtype = bridge.compute_device_and_dtype()
    decoder = _decoders.get(store, method.decoder_file, device, dtype)
    pixel_t = torch.from_numpy(np.asarray(pixel.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    latent_t = latent[None].detach().float().cpu()
    height, width = pixel_t.shape[2:]
    if latent_t.shape[2:] != (height // 8, width // 8):
        # the pixels are not this latent's decode (e.g. pasted into a larger canvas): decode from pixels alone
        log.warning("[LayerDiffuse] Latent %s does not match image %dx%d; decoding from the image alone.",
                    tuple(latent_t.shape[2:]), width, height)
        latent_t = torch.zeros((1, latent_t.shape[1], height // 8, width // 8))
    if height % 8 or width % 8:
        raise LayerDiffuseError(f"[LayerDiffuse] Image size {width}x{height} is not a multiple of 8.")
    decoded = decoder.decode(pixel_t, latent_t, passes=gen.decoder_passes)[0].float().cpu()
    return rgba_image(decoded), checkerboard_preview(decoded)


class _BuiltModels:
    """Built decoders kept between generations, keyed by file identity, device and dtype (a replaced file is
    rebuilt). Bounded and thread-safe; holds no per-request state."""

    def __init__(self, size: int = 2):
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, store: ModelStore, name: str, device, dtype) -> TransparentDecoder:
        path = store.path(name)
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns, str(device), dtype)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        # built from the file, not through the store's cache, which is kept for the big UNet patch files
        decoder = load_transparent_decoder(path, device=device, dtype=dtype)
        with self._lock:
            self._items[key] = decoder
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return decoder


_decoders = _BuiltModels()
