"""LayerDiffuse inside a user's pipeline on a REAL running Forge (opt-in; the rig of ../shared/rig): the host's
built-in UNet patchers, the X/Y/Z plot with LayerDiffuse's axes, the SDXL refiner switch. Writes a table.

    python tests/rig/pipeline_matrix.py --url http://127.0.0.1:7861 --out OUT/main --host "Forge main" \
        --cases builtins xyz refiner [--log FORGE_LOG]

Cases (each compared with the LayerDiffuse-only request of the same seed, `<family>_ld`):
  builtins  every built-in patcher this host has (found by title in /sdapi/v1/script-info, its args built from the
            script's own defaults, enabled, with stronger values by label), with SDXL and SD1.5 transparent
            attention: HTTP 200, first image RGBA with a non-trivial alpha, and the image differs from `_ld`
            (the built-in's effect is still there).
  xyz       the X/Y/Z plot ("script_name": "x/y/z plot") with X = [LayerDiffuse] Weight (0.5, 1) and Y =
            [LayerDiffuse] Stop At (0.5, 1), sub-images on, legend off; then X = [LayerDiffuse] Method (attention,
            conv), legend on. Each cell RGBA, the cell at (weight 1, stop 1) equal to `sdxl_ld`, the grid's mode and
            alpha recorded; a bad method name in the axis must answer with the [LayerDiffuse] message.
  refiner   SDXL attention with refiner_checkpoint = the second SDXL checkpoint, refiner_switch_at 0.5: HTTP 200,
            RGBA, the infotext names the refiner, the image differs from `sdxl_ld`, and Forge's log shows the
            transparent decode got a latent (no "No decoded latent was seen").
OUT/<case>/{image_N.png, result.json}; OUT/table.md. Standard library + numpy + Pillow.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forge_api import ForgeClient, b64_to_bytes, decode_png, error_messages  # noqa: E402

# SDXL2: a second SDXL checkpoint as the refiner; the rig has one SDXL file, so the run links it under this name
# in a folder given to Forge with --ckpt-dir (its own CheckpointInfo, so Forge switches models at refiner_switch_at)
SDXL, SDXL2, SD15 = "rig_sdxl_base_random", "rig_sdxl_refiner_random", "rig_sd15_random"
ATTN = {"sdxl": "(SDXL) Only Generate Transparent Image (Attention Injection)",
        "sd15": "(SD1.5) Only Generate Transparent Image (Attention Injection)"}
CONV = "(SDXL) Only Generate Transparent Image (Conv Injection)"
MODEL = {"sdxl": SDXL, "sd15": SD15}

# built-in patchers: a title fragment (script-info names, case-insensitive) -> values by argument label (the rest:
# the script's defaults, the first argument, its Enabled, set to true)
BUILTINS = {
    "freeu": ("FreeU", {"B1": 1.5, "B2": 1.6, "S1": 0.9, "S2": 0.2}),
    "sag": ("SelfAttentionGuidance", {"Scale": 1.5}),
    "pag": ("PerturbedAttentionGuidance", {"Scale": 5.0}),
    "kohya_hrfix": ("Kohya HRFix", {"Block Number": 3, "Downscale Factor": 2.0, "End Percent": 1.0}),
    "dynamic_thresholding": ("DynamicThresholding", {"Mimic Scale": 3.0, "Threshold Percentile": 0.9}),
}
XYZ_TITLE = "x/y/z plot"
# the X/Y/Z plot's run() parameters after the nine axis ones, by how many arguments the script has
# (Forge main / old Forge scripts/xyz_grid.py:562 / :533, Neo :597, reForge :622)
XYZ_TAILS = {
    18: ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y",
         "vary_seeds_z", "margin_size", "csv_mode"],
    19: ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y",
         "vary_seeds_z", "row_count", "margin_size", "csv_mode"],
    21: ["draw_legend", "draw_individual_labels", "skip_grid", "items_per_grid", "include_lone_images",
         "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size",
         "csv_mode"],
}
AXES9 = ["x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown", "z_type", "z_values",
         "z_values_dropdown"]


def ld_args(method, weight=1.0, ending_step=1.0):
    return [True, method, weight, ending_step, None, None, None, "Crop and Resize", False, "", "", ""]


def body(family, size, steps, **extra):
    b = {"prompt": "a glass bottle, transparent background", "negative_prompt": "", "width": size, "height": size,
         "steps": steps, "sampler_name": "Euler", "cfg_scale": 5, "seed": 12345, "batch_size": 1, "n_iter": 1,
         "send_images": True, "save_images": False,
         "alwayson_scripts": {"LayerDiffuse": {"args": ld_args(ATTN[family])}}}
    b.update(extra)
    return b


def script_info(forge):
    r = forge.get("/sdapi/v1/script-info", timeout_s=120)
    if not r.ok:
        raise RuntimeError(f"script-info: HTTP {r.status} {r.text()}")
    return [s for s in r.json if not s.get("is_img2img")]


def builtin_args(info, fragment, values):
    """(title, args) of the txt2img always-on script whose name contains `fragment`, or None."""
    for s in info:
        if s.get("is_alwayson") and fragment.casefold() in (s.get("name") or "").casefold():
            args = [a.get("value") for a in s["args"]]
            args[0] = True
            for i, a in enumerate(s["args"]):
                if a.get("label") in values:
                    args[i] = values[a["label"]]
            return s["name"], args
    return None


def _choices(arg):
    return [c[0] if isinstance(c, (list, tuple)) else c for c in (arg.get("choices") or [])]


def xyz_args(info, x, y, legend, lone=True):
    """The X/Y/Z plot's script_args: x / y = (axis label, csv text, dropdown list) or None."""
    script = next(s for s in info if (s.get("name") or "").casefold() == XYZ_TITLE)
    n = len(script["args"])
    axis_labels = _choices(script["args"][0])
    tail = XYZ_TAILS[n]
    shown = [a.get("label") for a in script["args"][9:]]
    if shown[tail.index("draw_legend")] != "Draw legend" or shown[tail.index("include_lone_images")] != \
            "Include Sub Images":
        raise RuntimeError(f"the X/Y/Z plot's arguments are not in the order expected: {shown}")
    named = dict(x_type=0, x_values="", x_values_dropdown=[], y_type=0, y_values="", y_values_dropdown=[],
                 z_type=0, z_values="", z_values_dropdown=[], draw_legend=legend, include_lone_images=lone,
                 include_sub_grids=False, no_fixed_seeds=False, vary_seeds_x=False, vary_seeds_y=False,
                 vary_seeds_z=False, margin_size=0, csv_mode=False, row_count=0, draw_individual_labels=False,
                 skip_grid=False, items_per_grid=0)
    for axis, spec in (("x", x), ("y", y)):
        if spec is None:
            continue
        label, text, dropdown = spec
        named[f"{axis}_type"] = axis_labels.index(label)
        named[f"{axis}_values"] = text
        named[f"{axis}_values_dropdown"] = dropdown or []
    return [named[k] for k in AXES9 + tail], axis_labels


