"""Rig check (opt-in, a REAL Forge): another script's edit after sampling reaches LayerDiffuse's transparent
decode whatever the order of the two scripts' hooks. Needs the rig-only extension tests/rig/extensions/
ld_rig_paint_square copied into the run's extensions folder beside this checkout (see the README's rig section).

    python tests/rig/pipeline_edits.py --url http://127.0.0.1:7861 --log ~/.cache/layerdiffuse-rig/logs/forge-X.log

For each case (no edit, the "early" script's edit, the "late" one's; both run in extension-folder order unless
prioritized_callbacks_script_postprocess_image is set) it sends one txt2img request and reads the
Forge log written meanwhile: the SHA-256 of the image the paint script handed on must equal the SHA-256 of the
pixels the transparent decoder read; the RGBA must differ from the unedited one. Prints a table; exit 1 on a miss.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png  # noqa: E402

MODELS = {"sdxl": ("rig_sdxl_base_random", "(SDXL) Only Generate Transparent Image (Attention Injection)"),
          "sd15": ("rig_sd15_random", "(SD1.5) Only Generate Transparent Image (Attention Injection)")}
PAINTED = re.compile(r"\[PaintSquare\] (\w+) painted image .* sha256 ([0-9a-f]{64})")
DECODED = re.compile(r"\[LayerDiffuse\] Image (\d+): transparent decode from latent .* sha256 ([0-9a-f]{64})")


def request(forge: ForgeClient, model: str, edit: str | None, size: int, steps: int):
    checkpoint, method = MODELS[model]
    forge.select_checkpoint(checkpoint)
    scripts = {"LayerDiffuse": {"args": [True, method, 1.0, 1.0]}}
    for label in ("early", "late"):
        scripts[f"LD rig paint square {label}"] = {"args": [edit == label]}
    body = {"prompt": "a glass bottle", "width": size, "height": size, "steps": steps, "sampler_name": "Euler",
            "cfg_scale": 5, "seed": 12345, "batch_size": 1, "alwayson_scripts": scripts}
    return forge.post("/sdapi/v1/txt2img", body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7861")
    ap.add_argument("--log", required=True, type=Path)
    ap.add_argument("--models", nargs="+", default=["sd15", "sdxl"])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    forge = ForgeClient(a.url, timeout_s=3600)
    failed = 0
    print("| model | edit | status | painted sha256 | decoder read sha256 | same | RGBA differs from unedited |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in a.models:
        unedited = None
        for edit in (None, "early", "late"):
            start = a.log.stat().st_size
            r = request(forge, model, edit, a.size, a.steps)
            with open(a.log, encoding="utf-8", errors="replace") as f:
                f.seek(start)
                text = f.read()
            painted = [m.group(2) for m in PAINTED.finditer(text)]
            decoded = [m.group(2) for m in DECODED.finditer(text)]
            rgba = np.asarray(decode_png(b64_to_bytes(r.json["images"][0]))) if r.ok else None
            if edit is None:
                unedited = rgba
            same = bool(painted) and painted[-1:] == decoded[-1:] if edit else None
            differs = None if edit is None or rgba is None else bool((rgba != unedited).any())
            ok = r.status == 200 and rgba is not None and rgba.shape[2] == 4 and (edit is None or (same and differs))
            failed += not ok
            print(f"| {model} | {edit or 'none'} | {r.status} | {(painted or ['-'])[-1][:12]} | "
                  f"{(decoded or ['-'])[-1][:12]} | {same} | {differs} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
