"""Deterministic stand-in weights matching the reference figures in tests/fixtures.

Each tensor gets its own numpy PCG64 generator seeded with the CRC-32 of its key. Tensors of rank >= 2 are
standard normals scaled by 1/sqrt(fan_in); 1-D tensors are scaled by 0.05, and 1-D weights (norm scales) are
shifted by +1.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def seeded_array(key: str, shape) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    gen = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    values = gen.standard_normal(shape, dtype=np.float32)
    if len(shape) >= 2:
        return values * np.float32(1.0 / np.sqrt(float(np.prod(shape[1:]))))
    values = values * np.float32(0.05)
    return values + np.float32(1.0) if key.endswith("weight") else values


def manifest_section(name: str) -> dict[str, list[int]]:
    with open(FIXTURES / "manifest_transparent_vae.json") as f:
        return json.load(f)[name]


def seeded_state_dict(section: str) -> dict[str, torch.Tensor]:
    """section: 'transparent_decoder' or 'transparent_encoder'."""
    return {k: torch.from_numpy(seeded_array(k, s)) for k, s in sorted(manifest_section(section).items())}
