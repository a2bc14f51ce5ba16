"""The LayerDiffuse latent-transparency offset encoder network, in plain PyTorch.

It maps an RGBA image in [0,1] (alpha first, then colour-padded RGB) to a 4-channel offset at 1/8 of the
image size that is added to the ordinary VAE latent. The layer indices in ``blocks`` (convs at even indices,
SiLU between them) match the checkpoint keys ``blocks.0`` ... ``blocks.16``.
"""
from __future__ import annotations

import torch
from torch import nn

# (in, out, stride) of each conv; three stride-2 convs give the 1/8 latent scale.
_CONVS = (
    (4, 32, 1), (32, 32, 1),
    (32, 64, 2), (64, 64, 1),
    (64, 128, 2), (128, 128, 1),
    (128, 256, 2), (256, 256, 1),
    (256, 4, 1),
)


class LatentOffsetEncoder(nn.Module):
    """(B,4,H,W) alpha+RGB in [0,1] -> (B,4,H/8,W/8) latent offset. H and W should be multiples of 8."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(_CONVS):
            if i > 0:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
