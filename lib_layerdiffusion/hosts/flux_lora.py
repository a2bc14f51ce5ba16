"""The FLUX.1 LayerDiffuse LoRA (`layerlora.safetensors` of RedAIGC/Flux-version-LayerDiffuse) through the host's
own LoRA loading.

The file is a PEFT LoRA of diffusers' `FluxTransformer2DModel` (`FluxPipeline.load_lora_weights`, diffusers 0.32.2):
keys `[transformer.]<module>.lora_A.weight` [rank, in] and `.lora_B.weight` [out, rank], e.g.
`transformer.single_transformer_blocks.37.attn.to_k.lora_A.weight`. Forge keeps FLUX.1 in BFL's layout, with fused
projections: a double block's `img_attn.qkv` / `txt_attn.qkv` hold diffusers' `to_q|to_k|to_v` /
`add_q_proj|add_k_proj|add_v_proj`, a single block's `linear1` holds `to_q|to_k|to_v|proj_mlp` (rows 0, H, 2H, 3H..7H).
The host's key map (`model_lora_keys_unet`) names, for every diffusers module, the Forge parameter and the row
range (dim, start, length) it lands on; the host's `load_lora` turns the file into patches in the host's own form.
Nothing here re-implements that mapping: it is handed in, and this module only checks its outcome, so that every
key of the file lands on a parameter of the loaded transformer with the right shape, or is reported.

Host-free: the host's functions are parameters. The `forge_*` / `neo_*` functions take the host's LoRA module as an
argument and are what the bridges call.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

from ..errors import UnsupportedModelError

log = logging.getLogger(__name__)

# diffusers' load_lora_weights keeps the transformer's keys by this prefix; a file saved from the transformer alone
# (peft get_peft_model_state_dict) has none, and diffusers 0.32's peft.py load_lora_adapter then takes it all
PEFT_PREFIX = "transformer."

# What the Flux port's LoRA is taken to target (its key list is not published; a user's log shows
# single_transformer_blocks.37.attn.to_k among them): every linear layer of the 19 double and 38 single blocks, the
# set diffusers' Flux LoRA trainers use (train_dreambooth_lora_flux.py's default list, which also matches the single
# blocks' attn.to_q/k/v) widened by the single blocks' MLP. Both hosts map all of them, and also the modulation
# linears (norm1.linear, norm1_context.linear, norm.linear) and the embedders / final layer.
DOUBLE_BLOCK_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)
SINGLE_BLOCK_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
FLUX1_DOUBLE_BLOCKS, FLUX1_SINGLE_BLOCKS = 19, 38

# (up, down) tensor names of a LoRA module in the formats the hosts' load_lora reads, PEFT's first
_UP_DOWN = (
    (".lora_B.weight", ".lora_A.weight"),
    (".lora_up.weight", ".lora_down.weight"),
    (".lora.up.weight", ".lora.down.weight"),
    ("_lora.up.weight", "_lora.down.weight"),
)
_OTHER_SUFFIXES = (".lora_B.bias", ".lora_mid.weight", ".alpha", ".dora_scale", ".diff", ".diff_b")
_SUFFIXES = tuple(s for pair in _UP_DOWN for s in pair) + _OTHER_SUFFIXES


class FluxLora(NamedTuple):
    """patches: what the host's load_lora made, keyed as ModelPatcher.add_patches takes them (a parameter name, or
    (name, (dim, start, length)) for a fused projection, or (name, None, function)); only patches that land on a
    parameter of the model with the right shape. unmatched: file key -> why it lands nowhere (sorted).
    sources: patch key -> the file's keys it was made from."""
    patches: dict
    unmatched: dict
    sources: dict


def peft_module_names(double_blocks: int = FLUX1_DOUBLE_BLOCKS, single_blocks: int = FLUX1_SINGLE_BLOCKS,
                      prefix: str = PEFT_PREFIX, double_targets=DOUBLE_BLOCK_TARGETS,
                      single_targets=SINGLE_BLOCK_TARGETS) -> list[str]:
    """diffusers module names (with the PEFT prefix) of every block and projection in the target set."""
    names = [f"{prefix}transformer_blocks.{i}.{t}" for i in range(double_blocks) for t in double_targets]
    names += [f"{prefix}single_transformer_blocks.{i}.{t}" for i in range(single_blocks) for t in single_targets]
    return names


