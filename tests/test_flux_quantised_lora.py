"""The FLUX.1 LayerDiffuse LoRA on quantised checkpoints (GGUF Q8_0 / Q4_K / Q5_K, bitsandbytes NF4), through each
bridge's add_peft_lora into the fakes of Forge main (tests/fake_forge) and Forge Neo (tests/fake_forge_neo), which
mirror the hosts' LoRA loading (key map, load_lora, ModelPatcher.add_patches, LoraLoader.refresh with its online
and its dequantise-merge-quantise paths) and their quantised Linear layers (GGUF: ForgeOperationsGGUF.Linear over
ParameterGGUF read from a real .gguf file with the `gguf` package; NF4: bnb's Linear over a 4-bit NormalFloat
weight; plain fp32 Linear layers standing for fp8 / bf16 checkpoints, where the LoRA is merged), each call naming
the host file and line.

The model is FLUX.1's block linears in BFL's layout (one double and one single block, hidden size 256 so that the
K-quants' 256-wide blocks fit): the fused qkv / linear1 rows receive several diffusers modules each. What is
checked: every linear's output with the LoRA equals the dense computation x @ (W + strength * B @ A on its rows)^T + b
(W decoded from the file by gguf-py, or from the NF4 code), differs from the output without it, and goes back to it
when the LoRA is taken away (a clone without it loads). Were the LoRA not to land on a layer, or only one of the
fused modules to land on a fused weight, that layer's output would equal the one without the LoRA, or differ from
the dense computation, and the test fails.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from host_isolation import fake_host_process
from quant_formats import NOT_IMPLEMENTED, nf4_dequantize, write_gguf

FAKES = Path(__file__).parent
H = 256
RANK = 4
STRENGTH = 0.8
LINEARS = {  # BFL module -> (out, in)
    "double_blocks.0.img_attn.qkv": (3 * H, H), "double_blocks.0.img_attn.proj": (H, H),
    "double_blocks.0.img_mlp.0": (4 * H, H), "double_blocks.0.img_mlp.2": (H, 4 * H),
    "double_blocks.0.txt_attn.qkv": (3 * H, H), "double_blocks.0.txt_attn.proj": (H, H),
    "double_blocks.0.txt_mlp.0": (4 * H, H), "double_blocks.0.txt_mlp.2": (H, 4 * H),
    "single_blocks.0.linear1": (7 * H, H), "single_blocks.0.linear2": (H, 5 * H),
}
# diffusers module (the LoRA's names) -> (BFL module, first row, rows): written out here, not taken from the hosts
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
HOSTS = {
    "forge": (FAKES / "fake_forge", "lib_layerdiffusion.hosts.forge_backend"),
    "neo": (FAKES / "fake_forge_neo", "lib_layerdiffusion.hosts.forge_neo"),
}
HOST_BOUND = ("lib_layerdiffusion.hosts.forge_backend", "lib_layerdiffusion.hosts.forge_neo",
              "lib_layerdiffusion.hosts.forge_legacy", "lib_layerdiffusion.hosts.webui")


def dense_weights(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (n_out, n_in) in LINEARS.items():
        sd[name + ".weight"] = torch.randn(n_out, n_in, generator=g) * 0.02
        sd[name + ".bias"] = torch.randn(n_out, generator=g) * 0.01
    return sd


def peft_lora(seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for module, (bfl, _start, rows) in TARGETS.items():
        n_in = LINEARS[bfl][1]
        sd[f"transformer.{module}.lora_A.weight"] = torch.randn(RANK, n_in, generator=g) * 0.05
        sd[f"transformer.{module}.lora_B.weight"] = torch.randn(rows, RANK, generator=g) * 0.05
    return sd


def lora_deltas(lora: dict) -> dict:
    """BFL module -> the dense change of its weight: strength * B @ A on each module's rows."""
    deltas = {name: torch.zeros(shape) for name, shape in LINEARS.items()}
    for module, (bfl, start, rows) in TARGETS.items():
        b, a = lora[f"transformer.{module}.lora_B.weight"], lora[f"transformer.{module}.lora_A.weight"]
        deltas[bfl][start:start + rows] += STRENGTH * (b @ a)
    return deltas


