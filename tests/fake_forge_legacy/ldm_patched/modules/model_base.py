"""ldm_patched/modules/model_base.py BaseModel of both hosts (:42 bfee03d8, :115 3b56b268): latent_format and
model_config from the model config (supported_models.py SD15 / SDXL, whose latent_format the config instantiates,
supported_models_base.py:46 / :60), model_sampling, and the UNet as diffusion_model. The UNet is tiny, with the
names of ldm_patched/ldm/modules/diffusionmodules/openaimodel.py UNetModel: the input conv (4 channels in), an
output layer, and CrossAttention modules (and Linear layers) at the names asked for."""
from types import SimpleNamespace

import torch

import fake_host
from ldm_patched.modules import latent_formats
from ldm_patched.modules.model_sampling import ModelSamplingDiscrete


def model_config(sdxl):
    """supported_models.py SDXL (latent_format :167 / :199) or SD15 (:31 / :44)."""
    return SimpleNamespace(latent_format=latent_formats.SDXL() if sdxl else latent_formats.SD15())


class CrossAttention(torch.nn.Module):
    """ldm_patched/ldm/modules/attention.py CrossAttention: heads, to_q/to_k/to_v, to_out = [Linear, Dropout]."""

    def __init__(self, dim=8, context_dim=None, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = torch.nn.ModuleList([torch.nn.Linear(dim, dim), torch.nn.Dropout(0.0)])


def _add_at(root, dotted, module):
    *path, last = dotted.split(".")
    for name in path:
        if name not in root._modules:
            root.add_module(name, torch.nn.Module())
        root = root._modules[name]
    root.add_module(last, module)


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, attention_names=(), linear_names=()):
        super().__init__()
        self.latent_format = model_config.latent_format  # :47 / :120
        if fake_host.is_reforge():
            self.latent_channels = getattr(self.latent_format, "latent_channels", None)  # :122 (3b56b268)
        self.model_config = model_config  # :48 / :123
        unet = torch.nn.Module()
        gen = torch.Generator().manual_seed(0)
        _add_at(unet, "input_blocks.0.0", torch.nn.Conv2d(4, 8, 3, padding=1))
        unet.out = torch.nn.Linear(8, 8)
        for name in attention_names:
            _add_at(unet, name, CrossAttention(8, 12 if name.endswith("attn2") else None))
        for name in linear_names:  # e.g. a transformer block's ff.net.2
            _add_at(unet, name, torch.nn.Linear(8, 8))
        with torch.no_grad():
            for parameter in unet.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.1)
        self.diffusion_model = unet  # :56 / :135
        self.model_sampling = ModelSamplingDiscrete(model_config)  # :58 / :141

    def memory_required(self, input_shape):
        return 0
