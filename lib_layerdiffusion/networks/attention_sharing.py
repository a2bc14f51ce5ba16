"""SD1.5 attention sharing: the units that replace the UNet's 32 attention layers, and the control encoder.

LayerDiffuse's SD1.5 methods (transparent-only, joint fg/bg/blend, fg->bg, bg->fg) generate several images
("frames") in one batch that see each other. Each of the 32 attention layers is replaced by an
`AttentionSharingUnit`, which
  1. runs the original attention once per frame, each frame with its own LoRA on q/k/v/out and, for the
     2-frame methods, a control signal (an encoded fg or bg image) added to the frame's hidden states;
  2. lets every token attend across the frames ("temporal" attention, with its own projections);
  3. returns what must be ADDED to the layer's input, exactly as the original attention's output is.

Host interface (no host import here; a Forge bridge supplies these):
  * Replace module `<name>` of the diffusion model by its unit, for every name in SD15_ATTENTION_LAYER_NAMES,
    as `AttentionSharingModel.installed_units()` gives them: each keeps the replaced module's to_q/to_k/to_v/to_out
    at their names, so the host's LoRA merging still finds them (Forge: `unet.add_object_patch('diffusion_model.'
    + name, installed)`).
  * The unit is called like the attention it replaces: `unit(x, context=None, value=None,
    transformer_options={})`, with `x` of shape ((batch*frames), tokens, channels), frames interleaved
    (row = sample * frames + frame).
  * `transformer_options['cond_mark']`: float tensor, one value per row, 0 = conditional row, 1 = unconditional
    row (Forge's sampler sets it). Only read when a cond_overwrite applies.
  * `transformer_options['cond_overwrite']`: optional list, one entry per frame: a (1, tokens, 768) text
    embedding or None. In cross-attention it replaces the context of that frame's conditional rows.
  * Control (2-frame methods): `AttentionSharingModel.set_control(image01)` with an RGB image (1, 3, H, W)
    in [0, 1] at the output resolution; every unit then picks the feature map whose H*W equals its token count.
    The control encoder always runs in float32, as the original runs it (b1e66511,
    lib_layerdiffusion/attention_sharing.py AttentionSharingPatcher: only `self.hookers.half()` on fp16 devices,
    `set_control` feeds `img.cpu().float()` to the float32 `kwargs_encoder`); its float32 maps are cast to each
    unit's activations where used, as the original's units do.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError, ModelFileError
from .safetensors_io import load_state_dict, read_header

logger = logging.getLogger(__name__)


def _sd15_layer_names() -> tuple[str, ...]:
    blocks = [f"input_blocks.{i}" for i in (1, 2, 4, 5, 7, 8)]
    blocks += [f"output_blocks.{i}" for i in range(3, 12)]
    blocks += ["middle_block"]
    return tuple(f"{b}.1.transformer_blocks.0.{a}" for b in blocks for a in ("attn1", "attn2"))


# Index i is `hookers.layers.{i}` in the model files.
SD15_ATTENTION_LAYER_NAMES: tuple[str, ...] = _sd15_layer_names()

COND_MARK_KEY = "cond_mark"
COND_OVERWRITE_KEY = "cond_overwrite"

CONTROL_CHANNELS = 256


@dataclass(frozen=True)
class AttentionSharingConfig:
    """How the units of one model file are shaped."""

    frames: int
    use_control: bool
    rank: int = 256


# Model-file stem (without `layer_` / `.safetensors`) -> the layout its weights were trained with.
SD15_CONFIGS: dict[str, AttentionSharingConfig] = {
    "sd15_transparent_attn": AttentionSharingConfig(frames=1, use_control=False),
    "sd15_joint": AttentionSharingConfig(frames=3, use_control=False),
    "sd15_fg2bg": AttentionSharingConfig(frames=2, use_control=True),
    "sd15_bg2fg": AttentionSharingConfig(frames=2, use_control=True),
}

# (q, k, v, heads) -> output, all (batch, tokens, heads*dim_head).
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head scaled-dot-product attention, heads split from the channel dim."""
    b, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.reshape(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, inner)