def describe(raw: bytes) -> dict:
    image = decode_png(raw)
    entry = {"mode": image.mode, "size": list(image.size)}
    if image.mode == "RGBA":
        alpha = np.asarray(image)[..., 3].astype(np.float64)
        entry.update(alpha_mean=round(float(alpha.mean()), 2), alpha_std=round(float(alpha.std()), 2))
    return entry


def grid_alpha_matches(grid: bytes, cells: list, cols: int, rows: int) -> bool:
    """Whether the grid's alpha is each cell's alpha at its place (images.image_grid pastes cells row by row)."""
    g = np.asarray(decode_png(grid).convert("RGBA"))
    tiles = [np.asarray(decode_png(c).convert("RGBA")) for c in cells]
    h, w = tiles[0].shape[:2]
    if g.shape[:2] != (rows * h, cols * w):
        return False
    return all((g[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w, 3] == t[..., 3]).all()
               for i, t in enumerate(tiles))


def max_diff(a: bytes, b: bytes) -> dict:
    pa, pb = (np.asarray(decode_png(x).convert("RGBA")).astype(int) for x in (a, b))
    if pa.shape != pb.shape:
        return {"shape": [list(pa.shape), list(pb.shape)]}
    d = np.abs(pa - pb)
    return {"rgb_max": int(d[..., :3].max()), "alpha_max": int(d[..., 3].max())}


