"""The Flux port's LoRA (PEFT names of diffusers' FluxTransformer2DModel) through a REAL Forge's own LoRA key mapping,
on Forge's own FLUX.1 transformer built on the meta device (opt-in: needs a Forge checkout and its venv).

    LAYERDIFFUSE_FORGE_ROOT=~/.cache/layerdiffuse-rig/forge ~/.cache/layerdiffuse-rig/venv/bin/python \\
        tests/rig/test_flux_lora_mapping.py                  # the Forge venvs have no pytest: runs every check
    LAYERDIFFUSE_FORGE_ROOT=... <venv with pytest>/python -m pytest tests/rig/test_flux_lora_mapping.py -s

Works with Forge main (backend/ + packages_3rdparty/) and Forge Neo (modules_forge/packages/comfy/); skipped when
LAYERDIFFUSE_FORGE_ROOT is unset; LAYERDIFFUSE_FLUX_VARIANT=FLUX.1-schnell takes that config instead of FLUX.1-dev.
Nothing is downloaded and no weights are read:
  * the transformer: Forge's diffusers config (backend/huggingface/black-forest-labs/FLUX.1-dev/transformer/
    config.json) gives the few checkpoint keys huggingface_guess looks at; guess() gives Forge's unet_config, from
    which backend/nn/flux.py IntegratedFluxTransformer2DModel is built on the meta device (as backend/loader.py
    does, `IntegratedFluxTransformer2DModel(**guess.unet_config)`); its full key list must be guessed the same
    again. It is wrapped as the Flux engine does (UnetPatcher.from_model with PredictionFlux and the guess).
  * the LoRA: diffusers' FluxTransformer2DModel (the venv's diffusers) built on the meta device from the same
    config gives every linear's (out, in); the file has `transformer.<module>.lora_A.weight` [64, in] and
    `.lora_B.weight` [out, 64] for every block and projection of flux_lora's target set.
Checked: every key lands through backend.patcher.lora's model_lora_keys_unet / load_lora on a parameter with the
right shape (fused rows included), ModelPatcher.add_patches takes every patch, the host's own merge_lora_to_weight
runs on each (meta) and, with real numbers for the first and last block of each kind, puts each diffusers module's
up @ down on its rows of the fused parameter; unknown, out-of-range and wrongly shaped keys are reported.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux_guess_keys import guess_keys  # noqa: E402
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FORGE = os.environ.get("LAYERDIFFUSE_FORGE_ROOT")
VARIANT = os.environ.get("LAYERDIFFUSE_FLUX_VARIANT", "FLUX.1-dev")  # or FLUX.1-schnell (no guidance_in)
RANK = 64

try:
    import pytest
except ImportError:  # the Forge venvs: run as a script
    pytest = None

if pytest is not None:
    if not FORGE:
        pytest.skip("set LAYERDIFFUSE_FORGE_ROOT to a Forge checkout (and run with its venv)", allow_module_level=True)

    @pytest.fixture(scope="module")
    def host():
        return build_host(FORGE, VARIANT)


def import_forge(root: str) -> SimpleNamespace:
    """Forge's modules, imported as in a helper script: Forge reads sys.argv at import (Forge main needs
    --always-cpu without a GPU, Neo --cpu) and some of it reads files relative to the working directory."""
    root = str(Path(root).expanduser().resolve())
    neo = os.path.isfile(os.path.join(root, "modules_forge", "packages", "comfy", "lora.py"))
    extra = [os.path.join(root, "modules_forge", "packages")] if neo else \
        [os.path.join(root, "repositories", "huggingface_guess"), os.path.join(root, "packages_3rdparty")]  # gguf
    for p in [root] + extra:
        if p not in sys.path:
            sys.path.insert(0, p)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    saved, cwd = sys.argv, os.getcwd()
    sys.argv = [saved[0], "--cpu" if neo else "--always-cpu"]
    os.chdir(root)
    try:
        import huggingface_guess
        from backend import args as backend_args
        from backend.modules.k_prediction import PredictionFlux
        from backend.nn.flux import IntegratedFluxTransformer2DModel
        from backend.patcher import lora as lora_module
        from backend.patcher.unet import UnetPatcher
    finally:
        os.chdir(cwd)
        sys.argv = saved
    if neo and backend_args.dynamic_args.get("ops") is None:
        backend_args.dynamic_args["ops"] = ""  # set by backend/operations.py when a model is loaded; KModel reads it
    return SimpleNamespace(root=root, neo=neo, name="Forge Neo" if neo else "Forge main", guess=huggingface_guess,
                           PredictionFlux=PredictionFlux, Flux=IntegratedFluxTransformer2DModel,
                           lora_module=lora_module, UnetPatcher=UnetPatcher)


def checkpoint_layout(model) -> dict:
    """The model's state dict under a FLUX.1 checkpoint's names: Neo builds the q/k norms as torch RMSNorm
    (`.weight`; backend/operations.py RMSNorm._load_from_state_dict takes the checkpoint's `.scale`)."""
    import torch

    rms = {n for n, m in model.named_modules() if type(m).__name__ == "RMSNorm" and isinstance(m, torch.nn.Module)
           and hasattr(m, "weight") and not hasattr(m, "scale")}
    out = {}
    for k, v in model.state_dict().items():
        module, _, leaf = k.rpartition(".")
        out[f"{module}.scale" if module in rms and leaf == "weight" else k] = v
    return out


def build_host(root: str, variant: str = "FLUX.1-dev") -> SimpleNamespace:
    import torch
    from diffusers import FluxTransformer2DModel

    f = import_forge(root)
    with open(os.path.join(f.root, "backend", "huggingface", "black-forest-labs", variant, "transformer",
                           "config.json")) as fh:
        cfg = json.load(fh)

    guess = f.guess.guess(guess_keys(cfg))
    assert "flux.1" in guess.huggingface_repo.lower(), guess.huggingface_repo
    unet_config = guess.unet_config.copy()
    with torch.device("meta"):
        model = f.Flux(**unet_config)
    full = {"model.diffusion_model." + k: v for k, v in checkpoint_layout(model).items()}
    again = f.guess.guess(full)
    assert (again.huggingface_repo, again.unet_config) == (guess.huggingface_repo, guess.unet_config)
    # what backend/loader.py sets on the model before UnetPatcher.from_model
    model.config = unet_config
    model.storage_dtype = model.computation_dtype = torch.float32
    model.load_device = model.initial_device = model.offload_device = torch.device("cpu")
    if "schnell" in guess.huggingface_repo.lower():
        k_predictor = f.PredictionFlux(mu=1.0)
    else:
        k_predictor = f.PredictionFlux(seq_len=4096, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15)
    unet = f.UnetPatcher.from_model(model=model, diffusers_scheduler=None, k_predictor=k_predictor, config=guess)

    # diffusers' transformer from the same config: the modules a PEFT LoRA of FluxPipeline can target
    dcfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with torch.device("meta"):
        dmodel = FluxTransformer2DModel.from_config(dcfg)
    linears = {n: (m.out_features, m.in_features) for n, m in dmodel.named_modules() if isinstance(m, torch.nn.Linear)}
    depth, single = cfg["num_layers"], cfg["num_single_layers"]
    print(f"[flux-lora] {f.name} at {f.root}: {guess.huggingface_repo}, Forge unet_config {unet_config}; "
          f"diffusers FluxTransformer2DModel: {len(linears)} linears")
    return SimpleNamespace(forge=f, unet=unet, model=model, linears=linears, depth=depth, single=single,
                           hidden=unet_config["hidden_size"])


def patches_fn(host):
    from lib_layerdiffusion.hosts import flux_lora

    return flux_lora.neo_flux_lora_patches if host.forge.neo else flux_lora.forge_flux_lora_patches


def peft_lora(host, modules, prefix="transformer.", device="meta", rank=RANK, seed=None) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed) if seed is not None else None
    sd = {}
    for m in modules:
        n_out, n_in = host.linears[m]
        if g is None:
            a, b = torch.empty(rank, n_in, device=device), torch.empty(n_out, rank, device=device)
        else:
            a, b = torch.randn(rank, n_in, generator=g) * 0.1, torch.randn(n_out, rank, generator=g) * 0.1
        sd[f"{prefix}{m}.lora_A.weight"], sd[f"{prefix}{m}.lora_B.weight"] = a, b
    return sd