def module_name(key: str) -> str:
    """The module a LoRA tensor belongs to (`x.lora_A.weight` -> `x`); the key itself when it has no LoRA suffix."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[:-len(suffix)]
    return key


def with_peft_prefix(state_dict: Mapping, prefix: str = PEFT_PREFIX) -> tuple[dict, dict]:
    """(state dict as the host should see it, its key -> the file's key). The host maps diffusers names only with
    the `transformer.` prefix (Forge main: only so), so a file without any prefixed key gets it on every key, as
    diffusers 0.32 then loads the whole file into the transformer; a file with prefixed keys is taken as it is."""
    if any(k.startswith(prefix) for k in state_dict):
        return dict(state_dict), {k: k for k in state_dict}
    return {prefix + k: v for k, v in state_dict.items()}, {prefix + k: k for k in state_dict}


def _target(mapped) -> tuple[str, tuple | None]:
    """(parameter name, (dim, start, length) or None) of a key map value: a name, (name, offset) or
    (name, offset, function)."""
    if isinstance(mapped, str):
        return mapped, None
    return mapped[0], mapped[1]


def _delta_shape(state_dict: Mapping, module: str) -> tuple[int, int] | None:
    """(out, in) of the weight change a LoRA module makes: up [out, rank] @ down [rank, in...]."""
    for up, down in _UP_DOWN:
        a, b = state_dict.get(module + up), state_dict.get(module + down)
        if a is not None and b is not None and len(a.shape) >= 2 and len(b.shape) >= 2:
            n_in = 1
            for s in b.shape[1:]:
                n_in *= int(s)
            return int(a.shape[0]), n_in
    return None


def _narrowed(shape: tuple, offset: tuple | None) -> tuple:
    if offset is None:
        return tuple(shape)
    dim, _start, length = offset
    shape = list(shape)
    shape[dim] = length
    return tuple(shape)


def _fits(param_shape: tuple, offset: tuple | None) -> bool:
    if offset is None:
        return True
    dim, start, length = offset
    return 0 <= dim < len(param_shape) and start >= 0 and length > 0 and start + length <= param_shape[dim]


def lora_patches(state_dict: Mapping, key_map: Mapping, load_lora: Callable,
                 parameter_shapes: Mapping | None = None, prefix: str = PEFT_PREFIX) -> FluxLora:
    """The host's patches for a PEFT Flux LoRA, and the keys of the file that land on no parameter.

    key_map: the host's `model_lora_keys_unet(model, {})` (LoRA module name -> parameter name, (name, offset) or
    (name, offset, function)); load_lora: the host's `load_lora(lora, key_map) -> (patches, remaining)`;
    parameter_shapes: the model's parameter name -> shape (None for a parameter whose stored shape is not its real
    one, e.g. a packed 4-bit weight: then only its presence is checked); None skips both checks.

    A key is unmatched when the host leaves it over, when its module maps to a parameter the model does not have,
    when the module's LoRA (up @ down) is not the shape of the parameter's rows it lands on, or when several modules
    of the file land on the same rows (the host keeps only one of them). Patches of such modules are left out.
    """
    sd, file_key = with_peft_prefix(state_dict, prefix)
    patches, remaining = load_lora(sd, key_map)
    patches = dict(patches)
    unmatched = {file_key[k]: "no parameter of the model takes this key" for k in remaining}

    keys_of: dict[str, list[str]] = {}
    for k in sd:
        if k not in remaining:
            keys_of.setdefault(module_name(k), []).append(k)

    def drop(module, mapped, why):
        patches.pop(mapped, None)
        for k in keys_of[module]:
            unmatched[file_key[k]] = why

    landed: dict = {}  # host patch key -> the modules of the file that land there
    for module in keys_of:
        mapped = key_map.get(module)
        if mapped is None:  # taken by load_lora under a name this module does not parse to: the host's call
            continue
        landed.setdefault(mapped, []).append(module)
        param, offset = _target(mapped)
        if parameter_shapes is None:
            continue
        if param not in parameter_shapes:
            drop(module, mapped, f"maps to {param}, which the loaded model does not have")
            continue
        shape = parameter_shapes[param]
        if shape is None:
            continue
        shape = tuple(int(s) for s in shape)
        delta = _delta_shape(sd, module)
        where = param if offset is None else f"{param} {list(offset)}"
        if not _fits(shape, offset):
            drop(module, mapped, f"maps to {where}, outside {param} {list(shape)}")
            continue
        if delta is None or len(shape) < 2:
            continue
        rows = _narrowed(shape, offset)
        n_in = 1
        for s in rows[1:]:
            n_in *= s
        if delta != (rows[0], n_in):
            drop(module, mapped, f"its LoRA is {list(delta)}, {where} is {list(rows)}")

    for mapped, modules in landed.items():
        if len(modules) > 1:
            for module in modules:
                drop(module, mapped, f"{len(modules)} modules of the file land on {_target(mapped)[0]}: "
                                     + ", ".join(sorted(modules)))

    sources = {mapped: sorted(file_key[k] for k in keys_of[modules[0]])
               for mapped, modules in landed.items() if mapped in patches}
    return FluxLora(patches, dict(sorted(unmatched.items())), sources)


def not_added(patches: Mapping, added) -> list:
    """The patch keys ModelPatcher.add_patches did not take (it returns the ones it took: a set in Forge main, a
    list in Forge Neo)."""
    added = set(added)
    return [k for k in patches if k not in added]


def unmatched_after_adding(lora: FluxLora, added) -> dict:
    """lora.unmatched plus the file keys of every patch add_patches did not take (file key -> why, sorted)."""
    unmatched = dict(lora.unmatched)
    for k in not_added(lora.patches, added):
        name = _target(k)[0] if not isinstance(k, str) else k
        for key in lora.sources.get(k, [str(k)]):
            unmatched[key] = f"the host did not take its patch on {name}"
    return dict(sorted(unmatched.items()))


def unmatched_message(filename: str, unmatched: Mapping, total: int, limit: int = 8) -> str:
    """What to tell the user when keys of the LoRA file land nowhere."""
    shown = "; ".join(f"{k} ({why})" for k, why in list(unmatched.items())[:limit])
    more = f"; and {len(unmatched) - limit} more" if len(unmatched) > limit else ""
    return (f"[LayerDiffuse] {len(unmatched)} of the {total} keys of {filename} land on no parameter of the loaded "
            f"FLUX.1 model, so the transparency LoRA is incomplete: {shown}{more}. Is the checkpoint FLUX.1 "
            f"(dev or schnell) and the file the Flux port's layerlora.safetensors?")


def parameter_shape(tensor) -> tuple | None:
    """A parameter's real shape: bitsandbytes 4-bit weights store a packed shape and carry the real one in
    quant_state (Forge's GGUF parameters already report the real shape); None when it cannot be told."""
    quant_state = getattr(tensor, "quant_state", None)
    if quant_state is not None:
        shape = getattr(quant_state, "shape", None)
        return tuple(shape) if shape is not None else None
    shape = getattr(tensor, "shape", None)
    return tuple(shape) if shape is not None else None


def forge_flux_lora_patches(unet, state_dict: Mapping, lora_module) -> FluxLora:
    """Forge main (lllyasviel/stable-diffusion-webui-forge dfdcbab6). lora_module is `backend.patcher.lora`.

    backend/patcher/lora.py:43 model_lora_keys_unet -> packages_3rdparty/comfyui_lora_collection/lora.py:286
    (webui_lora_collection has none): for a model whose `config.huggingface_repo` contains "flux" (line 342) it adds
    `transformer.<diffusers name>` (no bare name), `lycoris_...`, `lora_transformer_...` for every key of
    comfyui_lora_collection/utils.py:407 flux_to_diffusers (single blocks' to_q/to_k/to_v/proj_mlp ->
    `single_blocks.N.linear1.weight` at rows (0, 0|H|2H, H) / (0, 3H, 4H), lines 456-466). Its key_map argument is a
    shared mutable default, so a fresh dict is passed. backend/patcher/lora.py:19 load_lora ->
    comfyui_lora_collection/lora.py:32: patches `{target: ("lora", (up, down, alpha, mid, dora_scale))}`.
    backend/patcher/base.py:91 add_patches matches against `self.model.named_parameters()`.
    `unet` is the Flux UnetPatcher (`sd_model.forge_objects.unet`); `unet.model` is backend/modules/k_model.py KModel
    (`.config` the huggingface_guess config, `.diffusion_model` backend/nn/flux.py IntegratedFluxTransformer2DModel).
    """
    key_map = lora_module.model_lora_keys_unet(unet.model, {})
    shapes = {k: parameter_shape(v) for k, v in unet.model.named_parameters()}
    return lora_patches(state_dict, key_map, lora_module.load_lora, shapes)


def neo_flux_lora_patches(unet, state_dict: Mapping, lora_module) -> FluxLora:
    """Forge Neo (Haoming02/sd-webui-forge-classic `neo`, read at 6e1e0d5). lora_module is `backend.patcher.lora`,
    which re-exports (line 10) modules_forge/packages/comfy/lora.py's load_lora (line 37) and
    model_lora_keys_unet (line 170).

    model_lora_keys_unet, for a model whose `config.huggingface_repo` contains "flux" or "chroma" (line 200), maps
    `transformer.<diffusers name>`, the bare `<diffusers name>` (DiffSynth), `lycoris_...` and
    `lora_transformer_...` of modules_forge/packages/comfy/utils.py:165 flux_to_diffusers (the same fused rows as
    Forge main, lines 222-232), plus `<...>.linear1_qkv`. It returns the key map itself. load_lora's patches are
    weight_adapter objects (weight_adapter/lora.py LoRAAdapter for lora_A/lora_B). backend/patcher/base.py:414
    add_patches matches against `self.model.state_dict()`. With `--ops` ending in Int8 Neo's own LoRA loading
    goes elsewhere (backend/operations_int8.py load_lora_int8); that path is not covered here.
    """
    key_map = lora_module.model_lora_keys_unet(unet.model, {})
    shapes = dict.fromkeys(unet.model.state_dict())  # what add_patches matches; the real shapes from the parameters
    shapes.update((k, parameter_shape(v)) for k, v in unet.model.named_parameters() if k in shapes)
    return lora_patches(state_dict, key_map, lora_module.load_lora, shapes)


def quantisation(tensor) -> str | None:
    """How a weight is stored when the hosts' LoRA loading must dequantise it first (Forge main
    backend/patcher/lora.py:412-423, Neo lora.py:213-227 check the same two attributes): a GGUF parameter
    (backend/operations_gguf.py ParameterGGUF, `gguf_cls` its quant class: Q8_0, Q4_K, ...) or a bitsandbytes 4-bit
    weight (backend/operations_bnb.py ForgeParams4bit, `bnb_quantized`, quant_type nf4 / fp4). None for a weight
    held as a plain tensor (fp32, fp16, bf16, fp8; a GGUF file's F16 / F32 tensors, whose gguf_cls is None)."""
    gguf_cls = getattr(tensor, "gguf_cls", None)
    if gguf_cls is not None:
        return f"GGUF {getattr(gguf_cls, '__name__', gguf_cls)}"
    if hasattr(tensor, "bnb_quantized"):
        return f"bitsandbytes {getattr(tensor, 'quant_type', None) or '4-bit'}"
    return None


def undecodable(tensor) -> bool:
    """A GGUF parameter of a type the host has no quant class for (operations_gguf.py quants_mapping lacks it, so
    gguf_cls is None and dequantize_tensor hands back the packed bytes): its stored data is not of its shape."""
    if not hasattr(tensor, "gguf_cls") or tensor.gguf_cls is not None:
        return False
    data = getattr(tensor, "data", None)
    return data is not None and tuple(data.shape) != tuple(getattr(tensor, "shape", data.shape))


def _parameter_of(key) -> str:
    return key if isinstance(key, str) else key[0]


def quantised_targets(patches: Mapping, parameters: Mapping) -> dict:
    """parameter name -> quantisation(...) for every parameter the patches land on that is stored quantised."""
    found = {}
    for k in patches:
        name = _parameter_of(k)
        q = quantisation(parameters[name]) if name in parameters else None
        if q is not None:
            found[name] = q
    return found


def check_decodable(patches: Mapping, parameters: Mapping) -> None:
    """Refuse, with a message naming the weights, when a target weight is stored in a GGUF type the host cannot
    dequantise: no LoRA (and no image) can be computed on it."""
    bad = sorted({_parameter_of(k) for k in patches
                  if _parameter_of(k) in parameters and undecodable(parameters[_parameter_of(k)])})
    if bad:
        raise UnsupportedModelError(
            f"[LayerDiffuse] {len(bad)} of the FLUX.1 weights the transparency LoRA changes are stored in a GGUF "
            f"quantisation this Forge cannot dequantise (e.g. {', '.join(bad[:3])}), so the LoRA cannot be applied. "
            f"Use a GGUF checkpoint in Q8_0, Q6_K, Q5_K, Q5_0/1, Q4_K, Q4_0/1, Q3_K or Q2_K, an NF4, fp8 or full "
            f"checkpoint.")


def online_mode(quantised: Mapping) -> bool:
    """Whether the LoRA goes to the host online (kept beside the weight and added in each layer's forward, on the
    dequantised weight: Forge's "(fp16 LoRA)" mode) rather than merged into it. Online whenever a target weight is
    quantised: merged, the host dequantises, adds the LoRA and quantises again (lora.py:412-438), which Forge's
    K-quants cannot do at all (packages_3rdparty/gguf/quants.py:176 quantize_blocks_pytorch raises "Low bit LoRA for
    this data type is not implemented yet") and which rounds a small LoRA mostly away in 4-bit formats. Plain
    weights (fp8 and up) are merged, as before."""
    return bool(quantised)


def _log_online(quantised: Mapping, patches: Mapping) -> None:
    kinds = {}
    for q in quantised.values():
        kinds[q] = kinds.get(q, 0) + 1
    weights = {_parameter_of(k) for k in patches}  # a fused qkv / linear1 weight takes several patches
    log.info("[LayerDiffuse] FLUX.1 LoRA: %d of the %d weights it changes (%d patches) are quantised (%s); it is "
             "applied online (added to each dequantised weight in the layer's forward) instead of being merged.",
             len(quantised), len(weights), len(patches), ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))


