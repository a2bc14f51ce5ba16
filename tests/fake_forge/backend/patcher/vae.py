"""Mirrors backend/patcher/vae.py VAE and backend/nn/vae.py IntegratedAutoencoderKL (Forge dfdcbab6), shrunk:
the autoencoder's encoder is an 8× average pool giving moments (mean, log-variance) and its decoder a
sigmoid upsampled 8×, so the latents and images the tests see are real tensors of the right shapes."""
import math
from types import SimpleNamespace

import torch

LOG_VARIANCE = math.log(0.01)  # the fake posterior's std is 0.1 everywhere


class MomentsEncoder(torch.nn.Module):
    """Stands in for backend/nn/vae.py Encoder: (B,3,H,W) in [-1,1] → moments (B,8,H/8,W/8)."""

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d((x + 1.0) / 2.0, 8)
        mean = torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)
        return torch.cat([mean, torch.full_like(mean, LOG_VARIANCE)], dim=1)


class DiagonalGaussianDistribution:  # backend/nn/vae.py:16
    def __init__(self, parameters):
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)  # backend/nn/vae.py:20
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self):  # backend/nn/vae.py:27
        return self.mean + self.std * torch.randn(self.mean.shape)


class IntegratedAutoencoderKL(torch.nn.Module):
    """backend/nn/vae.py:274; scaling 0.125 (SDXL's is 0.13025) so process_in(process_out(z)) is exactly z."""

    def __init__(self):
        super().__init__()
        self.encoder = MomentsEncoder()
        self.quant_conv = None
        self.scaling_factor, self.shift_factor = 0.125, 0.0

    def encode(self, x, regulation=None):  # backend/nn/vae.py:293
        posterior = DiagonalGaussianDistribution(self.encoder(x))
        return regulation(posterior) if regulation is not None else posterior.sample()

    def decode(self, z):  # backend/nn/vae.py:305: (B,4,h,w) → (B,3,8h,8w) in [-1,1]
        return torch.sigmoid(z[:, :3]).repeat_interleave(8, 2).repeat_interleave(8, 3) * 2.0 - 1.0

    def process_in(self, latent):  # backend/nn/vae.py:312
        return (latent - self.shift_factor) * self.scaling_factor

    def process_out(self, latent):  # backend/nn/vae.py:315
        return (latent / self.scaling_factor) + self.shift_factor


class VAE:
    def __init__(self, model=None):
        self.first_stage_model = model if model is not None else IntegratedAutoencoderKL()
        self.latent_channels = 4  # backend/patcher/vae.py:68
        self.patcher = SimpleNamespace(model_options={})
        self.patcher.set_model_vae_regulation = \
            lambda fn: self.patcher.model_options.__setitem__("model_vae_regulation", fn)

    def clone(self):  # backend/patcher/vae.py:91
        n = VAE(self.first_stage_model)
        n.patcher.model_options = dict(self.patcher.model_options)
        return n

    def decode(self, samples_in):  # backend/patcher/vae.py:150 → decode_inner:142, (B,4,h,w) → (B,8h,8w,3)
        decoded = self.first_stage_model.decode(samples_in)
        return torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)

    def encode(self, pixel_samples):  # backend/patcher/vae.py:186 → encode_inner:166/178
        regulation = self.patcher.model_options.get("model_vae_regulation", None)
        pixels_in = 2.0 * pixel_samples.movedim(-1, 1) - 1.0
        return self.first_stage_model.encode(pixels_in, regulation)
