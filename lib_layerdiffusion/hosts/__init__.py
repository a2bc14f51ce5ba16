"""The hosts LayerDiffuse runs inside, each reached through one bridge module that implements
`protocol.Host`. `load_bridge()` is the only place that decides which one applies.
"""
from __future__ import annotations

import importlib
import importlib.util

from ..errors import LayerDiffuseError

# (module in this package, what the running program must offer for it), first match wins
_BRIDGES = (
    ("forge_neo", lambda: _forge_version() == "neo"),
    ("forge_backend", lambda: _has("backend.patcher.unet")),
    ("forge_legacy", lambda: _has("ldm_patched") and _has("modules_forge")),
)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _forge_version() -> str | None:
    """modules_forge/forge_version.py `version`: "neo" in Forge Neo (a version tag elsewhere)."""
    if not _has("modules_forge.forge_version"):
        return None
    return str(getattr(importlib.import_module("modules_forge.forge_version"), "version", ""))


def bridge_name() -> str:
    """The name of the bridge module for the program this process runs in."""
    for name, offered in _BRIDGES:
        if offered():
            return name
    raise LayerDiffuseError("[LayerDiffuse] No supported Forge found in this process (Forge, Forge Neo, reForge "
                            "or old Forge).")


def load_bridge():
    """The bridge for the Forge this process runs in."""
    return importlib.import_module(f".{bridge_name()}", __name__)
