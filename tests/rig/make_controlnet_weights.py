"""Random-weight ControlNet files for the CPU rig, in the published formats, so that the hosts' built-in ControlNet
can run beside LayerDiffuse through a real Forge (images are noise; what is checked is that both apply).

    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_controlnet_weights.py --dry-run   # layout, checks
    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_controlnet_weights.py             # write what is missing

Files (default folder <forge>/models/ControlNet), fp16 like the published fp16 files:
  * rig_control_sd15_canny_random.safetensors: the lllyasviel ControlNet-v1-1 layout (control_v11p_sd15_canny):
    `control_model.*` ldm keys (input_blocks, middle_block, zero_convs, input_hint_block, middle_block_out,
    time_embed). Shapes: Forge main's backend/nn/cnets/cldm.py ControlNet built on the meta device with the unet
    config huggingface_guess detects in the rig's SD1.5 checkpoint (exactly what modules_forge/supported_controlnet.py
    does with a ControlNet file: model_config_from_unet(..., "control_model.", True), hint_channels from
    input_hint_block.0.weight).
  * rig_control_sdxl_canny_random.safetensors: the diffusers layout of diffusers/controlnet-canny-sdxl-1.0
    (diffusion_pytorch_model.fp16.safetensors: conv_in, time_embedding, add_embedding, down_blocks, mid_block,
    controlnet_cond_embedding, controlnet_down_blocks, controlnet_mid_block). Shapes: the same cldm.ControlNet with the
    SDXL checkpoint's detected config, its keys renamed with the inverse of the mapping Forge's loader applies
    (huggingface_guess.utils.unet_to_diffusers plus supported_controlnet.py's controlnet_* renames).
    `--sdxl-variant mid|small` gives the layouts of controlnet-canny-sdxl-1.0-mid / -small instead (huggingface_guess's
    SDXL_mid_cnet / SDXL_small_cnet configs; smaller, for a tighter machine).

Checked before anything is written, on meta tensors: Forge's own detection of each layout (model_config_from_unet for
the ldm file; unet_config_from_diffusers_unet for the diffusers one) gives back the config the layout was built
from, and the diffusers file maps back, through the loader's renames, onto exactly the cldm module's keys and shapes.

Values (deterministic, each tensor from a generator seeded with the CRC-32 of its key; make_flux_weights.py's
checkpoint recipe): matrices N(0, min(0.02, 1/sqrt(fan_in))^2) clipped at 4 sigma, norm scales 1, biases 0; the zero
convolutions (zero_convs / controlnet_down_blocks / controlnet_mid_block and the hint embedding's last conv), which a
trained ControlNet has moved away from 0, get N(0, 0.05^2) so that the control is visible in a random UNet.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_flux_weights import DEFAULT_FORGE, checkpoint_tensor, human, layout_bytes, randn, write_safetensors  # noqa: E402

SD15_CKPT, SDXL_CKPT = "rig_sd15_random.safetensors", "rig_sdxl_base_random.safetensors"
SD15_NAME, SDXL_NAME = "rig_control_sd15_canny_random.safetensors", "rig_control_sdxl_canny_random.safetensors"
UNET_PREFIX = "model.diffusion_model."
ZERO_CONV_STD = 0.05


def import_forge(root: str) -> str:
    """Forge main's backend as a helper script imports it (--always-cpu in sys.argv: backend/memory_management.py
    picks the device at import)."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(os.path.join(root, "backend", "nn", "cnets")):
        raise SystemExit(f"not a Forge main checkout (no backend/nn/cnets): {root}")
    for p in (root, os.path.join(root, "repositories", "huggingface_guess"), os.path.join(root, "packages_3rdparty")):
        if p not in sys.path:
            sys.path.insert(0, p)
    saved, cwd = sys.argv, os.getcwd()
    sys.argv = [saved[0], "--always-cpu"]
    os.chdir(root)
    try:
        import huggingface_guess.detection  # noqa: F401
        import backend.nn.cnets.cldm  # noqa: F401
    finally:
        os.chdir(cwd)
        sys.argv = saved
    return root


def header_meta(path: str) -> dict:
    """The checkpoint's tensors as meta tensors (shapes only, from the safetensors header): enough for detection."""
    import torch
    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta")
            for k, v in header.items() if k != "__metadata__"}


def detected_unet_config(checkpoint: str) -> dict:
    from huggingface_guess.detection import model_config_from_unet
    found = model_config_from_unet(header_meta(checkpoint), UNET_PREFIX, True)
    if found is None:
        raise SystemExit(f"huggingface_guess found no UNet in {checkpoint}")
    return dict(found.unet_config)


