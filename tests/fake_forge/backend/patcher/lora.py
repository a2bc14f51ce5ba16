"""Mirrors backend/patcher/lora.py (Forge dfdcbab6): merge_lora_to_weight for the "diff" and "lora" kinds and the
LoraLoader that merges a patcher's lora_patches into the model's own weights, in place, by walking each key's
dotted path in the model as it is at that moment (after forge_patch_model has put the object patches in:
backend/memory_management.py LoadedModel.model_load :467 then :518). Left out: online LoRAs, bnb / gguf weights,
the retry after running out of memory, parameter devices (one CPU device)."""
import torch

from backend import utils


@torch.inference_mode()
def merge_lora_to_weight(patches, weight, key="online_lora", computation_dtype=torch.float32):  # lora.py:85
    weight_dtype_backup = None
    if computation_dtype == weight.dtype:
        weight = weight.clone()
    else:
        weight_dtype_backup = weight.dtype
        weight = weight.to(dtype=computation_dtype)
    for p in patches:
        strength, v, strength_model = p[0], p[1], p[2]
        if strength_model != 1.0:
            weight *= strength_model
        patch_type = ""
        if len(v) == 1:
            patch_type = "diff"
        elif len(v) == 2:
            patch_type, v = v[0], v[1]
        if patch_type == "diff":  # :124
            w1 = v[0]
            if strength != 0.0:
                if w1.shape != weight.shape and w1.ndim == weight.ndim == 4:  # :127: grown to the larger shape
                    new_shape = [max(n, m) for n, m in zip(weight.shape, w1.shape)]
                    new_weight = torch.zeros(size=new_shape).to(weight)
                    new_weight[:weight.shape[0], :weight.shape[1], :weight.shape[2], :weight.shape[3]] = weight
                    new_weight[:w1.shape[0], :w1.shape[1], :w1.shape[2], :w1.shape[3]] += strength * w1.to(weight)
                    weight = new_weight.contiguous().clone()
                elif w1.shape != weight.shape:
                    print("WARNING SHAPE MISMATCH {} WEIGHT NOT MERGED {} != {}".format(key, w1.shape, weight.shape))
                else:
                    weight += strength * w1.to(weight)
        elif patch_type == "lora":  # :145, without mid / dora
            mat1, mat2 = v[0].to(weight), v[1].to(weight)
            alpha = v[2] / mat2.shape[0] if v[2] is not None else 1.0
            lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
            weight += ((strength * alpha) * lora_diff).type(weight.dtype)
        else:
            raise NotImplementedError(f"the fake merges only diff and lora, not {patch_type}")
    if weight_dtype_backup is not None:
        weight = weight.to(dtype=weight_dtype_backup)
    return weight


class LoraLoader:  # lora.py:344
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.loaded_hash = str([])

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=torch.device("cpu"), force_refresh=False):  # lora.py:352
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash and not force_refresh:
            return
        all_patches = {}
        for (_, _, _, online_mode), patches in lora_patches.items():
            for key, current_patches in patches.items():
                all_patches[(key, online_mode)] = all_patches.get((key, online_mode), []) + current_patches
        for k, w in self.backup.items():  # :379 Restore: by path, outside any try
            if not isinstance(w, torch.nn.Parameter):
                w = torch.nn.Parameter(w, requires_grad=False)
            utils.set_attr_raw(self.model, k, w)
        self.backup = {}
        for (key, online_mode), current_patches in all_patches.items():  # :392 Patch
            try:
                parent_layer, child_key, weight = utils.get_attr_with_parent(self.model, key)
                assert isinstance(weight, torch.nn.Parameter)
            except:  # noqa: E722 (as the host)
                raise ValueError(f"Wrong LoRA Key: {key}")
            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device)
            weight = merge_lora_to_weight(current_patches, weight, key, computation_dtype=torch.float32)
            utils.set_attr_raw(self.model, key, torch.nn.Parameter(weight, requires_grad=False))  # :441
        self.loaded_hash = hashes
