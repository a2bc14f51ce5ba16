"""Mirrors backend/patcher/lora.py (Forge main dfdcbab6) for a FLUX.1 LoRA: the key map (model_lora_keys_unet ->
packages_3rdparty/comfyui_lora_collection/lora.py:286 with utils.py:407 flux_to_diffusers, the block linears),
load_lora (comfyui_lora_collection/lora.py:32, its PEFT lora_A / lora_B branch), merge_lora_to_weight (the "diff" and
"lora" patches) and the LoraLoader that merges file-named patches into the weights or, online, hangs them on the
layers as forge_online_loras."""
import torch

from backend import memory_management, utils


def flux_to_diffusers(mmdit_config, output_prefix=""):  # comfyui_lora_collection/utils.py:407 (the block linears)
    n_double_layers = mmdit_config.get("depth", 0)
    n_single_layers = mmdit_config.get("depth_single_blocks", 0)
    hidden_size = mmdit_config.get("hidden_size", 0)

    key_map = {}
    for index in range(n_double_layers):
        prefix_from = "transformer_blocks.{}".format(index)
        prefix_to = "{}double_blocks.{}".format(output_prefix, index)

        for end in ("weight", "bias"):
            k = "{}.attn.".format(prefix_from)
            qkv = "{}.img_attn.qkv.{}".format(prefix_to, end)
            key_map["{}to_q.{}".format(k, end)] = (qkv, (0, 0, hidden_size))
            key_map["{}to_k.{}".format(k, end)] = (qkv, (0, hidden_size, hidden_size))
            key_map["{}to_v.{}".format(k, end)] = (qkv, (0, hidden_size * 2, hidden_size))

            k = "{}.attn.".format(prefix_from)
            qkv = "{}.txt_attn.qkv.{}".format(prefix_to, end)
            key_map["{}add_q_proj.{}".format(k, end)] = (qkv, (0, 0, hidden_size))
            key_map["{}add_k_proj.{}".format(k, end)] = (qkv, (0, hidden_size, hidden_size))
            key_map["{}add_v_proj.{}".format(k, end)] = (qkv, (0, hidden_size * 2, hidden_size))

        block_map = {
            "attn.to_out.0.weight": "img_attn.proj.weight",
            "attn.to_add_out.weight": "txt_attn.proj.weight",
            "ff.net.0.proj.weight": "img_mlp.0.weight",
            "ff.net.2.weight": "img_mlp.2.weight",
            "ff_context.net.0.proj.weight": "txt_mlp.0.weight",
            "ff_context.net.2.weight": "txt_mlp.2.weight",
        }
        for k in block_map:
            key_map["{}.{}".format(prefix_from, k)] = "{}.{}".format(prefix_to, block_map[k])

    for index in range(n_single_layers):  # utils.py:456
        prefix_from = "single_transformer_blocks.{}".format(index)
        prefix_to = "{}single_blocks.{}".format(output_prefix, index)

        for end in ("weight", "bias"):
            k = "{}.attn.".format(prefix_from)
            qkv = "{}.linear1.{}".format(prefix_to, end)
            key_map["{}to_q.{}".format(k, end)] = (qkv, (0, 0, hidden_size))
            key_map["{}to_k.{}".format(k, end)] = (qkv, (0, hidden_size, hidden_size))
            key_map["{}to_v.{}".format(k, end)] = (qkv, (0, hidden_size * 2, hidden_size))
            key_map["{}.proj_mlp.{}".format(prefix_from, end)] = (qkv, (0, hidden_size * 3, hidden_size * 4))

        block_map = {"proj_out.weight": "linear2.weight"}
        for k in block_map:
            key_map["{}.{}".format(prefix_from, k)] = "{}.{}".format(prefix_to, block_map[k])
    return key_map


def model_lora_keys_unet(model, key_map={}):  # lora.py:43 -> comfyui_lora_collection/lora.py:286, 342-349
    if 'flux' in model.config.huggingface_repo.lower():  # Diffusers lora Flux
        diffusers_keys = flux_to_diffusers(model.diffusion_model.config, output_prefix="diffusion_model.")
        for k in diffusers_keys:
            if k.endswith(".weight"):
                to = diffusers_keys[k]
                key_map["transformer.{}".format(k[:-len(".weight")])] = to
                key_map["lycoris_{}".format(k[:-len(".weight")].replace(".", "_"))] = to
                key_map["lora_transformer_{}".format(k[:-len(".weight")].replace(".", "_"))] = to
    return key_map


def load_lora(lora, to_load):  # lora.py:19 -> comfyui_lora_collection/lora.py:32 (alpha, PEFT lora_B / lora_A)
    patch_dict = {}
    loaded_keys = set()
    for x in to_load:
        alpha_name = "{}.alpha".format(x)
        alpha = None
        if alpha_name in lora.keys():
            alpha = lora[alpha_name].item()
            loaded_keys.add(alpha_name)

        diffusers2_lora = "{}.lora_B.weight".format(x)
        if diffusers2_lora in lora.keys():
            A_name = diffusers2_lora
            B_name = "{}.lora_A.weight".format(x)
            patch_dict[to_load[x]] = ("lora", (lora[A_name], lora[B_name], alpha, None, None))
            loaded_keys.add(A_name)
            loaded_keys.add(B_name)

    remaining_dict = {x: y for x, y in lora.items() if x not in loaded_keys}
    return patch_dict, remaining_dict