def forge_add_flux_lora(unet, filename: str, state_dict: Mapping, strength: float, lora_module) -> dict:
    """Forge main: the LoRA's patches added to `unet` (a clone the caller owns) with backend/patcher/base.py:91
    add_patches(filename=, patches=, strength_patch=, strength_model=, online_mode=) as extensions-builtin/
    sd_forge_lora/networks.py:36 load_lora_for_models does; online_mode from online_mode() (networks.py:102-105 takes
    it from the user's "Diffusion in Low Bits" choice instead). The LoraLoader (lora.py:344 refresh, run by
    memory_management.py:518 on every model load) then merges the patches into the weights, or, online, sets them
    as `forge_online_loras` on the layers, which backend/operations.py:14-54 get_weight_and_bias adds to the
    weight in ForgeOperationsGGUF.Linear (operations.py:429-438) and ForgeOperationsBNB4bits.Linear (367-370).
    Returns the file's keys that land nowhere (key -> why), for the user."""
    lora = forge_flux_lora_patches(unet, state_dict, lora_module)
    online = _online_for(lora.patches, unet)
    added = unet.add_patches(filename=filename, patches=lora.patches, strength_patch=float(strength),
                             strength_model=1.0, online_mode=online)
    return unmatched_after_adding(lora, added)


