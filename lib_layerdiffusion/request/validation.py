"""Checks that a LayerDiffuse request can run on the loaded checkpoint, before anything is loaded or patched.

Each failure names what the user should change.
"""
from __future__ import annotations

from .args import LayerDiffuseArgs
from ..errors import InvalidArgumentError, UnsupportedModelError
from .methods import LAYER_LABELS, BaseModel


# the latent channels each base model's LayerDiffuse files were trained for
LATENT_CHANNELS = {BaseModel.SDXL: 4, BaseModel.SD15: 4, BaseModel.FLUX: 16}


def _with_article(base: BaseModel, bracket: str = "") -> str:
    """'an SDXL', 'an SD1.5', 'a FLUX.1' (with '(' : 'an (SDXL)' as the method names start)."""
    article = "an" if base.value.startswith("S") else "a"
    return f"{article} {bracket}{base.value}{')' if bracket else ''}"


def check_request(args: LayerDiffuseArgs, base: BaseModel | None, batch_size: int,
                  latent_channels: int | None = None) -> None:
    """`latent_channels`: the loaded checkpoint's VAE latent channels as the host reports them (None: unknown);
    a checkpoint flagged as the right family with other channels (e.g. an SDXL UNet with a 32-channel VAE) is
    refused too."""
    method = args.method
    needed = _with_article(method.base)
    if base is None:
        raise UnsupportedModelError(
            f"[LayerDiffuse] The loaded checkpoint is not SDXL, SD1.5 or FLUX.1; '{method.value}' needs {needed} "
            f"checkpoint. Load one, or untick LayerDiffuse.")
    if base is not method.base:
        raise UnsupportedModelError(
            f"[LayerDiffuse] '{method.value}' needs {needed} checkpoint, but the loaded checkpoint is "
            f"{base.value}. Load {needed} checkpoint, or choose {_with_article(base, '(')} method.")
    expected = LATENT_CHANNELS[method.base]
    if latent_channels is not None and latent_channels != expected:
        raise UnsupportedModelError(
            f"[LayerDiffuse] '{method.value}' needs a standard {method.base.value} checkpoint, whose VAE has "
            f"{expected} latent channels; the loaded one has {latent_channels}. Load a standard "
            f"{method.base.value} checkpoint, or untick LayerDiffuse.")
    for layer in method.inputs:
        if args.image(layer) is None:
            raise InvalidArgumentError(
                f"[LayerDiffuse] '{method.value}' needs a {LAYER_LABELS[layer]} image: add one in the "
                f"{LAYER_LABELS[layer].capitalize()} input (API: {layer.value}_image as base64 PNG).")
    group = method.group_size
    if batch_size % group != 0:
        raise InvalidArgumentError(
            f"[LayerDiffuse] '{method.value}' makes {group} images per group "
            f"({', '.join(LAYER_LABELS[f] for f in method.frames)}): set Batch size to a multiple of {group} "
            f"(e.g. {group}); it is {batch_size}.")
