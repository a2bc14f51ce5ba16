"""Mirrors backend/memory_management.py: device choice and the list of models currently on the device."""
import torch

current_loaded_models = []  # backend/memory_management.py current_loaded_models (LoadedModel has .model)


def get_torch_device():  # backend/memory_management.py get_torch_device
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False  # backend/memory_management.py should_use_fp16: never on the CPU


def cast_to_device(tensor, device, dtype, copy=False):  # memory_management.py:936 (a CPU device)
    if copy:
        return tensor.to(device, copy=copy).to(dtype)
    return tensor.to(device).to(dtype)


def bake_gguf_model(model):  # memory_management.py:340 (LoadedModel.model_load calls it, :516, then refresh_loras)
    if getattr(model, 'gguf_baked', False):
        return

    for p in model.parameters():
        gguf_cls = getattr(p, 'gguf_cls', None)
        if gguf_cls is not None:
            gguf_cls.bake(p)

    model.gguf_baked = True


signal_empty_cache = False  # memory_management.py:1191
