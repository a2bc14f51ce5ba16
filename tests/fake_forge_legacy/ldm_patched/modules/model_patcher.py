"""Mirrors ldm_patched/modules/model_patcher.py ModelPatcher: weight patches, object patches, model options."""
import copy

import torch

from ldm_patched.modules import utils


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None,
                 weight_inplace_update=False):
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.model_keys = set(model.state_dict().keys())  # ModelPatcher.model_size sets model_keys

    def clone(self):  # ModelPatcher.clone
        n = ModelPatcher(self.model, self.load_device, self.offload_device)
        self._copy_into(n)
        return n

    def _copy_into(self, n):
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.model_keys = self.model_keys

    def is_clone(self, other):  # ModelPatcher.is_clone
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        """ModelPatcher.add_patches: appends (strength_patch, value, strength_model) under every key the model
        has, and returns the list of those keys. No filename argument in this generation."""
        matched = set()
        for key in patches:
            if key in self.model_keys:
                matched.add(key)
                self.patches.setdefault(key, []).append((strength_patch, patches[key], strength_model))
        return list(matched)

    def add_object_patch(self, name, obj):  # ModelPatcher.add_object_patch
        self.object_patches[name] = obj

    def set_model_vae_regulation(self, vae_regulation):  # ModelPatcher.set_model_vae_regulation (Forge e26abf87)
        self.model_options["model_vae_regulation"] = vae_regulation

    def patch_model(self, device_to=None, patch_weights=True):
        """ModelPatcher.patch_model: object patches swapped in (originals kept in object_patches_backup), then
        every patched weight recomputed with calculate_weight."""
        for name, obj in self.object_patches.items():
            self.object_patches_backup.setdefault(name, utils.get_attr(self.model, name))
            utils.set_attr_raw(self.model, name, obj)
        if patch_weights:
            state = self.model.state_dict()
            for key, patches in self.patches.items():
                self.backup.setdefault(key, state[key].clone())
                merged = self.calculate_weight(patches, state[key].to(torch.float32, copy=True), key)
                utils.set_attr_raw(self.model, key, torch.nn.Parameter(merged, requires_grad=False))
        return self.model

    def unpatch_model(self, device_to=None):  # ModelPatcher.unpatch_model
        for key, weight in self.backup.items():
            utils.set_attr_raw(self.model, key, torch.nn.Parameter(weight, requires_grad=False))
        self.backup = {}
        for name, obj in self.object_patches_backup.items():
            utils.set_attr_raw(self.model, name, obj)
        self.object_patches_backup = {}

    def calculate_weight(self, patches, weight, key):
        """ModelPatcher.calculate_weight for the two kinds LayerDiffuse files hold, with its unpacking: a
        1-tuple is a diff, a 2-tuple is (kind, values). A diff larger than a 4-D weight grows it (the extra
        input channels); a lora adds alpha * mat1 @ mat2, alpha scaled by values[2] / rank when given."""
        for alpha, value, strength_model in patches:
            if strength_model != 1.0:
                weight *= strength_model
            if len(value) == 1:
                kind = "diff"
            elif len(value) == 2:
                kind, value = value
            else:
                raise AssertionError(f"patch value of length {len(value)} for {key}")
            if kind == "diff":
                w1 = value[0]
                if w1.shape != weight.shape:
                    if not (w1.ndim == weight.ndim == 4):
                        continue  # "WEIGHT NOT MERGED"
                    grown = torch.zeros([max(a, b) for a, b in zip(weight.shape, w1.shape)])
                    grown[:weight.shape[0], :weight.shape[1], :weight.shape[2], :weight.shape[3]] = weight
                    grown[:w1.shape[0], :w1.shape[1], :w1.shape[2], :w1.shape[3]] += alpha * w1
                    weight = grown
                else:
                    weight += alpha * w1
            elif kind == "lora":
                mat1, mat2 = value[0].float(), value[1].float()
                if value[2] is not None:
                    alpha *= value[2] / mat2.shape[0]
                weight += (alpha * torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1))).reshape(
                    weight.shape)
            else:
                raise AssertionError(f"patch type not recognized {kind} {key}")
        return weight
