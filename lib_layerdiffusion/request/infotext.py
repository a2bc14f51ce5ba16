"""LayerDiffuse parameters in the generation infotext, written with the keys and values the original
extension writes (so infotexts from either read the same) and read back for paste-back.
"""
from __future__ import annotations

from typing import Any, Callable

from .args import ARG_NAMES, LayerDiffuseArgs
from ..errors import LayerDiffuseError
from .methods import Layer, method_by_name

PREFIX = "layerdiffusion_"

# infotext key of each argument; images are written as whether one was given, never their pixels
INFOTEXT_KEYS: dict[str, str] = {name: PREFIX + name for name in ARG_NAMES if name != "output_origin"}


def infotext_fields(args: LayerDiffuseArgs) -> dict[str, Any]:
    return {
        INFOTEXT_KEYS["enabled"]: True,
        INFOTEXT_KEYS["method"]: args.method.value,
        INFOTEXT_KEYS["weight"]: args.weight,
        INFOTEXT_KEYS["ending_step"]: args.ending_step,
        **{INFOTEXT_KEYS[f"{l.value}_image"]: args.image(l) is not None for l in Layer},
        INFOTEXT_KEYS["resize_mode"]: args.resize_mode.value,
        **{INFOTEXT_KEYS[f"{l.value}_additional_prompt"]: args.additional_prompt(l) for l in Layer},
    }


def _read_bool(params: dict, key: str):
    value = params.get(key)
    if value is None:
        return None
    return str(value).strip().casefold() in ("true", "1", "yes")


def _read_float(params: dict, key: str):
    try:
        return float(params[key])
    except (KeyError, TypeError, ValueError):
        return None


def _read_method(params: dict, key: str):
    value = params.get(key)
    if value is None:
        return None
    try:
        return method_by_name(str(value)).value  # legacy spellings map to the current ones
    except LayerDiffuseError:
        return None


def _read_text(params: dict, key: str):
    value = params.get(key)
    return None if value is None else str(value)


def paste_readers() -> dict[str, Callable[[dict], Any]]:
    """For each pasteable argument, a function of the parsed infotext dict giving the UI value, or None
    to leave the component as it is (Forge's paste-back convention). Images are not in the infotext."""
    readers: dict[str, Callable[[dict], Any]] = {
        "enabled": lambda d: _read_bool(d, INFOTEXT_KEYS["enabled"]),
        "method": lambda d: _read_method(d, INFOTEXT_KEYS["method"]),
        "weight": lambda d: _read_float(d, INFOTEXT_KEYS["weight"]),
        "ending_step": lambda d: _read_float(d, INFOTEXT_KEYS["ending_step"]),
        "resize_mode": lambda d: _read_text(d, INFOTEXT_KEYS["resize_mode"]),
    }
    for layer in Layer:
        key = INFOTEXT_KEYS[f"{layer.value}_additional_prompt"]
        readers[f"{layer.value}_additional_prompt"] = lambda d, key=key: _read_text(d, key)
    return readers
