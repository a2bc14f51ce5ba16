"""ldm_patched/ldm/models/autoencoder.py AutoencoderKL (:224 bfee03d8, :220 3b56b268) =
AutoencodingEngineLegacy (:157 / :146): encode = encoder, quant_conv, then the regularizer, with no regulation
parameter in either host; decode = post_quant_conv, decoder. The regularizer samples the posterior in bfee03d8
(DiagonalGaussianRegularizer(sample=True), :21) and takes its mode in 3b56b268 (sample=False, :14).

The encoder and decoder are stand-ins: the encoder averages 8x8 blocks of the [-1, 1] RGB (a fourth channel their
mean) with the log-variance fixed at 2·log(0.1); quant_conv adds 0.25 to the mean half (so a caller that skips
it is seen); the decoder spreads latent channels 0..2 over 8x8 blocks."""
import math

import torch

import fake_host
from ldm_patched.ldm.modules.distributions.distributions import DiagonalGaussianDistribution


class DiagonalGaussianRegularizer(torch.nn.Module):  # :20 / :13
    def __init__(self, sample: bool = not fake_host.is_reforge()):
        super().__init__()
        self.sample = sample

    def forward(self, z):
        posterior = DiagonalGaussianDistribution(z)
        z = posterior.sample() if self.sample else posterior.mode()
        return z, {}


class Encoder(torch.nn.Module):  # stand-in for ldm_patched/ldm/modules/diffusionmodules/model.py Encoder
    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        mean = torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)
        return torch.cat([mean, torch.full_like(mean, 2 * math.log(0.1))], dim=1)


class Decoder(torch.nn.Module):  # stand-in for ldm_patched/ldm/modules/diffusionmodules/model.py Decoder
    def forward(self, z):
        return torch.nn.functional.interpolate(z[:, :3], scale_factor=8, mode="nearest")


class AutoencoderKL(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.quant_conv = torch.nn.Conv2d(8, 8, 1)  # :172 / :167
        self.post_quant_conv = torch.nn.Conv2d(4, 4, 1)  # :177 / :173
        with torch.no_grad():
            for conv in (self.quant_conv, self.post_quant_conv):
                conv.weight.copy_(torch.eye(conv.in_channels)[..., None, None])
                conv.bias.zero_()
            self.quant_conv.bias[:4] = 0.25
        self.regularization = DiagonalGaussianRegularizer()

    def encode(self, x, return_reg_log=False):  # :184 / :180
        z = self.quant_conv(self.encoder(x))
        z, reg_log = self.regularization(z)
        return (z, reg_log) if return_reg_log else z

    def decode(self, z, **decoder_kwargs):  # :206 / :202
        return self.decoder(self.post_quant_conv(z), **decoder_kwargs)
