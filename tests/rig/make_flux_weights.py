"""Random-weight FLUX.1-dev files for the CPU rig: a single-file checkpoint Forge main loads and detects as FLUX.1,
and the Flux port's two LayerDiffuse files, in their published formats. The images are noise; what this serves is
running every code path of the FLUX.1 method through a real Forge.

    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_flux_weights.py --dry-run   # layout, sizes, checks
    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_flux_weights.py             # write what is missing

Files (defaults: <forge>/models/Stable-diffusion and <forge>/models/layer_model):
  * rig_flux1_dev_random_fp8.safetensors (~17 GB): one file as Forge's loader splits it (backend/loader.py
    split_state_dict with huggingface_guess model_list.Flux): `model.diffusion_model.*` (the transformer, every
    tensor float8_e4m3fn, so Forge keeps it in fp8: loader.py takes the state dict's majority dtype as the storage
    dtype), `text_encoders.clip_l.transformer.*` (CLIP-L, bf16), `text_encoders.t5xxl.
    transformer.*` (T5-XXL encoder, every tensor float8_e4m3fn, also kept in fp8 by loader.py) and `vae.*` (the
    16-channel AutoencoderKL, bf16).
    Key names and shapes are Forge's own: backend/nn/flux.py IntegratedFluxTransformer2DModel built on the meta device
    with the unet_config huggingface_guess gives for Forge's FLUX.1-dev transformer config, backend/nn/clip.py
    IntegratedCLIP, backend/nn/t5.py IntegratedT5 and backend/nn/vae.py IntegratedAutoencoderKL from the configs in
    backend/huggingface/black-forest-labs/FLUX.1-dev/, given their checkpoint prefixes by huggingface_guess's
    process_*_state_dict_for_saving. Checked before anything is written: huggingface_guess.guess() on the whole
    layout is model_list.Flux, and Forge's split (clip_target, the prefixes, process_*_state_dict) gives each
    component exactly its module's state dict, with nothing left over.
  * layerlora.safetensors: a PEFT LoRA as diffusers' FluxPipeline.load_lora_weights reads it:
    `transformer.<module>.lora_A.weight` [rank, in] and `.lora_B.weight` [out, rank], bf16, for every module of
    lib_layerdiffusion.hosts.flux_lora.peft_module_names() (shapes from diffusers' FluxTransformer2DModel built on
    the meta device from the same config), rank 16.
  * TransparentVAE.pth: torch.save of an OrderedDict, every tensor bf16, with the keys and shapes of the manifest's
    sections flux_transparent_decoder + flux_transparent_encoder (the package's
    lib_layerdiffusion/networks/manifests/flux_transparent_vae.json); the extension converts it to
    TransparentVAE.safetensors on first use.

Values (deterministic): each tensor from its own generator seeded with the CRC-32 of its key. Checkpoint: matrices
N(0, min(0.02, 1/sqrt(fan_in))^2) clipped at 4 sigma (fp8 e4m3fn holds up to 448), norm scales 1, biases 0,
logit_scale 4.6055 (position_ids 0..n-1, were a module to list them: transformers 4.46's CLIP keeps them out of
its state dict). LoRA: lora_A and lora_B N(0, 0.03^2) (B @ A ~ 0.0036, 18% of the
0.02 weights: small, but it survives the fp8 rounding of the merged weights). TransparentVAE: the
shared/reference/seeded_weights.py recipe (numpy PCG64 per key, matrices 1/sqrt(fan_in), 1-D 0.05 N(0,1) (+1 for
weights)), stored as bf16.

Safetensors are streamed to disk one tensor at a time (the largest, T5's 32128 x 4096 embedding, needs ~0.7 GB
while it is made), with the written pages dropped from the page cache as it goes, so the 17 GB file needs little
RAM. Forge is imported as a helper script imports it (--always-cpu in sys.argv; see the rig README).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux_guess_keys import guess_keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FORGE = os.environ.get("LAYERDIFFUSE_FORGE_ROOT") or os.environ.get("RIG_FORGE") or os.path.join(
    os.environ.get("RIG_ROOT", os.path.expanduser("~/.cache/layerdiffuse-rig")), "forge")
DEFAULT_MANIFEST = ROOT / "lib_layerdiffusion" / "networks" / "manifests" / "flux_transparent_vae.json"
CHECKPOINT_NAME = "rig_flux1_dev_random_fp8.safetensors"
VARIANT = "FLUX.1-dev"
GROUPS = ("checkpoint", "layerlora", "tvae")

ST_DTYPES = {"float8_e4m3fn": ("F8_E4M3", 1), "bfloat16": ("BF16", 2), "float16": ("F16", 2),
             "float32": ("F32", 4), "int64": ("I64", 8)}


# ----------------------------------------------------------------------------------------------------------------
# Forge
# ----------------------------------------------------------------------------------------------------------------

def import_forge(root: str):
    """Forge main's modules as a helper script gets them: Forge parses sys.argv at import (and needs --always-cpu
    without a GPU), and reads some files relative to its own folder."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(os.path.join(root, "backend", "nn")):
        raise SystemExit(f"not a Forge main checkout (no backend/nn): {root}")
    for p in (root, os.path.join(root, "repositories", "huggingface_guess"), os.path.join(root, "packages_3rdparty")):
        if p not in sys.path:
            sys.path.insert(0, p)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    saved, cwd = sys.argv, os.getcwd()
    sys.argv = [saved[0], "--always-cpu"]
    os.chdir(root)
    try:
        import huggingface_guess  # noqa: F401
        import backend.nn.flux  # noqa: F401
        import backend.nn.vae  # noqa: F401
        import backend.nn.clip  # noqa: F401
        import backend.nn.t5  # noqa: F401
        import backend.state_dict  # noqa: F401
    finally:
        os.chdir(cwd)
        sys.argv = saved
    return root


