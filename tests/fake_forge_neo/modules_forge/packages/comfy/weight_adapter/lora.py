"""Mirrors modules_forge/packages/comfy/weight_adapter/lora.py LoRAAdapter (Forge Neo 6e1e0d5)."""
import logging

import torch
from backend import memory_management

from .base import WeightAdapterBase, pad_tensor_to_shape, weight_decompose


class LoRAAdapter(WeightAdapterBase):  # lora.py:54
    name = "lora"

    def __init__(self, loaded_keys, weights):  # lora.py:57: weights = (up, down, alpha, mid, dora_scale, reshape)
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def load(cls, x, lora, alpha, dora_scale, loaded_keys=None):  # lora.py:75 (the diffusers lora_B / lora_A names)
        if loaded_keys is None:
            loaded_keys = set()
        diffusers2_lora = "{}.lora_B.weight".format(x)
        A_name = None
        if diffusers2_lora in lora.keys():
            A_name = diffusers2_lora
            B_name = "{}.lora_A.weight".format(x)
        if A_name is not None:
            weights = (lora[A_name], lora[B_name], alpha, None, dora_scale, None)
            loaded_keys.add(A_name)
            loaded_keys.add(B_name)
            return cls(loaded_keys, weights)
        return None

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):  # lora.py:144
        v = self.weights
        mat1 = memory_management.cast_to_device(v[0], weight.device, intermediate_dtype)
        mat2 = memory_management.cast_to_device(v[1], weight.device, intermediate_dtype)
        dora_scale = v[4]
        reshape = v[5]

        if reshape is not None:
            weight = pad_tensor_to_shape(weight, reshape)

        if v[2] is not None:  # lora.py:164: alpha / rank, else 1
            alpha = v[2] / mat2.shape[0]
        else:
            alpha = 1.0

        if v[3] is not None:  # lora.py:169 (locon mid weights)
            mat3 = memory_management.cast_to_device(v[3], weight.device, intermediate_dtype)
            final_shape = [mat2.shape[1], mat2.shape[0], mat3.shape[2], mat3.shape[3]]
            mat2 = torch.mm(mat2.transpose(0, 1).flatten(start_dim=1), mat3.transpose(0, 1).flatten(start_dim=1)).reshape(final_shape).transpose(0, 1)
        try:  # lora.py:181: any error is logged and the weight left as it was
            lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
            del mat1, mat2
            if dora_scale is not None:
                weight = weight_decompose(dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function)
            else:
                weight += function(((strength * alpha) * lora_diff).type(weight.dtype))
        except Exception as e:
            logging.error(f"ERROR {self.name} {key} {e}")
        return weight
