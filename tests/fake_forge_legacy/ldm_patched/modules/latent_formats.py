"""ldm_patched/modules/latent_formats.py of both hosts. LatentFormat.latent_channels exists in reForge only
(3b56b268 :5); bfee03d8 has no such attribute, so the bridge reports the channels as unknown there."""
import fake_host


class LatentFormat:  # :5 (bfee03d8), :3 (3b56b268)
    scale_factor = 1.0
    if fake_host.is_reforge():
        latent_channels = 4

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


class SD15(LatentFormat):  # :16 / :17
    def __init__(self, scale_factor=0.18215):
        self.scale_factor = scale_factor


class SDXL(LatentFormat):  # :28 / :29
    scale_factor = 0.13025