class Runner:
    def __init__(self, forge, out: Path, size: int, steps: int, log: Path | None, reuse: bool = False):
        self.forge, self.out, self.size, self.steps, self.log, self.reuse = forge, out, size, steps, log, reuse
        self.results: dict[str, dict] = {}
        self.images: dict[str, list[bytes]] = {}

    def _log_mark(self):
        return self.log.stat().st_size if self.log and self.log.exists() else 0

    def _log_since(self, mark):
        if not (self.log and self.log.exists()):
            return ""
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def run(self, name, model, payload, note=""):
        self.forge.select_checkpoint(model)
        mark, start = self._log_mark(), time.monotonic()
        r = self.forge.post("/sdapi/v1/txt2img", payload)
        log = self._log_since(mark)
        result = {"case": name, "status": r.status, "seconds": round(time.monotonic() - start, 1), "note": note,
                  "log_errors": [line for line in log.splitlines() if "*** Error" in line or "Traceback" in line],
                  "no_latent_warning": "No decoded latent was seen" in log}
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        raws = []
        if r.ok:
            info = r.json.get("info") or "{}"
            info = json.loads(info) if isinstance(info, str) else info
            for i, b64 in enumerate(r.json.get("images") or []):
                raw = b64_to_bytes(b64)
                (folder / f"image_{i}.png").write_bytes(raw)
                raws.append(raw)
            result.update(images=[describe(x) for x in raws], infotexts=info.get("infotexts") or [])
        else:
            result["errors"] = error_messages(r) or [r.text(2000)]
        (folder / "log_excerpt.txt").write_text(log[-20000:])
        self.results[name], self.images[name] = result, raws
        (folder / "result.json").write_text(json.dumps(result, indent=1))
        brief = {k: result.get(k) for k in ("status", "seconds", "log_errors", "no_latent_warning")}
        print(name, json.dumps(brief), json.dumps((result.get("images") or result.get("errors") or [])[:3]),
              flush=True)
        return result

    def rgba_ok(self, name, index=0):
        images = self.results[name].get("images") or []
        return bool(len(images) > index and images[index]["mode"] == "RGBA" and images[index].get("alpha_std", 0) > 0)

    def baseline(self, family):
        name = f"{family}_ld"
        saved = self.out / name / "result.json"
        if name not in self.results and self.reuse and saved.exists() and json.loads(saved.read_text())["status"] == 200:
            self.results[name] = json.loads(saved.read_text())
            self.images[name] = [f.read_bytes() for f in sorted((self.out / name).glob("image_*.png"))]
            print(name, "reused from an earlier run in", self.out, flush=True)
        if name not in self.results:
            self.run(name, MODEL[family], body(family, self.size, self.steps), "LayerDiffuse alone")
        return name

    def verdict(self, name, ok, **facts):
        self.results[name].update(verdict="ok" if ok else "FAIL", **facts)
        (self.out / name / "result.json").write_text(json.dumps(self.results[name], indent=1))

    # --- cases ----------------------------------------------------------------------------------------------------

    def builtins(self, info, families=("sdxl", "sd15")):
        for key, (fragment, values) in BUILTINS.items():
            found = builtin_args(info, fragment, values)
            if found is None:
                self.results[f"builtin_{key}"] = {"case": f"builtin_{key}", "status": None,
                                                  "verdict": "absent", "note": f"no script titled *{fragment}*"}
                print(f"builtin_{key}: not in this host", flush=True)
                continue
            title, args = found
            for family in families:
                base = self.baseline(family)
                name = f"{family}_{key}"
                payload = body(family, self.size, self.steps)
                payload["alwayson_scripts"][title] = {"args": args}
                self.run(name, MODEL[family], payload, f"{title} {args}")
                res = self.results[name]
                diff = max_diff(self.images[name][0], self.images[base][0]) if res["status"] == 200 and \
                    self.images[base] else None
                changed = bool(diff) and (diff.get("rgb_max", 1) > 0 or diff.get("alpha_max", 1) > 0)
                self.verdict(name, res["status"] == 200 and self.rgba_ok(name) and changed and not res["log_errors"],
                             diff_vs_ld=diff)

    def xyz(self, info):
        base = self.baseline("sdxl")
        args, labels = xyz_args(info, ("[LayerDiffuse] Weight", "0.5, 1", None),
                                ("[LayerDiffuse] Stop At", "0.3, 1", None), legend=False)
        # grid_save off: saving the grid would run Forge's stealth infotext (Alpha mode: putalpha(255) on the grid
        # object itself, modules/stealth_infotext.py add_data), so the grid's own alpha shows only without it
        payload = body("sdxl", self.size, self.steps, script_name=XYZ_TITLE, script_args=args,
                       override_settings={"grid_save": False})
        name = "xyz_weight_stop"
        self.run(name, SDXL, payload, "X weight 0.5,1; Y stop at 0.3,1; no legend; grid_save off")
        res = self.results[name]
        ok = res["status"] == 200 and len(self.images[name]) >= 5
        facts = {}
        if ok:
            facts["grid"] = res["images"][0]
            cells = self.images[name][1:5]
            facts["cells_rgba"] = [self.rgba_ok(name, i) for i in range(1, 5)]
            # cell order: x fastest (weight 0.5, 1) then y (stop 0.5, 1): index 3 is weight 1, stop 1
            facts["cell_w1_s1_vs_ld"] = max_diff(cells[3], self.images[base][0])
            facts["cells_differ"] = len({c for c in cells}) == 4
            facts["grid_alpha_is_cells_alpha"] = grid_alpha_matches(self.images[name][0], cells, 2, 2)
            facts["cell_infotexts"] = [t.split("layerdiffusion_weight: ")[-1][:40] for t in res["infotexts"][1:5]]
            ok = all(facts["cells_rgba"]) and facts["cell_w1_s1_vs_ld"].get("rgb_max") == 0 and \
                facts["cell_w1_s1_vs_ld"].get("alpha_max") == 0 and facts["cells_differ"] and not res["log_errors"]
        self.verdict(name, ok, **facts)

        args, _ = xyz_args(info, ("[LayerDiffuse] Method", "", [ATTN["sdxl"], CONV]), None, legend=True)
        name = "xyz_method_legend"
        self.run(name, SDXL, body("sdxl", self.size, self.steps, script_name=XYZ_TITLE, script_args=args),
                 "X method attention, conv; legend on")
        res = self.results[name]
        ok = res["status"] == 200 and len(self.images[name]) >= 3
        facts = {}
        if ok:
            facts["grid"] = res["images"][0]
            facts["cells_rgba"] = [self.rgba_ok(name, i) for i in (1, 2)]
            facts["attn_cell_vs_ld"] = max_diff(self.images[name][1], self.images[base][0])
            facts["cells_differ"] = self.images[name][1] != self.images[name][2]
            ok = all(facts["cells_rgba"]) and facts["cells_differ"] and not res["log_errors"]
        self.verdict(name, ok, **facts)

        args, _ = xyz_args(info, ("[LayerDiffuse] Method", "(SDXL) Attention", None), None, legend=True)
        args[AXES9.index("x_values_dropdown")] = ["(SDXL) Attention"]
        name = "xyz_bad_method"
        self.run(name, SDXL, body("sdxl", self.size, self.steps, script_name=XYZ_TITLE, script_args=args),
                 "X method '(SDXL) Attention' (no such method)")
        res = self.results[name]
        message = " ".join(res.get("errors") or [])
        self.verdict(name, res["status"] != 200 and "[LayerDiffuse] Unknown method" in message, message=message[:300])

    def refiner(self, info):
        base = self.baseline("sdxl")
        name = "sdxl_refiner"
        payload = body("sdxl", self.size, max(self.steps, 4), refiner_checkpoint=SDXL2, refiner_switch_at=0.5)
        if any((s.get("name") or "").casefold() == "refiner" and s.get("is_alwayson") for s in info):
            # the Refiner accordion's setup() (modules/processing_scripts/refiner.py) overwrites the request's
            # refiner fields with its own args, so they are given there too (Neo hides it unless show_refiner)
            payload["alwayson_scripts"]["Refiner"] = {"args": [True, SDXL2, 0.5]}
        self.run(name, SDXL, payload, f"refiner {SDXL2} at 0.5, {max(self.steps, 4)} steps")
        res = self.results[name]
        ok = res["status"] == 200 and self.rgba_ok(name)
        facts = {}
        if ok:
            infotext = (res.get("infotexts") or [""])[0]
            facts["infotext_refiner"] = "Refiner:" in infotext
            same_steps = f"sdxl_ld_{max(self.steps, 4)}steps"
            if same_steps not in self.results:
                self.run(same_steps, SDXL, body("sdxl", self.size, max(self.steps, 4)), "LayerDiffuse alone")
            facts["vs_ld_same_steps"] = max_diff(self.images[name][0], self.images[same_steps][0])
            ok = facts["infotext_refiner"] and not res["no_latent_warning"] and not res["log_errors"] and \
                facts["vs_ld_same_steps"].get("rgb_max", 1) > 0
        self.verdict(name, ok, **facts)

    def table(self, host):
        lines = [f"### {host}", "", "| case | HTTP | s | first image | verdict | facts |", "|---|---|---|---|---|---|"]
        for name, r in self.results.items():
            first = (r.get("images") or [{}])[0]
            shown = f"{first.get('mode', '')} α std {first.get('alpha_std', '')}" if first else ""
            facts = {k: r[k] for k in ("diff_vs_ld", "grid", "cells_rgba", "cell_w1_s1_vs_ld", "cells_differ",
                                       "attn_cell_vs_ld", "grid_alpha_is_cells_alpha", "infotext_refiner", "vs_ld_same_steps", "message",
                                       "note") if k in r}
            if r.get("errors"):
                facts["errors"] = [e[:200] for e in r["errors"]]
            if r.get("log_errors"):
                facts["log_errors"] = r["log_errors"][:3]
            lines.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {shown} | "
                         f"{r.get('verdict', '')} | {json.dumps(facts)[:600]} |")
        text = "\n".join(lines) + "\n"
        (self.out / "table.md").write_text(text)
        return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("LAYERDIFFUSE_FORGE_URL", "http://127.0.0.1:7861"))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--host", default="Forge")
    ap.add_argument("--cases", nargs="+", default=["builtins", "xyz", "refiner"])
    ap.add_argument("--families", nargs="+", default=["sdxl", "sd15"], help="for builtins")
    ap.add_argument("--only", nargs="*", default=None, help="builtin keys to run (default all)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--reuse-baselines", action="store_true", help="take <family>_ld from an earlier run in --out")
    ap.add_argument("--log", type=Path, default=None, help="Forge's log file: errors and decode warnings per case")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    forge = ForgeClient(a.url, timeout_s=3600)
    info = script_info(forge)
    xyz = [s for s in info if (s.get("name") or "").casefold() == XYZ_TITLE]
    (a.out / "xyz_axis_types.json").write_text(json.dumps(_choices(xyz[0]["args"][0]) if xyz else None, indent=1))
    if a.only is not None:
        for key in list(BUILTINS):
            if key not in a.only:
                del BUILTINS[key]
    runner = Runner(forge, a.out, a.size, a.steps, a.log, a.reuse_baselines)
    for case in a.cases:
        if case == "builtins":
            runner.builtins(info, tuple(a.families))
        else:
            getattr(runner, case)(info)
    print(runner.table(a.host))
    return 1 if any(r.get("verdict") == "FAIL" for r in runner.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
