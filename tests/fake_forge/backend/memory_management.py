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


class LoadedModel:  # memory_management.py:443
    def __init__(self, model):
        self.model = model

    def model_load(self):  # :455, all on the device: object patches first (:467), then the LoRAs merged (:518)
        self.real_model = self.model.forge_patch_model(None)
        self.model.refresh_loras()
        return self.real_model

    def model_unload(self, avoid_model_moving=False):  # :525
        self.model.forge_unpatch_model()

    def __eq__(self, other):  # :540
        return self.model is other.model


def unload_model_clones(model):  # :552
    to_unload = []
    for i in range(len(current_loaded_models)):
        if model.is_clone(current_loaded_models[i].model):
            to_unload = [i] + to_unload
    for i in to_unload:
        current_loaded_models.pop(i).model_unload(avoid_model_moving=True)


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):  # :614, memory checks left out
    models_to_load = []
    for x in models:
        loaded_model = LoadedModel(x)
        if loaded_model in current_loaded_models:  # :626
            index = current_loaded_models.index(loaded_model)
            current_loaded_models.insert(0, current_loaded_models.pop(index))
        else:
            models_to_load.append(loaded_model)
    for loaded_model in models_to_load:
        unload_model_clones(loaded_model.model)  # :646
    for loaded_model in models_to_load:
        loaded_model.model_load()  # :684
        current_loaded_models.insert(0, loaded_model)
