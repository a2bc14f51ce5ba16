"""Rig-only: write a random-weight YOLOv8n detector that the real ADetailer extension (Bing-su/adetailer) loads offline
from Forge's models/adetailer folder, and that finds something on the rig's noise images.

    ~/.cache/layerdiffuse-rig/venv/bin/python tests/rig/make_adetailer_model.py [--out DIR] [--seed 0]

Runs in the rig venv (it needs `ultralytics`, which ADetailer needs anyway). The network is built from the YOLOv8n
config bundled with ultralytics, initialised from a fixed seed (so the file, and what it detects, is the same on every
run), one class named "rig", and saved with ultralytics' own `save` (ADetailer hands the path to `YOLO(path)`).
Random weights give boxes of low confidence everywhere: requests use `ad_confidence` 0 and `ad_mask_k` 1 (the largest
box), so ADetailer inpaints exactly one region. The script checks that on two noise images before it returns.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

NAME = "rig_random_yolov8n.pt"


def default_out() -> Path:
    root = Path(os.environ.get("RIG_ROOT", Path.home() / ".cache/layerdiffuse-rig"))
    return Path(os.environ.get("RIG_FORGE", root / "forge")) / "models" / "adetailer"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default_out(), help="Forge's models/adetailer folder")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO  # noqa: PLC0415  (only in the rig venv)

    torch.manual_seed(a.seed)
    model = YOLO("yolov8n.yaml", task="detect")  # the bundled config: no download, random init
    model.model.names = {0: "rig"}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / NAME
    model.save(str(path))

    # what ADetailer does with it (adetailer/ultralytics.py): YOLO(path)(image, conf=...), boxes in xyxy
    reloaded = YOLO(str(path))
    rng = np.random.default_rng(1)
    for size in (192, 256):
        noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        boxes = reloaded(noise, conf=0.0, device="cpu", verbose=False)[0].boxes
        if boxes.xyxy.shape[0] == 0:
            print(f"{path}: nothing detected on {size}x{size} noise", file=sys.stderr)
            return 1
        xyxy = boxes.xyxy.cpu().numpy()
        areas = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
        print(f"{size}x{size} noise: {len(xyxy)} boxes, largest {xyxy[areas.argmax()].round(1).tolist()} "
              f"(confidence {float(boxes.conf.max()):.4f} at most)")
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
