"""Mirrors backend/patcher/base.py ModelPatcher (Forge Neo 6e1e0d5, from ComfyUI v0.7.0 comfy/model_patcher.py):
weight patches (add_patches → patch_weight_to_device → lora.py merge_lora_to_weight), object patches (set with
utils.set_attr, so every object patch is wrapped in a Parameter), model options, and the load/unload path
memory_management uses. Clones share `backup` and `object_patches_backup` with their parent, as in Neo, so
whichever clone loads next can restore what the previous one changed. Low-VRAM partial loading, pinning and
weight casting are left out (never used on a CPU device)."""
import collections
import copy
import uuid

from backend import memory_management, utils
from backend.patcher.lora import LoraLoader, merge_lora_to_weight


def get_key_weight(model, key):  # base.py:141
    set_func = None
    convert_func = None
    op_keys = key.rsplit(".", 1)
    if len(op_keys) < 2:
        weight = utils.get_attr(model, key)
    else:
        op = utils.get_attr(model, op_keys[0])
        set_func = getattr(op, f"set_{op_keys[1]}", None)
        convert_func = getattr(op, f"convert_{op_keys[1]}", None)
        weight = getattr(op, op_keys[1])
        if convert_func is not None:
            weight = utils.get_attr(model, key)
    return weight, set_func, convert_func


