"""Mirrors ldm_patched/ldm/modules/distributions/distributions.py DiagonalGaussianDistribution: mean and
log-variance halves of the moments on dim 1, log-variance clamped to [-30, 20], std = exp(logvar / 2)."""
import torch


class DiagonalGaussianDistribution:
    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self):
        return self.mean
