"""Random-weight GGUF FLUX.1-dev files for the CPU rig, in the form people run Flux in Forge on small cards: the
transformer alone as a .gguf file (Q8_0, Q4_K or Q5_K), and the VAE and text encoders as separate files for Forge's
"VAE / Text Encoder" modules (a GGUF checkpoint carries the transformer only).

    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_flux_gguf.py --quant Q8_0 --dry-run   # layout, sizes
    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_flux_gguf.py --quant Q8_0 --quant Q4_K

Files (default folders: <forge>/models/Stable-diffusion, <forge>/models/VAE, <forge>/models/text_encoder):
  * rig_flux1_dev_random_<QUANT>.gguf: the transformer under the names backend/loader.py preprocess_state_dict
    prefixes with `model.diffusion_model.` (BFL's layout, the keys of make_flux_weights.py's checkpoint without that
    prefix), so huggingface_guess detects FLUX.1-dev from them; checked before writing, as make_flux_weights.py
    checks its file. Every 2-D weight whose rows split into the type's blocks (32 values for Q8_0, 256 for the
    K-quants) in that type, the other 2-D weights F16, 1-D tensors F32 (as the published Flux GGUFs keep norms and
    biases). Read by backend/utils.py load_torch_file (GGUFReader -> ParameterGGUF), computed through
    backend/operations.py ForgeOperationsGGUF.
  * rig_flux1_vae.safetensors (bare AutoencoderKL keys, bf16: loader.py replace_state_dict takes a file with
    `decoder.conv_in.weight` as the VAE), rig_flux1_clip_l.safetensors (`text_encoders.clip_l.transformer.*`, bf16:
    taken by its layer_norm1 key), rig_flux1_t5xxl_fp8.safetensors (bare T5 encoder keys, float8_e4m3fn as in
    make_flux_weights.py: taken by `encoder.block.0.layer.0.SelfAttention.k.weight`).
Values: each tensor from make_flux_weights.checkpoint_tensor with its full checkpoint key (the same values as the
fp8 checkpoint's), quantised to Q8_0 by gguf-py's reference quantiser; the K-quants, which gguf-py cannot quantise,
are random valid blocks (tests/quant_formats.py k_quant_bytes) spanning +-sqrt(3) times the tensor's standard
deviation, so their spread is that of the other files. The `gguf` used is the one Forge's own loader reads with
(Forge main: packages_3rdparty/gguf, on sys.path once Forge is imported; Neo: modules_forge/packages/gguf), so what
is written is what that reader reads.

Disk: Q8_0 ~12.6 GiB, Q4_K ~6.7 GiB, Q5_K ~8.2 GiB, the modules ~5.3 GiB. Nothing is written unless
--keep-free-gib (default 25) stay free afterwards. In a request (untested in the rig so far: no disk for it):
set the modules (POST /sdapi/v1/options {"forge_additional_modules": [<the three paths>]}) and the checkpoint
("sd_model_checkpoint": "rig_flux1_dev_random_Q8_0.gguf"), then txt2img with the FLUX.1 method, 1 step, 256x256,
"scheduler": "Simple".
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # tests/: quant_formats
import make_flux_weights as mfw  # noqa: E402

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
MODULES = {  # file -> (checkpoint prefix, key prefix in the file, dtype)
    "rig_flux1_vae.safetensors": (VAE_PREFIX, "", "bfloat16"),
    "rig_flux1_clip_l.safetensors": (CLIP_L_PREFIX, CLIP_L_PREFIX, "bfloat16"),
    "rig_flux1_t5xxl_fp8.safetensors": (T5_PREFIX, "", "float8_e4m3fn"),
}


def gguf_layout(layout, qtype_name: str):
    """[(gguf name, full checkpoint key, shape, GGML type name, bytes)] of the transformer."""
    import gguf
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = []
    for key, shape, _dt in layout:
        if not key.startswith(UNET_PREFIX):
            continue
        n = math.prod(shape)
        if len(shape) == 2 and shape[1] % block == 0:
            t, nbytes = qtype_name, n // block * type_size
        elif len(shape) == 2:
            t, nbytes = "F16", 2 * n
        else:
            t, nbytes = "F32", 4 * n
        out.append((key[len(UNET_PREFIX):], key, tuple(shape), t, nbytes))
    return out


def check_detection(entries):
    """huggingface_guess on the names Forge's loader gives the file (preprocess_state_dict's prefix) must be Flux with
    the FLUX.1-dev unet_config, as for the fp8 checkpoint."""
    import torch
    import huggingface_guess
    meta = {UNET_PREFIX + name: torch.empty(shape, device="meta") for name, _k, shape, _t, _n in entries}
    found = huggingface_guess.guess(meta)
    if type(found) is not huggingface_guess.model_list.Flux:
        raise SystemExit(f"huggingface_guess detected {type(found).__name__}, expected Flux")
    return found


def k_quant(key, shape, qtype):
    from quant_formats import k_quant_bytes
    import zlib
    std = min(0.02, 1.0 / math.prod(shape[1:]) ** 0.5)
    return k_quant_bytes(shape[0], shape[1], qtype, std * 3 ** 0.5, seed=zlib.crc32(key.encode("utf-8")))


def write_gguf(path, entries, qtype_name):
    """Streamed: the tensor infos first, then each tensor made, converted and written alone."""
    import gguf
    import numpy as np
    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    tmp = str(path) + ".part"
    writer = gguf.GGUFWriter(tmp, "flux")
    writer.add_string("general.name", f"random-weight FLUX.1-dev layout ({qtype_name}), not a trained model")
    for name, _key, shape, t, nbytes in entries:
        if t == qtype_name:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            byte_shape = (shape[0], shape[1] // block * type_size)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float16 if t == "F16" else np.float32), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    t0, done, total = time.time(), 0, sum(e[4] for e in entries)
    for i, (name, key, shape, t, nbytes) in enumerate(entries):
        if t == qtype_name and qtype_name in ("Q4_K", "Q5_K"):
            data = k_quant(key, shape, qtype)
        else:
            values = mfw.checkpoint_tensor(key, shape).numpy().astype(np.float32)
            if t == qtype_name:
                data = gguf.quants.quantize(values, qtype)
            else:
                data = values.astype(np.float16 if t == "F16" else np.float32)
        assert data.nbytes == nbytes, (name, data.nbytes, nbytes)
        writer.write_tensor_data(data)
        done += nbytes
        if i % 40 == 0:
            print(f"  {os.path.basename(path)}: {done / 2**30:.1f} / {total / 2**30:.1f} GiB, "
                  f"{time.time() - t0:.0f} s", flush=True)
    writer.close()
    os.replace(tmp, path)


def module_layouts(layout):
    """file -> [(key in the file, shape, dtype)], with the full checkpoint key kept for the values."""
    out = {}
    for fname, (prefix, file_prefix, dt) in MODULES.items():
        rows = []
        for key, shape, cdt in layout:
            if key.startswith(prefix):
                rows.append((file_prefix + key[len(prefix):], tuple(shape), "int64" if cdt == "int64" else dt, key))
        out[fname] = rows
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forge", default=mfw.DEFAULT_FORGE)
    ap.add_argument("--quant", action="append", choices=["Q8_0", "Q4_K", "Q5_K"], help="repeatable; default Q8_0")
    ap.add_argument("--ckpt-dir", default=None)
    ap.add_argument("--vae-dir", default=None)
    ap.add_argument("--te-dir", default=None)
    ap.add_argument("--no-modules", action="store_true", help="the .gguf files only")
    ap.add_argument("--keep-free-gib", type=float, default=25.0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    quants = a.quant or ["Q8_0"]

    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    forge = mfw.import_forge(a.forge)
    import gguf  # after Forge's import: the gguf-py its loader reads with
    ckpt_dir = a.ckpt_dir or os.path.join(forge, "models", "Stable-diffusion")
    vae_dir = a.vae_dir or os.path.join(forge, "models", "VAE")
    te_dir = a.te_dir or os.path.join(forge, "models", "text_encoder")
    layout, found, counts = mfw.checkpoint_layout(forge)
    print(f"gguf from {gguf.__file__}; Forge's layout: {counts}, {type(found).__name__} {found.unet_config}")

    jobs = []
    for q in quants:
        entries = gguf_layout(layout, q)
        again = check_detection(entries)
        if again.unet_config != found.unet_config:
            raise SystemExit(f"{q}: unet_config {again.unet_config} != {found.unet_config}")
        by_type = {}
        for e in entries:
            by_type[e[3]] = by_type.get(e[3], 0) + 1
        size = sum(e[4] for e in entries)
        print(f"rig_flux1_dev_random_{q}.gguf: {len(entries)} tensors {by_type}, {mfw.human(size)}; "
              f"huggingface_guess: {type(again).__name__} ({again.huggingface_repo})")
        jobs.append(("gguf", os.path.join(ckpt_dir, f"rig_flux1_dev_random_{q}.gguf"), (entries, q), size))
    if not a.no_modules:
        for fname, rows in module_layouts(layout).items():
            size = mfw.layout_bytes([(k, s, d) for k, s, d, _ in rows])
            folder = vae_dir if "vae" in fname else te_dir
            print(f"{fname}: {len(rows)} tensors, {mfw.human(size)}")
            jobs.append(("st", os.path.join(folder, fname), rows, size))

    need = sum(size for _kind, path, _x, size in jobs if a.force or not os.path.exists(path))
    st = os.statvfs(ckpt_dir if os.path.isdir(ckpt_dir) else forge)
    free = st.f_bavail * st.f_frsize
    print(f"to write: {mfw.human(need)}; free: {mfw.human(free)}; to stay free: {a.keep_free_gib} GiB")
    if a.dry_run:
        return
    if free - need < a.keep_free_gib * 2**30:
        raise SystemExit(f"not enough disk: writing {mfw.human(need)} would leave {mfw.human(free - need)} "
                         f"(< {a.keep_free_gib} GiB); nothing written")
    for kind, path, x, _size in jobs:
        if os.path.exists(path) and not a.force:
            print(f"exists, kept: {path}")
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.time()
        if kind == "gguf":
            write_gguf(path, *x)
        else:
            keys = {k: full for k, _s, _d, full in x}
            mfw.write_safetensors(path, [(k, s, d) for k, s, d, _ in x],
                                  lambda k, s: mfw.checkpoint_tensor(keys[k], s),
                                  {"rig": "random weights, not a trained model"})
        print(f"wrote {path}: {mfw.human(os.path.getsize(path))}, {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