def target_modules(host) -> list:
    from lib_layerdiffusion.hosts import flux_lora

    names = flux_lora.peft_module_names(host.depth, host.single, prefix="")
    missing = [n for n in names if n not in host.linears]
    assert not missing, f"not linears of diffusers' FluxTransformer2DModel: {missing[:5]}"
    return names


def add_lora(host, state_dict, strength=1.0):
    """What a bridge does: flux_lora's add function for this host on a clone of the Flux UnetPatcher.
    -> (the clone, the file's keys that land nowhere)."""
    from lib_layerdiffusion.hosts import flux_lora

    unet = host.unet.clone()
    if host.forge.neo:
        return unet, flux_lora.neo_add_flux_lora(unet, "layerlora.safetensors", state_dict, strength,
                                                 host.forge.lora_module)
    return unet, flux_lora.forge_add_flux_lora(unet, "layerlora.safetensors", state_dict, strength,
                                               host.forge.lora_module)


def added_patches(host, unet) -> dict:
    """parameter -> its patches, joined over the LoRA's entries of lora_patches (where both hosts' add_patches keep
    file-named patches; Neo's bridge adds one entry per patch of a fused weight)."""
    joined = {}
    for patches in unet.lora_patches.values():
        for k, v in patches.items():
            joined.setdefault(k, []).extend(v)
    return joined


