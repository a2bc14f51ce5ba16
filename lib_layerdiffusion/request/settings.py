"""LayerDiffuse's entries in Forge's Settings tab (section "LayerDiffuse"), as data, and their typed values.

The host bridge registers OPTIONS with Forge and reads them back into a frozen `Settings` for each generation,
so a change in the Settings tab applies to the next generation and never in the middle of one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgumentError

SECTION = ("layerdiffuse", "LayerDiffuse")
PASS_CHOICES = (1, 2, 4, 8)
PRECISION_CHOICES = ("Automatic", "fp16", "bf16", "fp32")


@dataclass(frozen=True)
class Option:
    key: str  # the name in Forge's config.json
    field: str  # the Settings attribute
    default: Any
    label: str
    choices: tuple = ()  # a radio button when given, else a checkbox (bool) or a textbox (str)


OPTIONS: tuple[Option, ...] = (
    Option("layerdiffuse_models_folder", "models_folder", "", "Model folder"),
    Option("layerdiffuse_allow_download", "allow_download", True, "Download missing model files automatically"),
    Option("layerdiffuse_decoder_passes", "decoder_passes", 8,
           "Decoder passes (1, 2, 4 or 8; 8 is the reference quality)", PASS_CHOICES),
    Option("layerdiffuse_decoder_precision", "decoder_precision", "Automatic", "Decoder precision on GPU",
           PRECISION_CHOICES),
    Option("layerdiffuse_save_preview", "save_preview", False, "Save the checkerboard preview"),
    Option("layerdiffuse_save_layered_file", "save_layered_file", False, "Save a layered OpenRaster (.ora) file"),
    Option("layerdiffuse_save_psd_file", "save_psd_file", False, "Save a layered Photoshop (.psd) file"),
    Option("layerdiffuse_save_rgba_when_grid_only", "save_rgba_when_grid_only", False,
           "Save the transparent images even when only grids are saved"),
    Option("layerdiffuse_keep_alpha_upscaling", "keep_alpha_when_upscaling", True,
           "Keep transparency when upscaling"),
    Option("layerdiffuse_trim_margins", "trim_margins", False, "Trim transparent margins"),
    Option("layerdiffuse_trim_margin", "trim_margin", 0, "Margin left around the visible pixels when trimming (px)"),
    Option("layerdiffuse_bleed_colour", "bleed_colour", False, "Bleed colour into transparent pixels"),
)


@dataclass(frozen=True)
class Settings:
    models_folder: str = ""  # empty: the host's default (Forge: models/layer_model)
    allow_download: bool = True
    decoder_passes: int = 8
    decoder_precision: str = "Automatic"
    save_preview: bool = False
    save_layered_file: bool = False  # OpenRaster
    save_psd_file: bool = False
    save_rgba_when_grid_only: bool = False
    keep_alpha_when_upscaling: bool = True
    trim_margins: bool = False
    trim_margin: int = 0  # pixels
    bleed_colour: bool = False

    @property
    def layered_formats(self) -> tuple[str, ...]:
        """The layered files to write beside the PNGs (file extensions)."""
        return tuple(fmt for fmt, on in (("ora", self.save_layered_file), ("psd", self.save_psd_file)) if on)

    @classmethod
    def from_values(cls, get) -> "Settings":
        """`get(key, default)` reads one option (Forge: shared.opts.data.get)."""
        values = {o.field: get(o.key, o.default) for o in OPTIONS}
        try:
            values["decoder_passes"] = int(values["decoder_passes"])
        except (TypeError, ValueError):
            values["decoder_passes"] = 8
        if values["decoder_passes"] not in PASS_CHOICES:
            raise InvalidArgumentError(
                f"[LayerDiffuse] Settings → LayerDiffuse: decoder passes must be one of 1, 2, 4, 8, not "
                f"{values['decoder_passes']}.")
        if values["decoder_precision"] not in PRECISION_CHOICES:
            values["decoder_precision"] = "Automatic"
        values["models_folder"] = str(values["models_folder"] or "").strip()
        try:
            values["trim_margin"] = _pixels(values["trim_margin"])
        except InvalidArgumentError:
            if values["trim_margins"]:
                raise
            values["trim_margin"] = 0  # not used while trimming is off: no reason to stop any generation
        return cls(**{k: v for k, v in values.items()})

    def infotext_fields(self, on_gpu: bool) -> dict[str, Any]:
        """The settings that change the image, when not at their defaults (so default infotexts stay as the
        original extension writes them)."""
        fields: dict[str, Any] = {}
        if self.decoder_passes != 8:
            fields["layerdiffusion_decoder_passes"] = self.decoder_passes
        if on_gpu and self.decoder_precision != "Automatic":
            fields["layerdiffusion_decoder_precision"] = self.decoder_precision
        return fields


def _pixels(value) -> int:
    """A whole number of pixels, 0 or more (Forge's number field may hand over 8.0 or "8"; unset is 0)."""
    if value is None or value == "":
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number >= 0 and number == int(number)):
        raise InvalidArgumentError(
            f"[LayerDiffuse] Settings → LayerDiffuse: the trim margin must be a whole number of pixels, 0 or more, "
            f"not {value!r}.")
    return int(number)


_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def decoder_dtype(device: torch.device, precision: str, host_prefers_fp16, host_supports_bf16=None) -> torch.dtype:
    """The transparent VAE's dtype: fp32 on the CPU; on a GPU the precision chosen in Settings, or for
    "Automatic" the host's own choice (`host_prefers_fp16(device)`, e.g. Forge's should_use_fp16).
    `host_supports_bf16(device)` is given for the FLUX.1 nets: their pixel input is unclipped and their
    activations outgrow fp16's range, so "Automatic" takes bf16 where the device has it (the Flux port runs them
    in bf16), then fp16 / fp32 as for the others."""
    if device.type == "cpu":
        return torch.float32
    if precision in _PRECISION_DTYPES:
        return _PRECISION_DTYPES[precision]
    if host_supports_bf16 is not None and host_supports_bf16(device):
        return torch.bfloat16
    return torch.float16 if host_prefers_fp16(device) else torch.float32