def decoded_gguf(path) -> dict:
    """BFL module -> its weight as gguf-py decodes the file, in float16 (the hosts' GGUF computation dtype)."""
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name.endswith(".weight"):
            w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(s) for s in t.shape])))
            out[t.name[:-len(".weight")]] = torch.from_numpy(np.ascontiguousarray(w)).to(torch.float16).float()
    return out


@contextlib.contextmanager
def host(name):
    fake, bridge = HOSTS[name]
    with fake_host_process(fake, HOST_BOUND):
        import importlib
        yield importlib.import_module(bridge)


def flux_stand_in():
    """FLUX.1's block linears at their BFL names (backend/nn/flux.py IntegratedFluxTransformer2DModel), built with
    torch.nn.Linear, which the host's using_forge_operations has replaced by its quantised Linear."""
    transformer = torch.nn.Module()
    for name, (n_out, n_in) in LINEARS.items():
        module = transformer
        parts = name.split(".")
        for part in parts[:-1]:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.add_module(parts[-1], torch.nn.Linear(n_in, n_out))
    transformer.config = {"depth": 1, "depth_single_blocks": 1, "hidden_size": H}  # the unet_config flux_to_diffusers reads
    kmodel = torch.nn.Module()  # backend/modules/k_model.py KModel: .diffusion_model, .config (huggingface_guess)
    kmodel.diffusion_model = transformer
    kmodel.config = SimpleNamespace(huggingface_repo="black-forest-labs/FLUX.1-dev")
    return kmodel


def load_quantised(fmt: str, tmp_path):
    """(KModel, the reference weights W as the host holds them) for a checkpoint in `fmt`, loaded as the host loads
    it (backend/loader.py: the model built under using_forge_operations(bnb_dtype='gguf' / 'nf4'), its state dict
    loaded; GGUF from a .gguf file through backend/utils.py load_torch_file)."""
    from backend import memory_management, operations

    dense = dense_weights()
    if fmt == "float":  # fp32 here, as fp8 / bf16 / fp16 checkpoints: plain Linear layers, the LoRA merged
        with operations.using_forge_operations(device=torch.device("cpu"), dtype=torch.float32):
            kmodel = flux_stand_in()
        kmodel.diffusion_model.load_state_dict(dense, strict=False)
        return kmodel, {k[:-len(".weight")]: v for k, v in dense.items() if k.endswith(".weight")}, {
            k: v for k, v in dense.items() if k.endswith(".bias")}
    if fmt == "nf4":
        with operations.using_forge_operations(device=torch.device("cpu"), dtype=torch.float32, bnb_dtype="nf4"):
            kmodel = flux_stand_in()
        kmodel.diffusion_model.load_state_dict(dense, strict=False)
        from backend.operations_bnb import functional_dequantize_4bit
        reference = {name: functional_dequantize_4bit(getattr_path(kmodel.diffusion_model, name).weight).float()
                     for name in LINEARS}
        packed = getattr_path(kmodel.diffusion_model, "single_blocks.0.linear1").weight
        torch.testing.assert_close(reference["single_blocks.0.linear1"], nf4_dequantize(
            packed.data, packed.quant_state.absmax, (7 * H, H)))  # the stand-in decodes the NF4 code
        return kmodel, reference, {k: v for k, v in dense.items() if k.endswith(".bias")}
    qtype = {"Q8_0": T.Q8_0, "Q4_K": T.Q4_K, "Q5_K": T.Q5_K}[fmt]
    path = tmp_path / f"flux_{fmt}.gguf"
    write_gguf(path, {k: (v.numpy(), qtype if k.endswith(".weight") else T.F32) for k, v in dense.items()})
    from backend import utils
    with operations.using_forge_operations(device=torch.device("cpu"), dtype=torch.float32, bnb_dtype="gguf"):
        kmodel = flux_stand_in()
    sd = utils.load_torch_file(str(path))
    assert {getattr(v, "gguf_cls").__name__ for k, v in sd.items() if k.endswith(".weight")} == {fmt}
    kmodel.diffusion_model.load_state_dict(sd, strict=False)
    memory_management.bake_gguf_model(kmodel)  # memory_management.py:340 (Forge main :516 / Neo :483 on load)
    return kmodel, decoded_gguf(path), {k: torch.from_numpy(np.asarray(v.data)).float() for k, v in sd.items()
                                        if k.endswith(".bias")}


