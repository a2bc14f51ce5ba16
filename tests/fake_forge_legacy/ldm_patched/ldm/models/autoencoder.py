"""Mirrors ldm_patched/ldm/models/autoencoder.py.

AutoencoderKL (AutoencodingEngineLegacy.encode in Forge e26abf87 .. 4a9c8f32): the moments, then
`z, log = regularization(z) if regulation is None else regulation(z)`. AutoencoderKLWithoutRegulation is the
same encoder as in Forge before e26abf87 and in reForge today: encode has no regulation parameter.
The encoder is a stand-in: 8x8 average pooling of RGB in [-1, 1], a fourth channel their mean, std 0.1.
"""
import math

import torch

from ldm_patched.ldm.modules.distributions.distributions import DiagonalGaussianDistribution


def _moments(x):
    pooled = torch.nn.functional.avg_pool2d(x, 8)
    mean = torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)
    return torch.cat([mean, torch.full_like(mean, 2 * math.log(0.1))], dim=1)


def _regularization(z):  # DiagonalGaussianRegularizer (sample=False here, so results are deterministic)
    return DiagonalGaussianDistribution(z).mode(), {}


class AutoencoderKL(torch.nn.Module):
    def encode(self, x, regulation=None, return_reg_log=False):
        z = _moments(x)
        z, reg_log = _regularization(z) if regulation is None else regulation(z)
        return (z, reg_log) if return_reg_log else z


class AutoencoderKLWithoutRegulation(torch.nn.Module):
    def encode(self, x, return_reg_log=False):
        z, reg_log = _regularization(_moments(x))
        return (z, reg_log) if return_reg_log else z
