"""Mirrors backend/modules/k_model.py KModel (Forge Neo 6e1e0d5): the UNet's parameters are named
`diffusion_model.<unet key>`, and apply_model concatenates c_concat onto the (scaled) input before the UNet."""
import math

import torch

from backend import memory_management


class KModel(torch.nn.Module):  # k_model.py:9
    def __init__(self, model, diffusers_scheduler, k_predictor=None, config=None):
        super().__init__()
        self.config = config
        self.storage_dtype = model.storage_dtype
        self.computation_dtype = model.computation_dtype
        self.diffusion_model = model
        self.diffusion_model.eval()
        self.diffusion_model.requires_grad_(False)
        self.predictor = k_predictor  # k_model.py:32 (from the diffusers scheduler when None; always given here)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t  # k_model.py:37
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc] + [c_concat], dim=1)
        context = c_crossattn
        dtype = self.computation_dtype
        xc = xc.to(dtype)
        t = self.predictor.timestep(t).float()
        context = context.to(dtype)
        extra_conds = {}
        for o in kwargs:
            extra = kwargs[o]
            if hasattr(extra, "dtype"):
                if extra.dtype != torch.int and extra.dtype != torch.long:
                    extra = extra.to(dtype)
            extra_conds[o] = extra
        model_output = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options, **extra_conds).float()
        return self.predictor.calculate_denoised(sigma, model_output, x)

    def memory_required(self, input_shape):  # k_model.py:60
        area = input_shape[0] * math.prod(input_shape[2:])
        if memory_management.xformers_enabled() or memory_management.pytorch_attention_flash_attention():
            return (area * memory_management.dtype_size(self.computation_dtype) * 0.01 * self.config.memory_usage_factor) * (1024 * 1024)
        return (area * 0.15 * self.config.memory_usage_factor) * (1024 * 1024)
