"""FLUX.1 with LayerDiffuse through a REAL running Forge (opt-in; the rig of ../shared/rig with a random-weight
FLUX.1 checkpoint from tests/rig/make_flux_weights.py or make_flux_gguf.py). Writes a table.

    python tests/rig/flux_matrix.py --url http://127.0.0.1:7861 --out OUT/flux_main --host "Forge main" \
        --checkpoint rig_flux1_dev_random_Q4_K.gguf --modules <forge>/models/VAE/rig_flux1_vae.safetensors \
        <forge>/models/text_encoder/rig_flux1_clip_l.safetensors <forge>/models/text_encoder/rig_flux1_t5xxl_fp8.safetensors \
        --log FORGE_LOG [--cases txt2img plain hires img2img]

Start the Forge with the rig-only extension tests/rig/extensions/ld_rig_latents copied into its extensions/ (it
logs the latent each sampling starts from and ends with). Cases (128x128, "scheduler": "Simple", cfg 1):
  txt2img  the FLUX.1 method, 1 step: HTTP 200, first image RGBA with a non-trivial alpha and layerdiffusion_*
           infotext; the log's FLUX.1 LoRA lines (online on quantised weights, how many) are kept.
  plain    the same request with LayerDiffuse off: its sampled latent must differ from txt2img's (the transparency
           LoRA changed the transformer's output).
  hires    txt2img with hires fix x1.5 (Latent, 1 second-pass step, denoising 0.5): RGBA at 192x192.
  img2img  an RGBA init image (an opaque disc on a transparent field), 4 steps, denoising 0.5, and the same disc
           fully opaque on grey: the init latent the host samples from must be the host's process_in of the
           latent LayerDiffuse's regulation made (mean + std * offset; compared through the logged mean and std
           with the latent format's scale and shift), and the two init latents and images must differ.
OUT/<case>/{image_N.png, result.json}; OUT/table.md; exit 1 when a check fails or the log shows an error.
Standard library + numpy + Pillow (tests/forge_api.py).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png, png_b64  # noqa: E402

METHOD = "(FLUX.1) Only Generate Transparent Image"
SIZE = 128
FLOAT = r"(-?[0-9.]+(?:e[-+]?\d+)?|nan)"
INIT_RE = re.compile(r"\[Observe\] init latent \(([^)]*)\) mean " + FLOAT + " std " + FLOAT
                     + r"; latent format scale " + FLOAT + " shift " + FLOAT)
SAMPLED_RE = re.compile(r"\[Observe\] sampled latent \(([^)]*)\) mean " + FLOAT + " std " + FLOAT)
REGULATED_RE = re.compile(r"\[LayerDiffuse\] Init image transparency: .*latent \(([^)]*)\): mean " + FLOAT
                          + ", std " + FLOAT)
LORA_RE = re.compile(r"\[LayerDiffuse\] FLUX\.1 LoRA: .*")


def ld_args(enabled: bool = True) -> list:
    # the extension's ui() order (as tests/rig/host_matrix.py)
    return [enabled, METHOD, 1.0, 1.0, None, None, None, "Crop and Resize", False, "", "", ""]


def base_payload(steps: int, enabled: bool = True) -> dict:
    return {"prompt": "a glass bottle, transparent background", "negative_prompt": "", "width": SIZE,
            "height": SIZE, "steps": steps, "sampler_name": "Euler", "scheduler": "Simple", "cfg_scale": 1,
            "distilled_cfg_scale": 3.5, "seed": 12345, "batch_size": 1, "n_iter": 1, "send_images": True,
            "save_images": False, "alwayson_scripts": {"LayerDiffuse": {"args": ld_args(enabled)}}}


def disc(opaque: bool) -> Image.Image:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = (xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2 <= (SIZE * 0.35) ** 2
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = 128
    rgba[inside] = (200, 60, 40, 255)
    rgba[..., 3] = 255 if opaque else np.where(inside, 255, 0)
    return Image.fromarray(rgba, "RGBA")


class Log:
    def __init__(self, path: Path | None):
        self.path, self.offset = path, (path.stat().st_size if path and path.exists() else 0)

    def new_lines(self) -> list[str]:
        if not self.path or not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace").splitlines()


def request(forge: ForgeClient, log: Log, path: str, body: dict, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    r = forge.post(path, body)
    lines = log.new_lines()
    result = {"status": r.status, "seconds": round(r.elapsed_s, 1),
              "errors": [ln for ln in lines if "*** Error" in ln or "Traceback" in ln],
              "lora": [m.group(0) for ln in lines for m in [LORA_RE.search(ln)] if m],
              "init": [m.groups() for ln in lines for m in [INIT_RE.search(ln)] if m],
              "sampled": [m.groups() for ln in lines for m in [SAMPLED_RE.search(ln)] if m],
              "regulated": [m.groups() for ln in lines for m in [REGULATED_RE.search(ln)] if m]}
    if r.status != 200:
        result["error"] = r.text(2000)
    else:
        images = [decode_png(b64_to_bytes(b)) for b in (r.json or {}).get("images") or []]
        info = json.loads((r.json or {}).get("info") or "{}")
        result["images"] = []
        for i, image in enumerate(images):
            image.save(out / f"image_{i}.png")
            entry = {"mode": image.mode, "size": list(image.size)}
            if image.mode == "RGBA":
                alpha = np.asarray(image)[..., 3].astype(np.float64)
                entry.update(alpha_mean=round(float(alpha.mean()), 2), alpha_std=round(float(alpha.std()), 2))
            result["images"].append(entry)
        result["layerdiffusion_infotext"] = any("layerdiffusion_" in t for t in info.get("infotexts") or [])
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def first_rgba(result: dict, size: int) -> str | None:
    """None when the first image is an RGBA of size x size with a non-trivial alpha, else what is wrong."""
    images = result.get("images") or []
    if result.get("status") != 200 or not images:
        return f"HTTP {result.get('status')}: {result.get('error', 'no image')[:300]}"
    first = images[0]
    if first["mode"] != "RGBA" or first["size"] != [size, size]:
        return f"first image {first['mode']} {first['size']}"
    if first.get("alpha_std", 0) <= 0:
        return "alpha is constant"
    if not result.get("layerdiffusion_infotext"):
        return "no layerdiffusion_* infotext"
    return None


def close(a: float, b: float, tol: float = 2e-3) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def check_init(result: dict) -> str | None:
    """The host's init latent = process_in(regulated latent) = (latent - shift) * scale, by mean and std."""
    if not result.get("regulated") or not result.get("init"):
        return "no regulation / init latent line in the log"
    _, lat_mean, lat_std = result["regulated"][-1]
    _, init_mean, init_std, scale, shift = result["init"][-1]
    lat_mean, lat_std, init_mean, init_std, scale, shift = map(float, (lat_mean, lat_std, init_mean, init_std,
                                                                      scale, shift))
    expected_mean, expected_std = (lat_mean - shift) * scale, lat_std * scale
    result["init_check"] = {"expected_mean": expected_mean, "init_mean": init_mean, "expected_std": expected_std,
                            "init_std": init_std}
    if not (close(expected_mean, init_mean) and close(expected_std, init_std)):
        return (f"init latent mean {init_mean:.6f} std {init_std:.6f}, expected {expected_mean:.6f} / "
                f"{expected_std:.6f} from the regulated latent")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("LAYERDIFFUSE_FORGE_URL", "http://127.0.0.1:7861"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--host", default="Forge")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--modules", nargs="*", default=[], help="VAE / text encoder files (forge_additional_modules)")
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--cases", nargs="+", default=["txt2img", "plain", "hires", "img2img"])
    a = ap.parse_args()
    forge = ForgeClient(a.url, timeout_s=7200)
    options = {"sd_model_checkpoint": a.checkpoint}
    if a.modules:
        options["forge_additional_modules"] = a.modules
    r = forge.post("/sdapi/v1/options", options)
    if not r.ok:
        print(f"options: HTTP {r.status} {r.text()}")
        return 1
    log = Log(a.log)
    rows, results = [], {}

    def row(case: str, verdict: str | None, detail: str):
        rows.append((case, "PASS" if verdict is None else f"FAIL: {verdict}", detail))
        print(f"{case}: {rows[-1][1]} {detail}", flush=True)

    if "txt2img" in a.cases:
        res = results["txt2img"] = request(forge, log, "/sdapi/v1/txt2img", base_payload(1), a.out / "txt2img")
        bad = first_rgba(res, SIZE) or ("no FLUX.1 LoRA line in the log" if not res["lora"] else None)
        row("txt2img", bad, f"{res['seconds']} s; {res.get('images', [{}])[:1]}; {' / '.join(res['lora'])[:400]}")
    if "plain" in a.cases:
        res = results["plain"] = request(forge, log, "/sdapi/v1/txt2img", base_payload(1, enabled=False),
                                         a.out / "plain")
        bad = None if res["status"] == 200 else f"HTTP {res['status']}"
        ld = results.get("txt2img", {}).get("sampled")
        if bad is None and ld and res["sampled"] and ld[-1] == res["sampled"][-1]:
            bad = "the sampled latent is the same with and without LayerDiffuse's LoRA"
        row("plain", bad, f"sampled latent without LayerDiffuse {res['sampled'][-1:]}, with "
                          f"{(ld or [None])[-1:]}")
    if "hires" in a.cases:
        body = base_payload(1)
        # Forge main's API leaves hr_additional_modules None unless given, and its sample() then fails
        # (modules/processing.py:1405 `'Use same choices' not in self.hr_additional_modules`)
        body.update(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", hr_second_pass_steps=1,
                    denoising_strength=0.5, hr_additional_modules=["Use same choices"])
        res = results["hires"] = request(forge, log, "/sdapi/v1/txt2img", body, a.out / "hires")
        row("hires", first_rgba(res, int(SIZE * 1.5)), f"{res['seconds']} s; {res.get('images', [{}])[:1]}")
    if "img2img" in a.cases:
        found = {}
        for name, opaque in (("img2img", False), ("img2img_opaque", True)):
            # 4 steps at denoising 0.5: img2img samples from sigmas[steps - int(denoising * steps) - 1:]
            # (modules/sd_samplers_kdiffusion.py:143 sample_img2img), so at 0.75 it would start at the schedule's first
            # sigma, 1.0 for FLUX.1 (flow matching: the init latent's weight is 1 - sigma, none)
            body = base_payload(4)
            body.update(init_images=[png_b64(disc(opaque))], denoising_strength=0.5, resize_mode=0)
            res = results[name] = request(forge, log, "/sdapi/v1/img2img", body, a.out / name)
            bad = first_rgba(res, SIZE) or check_init(res)
            found[name] = res
            row(name, bad, f"{res['seconds']} s; regulated {res['regulated'][-1:]}; init {res['init'][-1:]}; "
                           f"check {res.get('init_check')}")
        a_, b_ = found["img2img"], found["img2img_opaque"]
        same_init = a_["init"][-1:] == b_["init"][-1:]
        try:
            pa = np.asarray(Image.open(a.out / "img2img" / "image_0.png"))
            pb = np.asarray(Image.open(a.out / "img2img_opaque" / "image_0.png"))
            diff = int(np.abs(pa.astype(int) - pb.astype(int)).max())
        except (OSError, ValueError):
            diff = -1
        row("img2img vs opaque init", "same init latent" if same_init else (None if diff > 0 else "same image"),
            f"init latents {a_['init'][-1:]} vs {b_['init'][-1:]}; image difference max {diff}/255")
    errors = [e for res in results.values() for e in res["errors"]]
    row("log", f"{len(errors)} error lines: {errors[:3]}" if errors else None, "no *** Error / Traceback")
    table = [f"### FLUX.1 on {a.host}, checkpoint `{a.checkpoint}`", "", "| case | verdict | detail |",
             "| --- | --- | --- |"] + [f"| {c} | {v} | {d} |" for c, v, d in rows]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if all(v == "PASS" for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
