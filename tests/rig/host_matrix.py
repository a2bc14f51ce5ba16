"""Run LayerDiffuse's methods through a REAL running Forge (any generation) and keep the results, so that the
same cases can be compared between hosts and with the original extension (opt-in; needs the rig of
../shared/rig with its random-weight checkpoints).

    python tests/rig/host_matrix.py run --url http://127.0.0.1:7861 --out OUT/main --cases sd15 sdxl
    python tests/rig/host_matrix.py compare OUT/main OUT/neo
    python tests/rig/host_matrix.py lora --url URL --out OUT/main_lora --lora rig_sd15_lora --cases sd15 --log LOG

`run` writes OUT/<case>/{image_N.png, result.json}; result.json has the HTTP status, the images' modes and
alpha statistics, whether every image's infotext carries layerdiffusion_* fields, and the error body, if any.
`compare` prints, per case both folders have, the largest pixel difference of each image (0-255). `lora` runs
each method with a user's LoRA at weight 1 and 0 (tests/rig/make_lora.py writes one) and writes
OUT/lora_matrix.{json,md}; it exits 1 unless all answer 200, the weights differ, a plain image after is the one
before, and the log shows no error. Standard
library + numpy + Pillow (tests/forge_api.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png, error_messages, png_b64  # noqa: E402
from test_forge_integration import bg_image, blend_image, fg_image  # noqa: E402

SDXL, SD15 = "rig_sdxl_base_random", "rig_sd15_random"
M = {
    "sd15_attn": "(SD1.5) Only Generate Transparent Image (Attention Injection)",
    "sd15_fg2bg": "(SD1.5) From Foreground to Background (need batch size 2)",
    "sd15_bg2fg": "(SD1.5) From Background to Foreground (need batch size 2)",
    "sd15_joint": "(SD1.5) Generate Everything Together (need batch size 3)",
    "sdxl_attn": "(SDXL) Only Generate Transparent Image (Attention Injection)",
    "sdxl_conv": "(SDXL) Only Generate Transparent Image (Conv Injection)",
    "sdxl_fg2ble": "(SDXL) From Foreground to Blending",
    "sdxl_fgble2bg": "(SDXL) From Foreground and Blending to Background",
    "sdxl_bg2ble": "(SDXL) From Background to Blending",
    "sdxl_bgble2fg": "(SDXL) From Background and Blending to Foreground",
}


def _case(model, method, batch=1, inputs=(), img2img=False, hires=False, inpaint=False, options=None):
    return dict(model=model, method=M[method], batch=batch, inputs=inputs, img2img=img2img or inpaint, hires=hires,
                inpaint=inpaint, options=options or {})


CASES = {
    "sd15_attn": _case(SD15, "sd15_attn"),
    "sd15_attn_b2": _case(SD15, "sd15_attn", batch=2),
    "sd15_joint": _case(SD15, "sd15_joint", batch=3),
    "sd15_fg2bg": _case(SD15, "sd15_fg2bg", batch=2, inputs=("fg",)),
    "sd15_bg2fg": _case(SD15, "sd15_bg2fg", batch=2, inputs=("bg",)),
    "sd15_img2img": _case(SD15, "sd15_attn", img2img=True),
    "sd15_hires": _case(SD15, "sd15_attn", hires=True),
    # inpaint only masked, with Forge's overlay off: Forge returns the generation-size crop; LayerDiffuse the canvas
    "sd15_inpaint_masked_no_overlay": _case(SD15, "sd15_attn", inpaint=True, options={"overlay_inpaint": False}),
    "sdxl_attn": _case(SDXL, "sdxl_attn"),
    "sdxl_attn_b2": _case(SDXL, "sdxl_attn", batch=2),
    "sdxl_conv": _case(SDXL, "sdxl_conv"),
    "sdxl_fg2ble": _case(SDXL, "sdxl_fg2ble", batch=2, inputs=("fg",)),
    "sdxl_fgble2bg": _case(SDXL, "sdxl_fgble2bg", inputs=("fg", "blend")),
    "sdxl_bg2ble": _case(SDXL, "sdxl_bg2ble", inputs=("bg",)),
    "sdxl_bgble2fg": _case(SDXL, "sdxl_bgble2fg", inputs=("bg", "blend")),
    "sdxl_img2img": _case(SDXL, "sdxl_attn", img2img=True),
    "sdxl_hires": _case(SDXL, "sdxl_attn", hires=True),
    # 'VAE type for decode' = TAESD: LayerDiffuse decodes with the full VAE itself (same image as sdxl_attn)
    "sdxl_taesd_decode": _case(SDXL, "sdxl_attn", options={"sd_vae_decode_method": "TAESD"}),
    "sd15_taesd_decode": _case(SD15, "sd15_attn", options={"sd_vae_decode_method": "TAESD"}),
}
GROUPS = {"sd15": [k for k in CASES if k.startswith("sd15")], "sdxl": [k for k in CASES if k.startswith("sdxl")]}


def payload(case: dict, size: int, steps: int, prompt_suffix: str = "", enabled: bool = True) -> tuple[str, dict]:
    images = {"fg": png_b64(fg_image(size)), "bg": png_b64(bg_image(size)), "blend": png_b64(blend_image(size))}
    args = [enabled, case["method"], 1.0, 1.0, images["fg"] if "fg" in case["inputs"] else None,
            images["bg"] if "bg" in case["inputs"] else None, images["blend"] if "blend" in case["inputs"] else None,
            "Crop and Resize", False, "", "", ""]
    body = {"prompt": "a glass bottle, transparent background" + prompt_suffix, "negative_prompt": "", "width": size,
            "height": size, "steps": steps, "sampler_name": "Euler", "cfg_scale": 5, "seed": 12345,
            "batch_size": case["batch"], "n_iter": 1, "send_images": True, "save_images": True,
            "alwayson_scripts": {"LayerDiffuse": {"args": args}}}
    if case["img2img"]:
        body.update(init_images=[png_b64(fg_image(size))], denoising_strength=0.6, resize_mode=0)
        if case["inpaint"]:  # repaint a centre square, only that region at full resolution
            mask = Image.new("L", (size, size), 0)
            mask.paste(255, (size // 4, size // 4, size * 3 // 4, size * 3 // 4))
            body.update(mask=png_b64(mask), inpaint_full_res=True, inpaint_full_res_padding=16, inpainting_fill=1,
                        width=size // 2, height=size // 2)
        return "/sdapi/v1/img2img", body
    if case["hires"]:
        body.update(enable_hr=True, hr_scale=1.25, hr_upscaler="Latent", denoising_strength=0.6,
                    hr_second_pass_steps=steps, hr_additional_modules=["Use same choices"])
    return "/sdapi/v1/txt2img", body


def _set_options(forge: ForgeClient, options: dict) -> dict:
    """Set Forge options; returns their previous values."""
    if not options:
        return {}
    current = forge.get("/sdapi/v1/options").json or {}
    forge.post("/sdapi/v1/options", options)
    return {k: current.get(k) for k in options}


def _newest_saved(outputs: Path | None, since: float) -> str | None:
    if outputs is None:
        return None
    files = [f for f in outputs.rglob("*.png") if f.stat().st_mtime >= since and "-preview" not in f.name]
    return str(max(files, key=lambda f: f.stat().st_mtime)) if files else None


def run_case(forge: ForgeClient, name: str, out: Path, size: int, steps: int, outputs: Path | None = None) -> dict:
    case = CASES[name]
    forge.select_checkpoint(case["model"])
    path, body = payload(case, size, steps)
    previous = _set_options(forge, case["options"])
    start, started = time.monotonic(), time.time()
    try:
        r = forge.post(path, body)
    finally:
        _set_options(forge, previous)
    result = {"case": name, "status": r.status, "seconds": round(time.monotonic() - start, 1)}
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    if r.ok:
        info = r.json.get("info") or "{}"
        info = json.loads(info) if isinstance(info, str) else info
        infotexts = info.get("infotexts") or []
        described = []
        for i, b64 in enumerate(r.json.get("images") or []):
            raw = b64_to_bytes(b64)
            (folder / f"image_{i}.png").write_bytes(raw)
            image = decode_png(raw)
            entry = {"mode": image.mode, "size": list(image.size)}
            if image.mode == "RGBA":
                alpha = np.asarray(image)[..., 3].astype(np.float64)
                entry.update(alpha_mean=round(alpha.mean(), 2), alpha_std=round(alpha.std(), 2))
            described.append(entry)
        saved = _newest_saved(outputs, started)
        if saved:  # the transparent image Forge saved is the one it returned first
            first = np.asarray(decode_png((folder / "image_0.png").read_bytes()))
            on_disk = np.asarray(Image.open(saved))
            result["saved_equals_first"] = bool(first.shape == on_disk.shape and (first == on_disk).all())
            result["saved_mode"] = Image.open(saved).mode
        result.update(images=described, infotexts=infotexts, comments=info.get("comments"),
                      layerdiffusion_infotext=bool(infotexts) and all("layerdiffusion_method" in t for t in infotexts),
                      rgba_first=bool(described) and described[0]["mode"] == "RGBA")
    else:
        result["errors"] = error_messages(r) or [r.text(2000)]
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _difference(pa: np.ndarray, pb: np.ndarray) -> str:
    """Largest and mean absolute difference; an RGB image against an RGBA one (a host that writes its stealth
    infotext into the alpha of every returned image) is compared on the colour channels."""
    suffix = ""
    if pa.ndim == pb.ndim == 3 and pa.shape[:2] == pb.shape[:2] and pa.shape[2] != pb.shape[2]:
        pa, pb, suffix = pa[..., :3], pb[..., :3], " (RGB)"
    if pa.shape != pb.shape:
        return f"shape {pa.shape} vs {pb.shape}"
    diff = np.abs(pa.astype(int) - pb.astype(int))
    return f"max {diff.max()} mean {diff.mean():.3f}{suffix}"


def compare(a: Path, b: Path) -> None:
    for case in sorted(p.name for p in a.iterdir() if (b / p.name).is_dir()):
        diffs = []
        for image_a in sorted((a / case).glob("image_*.png")):
            image_b = b / case / image_a.name
            if not image_b.exists():
                diffs.append(f"{image_a.name}: missing")
                continue
            pa, pb = (np.asarray(decode_png(p.read_bytes())) for p in (image_a, image_b))
            diffs.append(f"{image_a.name}: {_difference(pa, pb)}")
        print(f"{case}: " + "; ".join(diffs))


LORA_CASES = {"sd15": ("sd15_attn", "sd15_fg2bg", "sd15_bg2fg", "sd15_joint"),
              "sdxl": ("sdxl_attn", "sdxl_conv", "sdxl_fg2ble")}


def _images(r) -> list[np.ndarray]:
    return [np.asarray(decode_png(b64_to_bytes(b))) for b in (r.json.get("images") or [])] if r.ok else []


def _max_diff(a: list[np.ndarray], b: list[np.ndarray], rgb: bool = False) -> int | None:
    """Largest pixel difference over the images of two answers (None when they cannot be compared); `rgb`: the
    colour channels only (a plain image's alpha carries a host's stealth infotext bits, not the image)."""
    if not a or len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return None
    if rgb:
        a, b = [x[..., :3] for x in a], [y[..., :3] for y in b]
    return int(max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a, b)))


def _log_errors(log: Path | None, offset: int) -> list[str]:
    if log is None or not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if "*** Error" in line or "Traceback" in line]


def lora_matrix(forge: ForgeClient, out: Path, lora: str, cases: list[str], size: int, steps: int,
                log: Path | None) -> list[dict]:
    """A user's LoRA under LayerDiffuse: per method, the request with <lora:NAME:1> and with <lora:NAME:0> (must
    both answer 200, the first image RGBA where the method makes one, and differ); a plain request (LayerDiffuse
    off, no LoRA) before and after all of them must give the same image (nothing left patched); the plain request
    with the LoRA shows the LoRA's own effect. Forge's log is checked for errors per request."""
    rows = []
    out.mkdir(parents=True, exist_ok=True)

    def ask(case_name: str, suffix: str, enabled: bool = True):
        case = CASES[case_name]
        forge.select_checkpoint(case["model"])
        path, body = payload(case, size, steps, suffix, enabled)
        offset = log.stat().st_size if log is not None and log.exists() else 0
        r = forge.post(path, body)
        images = _images(r)
        return r, images, _log_errors(log, offset)

    by_model = {}
    for name in cases:
        by_model.setdefault(CASES[name]["model"], []).append(name)
    for model, names in by_model.items():
        plain_case = names[0]
        r0, plain_before, e0 = ask(plain_case, "", enabled=False)
        _, plain_again, _ = ask(plain_case, "", enabled=False)  # how far the host repeats itself at all
        r_lora, plain_lora, e1 = ask(plain_case, f" <lora:{lora}:1>", enabled=False)
        for name in names:
            r1, at_one, e2 = ask(name, f" <lora:{lora}:1>")
            rz, at_zero, e3 = ask(name, f" <lora:{lora}:0>")
            for tag, images in (("lora1", at_one), ("lora0", at_zero)):
                for i, image in enumerate(images):
                    Image.fromarray(image).save(out / f"{name}_{tag}_{i}.png")
            rows.append({
                "case": name, "status_lora1": r1.status, "status_lora0": rz.status,
                "modes": [Image.fromarray(x).mode for x in at_one],
                "lora1_vs_lora0_max_diff": _max_diff(at_one, at_zero),
                "errors": (error_messages(r1) if not r1.ok else []) + (error_messages(rz) if not rz.ok else []),
                "log_errors": e2 + e3,
            })
            print(json.dumps(rows[-1]), flush=True)
        r2, plain_after, e4 = ask(plain_case, "", enabled=False)
        rows.append({"case": f"plain ({model})", "status_lora1": r_lora.status, "status_lora0": r0.status,
                     "plain_lora_vs_plain_max_diff": _max_diff(plain_lora, plain_before),
                     "plain_after_vs_before_max_diff": _max_diff(plain_after, plain_before, rgb=True),
                     "plain_after_vs_before_alpha_included": _max_diff(plain_after, plain_before),
                     "plain_repeat_max_diff": _max_diff(plain_again, plain_before, rgb=True),
                     "status_after": r2.status, "log_errors": e0 + e1 + e4})
        print(json.dumps(rows[-1]), flush=True)
    (out / "lora_matrix.json").write_text(json.dumps(rows, indent=1))
    lines = ["| case | HTTP <lora:1> / <lora:0> | modes | max diff <lora:1> vs <lora:0> | log errors |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        if row["case"].startswith("plain"):
            lines.append(f"| {row['case']}: LoRA alone vs none; after vs before all (RGB) | {row['status_lora1']} / "
                         f"{row['status_lora0']} (after: {row['status_after']}) | | "
                         f"{row['plain_lora_vs_plain_max_diff']}; after vs before: "
                         f"{row['plain_after_vs_before_max_diff']} (plain repeated: {row['plain_repeat_max_diff']}) | "
                         f"{len(row['log_errors'])} |")
        else:
            lines.append(f"| {row['case']} | {row['status_lora1']} / {row['status_lora0']} | "
                         f"{','.join(row['modes'])} | {row['lora1_vs_lora0_max_diff']} | {len(row['log_errors'])} |")
    (out / "lora_matrix.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def lora_ok(rows: list[dict]) -> bool:
    for row in rows:
        if row["log_errors"]:
            return False
        if row["case"].startswith("plain"):
            after, repeat = row["plain_after_vs_before_max_diff"], row["plain_repeat_max_diff"]
            # after differs from before by more than the host differs from itself, or the LoRA does nothing
            if after is None or repeat is None or after > repeat or not row["plain_lora_vs_plain_max_diff"]:
                return False
        elif row["status_lora1"] != 200 or row["status_lora0"] != 200 or not row["lora1_vs_lora0_max_diff"]:
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--url", default=os.environ.get("LAYERDIFFUSE_FORGE_URL", "http://127.0.0.1:7861"))
    run.add_argument("--out", required=True, type=Path)
    run.add_argument("--cases", nargs="+", default=["sd15", "sdxl"], help="case names or groups (sd15, sdxl)")
    run.add_argument("--size", type=int, default=256)
    run.add_argument("--steps", type=int, default=2)
    run.add_argument("--outputs", type=Path, default=None, help="the Forge's outputs folder: check the saved file")
    lora = sub.add_parser("lora", help="a user's LoRA under each method (make it with tests/rig/make_lora.py)")
    lora.add_argument("--url", default=os.environ.get("LAYERDIFFUSE_FORGE_URL", "http://127.0.0.1:7861"))
    lora.add_argument("--out", required=True, type=Path)
    lora.add_argument("--lora", default="rig_sd15_lora", help="the LoRA's name in models/Lora")
    lora.add_argument("--cases", nargs="+", default=["sd15"], help="case names or groups (sd15, sdxl)")
    lora.add_argument("--log", type=Path, default=None, help="the Forge's log, checked for errors")
    lora.add_argument("--size", type=int, default=256)
    lora.add_argument("--steps", type=int, default=2)
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    a = ap.parse_args()
    if a.command == "compare":
        compare(a.a, a.b)
        return 0
    forge = ForgeClient(a.url, timeout_s=3600)
    if a.command == "lora":
        names = [n for c in a.cases for n in LORA_CASES.get(c, [c])]
        return 0 if lora_ok(lora_matrix(forge, a.out, a.lora, names, a.size, a.steps, a.log)) else 1
    names = [n for c in a.cases for n in GROUPS.get(c, [c])]
    failed = 0
    for name in names:
        result = run_case(forge, name, a.out, a.size, a.steps, a.outputs)
        brief = {k: result.get(k) for k in ("status", "seconds", "rgba_first", "layerdiffusion_infotext",
                                             "saved_equals_first", "saved_mode")}
        print(name, json.dumps(brief), json.dumps(result.get("images") or result.get("errors")), flush=True)
        failed += result["status"] != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
