"""The LayerDiffuse transparent VAE decoder network ("UNet1024"), in plain PyTorch.

The published checkpoint was saved from a diffusers model, so the module tree below reproduces the
diffusers block layout and parameter names exactly (``down_blocks.N.resnets.M.norm1``, ``...attentions.M.to_q``,
``...downsamplers.0.conv``, ``mid_block...``, ``up_blocks.N.upsamplers.0.conv``) so that the file loads with
``strict=True``. The blocks compute what diffusers' ResnetBlock2D / Attention (SDPA processor, residual
connection, output factor 1) / Downsample2D / Upsample2D compute for this configuration, with no diffusers import.

Layout: seven levels with widths (32, 32, 64, 128, 256, 512, 512), two resnets per down level and three per up
level, self-attention on the three deepest levels and in the middle block, GroupNorm with 4 groups, eps 1e-5.
The VAE latent enters through a 1x1 conv added to the features just before the fourth down level (1/8 scale).
SDXL / SD1.5 (4 latent channels) and FLUX.1 (16) differ only in that conv's input width; the output channels
are in the checkpoint's order (alpha first for SDXL / SD1.5, RGBA for FLUX.1): ``transparent_vae`` reorders them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_OUT_CHANNELS = (32, 32, 64, 128, 256, 512, 512)
ATTENTION_LEVELS = (4, 5, 6)  # the levels built as diffusers "AttnDownBlock2D" / "AttnUpBlock2D"
LATENT_LEVEL = 3  # the latent is added before this down level (its input is at 1/8 of the image size)
LAYERS_PER_BLOCK = 2
NORM_GROUPS = 4
NORM_EPS = 1e-5
ATTENTION_HEAD_DIM = 8
# Six stride-2 downsamples: both image sides must be multiples of this.
SIZE_MULTIPLE = 2 ** (len(BLOCK_OUT_CHANNELS) - 1)
# The checkpoint key whose input width is the number of latent channels.
LATENT_CONV_KEY = "latent_conv_in.weight"


# Elements per block when summing squares: the temporary stays in cache, which makes it ~5x cheaper than
# torch.linalg.vector_norm over the same rows.
_STATS_BLOCK = 1 << 20


def _row_sums(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image row and channel: sum and sum of squares of a channels-last (b, c, h, w) tensor, as (b*h, c)."""
    b, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b * h, w, c)  # a view of the channels-last memory
    total = torch.empty(b * h, c, dtype=dtype, device=x.device)
    squares = torch.empty_like(total)
    step = max(1, _STATS_BLOCK // (w * c))
    for start in range(0, b * h, step):
        block = rows[start:start + step].to(dtype)
        torch.sum(block, dim=1, out=total[start:start + step])
        torch.sum(block * block, dim=1, out=squares[start:start + step])
    return total, squares


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that stays accurate on channels-last CPU tensors.

    PyTorch's channels-last CPU kernel sums each group over all its pixels in one float32 run; on the large
    maps of this network that costs ~3e-4 of accuracy (1e-4 in the decoded image). Here the sums are taken
    per image row, then over the rows, which keeps every run short (error ~1e-6, like the NCHW kernel)."""

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """inplace: x is a temporary the caller gives up, so the result may overwrite it (inference only)."""
        if x.device.type != "cpu" or x.ndim != 4 or x.is_contiguous() or not x.is_contiguous(
                memory_format=torch.channels_last):
            return super().forward(x)
        b, c, h, w = x.shape
        groups, per_group = self.num_groups, c // self.num_groups
        acc = torch.promote_types(x.dtype, torch.float32)  # half inputs are summed in float32
        total, squares = _row_sums(x, acc)
        count = h * w * per_group
        mean = total.view(b, h, groups, per_group).sum(dim=(1, 3)) / count  # (b, groups)
        mean_square = squares.view(b, h, groups, per_group).sum(dim=(1, 3)) / count
        rstd = torch.rsqrt((mean_square - mean.square()).clamp_(min=0.0) + self.eps)
        # Fold normalisation and affine into one per-channel scale and shift.
        scale = rstd.repeat_interleave(per_group, dim=1)
        shift = -mean.repeat_interleave(per_group, dim=1) * scale
        if self.affine:
            scale = scale * self.weight.to(acc)
            shift = shift * self.weight.to(acc) + self.bias.to(acc)
        scale = scale.to(x.dtype)[:, :, None, None]
        shift = shift.to(x.dtype)[:, :, None, None]
        if inplace and not torch.is_grad_enabled():
            # A fresh buffer of this size costs the CPU ~9x the arithmetic in page faults; reuse x's.
            return torch.addcmul(shift, x, scale, out=x)
        return torch.addcmul(shift, x, scale)


def _norm(channels: int) -> GroupNorm:
    return GroupNorm(num_groups=NORM_GROUPS, num_channels=channels, eps=NORM_EPS)


def _silu(x: torch.Tensor) -> torch.Tensor:
    # In place when no autograd graph is recorded: saves one full-size buffer per call at inference.
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _add(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """fresh + other, written into fresh (a temporary of the caller) when no autograd graph is recorded."""
    return fresh.add_(other) if not torch.is_grad_enabled() else fresh + other


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice, plus the (1x1-projected when widths differ) input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, consumable: bool = False) -> torch.Tensor:
        """consumable: x is a temporary of the caller (a concatenation) that may be overwritten."""
        residual = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        # Once projected, x itself is no longer needed, so its norm can take its memory.
        h = self.norm1(x, inplace=consumable and self.conv_shortcut is not None)
        h = self.conv1(_silu(h))
        h = self.conv2(_silu(self.norm2(h, inplace=True)))
        return _add(h, residual)


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, head_dim: int = ATTENTION_HEAD_DIM) -> None:
        super().__init__()
        self.heads = channels // head_dim
        self.group_norm = _norm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        # A list so the projection keeps the checkpoint's name "to_out.0".
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (b, h*w, c)

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        q = split_heads(self.to_q(tokens))
        k = split_heads(self.to_k(tokens))
        v = split_heads(self.to_v(tokens))
        # SDPA never materialises the (h*w)^2 score matrix on backends with fused kernels.
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.to_out[0](out.transpose(1, 2).reshape(b, h * w, c))
        return _add(out.transpose(1, 2).reshape(b, c, h, w), x)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownLevel(nn.Module):
    """Resnets (each optionally followed by attention), then an optional downsample.

    Returns the output and every intermediate kept for the skip connections."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool, downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(LAYERS_PER_BLOCK)
        )
        if attention:
            self.attentions = nn.ModuleList(SpatialSelfAttention(out_channels) for _ in range(LAYERS_PER_BLOCK))
        else:
            self.attentions = None
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpLevel(nn.Module):
    """Resnets fed with the running features concatenated with one skip each, then an optional upsample."""

    def __init__(
        self, prev_channels: int, out_channels: int, skip_in_channels: int, attention: bool, upsample: bool
    ) -> None:
        super().__init__()
        n = LAYERS_PER_BLOCK + 1
        resnets = []
        for i in range(n):
            running = prev_channels if i == 0 else out_channels
            # The last skip of a level comes from the shallower level's output, hence its width.
            skip = skip_in_channels if i == n - 1 else out_channels
            resnets.append(ResnetBlock(running + skip, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(SpatialSelfAttention(out_channels) for _ in range(n)) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), consumable=True)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidLevel(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels), ResnetBlock(channels, channels)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class TransparentDecoderUNet(nn.Module):
    """pixel (B,3,H,W) + latent (B,latent_channels,H/8,W/8) -> (B,4,H,W) unclipped, in the checkpoint's channel
    order (SDXL / SD1.5: alpha then RGB; FLUX.1: RGB then alpha).

    H and W must be multiples of SIZE_MULTIPLE (64); callers pad other sizes."""

    def __init__(self, in_channels: int = 3, out_channels: int = 4, latent_channels: int = 4) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        widths = BLOCK_OUT_CHANNELS
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.latent_conv_in = nn.Conv2d(latent_channels, widths[LATENT_LEVEL - 1], kernel_size=1)

        self.down_blocks = nn.ModuleList()
        prev = widths[0]
        for i, width in enumerate(widths):
            self.down_blocks.append(DownLevel(prev, width, i in ATTENTION_LEVELS, downsample=i != last))
            prev = width

        self.mid_block = MidLevel(widths[-1])

        self.up_blocks = nn.ModuleList()
        rev = widths[::-1]
        prev = rev[0]
        for i, width in enumerate(rev):
            skip_in = rev[min(i + 1, last)]
            attention = (last - i) in ATTENTION_LEVELS
            self.up_blocks.append(UpLevel(prev, width, skip_in, attention, upsample=i != last))
            prev = width

        self.conv_norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)

    def forward(self, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(pixel)
        skips = [x]
        for i, level in enumerate(self.down_blocks):
            if i == LATENT_LEVEL:
                x = x + self.latent_conv_in(latent)
            x, level_skips = level(x)
            skips.extend(level_skips)
        x = self.mid_block(x)
        for level in self.up_blocks:
            x = level(x, skips)
        return self.conv_out(_silu(self.conv_norm_out(x, inplace=True)))
