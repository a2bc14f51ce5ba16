"""Mirrors ldm_patched/modules/model_management.py: device choice and the list of loaded models."""
import torch

current_loaded_models = []  # model_management.current_loaded_models: LoadedModel entries, .model the patcher


class LoadedModel:  # model_management.LoadedModel
    def __init__(self, model):
        self.model = model

    def model_unload(self, avoid_model_moving=False):  # LoadedModel.model_unload: puts the originals back
        self.model.unpatch_model()


def get_torch_device():  # model_management.get_torch_device
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False  # model_management.should_use_fp16: never on the CPU


def unload_model_clones(model):
    """model_management.unload_model_clones: every loaded patcher of the same model object is unloaded."""
    for i in reversed(range(len(current_loaded_models))):
        if model.is_clone(current_loaded_models[i].model):
            current_loaded_models.pop(i).model_unload(avoid_model_moving=True)


def load_models_gpu(models, memory_required=0):
    """model_management.load_models_gpu: clones of a model give way to it, then it is patched and listed."""
    for model in models:
        if any(loaded.model is model for loaded in current_loaded_models):
            continue
        unload_model_clones(model)
        model.patch_model()
        current_loaded_models.insert(0, LoadedModel(model))