def repo_dir(forge: str) -> str:
    return os.path.join(forge, "backend", "huggingface", "black-forest-labs", VARIANT)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def component_state_dicts(forge: str):
    """-> (guess, {component: meta state dict}) of Forge's own modules, under their component prefixes (no checkpoint
    prefix yet): transformer, vae, clip (clip_l.* and t5xxl.*)."""
    import torch
    import huggingface_guess
    from transformers import CLIPTextConfig, CLIPTextModel
    from backend.nn.flux import IntegratedFluxTransformer2DModel
    from backend.nn.vae import IntegratedAutoencoderKL
    from backend.nn.clip import IntegratedCLIP
    from backend.nn.t5 import IntegratedT5

    repo = repo_dir(forge)
    tcfg = read_json(os.path.join(repo, "transformer", "config.json"))
    guess = huggingface_guess.guess(guess_keys(tcfg))
    if type(guess) is not huggingface_guess.model_list.Flux:
        raise SystemExit(f"huggingface_guess took the seed keys for {type(guess).__name__}, not Flux")
    with torch.device("meta"):
        transformer = IntegratedFluxTransformer2DModel(**guess.unet_config.copy())
        vae = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(os.path.join(repo, "vae")))
        clip_l = IntegratedCLIP(CLIPTextModel, CLIPTextConfig.from_pretrained(os.path.join(repo, "text_encoder")),
                                add_text_projection=True)
        t5 = IntegratedT5(read_json(os.path.join(repo, "text_encoder_2", "config.json")))
    clip = {"clip_l." + k: v for k, v in clip_l.state_dict().items()}
    clip.update({"t5xxl." + k: v for k, v in t5.state_dict().items()})
    return guess, {"transformer": dict(transformer.state_dict()), "vae": dict(vae.state_dict()), "clip": clip}


