"""The Flux port's LoRA on a GGUF FLUX.1 transformer in a REAL Forge (main or Neo), without a server: Forge's own
classes, loader functions, GGUF operations, quant classes (its vendored gguf-py), ModelPatcher / LoraLoader and key
map, and this extension's bridge function (flux_lora.forge_add_flux_lora / neo_add_flux_lora). Opt-in: needs a
Forge checkout and its venv; small (a FLUX.1 transformer of hidden size 256 with one double and one single block,
written as a .gguf file of a few MB in a temporary folder).

    LAYERDIFFUSE_FORGE_ROOT=~/.cache/layerdiffuse-rig/forge ~/.cache/layerdiffuse-rig/venv/bin/python \\
        tests/rig/test_flux_gguf_lora.py                     # Forge main (Neo: the -neo rig and its venv)

For each of Q8_0, Q4_K, Q5_K: backend/nn/flux.py IntegratedFluxTransformer2DModel built under
backend/operations.py using_forge_operations(bnb_dtype="gguf") as backend/loader.py builds a GGUF unet; the file
(every 2-D weight whose rows fit the quant blocks in that type, the others F16 / F32) read by backend/utils.py
load_torch_file into ParameterGGUF, loaded, baked (memory_management.bake_gguf_model), wrapped by
UnetPatcher.from_model; the LoRA (PEFT names, every linear of both blocks) added by the bridge function to a clone,
whose refresh_loras (what every model load runs) hangs it on the layers. Checked: all keys land, online; the whole
transformer's output with the LoRA equals a plain float32 IntegratedFluxTransformer2DModel holding the GGUF weights
as decoded (gguf-py's reference dequantiser, rounded to float16 as Forge computes them) plus strength * B @ A on each
module's rows, within 5 % of the LoRA's effect on the output, and differs from the output without the LoRA; taken
away again (the original patcher refreshed), the output is the one without it.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # tests/: quant_formats
from test_flux_lora_mapping import ROOT, checkpoint_layout, import_forge  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORGE = os.environ.get("LAYERDIFFUSE_FORGE_ROOT")
H, HEADS, STRENGTH, RANK = 256, 2, 0.8, 4
SMALL = dict(hidden_size=H, num_heads=HEADS, depth=1, depth_single_blocks=1)  # over FLUX.1-dev's unet_config
# diffusers module -> (BFL weight, first row, rows)
TARGETS = {
    "transformer_blocks.0.attn.to_q": ("double_blocks.0.img_attn.qkv", 0, H),
    "transformer_blocks.0.attn.to_k": ("double_blocks.0.img_attn.qkv", H, H),
    "transformer_blocks.0.attn.to_v": ("double_blocks.0.img_attn.qkv", 2 * H, H),
    "transformer_blocks.0.attn.add_q_proj": ("double_blocks.0.txt_attn.qkv", 0, H),
    "transformer_blocks.0.attn.add_k_proj": ("double_blocks.0.txt_attn.qkv", H, H),
    "transformer_blocks.0.attn.add_v_proj": ("double_blocks.0.txt_attn.qkv", 2 * H, H),
    "transformer_blocks.0.attn.to_out.0": ("double_blocks.0.img_attn.proj", 0, H),
    "transformer_blocks.0.attn.to_add_out": ("double_blocks.0.txt_attn.proj", 0, H),
    "transformer_blocks.0.ff.net.0.proj": ("double_blocks.0.img_mlp.0", 0, 4 * H),
    "transformer_blocks.0.ff.net.2": ("double_blocks.0.img_mlp.2", 0, H),
    "transformer_blocks.0.ff_context.net.0.proj": ("double_blocks.0.txt_mlp.0", 0, 4 * H),
    "transformer_blocks.0.ff_context.net.2": ("double_blocks.0.txt_mlp.2", 0, H),
    "single_transformer_blocks.0.attn.to_q": ("single_blocks.0.linear1", 0, H),
    "single_transformer_blocks.0.attn.to_k": ("single_blocks.0.linear1", H, H),
    "single_transformer_blocks.0.attn.to_v": ("single_blocks.0.linear1", 2 * H, H),
    "single_transformer_blocks.0.proj_mlp": ("single_blocks.0.linear1", 3 * H, 4 * H),
    "single_transformer_blocks.0.proj_out": ("single_blocks.0.linear2", 0, H),
}


def dense_weights(layout: dict) -> dict:
    """checkpoint name -> float32 values: matrices N(0, min(0.02, 1/sqrt(fan_in))^2), norm scales 1, biases 0.01 N."""
    import torch
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in layout.items():
        shape = tuple(v.shape)
        if len(shape) == 1:
            out[k] = torch.ones(shape) if k.endswith(".scale") or "norm" in k else torch.randn(shape, generator=g) * 0.01
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            out[k] = torch.randn(shape, generator=g) * min(0.02, fan_in ** -0.5)
    return out


def write_file(path, dense: dict, qtype) -> dict:
    """The .gguf file (the venv's gguf: Forge's vendored gguf-py); -> name -> GGML type written."""
    import gguf
    import numpy as np
    from quant_formats import k_quant_bytes

    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), "flux")
    types = {}
    for name, t in dense.items():
        a = t.numpy().astype(np.float32)
        if a.ndim == 2 and a.shape[1] % block == 0:
            if qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q5_K):
                data = k_quant_bytes(a.shape[0], a.shape[1], qtype, float(np.abs(a).max()), seed=len(types))
            else:
                data = gguf.quants.quantize(a, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
            types[name] = qtype.name
        elif a.ndim == 2:
            writer.add_tensor(name, a.astype(np.float16))
            types[name] = "F16"
        else:
            writer.add_tensor(name, a)
            types[name] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def decoded(path) -> dict:
    """name -> the file's values as Forge computes with them: quantised blocks decoded by gguf-py's reference code
    and rounded to float16 (the GGUF computation dtype), F16 as stored, F32 as stored."""
    import gguf
    import numpy as np
    import torch
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = tuple(reversed([int(s) for s in t.shape]))
        if t.tensor_type in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            a = np.asarray(t.data).reshape(shape).astype(np.float32)
        else:
            a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float16)
            a = a.astype(np.float32)
        out[t.name] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def peft_lora() -> dict:
    import torch
    g = torch.Generator().manual_seed(1)
    sd = {}
    for module, (bfl, _start, rows) in TARGETS.items():
        n_in = {"double_blocks.0.img_mlp.2": 4 * H, "double_blocks.0.txt_mlp.2": 4 * H,
                "single_blocks.0.linear2": 5 * H}.get(bfl, H)
        sd[f"transformer.{module}.lora_A.weight"] = torch.randn(RANK, n_in, generator=g) * 0.05
        sd[f"transformer.{module}.lora_B.weight"] = torch.randn(rows, RANK, generator=g) * 0.05
    return sd


def inputs():
    import torch
    g = torch.Generator().manual_seed(2)
    return dict(x=torch.randn(1, 16, 16, 16, generator=g), timestep=torch.tensor([0.6]),
                context=torch.randn(1, 8, 4096, generator=g), y=torch.randn(1, 768, generator=g),
                guidance=torch.tensor([3.5]))


def small_config(f) -> dict:
    """The host's FLUX.1-dev unet_config (huggingface_guess on the keys it reads, as test_flux_lora_mapping builds
    it; Neo's has out_channels / patch_size too), made small."""
    import json
    from flux_guess_keys import guess_keys
    with open(os.path.join(f.root, "backend", "huggingface", "black-forest-labs", "FLUX.1-dev", "transformer",
                           "config.json")) as fh:
        cfg = json.load(fh)
    config = f.guess.guess(guess_keys(cfg)).unet_config.copy()
    config.update(SMALL)
    return config


