"""The LayerDiffuse UNet patch files (`layer_xl_*`): their key format, read in one place.

Keys are `diffusion_model.<parameter>::<kind>::<slot>`, the layout Forge's `UnetPatcher.load_frozen_patcher`
reads: kind `lora` with slot 0 the up and slot 1 the down matrix, kind `diff` with slot 0 the weight offset.
Every host bridge turns a parsed entry into its own patch value; none of them parses keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ModelFileError

SLOTS = 16  # Forge's frozen-patcher list length
_NEEDED_SLOTS = {"lora": (0, 1), "diff": (0,)}


@dataclass(frozen=True)
class WeightPatch:
    """One parameter's patch: `kind` ('lora' or 'diff') and its tensors by slot (None where the file has none)."""
    kind: str
    slots: tuple[torch.Tensor | None, ...]

    @property
    def up(self) -> torch.Tensor:
        return self.slots[0]

    @property
    def down(self) -> torch.Tensor:
        return self.slots[1]

    @property
    def diff(self) -> torch.Tensor:
        return self.slots[0]


def _bad(filename: str, key: str, why: str) -> ModelFileError:
    return ModelFileError(
        f"[LayerDiffuse] {filename} is not a LayerDiffuse UNet patch file ({why}: {key!r}). Delete it so that it "
        f"is downloaded again.")


def parse_patch_file(filename: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, WeightPatch]:
    """{'diffusion_model.<parameter>': WeightPatch}. A key that is not `<parameter>::<lora|diff>::<0..15>`, a
    parameter with two kinds, or a patch missing a slot its kind needs raises ModelFileError naming the file."""
    kinds: dict[str, str] = {}
    slots: dict[str, list] = {}
    for key, tensor in state_dict.items():
        parts = key.split("::")
        if len(parts) != 3:
            raise _bad(filename, key, "unexpected key")
        param, kind, slot = parts
        if kind not in _NEEDED_SLOTS:
            raise _bad(filename, key, f"unknown patch kind {kind!r}")
        if not slot.isdigit() or int(slot) >= SLOTS:  # isdigit: no sign, so '-1' is refused too
            raise _bad(filename, key, f"slot must be 0 to {SLOTS - 1}")
        if kinds.setdefault(param, kind) != kind:
            raise _bad(filename, key, "two patch kinds for one parameter")
        slots.setdefault(param, [None] * SLOTS)[int(slot)] = tensor
    patches = {}
    for param, values in slots.items():
        kind = kinds[param]
        missing = [i for i in _NEEDED_SLOTS[kind] if values[i] is None]
        if missing:
            raise _bad(filename, f"{param}::{kind}::{missing[0]}", "missing")
        patches[param] = WeightPatch(kind, tuple(values))
    return patches