def _online_for(patches: Mapping, unet) -> bool:
    """Whether the LoRA goes on online (some target weight is quantised); refuses a GGUF type the host cannot
    decode first."""
    parameters = dict(unet.model.named_parameters())
    check_decodable(patches, parameters)
    quantised = quantised_targets(patches, parameters)
    online = online_mode(quantised)
    if online:
        _log_online(quantised, patches)
    return online


def one_patch_per_parameter(patches: Mapping) -> list[dict]:
    """The patches in groups in which no two land on the same parameter (the fused qkv / linear1 rows of one weight
    go to different groups), in order."""
    groups: list[tuple[set, dict]] = []
    for k, v in patches.items():
        name = _parameter_of(k)
        for names, group in groups:
            if name not in names:
                names.add(name)
                group[k] = v
                break
        else:
            groups.append(({name}, {k: v}))
    return [group for _names, group in groups]


def neo_add_flux_lora(unet, filename: str, state_dict: Mapping, strength: float, lora_module) -> dict:
    """Forge Neo: as forge_add_flux_lora, through Neo's own LoRA path: backend/patcher/base.py:414
    add_patches(patches, strength_patch, strength_model, filename=, online_mode=) puts them in `lora_patches`, which
    backend/patcher/lora.py:153 LoraLoader.refresh (memory_management.py:485, every model load) merges into the
    weights, or, online, sets as `forge_online_loras` (lora.py:200-206) that backend/operations.py:68-138
    weights_manual_cast adds in ForgeOperationsGGUF.Linear (operations.py:650-658) and the bnb Linear (591-594).

    Two things of Neo's make this more than one call. Without a filename (ModelPatcher.patches) the patches are
    merged by patch_weight_to_device (base.py:480), which casts a GGUF parameter's packed blocks as if they were the
    weight, and, for modules loaded in low-VRAM mode, are only kept as `weight_function` (base.py:597), which no
    operation of Neo reads. With a filename, add_patches takes each key's list from self.patches (base.py:437), so
    of several patches on one parameter (the fused q/k/v rows of double blocks' qkv, q/k/v/mlp of single blocks'
    linear1) only the last is kept: so each call gets at most one patch per parameter, and the calls are told apart
    by the name (`<file>`, `<file>#2`, ...; LoraLoader.refresh joins all of them, lora.py:163-165)."""
    lora = neo_flux_lora_patches(unet, state_dict, lora_module)
    online = _online_for(lora.patches, unet)
    added = []
    for i, group in enumerate(one_patch_per_parameter(lora.patches)):
        name = filename if i == 0 else f"{filename}#{i + 1}"
        added += list(unet.add_patches(group, strength_patch=float(strength), strength_model=1.0, filename=name,
                                       online_mode=online))
    return unmatched_after_adding(lora, added)
