"""Mirrors backend/patcher/lora.py (Forge Neo 6e1e0d5, from ComfyUI v0.3.77 comfy/lora.py): merge_lora_to_weight
with the value forms it knows (weight_adapter objects, ("diff", (t, flags)), ("set", (t,)), (t,)) and the errors it
raises for any other, and the LoraLoader that merges file-named (add_patches(filename=, online_mode=)) patches into
the weights (GGUF and bnb 4-bit weights dequantised first and quantised again) or, online, hangs them on the layers
as forge_online_loras."""
import logging
import weakref

import torch

from backend import memory_management, utils
from modules_forge.packages.comfy import weight_adapter  # lora.py:10 (imported there through comfy.lora)
from modules_forge.packages.comfy.lora import load_lora, model_lora_keys_unet  # noqa: F401  (lora.py:10-15)

logger = logging.getLogger("lora")


@torch.inference_mode()
def merge_lora_to_weight(patches, weight, key="online_lora", computation_dtype=torch.float32):  # lora.py:48-49
    weight_dtype_backup = None

    if computation_dtype == weight.dtype:
        weight = weight.clone()
    else:
        weight_dtype_backup = weight.dtype
        weight = weight.to(dtype=computation_dtype)

    for p in patches:
        strength = p[0]
        v = p[1]
        strength_model = p[2]
        offset = p[3]
        function = p[4]
        if function is None:
            function = lambda a: a

        old_weight = None
        if offset is not None:
            old_weight = weight
            weight = weight.narrow(offset[0], offset[1], offset[2])

        if strength_model != 1.0:
            weight *= strength_model

        if isinstance(v, list):  # lora.py:77
            v = (merge_lora_to_weight(v[1:], v[0][1](memory_management.cast_to_device(v[0][0], weight.device, computation_dtype, copy=True), inplace=True), key, computation_dtype=computation_dtype),)

        if isinstance(v, weight_adapter.WeightAdapterBase):  # lora.py:80
            output = v.calculate_weight(weight, key, strength, strength_model, offset, function, computation_dtype)
            if output is None:
                logger.error(f"Calculate Weight Failed: {v.name} {key}")
            else:
                weight = output
                if old_weight is not None:
                    weight = old_weight
            continue

        if len(v) == 1:  # lora.py:90
            patch_type = "diff"
        elif len(v) == 2:
            patch_type = v[0]
            v = v[1]

        if patch_type == "diff":  # lora.py:96
            diff = v[0]
            # An extra flag to pad the weight if the diff's shape is larger than the weight
            do_pad_weight = len(v) > 1 and v[1]["pad_weight"]  # lora.py:99: v[1] None → TypeError
            if do_pad_weight and diff.shape != weight.shape:
                weight = weight_adapter.base.pad_tensor_to_shape(weight, diff.shape)

            if strength != 0.0:
                if diff.shape != weight.shape:
                    logger.warning(f"SHAPE MISMATCH {key} WEIGHT NOT MERGED {diff.shape} != {weight.shape}")
                else:
                    weight += function(strength * memory_management.cast_to_device(diff, weight.device, weight.dtype))
        elif patch_type == "set":
            weight.copy_(v[0])
        elif patch_type == "model_as_lora":
            raise NotImplementedError(f'"{patch_type}" is not supported...')
        else:
            raise ValueError(f'"{key}" of type "{patch_type}" is not recognized...')  # lora.py:114

        if old_weight is not None:
            weight = old_weight

    if weight_dtype_backup is not None:
        weight = weight.to(dtype=weight_dtype_backup)

    return weight


def get_parameter_devices(model):  # lora.py:125
    return {key: p.device for key, p in model.named_parameters()}


def set_parameter_devices(model, parameter_devices):  # lora.py:132
    for key, device in parameter_devices.items():
        p = utils.get_attr(model, key)
        if p.device != device:
            p = utils.tensor2parameter(p.to(device=device))
            utils.set_attr_raw(model, key, p)
    return model


class LoraLoader:  # lora.py:141 — merges ModelPatcher.lora_patches (add_patches with filename and online_mode)
    def __init__(self, model):
        self._model = weakref.ref(model)
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])

    @property
    def model(self):
        return self._model()

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):  # lora.py:153
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        all_patches = {}
        for (_, _, _, online_mode), patches in lora_patches.items():
            for key, current_patches in patches.items():
                all_patches[(key, online_mode)] = all_patches.get((key, online_mode), []) + current_patches
        parameter_devices = get_parameter_devices(self.model)
        for m in set(self.online_backup):  # lora.py:175
            del m.forge_online_loras
        self.online_backup = []
        for k, w in self.backup.items():
            if not isinstance(w, torch.nn.Parameter):
                w = torch.nn.Parameter(w, requires_grad=False)
            utils.set_attr_raw(self.model, k, w)
        self.backup = {}
        set_parameter_devices(self.model, parameter_devices=parameter_devices)
        for (key, online_mode), current_patches in all_patches.items():
            try:
                parent_layer, child_key, weight = utils.get_attr_with_parent(self.model, key)
                assert isinstance(weight, torch.nn.Parameter)
            except Exception:
                raise ValueError(f"Wrong LoRA Key: {key}")
            if online_mode:  # lora.py:200
                if not hasattr(parent_layer, "forge_online_loras"):
                    parent_layer.forge_online_loras = {}
                parent_layer.forge_online_loras[child_key] = current_patches
                self.online_backup.append(parent_layer)
                continue
            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device)
            bnb_layer = None
            if hasattr(weight, "bnb_quantized"):  # lora.py:213
                assert memory_management.bnb_enabled()
                from backend.operations_bnb import functional_dequantize_4bit

                bnb_layer = parent_layer
                weight = functional_dequantize_4bit(weight)
            gguf_cls = getattr(weight, "gguf_cls", None)  # lora.py:220
            gguf_parameter = None
            if gguf_cls is not None:
                gguf_parameter = weight
                from backend.operations_gguf import dequantize_tensor

                weight = dequantize_tensor(weight)
            weight = merge_lora_to_weight(current_patches, weight, key, computation_dtype=torch.float32)
            if bnb_layer is not None:  # lora.py:241
                bnb_layer.reload_weight(weight)
                continue
            if gguf_cls is not None:  # lora.py:245: quantised again (K-quants: NotImplementedError)
                gguf_cls.quantize_pytorch(weight, gguf_parameter)
                continue
            utils.set_attr(self.model, key, weight)
        set_parameter_devices(self.model, parameter_devices=parameter_devices)
        self.loaded_hash = hashes
