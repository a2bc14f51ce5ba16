"""The LayerDiffuse latent-transparency offset encoder network, in plain PyTorch.

It maps a 4-channel image in [0,1] (alpha and colour-padded RGB; the order is the checkpoint's: alpha first for
SDXL / SD1.5, RGB first for FLUX.1) to an offset at 1/8 of the image size with one channel per latent channel
(4 for SDXL / SD1.5, 16 for FLUX.1), which goes into the ordinary VAE latent. The layer indices in ``blocks``
(convs at even indices, SiLU between them) match the checkpoint keys ``blocks.0`` ... ``blocks.16``.
"""
from __future__ import annotations

import torch
from torch import nn

# (in, out, stride) of each conv but the last; three stride-2 convs give the 1/8 latent scale.
_CONVS = (
    (4, 32, 1), (32, 32, 1),
    (32, 64, 2), (64, 64, 1),
    (64, 128, 2), (128, 128, 1),
    (128, 256, 2), (256, 256, 1),
)
# The last conv maps to the latent channels: its key in the checkpoints.
OUTPUT_CONV_KEY = f"blocks.{2 * len(_CONVS)}.weight"


class LatentOffsetEncoder(nn.Module):
    """(B,4,H,W) alpha+RGB in [0,1] -> (B,latent_channels,H/8,W/8) latent offset (unscaled). H and W should be
    multiples of 8."""

    def __init__(self, latent_channels: int = 4) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(_CONVS + ((_CONVS[-1][1], latent_channels, 1),)):
            if i > 0:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
