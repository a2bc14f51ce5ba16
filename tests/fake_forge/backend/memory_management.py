"""Mirrors backend/memory_management.py: device choice and the list of models currently on the device."""
import torch

current_loaded_models = []  # backend/memory_management.py current_loaded_models (LoadedModel has .model)


def get_torch_device():  # backend/memory_management.py get_torch_device
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False  # backend/memory_management.py should_use_fp16: never on the CPU
