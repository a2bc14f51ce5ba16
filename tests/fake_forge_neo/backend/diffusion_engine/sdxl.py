"""A tiny backend/diffusion_engine/sdxl.py StableDiffusionXL (Forge Neo 6e1e0d5): the UNet patcher and the VAE
(sdxl.py:24-26 VAE(model=...), UnetPatcher.from_model around a shrunk UNet; ForgeObjects :56), SDXL's latent
scale 0.13025 and is_sdxl."""
import torch
from modules.prompt_parser import DictWithShape

from backend.diffusion_engine.base import ForgeDiffusionEngine
from backend.modules.k_prediction import Prediction
from backend.nn.unet import SDXL_BLOCKS, IntegratedUNet2DConditionModel
from backend.nn.vae import IntegratedAutoencoderKL
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE

CONTEXT_DIM, ADM_DIM = 16, 8  # SDXL's are 2048 and 2816


class ModelConfig:  # huggingface_guess model config: memory_usage_factor is all KModel reads
    memory_usage_factor = 1.0


class StableDiffusionXL(ForgeDiffusionEngine):  # sdxl.py:16
    def __init__(self, is_inpaint=False, in_channels=4, seed=0):
        super().__init__(is_inpaint=is_inpaint)
        with torch.random.fork_rng():  # seeded weights, the caller's random state left alone
            torch.manual_seed(seed)
            unet = IntegratedUNet2DConditionModel(SDXL_BLOCKS, depth=2, in_channels=in_channels,
                                                  context_dim=CONTEXT_DIM, adm_in_channels=ADM_DIM)
        unet = UnetPatcher.from_model(model=unet, diffusers_scheduler=None, config=ModelConfig(), k_predictor=Prediction())
        self._set_objects(unet, VAE(model=IntegratedAutoencoderKL(scaling_factor=0.13025, seed=seed)))
        self.is_sdxl = True  # sdxl.py:61

    def get_learned_conditioning(self, prompt):
        """sdxl.py:68: {'crossattn', 'vector'}; here every value is the length of the prompt."""
        return DictWithShape(dict(
            crossattn=torch.stack([torch.full((77, CONTEXT_DIM), float(len(t))) for t in prompt]),
            vector=torch.stack([torch.full((ADM_DIM,), float(len(t))) for t in prompt])))
