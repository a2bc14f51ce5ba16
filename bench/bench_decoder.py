"""Benchmark: the reference 8-pass transparent decode (one pass at a time) against the batched decode.

Each way runs in its own subprocess so its peak resident memory (ru_maxrss, minus what the process held
before decoding) is its own; on CUDA the peak allocated GPU memory is reported instead. CPU time (all threads)
is printed next to wall time because on a shared machine wall time mostly measures the neighbours. Weights are the tests' seeded stand-ins; only speed, memory and agreement of
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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from seeded_weights import seeded_state_dict

from lib_layerdiffusion.networks.transparent_vae import AUGMENTATIONS, load_transparent_decoder

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
    decoder = load_transparent_decoder(seeded_state_dict("transparent_decoder"), device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    pixel = torch.rand(1, 3, args.size, args.size, generator=gen).to(device)
    latent = torch.randn(1, 4, args.size // 8, args.size // 8, generator=gen).to(device)
    if device.type == "cuda":
        decoder.decode_single_pass(pixel, latent)  # CUDA context and kernels, outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_mb = _rss_mb()

    walls, cpus = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            if args.worker == "sequential":
                out = reference_decode(decoder.model, pixel.to(dtype), latent.to(dtype)).float()
            else:
                out = decoder.decode(pixel, latent, passes=8, max_batch=args.max_batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _rss_mb() - base_mb
    np.save(args.out, out.cpu().numpy())
    print(json.dumps({"seconds": min(walls), "cpu_seconds": min(cpus), "peak_mb": peak_mb}))


def run_way(way: str, size: int, args: argparse.Namespace, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", way, "--size", str(size), "--out", out,
           "--device", args.device, "--dtype", args.dtype, "--repeat", str(args.repeat)]
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
    parser.add_argument("--repeat", type=int, default=1, help="decodes per subprocess; the fastest is reported")
    parser.add_argument("--rounds", type=int, default=1, help="subprocesses per way, alternating; best reported")
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
            runs: dict[str, list[dict]] = {"sequential": [], "batched": []}
            # Alternate the two ways so that load from other processes hits both alike; keep each one's best.
            for _ in range(args.rounds):
                for way, results in runs.items():
                    results.append(run_way(way, size, args, os.path.join(tmp, f"{way}.npy")))
            res = {way: {key: min(r[key] for r in rs) for key in rs[0]} for way, rs in runs.items()}
            for way in runs:
                print(f"  {size}x{size} {way:>10}: {res[way]['seconds']:8.2f} s wall {res[way]['cpu_seconds']:8.2f} s "
                      f"CPU   {memory} {res[way]['peak_mb']:8.0f} MB", flush=True)
            diff = np.abs(np.load(os.path.join(tmp, "sequential.npy")) - np.load(os.path.join(tmp, "batched.npy")))
            speedup = res["sequential"]["seconds"] / res["batched"]["seconds"]
            cpu_ratio = res["sequential"]["cpu_seconds"] / res["batched"]["cpu_seconds"]
            print(f"  {size}x{size} speed-up x{speedup:.2f} wall, x{cpu_ratio:.2f} CPU time; "
                  f"max |diff| {diff.max():.2e}", flush=True)

if __name__ == "__main__":
    main()
