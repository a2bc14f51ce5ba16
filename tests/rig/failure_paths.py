"""Rig check (opt-in, a REAL Forge): an unexpected failure inside LayerDiffuse (an out-of-memory injected by the
rig-only extension tests/rig/extensions/ld_rig_faults, copied into the run's extensions folder) stops the request
with LayerDiffuse's message in the API's error body, and the next request is unaffected.

    python tests/rig/failure_paths.py --url http://127.0.0.1:7861 --log ~/.cache/layerdiffuse-rig/logs/forge-X.log

Cases: the weight patch (before sampling), the transparent decode (after sampling: raised when Forge closes the
request), the init image's transparency encode (img2img; skip with --no-img2img on old Forge). After each, the
same request without the fault must answer 200 with an RGBA. Prints a table; exit 1 on a miss.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png, error_messages, png_b64  # noqa: E402
from test_forge_integration import fg_image  # noqa: E402

SDXL_ATTN = "(SDXL) Only Generate Transparent Image (Attention Injection)"
EXPECTED = {"patch": "Patching the model failed", "decode": "Decoding the transparency failed",
            "encoder": "Preparing the init images failed"}


def request(forge: ForgeClient, fault: str, img2img: bool, size: int, steps: int):
    body = {"prompt": "a glass bottle", "width": size, "height": size, "steps": steps, "sampler_name": "Euler",
            "cfg_scale": 5, "seed": 12345, "batch_size": 1,
            "alwayson_scripts": {"LayerDiffuse": {"args": [True, SDXL_ATTN, 1.0, 1.0]},
                                 "LD rig faults": {"args": [fault]}}}
    if img2img:
        body.update(init_images=[png_b64(fg_image(size))], denoising_strength=0.6)
        return forge.post("/sdapi/v1/img2img", body)
    return forge.post("/sdapi/v1/txt2img", body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7861")
    ap.add_argument("--log", required=True, type=Path)
    ap.add_argument("--no-img2img", action="store_true")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    forge = ForgeClient(a.url, timeout_s=3600)
    forge.select_checkpoint("rig_sdxl_base_random")
    failed = 0
    print("| fault | status | message | `*** Error` lines | next request | next RGBA |")
    print("| --- | --- | --- | --- | --- | --- |")
    for fault in ("patch", "decode", *(() if a.no_img2img else ("encoder",))):
        img2img = fault == "encoder"
        start = a.log.stat().st_size
        r = request(forge, fault, img2img, a.size, a.steps)
        messages = error_messages(r) or [r.text(300)]
        with open(a.log, encoding="utf-8", errors="replace") as f:
            f.seek(start)
            errors = sum("*** Error" in line for line in f)
        following = request(forge, "none", img2img, a.size, a.steps)
        rgba = following.ok and np.asarray(decode_png(b64_to_bytes(following.json["images"][0]))).shape[2] == 4
        ok = (r.status >= 400 and any(EXPECTED[fault] in m for m in messages) and following.status == 200
              and rgba and errors == 0)
        failed += not ok
        message = next((m for m in messages if "[LayerDiffuse]" in m), messages[0])
        print(f"| {fault} | {r.status} | {message[:160]} | {errors} | {following.status} | {rgba} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