def run(f, qtype_name: str, tmp: str) -> dict:
    import gguf
    import torch
    from backend import memory_management, operations, utils
    from lib_layerdiffusion.hosts import flux_lora

    CONFIG = small_config(f)
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    with torch.device("meta"):
        layout = checkpoint_layout(f.Flux(**CONFIG))  # the file's names (Neo: RMSNorm .weight -> .scale)
    dense = dense_weights(layout)
    path = os.path.join(tmp, f"flux_tiny_{qtype_name}.gguf")
    types = write_file(path, dense, qtype)

    # backend/loader.py: a GGUF unet is built under using_forge_operations(bnb_dtype='gguf') and its state dict loaded
    with operations.using_forge_operations(device=torch.device("cpu"), dtype=torch.float32, manual_cast_enabled=False,
                                           bnb_dtype="gguf"):
        model = f.Flux(**CONFIG)
    sd = utils.load_torch_file(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if not m.endswith("position_ids")], (missing, unexpected)
    memory_management.bake_gguf_model(model)
    model.config = dict(CONFIG)
    model.storage_dtype, model.computation_dtype = "gguf", torch.float16
    model.load_device = model.initial_device = model.offload_device = torch.device("cpu")
    guess = f.guess.guess({"model.diffusion_model." + k: v for k, v in layout.items()})
    unet = f.UnetPatcher.from_model(model=model, diffusers_scheduler=None,
                                    k_predictor=f.PredictionFlux(seq_len=4096, base_seq_len=256, max_seq_len=4096,
                                                                 base_shift=0.5, max_shift=1.15), config=guess)
    quantised = {k: getattr(p, "gguf_cls", None).__name__ for k, p in unet.model.named_parameters()
                 if getattr(p, "gguf_cls", None) is not None}

    x = inputs()
    with torch.no_grad():
        unet.refresh_loras()
        plain = model(**x)
        patched = unet.clone()
        lora = peft_lora()
        add = flux_lora.neo_add_flux_lora if f.neo else flux_lora.forge_add_flux_lora
        unmatched = add(patched, "layerlora.safetensors", lora, STRENGTH, f.lora_module)
        assert unmatched == {}, unmatched
        assert patched.has_online_lora()
        patched.refresh_loras()
        with_lora = model(**x)
        unet.refresh_loras()
        plain_again = model(**x)

        # the dense reference: a plain float32 transformer with the decoded weights plus the LoRA's deltas
        reference = f.Flux(**CONFIG).float()
        weights = decoded(path)
        for module, (bfl, start, rows) in TARGETS.items():
            b, a = lora[f"transformer.{module}.lora_B.weight"], lora[f"transformer.{module}.lora_A.weight"]
            weights[bfl + ".weight"][start:start + rows] += STRENGTH * (b @ a)
        to_model = dict(zip(layout, reference.state_dict()))  # checkpoint name -> the plain model's key
        missing, unexpected = reference.load_state_dict({to_model[k]: v for k, v in weights.items()}, strict=False)
        assert not unexpected and not [m for m in missing if not m.endswith("position_ids")], (missing, unexpected)
        expected = reference(**x)

    effect = (with_lora - plain).abs().max().item()
    error = (with_lora - expected).abs().max().item()
    assert effect > 1e-3, effect
    assert error < 0.05 * effect, (error, effect)
    assert torch.equal(plain, plain_again)
    targets = {v[0] + ".weight" for v in TARGETS.values()}
    result = dict(file_mib=os.path.getsize(path) / 2**20, tensors=len(types),
                  quantised=sum(1 for t in types.values() if t == qtype_name),
                  targets_quantised=sorted({quantised.get("diffusion_model." + t) for t in targets}, key=str),
                  keys=len(lora), online=patched.has_online_lora(), lora_effect=effect, error_vs_dense=error,
                  identifiers=len(patched.lora_patches))
    print(f"[flux-gguf] {f.name} {qtype_name}: {result}", flush=True)
    return result


def main():
    if not FORGE:
        raise SystemExit("set LAYERDIFFUSE_FORGE_ROOT to a Forge checkout and run with its venv")
    f = import_forge(FORGE)
    import gguf
    print(f"[flux-gguf] {f.name} at {f.root}; gguf from {gguf.__file__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for q in ("Q8_0", "Q4_K", "Q5_K"):
            run(f, q, tmp)
    print("[flux-gguf] all passed")


if __name__ == "__main__":
    main()
