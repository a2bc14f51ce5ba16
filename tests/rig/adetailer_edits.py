"""Rig check (opt-in, a REAL Forge with the REAL ADetailer extension): ADetailer's inpaint after sampling is in the
RGBA that LayerDiffuse returns and saves, whatever the order of the two extensions' postprocess_image hooks.

Needs, in the run's extensions folder beside this checkout (see the README's rig section): a copy of Bing-su/adetailer
(its dependency `ultralytics` in the rig venv), the rig-only observer tests/rig/extensions/zz_ld_rig_observe, and the
random-weight detector written by tests/rig/make_adetailer_model.py.

    python tests/rig/adetailer_edits.py --url http://127.0.0.1:7861 --log <forge log> --outputs <data dir>/outputs \
        --first adetailer|layerdiffuse

Per model (SD1.5, SDXL; transparent attention injection) two txt2img requests with the same seed, saved by Forge:
without ADetailer, and with ADetailer (the detector at confidence 0, the largest box only, 2 inpaint steps).
Checks on the request with ADetailer, from the Forge log written meanwhile and the files Forge saved:
- the host runs the two hooks in the order asked for (`--first`), the observer's hook after both;
- ADetailer changed the image: the image after every postprocess_image differs from the one sampled without it;
- the transparent decoder read exactly that edited image (LayerDiffuse's "from pixels ... sha256" = the observer's);
- ADetailer started from the sampled image: its own "before ADetailer" file has the SHA-256 that the decoder read in
  the request without ADetailer (so the sampling was the same) ...
- ... and the decoder used that image's own latent, not ADetailer's inner inpaint (same latent mean/std as without);
- the RGBA returned equals the file saved, its alpha is not flat, and it differs from the RGBA without ADetailer;
- the log has no `*** Error` / Traceback.
Prints a Markdown table; exit 1 on a miss.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png  # noqa: E402

MODELS = {"sdxl": ("rig_sdxl_base_random", "(SDXL) Only Generate Transparent Image (Attention Injection)"),
          "sd15": ("rig_sd15_random", "(SD1.5) Only Generate Transparent Image (Attention Injection)")}
DETECTOR = "rig_random_yolov8n.pt"
ORDER = re.compile(r"\[Observe\] postprocess_image order: (.*)")
OBSERVED = re.compile(r"\[Observe\] image (\d+) after postprocess_image .* sha256 ([0-9a-f]{64})")
DECODED = re.compile(r"\[LayerDiffuse\] Image (\d+): transparent decode from latent (\([^)]*\)): mean ([-\d.e]+), "
                     r"std ([-\d.e]+); from pixels .* sha256 ([0-9a-f]{64})")
ERRORS = re.compile(r"\*\*\* Error|Traceback \(most recent call last\)|nothing detected|ADetailer: .*[Ee]rror")


def adetailer_args(steps: int) -> dict:
    """ADetailer's API shape (scripts/!adetailer.py get_args / adetailer/args.py ADetailerArgs): the enable flag,
    skip-img2img, then one dict per tab."""
    return {"args": [True, False, {
        "ad_model": DETECTOR, "ad_confidence": 0.0, "ad_mask_k": 1, "ad_mask_filter_method": "Area",
        "ad_denoising_strength": 0.6, "ad_inpaint_only_masked": True, "ad_use_steps": True, "ad_steps": steps,
        "ad_prompt": "a red ball"}]}


def sha_rgb(image: Image.Image) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(image.convert("RGB"))).tobytes()).hexdigest()


def pngs(folder: Path) -> set[Path]:
    return set(folder.rglob("*.png")) if folder.exists() else set()


def run(forge: ForgeClient, model: str, with_ad: bool, a) -> dict:
    checkpoint, method = MODELS[model]
    forge.select_checkpoint(checkpoint)
    scripts = {"LayerDiffuse": {"args": [True, method, 1.0, 1.0]}}
    if with_ad:
        scripts["ADetailer"] = adetailer_args(a.ad_steps)
    body = {"prompt": "a glass bottle", "width": a.size, "height": a.size, "steps": a.steps, "sampler_name": "Euler",
            "cfg_scale": 5, "seed": 12345, "batch_size": 1, "save_images": True, "alwayson_scripts": scripts}
    saved_before = pngs(a.outputs)
    start = a.log.stat().st_size
    t0 = time.time()
    r = forge.post("/sdapi/v1/txt2img", body)
    elapsed = time.time() - t0
    time.sleep(0.5)  # the log is flushed line by line; let the last lines land
    with open(a.log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        text = f.read()
    new = sorted(pngs(a.outputs) - saved_before)
    rgba = decode_png(b64_to_bytes(r.json["images"][0])) if r.ok else None
    decoded = [m.groups() for m in DECODED.finditer(text)]
    return {
        "status": r.status, "elapsed": elapsed, "rgba": rgba, "log": text,
        "order": (ORDER.findall(text) or [""])[0].split(", "),
        "observed": [m.group(2) for m in OBSERVED.finditer(text)],
        "decoded_sha": decoded[-1][4] if decoded else None,
        "latent": decoded[-1][1:4] if decoded else None,
        "errors": sorted({m.group(0) for m in ERRORS.finditer(text)}),
        "saved": [p for p in new if not p.stem.endswith("-ad-before")],
        "before": [p for p in new if p.stem.endswith("-ad-before")],
    }


def position(order: list[str], needle: str) -> int:
    return next((i for i, name in enumerate(order) if needle in name), -1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7861")
    ap.add_argument("--log", required=True, type=Path)
    ap.add_argument("--outputs", required=True, type=Path, help="the run's outputs folder (<data dir>/outputs)")
    ap.add_argument("--first", required=True, choices=["adetailer", "layerdiffuse"],
                    help="which postprocess_image hook the host is set up to run first")
    ap.add_argument("--models", nargs="+", default=["sd15", "sdxl"])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ad-steps", type=int, default=2)
    a = ap.parse_args()
    forge = ForgeClient(a.url, timeout_s=3600)
    # ADetailer's own record of its input image, saved next to the result (its option, off by default)
    forge.post("/sdapi/v1/options", {"ad_save_images_before": True, "samples_format": "png"})
    failed = 0
    print("| model | hook order (postprocess_image) | ADetailer | status | s | image after the hooks | decoder read "
          "| decoder read = after hooks | ADetailer's before-file = sampled | same latent | returned = saved "
          "| RGBA differs from without ADetailer | log errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in a.models:
        plain = run(forge, model, False, a)
        edited = run(forge, model, True, a)
        for label, res in (("off", plain), ("on", edited)):
            order = res["order"]
            ad, ld, ob = (position(order, k) for k in ("AfterDetailerScript", "LayerDiffuseScript", "LDRigObserve"))
            order_ok = min(ad, ld, ob) >= 0 and ob > max(ad, ld) and ((ad < ld) == (a.first == "adetailer"))
            rgba = res["rgba"]
            saved = res["saved"]
            returned_saved = (rgba is not None and len(saved) == 1 and Image.open(saved[0]).mode == "RGBA"
                              and np.array_equal(np.asarray(Image.open(saved[0])), np.asarray(rgba)))
            alpha_ok = rgba is not None and rgba.mode == "RGBA" and np.asarray(rgba)[..., 3].std() > 0
            after = (res["observed"] or [None])[-1]
            checks = [res["status"] == 200, order_ok, alpha_ok, returned_saved, not res["errors"],
                      res["decoded_sha"] is not None and res["decoded_sha"] == after]
            row = {"edited": "-", "before": "-", "latent": "-", "differs": "-"}
            if label == "on":
                before_sha = sha_rgb(Image.open(res["before"][0])) if len(res["before"]) == 1 else None
                row = {"edited": after != plain["decoded_sha"],
                       "before": before_sha is not None and before_sha == plain["decoded_sha"],
                       "latent": res["latent"] is not None and res["latent"] == plain["latent"],
                       "differs": rgba is not None and plain["rgba"] is not None
                       and not np.array_equal(np.asarray(rgba), np.asarray(plain["rgba"]))}
                checks += [row["edited"], row["before"], row["latent"], row["differs"]]
                if rgba is not None and plain["rgba"] is not None:
                    changed = np.argwhere((np.asarray(rgba)[..., :3] != np.asarray(plain["rgba"])[..., :3]).any(-1))
                    if changed.size:
                        (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
                        print(f"<!-- {model}: RGB changed in x {x0}..{x1}, y {y0}..{y1} of {rgba.size} -->")
            ok = all(checks)
            failed += not ok
            short_order = " → ".join(n.split("/")[-1] for n in order) or "?"
            print(f"| {model} | {short_order} | {label} | {res['status']} | {res['elapsed']:.0f} | "
                  f"{(after or '-')[:12]} {'edited' if row['edited'] is True else ''} | "
                  f"{(res['decoded_sha'] or '-')[:12]} | {res['decoded_sha'] == after} | {row['before']} | "
                  f"{row['latent']} | {returned_saved} | {row['differs']} | "
                  f"{'; '.join(res['errors']) or 'none'} |{'' if ok else ' **FAIL**'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