def checkpoint_layout(forge: str):
    """-> list of (key, shape, dtype name) of the single-file checkpoint, after checking Forge's detection and split."""
    import torch
    import huggingface_guess
    from backend.state_dict import try_filter_state_dict

    guess, comps = component_state_dicts(forge)
    sd = {}
    sd.update(guess.process_unet_state_dict_for_saving(dict(comps["transformer"])))
    sd.update(guess.process_vae_state_dict_for_saving(dict(comps["vae"])))
    sd.update(guess.process_clip_state_dict_for_saving(dict(comps["clip"])))

    layout = []
    for k, v in sd.items():
        if v.dtype == torch.int64:
            dt = "int64"
        elif k.startswith("model.diffusion_model.") or k.startswith("text_encoders.t5xxl."):
            dt = "float8_e4m3fn"
        else:
            dt = "bfloat16"
        layout.append((k, tuple(int(s) for s in v.shape), dt))

    # Forge's detection and split (backend/loader.py split_state_dict), on meta tensors of the file's dtypes
    meta = {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, s, d in layout}
    found = huggingface_guess.guess(dict(meta))
    if type(found) is not huggingface_guess.model_list.Flux:
        raise SystemExit(f"huggingface_guess detected {type(found).__name__}, expected Flux")
    if found.unet_config != guess.unet_config:
        raise SystemExit(f"unet_config differs: {found.unet_config} != {guess.unet_config}")
    split = dict(meta)
    clip_target = found.clip_target(split)
    if clip_target != {"clip_l": "text_encoder", "t5xxl": "text_encoder_2"}:
        raise SystemExit(f"clip_target: {clip_target}")
    split = found.process_vae_state_dict(split)
    parts = {found.unet_target: try_filter_state_dict(split, found.unet_key_prefix),
             found.vae_target: try_filter_state_dict(split, found.vae_key_prefix)}
    split = found.process_clip_state_dict(split)
    for k, v in clip_target.items():
        parts[v] = try_filter_state_dict(split, [k + "."])
    if split:
        raise SystemExit(f"keys Forge would ignore: {sorted(split)[:8]}")
    want = {found.unet_target: comps["transformer"], found.vae_target: comps["vae"],
            "text_encoder": {k[len("clip_l."):]: v for k, v in comps["clip"].items() if k.startswith("clip_l.")},
            "text_encoder_2": {k[len("t5xxl."):]: v for k, v in comps["clip"].items() if k.startswith("t5xxl.")}}
    for name, part in parts.items():
        if set(part) != set(want[name]):
            raise SystemExit(f"{name}: the split differs from the module's state dict "
                             f"({sorted(set(part) ^ set(want[name]))[:6]})")
        for k, v in part.items():
            if tuple(v.shape) != tuple(want[name][k].shape):
                raise SystemExit(f"{name}.{k}: {tuple(v.shape)} != {tuple(want[name][k].shape)}")
    counts = {name: len(part) for name, part in parts.items()}
    return layout, found, counts


def lora_layout(forge: str, rank: int):
    """PEFT keys of the Flux port's LoRA for every module of flux_lora's target set, shapes from diffusers'
    FluxTransformer2DModel (meta) built from Forge's config of the transformer."""
    import torch
    from diffusers import FluxTransformer2DModel
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from lib_layerdiffusion.hosts import flux_lora

    cfg = read_json(os.path.join(repo_dir(forge), "transformer", "config.json"))
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    linears = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    names = flux_lora.peft_module_names(cfg["num_layers"], cfg["num_single_layers"], prefix="")
    missing = [n for n in names if n not in linears]
    if missing:
        raise SystemExit(f"not linears of FluxTransformer2DModel: {missing[:5]}")
    layout = []
    for n in names:
        n_out, n_in = linears[n]
        layout.append((f"{flux_lora.PEFT_PREFIX}{n}.lora_A.weight", (rank, n_in), "bfloat16"))
        layout.append((f"{flux_lora.PEFT_PREFIX}{n}.lora_B.weight", (n_out, rank), "bfloat16"))
    return sorted(layout)


