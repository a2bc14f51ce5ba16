"""ldm_patched/modules/model_patcher.py ModelPatcher of both hosts, lines as (bfee03d8 / 3b56b268).

bfee03d8: a patch is (strength_patch, value, strength_model); each clone keeps its own backups; patch_model
swaps the object patches in and recomputes every patched weight with ModelPatcher.calculate_weight (:229), whose
"diff" grows a smaller 4-D weight to the diff's shape on its own (the dict of ("diff", (t, {...})) is not read)
and whose "lora" reads (up, down, alpha, mid) from the value list.
3b56b268: a patch is (strength_patch, value, strength_model, offset, function); clones share the parent's backup
dicts; weights are merged by ldm_patched/modules/lora.py calculate_weight (reforge_only/), which merges a LoRA only
as a weight_adapter.LoRAAdapter and pads a diff only with {'pad_weight': True}; a patcher is loaded by
partially_load, which puts the shared backups back first where the loaded weights are another patcher's."""
import copy
import uuid

import torch

import fake_host
from ldm_patched.modules import model_management, utils

REFORGE = fake_host.is_reforge()


class ModelPatcher:
    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None,
                 weight_inplace_update=False):  # :17 / :205 (3b56b268 has no current_device)
        self.size = size
        self.model = model
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device = load_device or torch.device("cpu")
        self.offload_device = offload_device or torch.device("cpu")
        self.current_device = current_device or self.offload_device
        self.weight_inplace_update = weight_inplace_update
        if REFORGE:
            self.patches_uuid = uuid.uuid4()  # :225
            self.parent = None  # :226
            for attr, default in (("model_loaded_weight_memory", 0), ("current_weight_patches_uuid", None)):
                if not hasattr(model, attr):  # :246, :255
                    setattr(model, attr, default)
        else:
            self.model_keys = set(model.state_dict().keys())  # model_size, :40

    if REFORGE:
        def clone(self):  # :270 (3b56b268): backups shared with the parent
            n = self.__class__(self.model, self.load_device, self.offload_device, self.size,
                               weight_inplace_update=self.weight_inplace_update)
            self._copy_into(n)
            n.patches_uuid = self.patches_uuid
            n.backup = self.backup
            n.object_patches_backup = self.object_patches_backup
            n.parent = self
            return n
    else:
        def clone(self):  # :43 (bfee03d8)
            n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device,
                             weight_inplace_update=self.weight_inplace_update)
            self._copy_into(n)
            n.model_keys = self.model_keys
            return n

    def _copy_into(self, n):
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)

    def is_clone(self, other):  # :54 / :328
        return hasattr(other, 'model') and self.model is other.model

    def memory_required(self, input_shape):  # :59 / :365
        return self.model.memory_required(input_shape=input_shape)

    def model_dtype(self):  # :153 / :498
        return torch.float32

    def model_patches_to(self, device):  # :132 / :477
        pass

    def set_model_vae_encode_wrapper(self, wrapper_function):  # :78 / :388
        self.model_options["model_vae_encode_wrapper"] = wrapper_function

    def set_model_vae_decode_wrapper(self, wrapper_function):  # :81 / :391 (3b56b268's VAE.decode never reads it)
        self.model_options["model_vae_decode_wrapper"] = wrapper_function

    if REFORGE:
        def set_model_vae_regulation(self, vae_regulation):  # :394 (3b56b268; its VAE.encode never reads it)
            self.model_options["model_vae_regulation"] = vae_regulation

    def add_object_patch(self, name, obj):  # :129 / :442
        self.object_patches[name] = obj

    if REFORGE:
        def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):  # :502 (3b56b268)
            p = set()
            model_sd = self.model.state_dict()
            for k in patches:
                offset = function = None
                if isinstance(k, str):
                    key = k
                else:
                    offset, key = k[1], k[0]
                    if len(k) > 2:
                        function = k[2]
                if key in model_sd:
                    p.add(k)
                    self.patches.setdefault(key, []).append(
                        (strength_patch, patches[k], strength_model, offset, function))
            self.patches_uuid = uuid.uuid4()
            return list(p)

        def patch_weight_to_device(self, key, device_to=None):  # :559 (3b56b268)
            from ldm_patched.modules import lora
            if key not in self.patches:  # :560
                return
            weight = utils.get_attr(self.model, key)
            if key not in self.backup:
                self.backup[key] = weight.detach().clone()
            out_weight = lora.calculate_weight(self.patches[key], weight.to(torch.float32, copy=True), key)
            utils.set_attr_param(self.model, key, out_weight.to(weight.dtype))

        def _load_list(self):  # :589 (3b56b268): the modules holding parameters of their own, found by walking
            loading = []   # the model as it is now (object patches in)
            for n, m in self.model.named_modules():
                params = [name for name, _ in m.named_parameters(recurse=False)]
                skip = any(name not in params for name, _ in m.named_parameters(recurse=True))
                if not skip and len(params) > 0:
                    loading.append((n, m, params))
            return loading

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            """:604 (3b56b268), fully loaded: the patched weights of every module _load_list finds merged once
            (:677-685), the model marked as carrying this patcher's weights. A patch whose module the walk does
            not reach is not merged, and nothing says so."""
            for n, m, params in self._load_list():
                if getattr(m, "ldm_patched_patched_weights", False) is True:  # :677
                    continue
                for param in params:
                    self.patch_weight_to_device("{}.{}".format(n, param), device_to=device_to)  # :682
                m.ldm_patched_patched_weights = True  # :685
            self.model.model_loaded_weight_memory = model_management.module_size(self.model)  # :702
            self.model.current_weight_patches_uuid = self.patches_uuid  # :703

        def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True,
                        force_patch_weights=False):  # :710 (3b56b268)
            for k in self.object_patches:
                old = utils.set_attr(self.model, k, self.object_patches[k])
                if k not in self.object_patches_backup:
                    self.object_patches_backup[k] = old
            if load_weights:
                self.load(device_to)
            return self.model

        def unpatch_model(self, device_to=None, unpatch_weights=True):  # :727 (3b56b268)
            if unpatch_weights:
                for k, weight in self.backup.items():
                    utils.set_attr_param(self.model, k, weight)
                self.model.current_weight_patches_uuid = None
                self.backup.clear()
                self.model.model_loaded_weight_memory = 0
                for m in self.model.modules():  # :756
                    if hasattr(m, "ldm_patched_patched_weights"):
                        del m.ldm_patched_patched_weights
            for k, old in self.object_patches_backup.items():  # :760: object patches always go back
                utils.set_attr(self.model, k, old)
            self.object_patches_backup.clear()

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):  # :831 (3b56b268)
            unpatch_weights = self.model.current_weight_patches_uuid is not None and \
                self.model.current_weight_patches_uuid != self.patches_uuid
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_weights)
            self.patch_model(load_weights=False)
            if self.model.model_loaded_weight_memory > 0:  # :842: these weights are loaded already
                return 0
            self.load(device_to)
            return self.model.model_loaded_weight_memory

        def detach(self, unpatch_all=True):  # :856 (3b56b268)
            if unpatch_all:
                self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
            return self.model

        def calculate_weight(self, patches, weight, key):  # :868 (3b56b268): deprecated, forwards to lora.py
            from ldm_patched.modules import lora
            return lora.calculate_weight(patches, weight, key)
    else:
        def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):  # :157 (bfee03d8)
            p = set()
            for k in patches:
                if k in self.model_keys:
                    p.add(k)
                    self.patches.setdefault(k, []).append((strength_patch, patches[k], strength_model))
            return list(p)

        def patch_model(self, device_to=None, patch_weights=True):  # :191 (bfee03d8)
            for k in self.object_patches:
                old = utils.get_attr(self.model, k)
                if k not in self.object_patches_backup:
                    self.object_patches_backup[k] = old
                utils.set_attr_raw(self.model, k, self.object_patches[k])
            if patch_weights:
                model_sd = self.model.state_dict()
                for key in self.patches:
                    if key not in model_sd:  # :201: a key the model (as it is now) does not list is skipped
                        print("could not patch. key doesn't exist in model:", key)
                        continue
                    weight = model_sd[key]
                    if key not in self.backup:
                        self.backup[key] = weight.to(device=self.offload_device, copy=True)
                    out_weight = self.calculate_weight(self.patches[key], weight.to(torch.float32, copy=True), key)
                    utils.set_attr(self.model, key, out_weight.to(weight.dtype))
            return self.model

        def calculate_weight(self, patches, weight, key):  # :229 (bfee03d8), the "diff" and "lora" kinds
            for alpha, v, strength_model in patches:
                if strength_model != 1.0:
                    weight *= strength_model
                if len(v) == 1:
                    patch_type = "diff"
                elif len(v) == 2:
                    patch_type, v = v[0], v[1]
                if patch_type == "diff":  # :247
                    w1 = v[0]
                    if alpha != 0.0:
                        if w1.shape != weight.shape:
                            if w1.ndim == weight.ndim == 4:  # :251: grown to the larger shape
                                new_shape = [max(n, m) for n, m in zip(weight.shape, w1.shape)]
                                new_weight = torch.zeros(size=new_shape).to(weight)
                                new_weight[:weight.shape[0], :weight.shape[1], :weight.shape[2],
                                           :weight.shape[3]] = weight
                                new_weight[:w1.shape[0], :w1.shape[1], :w1.shape[2], :w1.shape[3]] += alpha * w1
                                weight = new_weight.contiguous().clone()
                            else:
                                print("WARNING SHAPE MISMATCH {} WEIGHT NOT MERGED".format(key))
                        else:
                            weight += alpha * w1.to(weight)
                elif patch_type == "lora":  # :264
                    mat1, mat2 = v[0].float(), v[1].float()
                    if v[2] is not None:
                        alpha *= v[2] / mat2.shape[0]
                    weight += (alpha * torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1))).reshape(
                        weight.shape).type(weight.dtype)
                else:
                    print("patch type not recognized", patch_type, key)  # :359
            return weight

        def unpatch_model(self, device_to=None):  # :363 (bfee03d8)
            for k in list(self.backup.keys()):
                utils.set_attr(self.model, k, self.backup[k])
            self.backup = {}
            for k in list(self.object_patches_backup.keys()):
                utils.set_attr_raw(self.model, k, self.object_patches_backup[k])
            self.object_patches_backup = {}
