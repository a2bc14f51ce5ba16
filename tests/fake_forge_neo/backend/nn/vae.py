"""A tiny stand-in for backend/nn/vae.py IntegratedAutoencoderKL (Forge Neo 6e1e0d5): the same attributes and
calls (encoder → quant_conv → DiagonalGaussianDistribution(...).sample(); post_quant_conv → decoder;
process_in / process_out with the checkpoint's scaling), with one 8×8-stride conv as the encoder and one
transposed conv as the decoder, so latents and images are real tensors of the real shapes."""
from types import SimpleNamespace

import torch
from torch import nn


class DiagonalGaussianDistribution:  # vae.py:20
    def __init__(self, parameters, deterministic=False):
        self.parameters = parameters
        self.mean, self.logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(self.logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if self.deterministic:
            self.var = self.std = torch.zeros_like(self.mean).to(device=self.parameters.device)

    def sample(self):  # vae.py:31
        return self.mean + self.std * torch.randn(self.mean.shape).to(device=self.parameters.device)

    def mode(self):  # vae.py:35
        return self.mean


class IntegratedAutoencoderKL(nn.Module):  # vae.py:285
    def __init__(self, latent_channels=4, scaling_factor=0.13025, shift_factor=0.0, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.encoder = nn.Conv2d(3, 2 * latent_channels, 8, stride=8)  # Encoder(double_z=True): the moments
        self.decoder = nn.ConvTranspose2d(latent_channels, 3, 8, stride=8)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)  # vae.py:295
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            self.quant_conv.bias[latent_channels:] -= 3.0  # log-variances around -3 (std ≈ 0.22)
        self.embed_dim = latent_channels
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.config = SimpleNamespace(latent_channels=latent_channels)  # the diffusers config VAE.__init__ reads

    def encode(self, x):  # vae.py:304
        z = self.encoder(x)
        if self.quant_conv is not None:
            z = self.quant_conv(z)
        posterior = DiagonalGaussianDistribution(z)
        return posterior.sample()

    def decode(self, z):  # vae.py:313
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def process_in(self, latent):  # vae.py:320
        return (latent - self.shift_factor) * self.scaling_factor

    def process_out(self, latent):  # vae.py:323
        return (latent / self.scaling_factor) + self.shift_factor
