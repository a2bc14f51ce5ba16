"""Forge runs this at start-up (launch.py → each extension's install.py): install only what Forge lacks.

Forge already ships torch, safetensors, numpy, opencv, huggingface_hub and einops, so normally nothing happens;
nothing here upgrades or replaces what is there.
"""
import importlib.util

import launch

REQUIRED = {
    # import name: pip requirement (checked by import name: opencv may be installed as any of its variants)
    "safetensors": "safetensors",
    "cv2": "opencv-python",
    "huggingface_hub": "huggingface_hub",
    "einops": "einops",
}

for module, requirement in REQUIRED.items():
    if importlib.util.find_spec(module) is None:
        launch.run_pip(f"install {requirement}", f"{requirement} for LayerDiffuse")