class ModelPatcher:  # base.py:169
    def __init__(self, model, load_device, offload_device, size=0, current_device=None,
                 weight_inplace_update=False):  # base.py:170
        self.model = model
        self.parent = None
        self.current_device = current_device or offload_device
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.model_size()
        self.patches = {}
        self.lora_patches = {}
        self.backup = {}
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader
        self.object_patches = {}
        self.object_patches_backup = {}
        self.patches_uuid = uuid.uuid4()
        self.model_options = {"transformer_options": {}}
        self.pinned = set()
        self.weight_inplace_update = weight_inplace_update
        self.force_cast_weights = False
        self.setup()

    def setup(self):  # base.py:203
        if not hasattr(self.model, "model_loaded_weight_memory"):
            self.model.model_loaded_weight_memory = 0
        if not hasattr(self.model, "lowvram_patch_counter"):
            self.model.lowvram_patch_counter = 0
        if not hasattr(self.model, "model_lowvram"):
            self.model.model_lowvram = False
        if not hasattr(self.model, "current_weight_patches_uuid"):
            self.model.current_weight_patches_uuid = None

    def has_online_lora(self):  # base.py:215
        return any(online_mode for (*_, online_mode) in self.lora_patches.keys())

    def refresh_loras(self):  # base.py:218
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)

    def model_size(self):  # base.py:221
        if self.size > 0:
            return self.size
        self.size = memory_management.module_size(self.model)
        return self.size

    def loaded_size(self):  # base.py:230
        return self.model.model_loaded_weight_memory

    def clone(self):  # base.py:236
        n = self.__class__(self.model, self.load_device, self.offload_device, self.model_size(), self.current_device,
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = copy.copy(self.patches)
        n.lora_patches = copy.copy(self.lora_patches)
        n.patches_uuid = self.patches_uuid
        n.backup = self.backup
        n.object_patches = copy.copy(self.object_patches)
        n.object_patches_backup = self.object_patches_backup
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        n.pinned = self.pinned
        n.force_cast_weights = self.force_cast_weights
        return n

    def is_clone(self, other):  # base.py:253
        return self.model is getattr(other, "model", None)

    def memory_required(self, input_shape):  # base.py:269
        return self.model.memory_required(input_shape=input_shape)

    def set_model_unet_function_wrapper(self, unet_wrapper_function):  # base.py:289
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def add_object_patch(self, name, obj):  # base.py:346
        self.object_patches[name] = obj

    def get_model_object(self, name):  # base.py:355
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return utils.get_attr(self.model, name)

    def model_patches_to(self, device):  # base.py:365
        to = self.model_options["transformer_options"]
        if "patches" in to:
            for name in to["patches"]:
                patch_list = to["patches"][name]
                for i in range(len(patch_list)):
                    if hasattr(patch_list[i], "to"):
                        patch_list[i] = patch_list[i].to(device)
        if "patches_replace" in to:
            for name in to["patches_replace"]:
                patch_list = to["patches_replace"][name]
                for k in patch_list:
                    if hasattr(patch_list[k], "to"):
                        patch_list[k] = patch_list[k].to(device)
        if "model_function_wrapper" in self.model_options:
            wrap_func = self.model_options["model_function_wrapper"]
            if hasattr(wrap_func, "to"):
                self.model_options["model_function_wrapper"] = wrap_func.to(device)

    def model_patches_models(self):  # base.py:386
        to = self.model_options["transformer_options"]
        models = []
        if "patches" in to:
            for name in to["patches"]:
                for patch in to["patches"][name]:
                    if hasattr(patch, "models"):
                        models += patch.models()
        if "patches_replace" in to:
            for name in to["patches_replace"]:
                for k, patch in to["patches_replace"][name].items():
                    if hasattr(patch, "models"):
                        models += patch.models()
        if "model_function_wrapper" in self.model_options:
            wrap_func = self.model_options["model_function_wrapper"]
            if hasattr(wrap_func, "models"):
                models += wrap_func.models()
        return models

    def model_dtype(self):  # base.py:410
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0, *, filename=None, online_mode=None):
        """base.py:414: a patch goes to lora_patches (merged by the LoraLoader) only with both filename and
        online_mode; otherwise to self.patches, with a new patches_uuid. Returns the matched keys as a list."""
        lora = filename is not None and online_mode is not None
        if lora:
            lora_identifier = (filename, strength_patch, strength_model, online_mode)
            lora_patches = {}
        p = set()
        model_sd = self.model.state_dict()
        for k in patches:
            offset = None
            function = None
            if isinstance(k, str):
                key = k
            else:
                offset = k[1]
                key = k[0]
                if len(k) > 2:
                    function = k[2]
            if key in model_sd:
                p.add(k)
                current_patches = self.patches.get(key, [])
                current_patches.append((strength_patch, patches[k], strength_model, offset, function))
                if lora:
                    lora_patches[key] = current_patches
                else:
                    self.patches[key] = current_patches
        if lora:
            self.lora_patches[lora_identifier] = lora_patches
        else:
            self.patches_uuid = uuid.uuid4()
        return list(p)

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):  # base.py:480
        if key not in self.patches:
            return
        weight, set_func, convert_func = get_key_weight(self.model, key)
        inplace_update = self.weight_inplace_update or inplace_update
        if key not in self.backup:
            self.backup[key] = collections.namedtuple("Dimension", ["weight", "inplace_update"])(
                weight.to(device=self.offload_device, copy=inplace_update), inplace_update)
        temp_dtype = memory_management.lora_compute_dtype(device_to)
        if device_to is not None:
            temp_weight = memory_management.cast_to_device(weight, device_to, temp_dtype, copy=True)
        else:
            temp_weight = weight.to(temp_dtype, copy=True)
        if convert_func is not None:
            temp_weight = convert_func(temp_weight, inplace=True)
        out_weight = merge_lora_to_weight(self.patches[key], temp_weight, key)
        if set_func is None:
            out_weight = out_weight.to(weight.dtype)
            if inplace_update:
                utils.copy_to_param(self.model, key, out_weight)
            else:
                utils.set_attr(self.model, key, out_weight)
        else:
            set_func(out_weight, inplace_update=inplace_update)

    def _load_list(self):  # base.py:523 (modules holding parameters of their own)
        loading = []
        for n, m in self.model.named_modules():
            params = [name for name, _ in m.named_parameters(recurse=False)]
            skip = any(name not in params for name, _ in m.named_parameters(recurse=True))
            if not skip and len(params) > 0:
                loading.append((n, m, params))
        return loading

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        """base.py:555 with every module loaded completely (a CPU device): each module's patched parameters are
        merged once (forge_patched_weights marks it), then the model is moved to the device."""
        for n, m, params in self._load_list():
            if getattr(m, "forge_patched_weights", False) is True:  # base.py:630
                continue
            for param in params:
                key = f"{n}.{param}" if n else param
                self.patch_weight_to_device(key, device_to=device_to)
            m.forge_patched_weights = True
        self.model.model_lowvram = False
        if full_load:
            self.model.to(device_to)
        self.current_device = device_to
        self.model.model_loaded_weight_memory = self.model_size()
        self.model.current_weight_patches_uuid = self.patches_uuid

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k in self.object_patches:  # base.py:669: utils.set_attr wraps the object in a Parameter
            old = utils.set_attr(self.model, k, self.object_patches[k])
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
        if load_weights:
            self.load(device_to, lowvram_model_memory=lowvram_model_memory, force_patch_weights=force_patch_weights,
                      full_load=lowvram_model_memory == 0)
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):  # base.py:684
        if unpatch_weights:
            for k in list(self.backup.keys()):
                bk = self.backup[k]
                if bk.inplace_update:
                    utils.copy_to_param(self.model, k, bk.weight)
                else:
                    utils.set_attr(self.model, k, bk.weight)
            self.model.current_weight_patches_uuid = None
            self.backup.clear()
            if device_to is not None:
                self.model.to(device_to)
                self.current_device = device_to
            self.model.model_loaded_weight_memory = 0
            for m in self.model.modules():
                if hasattr(m, "forge_patched_weights"):
                    del m.forge_patched_weights
        for k in list(self.object_patches_backup.keys()):  # base.py:717
            utils.set_attr(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup.clear()

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):  # base.py:801
        unpatch_weights = self.model.current_weight_patches_uuid is not None and (
            self.model.current_weight_patches_uuid != self.patches_uuid or force_patch_weights)
        used = self.model.model_loaded_weight_memory
        self.unpatch_model(self.offload_device, unpatch_weights=unpatch_weights)
        if unpatch_weights:
            extra_memory += used - self.model.model_loaded_weight_memory
        self.patch_model(load_weights=False)
        full_load = False
        if self.model.model_lowvram is False and self.model.model_loaded_weight_memory > 0:
            return 0
        if self.model.model_loaded_weight_memory + extra_memory > self.model_size():
            full_load = True
        current_used = self.model.model_loaded_weight_memory
        self.load(device_to, lowvram_model_memory=current_used + extra_memory, force_patch_weights=force_patch_weights,
                  full_load=full_load)
        return self.model.model_loaded_weight_memory - current_used

    def detach(self, unpatch_all=True):  # base.py:827
        self.model_patches_to(self.offload_device)
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model

    def current_loaded_device(self):  # base.py:833
        return self.current_device