@torch.inference_mode()
def merge_lora_to_weight(patches, weight, key="online_lora", computation_dtype=torch.float32):  # lora.py:85
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

        patch_type = ''

        if len(v) == 1:
            patch_type = "diff"
        elif len(v) == 2:
            patch_type = v[0]
            v = v[1]

        if patch_type == "diff":  # lora.py:124
            w1 = v[0]
            if strength != 0.0:
                if w1.shape != weight.shape and w1.ndim == weight.ndim == 4:  # :127: grown to the larger shape
                    new_shape = [max(n, m) for n, m in zip(weight.shape, w1.shape)]
                    new_weight = torch.zeros(size=new_shape).to(weight)
                    new_weight[:weight.shape[0], :weight.shape[1], :weight.shape[2], :weight.shape[3]] = weight
                    new_weight[:w1.shape[0], :w1.shape[1], :w1.shape[2], :w1.shape[3]] += \
                        strength * memory_management.cast_to_device(w1, weight.device, weight.dtype)
                    weight = new_weight.contiguous().clone()
                elif w1.shape != weight.shape:
                    print("WARNING SHAPE MISMATCH {} WEIGHT NOT MERGED {} != {}".format(key, w1.shape, weight.shape))
                else:
                    weight += strength * memory_management.cast_to_device(w1, weight.device, weight.dtype)

        elif patch_type == "lora":  # lora.py:145 (no mid, no DoRA)
            mat1 = memory_management.cast_to_device(v[0], weight.device, computation_dtype)
            mat2 = memory_management.cast_to_device(v[1], weight.device, computation_dtype)

            if v[2] is not None:
                alpha = v[2] / mat2.shape[0]
            else:
                alpha = 1.0

            lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1))
            lora_diff = lora_diff.reshape(weight.shape)
            weight += function(((strength * alpha) * lora_diff).type(weight.dtype))
        else:
            raise NotImplementedError(f"the fake merges diff and lora patches only, not {patch_type}")

        if old_weight is not None:
            weight = old_weight

    if weight_dtype_backup is not None:
        weight = weight.to(dtype=weight_dtype_backup)

    return weight


def get_parameter_devices(model):  # lora.py:325
    parameter_devices = {}
    for key, p in model.named_parameters():
        parameter_devices[key] = p.device
    return parameter_devices


def set_parameter_devices(model, parameter_devices):  # lora.py:332
    for key, device in parameter_devices.items():
        p = utils.get_attr(model, key)
        if p.device != device:
            p = utils.tensor2parameter(p.to(device=device))
            utils.set_attr_raw(model, key, p)
    return model


class LoraLoader:  # lora.py:344
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.online_backup = []
        self.loaded_hash = str([])

    @torch.inference_mode()
    def refresh(self, lora_patches, offload_device=torch.device('cpu'), force_refresh=False):  # lora.py:352
        from backend import operations  # lora.py:341 imports it after the definitions above

        hashes = str(list(lora_patches.keys()))

        if hashes == self.loaded_hash and not force_refresh:
            return

        all_patches = {}

        for (_, _, _, online_mode), patches in lora_patches.items():
            for key, current_patches in patches.items():
                all_patches[(key, online_mode)] = all_patches.get((key, online_mode), []) + current_patches

        memory_management.signal_empty_cache = True

        parameter_devices = get_parameter_devices(self.model)

        for m in set(self.online_backup):  # lora.py:374
            del m.forge_online_loras

        self.online_backup = []

        for k, w in self.backup.items():
            if not isinstance(w, torch.nn.Parameter):
                w = torch.nn.Parameter(w, requires_grad=False)

            utils.set_attr_raw(self.model, k, w)

        self.backup = {}

        set_parameter_devices(self.model, parameter_devices=parameter_devices)

        for (key, online_mode), current_patches in all_patches.items():  # lora.py:392
            try:
                parent_layer, child_key, weight = utils.get_attr_with_parent(self.model, key)
                assert isinstance(weight, torch.nn.Parameter)
            except:  # noqa: E722 (as lora.py:396)
                raise ValueError(f"Wrong LoRA Key: {key}")

            if online_mode:  # lora.py:399
                if not hasattr(parent_layer, 'forge_online_loras'):
                    parent_layer.forge_online_loras = {}

                parent_layer.forge_online_loras[child_key] = current_patches
                self.online_backup.append(parent_layer)
                continue

            if key not in self.backup:
                self.backup[key] = weight.to(device=offload_device)

            bnb_layer = None

            if hasattr(weight, 'bnb_quantized') and operations.bnb_avaliable:  # lora.py:412
                bnb_layer = parent_layer
                from backend.operations_bnb import functional_dequantize_4bit
                weight = functional_dequantize_4bit(weight)

            gguf_cls = getattr(weight, 'gguf_cls', None)  # lora.py:417
            gguf_parameter = None

            if gguf_cls is not None:
                gguf_parameter = weight
                from backend.operations_gguf import dequantize_tensor
                weight = dequantize_tensor(weight)

            weight = merge_lora_to_weight(current_patches, weight, key, computation_dtype=torch.float32)

            if bnb_layer is not None:
                bnb_layer.reload_weight(weight)
                continue

            if gguf_cls is not None:  # lora.py:437: quantised again (K-quants: NotImplementedError)
                gguf_cls.quantize_pytorch(weight, gguf_parameter)
                continue

            utils.set_attr_raw(self.model, key, torch.nn.Parameter(weight, requires_grad=False))

        set_parameter_devices(self.model, parameter_devices=parameter_devices)
        self.loaded_hash = hashes
        return