def cldm_state_dict(unet_config: dict) -> dict:
    """Forge's ControlNet module for this UNet config, on the meta device (supported_controlnet.py's construction)."""
    import torch
    from backend.nn.cnets import cldm
    config = dict(unet_config)
    config.pop("out_channels", None)
    config["hint_channels"] = 3
    config["dtype"] = torch.float16
    with torch.device("meta"):
        model = cldm.ControlNet(**config)
    return dict(model.state_dict())


def sd15_layout(forge: str) -> list:
    import torch
    from huggingface_guess.detection import model_config_from_unet
    config = detected_unet_config(os.path.join(forge, "models", "Stable-diffusion", SD15_CKPT))
    module = cldm_state_dict(config)
    layout = [("control_model." + k, tuple(v.shape), "float16") for k, v in module.items()]
    # the loader's detection of this file (supported_controlnet.py: model_config_from_unet(sd, "control_model.", True))
    meta = {k: torch.empty(s, device="meta") for k, s, _ in layout}
    back = model_config_from_unet(meta, "control_model.", True).unet_config
    _same_config(back, config, "SD1.5 ControlNet")
    return layout


SDXL_VARIANTS = {"full": None, "mid": "SDXL_mid_cnet", "small": "SDXL_small_cnet"}


def _variant_config(base: dict, variant: str) -> dict:
    """controlnet-canny-sdxl-1.0-mid / -small: the transformer depths huggingface_guess's detection lists for them."""
    if variant == "full":
        return base
    depth = {"mid": ([0, 0, 0, 0, 1, 1], 1), "small": ([0, 0, 0, 0, 0, 0], 0)}[variant]
    config = dict(base, transformer_depth=depth[0], transformer_depth_middle=depth[1])
    if variant == "small":  # no attention at all: huggingface_guess's SDXL_small_cnet has context_dim 1
        config["context_dim"] = 1
    return config


def _same_config(found: dict, want: dict, what: str) -> None:
    keys = ("in_channels", "model_channels", "num_res_blocks", "channel_mult", "transformer_depth",
            "transformer_depth_middle", "context_dim", "adm_in_channels", "use_linear_in_transformer")
    diff = {k: (found.get(k), want.get(k)) for k in keys if list(_seq(found.get(k))) != list(_seq(want.get(k)))}
    if diff:
        raise SystemExit(f"{what}: Forge's detection of the layout differs from the config it was built from: {diff}")


def _seq(v):
    return v if isinstance(v, (list, tuple)) else [v]


def controlnet_renames(controlnet_data: dict, config: dict) -> dict:
    """supported_controlnet.py try_build_from_state_dict's diffusers -> ldm renames, for this state dict's keys."""
    from huggingface_guess.utils import unet_to_diffusers
    names = dict(unet_to_diffusers(config))
    names["controlnet_mid_block.weight"] = "middle_block_out.0.weight"
    names["controlnet_mid_block.bias"] = "middle_block_out.0.bias"
    count = 0
    while True:
        if f"controlnet_down_blocks.{count}.weight" not in controlnet_data:
            break
        for s in (".weight", ".bias"):
            names[f"controlnet_down_blocks.{count}{s}"] = f"zero_convs.{count}.0{s}"
        count += 1
    count = 0
    loop = True
    while loop:
        for s in (".weight", ".bias"):
            k_in = "controlnet_cond_embedding.conv_in" + s if count == 0 else \
                f"controlnet_cond_embedding.blocks.{count - 1}{s}"
            if k_in not in controlnet_data:
                k_in = "controlnet_cond_embedding.conv_out" + s
                loop = False
            names[k_in] = f"input_hint_block.{count * 2}{s}"
        count += 1
    return names


def _hint_block_names(module: dict) -> dict:
    """input_hint_block.{0,2,...,14} (convs, SiLU between) -> controlnet_cond_embedding conv_in / blocks.N / conv_out."""
    convs = sorted({int(k.split(".")[1]) for k in module if k.startswith("input_hint_block.")})
    out = {}
    for i, idx in enumerate(convs):
        name = "conv_in" if i == 0 else ("conv_out" if i == len(convs) - 1 else f"blocks.{i - 1}")
        for s in ("weight", "bias"):
            out[f"input_hint_block.{idx}.{s}"] = f"controlnet_cond_embedding.{name}.{s}"
    return out