# The units cast weights to the activations at use: after Forge's object patch the wrapped originals are no
# longer part of the UNet, so they are not moved with it, and the units' own weights may be kept in another dtype.
def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = layer.bias.to(x) if layer.bias is not None else None
    return F.linear(x, layer.weight.to(x), bias)


def _conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bias = layer.bias.to(x) if layer.bias is not None else None
    return F.conv2d(x, layer.weight.to(x), bias, layer.stride, layer.padding)


class LoRALinear(nn.Module):
    """An original Linear plus a low-rank delta: weight = original + up @ down (merged per call)."""

    def __init__(self, original: nn.Linear, rank: int):
        super().__init__()
        self.down = nn.Linear(original.in_features, rank, bias=False)
        self.up = nn.Linear(rank, original.out_features, bias=False)
        # A tuple hides the original from state_dict()/.to(): it belongs to the UNet, not to the model file.
        self._original = (original,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        org = self._original[0]
        weight = org.weight.to(x) + torch.mm(self.up.weight.to(x), self.down.weight.to(x))
        bias = org.bias.to(x) if org.bias is not None else None
        return F.linear(x, weight, bias)


def _control_conv(out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(CONTROL_CHANNELS, CONTROL_CHANNELS, kernel_size=3, padding=1),
        nn.SiLU(),
        nn.Conv2d(CONTROL_CHANNELS, out_channels, kernel_size=1),
    )


def _frames_first(t: torch.Tensor, frames: int) -> torch.Tensor:
    """((b f), ...) -> (f, b, ...)."""
    return t.unflatten(0, (-1, frames)).transpose(0, 1)


def _frames_last(t: torch.Tensor) -> torch.Tensor:
    """(f, b, ...) -> ((b f), ...)."""
    return t.transpose(0, 1).flatten(0, 1)


def _match_token_count(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat two contexts along the token dim to a common length. Attention over a context repeated k times
    equals attention over the context itself, so this only lets prompts of different lengths be mixed."""
    na, nb = a.shape[1], b.shape[1]
    if na == nb:
        return a, b
    n = math.lcm(na, nb)
    return a.repeat(1, n // na, 1), b.repeat(1, n // nb, 1)


class AttentionSharingUnit(nn.Module):
    """Replaces one attention layer; called like it, returns the residual to add to the layer's input."""

    def __init__(
        self,
        original: nn.Module,
        frames: int,
        use_control: bool,
        rank: int = 256,
        attention_fn: AttentionFn = sdpa_attention,
    ):
        super().__init__()
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.heads = int(original.heads)
        self.frames = frames
        self.attention_fn = attention_fn
        self._original = (original,)  # not ours to save or move; see LoRALinear
        hidden = original.to_k.out_features

        def loras(layer: nn.Linear) -> nn.ModuleList:
            return nn.ModuleList(LoRALinear(layer, rank) for _ in range(frames))

        self.to_q_lora = loras(original.to_q)
        self.to_k_lora = loras(original.to_k)
        self.to_v_lora = loras(original.to_v)
        self.to_out_lora = loras(original.to_out[0])

        self.temporal_i = nn.Linear(hidden, hidden)
        self.temporal_n = nn.LayerNorm(hidden, eps=1e-6)
        self.temporal_q = nn.Linear(hidden, hidden)
        self.temporal_k = nn.Linear(hidden, hidden)
        self.temporal_v = nn.Linear(hidden, hidden)
        self.temporal_o = nn.Linear(hidden, hidden)

        self.control_convs = nn.ModuleList(_control_conv(hidden) for _ in range(frames)) if use_control else None
        self.control_signals: dict[int, torch.Tensor] | None = None

    @property
    def original(self) -> nn.Module:
        """The wrapped attention module (from the host's UNet)."""
        return self._original[0]

    def set_control_signals(self, signals: Mapping[int, torch.Tensor] | None) -> None:
        """signals: token count (H*W) -> (1 or batch, 256, H, W) feature map; None clears them."""
        self.control_signals = dict(signals) if signals is not None else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        transformer_options: Mapping | None = None,
    ) -> torch.Tensor:
        # `value` is ignored, as in the reference: the shared attention always derives v from the context.
        if mask is not None:
            raise ValueError("[LayerDiffuse] attention sharing does not support attention masks")
        options = transformer_options if transformer_options is not None else {}
        if x.shape[0] % self.frames:
            raise InvalidArgumentError(
                f"[LayerDiffuse] this method generates {self.frames} images together, but the UNet got a batch "
                f"of {x.shape[0]} rows; the batch size must be a multiple of {self.frames}."
            )
        hidden = _frames_first(x, self.frames)  # (f, b, tokens, c)
        if self.control_convs is not None:
            hidden = hidden + self._control(hidden)
        contexts = hidden if context is None else _frames_first(context, self.frames)
        overwrites = self._overwrites(options) if context is not None else [None] * self.frames

        outs = []
        for f in range(self.frames):
            ctx = contexts[f]
            if overwrites[f] is not None:
                ctx = self._overwrite_cond_rows(ctx, overwrites[f], options, f)
            q = self.to_q_lora[f](hidden[f])
            k = self.to_k_lora[f](ctx)
            v = self.to_v_lora[f](ctx)
            o = self.to_out_lora[f](self.attention_fn(q, k, v, self.heads))
            outs.append(self.original.to_out[1](o))  # the original's dropout (identity at inference)
        hidden = _frames_last(hidden + torch.stack(outs))

        hidden = hidden + self._temporal(hidden)
        return hidden - x

    def _control(self, hidden: torch.Tensor) -> torch.Tensor:
        tokens = int(hidden.shape[2])
        if self.control_signals is None:
            raise RuntimeError("[LayerDiffuse] a control image must be set (set_control) before sampling")
        signal = self.control_signals.get(tokens)
        if signal is None:
            raise InvalidArgumentError(
                f"[LayerDiffuse] no control feature map with {tokens} tokens (have {sorted(self.control_signals)}); "
                "the control image must have the output's size, and width and height must be multiples of 64."
            )
        signal = signal.to(hidden)
        maps = []
        for convs in self.control_convs:
            y = _conv(convs[2], convs[1](_conv(convs[0], signal)))
            maps.append(y.flatten(2).transpose(1, 2))  # (b, h*w, c)
        return torch.stack(maps)  # (f, b or 1, tokens, c): broadcasts over the batch

    def _overwrites(self, options: Mapping) -> list[torch.Tensor | None]:
        given = list(options.get(COND_OVERWRITE_KEY) or [])
        return (given + [None] * self.frames)[: self.frames]

    def _overwrite_cond_rows(self, ctx: torch.Tensor, overwrite: torch.Tensor, options: Mapping, frame: int):
        if COND_MARK_KEY not in options:
            raise RuntimeError("[LayerDiffuse] transformer_options has no 'cond_mark' to tell cond rows apart")
        mark = _frames_first(options[COND_MARK_KEY], self.frames)[frame].to(ctx)[:, None, None]
        overwrite, ctx = _match_token_count(overwrite.to(ctx), ctx)
        return overwrite * (1.0 - mark) + ctx * mark

    def _temporal(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each token attends to the same token in the other frames."""
        t = F.layer_norm(
            hidden, self.temporal_n.normalized_shape, self.temporal_n.weight.to(hidden),
            self.temporal_n.bias.to(hidden), self.temporal_n.eps,
        )
        t = _linear(self.temporal_i, t)
        tokens = t.shape[1]
        t = t.unflatten(0, (-1, self.frames)).transpose(1, 2).flatten(0, 1)  # ((b tokens), f, c)
        q, k, v = (_linear(layer, t) for layer in (self.temporal_q, self.temporal_k, self.temporal_v))
        t = _linear(self.temporal_o, self.attention_fn(q, k, v, self.heads))
        return t.unflatten(0, (-1, tokens)).transpose(1, 2).flatten(0, 1)  # ((b f), tokens, c)


def _conv_stage(channels: Sequence[tuple[int, int, int]]) -> nn.Sequential:
    """(in, out, stride) per conv, each followed by SiLU."""
    layers: list[nn.Module] = []
    for cin, cout, stride in channels:
        layers += [nn.Conv2d(cin, cout, kernel_size=3, padding=1, stride=stride), nn.SiLU()]
    return nn.Sequential(*layers)


class ControlEncoder(nn.Module):
    """Encodes a control image in [-1, 1] into 256-channel maps at 1/8, 1/16, 1/32 and 1/64 of its size."""

    def __init__(self):
        super().__init__()
        c = CONTROL_CHANNELS
        self.blocks_0 = _conv_stage(
            [(3, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, c, 2), (c, c, 1)]
        )
        self.blocks_1 = _conv_stage([(c, c, 2), (c, c, 1)])
        self.blocks_2 = _conv_stage([(c, c, 2), (c, c, 1)])
        self.blocks_3 = _conv_stage([(c, c, 2), (c, c, 1)])

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """-> {H*W: (batch, 256, H, W)}, keyed by token count so each unit finds its resolution."""
        maps = {}
        for stage in (self.blocks_0, self.blocks_1, self.blocks_2, self.blocks_3):
            for layer in stage:
                x = _conv(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
            maps[int(x.shape[2]) * int(x.shape[3])] = x
        return maps


class InstalledUnit(nn.Module):
    """What goes in place of an attention module: its unit, with the replaced module's children (to_q, to_k,
    to_v, to_out) kept at their own names. Every Forge merges a user's LoRA into the UNet's weights by walking
    those names while the units are in (Forge main backend/patcher/lora.py LoraLoader.refresh runs after
    forge_patch_model; reForge's ModelPatcher.load patches what named_modules finds; old Forge's patch_model
    what state_dict lists), and puts the weights back the same way. The unit computes with these very modules,
    so the LoRA reaches it and is taken off again by the host; the unit's own weights stay out of the way
    (under `unit.`). CrossAttention has no parameters of its own, only these children."""

    def __init__(self, unit: AttentionSharingUnit):
        super().__init__()
        for name, child in unit.original.named_children():
            self.add_module(name, child)
        self.unit = unit
        self.heads = unit.heads

    @property
    def original(self) -> nn.Module:
        """The attention module this stands in for (unwrapped by sd15_attention_modules)."""
        return self.unit.original

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.unit(*args, **kwargs)


class _Hookers(nn.Module):
    # Exists only to give the units the `hookers.layers.{i}` names the model files use.
    def __init__(self, units: Sequence[AttentionSharingUnit]):
        super().__init__()
        self.layers = nn.ModuleList(units)


class AttentionSharingModel(nn.Module):
    """The contents of one SD1.5 attention-sharing file: state-dict keys `hookers.layers.{i}.*` (+
    `kwargs_encoder.*` with control). Build it from the host's attention modules in SD15_ATTENTION_LAYER_NAMES
    order, then install `units[i]` in place of module i."""

    def __init__(
        self,
        attention_modules: Sequence[nn.Module],
        config: AttentionSharingConfig,
        attention_fn: AttentionFn = sdpa_attention,
    ):
        super().__init__()
        self.config = config
        self.hookers = _Hookers(
            [AttentionSharingUnit(m, config.frames, config.use_control, config.rank, attention_fn)
             for m in attention_modules]
        )
        self.kwargs_encoder = ControlEncoder() if config.use_control else None
        self._installed: tuple[InstalledUnit, ...] = ()  # a tuple: not submodules (see installed_units)

    @property
    def units(self) -> list[AttentionSharingUnit]:
        return list(self.hookers.layers)

    def installed_units(self) -> list[InstalledUnit]:
        """The modules to put in place of the attention modules, one per unit (built once, so every sampling
        pass of a generation installs the same objects). Kept out of this model's state dict: they hold the
        UNet's own layers."""
        if not self._installed:
            self._installed = tuple(InstalledUnit(unit) for unit in self.units)
        return list(self._installed)

    @torch.no_grad()
    def set_control(self, image01: torch.Tensor) -> None:
        """image01: (1, 3, H, W) RGB in [0, 1] at the output size. Encodes it once for all units, in float32
        on the encoder's device whatever the units' dtype (the maps stay float32; each unit casts them to its
        activations' dtype and device when it uses them)."""
        if self.kwargs_encoder is None:
            raise RuntimeError("[LayerDiffuse] this attention-sharing model takes no control image")
        param = next(self.kwargs_encoder.parameters())
        signals = self.kwargs_encoder(image01.to(device=param.device, dtype=torch.float32) * 2.0 - 1.0)
        self.set_control_signals(signals)

    def set_control_signals(self, signals: Mapping[int, torch.Tensor] | None) -> None:
        for unit in self.units:
            unit.set_control_signals(signals)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def load_checked(self, state_dict: Mapping[str, torch.Tensor], source: str, assign: bool = False) -> None:
        """Strict load; a layout mismatch raises ModelFileError naming `source` and the keys."""
        check_layout({k: v.shape for k, v in state_dict.items()}, self.expected_shapes(), source)
        self.load_state_dict(state_dict, strict=True, assign=assign)


def sd15_attention_modules(diffusion_model: nn.Module,
                           names: Sequence[str] = SD15_ATTENTION_LAYER_NAMES) -> list[nn.Module]:
    """The UNet's own attention modules at `names` (default: the 32 of SD1.5, ldm/Forge layout, in file order).
    A unit still patched into a shared model (by an earlier generation) gives back the module it wraps."""
    try:
        modules = [diffusion_model.get_submodule(name) for name in names]
    except AttributeError as e:
        raise InvalidArgumentError(f"[LayerDiffuse] the UNet is not SD1.5-shaped: {e}") from None
    return [getattr(m, "original", m) for m in modules]  # a unit (or any wrapper) exposes what it wraps


def check_layout(
    found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], source: str
) -> None:
    """Raise ModelFileError unless `found` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} is {list(found[k])}, expected {list(expected[k])}"
        for k in sorted(set(found) & set(expected))
        if tuple(found[k]) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return

    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")

    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {few(wrong)}")
    raise ModelFileError(
        f"[LayerDiffuse] The model file {source} does not fit this method's attention-sharing layout "
        f"({'; '.join(problems)}). Make sure it is the file for the chosen method; if it is, delete it so it "
        f"is downloaded again."
    )


def load_attention_sharing(
    path: str,
    attention_modules: Sequence[nn.Module],
    config: AttentionSharingConfig,
    dtype: torch.dtype = torch.float32,
    attention_fn: AttentionFn = sdpa_attention,
) -> AttentionSharingModel:
    """Build the model for `attention_modules` and fill it from the safetensors file at `path` (`dtype`: the
    units'; the control encoder stays float32, see build_attention_sharing).

    The layout is checked against the file's header before any tensor is read."""
    header = read_header(path)
    with torch.device("meta"):
        expected = AttentionSharingModel(attention_modules, config, attention_fn).expected_shapes()
    check_layout({k: v["shape"] for k, v in header.items()}, expected, path)
    return build_attention_sharing(load_state_dict(path), attention_modules, config, path, dtype, attention_fn)


def build_attention_sharing(
    state_dict: Mapping[str, torch.Tensor],
    attention_modules: Sequence[nn.Module],
    config: AttentionSharingConfig,
    source: str,
    dtype: torch.dtype = torch.float32,
    attention_fn: AttentionFn = sdpa_attention,
) -> AttentionSharingModel:
    """Build the model for `attention_modules` from an already loaded state dict (e.g. a model store's cached
    one). The units are built on the meta device and take the given tensors (no copy when the dtype matches),
    so their ~280M parameters are never initialised only to be overwritten.

    `dtype` is the attention units' dtype (the original halves only them on fp16 devices); the control encoder
    (`kwargs_encoder`, the 2-frame methods) is always float32, whatever the file's or the units' dtype."""
    with torch.device("meta"):
        model = AttentionSharingModel(attention_modules, config, attention_fn)
    model.load_checked(state_dict, source, assign=True)
    model.hookers.to(dtype)
    if model.kwargs_encoder is not None:
        model.kwargs_encoder.to(torch.float32)
    logger.info("[LayerDiffuse] loaded attention sharing (%d frames%s) from %s", config.frames,
                ", with control" if config.use_control else "", source)
    return model
