"""The LayerDiffuse arguments of one generation, as one typed, frozen object.

The UI hands them over positionally in the component order (enabled, method, weight, ending_step, fg_image,
bg_image, blend_image, resize_mode, output_origin, fg/bg/blend additional prompts): the original extension's
order, which API clients rely on. API clients may also send a shorter list (the rest take their defaults) or
one dict of named arguments in the first slot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from PIL import Image

from ..images.conditioning_images import DEFAULT_RESIZE_MODE, ResizeMode, resize_mode_by_name, to_pil
from ..errors import InvalidArgumentError
from .methods import DEFAULT_METHOD, Layer, Method, method_by_name

# the positional order of the UI components, which is the API contract
ARG_NAMES: tuple[str, ...] = (
    "enabled", "method", "weight", "ending_step", "fg_image", "bg_image", "blend_image", "resize_mode",
    "output_origin", "fg_additional_prompt", "bg_additional_prompt", "blend_additional_prompt",
)
# other spellings accepted for named arguments
_ALIASES = {"stop_at": "ending_step", "output_original_mat": "output_origin", "foreground": "fg_image",
            "background": "bg_image", "blending": "blend_image", "blend": "blend_image"}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class LayerDiffuseArgs:
    enabled: bool = False
    method: Method = DEFAULT_METHOD
    weight: float = 1.0
    ending_step: float = 1.0
    fg_image: Image.Image | None = field(default=None, compare=False)
    bg_image: Image.Image | None = field(default=None, compare=False)
    blend_image: Image.Image | None = field(default=None, compare=False)
    resize_mode: ResizeMode = DEFAULT_RESIZE_MODE
    output_origin: bool = False
    fg_additional_prompt: str = ""
    bg_additional_prompt: str = ""
    blend_additional_prompt: str = ""

    def image(self, layer: Layer) -> Image.Image | None:
        return getattr(self, f"{layer.value}_image")

    def additional_prompt(self, layer: Layer) -> str:
        return getattr(self, f"{layer.value}_additional_prompt")

    @classmethod
    def from_script_args(cls, *script_args: Any) -> "LayerDiffuseArgs":
        """Parse what Forge passes to the script hooks (UI values or API args)."""
        if _split_string(script_args):
            raise InvalidArgumentError(ARGS_SHAPE_MESSAGE.format(kind="a string"))
        if script_args and isinstance(script_args[0], dict):
            named = dict(script_args[0])
        else:
            if len(script_args) > len(ARG_NAMES):
                script_args = script_args[:len(ARG_NAMES)]
            named = dict(zip(ARG_NAMES, script_args))
        return cls.from_named(named)

    @classmethod
    def from_named(cls, named: dict[str, Any]) -> "LayerDiffuseArgs":
        values: dict[str, Any] = {}
        for key, value in named.items():
            name = _ALIASES.get(str(key), str(key))
            if name not in ARG_NAMES:
                raise InvalidArgumentError(
                    f"[LayerDiffuse] Unknown argument {key!r}. Known arguments: {', '.join(ARG_NAMES)}.")
            if value is not None:  # null means "the default", as a shorter list does
                values[name] = value
        enabled = _as_bool(values.get("enabled", False), "enabled")
        if not enabled:
            # a disabled extension reads nothing else: a half-filled UI must never block a plain generation
            return cls()
        parsed = dict(
            enabled=True,
            method=method_by_name(values["method"]) if "method" in values else DEFAULT_METHOD,
            weight=parse_weight(values.get("weight", 1.0)),
            ending_step=parse_ending_step(values.get("ending_step", 1.0)),
            resize_mode=resize_mode_by_name(values.get("resize_mode") or DEFAULT_RESIZE_MODE),
            output_origin=_as_bool(values.get("output_origin", False), "output_origin"),
        )
        for layer in Layer:
            parsed[f"{layer.value}_image"] = to_pil(values.get(f"{layer.value}_image"), f"{layer.value}_image")
            parsed[f"{layer.value}_additional_prompt"] = _as_text(
                values.get(f"{layer.value}_additional_prompt"), f"{layer.value}_additional_prompt")
        return cls(**parsed)

    def named(self) -> dict[str, Any]:
        """The arguments by name, values as the UI holds them (method and resize mode as strings)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["method"] = self.method.value
        out["resize_mode"] = self.resize_mode.value
        return out


ARGS_SHAPE_MESSAGE = (
    "[LayerDiffuse] The arguments (alwayson_scripts.LayerDiffuse.args) must be a list in the UI order "
    "([enabled, method, weight, ...]) or an object (dict) of named arguments ({{\"enabled\": true, \"method\": "
    "...}}), not {kind}.")


def args_shape_error(args: Any) -> InvalidArgumentError | None:
    """The error for API args that are neither a list nor an object (dict), None when they are one. Forge
    (modules/api/api.py init_script_args) copies `args[i]` into the script's slots, so a string would arrive
    as one character per slot, and a number or null fails inside Forge with a bare 500."""
    if isinstance(args, (list, tuple, dict)):
        return None
    kind = {str: "a string", bool: "a boolean", type(None): "null"}.get(type(args))
    if kind is None:
        kind = "a number" if isinstance(args, (int, float)) else f"a {type(args).__name__}"
    return InvalidArgumentError(ARGS_SHAPE_MESSAGE.format(kind=kind))


def parse_weight(value: Any) -> float:
    """The Weight as a number from 0 to 2, or the error naming the allowed range (also for X/Y/Z plot values)."""
    return _as_number(value, "weight", 0.0, 2.0)


def parse_ending_step(value: Any) -> float:
    """Stop At as a number from 0 to 1, or the error naming the allowed range (also for X/Y/Z plot values)."""
    return _as_number(value, "ending_step (Stop At)", 0.0, 1.0)


def _split_string(script_args: tuple) -> bool:
    """A string given as the args after Forge copied it into the slots one character each: the first two slots
    single characters. Never a usable request (no method name is one character) and never what the UI sends
    (its first slot is a checkbox's bool)."""
    return (len(script_args) >= 2 and all(isinstance(v, str) and len(v) == 1 for v in script_args[:2]))


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if value is None:
        return False
    if isinstance(value, str) and value.strip().casefold() in _TRUE | _FALSE:
        return value.strip().casefold() in _TRUE
    raise InvalidArgumentError(f"[LayerDiffuse] {name} must be true or false, not {value!r}.")


def _as_number(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (low <= number <= high):
        raise InvalidArgumentError(f"[LayerDiffuse] {name} must be a number from {low:g} to {high:g}, not {value!r}.")
    return number


def _as_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"[LayerDiffuse] {name} must be text, not {type(value).__name__}.")
    return value.strip()
