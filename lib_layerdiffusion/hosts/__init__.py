"""Bridges to the programs LayerDiffuse runs inside.

Every call into Forge goes through one bridge module, so supporting another Forge generation means adding a
bridge here, never sprinkling `try: import` through the rest of the package. `load_bridge()` is the only place
that decides which one applies.
"""
from __future__ import annotations

import importlib.util

from ..errors import LayerDiffuseError


def load_bridge():
    """The bridge for the Forge this process runs in."""
    if importlib.util.find_spec("backend") is not None and importlib.util.find_spec("backend.patcher.unet"):
        from . import forge_backend
        return forge_backend
    if importlib.util.find_spec("ldm_patched") is not None:  # Forge before the backend/ rework, or reForge
        from . import forge_legacy
        return forge_legacy
    raise LayerDiffuseError("[LayerDiffuse] No supported Forge found in this process.")