def tvae_layout(manifest: Path):
    man = read_json(manifest)
    shapes = {}
    for section in ("flux_transparent_decoder", "flux_transparent_encoder"):
        shapes.update({k: tuple(s) for k, s in man[section].items()})
    return [(k, shapes[k], "bfloat16") for k in sorted(shapes)]


# ----------------------------------------------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------------------------------------------

def randn(key, shape, std):
    import torch
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).mul_(float(std))


def checkpoint_tensor(key, shape):
    import torch
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if key.endswith("logit_scale"):
        return torch.full(tuple(shape), 4.6055)
    if len(shape) <= 1:
        if key.endswith(".weight") or key.endswith(".scale"):  # LayerNorm / GroupNorm / RMSNorm / T5LayerNorm scales
            return torch.ones(tuple(shape))
        return torch.zeros(tuple(shape))  # biases
    fan_in = 1
    for s in shape[1:]:
        fan_in *= int(s)
    if "embedding" in key or key.endswith("shared.weight") or key.endswith("text_projection.weight"):
        fan_in = 1
    std = min(0.02, 1.0 / fan_in ** 0.5)
    return randn(key, shape, std).clamp_(-4 * std, 4 * std)


def lora_tensor(key, shape):
    return randn(key, shape, 0.03)


def seeded_tensor(key, shape):
    """shared/reference/seeded_weights.py: numpy PCG64 stream seeded by the key's CRC-32."""
    import numpy as np
    import torch
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    arr = rng.standard_normal(tuple(shape), dtype=np.float32)
    if len(shape) >= 2:
        arr *= np.float32(1.0 / np.sqrt(float(np.prod(shape[1:]))))
    else:
        arr *= np.float32(0.05)
        if key.endswith("weight"):
            arr += np.float32(1.0)
    return torch.from_numpy(arr)


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------

def layout_bytes(layout) -> int:
    n = 0
    for _k, shape, dt in layout:
        c = 1
        for s in shape:
            c *= int(s)
        n += c * ST_DTYPES[dt][1]
    return n


