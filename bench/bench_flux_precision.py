"""Benchmark: the FLUX.1 transparent decoder in fp16 and bf16 against fp32, on a GPU (the reference precision is
fp32; the Flux port runs the net in bf16). Prints, per precision, the largest and mean difference of the RGBA
from the fp32 result, how many values came out non-finite, and the time ratio to fp32. Weights are the tests'
seeded stand-ins (not trained ones, whose activations are larger); the input is what Forge hands the decoder:
an unclipped pixel image slightly outside [0, 1] and a raw FLUX.1 latent ((z / 0.3611) + 0.1159, z ~ N(0, 1)).

    python bench/bench_flux_precision.py --device cuda --sizes 512 1024
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from seeded_weights import FIXTURES, seeded_array  # noqa: E402

from lib_layerdiffusion import load_transparent_decoder  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def flux_decoder_state() -> dict[str, torch.Tensor]:
    with open(FIXTURES / "manifest_flux_transparent_vae.json") as f:
        manifest = json.load(f)
    return {k: torch.from_numpy(seeded_array(k, s)) for k, s in sorted(manifest["flux_transparent_decoder"].items())}


def timed_decode(decoder, pixel, latent, passes: int, device) -> tuple[torch.Tensor, float]:
    decoder.decode(pixel, latent, passes=1)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = decoder.decode(pixel, latent, passes=passes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out.float().cpu(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    state = flux_decoder_state()
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {args.passes} passes")
    print("| size | precision | max diff vs fp32 | mean diff | non-finite | time | time / fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        gen = torch.Generator().manual_seed(size)
        pixel = torch.rand(1, 3, size, size, generator=gen) * 1.2 - 0.1
        latent = torch.randn(1, 16, size // 8, size // 8, generator=gen) / 0.3611 + 0.1159
        results = {}
        for name, dtype in DTYPES.items():
            decoder = load_transparent_decoder(state, device=device, dtype=dtype)
            results[name] = timed_decode(decoder, pixel, latent, args.passes, device)
            del decoder
        reference, ref_time = results["fp32"]
        for name, (out, seconds) in results.items():
            finite = torch.isfinite(out)
            diff = (out - reference).abs()[finite & torch.isfinite(reference)]
            print(f"| {size} | {name} | {diff.max().item():.2e} | {diff.mean().item():.2e} | "
                  f"{int((~finite).sum())} | {seconds:.3f} s | {seconds / ref_time:.2f} |", flush=True)


if __name__ == "__main__":
    main()
