"""A tiny backend/diffusion_engine/sd15.py StableDiffusion (Forge Neo 6e1e0d5): a UNet with SD1.5's 32 attention
layers at their real names (sd15.py:22-24 VAE, UnetPatcher.from_model), the VAE (scale 0.18215) and is_sd1."""
import torch

from backend.diffusion_engine.base import ForgeDiffusionEngine
from backend.diffusion_engine.sdxl import ModelConfig
from backend.modules.k_prediction import Prediction
from backend.nn.unet import SD15_BLOCKS, IntegratedUNet2DConditionModel
from backend.nn.vae import IntegratedAutoencoderKL
from backend.patcher.unet import UnetPatcher
from backend.patcher.vae import VAE

CONTEXT_DIM = 12  # SD1.5's is 768


class StableDiffusion(ForgeDiffusionEngine):  # sd15.py:14
    def __init__(self, is_inpaint=False, seed=0):
        super().__init__(is_inpaint=is_inpaint)
        with torch.random.fork_rng():  # seeded weights, the caller's random state left alone
            torch.manual_seed(seed)
            unet = IntegratedUNet2DConditionModel(SD15_BLOCKS, depth=1, context_dim=CONTEXT_DIM)
        unet = UnetPatcher.from_model(model=unet, diffusers_scheduler=None, config=ModelConfig(), k_predictor=Prediction())
        self._set_objects(unet, VAE(model=IntegratedAutoencoderKL(scaling_factor=0.18215, seed=seed)))
        self.is_sd1 = True  # sd15.py:44

    def get_learned_conditioning(self, prompt):
        """sd15.py:50: (len(prompt), 77, 768); here every value is the length of the prompt."""
        return torch.stack([torch.full((77, CONTEXT_DIM), float(len(t))) for t in prompt])