def sdxl_layout(forge: str, variant: str) -> list:
    import torch
    from huggingface_guess.detection import unet_config_from_diffusers_unet
    from huggingface_guess.utils import unet_to_diffusers
    base = detected_unet_config(os.path.join(forge, "models", "Stable-diffusion", SDXL_CKPT))
    config = _variant_config(base, variant)
    module = cldm_state_dict(config)
    to_diffusers = {ldm: d for d, ldm in unet_to_diffusers(config).items()}
    to_diffusers.update(_hint_block_names(module))
    to_diffusers["middle_block_out.0.weight"] = "controlnet_mid_block.weight"
    to_diffusers["middle_block_out.0.bias"] = "controlnet_mid_block.bias"
    for k in module:
        if k.startswith("zero_convs."):
            n, s = k.split(".")[1], k.split(".")[-1]
            to_diffusers[k] = f"controlnet_down_blocks.{n}.{s}"
    missing = [k for k in module if k not in to_diffusers]
    if missing:
        raise SystemExit(f"no diffusers name for {len(missing)} cldm keys: {missing[:6]}")
    layout = sorted((to_diffusers[k], tuple(v.shape), "float16") for k, v in module.items())

    # the loader: detection on the diffusers keys, then its renames must land on exactly the module's keys and shapes
    meta = {k: torch.empty(s, device="meta") for k, s, _ in layout}
    found = unet_config_from_diffusers_unet(meta, torch.float16)
    if found is None:
        raise SystemExit("huggingface_guess does not recognise the SDXL ControlNet layout")
    _same_config(found, config, f"SDXL ControlNet ({variant})")
    renames = controlnet_renames(meta, found)
    mapped = {renames[k]: tuple(v.shape) for k, v in meta.items() if k in renames}
    leftover = [k for k in meta if k not in renames]
    if leftover:
        raise SystemExit(f"keys Forge's loader would leave over: {leftover[:6]}")
    want = {k: tuple(v.shape) for k, v in module.items()}
    if mapped != want:
        raise SystemExit(f"the loader's renames do not give the module's keys: {sorted(set(mapped) ^ set(want))[:6]}")
    return layout


def control_tensor(key: str, shape) -> "object":
    zero_conv = (key.startswith(("control_model.zero_convs.", "control_model.middle_block_out.", "controlnet_down_blocks.",
                                 "controlnet_mid_block.", "controlnet_cond_embedding.conv_out."))
                 or key.startswith("control_model.input_hint_block.14."))
    if zero_conv and key.endswith("weight"):
        return randn(key, shape, ZERO_CONV_STD)
    return checkpoint_tensor(key, shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forge", default=DEFAULT_FORGE, help="Forge main checkout (default: $LAYERDIFFUSE_FORGE_ROOT, "
                                                          "$RIG_FORGE or ~/.cache/layerdiffuse-rig/forge)")
    ap.add_argument("--out-dir", default=None, help="default <forge>/models/ControlNet")
    ap.add_argument("--only", default="sd15,sdxl", help="comma list of: sd15, sdxl")
    ap.add_argument("--sdxl-variant", default="full", choices=sorted(SDXL_VARIANTS))
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    ap.add_argument("--dry-run", action="store_true", help="build and check the layouts, print sizes, write nothing")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    forge = import_forge(a.forge)
    out_dir = a.out_dir or os.path.join(forge, "models", "ControlNet")
    groups = [g.strip() for g in a.only.split(",") if g.strip()]
    jobs = []
    meta = {"rig": "random weights, not a trained model"}
    if "sd15" in groups:
        layout = sd15_layout(forge)
        print(f"SD1.5 ControlNet (control_model.* ldm layout): {len(layout)} tensors, {human(layout_bytes(layout))}")
        jobs.append((os.path.join(out_dir, SD15_NAME), layout,
                     dict(meta, model="ControlNet-v1-1 sd15 layout (Forge main's cldm.ControlNet)")))
    if "sdxl" in groups:
        layout = sdxl_layout(forge, a.sdxl_variant)
        name = SDXL_NAME if a.sdxl_variant == "full" else SDXL_NAME.replace("_canny_", f"_canny_{a.sdxl_variant}_")
        print(f"SDXL ControlNet ({a.sdxl_variant}, diffusers layout): {len(layout)} tensors, "
              f"{human(layout_bytes(layout))}")
        jobs.append((os.path.join(out_dir, name), layout,
                     dict(meta, model=f"controlnet-canny-sdxl-1.0 ({a.sdxl_variant}) diffusers layout")))
    need = sum(layout_bytes(l) for p, l, _ in jobs if a.force or not os.path.exists(p))
    os.makedirs(out_dir, exist_ok=True)
    free = os.statvfs(out_dir)
    print(f"to write: {human(need)}; free on disk: {human(free.f_bavail * free.f_frsize)}")
    if a.dry_run:
        return
    if need > free.f_bavail * free.f_frsize - (1 << 30):
        raise SystemExit("not enough disk space (keeping 1 GiB free)")
    for path, layout, file_meta in jobs:
        if os.path.exists(path) and not a.force:
            print(f"exists, kept: {path}")
            continue
        t0 = time.time()
        write_safetensors(path, layout, control_tensor, file_meta)
        print(f"wrote {path}: {human(os.path.getsize(path))}, {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