def parameter(host, name):
    module = host.unet.model
    for part in name.split("."):
        module = getattr(module, part)
    return module


def test_every_key_of_the_target_set_lands(host):
    modules = target_modules(host)
    sd = peft_lora(host, modules)
    result = patches_fn(host)(host.unet, sd, host.forge.lora_module)
    print(f"[flux-lora] {host.forge.name}: target set {len(modules)} modules, {len(sd)} keys; "
          f"{len(sd) - len(result.unmatched)} mapped into {len(result.patches)} patches; "
          f"{len(result.unmatched)} unmapped")
    assert result.unmatched == {}
    assert len(result.patches) == len(modules)
    fused = [k for k in result.patches if not isinstance(k, str)]
    hidden = host.hidden
    assert len(fused) == 6 * host.depth + 4 * host.single
    for i in (0, host.single - 1):
        linear1 = f"diffusion_model.single_blocks.{i}.linear1.weight"
        assert {k[1] for k in fused if k[0] == linear1} == {
            (0, 0, hidden), (0, hidden, hidden), (0, 2 * hidden, hidden), (0, 3 * hidden, 4 * hidden)}
    unet, unmatched = add_lora(host, sd, 0.8)
    assert unmatched == {}
    taken = added_patches(host, unet)
    print(f"[flux-lora] {host.forge.name}: add_patches took {sum(len(v) for v in taken.values())} patches on "
          f"{len(taken)} parameters")
    assert sum(len(v) for v in taken.values()) == len(modules)
    assert len(taken) == 8 * host.depth + 2 * host.single
    assert {p[0] for v in taken.values() for p in v} == {0.8}  # strength_patch
    assert {p[3] for p in taken[f"diffusion_model.single_blocks.{host.single - 1}.linear1.weight"]} == {
        (0, 0, hidden), (0, hidden, hidden), (0, 2 * hidden, hidden), (0, 3 * hidden, 4 * hidden)}
    assert not host.unet.lora_patches and not getattr(host.unet, "patches", None)  # the clone's, not the original's


def test_the_hosts_merge_runs_on_every_patch(host):
    """merge_lora_to_weight on the meta parameters: narrows each fused parameter to its rows without error and
    keeps the parameter's shape."""
    sd = peft_lora(host, target_modules(host))
    result = patches_fn(host)(host.unet, sd, host.forge.lora_module)
    merge = host.forge.lora_module.merge_lora_to_weight
    for key, value in result.patches.items():
        name, offset = (key, None) if isinstance(key, str) else key[:2]
        weight = parameter(host, name)
        out = merge([(1.0, value, 1.0, offset, None)], weight, name)
        assert tuple(out.shape) == tuple(weight.shape), name


