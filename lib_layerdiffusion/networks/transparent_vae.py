"""Loading and running the LayerDiffuse transparent VAE decoder and encoder, independent of any host UI.

* ``load_transparent_decoder`` / ``load_transparent_encoder`` read a ``.safetensors`` path (through the checked
  reader in ``safetensors_io``) or take a state dict, verify every key and shape, and build the network in the
  requested device and dtype (fp16, bf16 and fp32 files alike).
* ``TransparentDecoder.decode`` turns an ordinary VAE decode (the RGB image) plus its latent into alpha + RGB
  with test-time augmentation: several flipped/rotated copies are decoded in batches, un-augmented, and merged
  with a per-pixel median.
* ``TransparentEncoder.encode`` computes the latent offset that makes an RGBA image's latent carry transparency.

Two latent families share the networks (``LatentFamily``), told apart by the checkpoint's latent width:
SDXL / SD1.5 (4 latent channels; ``vae_transparent_decoder.safetensors`` ...) and FLUX.1 (16; the ``decoder.*`` /
``encoder.*`` parts of ``TransparentVAE.pth``, converted once to ``TransparentVAE.safetensors`` by
``pickle_conversion``). Whatever the checkpoint's own channel order, ``decode`` returns alpha first and
``encode`` the offset as it is added to the latent.

Results match the reference implementations to ~1e-5 in fp32 (the decoder runs channels-last on the CPU, which
changes only the rounding).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from ..errors import InvalidArgumentError, ModelFileError
from ..images.color_padding import pad_rgb
from .offset_encoder_net import OUTPUT_CONV_KEY, LatentOffsetEncoder
from .pickle_conversion import ensure_converted, is_pickle_path
from .safetensors_io import read_header
from .transparent_decoder_net import LATENT_CONV_KEY, SIZE_MULTIPLE, TransparentDecoderUNet

logger = logging.getLogger(__name__)

StateSource = str | os.PathLike | Mapping
DeviceLike = str | torch.device | None

LATENT_SCALE = 8
PASS_COUNTS = (1, 2, 4, 8)

# (flip width first?, quarter turns) per pass count. 8 is the reference order. The smaller sets keep the
# image's shape, so any aspect ratio runs as one batch: 4 = the shape-preserving symmetries (identity,
# horizontal flip, half turn, vertical flip), 2 = identity + horizontal flip, 1 = identity.
AUGMENTATIONS: dict[int, tuple[tuple[bool, int], ...]] = {
    1: ((False, 0),),
    2: ((False, 0), (True, 0)),
    4: ((False, 0), (True, 0), (False, 2), (True, 2)),
    8: ((False, 0), (False, 1), (False, 2), (False, 3), (True, 0), (True, 1), (True, 2), (True, 3)),
}

# CPU chunk budget: image pixels decoded at once (4 copies at 512x512, 1 at 1024x1024). A chunk peaks at
# about 1.3 KB of fp32 activations per pixel (bench/bench_decoder.py), so this keeps the decode near 1.4 GB
# of RAM; bigger chunks save little on the CPU, where the convolutions are compute-bound.
CPU_PIXEL_BUDGET = 1024 * 1024
# CUDA: peak activation bytes per image pixel per element byte (the CPU-measured ~330 plus headroom for the
# caching allocator) and the share of the free memory a chunk may use.
CUDA_BYTES_PER_PIXEL_PER_ELEMENT_BYTE = 500
CUDA_FREE_SHARE = 0.8

# Prefixes of the sections of FLUX.1's TransparentVAE.pth (and of its .safetensors conversion). The FLUX.1 VAE's
# own weights (sd_vae.*) may be in the file; they are not this package's to load, so they are passed over.
DECODER_PREFIX = "decoder."
ENCODER_PREFIX = "encoder."
IGNORED_PREFIXES = ("sd_vae.",)


@dataclass(frozen=True)
class LatentFamily:
    """How the transparent VAE of one latent family is fed and read.

    latent_channels: the width of the latent (and of the offset); rgba_order: the checkpoint works in RGBA
    order (decoder output, encoder input) instead of alpha first; clip_pixel: the decoder's pixel input is
    clipped to [0,1] first, as the family's reference does; offset_scale: the encoder's output is multiplied by
    this to give the offset added to the latent; decoder_hint / encoder_hint: which file was expected."""

    name: str
    latent_channels: int
    rgba_order: bool
    clip_pixel: bool
    offset_scale: float
    decoder_hint: str
    encoder_hint: str


SD_LATENT = LatentFamily(
    name="SDXL / SD1.5", latent_channels=4, rgba_order=False, clip_pixel=True, offset_scale=1.0,
    decoder_hint=("the file is not vae_transparent_decoder.safetensors (or "
                  "layer_sd15_vae_transparent_decoder.safetensors) or is damaged; replace it"),
    encoder_hint="the file is not vae_transparent_encoder.safetensors or is damaged; replace it",
)
_FLUX_HINT = ("the file is not FLUX.1's TransparentVAE.pth (or its conversion TransparentVAE.safetensors) or is "
              "damaged; replace it")
FLUX_LATENT = LatentFamily(
    name="FLUX.1", latent_channels=16, rgba_order=True, clip_pixel=False, offset_scale=300.0,
    decoder_hint=_FLUX_HINT, encoder_hint=_FLUX_HINT,
)
#: The known families by latent width.
LATENT_FAMILIES: dict[int, LatentFamily] = {f.latent_channels: f for f in (SD_LATENT, FLUX_LATENT)}

# Channel order that makes an RGBA output alpha-first.
_RGBA_TO_ALPHA_FIRST = (3, 0, 1, 2)


# --------------------------------------------------------------------------------------------- loading

def _resolve_placement(device: DeviceLike, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if not dtype.is_floating_point:
        raise InvalidArgumentError(f"[LayerDiffuse] The model dtype must be a floating type, got {dtype}.")
    return device, dtype


def _section_keys(keys: Iterable[str], prefix: str) -> tuple[dict[str, str], list[str], bool]:
    """Which keys of a file or state dict belong to one network, under the names the network uses.

    Returns ({network key: key in the source}, [keys that belong to nothing], whether the source is sectioned).
    A source with ``decoder.`` / ``encoder.`` keys (FLUX.1's TransparentVAE layout) gives the network the keys
    under `prefix`, stripped, and passes over the other network's section; a source without them is the
    network's own keys as they are. The ``sd_vae.`` section is passed over either way."""
    keys = [k for k in keys if not k.startswith(IGNORED_PREFIXES)]
    sections = (DECODER_PREFIX, ENCODER_PREFIX)
    if not any(k.startswith(sections) for k in keys):
        return {k: k for k in keys}, [], False
    own = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    stray = sorted(k for k in keys if not k.startswith(sections))
    return own, stray, True


@dataclass
class _Source:
    state: dict  # the network's tensors under its own key names
    stray: list[str]  # keys that belong to nothing
    origin: str  # the file, or "the given state dict"
    prefix: str  # "" or the section prefix the tensors were found under


def _read_source(source: StateSource, prefix: str) -> _Source:
    """The tensors of one network (see _section_keys) from a path or a state dict.

    A .pth path is converted once (``pickle_conversion.ensure_converted``) and its .safetensors read instead."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if is_pickle_path(path):
            path = ensure_converted(path)
        names, stray, sectioned = _section_keys(read_header(path), prefix)  # checked against the file size first
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                state = {name: f.get_tensor(key) for name, key in names.items()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; any means a bad file
            raise ModelFileError(
                f"[LayerDiffuse] The model file {path} is damaged ({e}). Replace it with a good copy.") from None
        return _Source(state, stray, path, prefix if sectioned else "")
    if isinstance(source, Mapping):
        names, stray, sectioned = _section_keys((k for k in source if isinstance(k, str)), prefix)
        stray += sorted(repr(k) for k in source if not isinstance(k, str))
        return _Source({name: source[key] for name, key in names.items()}, stray, "the given state dict",
                       prefix if sectioned else "")
    raise InvalidArgumentError(
        f"[LayerDiffuse] A model source must be a .safetensors (or .pth) path or a state dict, "
        f"got {type(source).__name__}."
    )


def _describe(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _check_layout(state: Mapping, expected: Mapping[str, torch.Size], origin: str, what: str, hint: str,
                  stray: Sequence[str] = (), prefix: str = "") -> None:
    """Raise ModelFileError naming the first offending keys (as the source names them: with `prefix`) unless
    state has exactly the expected tensors (and there are no stray keys)."""
    problems = []
    missing = sorted(prefix + k for k in expected if k not in state)
    unexpected = sorted(list(stray) + [prefix + k for k in state if k not in expected])
    if missing:
        problems.append(f"missing tensors: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_describe(unexpected)}")
    wrong = []
    for key, shape in expected.items():
        value = state.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            wrong.append(f"{prefix}{key} is not a floating-point tensor")
        elif value.shape != shape:
            wrong.append(f"{prefix}{key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if wrong:
        problems.append("; ".join(wrong[:5]) + (f" ({len(wrong)} tensors wrong in all)" if len(wrong) > 5 else ""))
    if problems:
        raise ModelFileError(
            f"[LayerDiffuse] {origin} is not the LayerDiffuse {what}: {'; '.join(problems)}. {hint[0].upper()}{hint[1:]}."
        )


def _family(source: _Source, key: str, dim: int, what: str) -> LatentFamily:
    """The latent family from the width of `key` (dimension `dim`). When it cannot be read (the layout check then
    says what is wrong): FLUX.1 for a sectioned source (only FLUX.1's file is sectioned), else SDXL / SD1.5."""
    value = source.state.get(key)
    if not isinstance(value, torch.Tensor) or value.ndim != 4:
        return FLUX_LATENT if source.prefix else SD_LATENT
    family = LATENT_FAMILIES.get(int(value.shape[dim]))
    if family is None:
        known = ", ".join(f"{c} ({f.name})" for c, f in LATENT_FAMILIES.items())
        raise ModelFileError(
            f"[LayerDiffuse] {source.origin} is not a LayerDiffuse {what}: {source.prefix}{key} has shape "
            f"{tuple(value.shape)}, for {int(value.shape[dim])} latent channels; the known widths are {known}. "
            f"Replace it with the published file.")
    return family


def _build(factory, source: StateSource, device: DeviceLike, dtype: torch.dtype | None, what: str,
           prefix: str, width_key: str, width_dim: int, hint_of) -> tuple[nn.Module, LatentFamily]:
    device, dtype = _resolve_placement(device, dtype)
    read = _read_source(source, prefix)
    state, origin = read.state, read.origin
    family = _family(read, width_key, width_dim, what)
    hint = hint_of(family)
    # Built on the meta device: the weights come from the file, so random initialisation would be wasted time.
    with torch.device("meta"):
        model = factory(family.latent_channels)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    _check_layout(state, expected, origin, what, hint, read.stray, read.prefix)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # the check above should make this unreachable; never show torch's text alone
        raise ModelFileError(f"[LayerDiffuse] {origin} could not be loaded as the {what} ({e}); {hint}.") from None
    model = model.to(device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    logger.info("[LayerDiffuse] Loaded the %s (%s) from %s (%s, %s).", what, family.name, origin, device, dtype)
    return model, family


def load_transparent_decoder(source: StateSource, device: DeviceLike = None,
                             dtype: torch.dtype | None = None) -> TransparentDecoder:
    """Load the transparent VAE decoder (strictly) from a .safetensors path, FLUX.1's TransparentVAE.pth (converted
    once to TransparentVAE.safetensors beside it, which is read from then on) or a state dict.

    SDXL / SD1.5 files, and FLUX.1's with or without their ``decoder.`` prefix (``encoder.`` and ``sd_vae.``
    sections are passed over), are told apart by the width of ``latent_conv_in.weight`` (4 or 16 latent
    channels). device defaults to the CPU; dtype to float16 on CUDA and float32 elsewhere."""
    model, family = _build(lambda c: TransparentDecoderUNet(latent_channels=c), source, device, dtype,
                           "transparent VAE decoder", DECODER_PREFIX, LATENT_CONV_KEY, 1,
                           lambda f: f.decoder_hint)
    return TransparentDecoder(model, family)


def load_transparent_encoder(source: StateSource, device: DeviceLike = None,
                             dtype: torch.dtype | None = None) -> TransparentEncoder:
    """Load the transparent VAE (offset) encoder strictly, from the same kinds of source as
    ``load_transparent_decoder`` (FLUX.1's under the ``encoder.`` prefix or without it)."""
    model, family = _build(lambda c: LatentOffsetEncoder(latent_channels=c), source, device, dtype,
                           "transparent VAE encoder", ENCODER_PREFIX, OUTPUT_CONV_KEY, 0,
                           lambda f: f.encoder_hint)
    return TransparentEncoder(model, family)


# --------------------------------------------------------------------------------------------- helpers

class _Placed:
    """A wrapped network with the device/dtype bookkeeping both runners share.

    family: the latent family the checkpoint belongs to (SD_LATENT or FLUX_LATENT)."""

    def __init__(self, model: nn.Module, family: LatentFamily = SD_LATENT) -> None:
        self.model = model
        self.family = family

    @property
    def latent_channels(self) -> int:
        return self.family.latent_channels

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: DeviceLike = None, dtype: torch.dtype | None = None):
        """Move the network (e.g. to offload it between generations); returns self."""
        self.model.to(device=device, dtype=dtype)
        return self


def _augment(x: torch.Tensor, flip: bool, quarter_turns: int) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k=quarter_turns, dims=(2, 3))


def _unaugment(y: torch.Tensor, flip: bool, quarter_turns: int) -> torch.Tensor:
    y = torch.rot90(y, k=-quarter_turns, dims=(2, 3))
    return torch.flip(y, dims=(3,)) if flip else y


def _pad_amounts(latent_side: int) -> tuple[int, int]:
    """Latent cells to add before/after a side so that its pixel size becomes a multiple of SIZE_MULTIPLE."""
    cells = SIZE_MULTIPLE // LATENT_SCALE
    total = -latent_side % cells
    return total // 2, total - total // 2


# --------------------------------------------------------------------------------------------- decoder

class TransparentDecoder(_Placed):
    """Runs the transparent decoder network on (pixel, latent) pairs; see ``decode``."""

    def _memory_format(self) -> torch.memory_format:
        # On the CPU, oneDNN convolutions skip two layout reorders each in NHWC (about 40% less convolution
        # time here; GroupNorm has an accurate NHWC path in the network). CUDA keeps the reference NCHW.
        return torch.channels_last if self.device.type == "cpu" else torch.contiguous_format

    def _forward(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        layout = self._memory_format()
        if not self.model.conv_in.weight.is_contiguous(memory_format=layout):
            self.model.to(memory_format=layout)  # once per move between devices
        return self.model(pixel.contiguous(memory_format=layout), latent)

    def _check_inputs(self, pixel: torch.Tensor, latent: torch.Tensor) -> None:
        if not isinstance(pixel, torch.Tensor) or not isinstance(latent, torch.Tensor):
            raise InvalidArgumentError("[LayerDiffuse] The transparent decoder takes torch tensors.")
        if pixel.ndim != 4 or pixel.shape[1] != 3:
            raise InvalidArgumentError(
                f"[LayerDiffuse] The decoded image must have shape (B,3,H,W), got {tuple(pixel.shape)}.")
        channels = self.latent_channels
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise InvalidArgumentError(
                f"[LayerDiffuse] The latent must have shape (B,{channels},H/8,W/8) for this {self.family.name} "
                f"decoder, got {tuple(latent.shape)}.")
        b, _, h, w = pixel.shape
        if latent.shape[0] != b or (h, w) != (latent.shape[2] * LATENT_SCALE, latent.shape[3] * LATENT_SCALE):
            raise InvalidArgumentError(
                f"[LayerDiffuse] The image {tuple(pixel.shape)} and latent {tuple(latent.shape)} do not match: "
                f"the batch sizes must agree and the image must be 8 times the latent's height and width.")
        if h == 0 or w == 0 or b == 0:
            raise InvalidArgumentError("[LayerDiffuse] The image to decode is empty.")

    def _padded(self, pixel: torch.Tensor, latent: torch.Tensor):
        """Pad both inputs (edge replication) to a size the network can halve six times."""
        top, bottom = _pad_amounts(latent.shape[2])
        left, right = _pad_amounts(latent.shape[3])
        if top == bottom == left == right == 0:
            return pixel, latent, None
        s = LATENT_SCALE
        pixel = F.pad(pixel, (left * s, right * s, top * s, bottom * s), mode="replicate")
        latent = F.pad(latent, (left, right, top, bottom), mode="replicate")
        return pixel, latent, (top * s, left * s)

    def _prepare(self, pixel: torch.Tensor, latent: torch.Tensor):
        self._check_inputs(pixel, latent)
        pixel = pixel.to(device=self.device, dtype=self.dtype)
        if self.family.clip_pixel:  # SDXL / SD1.5 clip the VAE decode; FLUX.1 feeds it as it is
            pixel = pixel.clamp(0.0, 1.0)
        latent = latent.to(device=self.device, dtype=self.dtype)
        return self._padded(pixel, latent)

    def _finish(self, y: torch.Tensor, offset, height: int, width: int, device: torch.device) -> torch.Tensor:
        if offset is not None:
            y = y[:, :, offset[0]:offset[0] + height, offset[1]:offset[1] + width]
        if self.family.rgba_order:
            y = y[:, _RGBA_TO_ALPHA_FIRST, :, :]
        return y.to(device=device, dtype=torch.float32, memory_format=torch.contiguous_format)

    def decode_single_pass(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """One plain forward pass (no augmentation, no output clipping): (B,4,H,W) float32 on pixel's device,
        alpha first."""
        with torch.no_grad():
            h, w = pixel.shape[-2:]
            padded_pixel, padded_latent, offset = self._prepare(pixel, latent)
            return self._finish(self._forward(padded_pixel, padded_latent), offset, h, w, pixel.device)

    def decode(self, pixel: torch.Tensor, latent: torch.Tensor, passes: int = 8,
               max_batch: int | None = None) -> torch.Tensor:
        """Decode alpha + RGB with test-time augmentation.

        pixel: (B,3,H,W) in [0,1], the ordinary VAE decode (clipped to [0,1] for SDXL / SD1.5; FLUX.1's is fed
        as it is, slightly out of range included, as its reference does); latent: (B,C,H/8,W/8), the raw VAE
        latent of the decoder's family (C = 4 for SDXL / SD1.5; for FLUX.1 C = 16, ``z / 0.3611 + 0.1159`` of
        the transformer's latent). Any size: sides that are not multiples of 64 are edge-padded for the network
        and cropped back.

        passes (1, 2, 4 or 8) picks the augmentations; each augmented decode is clipped to [0,1], turned back,
        and the passes are merged with ``torch.median`` (for an even count the LOWER middle value, so 2 passes
        give their per-pixel minimum):
          8: no flip with 0..3 quarter turns, then width-flip with 0..3 quarter turns (the reference);
          4: identity, width-flip, half turn, width-flip + half turn (no 90-degree turns, so one batch for any
             aspect ratio);
          2: identity, width-flip;
          1: identity (a single clipped pass).
        Same-shaped copies are decoded together in chunks of at most max_batch images (default: what fits in
        free CUDA memory, or a fixed pixel budget on the CPU).

        Returns (B,4,H,W) float32 in [0,1] on pixel's device; channel 0 is alpha, 1..3 RGB, for every family
        (FLUX.1's network works in RGBA order; its output is reordered).
        """
        if passes not in AUGMENTATIONS:
            raise InvalidArgumentError(
                f"[LayerDiffuse] The number of decoder passes must be one of {PASS_COUNTS}, got {passes!r}.")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise InvalidArgumentError(f"[LayerDiffuse] max_batch must be a positive integer, got {max_batch!r}.")
        with torch.no_grad():
            h, w = pixel.shape[-2:]
            padded_pixel, padded_latent, offset = self._prepare(pixel, latent)
            merged = self._augmented_median(padded_pixel, padded_latent, AUGMENTATIONS[passes], max_batch)
            return self._finish(merged, offset, h, w, pixel.device)

    def _chunk_size(self, height: int, width: int, max_batch: int | None) -> int:
        if max_batch is not None:
            return max_batch
        pixels = height * width
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            # Blocks PyTorch has cached but not handed out are free for us too.
            free += torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            per_image = pixels * CUDA_BYTES_PER_PIXEL_PER_ELEMENT_BYTE * (torch.finfo(self.dtype).bits // 8)
            return max(1, int(free * CUDA_FREE_SHARE) // per_image)
        return max(1, CPU_PIXEL_BUDGET // pixels)

    def _augmented_median(self, pixel: torch.Tensor, latent: torch.Tensor,
                          augmentations: Sequence[tuple[bool, int]], max_batch: int | None) -> torch.Tensor:
        batch, _, height, width = pixel.shape
        # Quarter turns of a non-square image swap its sides; only same-shaped copies share a batch.
        groups: dict[bool, list[int]] = {}
        for index, (_, turns) in enumerate(augmentations):
            groups.setdefault(height != width and turns % 2 == 1, []).append(index)

        chunk = self._chunk_size(height, width, max_batch)
        plan = [(members, start) for members in groups.values()
                for start in range(0, len(members) * batch, chunk)]
        logger.debug("[LayerDiffuse] Transparent decode: %d passes of %d image(s), %d chunk(s) of up to %d.",
                     len(augmentations), batch, len(plan), chunk)

        results: list[torch.Tensor | None] = [None] * len(augmentations)
        progress = tqdm(total=len(plan), desc="[LayerDiffuse] Transparent decode", disable=len(plan) <= 1)
        try:
            for members in groups.values():
                # Copy-major order: rows [i*batch, (i+1)*batch) hold augmentation members[i] of every image.
                feed_pixel = torch.cat([_augment(pixel, *augmentations[i]) for i in members])
                feed_latent = torch.cat([_augment(latent, *augmentations[i]) for i in members])
                outputs = []
                for start in range(0, feed_pixel.shape[0], chunk):
                    out = self._forward(feed_pixel[start:start + chunk], feed_latent[start:start + chunk])
                    outputs.append(out.clamp_(0.0, 1.0))
                    progress.update(1)
                outputs = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
                for n, index in enumerate(members):
                    rows = outputs[n * batch:(n + 1) * batch]
                    results[index] = _unaugment(rows, *augmentations[index])
        finally:
            progress.close()

        if len(results) == 1:
            return results[0]
        return torch.median(torch.stack(results), dim=0).values


# --------------------------------------------------------------------------------------------- encoder

class TransparentEncoder(_Placed):
    """Computes the latent offset that encodes an RGBA image's transparency; see ``encode``."""

    def encode(self, rgba: np.ndarray) -> torch.Tensor:
        """rgba: HxWx4 uint8 (straight alpha; H and W multiples of 8) -> (1,C,H/8,W/8) float32 offset on the
        model's device, as it goes into the ordinary VAE latent of the colour-padded image.

        SDXL / SD1.5 (C = 4): the network's output, added to the latent. FLUX.1 (C = 16): the network's output
        times 300, the ``offset`` of ``mean + std * offset`` in the FLUX.1 VAE's latent distribution (before
        the 0.1159 shift and 0.3611 scale)."""
        rgba = np.asarray(rgba)
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise InvalidArgumentError(
                f"[LayerDiffuse] The image to encode must be an RGBA uint8 array of shape HxWx4, "
                f"got {rgba.dtype} {tuple(rgba.shape)}.")
        h, w = rgba.shape[:2]
        if h == 0 or w == 0 or h % LATENT_SCALE or w % LATENT_SCALE:
            raise InvalidArgumentError(
                f"[LayerDiffuse] The image to encode must have sides that are positive multiples of 8, got {w}x{h}.")
        alpha = rgba[..., 3:].astype(np.float32) / np.float32(255.0)
        padded = pad_rgb(rgba)
        # the order the network was trained with: alpha first (SDXL / SD1.5), RGBA (FLUX.1)
        feed = np.concatenate([padded, alpha] if self.family.rgba_order else [alpha, padded], axis=2)
        feed = torch.from_numpy(np.ascontiguousarray(feed.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            offset = self.model(feed.to(device=self.device, dtype=self.dtype)).float()
        if self.family.offset_scale != 1.0:
            offset = offset * self.family.offset_scale
        return offset
