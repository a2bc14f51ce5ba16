"""Mirrors backend/patcher/unet.py UnetPatcher (with the ModelPatcher parts of backend/patcher/base.py)."""
import copy

import torch

from backend import utils
from backend.patcher.lora import LoraLoader


class FakePredictor:
    """backend/modules/k_prediction.py percent_to_sigma: 1.0 → 0, 0.0 → huge; monotone in between."""

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return 14.6 * (1.0 - percent) ** 2


class FakeKModel(torch.nn.Module):
    """backend/modules/k_model.py KModel: parameters are named diffusion_model.<unet key>."""

    def __init__(self):
        super().__init__()
        unet = torch.nn.Module()
        unet.input_blocks = torch.nn.ModuleList([torch.nn.ModuleList([torch.nn.Conv2d(4, 8, 3, padding=1)])])
        unet.out = torch.nn.Linear(8, 8)
        self.diffusion_model = unet
        self.predictor = FakePredictor()


class FakeAttention(torch.nn.Module):
    """backend/nn/unet.py CrossAttention: heads, to_q/to_k/to_v without bias, to_out = [Linear, Dropout]."""

    def __init__(self, dim, context_dim=None, heads=2):
        super().__init__()
        self.heads = heads
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_k = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = torch.nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = torch.nn.ModuleList([torch.nn.Linear(dim, dim), torch.nn.Dropout(0.0)])


class FakeSD15KModel(torch.nn.Module):
    """A tiny UNet with the 32 attention layers of SD1.5 at their real names (channels shrunk to 8)."""

    def __init__(self, dim=8, context_dim=12):
        super().__init__()

        def block():
            transformer = torch.nn.Module()
            transformer.attn1 = FakeAttention(dim)
            transformer.attn2 = FakeAttention(dim, context_dim)
            # backend/nn/unet.py FeedForward: net = [GEGLU (.proj), Dropout, Linear]
            transformer.ff = torch.nn.Module()
            geglu = torch.nn.Module()
            geglu.proj = torch.nn.Linear(dim, dim * 2)
            transformer.ff.net = torch.nn.ModuleList([geglu, torch.nn.Dropout(0.0), torch.nn.Linear(dim, dim)])
            spatial = torch.nn.Module()
            spatial.transformer_blocks = torch.nn.ModuleList([transformer])
            return torch.nn.ModuleList([torch.nn.Identity(), spatial])

        unet = torch.nn.Module()
        unet.input_blocks = torch.nn.ModuleList([block() for _ in range(12)])
        unet.input_blocks[0] = torch.nn.ModuleList([torch.nn.Conv2d(4, dim, 3, padding=1)])  # conv_in
        unet.output_blocks = torch.nn.ModuleList([block() for _ in range(12)])
        unet.middle_block = block()
        self.diffusion_model = unet
        self.predictor = FakePredictor()


class UnetPatcher:
    def __init__(self, model):  # base.py:52
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.extra_concat_condition = None
        self.load_device = self.offload_device = self.current_device = torch.device("cpu")
        if not hasattr(model, "lora_loader"):  # base.py:63: one loader per model, shared by its clones
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader
        self.controlnet_linked_list = None  # unet.py:21

    def clone(self):  # UnetPatcher.clone
        n = UnetPatcher(self.model)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.extra_concat_condition = self.extra_concat_condition
        n.controlnet_linked_list = self.controlnet_linked_list  # unet.py:31
        return n

    def add_patched_controlnet(self, cnet):  # unet.py:68-71 (ControlBase.set_previous_controlnet, controlnet.py:201)
        cnet.previous_controlnet = self.controlnet_linked_list
        self.controlnet_linked_list = cnet

    def list_controlnets(self):  # unet.py:73-79
        results, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            results.append(pointer)
            pointer = pointer.previous_controlnet
        return results

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        """base.py:91: keeps the patches whose key (or key[0], with its offset and function) names a parameter,
        under (filename, strength_patch, strength_model, online_mode); returns the keys it kept."""
        lora_identifier = (filename, strength_patch, strength_model, online_mode)
        this_patches = {}

        p = set()
        model_keys = set(k for k, _ in self.model.named_parameters())

        for k in patches:
            offset = None
            function = None

            if isinstance(k, str):
                key = k
            else:
                offset = k[1]
                key = k[0]
                if len(k) > 2:
                    function = k[2]

            if key in model_keys:
                p.add(k)
                current_patches = this_patches.get(key, [])
                current_patches.append([strength_patch, patches[k], strength_model, offset, function])
                this_patches[key] = current_patches

        self.lora_patches[lora_identifier] = this_patches
        return p

    def has_online_lora(self):  # base.py:119
        for (filename, strength_patch, strength_model, online_mode), this_patches in self.lora_patches.items():
            if online_mode:
                return True
        return False

    def refresh_loras(self):  # base.py:125 (memory_management.py:518 LoadedModel.model_load, every load)
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)
        return

    def is_clone(self, other):  # base.py:86
        return hasattr(other, "model") and self.model is other.model

    def forge_patch_model(self, target_device=None):  # base.py:257: object patches set by path, kept to restore
        for k, item in self.object_patches.items():
            old = utils.get_attr(self.model, k)
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
            utils.set_attr_raw(self.model, k, item)
        return self.model

    def forge_unpatch_model(self, target_device=None):  # base.py:272
        for k in list(self.object_patches_backup.keys()):
            utils.set_attr_raw(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup = {}

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):  # UnetPatcher.add_conditioning_modifier
        self.model_options.setdefault("conditioning_modifiers", []).append(modifier)

    def add_object_patch(self, name, obj):  # ModelPatcher.add_object_patch
        self.object_patches[name] = obj

    def set_transformer_option(self, k, v):  # UnetPatcher.set_transformer_option
        self.model_options.setdefault("transformer_options", {})[k] = v
