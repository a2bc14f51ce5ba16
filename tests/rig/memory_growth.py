"""Does anything a LayerDiffuse request builds outlive it? Runs N consecutive identical requests per case through a
REAL running Forge (the rig of ../shared/rig, any generation) and prints the Forge process's resident memory
(VmRSS of /proc/<pid>/status) after each, then a table: RSS after the 2nd request, after the Nth, the difference,
and PASS when it is at most --limit-mib (the first two requests load the checkpoint, the layer files and the
decoder; from then on a request must leave nothing behind).

    python tests/rig/memory_growth.py --url http://127.0.0.1:7861 --cases sd15_attn sdxl_attn -n 20
    python tests/rig/memory_growth.py --cases flux --flux-checkpoint rig_flux1_dev_random   # where the host has one
    python tests/rig/memory_growth.py --cases sdxl_attn --settle     # with tests/rig/extensions/ld_rig_memory

--settle: after each request (and its raw reading) POST /ld-rig/settle of the rig-only extension ld_rig_memory
(copied into the run's extensions/), which runs gc.collect() and glibc's malloc_trim(0) inside Forge and answers
the RSS after; the verdict then uses those readings (what live objects hold), the raw ones are printed beside them.
Freed weights that glibc keeps mapped make the raw RSS swing by hundreds of MiB between requests (Neo, SDXL).

The pid is read from the rig's pid file (start_forge.sh writes $RIG_ROOT/forge.pid; RIG_ROOT follows
FORGE_GENERATION as there), or given with --pid. Standard library only. Exit status 1 when a case fails (an HTTP
error or growth over the limit).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

SDXL, SD15 = "rig_sdxl_base_random", "rig_sd15_random"
CASES = {
    # name: (checkpoint, method, batch size, needs the fg image)
    "sd15_attn": (SD15, "(SD1.5) Only Generate Transparent Image (Attention Injection)", 1, False),
    "sd15_joint": (SD15, "(SD1.5) Generate Everything Together (need batch size 3)", 3, False),
    "sdxl_attn": (SDXL, "(SDXL) Only Generate Transparent Image (Attention Injection)", 1, False),
    "sdxl_conv": (SDXL, "(SDXL) Only Generate Transparent Image (Conv Injection)", 1, False),
    "sdxl_fg2blend": (SDXL, "(SDXL) From Foreground to Blending", 1, True),
    "flux": (None, "(FLUX.1) Only Generate Transparent Image", 1, False),  # checkpoint: --flux-checkpoint
}
DEFAULT_CASES = ["sd15_attn", "sd15_joint", "sdxl_attn", "sdxl_conv", "sdxl_fg2blend"]


def rig_pid_file() -> Path:
    """$RIG_ROOT/forge.pid with RIG_ROOT defaulted from FORGE_GENERATION exactly as start_forge.sh does."""
    suffix = {"legacy": "-legacy", "neo": "-neo", "reforge": "-reforge"}.get(os.environ.get("FORGE_GENERATION", ""), "")
    root = os.environ.get("RIG_ROOT") or os.path.expanduser(f"~/.cache/layerdiffuse-rig{suffix}")
    return Path(root) / "forge.pid"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def png_b64(width: int, height: int) -> str:
    """An RGBA PNG (stdlib only): an opaque disc on a transparent field, as a foreground input."""
    rows = []
    cx, cy, r2 = width / 2, height / 2, (min(width, height) * 0.35) ** 2
    for y in range(height):
        row = bytearray([0])  # filter: none
        for x in range(width):
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= r2
            row += bytes((200, 60 + x % 128, 40, 255)) if inside else bytes((0, 0, 0, 0))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def call(url: str, path: str, body=None, timeout: float = 3600.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read()[:2000].decode("utf-8", "replace")


def payload(case: str, size: int, steps: int) -> dict:
    _, method, batch, needs_fg = CASES[case]
    fg = png_b64(size, size) if needs_fg else None
    # the extension's ui() order: enabled, method, weight, ending_step, fg, bg, blend, resize_mode, output_origin,
    # fg/bg/blend additional prompts (as tests/rig/host_matrix.py)
    args = [True, method, 1.0, 1.0, fg, None, None, "Crop and Resize", False, "", "", ""]
    body = {"prompt": "a glass bottle, transparent background", "negative_prompt": "", "width": size, "height": size,
            "steps": steps, "sampler_name": "Euler", "cfg_scale": 5, "seed": 12345,
            "batch_size": batch, "n_iter": 1, "send_images": True, "save_images": False,
            "alwayson_scripts": {"LayerDiffuse": {"args": args}}}
    if case == "flux":
        body.update(cfg_scale=1, scheduler="Simple", distilled_cfg_scale=3.5)
    return body


def run_case(url: str, pid: int, case: str, checkpoint: str, n: int, size: int, steps: int, settle: bool) -> dict:
    status, answer = call(url, "/sdapi/v1/options", {"sd_model_checkpoint": checkpoint})
    if status != 200:
        return {"case": case, "error": f"selecting {checkpoint}: HTTP {status} {answer}"}
    rss, raw, seconds = [], [], []
    body = payload(case, size, steps)
    for i in range(n):
        start = time.monotonic()
        status, answer = call(url, "/sdapi/v1/txt2img", body)
        seconds.append(time.monotonic() - start)
        if status != 200:
            return {"case": case, "rss": rss, "error": f"request {i + 1}: HTTP {status} {answer}"}
        images = answer.get("images") or []
        time.sleep(1.0)  # let the answer's own buffers go before reading
        raw.append(rss_mib(pid))
        if settle:
            status, settled = call(url, "/ld-rig/settle", {})
            if status != 200:
                return {"case": case, "rss": rss, "error": f"/ld-rig/settle: HTTP {status} {settled} "
                                                          "(copy tests/rig/extensions/ld_rig_memory into the run)"}
            rss.append(settled["rss_after_mib"])
        else:
            rss.append(raw[-1])
        print(f"  {case} #{i + 1}: {seconds[-1]:.1f} s, {len(images)} image(s), RSS {raw[-1]:.0f} MiB"
              + (f", settled {rss[-1]:.0f} MiB" if settle else ""), flush=True)
    return {"case": case, "rss": rss, "raw_rss": raw, "settled": settle, "seconds": seconds}


def table(results: list[dict], limit: float) -> tuple[str, bool]:
    lines = ["| case | requests | RSS after 2nd (MiB) | RSS after last (MiB) | growth (MiB) | per request | raw RSS 2nd → last,"
             " range (MiB) | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    ok = True
    for r in results:
        rss = r.get("rss") or []
        if "error" in r or len(rss) < 3:
            ok = False
            lines.append(f"| {r['case']} | {len(rss)} | | | | | | ERROR: {r.get('error', 'fewer than 3 requests')} |")
            continue
        growth = rss[-1] - rss[1]
        verdict = "PASS" if growth <= limit else "FAIL"
        ok &= verdict == "PASS"
        raw = r.get("raw_rss") or rss
        raw_text = f"{raw[1]:.0f} → {raw[-1]:.0f}, {min(raw[1:]):.0f}–{max(raw[1:]):.0f}" if r.get("settled") else "(same)"
        lines.append(f"| {r['case']} | {len(rss)} | {rss[1]:.0f} | {rss[-1]:.0f} | {growth:+.0f} | "
                     f"{growth / (len(rss) - 2):+.0f} | {raw_text} | {verdict} |")
    return "\n".join(lines), ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("LAYERDIFFUSE_FORGE_URL", "http://127.0.0.1:7861"))
    ap.add_argument("--pid", type=int, help="the Forge process (default: the rig's forge.pid)")
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=sorted(CASES))
    ap.add_argument("-n", "--requests", type=int, default=20, help="consecutive requests per case (at least 3)")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--flux-checkpoint", help="the host's FLUX.1 checkpoint (the flux case needs it)")
    ap.add_argument("--limit-mib", type=float, default=150.0, help="allowed growth from the 2nd to the last request")
    ap.add_argument("--settle", action="store_true",
                    help="judge on the RSS after gc + malloc_trim (needs the rig extension ld_rig_memory)")
    ap.add_argument("--json", type=Path, help="also write the per-request figures here")
    a = ap.parse_args()
    pid = a.pid or int(rig_pid_file().read_text().strip())
    if not Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").find(b"launch.py") >= 0:
        print(f"pid {pid} is not a Forge launch.py", file=sys.stderr)
        return 2
    print(f"Forge pid {pid}, RSS at start {rss_mib(pid):.0f} MiB", flush=True)
    results = []
    for case in a.cases:
        checkpoint = CASES[case][0] or a.flux_checkpoint
        if checkpoint is None:
            print(f"{case}: skipped (give --flux-checkpoint)", flush=True)
            continue
        results.append(run_case(a.url, pid, case, checkpoint, a.requests, a.size, a.steps, a.settle))
    text, ok = table(results, a.limit_mib)
    print(text)
    if a.json:
        a.json.write_text(json.dumps({"pid": pid, "size": a.size, "steps": a.steps, "results": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
