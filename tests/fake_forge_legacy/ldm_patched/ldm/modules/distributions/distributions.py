"""ldm_patched/ldm/modules/distributions/distributions.py DiagonalGaussianDistribution (:28 bfee03d8, :24
3b56b268): mean and log-variance halves of the moments on dim 1, log-variance clamped to [-30, 20]."""
import torch


class DiagonalGaussianDistribution(object):
    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self):  # :39 / :35
        return self.mean + self.std * torch.randn(self.mean.shape, device=self.parameters.device)

    def mode(self):  # :65 / :61
        return self.mean
