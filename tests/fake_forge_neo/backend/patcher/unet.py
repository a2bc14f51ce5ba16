"""Mirrors backend/patcher/unet.py UnetPatcher (Forge Neo 6e1e0d5)."""
import torch

from backend.modules.k_model import KModel
from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):  # unet.py:12
    @classmethod
    def from_model(cls, model, diffusers_scheduler, config, k_predictor=None):  # unet.py:14
        model = KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config)
        return UnetPatcher(model, load_device=model.diffusion_model.load_device,
                           offload_device=model.diffusion_model.offload_device,
                           current_device=model.diffusion_model.initial_device)

    def __init__(self, *args, **kwargs):  # unet.py:21
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):  # unet.py:28
        n = super().clone()
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def add_extra_model_patcher_during_sampling(self, model_patcher):  # unet.py:40
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def add_extra_torch_module_during_sampling(self, m: torch.nn.Module, cast_to_unet_dtype: bool = True):
        """unet.py:44: `m` gets its own ModelPatcher, loaded with the UNet by sampling_prepare."""
        if cast_to_unet_dtype:
            m.to(self.model.diffusion_model.dtype)
        patcher = ModelPatcher(model=m, load_device=self.load_device, offload_device=self.offload_device)
        self.add_extra_model_patcher_during_sampling(patcher)
        return patcher

    def list_controlnets(self):  # unet.py:64
        results = []
        pointer = self.controlnet_linked_list
        while pointer is not None:
            results.append(pointer)
            pointer = pointer.previous_controlnet
        return results

    def append_model_option(self, k, v, ensure_uniqueness=False):  # unet.py:72
        if k not in self.model_options:
            self.model_options[k] = []
        if ensure_uniqueness and v in self.model_options[k]:
            return
        self.model_options[k].append(v)

    def set_transformer_option(self, k, v):  # unet.py:89
        if "transformer_options" not in self.model_options:
            self.model_options["transformer_options"] = {}
        self.model_options["transformer_options"][k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):  # unet.py:94
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def load_frozen_patcher(self, filename, state_dict, strength):
        """unet.py:124: still builds the (kind, 16 slots) form that Neo's lora.py can no longer merge."""
        patch_dict = {}
        for k, w in state_dict.items():
            model_key, patch_type, weight_index = k.split("::")
            if model_key not in patch_dict:
                patch_dict[model_key] = {}
            if patch_type not in patch_dict[model_key]:
                patch_dict[model_key][patch_type] = [None] * 16
            patch_dict[model_key][patch_type][int(weight_index)] = w
        patch_flat = {}
        for model_key, v in patch_dict.items():
            for patch_type, weight_list in v.items():
                patch_flat[model_key] = (patch_type, weight_list)
        self.add_patches(filename=filename, patches=patch_flat, strength_patch=float(strength), strength_model=1.0)
