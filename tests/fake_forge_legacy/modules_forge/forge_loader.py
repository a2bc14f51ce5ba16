"""modules_forge/forge_loader.py of both hosts, lines as (bfee03d8 / 3b56b268): ForgeSD (the forge_objects) and
what load_model_for_a1111 gives the WebUI's sd_model: forge_objects, its two shallow copies (the one
process_images_inner restores for every batch and the one after LoRAs), the model flags, and decode_first_stage /
encode_first_stage, which go through the UNet's latent format and forge_objects.vae."""
import contextlib

import torch

from ldm_patched.modules.model_base import BaseModel, model_config
from ldm_patched.modules.sd import CLIP, VAE
from modules_forge.unet_patcher import UnetPatcher


class ForgeSD:  # :39 / :174
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):  # :46 / :181
        return ForgeSD(self.unet, self.clip, self.vae, self.clipvision)


class SDModel:
    """The A1111 model object (ldm DiffusionEngine / LatentDiffusion) as load_model_for_a1111 leaves it."""


def load_model(is_sdxl=True, attention_names=(), linear_names=()):
    """load_model_for_a1111 for a tiny checkpoint: an SDXL or SD1.5 UNet (with CrossAttention modules at
    `attention_names`, Linear layers at `linear_names`), a VAE and a CLIP."""
    sd_model = SDModel()
    unet = UnetPatcher(BaseModel(model_config(is_sdxl), attention_names, linear_names))
    forge_objects = ForgeSD(unet, CLIP(), VAE(), None)
    sd_model.forge_objects = forge_objects  # :162 / :445
    sd_model.forge_objects_original = forge_objects.shallow_copy()  # :163 / :446
    sd_model.forge_objects_after_applying_lora = forge_objects.shallow_copy()  # :164 / :447
    sd_model.is_sdxl = is_sdxl  # :226 / :521
    sd_model.is_sd2 = False
    sd_model.is_sd1 = not is_sdxl  # :228 / :524

    @torch.inference_mode()
    def patched_decode_first_stage(x):  # :237 / :535
        sample = sd_model.forge_objects.unet.model.model_config.latent_format.process_out(x)
        sample = sd_model.forge_objects.vae.decode(sample).movedim(-1, 1) * 2.0 - 1.0
        return sample.to(x)

    @torch.inference_mode()
    def patched_encode_first_stage(x):  # :243 / :541
        sample = sd_model.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
        sample = sd_model.forge_objects.unet.model.model_config.latent_format.process_in(sample)
        return sample.to(x)

    sd_model.ema_scope = lambda *args, **kwargs: contextlib.nullcontext()
    sd_model.get_first_stage_encoding = lambda x: x
    sd_model.decode_first_stage = patched_decode_first_stage  # :250 / :548
    sd_model.encode_first_stage = patched_encode_first_stage  # :251 / :549
    return sd_model