def drop_cache(f):
    f.flush()
    os.fdatasync(f.fileno())
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_safetensors(path, layout, make, metadata=None, log_every=2 << 30):
    """Stream a safetensors file: the header from the layout, then each tensor made, converted and written alone."""
    import torch
    header, offset = {}, 0
    for key, shape, dt in layout:
        c = 1
        for s in shape:
            c *= int(s)
        nbytes = c * ST_DTYPES[dt][1]
        header[key] = {"dtype": ST_DTYPES[dt][0], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".part"
    t0, written, since = time.time(), 0, 0
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for key, shape, dt in layout:
            t = make(key, shape)
            if tuple(t.shape) != tuple(shape):
                raise SystemExit(f"{key}: made {tuple(t.shape)}, want {tuple(shape)}")
            t = t.to(getattr(torch, dt)).contiguous()
            if dt in ("float8_e4m3fn", "bfloat16", "float16"):
                t = t.view(torch.uint8 if dt == "float8_e4m3fn" else torch.int16)
            f.write(memoryview(t.numpy()).cast("B"))
            written += t.numel() * t.element_size()
            since += t.numel() * t.element_size()
            del t
            if since >= log_every:
                drop_cache(f)
                since = 0
                print(f"  {os.path.basename(path)}: {written / 2**30:.1f} / {offset / 2**30:.1f} GiB, "
                      f"{time.time() - t0:.0f} s", flush=True)
        drop_cache(f)
    if os.path.getsize(tmp) != 8 + len(hb) + offset:
        raise SystemExit(f"{tmp}: size {os.path.getsize(tmp)} != {8 + len(hb) + offset}")
    os.replace(tmp, path)
    return offset


def write_tvae(path, layout):
    import torch
    sd = collections.OrderedDict()
    for key, shape, _dt in layout:
        sd[key] = seeded_tensor(key, shape).to(torch.bfloat16)
    tmp = path + ".part"
    torch.save(sd, tmp)
    os.replace(tmp, path)


def human(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forge", default=DEFAULT_FORGE, help="Forge main checkout (default: $LAYERDIFFUSE_FORGE_ROOT, "
                                                          "$RIG_FORGE or ~/.cache/layerdiffuse-rig/forge)")
    ap.add_argument("--ckpt-dir", default=None, help="default <forge>/models/Stable-diffusion")
    ap.add_argument("--layer-dir", default=None, help="default <forge>/models/layer_model")
    ap.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="manifest of TransparentVAE.pth")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma list of: " + ",".join(GROUPS))
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    ap.add_argument("--dry-run", action="store_true", help="build and check the layouts, print sizes, write nothing")
    a = ap.parse_args()

    groups = [g.strip() for g in a.only.split(",") if g.strip()]
    for g in groups:
        if g not in GROUPS:
            raise SystemExit(f"unknown group {g}")
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    forge = import_forge(a.forge)
    ckpt_dir = a.ckpt_dir or os.path.join(forge, "models", "Stable-diffusion")
    layer_dir = a.layer_dir or os.path.join(forge, "models", "layer_model")

    jobs = []
    meta = {"rig": "random weights, not a trained model", "model": f"{VARIANT} layout (Forge main's own classes)"}
    if "checkpoint" in groups:
        layout, found, counts = checkpoint_layout(forge)
        print(f"checkpoint: {len(layout)} tensors, {human(layout_bytes(layout))}; huggingface_guess: "
              f"{type(found).__name__} ({found.huggingface_repo}), unet_config {found.unet_config}; "
              f"Forge's split: {counts}")
        by_dt = collections.Counter()
        for _k, s, d in layout:
            by_dt[d] += layout_bytes([(_k, s, d)])
        print("  by dtype: " + ", ".join(f"{d} {human(n)}" for d, n in by_dt.items()))
        jobs.append((os.path.join(ckpt_dir, CHECKPOINT_NAME), layout, checkpoint_tensor))
    if "layerlora" in groups:
        layout = lora_layout(forge, a.rank)
        print(f"layerlora: {len(layout)} tensors (rank {a.rank}), {human(layout_bytes(layout))}")
        jobs.append((os.path.join(layer_dir, "layerlora.safetensors"), layout, lora_tensor))
    if "tvae" in groups:
        layout = tvae_layout(Path(a.manifest))
        print(f"TransparentVAE.pth: {len(layout)} tensors, {human(layout_bytes(layout))} (bf16)")
        jobs.append((os.path.join(layer_dir, "TransparentVAE.pth"), layout, None))

    need = sum(layout_bytes(l) for p, l, _ in jobs if a.force or not os.path.exists(p))
    free = os.statvfs(ckpt_dir if os.path.isdir(ckpt_dir) else forge)
    print(f"to write: {human(need)}; free on disk: {human(free.f_bavail * free.f_frsize)}")
    if a.dry_run:
        return
    if need > free.f_bavail * free.f_frsize - (1 << 30):
        raise SystemExit("not enough disk space (keeping 1 GiB free)")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(layer_dir, exist_ok=True)
    for path, layout, make in jobs:
        if os.path.exists(path) and not a.force:
            print(f"exists, kept: {path}")
            continue
        t0 = time.time()
        if make is None:
            write_tvae(path, layout)
            converted = os.path.splitext(path)[0] + ".safetensors"
            if os.path.exists(converted):  # a conversion of an earlier .pth would be taken as it is
                os.remove(converted)
                print(f"removed the earlier conversion {converted}")
        else:
            write_safetensors(path, layout, make, meta)
        print(f"wrote {path}: {human(os.path.getsize(path))}, {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
