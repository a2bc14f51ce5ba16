"""Mirrors ldm_patched/modules/model_base.py BaseModel: parameters named diffusion_model.<unet key>, with its
model_sampling (ldm_patched/modules/model_sampling.py) and latent_format (ldm_patched/modules/latent_formats.py).
"""
import torch


class ModelSamplingDiscrete:
    """model_sampling.py ModelSamplingDiscrete.percent_to_sigma: 0 → huge, 1 → 0, decreasing in between (the
    real one reads the sigma table at (1 - percent) * 999; a smooth stand-in here)."""

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return 14.6 * (1.0 - percent) ** 2


class SDXL:  # latent_formats.py SDXL
    scale_factor = 0.13025

    def process_in(self, latent):
        return latent * self.scale_factor


class SD15(SDXL):  # latent_formats.py SD15
    scale_factor = 0.18215


def _add_at(root, dotted, module):
    *path, last = dotted.split(".")
    for name in path:
        if name not in root._modules:
            root.add_module(name, torch.nn.Module())
        root = root._modules[name]
    root.add_module(last, module)


class FakeAttention(torch.nn.Module):
    """ldm_patched/ldm/modules/attention.py CrossAttention: heads, to_q/to_k/to_v, to_out = [Linear, Dropout]."""

    def __init__(self, dim=8, context_dim=None, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = torch.nn.ModuleList([torch.nn.Linear(dim, dim), torch.nn.Dropout(0.0)])


class BaseModel(torch.nn.Module):
    """A tiny UNet (ldm_patched/ldm/modules/diffusionmodules/openaimodel.py UNetModel names): the input conv,
    an output Linear, and attention modules at the given names (attn2 ones take a 12-wide context)."""

    def __init__(self, attention_names=(), sdxl=True):
        super().__init__()
        unet = torch.nn.Module()
        _add_at(unet, "input_blocks.0.0", torch.nn.Conv2d(4, 8, 3, padding=1))
        unet.out = torch.nn.Linear(8, 8)
        for name in attention_names:
            _add_at(unet, name, FakeAttention(8, 12 if name.endswith("attn2") else None))
        self.diffusion_model = unet
        self.model_sampling = ModelSamplingDiscrete()
        self.latent_format = SDXL() if sdxl else SD15()
