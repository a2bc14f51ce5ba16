"""The host's built-in ControlNet and LayerDiffuse in one request, through a REAL running Forge (opt-in; needs the rig
of ../shared/rig and the ControlNet files of make_controlnet_weights.py in its models/ControlNet).

    python tests/rig/controlnet_matrix.py --url http://127.0.0.1:7861 --out OUT/cnet-main \
        --log ~/.cache/layerdiffuse-rig/logs/forge-cnet-main.log --host "Forge main"

For each model (SD1.5: attention injection; SDXL: attention injection) and each of txt2img / img2img, the same
LayerDiffuse request is sent twice, with and without one ControlNet unit (module canny on an edge-rich image, the
rig's random ControlNet of that model family). A row passes when both answer 200, the first image is RGBA with a
non-trivial alpha, the infotext has layerdiffusion_* fields (and ControlNet's own fields in the run with the unit),
the image with the unit differs from the one without (ControlNet applied), and Forge's log for those requests has no
`*** Error` / Traceback. Writes OUT/<case>/{with,without}/image_N.png, OUT/results.json and OUT/table.md.
Standard library + numpy + Pillow (tests/forge_api.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png, error_messages, png_b64  # noqa: E402

MODELS = {
    "sd15": ("rig_sd15_random", "rig_control_sd15_canny_random",
             "(SD1.5) Only Generate Transparent Image (Attention Injection)"),
    "sdxl": ("rig_sdxl_base_random", "rig_control_sdxl_canny_random",
             "(SDXL) Only Generate Transparent Image (Attention Injection)"),
}
MODES = ("txt2img", "img2img")
LOG_ERRORS = ("*** Error", "Traceback (most recent call last)")


def control_image(size: int) -> Image.Image:
    """White outlines (rectangles, a circle, diagonals) on black: canny finds strong edges everywhere."""
    image = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    s = size
    draw.rectangle((s // 8, s // 8, s * 7 // 8, s * 7 // 8), outline=(255, 255, 255), width=3)
    draw.ellipse((s // 4, s // 4, s * 3 // 4, s * 3 // 4), outline=(255, 255, 255), width=3)
    draw.line((0, 0, s, s), fill=(255, 255, 255), width=2)
    draw.line((0, s, s, 0), fill=(255, 255, 255), width=2)
    return image


def init_image(size: int) -> Image.Image:
    """An opaque colour gradient (the img2img input)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([200 * xx + 30, 160 * yy + 40, 120 * (1 - xx) + 60], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def controlnet_model_name(forge: ForgeClient, stem: str) -> str:
    """The ControlNet's name as the host lists it ('<file stem> [<hash>]')."""
    r = forge.get("/controlnet/model_list")
    names = (r.json or {}).get("model_list") or [] if r.ok else []
    for name in names:
        if name.split(" [")[0] == stem:
            return name
    raise SystemExit(f"ControlNet model {stem} not listed by the host (/controlnet/model_list -> {r.status}: "
                     f"{names}); run tests/rig/make_controlnet_weights.py and link models/ControlNet")


def unit(model: str, size: int, weight: float) -> dict:
    return {"enabled": True, "module": "canny", "model": model, "weight": weight,
            "image": png_b64(control_image(size)), "resize_mode": "Crop and Resize", "processor_res": size,
            "threshold_a": 100, "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0,
            "pixel_perfect": False, "control_mode": "Balanced"}


def payload(method: str, mode: str, size: int, steps: int, cnet_unit: dict | None) -> tuple[str, dict]:
    scripts = {"LayerDiffuse": {"args": [True, method, 1.0, 1.0, None, None, None, "Crop and Resize", False, "", "",
                                         ""]}}
    if cnet_unit is not None:
        scripts["ControlNet"] = {"args": [cnet_unit]}
    body = {"prompt": "a glass bottle, transparent background", "negative_prompt": "", "width": size, "height": size,
            "steps": steps, "sampler_name": "Euler", "cfg_scale": 5, "seed": 12345, "batch_size": 1, "n_iter": 1,
            "send_images": True, "save_images": False, "alwayson_scripts": scripts}
    if mode == "img2img":
        body.update(init_images=[png_b64(init_image(size))], denoising_strength=0.75, resize_mode=0)
        return "/sdapi/v1/img2img", body
    return "/sdapi/v1/txt2img", body


class LogTail:
    """The part of Forge's log written since the last call."""

    def __init__(self, path: Path | None):
        self.path = path
        self.offset = path.stat().st_size if path and path.exists() else 0

    def read(self) -> str:
        if not self.path or not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        self.offset += len(text.encode("utf-8", "replace"))
        return text


def one_request(forge: ForgeClient, log: LogTail, path: str, body: dict, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    r = forge.post(path, body)
    result = {"status": r.status, "seconds": round(time.monotonic() - start, 1)}
    if r.ok:
        info = r.json.get("info") or "{}"
        info = json.loads(info) if isinstance(info, str) else info
        infotexts = info.get("infotexts") or []
        images = []
        for i, b64 in enumerate(r.json.get("images") or []):
            raw = b64_to_bytes(b64)
            (folder / f"image_{i}.png").write_bytes(raw)
            image = decode_png(raw)
            entry = {"mode": image.mode, "size": list(image.size)}
            if image.mode == "RGBA":
                alpha = np.asarray(image)[..., 3].astype(np.float64)
                entry.update(alpha_mean=round(float(alpha.mean()), 2), alpha_std=round(float(alpha.std()), 2))
            images.append(entry)
        first = images[0] if images else {}
        result.update(images=images, infotext=infotexts[0] if infotexts else "",
                      rgba_first=bool(first.get("mode") == "RGBA" and first.get("alpha_std", 0) > 0),
                      layerdiffusion_infotext=bool(infotexts and "layerdiffusion_method" in infotexts[0]),
                      controlnet_infotext=bool(infotexts and "ControlNet" in infotexts[0]))
    else:
        result["errors"] = error_messages(r) or [r.text(2000)]
    text = log.read()
    (folder / "forge_log_excerpt.txt").write_text(text)
    result["log_errors"] = [line for line in text.splitlines() if any(m in line for m in LOG_ERRORS)]
    result["log_controlnet"] = [line.strip() for line in text.splitlines()
                                if "ControlNet" in line and ("patched" in line or "Current ControlNet" in line)]
    return result


def difference(a: Path, b: Path) -> dict:
    pa, pb = (np.asarray(decode_png(p.read_bytes())).astype(int) for p in (a, b))
    if pa.shape != pb.shape:
        return {"shape": [list(pa.shape), list(pb.shape)]}
    d = np.abs(pa - pb)
    out = {"rgb_max": int(d[..., :3].max()), "rgb_mean": round(float(d[..., :3].mean()), 3)}
    if pa.shape[-1] == 4:
        out.update(alpha_max=int(d[..., 3].max()), alpha_mean=round(float(d[..., 3].mean()), 3))
    return out


def run(forge: ForgeClient, out: Path, log: LogTail, models: list, modes: list, size: int, steps: int,
        weight: float) -> list:
    rows = []
    for model_key in models:
        checkpoint, control_stem, method = MODELS[model_key]
        forge.select_checkpoint(checkpoint)
        log.read()  # the checkpoint switch's lines are not part of any case
        cnet_model = controlnet_model_name(forge, control_stem)
        for mode in modes:
            case = f"{model_key}_{mode}"
            row = {"case": case, "method": method, "controlnet": cnet_model}
            for label, u in (("without", None), ("with", unit(cnet_model, size, weight))):
                path, body = payload(method, mode, size, steps, u)
                row[label] = one_request(forge, log, path, body, out / case / label)
                print(case, label, json.dumps({k: row[label].get(k) for k in (
                    "status", "seconds", "rgba_first", "layerdiffusion_infotext", "controlnet_infotext")}),
                    json.dumps(row[label].get("errors") or row[label]["log_errors"][:3]), flush=True)
            both_ok = all(row[x]["status"] == 200 and (out / case / x / "image_0.png").exists()
                          for x in ("with", "without"))
            row["diff"] = difference(out / case / "with" / "image_0.png",
                                     out / case / "without" / "image_0.png") if both_ok else None
            w, wo = row["with"], row["without"]
            row["pass"] = bool(
                both_ok and w.get("rgba_first") and wo.get("rgba_first") and w.get("layerdiffusion_infotext")
                and wo.get("layerdiffusion_infotext") and w.get("controlnet_infotext")
                and not w["log_errors"] and not wo["log_errors"]
                and row["diff"] and row["diff"].get("rgb_max", 0) > 0)
            rows.append(row)
    return rows


def table(rows: list, host: str) -> str:
    lines = [f"ControlNet + LayerDiffuse on {host}", "",
             "| case | HTTP with / without | RGBA first (alpha mean) | layerdiffusion_* / ControlNet infotext | "
             "with vs without: RGB max / mean, alpha max / mean | log errors | s with / without | result |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        w, wo, d = r["with"], r["without"], r["diff"] or {}
        alpha = lambda x: (f"{x['images'][0].get('alpha_mean')}" if x.get("images") else "-")  # noqa: E731
        lines.append(
            f"| {r['case']} | {w['status']} / {wo['status']} | {w.get('rgba_first')} ({alpha(w)}) / "
            f"{wo.get('rgba_first')} ({alpha(wo)}) | {w.get('layerdiffusion_infotext')} / "
            f"{w.get('controlnet_infotext')} | {d.get('rgb_max', '-')} / {d.get('rgb_mean', '-')}, "
            f"{d.get('alpha_max', '-')} / {d.get('alpha_mean', '-')} | "
            f"{len(w['log_errors']) + len(wo['log_errors'])} | {w['seconds']} / {wo['seconds']} | "
            f"{'pass' if r['pass'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("LAYERDIFFUSE_FORGE_URL", "http://127.0.0.1:7861"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--log", type=Path, default=None, help="the Forge's log file (checked for errors per request)")
    ap.add_argument("--host", default="Forge", help="host name for the table")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--weight", type=float, default=1.0, help="ControlNet unit weight")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    forge = ForgeClient(a.url, timeout_s=3600)
    rows = run(forge, a.out, LogTail(a.log.expanduser() if a.log else None), a.models, a.modes, a.size, a.steps,
               a.weight)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows, a.host)
    (a.out / "table.md").write_text(text)
    print(text)
    return 0 if rows and all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
