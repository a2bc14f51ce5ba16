"""Benchmark: the reference 8-pass transparent decode (one pass at a time) against the batched decode.

Each way runs in its own subprocess so its peak resident memory (ru_maxrss) is its own; on CUDA the peak
allocated GPU memory is reported instead. Weights are random (seeded); only speed, memory and agreement of
the two outputs matter here.

    python bench/bench_decoder.py                       # CPU fp32, 512 and 1024
    python bench/bench_decoder.py --sizes 512 --device cuda --dtype fp16
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lib_layerdiffusion.transparent_decoder_net import TransparentDecoderUNet  # noqa: E402
from lib_layerdiffusion.transparent_vae import AUGMENTATIONS, load_transparent_decoder  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def reference_decode(model: torch.nn.Module, pixel: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The reference procedure: one augmented copy at a time, clip, undo, stack, median."""
    results = []
    for flip, turns in AUGMENTATIONS[8]:
        p, lat = pixel.clone(), latent.clone()
        if flip:
            p, lat = torch.flip(p, dims=(3,)), torch.flip(lat, dims=(3,))
        p, lat = torch.rot90(p, k=turns, dims=(2, 3)), torch.rot90(lat, k=turns, dims=(2, 3))
        y = torch.rot90(model(p, lat).clip(0, 1), k=-turns, dims=(2, 3))
        results.append(torch.flip(y, dims=(3,)) if flip else y)
    return torch.median(torch.stack(results), dim=0).values


def worker(args: argparse.Namespace) -> None:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    decoder = load_transparent_decoder(TransparentDecoderUNet().state_dict(), device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    pixel = torch.rand(1, 3, args.size, args.size, generator=gen).to(device)
    latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=gen).to(device)
    if device.type == "cuda":
        decoder.decode_single_pass(pixel, latent)  # CUDA context and kernels, outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_mb = _rss_mb()

    start = time.perf_counter()
    with torch.no_grad():
        if args.worker == "sequential":
            out = reference_decode(decoder.model, pixel.to(dtype), latent.to(dtype)).float()
        else:
            out = decoder.decode(pixel, latent, passes=8, max_batch=args.max_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _rss_mb() - base_mb
    seconds = time.perf_counter() - start
    np.save(args.out, out.cpu().numpy())
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def run_way(way: str, size: int, args: argparse.Namespace, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", way, "--size", str(size), "--out", out,
           "--device", args.device, "--dtype", args.dtype]
    if args.max_batch:
        cmd += ["--max-batch", str(args.max_batch)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--max-batch", type=int, default=None, help="override the batched path's chunk size")
    parser.add_argument("--worker", choices=["sequential", "batched"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    memory = "peak GPU alloc" if args.device.startswith("cuda") else "peak RSS delta"
    print(f"transparent decoder, 8 passes, {args.device} {args.dtype}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            res = {}
            for way in ("sequential", "batched"):
                res[way] = run_way(way, size, args, os.path.join(tmp, f"{way}.npy"))
                print(f"  {size}x{size} {way:>10}: {res[way]['seconds']:8.2f} s   {memory} "
                      f"{res[way]['peak_mb']:8.0f} MB", flush=True)
            diff = np.abs(np.load(os.path.join(tmp, "sequential.npy")) - np.load(os.path.join(tmp, "batched.npy")))
            speedup = res["sequential"]["seconds"] / res["batched"]["seconds"]
            print(f"  {size}x{size} speed-up x{speedup:.2f}, max |diff| {diff.max():.2e}", flush=True)


if __name__ == "__main__":
    main()
