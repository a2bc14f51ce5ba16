"""Mirrors backend/memory_management.py (Forge Neo 6e1e0d5) on a CPU-only machine: the device and dtype choices,
and the model loading LayerDiffuse relies on (load_models_gpu: clones of a model give way to it, then
LoadedModel.model_load → ModelPatcher.partially_load, which swaps object patches in and merges weight patches).
Free-memory bookkeeping and low-VRAM partial loading are left out: on a CPU device Neo skips them too
(load_models_gpu only frees memory for devices other than cpu; VRAMState.DISABLED loads fully)."""
import weakref
from contextlib import nullcontext

import torch

cpu = torch.device("cpu")

VAE_ALWAYS_TILED = False  # memory_management.py:70 (set by the built-in "Never OOM" extension)
OOM_EXCEPTION = getattr(torch, "OutOfMemoryError", Exception)  # memory_management.py:198
NUM_STREAMS = 0
signal_empty_cache = False  # memory_management.py:1300
LORA_COMPUTE_DTYPES = {}


def get_torch_device():  # memory_management.py:144 (cpu_state is CPUState.CPU)
    return cpu


def is_device_cpu(device):  # memory_management.py:1130
    return getattr(device, "type", None) == "cpu"


def is_device_cuda(device):  # memory_management.py:1142
    return getattr(device, "type", None) == "cuda"


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    if device is not None and is_device_cpu(device):  # memory_management.py:1150
        return False
    return False  # no GPU here: FORCE_FP32 / cpu_mode()


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False  # memory_management.py:1209: never on the CPU


def lora_compute_dtype(device):  # memory_management.py:1287
    if device in LORA_COMPUTE_DTYPES:
        return LORA_COMPUTE_DTYPES[device]
    dtype = torch.float16 if should_use_fp16(device) else torch.float32
    LORA_COMPUTE_DTYPES[device] = dtype
    return dtype


def intermediate_device():  # memory_management.py:912
    return cpu


def vae_device():  # memory_management.py:916
    return get_torch_device()


def vae_offload_device():  # memory_management.py:922
    return cpu


def vae_dtype(device=None, allowed_dtypes=None):  # memory_management.py:926
    return torch.float32


def dtype_size(dtype):  # memory_management.py:756
    return torch.empty((), dtype=dtype).element_size()


def xformers_enabled():  # memory_management.py:1018
    return False


def pytorch_attention_flash_attention():  # memory_management.py:1066
    return False


def get_free_memory(dev=None, torch_free_too=False):
    """memory_management.py:1087: psutil.virtual_memory().available on the CPU; a fixed 64 GiB here."""
    free = 64 * 1024 ** 3
    return (free, free) if torch_free_too else free


def soft_empty_cache(force=False):  # memory_management.py:1303
    global signal_empty_cache
    signal_empty_cache = False


def pin_memory(tensor):  # memory_management.py:1433 (never on the CPU)
    return False


def unpin_memory(tensor):  # memory_management.py:1468
    return False


def cast_to(weight, dtype=None, device=None, non_blocking=False, copy=False, context=nullcontext()):
    if device is None or weight.device == device:  # memory_management.py:1000
        if not copy and (dtype is None or weight.dtype == dtype):
            return weight
        with context:
            return weight.to(dtype=dtype, copy=copy)
    with context:
        r = torch.empty_like(weight, dtype=dtype, device=device)
        r.copy_(weight, non_blocking=non_blocking)
        return r


def cast_to_device(tensor, device, dtype, copy=False):  # memory_management.py:1013
    return cast_to(tensor, dtype=dtype, device=device, copy=copy)


current_loaded_models = []  # memory_management.py:413: LoadedModel entries, most recent first


def module_size(module):  # memory_management.py:416
    module_mem = 0
    sd = module.state_dict()
    for k in sd:
        t = sd[k]
        module_mem += t.nelement() * t.element_size()
    return module_mem


def cleanup_models():  # memory_management.py:745 (the real one drops dead entries)
    for i in reversed(range(len(current_loaded_models))):
        if current_loaded_models[i].model is None:
            current_loaded_models.pop(i)


class LoadedModel:  # memory_management.py:425 — holds its patcher by weak reference, as Neo's does
    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.real_model = None
        self.currently_used = True
        self.model_finalizer = None

    @property
    def model(self):
        return self._model()

    def model_memory(self):
        return self.model.model_size()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):  # memory_management.py:464
        self.model.model_patches_to(self.device)
        self.model.model_patches_to(self.model.model_dtype())
        use_more_vram = lowvram_model_memory
        if use_more_vram == 0:
            use_more_vram = 1e32
        self.model.partially_load(self.device, use_more_vram, force_patch_weights=force_patch_weights)
        real_model = self.model.model
        bake_gguf_model(real_model)  # memory_management.py:483
        self.model.refresh_loras()
        self.real_model = weakref.ref(real_model)
        self.model_finalizer = weakref.finalize(real_model, cleanup_models)
        return real_model

    def model_unload(self, memory_to_free=None, unpatch_weights=True):  # memory_management.py:496
        self.model.detach(unpatch_weights)
        self.model_finalizer.detach()
        self.model_finalizer = None
        self.real_model = None
        return True

    def __eq__(self, other):  # memory_management.py:511
        return self.model is other.model


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """memory_management.py:612, for a CPU device (no memory to free, VRAMState.DISABLED: full loads)."""
    models_temp = set()
    for m in models:
        models_temp.add(m)
        for mm in m.model_patches_models():
            models_temp.add(mm)
    models = models_temp

    models_to_load = []
    for x in models:
        loaded_model = LoadedModel(x)
        try:
            loaded_model_index = current_loaded_models.index(loaded_model)
        except Exception:
            loaded_model_index = None
        if loaded_model_index is not None:
            loaded = current_loaded_models[loaded_model_index]
            loaded.currently_used = True
            models_to_load.append(loaded)
        else:
            models_to_load.append(loaded_model)

    for loaded_model in models_to_load:  # memory_management.py:649: clones of the same model give way
        to_unload = []
        for i in range(len(current_loaded_models)):
            if loaded_model.model.is_clone(current_loaded_models[i].model):
                to_unload = [i] + to_unload
        for i in to_unload:
            model_to_unload = current_loaded_models.pop(i)
            model_to_unload.model.detach(unpatch_all=False)
            model_to_unload.model_finalizer.detach()

    for loaded_model in models_to_load:  # memory_management.py:674 (cpu: lowvram_model_memory stays 0)
        loaded_model.model_load(0, force_patch_weights=force_patch_weights)
        current_loaded_models.insert(0, loaded_model)


def load_model_gpu(model):  # memory_management.py:702
    return load_models_gpu([model])


def bnb_enabled():  # memory_management.py:1054: bitsandbytes importable (the fake's NF4 stand-in is)
    return True


def bake_gguf_model(model):  # memory_management.py:397 (LoadedModel.model_load calls it, :483, then refresh_loras)
    if getattr(model, "gguf_baked", False):
        return

    for p in model.parameters():
        gguf_cls = getattr(p, "gguf_cls", None)
        if gguf_cls is not None:
            gguf_cls.bake(p)

    model.gguf_baked = True