def test_the_hosts_merge_puts_each_module_on_its_rows(host):
    """Real numbers for the first and last double and single block: the host's merge of all patches of a parameter
    onto zeros equals diffusers' deltas (lora_B @ lora_A) in the fused order q | k | v (| mlp)."""
    import torch

    blocks = [f"transformer_blocks.{i}." for i in (0, host.depth - 1)]
    blocks += [f"single_transformer_blocks.{i}." for i in (0, host.single - 1)]
    modules = [m for m in target_modules(host) if any(m.startswith(b) for b in blocks)]
    sd = peft_lora(host, modules, device="cpu", rank=4, seed=20251129)
    result = patches_fn(host)(host.unet, sd, host.forge.lora_module)
    assert result.unmatched == {}

    def delta(m):
        return sd[f"transformer.{m}.lora_B.weight"] @ sd[f"transformer.{m}.lora_A.weight"]

    expected = {}
    for b in blocks:
        i = b.split(".")[1]
        if b.startswith("single"):
            p = f"diffusion_model.single_blocks.{i}."
            expected[p + "linear1.weight"] = torch.cat([delta(b + t) for t in
                                                        ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
            expected[p + "linear2.weight"] = delta(b + "proj_out")
        else:
            p = f"diffusion_model.double_blocks.{i}."
            expected[p + "img_attn.qkv.weight"] = torch.cat([delta(b + "attn." + t) for t in ("to_q", "to_k", "to_v")])
            expected[p + "txt_attn.qkv.weight"] = torch.cat(
                [delta(b + "attn." + t) for t in ("add_q_proj", "add_k_proj", "add_v_proj")])
            expected[p + "img_attn.proj.weight"] = delta(b + "attn.to_out.0")
            expected[p + "txt_attn.proj.weight"] = delta(b + "attn.to_add_out")
            for s, f in (("img", "ff"), ("txt", "ff_context")):
                expected[p + f"{s}_mlp.0.weight"] = delta(b + f + ".net.0.proj")
                expected[p + f"{s}_mlp.2.weight"] = delta(b + f + ".net.2")
    by_param = {}
    for key, value in result.patches.items():
        name, offset = (key, None) if isinstance(key, str) else key[:2]
        by_param.setdefault(name, []).append((1.0, value, 1.0, offset, None))
    assert sorted(by_param) == sorted(expected)
    merge = host.forge.lora_module.merge_lora_to_weight
    for name, patches in by_param.items():
        out = merge(patches, torch.zeros(tuple(parameter(host, name).shape)), name)
        torch.testing.assert_close(out, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_file_without_the_transformer_prefix_lands_too(host):
    from lib_layerdiffusion.hosts import flux_lora

    sd = peft_lora(host, target_modules(host), prefix="")
    result = patches_fn(host)(host.unet, sd, host.forge.lora_module)
    assert result.unmatched == {}
    # the host alone: Forge main maps diffusers names only as transformer.<name>, Neo also bare (DiffSynth)
    key_map = host.forge.lora_module.model_lora_keys_unet(host.unet.model, {})
    raw = flux_lora.lora_patches(sd, key_map, host.forge.lora_module.load_lora, prefix="")
    print(f"[flux-lora] {host.forge.name}: bare keys as they are: {len(sd) - len(raw.unmatched)} of {len(sd)} "
          f"mapped; with the prefix added: {len(sd)} of {len(sd)}")
    assert len(raw.unmatched) == (0 if host.forge.neo else len(sd))


def test_unknown_out_of_range_and_misshaped_keys_are_reported(host):
    import torch

    modules = target_modules(host)
    sd = peft_lora(host, modules)
    hidden = host.hidden
    def meta(*shape):
        return torch.empty(shape, device="meta")

    past = f"transformer.single_transformer_blocks.{host.single}.attn.to_q"  # a block the model does not have
    bad = {
        past + ".lora_A.weight": meta(RANK, hidden), past + ".lora_B.weight": meta(hidden, RANK),
        # a module diffusers' Flux does not have
        "transformer.transformer_blocks.0.attn.to_qkv.lora_A.weight": meta(RANK, hidden),
        # the text encoder's (not the transformer's)
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": meta(RANK, 768),
    }
    sd.update(bad)
    # proj_mlp with hidden rows instead of 4 * hidden
    mlp = "transformer.single_transformer_blocks.5.proj_mlp"
    sd[mlp + ".lora_B.weight"] = meta(hidden, RANK)
    result = patches_fn(host)(host.unet, sd, host.forge.lora_module)
    print(f"[flux-lora] {host.forge.name}: {len(sd)} keys with {len(bad)} unknown and 2 misshaped: "
          f"{len(result.unmatched)} reported")
    for k, why in result.unmatched.items():
        print(f"    {k}: {why}")
    assert set(result.unmatched) == set(bad) | {mlp + ".lora_A.weight", mlp + ".lora_B.weight"}
    assert "[3072, 3072]" in result.unmatched[mlp + ".lora_B.weight"] or hidden != 3072
    assert len(result.patches) == len(modules) - 1
    unet, unmatched = add_lora(host, sd)
    assert unmatched == result.unmatched
    assert sum(len(v) for v in added_patches(host, unet).values()) == len(modules) - 1


def test_every_linear_of_diffusers_flux_lands(host):
    """Beyond the target set: the modulation linears, embedders and final layer a LoRA could also hold."""
    sd = peft_lora(host, sorted(host.linears))
    result = patches_fn(host)(host.unet, sd, host.forge.lora_module)
    print(f"[flux-lora] {host.forge.name}: every linear of diffusers' FluxTransformer2DModel: {len(host.linears)} "
          f"modules, {len(sd)} keys, {len(sd) - len(result.unmatched)} mapped, {len(result.unmatched)} unmapped "
          f"{sorted({k.rsplit('.lora_', 1)[0] for k in result.unmatched})}")
    assert result.unmatched == {}


def main() -> int:
    import time
    import traceback

    if not FORGE:
        print("set LAYERDIFFUSE_FORGE_ROOT to a Forge checkout (and run with its venv)")
        return 2
    t0 = time.time()
    host = build_host(FORGE, VARIANT)
    print(f"[flux-lora] built in {time.time() - t0:.1f} s")
    failed = 0
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            t = time.time()
            try:
                fn(host)
                print(f"PASS {name} ({time.time() - t:.1f} s)")
            except Exception:  # noqa: BLE001  (report every check)
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