def getattr_path(module, name):
    for part in name.split("."):
        module = getattr(module, part)
    return module


def make_unet(kmodel, which):
    if which == "forge":
        from backend.patcher.unet import UnetPatcher
        return UnetPatcher(kmodel)
    from backend.patcher.base import ModelPatcher
    return ModelPatcher(kmodel, torch.device("cpu"), torch.device("cpu"))


def outputs(kmodel, x) -> dict:
    with torch.no_grad():
        return {name: getattr_path(kmodel.diffusion_model, name)(x[LINEARS[name][1]]) for name in LINEARS}


def inputs() -> dict:
    g = torch.Generator().manual_seed(2)
    return {n_in: torch.randn(3, n_in, generator=g) for n_in in {s[1] for s in LINEARS.values()}}


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_K", "Q5_K", "nf4", "float"])
@pytest.mark.parametrize("which", ["forge", "neo"])
def test_the_lora_lands_on_every_quantised_linear_and_equals_the_dense_computation(which, fmt, tmp_path, caplog):
    lora = peft_lora()
    deltas = lora_deltas(lora)
    x = inputs()
    with host(which) as bridge:
        kmodel, weights, biases = load_quantised(fmt, tmp_path)
        unet = make_unet(kmodel, which)
        unet.refresh_loras()  # what every model load does (Forge main memory_management.py:518, Neo :485)
        plain = outputs(kmodel, x)

        patched = unet.clone()
        caplog.set_level("INFO")
        unmatched = bridge.add_peft_lora(patched, "layerlora.safetensors", lora, STRENGTH)
        assert unmatched == {}
        if fmt == "float":  # plain weights: merged by the LoraLoader
            assert not patched.has_online_lora() and "applied online" not in caplog.text
        else:  # quantised weights: online, not merged and quantised again
            assert patched.has_online_lora()
            assert "applied online" in caplog.text
            assert ("bitsandbytes nf4" if fmt == "nf4" else f"GGUF {fmt}") in caplog.text
        patched.refresh_loras()
        with_lora = outputs(kmodel, x)

        for name in LINEARS:
            w = weights[name] + deltas[name]
            dense = torch.nn.functional.linear(x[LINEARS[name][1]], w, biases[name + ".bias"])
            torch.testing.assert_close(with_lora[name], dense, rtol=1e-4, atol=1e-4, msg=name)
            assert (with_lora[name] - plain[name]).abs().max() > 1e-3, name
            torch.testing.assert_close(plain[name], torch.nn.functional.linear(
                x[LINEARS[name][1]], weights[name], biases[name + ".bias"]), rtol=1e-4, atol=1e-4, msg=name)

        unet.refresh_loras()  # the model loaded without the LoRA (the next generation, or Stop At's unpatched clone)
        for name, out in outputs(kmodel, x).items():
            torch.testing.assert_close(out, plain[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("which", ["forge", "neo"])
def test_merged_and_quantised_again_the_k_quants_fail_in_the_host(which, tmp_path):
    """Why the LoRA goes online: merged (online_mode=False) the host dequantises, merges and quantises again, which
    its K-quant classes cannot (quants.py:175-178)."""
    with host(which) as bridge:
        kmodel, _weights, _biases = load_quantised("Q4_K", tmp_path)
        unet = make_unet(kmodel, which)
        from backend.patcher import lora as lora_module
        key_map = lora_module.model_lora_keys_unet(kmodel, {})
        patches, remaining = lora_module.load_lora(peft_lora(), key_map)
        assert remaining == {}
        if which == "forge":
            unet.add_patches(filename="layerlora.safetensors", patches=patches, online_mode=False)
        else:
            unet.add_patches(patches, filename="layerlora.safetensors", online_mode=False)
        with pytest.raises(NotImplementedError, match="Low bit LoRA for this data type is not implemented"):
            unet.refresh_loras()
        assert NOT_IMPLEMENTED.startswith("Low bit LoRA")
        del bridge
