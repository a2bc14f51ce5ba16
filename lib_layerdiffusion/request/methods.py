"""The LayerDiffuse methods as data.

One row per method: which base model it was trained for, which file patches the UNet and how, which input
images it needs (in the order their latents are concatenated), how many frames make one group, and which
frames come out transparent. Everything else (UI visibility, validation, patching, decoding, infotext) reads
this table instead of branching on method names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import InvalidArgumentError


class BaseModel(str, enum.Enum):
    SDXL = "SDXL"
    SD15 = "SD1.5"
    FLUX = "FLUX.1"


# the transparent VAE's decoder / encoder files (model-store names) of each base model
DECODER_FILES = {BaseModel.SDXL: "vae_transparent_decoder", BaseModel.SD15: "layer_sd15_vae_transparent_decoder",
                 BaseModel.FLUX: "TransparentVAE"}
ENCODER_FILES = {BaseModel.SDXL: "vae_transparent_encoder", BaseModel.SD15: "layer_sd15_vae_transparent_encoder",
                 BaseModel.FLUX: "TransparentVAE"}

# whether the transparent decoder reads the VAE's output unclipped, as that base model's reference feeds it (the
# FLUX.1 port: `vae.decode(z).sample * 0.5 + 0.5`; the SD/SDXL reference decodes from the clipped [0, 1] image)
DECODER_READS_UNCLIPPED = {BaseModel.SDXL: False, BaseModel.SD15: False, BaseModel.FLUX: True}


class PatchKind(str, enum.Enum):
    # a Forge "frozen patcher" file: keys `diffusion_model.<param>::lora::i` or `::diff::0`, merged as weight patches
    WEIGHT_PATCH = "weight_patch"
    # SD1.5 attention sharing: the 32 attention layers are replaced by units that look across frames
    ATTENTION_SHARING = "attention_sharing"
    # a diffusers/PEFT LoRA (the FLUX.1 port's), mapped onto the model by the host's own LoRA key mapping
    PEFT_LORA = "peft_lora"


class Layer(str, enum.Enum):
    FOREGROUND = "fg"
    BACKGROUND = "bg"
    BLEND = "blend"


LAYER_LABELS = {Layer.FOREGROUND: "foreground", Layer.BACKGROUND: "background", Layer.BLEND: "blended"}


@dataclass(frozen=True)
class Method:
    value: str  # the UI / infotext / API spelling, exactly as the original extension spells it
    base: BaseModel
    patch_kind: PatchKind
    model_file: str  # model store name of the UNet patch
    # input images; for WEIGHT_PATCH their VAE latents are concatenated in this order as the concat condition,
    # for ATTENTION_SHARING the single image is the control image
    inputs: tuple[Layer, ...] = ()
    # what each frame of a group is; one frame for the single-image methods
    frames: tuple[Layer, ...] = (Layer.FOREGROUND,)
    # frames whose result is a transparent image, decoded by the transparent VAE decoder
    transparent_frames: tuple[Layer, ...] = ()
    # additional per-frame prompts the method takes (SD1.5 multi-frame methods)
    prompts: tuple[Layer, ...] = ()
    # the first public version's spelling (no "(SDXL) " prefix), accepted when reading infotexts and args
    legacy_values: tuple[str, ...] = ()

    @property
    def group_size(self) -> int:
        return len(self.frames)

    @property
    def makes_transparent(self) -> bool:
        return bool(self.transparent_frames)

    @property
    def decoder_file(self) -> str:
        return DECODER_FILES[self.base]

    @property
    def encoder_file(self) -> str:
        return ENCODER_FILES[self.base]

    def is_transparent_frame(self, index_in_batch: int) -> bool:
        return self.frames[index_in_batch % self.group_size] in self.transparent_frames

    def frame_of(self, index_in_batch: int) -> Layer:
        return self.frames[index_in_batch % self.group_size]


FG, BG, BLEND = Layer.FOREGROUND, Layer.BACKGROUND, Layer.BLEND

METHODS: tuple[Method, ...] = (
    Method("(SD1.5) Only Generate Transparent Image (Attention Injection)", BaseModel.SD15,
           PatchKind.ATTENTION_SHARING, "layer_sd15_transparent_attn", transparent_frames=(FG,)),
    Method("(SD1.5) From Foreground to Background (need batch size 2)", BaseModel.SD15,
           PatchKind.ATTENTION_SHARING, "layer_sd15_fg2bg", inputs=(FG,), frames=(BG, BLEND),
           prompts=(BG, BLEND)),
    Method("(SD1.5) From Background to Foreground (need batch size 2)", BaseModel.SD15,
           PatchKind.ATTENTION_SHARING, "layer_sd15_bg2fg", inputs=(BG,), frames=(FG, BLEND),
           transparent_frames=(FG,), prompts=(FG, BLEND)),
    Method("(SD1.5) Generate Everything Together (need batch size 3)", BaseModel.SD15,
           PatchKind.ATTENTION_SHARING, "layer_sd15_joint", frames=(FG, BG, BLEND),
           transparent_frames=(FG,), prompts=(FG, BG, BLEND)),
    Method("(SDXL) Only Generate Transparent Image (Attention Injection)", BaseModel.SDXL,
           PatchKind.WEIGHT_PATCH, "layer_xl_transparent_attn", transparent_frames=(FG,),
           legacy_values=("Only Generate Transparent Image (Attention Injection)",)),
    Method("(SDXL) Only Generate Transparent Image (Conv Injection)", BaseModel.SDXL,
           PatchKind.WEIGHT_PATCH, "layer_xl_transparent_conv", transparent_frames=(FG,),
           legacy_values=("Only Generate Transparent Image (Conv Injection)",)),
    Method("(SDXL) From Foreground to Blending", BaseModel.SDXL,
           PatchKind.WEIGHT_PATCH, "layer_xl_fg2ble", inputs=(FG,), frames=(BLEND,),
           legacy_values=("From Foreground to Blending",)),
    Method("(SDXL) From Foreground and Blending to Background", BaseModel.SDXL,
           PatchKind.WEIGHT_PATCH, "layer_xl_fgble2bg", inputs=(FG, BLEND), frames=(BG,),
           legacy_values=("From Foreground and Blending to Background",)),
    Method("(SDXL) From Background to Blending", BaseModel.SDXL,
           PatchKind.WEIGHT_PATCH, "layer_xl_bg2ble", inputs=(BG,), frames=(BLEND,),
           legacy_values=("From Background to Blending",)),
    Method("(SDXL) From Background and Blending to Foreground", BaseModel.SDXL,
           PatchKind.WEIGHT_PATCH, "layer_xl_bgble2fg", inputs=(BG, BLEND), frames=(FG,),
           transparent_frames=(FG,), legacy_values=("From Background and Blending to Foreground",)),
    Method("(FLUX.1) Only Generate Transparent Image", BaseModel.FLUX, PatchKind.PEFT_LORA, "layerlora",
           transparent_frames=(FG,)),
)

METHOD_VALUES: tuple[str, ...] = tuple(m.value for m in METHODS)
DEFAULT_METHOD = METHODS[4]  # SDXL attention injection, the original extension's default

_BY_NAME = {name.casefold(): m for m in METHODS for name in (m.value, *m.legacy_values)}


def method_by_name(name: str) -> Method:
    """Find a method by its current or legacy spelling (case-insensitive, surrounding spaces ignored)."""
    if isinstance(name, str):
        found = _BY_NAME.get(name.strip().casefold())
        if found is not None:
            return found
    choices = "; ".join(METHOD_VALUES)
    raise InvalidArgumentError(f"[LayerDiffuse] Unknown method {name!r}. Choose one of: {choices}.")
