"""ldm_patched/modules/model_management.py of both hosts, lines as (bfee03d8 / 3b56b268): the device, the list of
loaded patchers and how a patcher is loaded. Loading a patcher makes its clones give way first; the two hosts do
that differently:
 - bfee03d8: unload_model_clones (:387) unloads every loaded clone (ModelPatcher.unpatch_model: weights and object
   patches back to the originals), then patch_model patches the whole model for the new one.
 - 3b56b268 has no unload_model_clones: load_models_gpu (:618) detaches the loaded clones without unpatching
   (:655), and the new patcher's partially_load puts the shared backups back only where its patches differ."""
import torch

import fake_host

REFORGE = fake_host.is_reforge()
current_loaded_models = []  # :289 / :449


def get_torch_device():  # :77 / :155
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):  # :763 / :1233
    return False  # always False on the CPU


def module_size(module):  # :291 / :451
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:  # :304 / :459
    def __init__(self, model, memory_required=0):
        self.model = model  # 3b56b268 keeps a weakref (:469), read through the `model` property
        self.device = model.load_device

    def model_load(self):  # :317 / :498
        if REFORGE:
            self.model.partially_load(self.device)  # model_use_more_vram, :506
        else:
            self.model.patch_model(device_to=self.device)  # :328

    def model_unload(self):  # :366 / :522
        if REFORGE:
            self.model.detach(True)
        else:
            self.model.unpatch_model()

    def __eq__(self, other):  # :381 / :537
        return self.model is other.model


if not REFORGE:
    def unload_model_clones(model):  # :387 (bfee03d8 only)
        to_unload = []
        for i in range(len(current_loaded_models)):
            if model.is_clone(current_loaded_models[i].model):
                to_unload = [i] + to_unload
        for i in to_unload:
            current_loaded_models.pop(i).model_unload()


def load_models_gpu(models, memory_required=0, **kwargs):  # :422 / :618
    if REFORGE:
        models_to_load = []
        for x in set(models):
            loaded_model = LoadedModel(x)
            if loaded_model in current_loaded_models:
                models_to_load.append(current_loaded_models[current_loaded_models.index(loaded_model)])
            else:
                models_to_load.append(loaded_model)
        for loaded_model in models_to_load:  # :649
            to_unload = []
            for i in range(len(current_loaded_models)):
                if loaded_model.model.is_clone(current_loaded_models[i].model):
                    to_unload = [i] + to_unload
            for i in to_unload:
                current_loaded_models.pop(i).model.detach(unpatch_all=False)  # :655
        for loaded_model in models_to_load:
            loaded_model.model_load()  # :701
            current_loaded_models.insert(0, loaded_model)
        return
    models_to_load = []
    for x in models:
        loaded_model = LoadedModel(x, memory_required=memory_required)
        if loaded_model in current_loaded_models:  # :433: already loaded, moved to the front
            index = current_loaded_models.index(loaded_model)
            current_loaded_models.insert(0, current_loaded_models.pop(index))
        else:
            models_to_load.append(loaded_model)
    for loaded_model in models_to_load:
        unload_model_clones(loaded_model.model)  # :458
    for loaded_model in models_to_load:
        loaded_model.model_load()  # :494
        current_loaded_models.insert(0, loaded_model)


def load_model_gpu(model):  # :503 / :710
    return load_models_gpu([model])
