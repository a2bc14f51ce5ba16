"""ldm_patched/modules/weight_adapter/lora.py LoRAAdapter (3b56b268 :58): weights = (up, down, alpha, mid,
dora_scale, reshape); alpha None is a scale of 1, else alpha / rank. (No mid, dora or reshape in LayerDiffuse
files: those branches are left out.)"""
import logging

import torch

from .base import WeightAdapterBase


class LoRAAdapter(WeightAdapterBase):
    name = "lora"

    def __init__(self, loaded_keys, weights):  # :61
        self.loaded_keys = loaded_keys
        self.weights = weights

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):  # :152
        v = self.weights
        mat1, mat2 = v[0].to(weight.device, intermediate_dtype), v[1].to(weight.device, intermediate_dtype)
        alpha = v[2] / mat2.shape[0] if v[2] is not None else 1.0  # :176
        if v[3] is not None or v[4] is not None or v[5] is not None:
            raise NotImplementedError("the fake LoRAAdapter merges plain up/down pairs only")
        try:
            lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
            weight += function(((strength * alpha) * lora_diff).type(weight.dtype))  # :210
        except Exception as e:
            logging.error("ERROR {} {} {}".format(self.name, key, e))
        return weight
